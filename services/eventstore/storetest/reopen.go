package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
)

// RunReopen runs the conformance tests that close a store and open it again. openAt opens the
// store kept in dir (a new, empty directory for each test, the same for all openings within a
// test); a server backend ignores dir and connects a new client. The suite closes every store
// that it gets from openAt.
func RunReopen(t *testing.T, openAt func(t *testing.T, dir string) eventstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func() eventstore.Store)
	}{
		{"ReopenKeepsEverything", testReopenKeepsEverything},
		{"ClosedStore", testClosedStore},
		{"CloseDuringAppends", testCloseDuringAppends},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			tc.fn(t, func() eventstore.Store { return openAt(t, dir) })
		})
	}
}

func testReopenKeepsEverything(t *testing.T, open func() eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	s := open()
	from := lastPosition(ctx, t, s)
	first := events(3, n.typ("E"), "a")
	res1 := mustAppend(ctx, t, s, n.stream("a"), eventstore.NoStream(), first...)
	mustAppend(ctx, t, s, n.stream("b"), eventstore.NoStream(), events(2, n.typ("E"), "b")...)
	mustAppend(ctx, t, s, n.stream("a"), eventstore.Exact(2), event(n.typ("E"), "a3"))
	before := readAll(ctx, t, s, from, 100, n.all())
	last := lastPosition(ctx, t, s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = open()
	defer s.Close()
	after := readAll(ctx, t, s, from, 100, n.all())
	if len(after) != len(before) {
		t.Fatalf("after reopening, read %d events, want %d", len(after), len(before))
	}
	for i := range after {
		if !sameEvent(after[i], before[i]) {
			t.Errorf("after reopening, event %d = %+v, want %+v", i, after[i], before[i])
		}
	}
	if got := lastPosition(ctx, t, s); got < last {
		t.Errorf("after reopening, LastPosition = %d, want at least %d", got, last)
	}
	// Revisions and positions continue.
	res := mustAppend(ctx, t, s, n.stream("a"), eventstore.Exact(3), event(n.typ("E"), "a4"))
	if res.NextExpectedRevision != 4 || res.Position <= last {
		t.Errorf("append after reopening = %+v, want revision 4 at a position after %d", res, last)
	}
	// Idempotency survives too.
	if got, err := s.Append(ctx, n.stream("a"), eventstore.NoStream(), first...); err != nil || got != res1 {
		t.Errorf("retry after reopening = %+v, %v; want %+v", got, err, res1)
	}
	// Subscriptions see the old events and the new.
	sub := subscribe(ctx, t, s, from, n.all())
	got := sub.wait(t, len(before)+1)
	for i := range before {
		if !sameEvent(got[i], before[i]) {
			t.Errorf("subscription after reopening: event %d = %+v, want %+v", i, got[i], before[i])
		}
	}
	if got[len(before)].Position != res.Position {
		t.Errorf("subscription after reopening: new event at %d, want %d", got[len(before)].Position, res.Position)
	}
}

func testClosedStore(t *testing.T, open func() eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	s := open()
	mustAppend(ctx, t, s, n.stream("a"), eventstore.NoStream(), event(n.typ("E"), "1"))
	sub, err := s.Subscribe(ctx, lastPosition(ctx, t, s), n.all())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	waiting := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx)
		waiting <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-waiting:
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("waiting Next after Close = %v, want ErrClosed", err)
		}
	case <-time.After(testTimeout / 2):
		t.Fatal("a waiting Next did not return after Close")
	}
	if _, err := sub.Next(ctx); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("Next after Close = %v, want ErrClosed", err)
	}
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("%s on a closed store = %v, want ErrClosed", op, err)
		}
	}
	_, err = s.Append(ctx, n.stream("a"), eventstore.Any(), event(n.typ("E"), "2"))
	check("Append", err)
	_, err = s.ReadStream(ctx, n.stream("a"), eventstore.Forwards, 0, 10)
	check("ReadStream", err)
	_, err = s.ReadAll(ctx, eventstore.Start, 10, eventstore.Filter{})
	check("ReadAll", err)
	_, err = s.LastPosition(ctx)
	check("LastPosition", err)
	_, err = s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	check("Subscribe", err)
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func testCloseDuringAppends(t *testing.T, open func() eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	s := open()
	const writers = 16
	type ack struct {
		stream string
		rev    uint64
		pos    eventstore.Position
		ev     eventstore.EventData
	}
	var (
		mu      sync.Mutex
		acks    []ack
		wg      sync.WaitGroup
		started = make(chan struct{}, writers)
	)
	for w := range writers {
		wg.Go(func() {
			stream := n.stream(fmt.Sprint("w", w))
			for i := 0; ; i++ {
				ev := event(n.typ("E"), fmt.Sprint(i))
				res, err := s.Append(ctx, stream, eventstore.Any(), ev)
				if i == 0 {
					started <- struct{}{}
				}
				if err != nil {
					if !errors.Is(err, eventstore.ErrClosed) {
						t.Errorf("Append during Close = %v, want success or ErrClosed", err)
					}
					return
				}
				mu.Lock()
				acks = append(acks, ack{stream, res.NextExpectedRevision, res.Position, ev})
				mu.Unlock()
			}
		})
	}
	for range writers {
		<-started
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
	if len(acks) == 0 {
		t.Fatal("no append succeeded before Close")
	}

	s = open()
	defer s.Close()
	for _, a := range acks {
		got, err := s.ReadStream(ctx, a.stream, eventstore.Forwards, a.rev, 1)
		if err != nil || len(got) != 1 {
			t.Errorf("acknowledged append %s@%d: read %v, %v", a.stream, a.rev, ids(got), err)
			continue
		}
		checkRecorded(t, got[0], a.stream, a.rev, a.ev)
		if got[0].Position != a.pos {
			t.Errorf("acknowledged append %s@%d at position %d, read at %d", a.stream, a.rev, a.pos, got[0].Position)
		}
	}
}
