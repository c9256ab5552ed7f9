package esdbstore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"guestlist.dev/services/eventstore"
)

// tail is the newest events of a stream, newest first.
type tail struct {
	exists bool
	last   uint64 // revision of the newest event, if exists
	// events are the newest events, newest first; complete is true when they reach back to the
	// stream's first event.
	events   []eventstore.RecordedEvent
	complete bool
}

// readTail reads the newest n events of stream (at least one, so that its revision is known).
func (s *Store) readTail(ctx context.Context, stream string, n int) (tail, error) {
	evs, err := call(s, ctx, func(ctx context.Context, c *esdb.Client) ([]*esdb.ResolvedEvent, error) {
		return readStreamPage(ctx, c, stream, esdb.Backwards, esdb.End{}, n)
	})
	if err != nil {
		if classify(err) == kindNotFound {
			return tail{complete: true}, nil
		}
		return tail{}, err
	}
	t := tail{complete: len(evs) < n}
	for _, re := range evs {
		ev, system, err := recorded(re)
		if err != nil {
			return tail{}, err
		}
		if !t.exists {
			// The newest event gives the revision, whatever its kind.
			t.exists, t.last = true, re.OriginalEvent().EventNumber
		}
		if !system {
			t.events = append(t.events, ev)
		}
	}
	if !t.exists {
		// Found but empty: a stream deleted softly (its revisions go on); treat as no stream.
		t.complete = true
	}
	if len(evs) > 0 && evs[len(evs)-1].OriginalEvent().EventNumber == 0 {
		t.complete = true
	}
	return t, nil
}

// extend reads the k events before the oldest one t holds and adds them.
func (s *Store) extend(ctx context.Context, stream string, t *tail, k int) error {
	if t.complete || len(t.events) == 0 {
		return nil
	}
	oldest := t.events[len(t.events)-1].Revision
	if oldest == 0 {
		t.complete = true
		return nil
	}
	evs, err := call(s, ctx, func(ctx context.Context, c *esdb.Client) ([]*esdb.ResolvedEvent, error) {
		return readStreamPage(ctx, c, stream, esdb.Backwards, esdb.Revision(oldest-1), k)
	})
	if err != nil {
		return err
	}
	for _, re := range evs {
		ev, system, err := recorded(re)
		if err != nil {
			return err
		}
		if !system {
			t.events = append(t.events, ev)
		}
	}
	if len(evs) < k || (len(evs) > 0 && evs[len(evs)-1].OriginalEvent().EventNumber == 0) {
		t.complete = true
	}
	return nil
}

// replay answers an append some of whose ids are among the stream's newest events: if all are,
// in the same order, consecutively and with the same type and data, it returns the first
// append's result; otherwise ErrIdempotencyConflict. Metadata is not compared (a retry may carry
// a new trace context), as in the embedded store. ok is false when none of the ids is there.
func replay(t tail, events []eventstore.EventData, ids []uuid.UUID) (res eventstore.AppendResult, ok bool, err error) {
	at := make(map[uuid.UUID]int, len(ids))
	for i, id := range ids {
		at[id] = i
	}
	found := make([]*eventstore.RecordedEvent, len(ids))
	n := 0
	for i := range t.events {
		ev := &t.events[i]
		u, perr := uuid.Parse(ev.ID)
		if perr != nil {
			continue
		}
		if j, hit := at[u]; hit && found[j] == nil {
			found[j] = ev
			n++
		}
	}
	if n == 0 {
		return res, false, nil
	}
	conflict := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", eventstore.ErrIdempotencyConflict, fmt.Sprintf(format, args...))
	}
	if n != len(ids) {
		return res, true, conflict("%d of the %d event ids were appended before", n, len(ids))
	}
	for i, ev := range found {
		want := &events[i]
		switch {
		case ev.Revision != found[0].Revision+uint64(i):
			return res, true, conflict("event id %s was appended at revision %d, not right after the previous one", want.ID, ev.Revision)
		case ev.Type != want.Type || !bytes.Equal(ev.Data, want.Data):
			return res, true, conflict("event id %s was appended before with another type or data", want.ID)
		}
	}
	last := found[len(found)-1]
	return eventstore.AppendResult{NextExpectedRevision: last.Revision, Position: last.Position}, true, nil
}

