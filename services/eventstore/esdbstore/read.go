package esdbstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"guestlist.dev/services/eventstore"
)

// readAllPage reads up to count events of $all from from in direction dir.
func readAllPage(ctx context.Context, c *esdb.Client, dir esdb.Direction, from esdb.AllPosition, count int) ([]*esdb.ResolvedEvent, error) {
	rs, err := c.ReadAll(ctx, esdb.ReadAllOptions{Direction: dir, From: from}, uint64(count))
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	return drain(rs, count)
}

// readStreamPage reads up to count events of stream from revision from in direction dir.
func readStreamPage(ctx context.Context, c *esdb.Client, stream string, dir esdb.Direction, from esdb.StreamPosition, count int) ([]*esdb.ResolvedEvent, error) {
	rs, err := c.ReadStream(ctx, stream, esdb.ReadStreamOptions{Direction: dir, From: from}, uint64(count))
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	return drain(rs, count)
}

func drain(rs *esdb.ReadStream, count int) ([]*esdb.ResolvedEvent, error) {
	out := make([]*esdb.ResolvedEvent, 0, min(count, 1024))
	for {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
}

// ReadStream implements eventstore.Store. Events of EventStoreDB's own types (none in streams
// guestlist writes) are skipped.
func (s *Store) ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	op := fmt.Sprintf("read stream %q", stream)
	octx, done, err := s.opContext(ctx)
	if err != nil {
		return nil, mapError(ctx, true, op, err)
	}
	defer done()
	if stream == "" {
		return nil, fmt.Errorf("esdbstore: read stream: empty stream name: %w", eventstore.ErrStreamNotFound)
	}
	out := []eventstore.RecordedEvent{}
	esDir := esdb.Forwards
	if dir == eventstore.Backwards {
		esDir = esdb.Backwards
	}
	var pos esdb.StreamPosition
	switch {
	case limit < 1:
		// Nothing to read, but a missing stream is still not found.
		if _, err := s.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, 1); err != nil {
			return nil, err
		}
		return out, nil
	case dir == eventstore.Backwards && from > maxRevision:
		pos = esdb.End{}
	case from > maxRevision:
		// Past any revision the server can hold: nothing to read, if the stream exists.
		if _, err := s.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, 1); err != nil {
			return nil, err
		}
		return out, nil
	default:
		pos = esdb.Revision(from)
	}
	retriedFromEnd := false
	for len(out) < limit {
		count := limit - len(out)
		evs, err := call(s, octx, func(ctx context.Context, c *esdb.Client) ([]*esdb.ResolvedEvent, error) {
			return readStreamPage(ctx, c, stream, esDir, pos, count)
		})
		if err != nil {
			return nil, mapError(ctx, s.isClosed(), op, err)
		}
		if len(evs) == 0 && len(out) == 0 && esDir == esdb.Backwards && !retriedFromEnd {
			// The stream exists (or the server would have said not found) but holds nothing at
			// or below from: from is past its end, and a backwards read starts at the last event.
			if _, isEnd := pos.(esdb.End); !isEnd {
				pos, retriedFromEnd = esdb.End{}, true
				continue
			}
		}
		for _, re := range evs {
			ev, system, err := recorded(re)
			if err != nil {
				return nil, fmt.Errorf("esdbstore: %s: %w", op, err)
			}
			if !system && len(out) < limit {
				out = append(out, ev)
			}
		}
		if len(evs) < count {
			break
		}
		last := evs[len(evs)-1].OriginalEvent().EventNumber
		if esDir == esdb.Forwards {
			pos = esdb.Revision(last + 1)
		} else {
			if last == 0 {
				break
			}
			pos = esdb.Revision(last - 1)
		}
	}
	return out, nil
}

// readAllBatch bounds the events one $all read asks for.
const readAllBatch = 4096

// ReadAll implements eventstore.Store. The client reads $all without a server-side filter, so
// the filter (and the exclusion of EventStoreDB's own events) applies here: a selective filter
// reads through everything after from.
func (s *Store) ReadAll(ctx context.Context, from eventstore.Position, limit int, filter eventstore.Filter) ([]eventstore.RecordedEvent, error) {
	const op = "read all"
	octx, done, err := s.opContext(ctx)
	if err != nil {
		return nil, mapError(ctx, true, op, err)
	}
	defer done()
	out := []eventstore.RecordedEvent{}
	plan := planFilter(filter)
	filtered := len(filter.StreamPrefixes) > 0 || len(filter.EventTypePrefixes) > 0
	next := allPosition(from)
	for len(out) < limit {
		// Reading $all from a position includes the event there: ask for one more.
		count := min(limit-len(out)+1, readAllBatch)
		if filtered {
			count = min(max(count, 512), readAllBatch)
		}
		start := next
		evs, err := call(s, octx, func(ctx context.Context, c *esdb.Client) ([]*esdb.ResolvedEvent, error) {
			return readAllPage(ctx, c, esdb.Forwards, start, count)
		})
		if err != nil {
			if from > eventstore.Start && classify(err) == kindOther && !s.isClosed() && ctx.Err() == nil {
				// A position past the end may be refused rather than read as empty.
				if last, lerr := s.LastPosition(ctx); lerr == nil && from >= last {
					return out, nil
				}
			}
			return nil, mapError(ctx, s.isClosed(), op, err)
		}
		for _, re := range evs {
			r := re.OriginalEvent()
			if r == nil {
				continue
			}
			if p, ok := start.(esdb.Position); ok && !after(r.Position, p) {
				continue // the event at the start position itself
			}
			ev, system, err := recorded(re)
			if err != nil {
				return nil, fmt.Errorf("esdbstore: %s: %w", op, err)
			}
			if system || ev.Position <= from || !plan.match(ev.Stream, ev.Type) {
				continue
			}
			out = append(out, ev)
			if len(out) == limit {
				break
			}
		}
		if len(evs) < count {
			break
		}
		next = evs[len(evs)-1].OriginalEvent().Position
	}
	return out, nil
}
