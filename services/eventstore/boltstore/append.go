package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/eventstore"
)

// appendReq is one Append waiting for the committer.
type appendReq struct {
	ctx      context.Context
	stream   string
	expected eventstore.ExpectedRevision
	events   []eventstore.EventData
	ids      []eventstore.UUID
	size     int // encoded size of the records, roughly

	res  eventstore.AppendResult
	err  error
	done chan struct{} // receives one value when res and err are set

	// Committer scratch.
	found []idEntry
	skip  bool // excluded from the batch after a bbolt error
}

type idEntry struct {
	pos eventstore.Position
	rev uint64
}

var reqPool = sync.Pool{New: func() any { return &appendReq{done: make(chan struct{}, 1)} }}

// Append implements eventstore.Store. The context is honoured until the committer picks the
// append up; from then on Append waits for the commit, so that an append that returns an error
// other than a commit failure was never written.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("boltstore: append to %q: %w", stream, err)
	}
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("boltstore: %w", err)
	}
	if len(stream) > MaxStreamNameLen {
		return eventstore.AppendResult{}, fmt.Errorf("boltstore: %w: stream name of %d bytes, at most %d allowed", eventstore.ErrInvalidEvent, len(stream), MaxStreamNameLen)
	}
	r := reqPool.Get().(*appendReq)
	r.ctx, r.stream, r.expected, r.events = ctx, stream, expected, events
	r.ids = r.ids[:0]
	r.size = 0
	for i := range events {
		id, _ := eventstore.ParseUUID(events[i].ID) // checked by ValidateAppend
		r.ids = append(r.ids, id)
		r.size += recordSize(stream, &events[i])
	}
	if r.size > MaxAppendSize {
		size := r.size
		r.release()
		return eventstore.AppendResult{}, fmt.Errorf("boltstore: %w: append to %q of %d bytes, at most %d allowed", eventstore.ErrInvalidEvent, stream, size, MaxAppendSize)
	}

	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		r.release()
		return eventstore.AppendResult{}, fmt.Errorf("boltstore: append to %q: %w", stream, eventstore.ErrClosed)
	case s.failed != nil:
		err := s.failed
		s.mu.Unlock()
		r.release()
		return eventstore.AppendResult{}, fmt.Errorf("boltstore: append to %q: store failed earlier, reopen it: %w", stream, err)
	}
	s.queue = append(s.queue, r)
	s.mu.Unlock()
	s.signal()

	<-r.done
	res, err := r.res, r.err
	r.release()
	return res, err
}

func (r *appendReq) release() {
	r.ctx, r.events, r.err, r.res, r.skip = nil, nil, nil, eventstore.AppendResult{}, false
	r.found = r.found[:0]
	reqPool.Put(r)
}

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// commitLoop is the single writer. It commits the queued appends in batches of bounded size, one
// transaction each, and answers them; it returns when the store is closed and the queue is empty.
//
// Group commit without a fixed delay: the appends that arrive while a transaction commits form
// the next batch. Left at that, batches alternate between large and small (the writers just
// answered come back a moment after the next commit started without them), so the committer
// remembers how many writers there were when it last answered (that batch plus those waiting)
// and, if fewer are queued, waits for the others a little: at most half a commit's duration and
// the WithGroupWait option (zero by default, which turns the wait off).
func (s *Store) commitLoop() {
	defer close(s.committerDone)
	var (
		batch      []*appendReq
		target     = 1
		commitTime time.Duration // moving average
		timer      = time.NewTimer(time.Hour)
	)
	timer.Stop()
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closed {
			s.mu.Unlock()
			<-s.wake
			s.mu.Lock()
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			if len(s.overlay.entries) > 0 {
				s.commitBatch(nil, true) // index what is left
			}
			return
		}
		if wait := min(commitTime/2, s.opts.groupWait); len(s.queue) < target && !s.closed && wait > 0 {
			timer.Reset(wait)
			for waiting := true; waiting && len(s.queue) < target && !s.closed; {
				s.mu.Unlock()
				select {
				case <-s.wake:
				case <-timer.C:
					waiting = false
				}
				s.mu.Lock()
			}
			timer.Stop()
		}
		n, size, events := 1, s.queue[0].size, len(s.queue[0].events)
		for n < len(s.queue) && n < s.opts.maxBatch && size+s.queue[n].size <= s.opts.maxBatchBytes {
			size += s.queue[n].size
			events += len(s.queue[n].events)
			n++
		}
		batch = append(batch[:0], s.queue[:n]...)
		left := copy(s.queue, s.queue[n:])
		clear(s.queue[left:])
		s.queue = s.queue[:left]
		s.mu.Unlock()

		began := time.Now()
		s.commitBatch(batch, len(s.overlay.entries)+events >= s.opts.indexFlush)
		commitTime = (3*commitTime + time.Since(began)) / 4

		s.mu.Lock()
		target = min(len(batch)+len(s.queue), s.opts.maxBatch)
		s.mu.Unlock()
		for _, r := range batch {
			r.done <- struct{}{}
		}
		clear(batch)
	}
}

