package esdbstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/storetest"
)

// These tests run the real client against the fake of the server's Streams service
// (fake_test.go): the client builds its own error values from what the fake answers.

func ev(typ, data string) eventstore.EventData {
	return eventstore.EventData{ID: storetest.NewEventID(), Type: typ, Data: []byte(data), Metadata: eventstore.Metadata{Actor: "wire"}}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestWireErrors(t *testing.T) {
	f := newFakeESDB()
	s := fakeStoreFor(t, f)
	ctx := testCtx(t)

	// The client's own wrong-expected-version error, from the server's answer.
	if _, err := s.Append(ctx, "w-1", eventstore.NoStream(), ev("t", "1")); err != nil {
		t.Fatal(err)
	}
	c, err := s.acquire()
	if err != nil {
		t.Fatal(err)
	}
	second := ev("t", "2")
	_, werr := c.c.AppendToStream(ctx, "w-1", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}},
		toEventData([]eventstore.EventData{second}, []uuid.UUID{uuid.MustParse(second.ID)})...)
	c.inflight.Add(-1)
	var e *esdb.Error
	if !errors.As(werr, &e) || e.Code() != esdb.ErrorCodeWrongExpectedVersion || classify(werr) != kindWrongExpectedVersion {
		t.Fatalf("client error = %v; want ErrorCodeWrongExpectedVersion", werr)
	}

	// Through the store: details from the stream as the server reported it.
	_, err = s.Append(ctx, "w-1", eventstore.Exact(5), ev("t", "3"))
	var wre *eventstore.WrongExpectedRevisionError
	if !errors.As(err, &wre) || !errors.Is(err, eventstore.ErrWrongExpectedRevision) || wre.Actual != 0 || !wre.ActualExists || wre.Stream != "w-1" {
		t.Errorf("append with a wrong revision = %v; want WrongExpectedRevisionError at revision 0", err)
	}

	// A deleted stream: the server's "stream-deleted" trailer.
	f.tombstone("w-1")
	if _, err := s.ReadStream(ctx, "w-1", eventstore.Forwards, 0, 10); !errors.Is(err, eventstore.ErrStreamDeleted) || !errors.As(err, &e) || e.Code() != esdb.ErrorCodeStreamDeleted {
		t.Errorf("read of a deleted stream = %v; want ErrStreamDeleted", err)
	}
	if _, err := s.Append(ctx, "w-1", eventstore.Any(), ev("t", "4")); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Errorf("append to a deleted stream = %v; want ErrStreamDeleted", err)
	}

	// Not found.
	if _, err := s.ReadStream(ctx, "w-missing", eventstore.Backwards, eventstore.End, 1); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("read of a missing stream = %v; want ErrStreamNotFound", err)
	}

	// Unavailable: the server answers every call with Unavailable.
	f.setDown(true)
	if _, err := s.Append(ctx, "w-2", eventstore.Any(), ev("t", "5")); !errors.Is(err, eventstore.ErrUnavailable) {
		t.Errorf("append while the server is unavailable = %v; want ErrUnavailable", err)
	}
	if _, err := s.ReadAll(ctx, eventstore.Start, 10, eventstore.Filter{}); !errors.Is(err, eventstore.ErrUnavailable) {
		t.Errorf("read all while the server is unavailable = %v; want ErrUnavailable", err)
	}
	f.setDown(false)

	// An event whose commit and prepare positions differ is refused loudly, never mis-mapped.
	f.mu.Lock()
	f.splitNext = true
	f.mu.Unlock()
	if _, err := s.Append(ctx, "w-3", eventstore.NoStream(), ev("t", "a"), ev("t", "b")); err != nil {
		t.Fatalf("append: %v", err)
	}
	if _, err := s.ReadStream(ctx, "w-3", eventstore.Forwards, 0, 10); !errors.Is(err, errSplitPosition) {
		t.Errorf("read of split positions = %v; want errSplitPosition", err)
	}
	if _, err := s.ReadAll(ctx, eventstore.Start, 1000, eventstore.Filter{StreamPrefixes: []string{"w-3"}}); !errors.Is(err, errSplitPosition) {
		t.Errorf("read all of split positions = %v; want errSplitPosition", err)
	}

	// A server that leaves positions out of stream reads (before 22.10) is named.
	if _, err := s.Append(ctx, "w-4", eventstore.NoStream(), ev("t", "x")); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.readsWithoutPosition = true
	f.mu.Unlock()
	if _, err := s.Append(ctx, "w-4", eventstore.Any(), ev("t", "y")); !errors.Is(err, errNoPosition) || !strings.Contains(err.Error(), "22.10") {
		t.Errorf("append against an old server = %v; want errNoPosition naming 22.10", err)
	}
	if _, err := s.ReadStream(ctx, "w-4", eventstore.Forwards, 0, 10); !errors.Is(err, errNoPosition) {
		t.Errorf("read against an old server = %v; want errNoPosition", err)
	}
}

