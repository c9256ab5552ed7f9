package boltstore

import (
	"context"
	"fmt"
	"sync"

	"guestlist.dev/services/eventstore"
)

// subscribePage is how many events a subscription reads from the file at a time.
const subscribePage = 512

// Subscribe implements eventstore.Store. A subscription reads the file itself, in pages, up to
// the last acknowledged position, and waits for the committer's notification when it has caught
// up; so a slow subscriber never holds up appends, and never falls too far behind.
func (s *Store) Subscribe(ctx context.Context, from eventstore.Position, filter eventstore.Filter) (eventstore.Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: subscribe: %w", err)
	}
	if s.isClosed() {
		return nil, fmt.Errorf("boltstore: subscribe: %w", eventstore.ErrClosed)
	}
	return &subscription{
		s:      s,
		ctx:    ctx,
		filter: filter,
		cursor: from,
		closed: make(chan struct{}),
	}, nil
}

type subscription struct {
	s      *Store
	ctx    context.Context
	filter eventstore.Filter
	closed chan struct{}
	once   sync.Once

	mu     sync.Mutex // serialises Next
	cursor eventstore.Position
	buf    []eventstore.RecordedEvent
	next   int
	err    error
	// failAfterBuf becomes err once buf is delivered.
	failAfterBuf error
}

// errSubscriptionClosed is what Next returns after Close.
var errSubscriptionClosed = fmt.Errorf("boltstore: subscription closed: %w", eventstore.ErrClosed)

func (sub *subscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for {
		if sub.err != nil {
			return eventstore.RecordedEvent{}, sub.err
		}
		if err := sub.stopped(ctx); err != nil {
			sub.err = err
			sub.buf = nil
			continue
		}
		if sub.next < len(sub.buf) {
			ev := sub.buf[sub.next]
			sub.buf[sub.next] = eventstore.RecordedEvent{}
			sub.next++
			return ev, nil
		}
		if sub.failAfterBuf != nil {
			sub.err = sub.failAfterBuf
			continue
		}
		st := sub.s.state.Load()
		if sub.cursor < st.pos {
			buf, scanned, err := sub.s.scan(sub.buf[:0], sub.cursor, st.pos, subscribePage, sub.filter)
			sub.buf, sub.next, sub.cursor = buf, 0, scanned
			if err != nil {
				// Deliver what was read before the error, then the error.
				sub.failAfterBuf = fmt.Errorf("boltstore: subscription: %w", err)
			}
			continue
		}
		select {
		case <-st.changed:
		case <-ctx.Done():
		case <-sub.ctx.Done():
		case <-sub.s.done:
		case <-sub.closed:
		}
	}
}

// stopped returns why the subscription ended, or nil.
func (sub *subscription) stopped(ctx context.Context) error {
	select {
	case <-sub.closed:
		return errSubscriptionClosed
	case <-sub.s.done:
		return fmt.Errorf("boltstore: subscription: %w", eventstore.ErrClosed)
	default:
	}
	if err := sub.ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: subscription: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: subscription: %w", err)
	}
	return nil
}

func (sub *subscription) Close() error {
	sub.once.Do(func() { close(sub.closed) })
	return nil
}