// commitBatch writes reqs in one transaction and sets their results; the caller answers them.
// With flush, the transaction also writes the overlay and the appends' index entries to the
// index buckets; otherwise the appends' index entries go to the overlay.
func (s *Store) commitBatch(reqs []*appendReq, flush bool) {
	s.appends.Add(uint64(len(reqs)))
	s.mu.Lock()
	failed := s.failed
	s.mu.Unlock()
	if failed != nil {
		for _, r := range reqs {
			r.err = fmt.Errorf("boltstore: append to %q: store failed earlier, reopen it: %w", r.stream, failed)
		}
		return
	}

	now := time.Now().UnixNano()
	start := s.state.Load().pos
	for {
		last := start
		bad := -1
		err := s.db.Update(func(tx *bolt.Tx) error {
			b := buckets{
				log:     tx.Bucket(bucketLog),
				stream:  tx.Bucket(bucketStream),
				head:    tx.Bucket(bucketHead),
				eventID: tx.Bucket(bucketEventID),
			}
			b.log.FillPercent = 1 // keys only ever grow
			s.arena = s.arena[:0]
			stage := s.stage
			stage.reset()
			if flush {
				stage = nil // write index entries directly
				if err := s.writeIndex(b, s.overlay.entries); err != nil {
					return fmt.Errorf("index: %w", err)
				}
			}
			for i, r := range reqs {
				if r.skip {
					continue
				}
				r.res, r.err = eventstore.AppendResult{}, nil
				if err := r.ctx.Err(); err != nil {
					r.err = fmt.Errorf("boltstore: append to %q: %w", r.stream, err)
					continue
				}
				if err := s.apply(b, r, stage, &last, now); err != nil {
					bad = i
					return err
				}
			}
			if flush {
				if err := tx.Bucket(bucketMeta).Put(keyIndexed, posKey(nil, last)); err != nil {
					return fmt.Errorf("write indexed position: %w", err)
				}
			}
			return nil
		})
		if bad >= 0 {
			// A bbolt error while writing one append (the tx is rolled back): fail that
			// append alone and commit the others without it.
			r := reqs[bad]
			r.skip = true
			r.res = eventstore.AppendResult{}
			r.err = fmt.Errorf("boltstore: append to %q: %w", r.stream, err)
			continue
		}
		if err != nil {
			s.mu.Lock()
			s.failed = err
			s.mu.Unlock()
			for _, r := range reqs {
				if !r.skip {
					r.res = eventstore.AppendResult{}
					r.err = fmt.Errorf("boltstore: append to %q: commit: %w", r.stream, err)
				}
			}
			return
		}
		s.commits.Add(1)
		if flush {
			s.flushes.Add(1)
		}
		if flush || len(s.stage.entries) > 0 {
			s.overlayMu.Lock()
			if flush {
				s.overlay.reset()
			} else {
				for _, e := range s.stage.entries {
					s.overlay.add(e)
				}
			}
			s.overlayMu.Unlock()
			s.stage.reset()
		}
		if last != start {
			old := s.state.Load()
			s.state.Store(&commitState{pos: last, changed: make(chan struct{})})
			close(old.changed)
		}
		return
	}
}

type buckets struct {
	log, stream, head, eventID *bolt.Bucket
}