func TestWireSystemEventsExcluded(t *testing.T) {
	f := newFakeESDB()
	s := fakeStoreFor(t, f)
	ctx := testCtx(t)
	res, err := s.Append(ctx, "sys-a", eventstore.NoStream(), ev("t", "1"))
	if err != nil {
		t.Fatal(err)
	}
	f.system("$stats-127.0.0.1:2113", "$statsCollected")
	f.system("sys-a", "$metadata-like") // a system event type inside a user stream
	if last, err := s.LastPosition(ctx); err != nil || last != res.Position {
		t.Errorf("LastPosition = %d, %v; want %d (the system events after it skipped)", last, err, res.Position)
	}
	all, err := s.ReadAll(ctx, eventstore.Start, 100, eventstore.Filter{})
	if err != nil || len(all) != 1 || all[0].Position != res.Position {
		t.Errorf("ReadAll = %v, %v; want the one event", all, err)
	}
	got, err := s.ReadStream(ctx, "sys-a", eventstore.Forwards, 0, 10)
	if err != nil || len(got) != 1 {
		t.Errorf("ReadStream = %v, %v; want the one event", got, err)
	}
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	res2, err := s.Append(ctx, "sys-a", eventstore.Any(), ev("t", "2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []eventstore.Position{res.Position, res2.Position} {
		e, err := sub.Next(ctx)
		if err != nil || e.Position != want {
			t.Fatalf("Next = %d, %v; want %d\n%s", e.Position, err, want, f)
		}
	}
	if _, err := s.Append(ctx, "$stats", eventstore.Any(), ev("t", "x")); !errors.Is(err, eventstore.ErrInvalidEvent) {
		t.Errorf("append to a system stream = %v; want ErrInvalidEvent", err)
	}
}

// collect reads n events from sub.
func collect(ctx context.Context, t *testing.T, sub eventstore.Subscription, n int) []eventstore.RecordedEvent {
	t.Helper()
	var out []eventstore.RecordedEvent
	for len(out) < n {
		e, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("Next after %d of %d events: %v", len(out), n, err)
		}
		out = append(out, e)
	}
	return out
}

func checkOrder(t *testing.T, got []eventstore.RecordedEvent, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].ID != want[i] {
			t.Fatalf("event %d is %s (%s), want %s", i, got[i].ID, got[i].Data, want[i])
		}
		if i > 0 && got[i].Position <= got[i-1].Position {
			t.Fatalf("event %d at position %d after %d", i, got[i].Position, got[i-1].Position)
		}
	}
}

