package boltstore

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
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
	s.commitBatch(reqs)
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