// Append implements eventstore.Store.
//
// EventStoreDB deduplicates by event id only when the retry names the expected revision of the
// first attempt (and, with Any, only while the ids are in its cache), so an append first reads
// the stream's newest events: if the ids are there, it answers from them (see replay). Otherwise
// it checks expected against the revision it read and appends with that exact revision, so that
// the server refuses the append if anything landed in between; then it reads again and decides
// again. The server's answers therefore never need parsing: the revision in a
// WrongExpectedRevisionError is the one read from the server right before.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	op := fmt.Sprintf("append to %q", stream)
	ids, err := checkAppend(stream, events)
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("esdbstore: %w", err)
	}
	octx, done, err := s.opContext(ctx)
	if err != nil {
		return eventstore.AppendResult{}, mapError(ctx, true, op, err)
	}
	defer done()
	data := toEventData(events, ids)
	window := max(s.opts.idempotencyWindow, len(events))
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if attempt >= s.opts.maxAppendAttempts {
				return eventstore.AppendResult{}, fmt.Errorf("esdbstore: %s: %w: the stream kept changing over %d attempts", op, eventstore.ErrUnavailable, attempt)
			}
			if attempt > 2 {
				// Contention: spread the racers out a little.
				d := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 6)))
				select {
				case <-time.After(d):
				case <-octx.Done():
					return eventstore.AppendResult{}, mapError(ctx, s.isClosed(), op, octx.Err())
				}
			}
		}
		t, err := s.readTail(octx, stream, window)
		if err != nil {
			return eventstore.AppendResult{}, mapError(ctx, s.isClosed(), op, err)
		}
		res, ok, err := replay(t, events, ids)
		if ok && err != nil && !t.complete {
			// Some ids found: the others may lie just beyond the window.
			if xerr := s.extend(octx, stream, &t, len(events)); xerr != nil {
				return eventstore.AppendResult{}, mapError(ctx, s.isClosed(), op, xerr)
			}
			res, ok, err = replay(t, events, ids)
		}
		if ok {
			if err != nil {
				return eventstore.AppendResult{}, fmt.Errorf("esdbstore: %s: %w", op, err)
			}
			return res, nil
		}
		if !expected.Satisfied(t.last, t.exists) {
			return eventstore.AppendResult{}, fmt.Errorf("esdbstore: %w", &eventstore.WrongExpectedRevisionError{
				Stream: stream, Expected: expected, Actual: t.last, ActualExists: t.exists,
			})
		}
		want := concreteRevision(t.last, t.exists)
		wr, err := call(s, octx, func(ctx context.Context, c *esdb.Client) (*esdb.WriteResult, error) {
			return c.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: want}, data...)
		})
		if err != nil {
			if classify(err) == kindWrongExpectedVersion {
				continue // something landed in between: read again
			}
			return eventstore.AppendResult{}, mapError(ctx, s.isClosed(), op, err)
		}
		first := uint64(0)
		if t.exists {
			first = t.last + 1
		}
		if wr.CommitPosition == 0 || wr.CommitPosition != wr.PreparePosition && len(events) == 1 ||
			wr.NextExpectedVersion != first+uint64(len(events))-1 {
			// The server did not say where the events landed (it answers so when it found them
			// written already): read them back.
			continue
		}
		// The commit position of a multi-event append is that of its last event (its prepare
		// position is the first event's).
		return eventstore.AppendResult{NextExpectedRevision: wr.NextExpectedVersion, Position: eventstore.Position(wr.CommitPosition)}, nil
	}
}