// TestWireResumeAfterDrop drops the subscription (as a server restart does) in the middle of
// catch-up and of live delivery, with a filter that makes the server skip most events and send
// checkpoints, and checks that every event arrives once, in order.
func TestWireResumeAfterDrop(t *testing.T) {
	f := newFakeESDB()
	f.checkpointEvery = 3
	s := fakeStoreFor(t, f)
	ctx := testCtx(t)
	var want []string
	appendN := func(n int) {
		for i := range n {
			keep := ev("keep.E", fmt.Sprint(len(want)))
			if _, err := s.Append(ctx, "r-keep", eventstore.Any(), keep); err != nil {
				t.Fatal(err)
			}
			want = append(want, keep.ID)
			for j := range 4 { // skipped by the server: checkpoints cover them
				if _, err := s.Append(ctx, "r-other", eventstore.Any(), ev("other.E", fmt.Sprint(i, j))); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	appendN(10)
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"r-keep"}, EventTypePrefixes: []string{"keep."}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := collect(ctx, t, sub, 4)
	f.dropSubscriptions()
	appendN(5)
	got = append(got, collect(ctx, t, sub, 11)...)
	f.dropSubscriptions()
	f.dropSubscriptions()
	appendN(5)
	got = append(got, collect(ctx, t, sub, 5)...)
	checkOrder(t, got, want)
	f.mu.Lock()
	n := f.subscribed
	f.mu.Unlock()
	if n < 3 {
		t.Errorf("the fake saw %d subscriptions, want a resubscription after each drop", n)
	}
}

// TestWireServerRestart stops the server long enough for the client to give up its discovery,
// appends nothing meanwhile, and starts it again: calls fail with ErrUnavailable while it is
// down, the store replaces the client, and the subscription resumes where it was.
func TestWireServerRestart(t *testing.T) {
	f := newFakeESDB()
	s := fakeStoreFor(t, f)
	ctx := testCtx(t)
	first, err := s.Append(ctx, "rs", eventstore.NoStream(), ev("t", "before"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"rs"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if e, err := sub.Next(ctx); err != nil || e.Position != first.Position {
		t.Fatalf("Next = %+v, %v", e, err)
	}
	s.mu.Lock()
	before := s.cur
	s.mu.Unlock()

	f.stop()
	// The client's discovery (10 attempts 100 ms apart by default) gives up.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := s.LastPosition(ctx)
		if !errors.Is(err, eventstore.ErrUnavailable) {
			t.Fatalf("LastPosition while the server is down = %v; want ErrUnavailable", err)
		}
		s.mu.Lock()
		replaced := s.cur != before
		s.mu.Unlock()
		if replaced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client never gave up while the server was down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.restart(t)

	var second eventstore.AppendResult
	for {
		second, err = s.Append(ctx, "rs", eventstore.Exact(0), ev("t", "after"))
		if err == nil {
			break
		}
		if !errors.Is(err, eventstore.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("append after the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e, err := sub.Next(ctx)
	if err != nil || e.Position != second.Position {
		t.Fatalf("Next after the restart = %+v, %v; want the event at %d", e, err, second.Position)
	}
}

// TestWireCloseEndsWaitingCalls closes the store while calls wait on an unreachable server.
func TestWireCloseEndsWaitingCalls(t *testing.T) {
	f := newFakeESDB()
	s := fakeStoreFor(t, f)
	ctx := testCtx(t)
	f.stop()
	errc := make(chan error, 2)
	go func() {
		_, err := s.Append(ctx, "c", eventstore.Any(), ev("t", "x"))
		errc <- err
	}()
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := sub.Next(ctx)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 2 {
		select {
		case err := <-errc:
			if !errors.Is(err, eventstore.ErrClosed) && !errors.Is(err, eventstore.ErrUnavailable) {
				t.Errorf("call during Close = %v; want ErrClosed (or ErrUnavailable if it failed first)", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a call did not return after Close")
		}
	}
}

// TestWireReadStreamEdges covers reads the conformance suite does not: a backwards read from
// past the end with a max that reaches below it (the server pages on from the last event), and
// max < 1 on a missing stream (still not found, as the embedded store answers).
func TestWireReadStreamEdges(t *testing.T) {
	f := newFakeESDB()
	s := fakeStoreFor(t, f)
	ctx := testCtx(t)
	var evs []eventstore.EventData
	for i := range 10 {
		evs = append(evs, ev("t", fmt.Sprint(i)))
	}
	if _, err := s.Append(ctx, "edges", eventstore.NoStream(), evs...); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadStream(ctx, "edges", eventstore.Backwards, 12, 5)
	if err != nil {
		t.Fatal(err)
	}
	var revs []uint64
	for _, e := range got {
		revs = append(revs, e.Revision)
	}
	if fmt.Sprint(revs) != "[9 8 7 6 5]" {
		t.Errorf("ReadStream(Backwards, 12, 5) = revisions %v, want [9 8 7 6 5]", revs)
	}
	for _, max := range []int{0, -1} {
		if got, err := s.ReadStream(ctx, "edges-missing", eventstore.Forwards, 0, max); !errors.Is(err, eventstore.ErrStreamNotFound) {
			t.Errorf("ReadStream(missing, max %d) = %v, %v; want ErrStreamNotFound", max, got, err)
		}
		if got, err := s.ReadStream(ctx, "edges", eventstore.Forwards, 0, max); err != nil || got == nil || len(got) != 0 {
			t.Errorf("ReadStream(existing, max %d) = %v, %v; want an empty slice", max, got, err)
		}
	}
}

// TestWireServerDeduplication checks the fake against the server's idempotent-write answer: a
// retry with the first attempt's expected revision is answered with the stream revision and the
// $all position of the retry's last event (StorageMessage.AlreadyCommitted carries the log
// position of the end event), not without a position.
func TestWireServerDeduplication(t *testing.T) {
	f := newFakeESDB()
	s := fakeStoreFor(t, f)
	ctx := testCtx(t)
	a, b := ev("t", "a"), ev("t", "b")
	first, err := s.Append(ctx, "dedup", eventstore.NoStream(), a, b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.acquire()
	if err != nil {
		t.Fatal(err)
	}
	defer c.inflight.Add(-1)
	data := toEventData([]eventstore.EventData{a, b}, []uuid.UUID{uuid.MustParse(a.ID), uuid.MustParse(b.ID)})
	for _, exp := range []esdb.ExpectedRevision{esdb.NoStream{}, esdb.Any{}} {
		wr, err := c.c.AppendToStream(ctx, "dedup", esdb.AppendToStreamOptions{ExpectedRevision: exp}, data...)
		if err != nil {
			t.Fatalf("retry with %T: %v", exp, err)
		}
		if wr.NextExpectedVersion != first.NextExpectedRevision || wr.CommitPosition != uint64(first.Position) || wr.PreparePosition != uint64(first.Position) {
			t.Errorf("retry with %T = %+v; want revision %d at %d/%d", exp, wr, first.NextExpectedRevision, first.Position, first.Position)
		}
	}
}
