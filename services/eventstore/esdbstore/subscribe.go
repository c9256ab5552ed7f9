package esdbstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"guestlist.dev/services/eventstore"
)

// errSubscriptionClosed is what Next returns after Close.
var errSubscriptionClosed = fmt.Errorf("esdbstore: subscription closed: %w", eventstore.ErrClosed)

// Subscribe implements eventstore.Store with a catch-up subscription to $all that starts at an
// explicit position (the client's default would be the end) and filters on the server (see
// planFilter). A goroutine reads it ahead of Next; when the subscription drops (server restart,
// network, leader change, a slow reader the server cut off) it subscribes again, after a
// backoff, from the last event it received or the last checkpoint the server sent, whichever is
// later, and skips anything at or before the last event it received: no gap, no duplicate.
func (s *Store) Subscribe(ctx context.Context, from eventstore.Position, filter eventstore.Filter) (eventstore.Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("esdbstore: subscribe: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("esdbstore: subscribe: %w", eventstore.ErrClosed)
	}
	s.subs.Add(1)
	s.mu.Unlock()
	sctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	sub := &subscription{
		s:      s,
		caller: ctx,
		ctx:    sctx,
		cancel: func() { stop(); cancel() },
		items:  make(chan item, s.opts.subscriptionBuf),
		done:   make(chan struct{}),
		closed: make(chan struct{}),
		plan:   planFilter(filter),
	}
	go sub.run(from)
	return sub, nil
}

type item struct {
	ev  eventstore.RecordedEvent
	err error
}

type subscription struct {
	s      *Store
	caller context.Context // the context given to Subscribe
	ctx    context.Context // ends with caller, with the store, and on Close
	cancel context.CancelFunc
	plan   filterPlan
	items  chan item
	done   chan struct{} // closed when run returns
	closed chan struct{}
	once   sync.Once

	mu  sync.Mutex // serialises Next
	err error      // sticky
}

// cursor is where a subscription resumes: after the last event received (its position is
// exact) or after the last checkpoint, kept as the server's two-part position because a
// checkpoint's prepare part (0) is not an event's.
type cursor struct {
	resume esdb.AllPosition
	last   eventstore.Position // last event received; later ones only
}

// event records that an event at p (commit == prepare) was received, and reports whether it is
// new (after the last one).
func (c *cursor) event(p eventstore.Position) bool {
	if p <= c.last {
		return false
	}
	c.last = p
	c.resume = esdb.Position{Commit: uint64(p), Prepare: uint64(p)}
	return true
}

// checkpoint records a checkpoint: the server looked at everything before p and found nothing
// more for the filter. A checkpoint at or before the last event received changes nothing.
func (c *cursor) checkpoint(p esdb.Position) {
	if r, ok := c.resume.(esdb.Position); ok && !after(p, r) {
		return
	}
	c.resume = p
}

func newCursor(from eventstore.Position) cursor {
	return cursor{resume: allPosition(from), last: from}
}

func (sub *subscription) run(from eventstore.Position) {
	defer sub.s.subs.Done()
	defer close(sub.done)
	cur := newCursor(from)
	wait := sub.s.opts.backoffMin
	for {
		err := sub.follow(&cur, &wait)
		if sub.ctx.Err() != nil {
			return
		}
		switch classify(err) {
		case kindAccessDenied, kindNotFound, kindStreamDeleted:
			// Resubscribing cannot help.
			sub.fail(fmt.Errorf("esdbstore: subscription: %w", mapError(sub.ctx, false, "subscribe to $all", err)))
			return
		}
		sub.s.opts.log.Warn("esdbstore: subscription dropped; resubscribing", "after", cur.last, "retry_in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-sub.ctx.Done():
			return
		}
		wait = min(2*wait, sub.s.opts.backoffMax)
	}
}

// follow subscribes from cur and delivers events until the subscription drops or ends. It
// returns why it dropped; an error of the store's own (a position that does not map) ends the
// subscription.
func (sub *subscription) follow(cur *cursor, wait *time.Duration) error {
	opts := esdb.SubscribeToAllOptions{From: cur.resume, Filter: sub.plan.server}
	es, err := call(sub.s, sub.ctx, func(ctx context.Context, c *esdb.Client) (*esdb.Subscription, error) {
		return c.SubscribeToAll(ctx, opts)
	})
	if err != nil {
		return err
	}
	defer es.Close()
	stop := context.AfterFunc(sub.ctx, func() { _ = es.Close() })
	defer stop()
	for {
		se := es.Recv()
		switch {
		case se.SubscriptionDropped != nil:
			if sub.ctx.Err() != nil {
				return sub.ctx.Err()
			}
			err := se.SubscriptionDropped.Error
			if err == nil {
				err = errors.New("subscription dropped")
			}
			return err
		case se.CheckPointReached != nil:
			cur.checkpoint(*se.CheckPointReached)
			*wait = sub.s.opts.backoffMin
		case se.EventAppeared != nil:
			*wait = sub.s.opts.backoffMin
			ev, system, err := recorded(se.EventAppeared)
			if err != nil {
				sub.fail(fmt.Errorf("esdbstore: subscription: %w", err))
				return nil
			}
			if system || !cur.event(ev.Position) || !sub.plan.match(ev.Stream, ev.Type) {
				continue
			}
			select {
			case sub.items <- item{ev: ev}:
			case <-sub.ctx.Done():
				return sub.ctx.Err()
			}
		}
	}
}

// fail hands err to Next (after the events before it) and ends the subscription.
func (sub *subscription) fail(err error) {
	select {
	case sub.items <- item{err: err}:
	case <-sub.ctx.Done():
	}
	sub.cancel()
}

// stopped returns why the subscription ended by Close, the store closing or a context, or nil.
func (sub *subscription) stopped(ctx context.Context) error {
	select {
	case <-sub.closed:
		return errSubscriptionClosed
	default:
	}
	if sub.s.isClosed() {
		return fmt.Errorf("esdbstore: subscription: %w", eventstore.ErrClosed)
	}
	if err := sub.caller.Err(); err != nil {
		return fmt.Errorf("esdbstore: subscription: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("esdbstore: subscription: %w", err)
	}
	return nil
}

// Next implements eventstore.Subscription.
func (sub *subscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.err != nil {
		return eventstore.RecordedEvent{}, sub.err
	}
	if err := sub.stopped(ctx); err != nil {
		return sub.end(err)
	}
	select {
	case it := <-sub.items:
		if it.err != nil {
			return sub.end(it.err)
		}
		return it.ev, nil
	case <-ctx.Done():
	case <-sub.ctx.Done():
		// Events read before an error or the end are still delivered in order.
		select {
		case it := <-sub.items:
			if it.err != nil {
				return sub.end(it.err)
			}
			if sub.stopped(ctx) == nil {
				return it.ev, nil
			}
		default:
		}
	}
	err := sub.stopped(ctx)
	if err == nil {
		err = fmt.Errorf("esdbstore: subscription ended")
	}
	return sub.end(err)
}

// end makes err the subscription's final answer.
func (sub *subscription) end(err error) (eventstore.RecordedEvent, error) {
	sub.err = err
	sub.cancel()
	return eventstore.RecordedEvent{}, err
}

// Close implements eventstore.Subscription.
func (sub *subscription) Close() error {
	sub.once.Do(func() {
		close(sub.closed)
		sub.cancel()
	})
	<-sub.done
	return nil
}