// apply checks r against the state of the transaction and, if it passes, writes it. Failed
// checks set r.err and write nothing; a returned error is a bbolt error after which the
// transaction must be abandoned.
//
// With stage nil, apply writes the index entries to the index buckets; otherwise to stage.
func (s *Store) apply(b buckets, r *appendReq, stage *memIndex, last *eventstore.Position, now int64) error {
	// The key prefix shared by the stream and eventid buckets.
	s.key = slices.Grow(streamPrefix(s.key[:0], r.stream), 16)
	plen := len(s.key)

	// Idempotency: were these ids appended to this stream before?
	r.found = r.found[:0]
	for _, id := range r.ids {
		if stage != nil {
			if e, ok := stage.lookup(r.stream, id); ok {
				r.found = append(r.found, e)
				continue
			}
		}
		if e, ok := s.overlay.lookup(r.stream, id); ok {
			r.found = append(r.found, e)
			continue
		}
		v := b.eventID.Get(append(s.key[:plen], id[:]...))
		if v == nil {
			continue
		}
		if len(v) != 16 {
			r.err = fmt.Errorf("boltstore: append to %q: event id index: %w", r.stream, errCorrupt)
			return nil
		}
		r.found = append(r.found, idEntry{
			pos: eventstore.Position(binary.BigEndian.Uint64(v)),
			rev: binary.BigEndian.Uint64(v[8:]),
		})
	}
	if len(r.found) > 0 {
		r.res, r.err = s.replay(b, r)
		return nil
	}

	// Expected revision.
	var lastRev uint64
	hv := b.head.Get([]byte(r.stream))
	exists := hv != nil
	if exists {
		if len(hv) != 8 {
			r.err = fmt.Errorf("boltstore: append to %q: stream head: %w", r.stream, errCorrupt)
			return nil
		}
		lastRev = binary.BigEndian.Uint64(hv)
	}
	if !r.expected.Satisfied(lastRev, exists) {
		r.err = fmt.Errorf("boltstore: %w", &eventstore.WrongExpectedRevisionError{
			Stream: r.stream, Expected: r.expected, Actual: lastRev, ActualExists: exists,
		})
		return nil
	}

	// Write. Values must stay valid until the commit, so they live in the arena (an old
	// backing array stays alive, unchanged, when append moves the arena); bbolt copies keys.
	rev := lastRev + 1
	if !exists {
		rev = 0
	}
	pos := *last
	for i := range r.events {
		pos++
		off := len(s.arena)
		s.arena = appendRecord(s.arena, now, r.ids[i], r.stream, rev, &r.events[i])
		record := s.arena[off:]
		off = len(s.arena)
		s.arena = posKey(s.arena, pos)
		s.arena = binary.BigEndian.AppendUint64(s.arena, rev)
		posRev := s.arena[off:]
		pk := posRev[:8]

		if err := b.log.Put(pk, record); err != nil {
			return fmt.Errorf("write log: %w", err)
		}
		if stage != nil {
			stage.add(indexEntry{stream: r.stream, rev: rev, pos: pos, id: r.ids[i]})
		} else {
			if err := b.stream.Put(binary.BigEndian.AppendUint64(s.key[:plen], rev), pk); err != nil {
				return fmt.Errorf("write stream index: %w", err)
			}
			if err := b.eventID.Put(append(s.key[:plen], r.ids[i][:]...), posRev); err != nil {
				return fmt.Errorf("write event id index: %w", err)
			}
		}
		rev++
	}
	rev--
	off := len(s.arena)
	s.arena = binary.BigEndian.AppendUint64(s.arena, rev)
	if err := b.head.Put([]byte(r.stream), s.arena[off:]); err != nil {
		return fmt.Errorf("write stream head: %w", err)
	}
	*last = pos
	r.res = eventstore.AppendResult{NextExpectedRevision: rev, Position: pos}
	return nil
}

// replay answers an append some of whose ids are in the stream already: if all are, in the
// same order, consecutively and with the same type and data, it returns the original result;
// otherwise ErrIdempotencyConflict. Metadata is not compared: a retry may carry a new trace
// context.
func (s *Store) replay(b buckets, r *appendReq) (eventstore.AppendResult, error) {
	conflict := func(format string, args ...any) error {
		return fmt.Errorf("boltstore: append to %q: %w: %s", r.stream, eventstore.ErrIdempotencyConflict, fmt.Sprintf(format, args...))
	}
	if len(r.found) != len(r.ids) {
		return eventstore.AppendResult{}, conflict("%d of the %d event ids were appended before", len(r.found), len(r.ids))
	}
	var pk [8]byte
	for i, f := range r.found {
		if f.rev != r.found[0].rev+uint64(i) {
			return eventstore.AppendResult{}, conflict("the event ids were appended before in another order or not together")
		}
		rec := b.log.Get(posKey(pk[:0], f.pos))
		if rec == nil {
			return eventstore.AppendResult{}, fmt.Errorf("boltstore: append to %q: event id index points to missing position %d: %w", r.stream, f.pos, errCorrupt)
		}
		ev := &r.events[i]
		if err := sameContent(rec, ev); err != nil {
			if errors.Is(err, errCorrupt) {
				return eventstore.AppendResult{}, fmt.Errorf("boltstore: append to %q: position %d: %w", r.stream, f.pos, err)
			}
			return eventstore.AppendResult{}, conflict("event %s was appended before with another %v", ev.ID, err)
		}
	}
	f := r.found[len(r.found)-1]
	return eventstore.AppendResult{NextExpectedRevision: f.rev, Position: f.pos}, nil
}

var (
	errOtherType = errors.New("type")
	errOtherData = errors.New("data")
)

func sameContent(rec []byte, ev *eventstore.EventData) error {
	rr := recordReader{b: rec}
	h := rr.header()
	data := rr.bytes("data")
	if rr.err != nil {
		return rr.err
	}
	if string(h.typ) != ev.Type {
		return errOtherType
	}
	if !bytes.Equal(data, ev.Data) {
		return errOtherData
	}
	return nil
}
