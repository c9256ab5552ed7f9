package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/storetest"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store { return openTemp(t) })
}

func TestConformanceIndexFlush(t *testing.T) {
	// Index flushes every few events, so reads cross the boundary of overlay and index buckets.
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) eventstore.Store {
				s, err := Open(filepath.Join(t.TempDir(), "events.db"), WithIndexFlush(n))
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				t.Cleanup(func() { _ = s.Close() })
				return s
			})
		})
	}
}

func TestConformanceShared(t *testing.T) {
	// One store for all subtests, as with a server.
	s := openTemp(t)
	storetest.Run(t, func(t *testing.T) eventstore.Store { return s })
}

func TestConformanceReopen(t *testing.T) {
	storetest.RunReopen(t, func(t *testing.T, dir string) eventstore.Store {
		s, err := Open(filepath.Join(dir, "events.db"))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func ev(typ, data string) eventstore.EventData {
	return eventstore.EventData{ID: storetest.NewEventID(), Type: typ, Data: []byte(data)}
}

func TestPositionsStartAtOneAndAreDense(t *testing.T) {
	ctx := t.Context()
	s := openTemp(t)
	if p, err := s.LastPosition(ctx); err != nil || p != eventstore.Start {
		t.Fatalf("LastPosition of a new store = %d, %v; want 0", p, err)
	}
	res, err := s.Append(ctx, "a", eventstore.NoStream(), ev("T", "1"))
	if err != nil || res.Position != 1 || res.NextExpectedRevision != 0 {
		t.Fatalf("first append = %+v, %v; want position 1, revision 0", res, err)
	}
	res, err = s.Append(ctx, "b", eventstore.NoStream(), ev("T", "2"), ev("T", "3"))
	if err != nil || res.Position != 3 {
		t.Fatalf("second append = %+v, %v; want position 3", res, err)
	}
	all, err := s.ReadAll(ctx, eventstore.Start, 10, eventstore.Filter{})
	if err != nil || len(all) != 3 {
		t.Fatalf("ReadAll = %d events, %v", len(all), err)
	}
	for i, e := range all {
		if e.Position != eventstore.Position(i+1) {
			t.Errorf("event %d at position %d", i, e.Position)
		}
	}
}

func TestIdempotencyConflicts(t *testing.T) {
	ctx := t.Context()
	s := openTemp(t)
	a, b := ev("T", "a"), ev("T", "b")
	if _, err := s.Append(ctx, "s", eventstore.NoStream(), a, b); err != nil {
		t.Fatal(err)
	}
	c := ev("T", "c")
	if _, err := s.Append(ctx, "s", eventstore.Exact(1), c); err != nil {
		t.Fatal(err)
	}
	otherData := a
	otherData.Data = []byte("changed")
	otherType := a
	otherType.Type = "U"
	for name, evs := range map[string][]eventstore.EventData{
		"reordered":      {b, a},
		"not together":   {a, c},
		"other data":     {otherData},
		"other type":     {otherType},
		"partial prefix": {a, b, ev("T", "d")},
	} {
		_, err := s.Append(ctx, "s", eventstore.Any(), evs...)
		if !errors.Is(err, eventstore.ErrIdempotencyConflict) {
			t.Errorf("%s: Append = %v, want ErrIdempotencyConflict", name, err)
		}
	}
	// Metadata is not compared.
	withMeta := b
	withMeta.Metadata.TraceParent = "00-00000000000000000000000000000001-0000000000000001-01"
	if res, err := s.Append(ctx, "s", eventstore.Any(), withMeta); err != nil || res.NextExpectedRevision != 1 || res.Position != 2 {
		t.Errorf("retry with other metadata = %+v, %v; want revision 1 at 2", res, err)
	}
	if all, _ := s.ReadAll(ctx, eventstore.Start, 100, eventstore.Filter{}); len(all) != 3 {
		t.Errorf("store holds %d events, want 3", len(all))
	}
}

// TestBatchIsolation commits one batch by hand: each append is checked against the appends
// before it in the batch, and a failing one does not affect the others, even when bbolt itself
// rejects it.
func TestBatchIsolation(t *testing.T) {
	t.Run("overlay", func(t *testing.T) { testBatchIsolation(t, false) })
	t.Run("flush", func(t *testing.T) { testBatchIsolation(t, true) })
}

func testBatchIsolation(t *testing.T, flush bool) {
	ctx := t.Context()
	s := openTemp(t)
	a := ev("T", "a")
	mk := func(stream string, exp eventstore.ExpectedRevision, evs ...eventstore.EventData) *appendReq {
		r := &appendReq{ctx: ctx, stream: stream, expected: exp, events: evs, done: make(chan struct{}, 1)}
		for _, e := range evs {
			id, err := eventstore.ParseUUID(e.ID)
			if err != nil {
				t.Fatal(err)
			}
			r.ids = append(r.ids, id)
		}
		return r
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	b := ev("T", "b")
	reqs := []*appendReq{
		mk("s", eventstore.NoStream(), a),                   // ok: s@0, position 1
		mk("s", eventstore.NoStream(), ev("T", "x")),        // fails: s exists now
		mk(strings.Repeat("k", 40000), eventstore.Any(), b), // fails in bbolt: key too large
		mk("s", eventstore.Exact(0), ev("T", "c")),          // ok: s@1, position 2
		mk("s", eventstore.Exact(5), a),                     // idempotent retry of the first
		mk("s", eventstore.Any(), a, ev("T", "d")),          // partial overlap
		mk("t", eventstore.Any(), b),                        // ok: t@0, position 3
		mk("u", eventstore.Any(), ev("T", "e")),             // context cancelled
		mk("t", eventstore.StreamExists(), ev("T", "f")),    // ok: t@1, position 4
	}
	reqs[7].ctx = cancelled
	s.commitBatch(reqs, flush)
	type want struct {
		res eventstore.AppendResult
		err error
	}
	wants := []want{
		{eventstore.AppendResult{NextExpectedRevision: 0, Position: 1}, nil},
		{eventstore.AppendResult{}, eventstore.ErrWrongExpectedRevision},
		{eventstore.AppendResult{}, bolt.ErrKeyTooLarge},
		{eventstore.AppendResult{NextExpectedRevision: 1, Position: 2}, nil},
		{eventstore.AppendResult{NextExpectedRevision: 0, Position: 1}, nil},
		{eventstore.AppendResult{}, eventstore.ErrIdempotencyConflict},
		{eventstore.AppendResult{NextExpectedRevision: 0, Position: 3}, nil},
		{eventstore.AppendResult{}, context.Canceled},
		{eventstore.AppendResult{NextExpectedRevision: 1, Position: 4}, nil},
	}
	for i, r := range reqs {
		w := wants[i]
		if r.res != w.res || (w.err == nil) != (r.err == nil) || (w.err != nil && !errors.Is(r.err, w.err)) {
			t.Errorf("append %d = %+v, %v; want %+v, %v", i, r.res, r.err, w.res, w.err)
		}
	}
	if p, _ := s.LastPosition(ctx); p != 4 {
		t.Errorf("LastPosition = %d, want 4", p)
	}
	all, err := s.ReadAll(ctx, eventstore.Start, 100, eventstore.Filter{})
	if err != nil || len(all) != 4 {
		t.Fatalf("ReadAll = %d events, %v; want 4", len(all), err)
	}
	for i, want := range []string{"s", "s", "t", "t"} {
		if all[i].Stream != want || all[i].Position != eventstore.Position(i+1) {
			t.Errorf("event %d = %s@%d, want %s@%d", i, all[i].Stream, all[i].Position, want, i+1)
		}
	}
	if !all[0].Time.Equal(all[3].Time) {
		t.Errorf("events of one commit have different times: %v, %v", all[0].Time, all[3].Time)
	}
}

func TestLimits(t *testing.T) {
	ctx := t.Context()
	s := openTemp(t)
	_, err := s.Append(ctx, strings.Repeat("n", MaxStreamNameLen+1), eventstore.Any(), ev("T", "x"))
	if !errors.Is(err, eventstore.ErrInvalidEvent) || !strings.Contains(err.Error(), "stream name") {
		t.Errorf("append to a too long stream name = %v, want ErrInvalidEvent naming the stream name", err)
	}
	big := ev("T", "")
	big.Data = make([]byte, MaxAppendSize)
	_, err = s.Append(ctx, "s", eventstore.Any(), big)
	if !errors.Is(err, eventstore.ErrInvalidEvent) {
		t.Errorf("too large append = %v, want ErrInvalidEvent", err)
	}
	// The messages name the problem.
	for want, e := range map[string]eventstore.EventData{
		"no id":      {Type: "T"},
		"no type":    {ID: storetest.NewEventID()},
		"not a UUID": {ID: "1234", Type: "T"},
	} {
		_, err := s.Append(ctx, "s", eventstore.Any(), e)
		if !errors.Is(err, eventstore.ErrInvalidEvent) || !strings.Contains(err.Error(), want) {
			t.Errorf("Append = %v, want ErrInvalidEvent saying %q", err, want)
		}
	}
}

func TestCorruptRecordIsAnError(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "events.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := s.Append(ctx, "s", eventstore.Any(), ev("T", strings.Repeat("x", i*10))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Truncate the record at position 2 behind the store's back.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLog)
		key := posKey(nil, 2)
		v := append([]byte(nil), b.Get(key)...)
		return b.Put(key, v[:len(v)-3])
	})
	if cerr := db.Close(); err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.ReadAll(ctx, eventstore.Start, 10, eventstore.Filter{}); !errors.Is(err, errCorrupt) {
		t.Errorf("ReadAll over a corrupt record = %v, want a corrupt record error", err)
	}
	if _, err := s.ReadStream(ctx, "s", eventstore.Backwards, eventstore.End, 10); !errors.Is(err, errCorrupt) {
		t.Errorf("ReadStream over a corrupt record = %v, want a corrupt record error", err)
	}
	if got, err := s.ReadStream(ctx, "s", eventstore.Forwards, 0, 1); err != nil || len(got) != 1 {
		t.Errorf("ReadStream before the corrupt record = %d events, %v", len(got), err)
	}
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := sub.Next(ctx); err != nil {
		t.Errorf("first Next = %v", err)
	}
	if _, err := sub.Next(ctx); !errors.Is(err, errCorrupt) {
		t.Errorf("Next at the corrupt record = %v, want a corrupt record error", err)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path, WithLockTimeout(50*time.Millisecond)); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Errorf("second Open = %v, want a locked error", err)
	}
}

// TestUnindexedLogAfterCrash copies the file as a crash would leave it, with index entries
// still in memory only, and checks that Open indexes them.
func TestUnindexedLogAfterCrash(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "events.db"), WithIndexFlush(10))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var first []eventstore.EventData
	for i := range 25 {
		e := ev("T", fmt.Sprint(i))
		if i < 2 {
			first = append(first, e)
			if i == 0 {
				continue
			}
			if _, err := s.Append(ctx, "s", eventstore.NoStream(), first...); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := s.Append(ctx, fmt.Sprint("s", i%2), eventstore.Any(), e); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.IndexFlushes == 0 || len(s.overlay.entries) == 0 {
		t.Fatalf("want some index flushes and some entries in memory: %+v, %d in memory", st, len(s.overlay.entries))
	}
	crashed := filepath.Join(dir, "crashed.db")
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(crashed, 0o600) }); err != nil {
		t.Fatal(err)
	}
	want := map[string][]eventstore.RecordedEvent{}
	for _, stream := range []string{"s", "s0", "s1"} {
		want[stream], err = s.ReadStream(ctx, stream, eventstore.Forwards, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
	}

	c, err := Open(crashed)
	if err != nil {
		t.Fatalf("Open after a crash: %v", err)
	}
	defer c.Close()
	for stream, evs := range want {
		got, err := c.ReadStream(ctx, stream, eventstore.Forwards, 0, 100)
		if err != nil || len(got) != len(evs) {
			t.Fatalf("%s after a crash: %d events, %v; want %d", stream, len(got), err, len(evs))
		}
		for i := range got {
			if !sameRecorded(got[i], evs[i]) {
				t.Errorf("%s@%d after a crash = %+v, want %+v", stream, i, got[i], evs[i])
			}
		}
	}
	if res, err := c.Append(ctx, "s", eventstore.Any(), first...); err != nil || res.Position != 2 || res.NextExpectedRevision != 1 {
		t.Errorf("retry after a crash = %+v, %v; want the original result", res, err)
	}
	if err := c.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyIndexed); v == nil || eventstore.Position(binary.BigEndian.Uint64(v)) != 25 {
			return fmt.Errorf("indexed position = %x, want 25", v)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// TestReadStreamDuringFlushes reads a stream while it grows and the committer moves its index
// entries from memory to the index buckets: every read must be a gapless run of revisions.
func TestReadStreamDuringFlushes(t *testing.T) {
	ctx := t.Context()
	s, err := Open(filepath.Join(t.TempDir(), "events.db"), WithIndexFlush(4))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const total = 300
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := range total {
			if _, err := s.Append(ctx, "grow", eventstore.Any(), ev("T", fmt.Sprint(i))); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for range 2 {
		wg.Go(func() {
			for reads := 0; ; reads++ {
				select {
				case <-done:
					return
				default:
				}
				fwd, err := s.ReadStream(ctx, "grow", eventstore.Forwards, 0, total)
				if errors.Is(err, eventstore.ErrStreamNotFound) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				for i, e := range fwd {
					if e.Revision != uint64(i) {
						t.Errorf("forwards read %d: revision %d at index %d", reads, e.Revision, i)
						return
					}
				}
				back, err := s.ReadStream(ctx, "grow", eventstore.Backwards, eventstore.End, total)
				if err != nil {
					t.Error(err)
					return
				}
				if len(back) < len(fwd) {
					t.Errorf("backwards read found %d events after a forwards read found %d", len(back), len(fwd))
				}
				for i, e := range back {
					if e.Revision != uint64(len(back)-1-i) {
						t.Errorf("backwards read %d: revision %d at index %d of %d", reads, e.Revision, i, len(back))
						return
					}
				}
				if len(back) > 6 {
					mid, err := s.ReadStream(ctx, "grow", eventstore.Backwards, uint64(len(back)-3), 4)
					if err != nil || len(mid) != 4 || mid[0].Revision != uint64(len(back)-3) || mid[3].Revision != uint64(len(back)-6) {
						t.Errorf("backwards read from the middle: %d events, %v", len(mid), err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if st := s.Stats(); st.IndexFlushes < 10 {
		t.Errorf("only %d index flushes", st.IndexFlushes)
	}
}
