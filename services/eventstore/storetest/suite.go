// Package storetest is the conformance suite of eventstore.Store. Every backend runs it from its
// own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) eventstore.Store { ... })
//	}
//	func TestConformanceReopen(t *testing.T) {
//		storetest.RunReopen(t, func(t *testing.T, dir string) eventstore.Store { ... })
//	}
//
// The tests use stream names and event types of their own (random per test), and read with
// filters on them, so they can run against a store shared with other tests, such as one server.
// They assume nothing about the values of positions beyond their order.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
)

// Run runs the conformance tests that keep a store open, each as a parallel subtest. open is
// called once by each subtest and may return a new store every time or the same shared one; the
// suite does not close it, so open should (with t.Cleanup) when the store is its own.
func Run(t *testing.T, open func(t *testing.T) eventstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s eventstore.Store)
	}{
		{"AppendAndRead", testAppendAndRead},
		{"ExpectedRevision", testExpectedRevision},
		{"ReadStream", testReadStream},
		{"ReadAll", testReadAll},
		{"ConcurrentExpectedRevision", testConcurrentExpectedRevision},
		{"Idempotency", testIdempotency},
		{"ConcurrentRetries", testConcurrentRetries},
		{"InvalidInput", testInvalidInput},
		{"SubscribeCatchUpThenLive", testSubscribeCatchUpThenLive},
		{"SubscribeFiltered", testSubscribeFiltered},
		{"SubscribeFromEnd", testSubscribeFromEnd},
		{"SubscriptionEnds", testSubscriptionEnds},
		{"SlowSubscriberDoesNotBlockAppends", testSlowSubscriber},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, open(t))
		})
	}
}

func testAppendAndRead(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	stream := n.stream("a")
	before := lastPosition(ctx, t, s)

	evs := events(3, n.typ("Created"), "payload")
	evs[1].Data = nil                       // empty data is allowed
	evs[2].Metadata = eventstore.Metadata{} // and so is empty metadata
	res := mustAppend(ctx, t, s, stream, eventstore.NoStream(), evs...)
	if res.NextExpectedRevision != 2 {
		t.Errorf("NextExpectedRevision = %d, want 2", res.NextExpectedRevision)
	}
	if res.Position <= before {
		t.Errorf("Position = %d, want after the previous last position %d", res.Position, before)
	}
	if last := lastPosition(ctx, t, s); last < res.Position {
		t.Errorf("LastPosition = %d after an append at %d", last, res.Position)
	}

	got := mustRead(ctx, t, s, stream, eventstore.Forwards, 0, 10)
	if len(got) != 3 {
		t.Fatalf("read %d events, want 3", len(got))
	}
	for i := range got {
		checkRecorded(t, got[i], stream, uint64(i), evs[i])
		if got[i].Position <= before {
			t.Errorf("event %d at position %d, not after %d", i, got[i].Position, before)
		}
		if i > 0 && got[i].Position <= got[i-1].Position {
			t.Errorf("positions not increasing: %d then %d", got[i-1].Position, got[i].Position)
		}
	}
	if got[2].Position != res.Position {
		t.Errorf("last event at position %d, append returned %d", got[2].Position, res.Position)
	}
	if !got[0].Time.Equal(got[2].Time) && got[0].Time.After(got[2].Time) {
		t.Errorf("times go backwards within one append: %v, %v", got[0].Time, got[2].Time)
	}

	// A second append continues the revisions.
	res2 := mustAppend(ctx, t, s, stream, eventstore.Exact(2), event(n.typ("Updated"), "more"))
	if res2.NextExpectedRevision != 3 || res2.Position <= res.Position {
		t.Errorf("second append = %+v, want revision 3 and a position after %d", res2, res.Position)
	}
}

func testExpectedRevision(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	typ := n.typ("E")

	type step struct {
		name    string
		exp     eventstore.ExpectedRevision
		prepare int // events in the stream before the append
		ok      bool
	}
	steps := []step{
		{"any on new stream", eventstore.Any(), 0, true},
		{"any on existing stream", eventstore.Any(), 2, true},
		{"no stream on new stream", eventstore.NoStream(), 0, true},
		{"no stream on existing stream", eventstore.NoStream(), 1, false},
		{"stream exists on new stream", eventstore.StreamExists(), 0, false},
		{"stream exists on existing stream", eventstore.StreamExists(), 3, true},
		{"exact on matching revision", eventstore.Exact(1), 2, true},
		{"exact 0 on one event", eventstore.Exact(0), 1, true},
		{"exact behind", eventstore.Exact(0), 2, false},
		{"exact ahead", eventstore.Exact(5), 2, false},
		{"exact 0 on new stream", eventstore.Exact(0), 0, false},
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			stream := n.stream(fmt.Sprint(i))
			if st.prepare > 0 {
				mustAppend(ctx, t, s, stream, eventstore.NoStream(), events(st.prepare, typ, "prep")...)
			}
			ev := event(typ, "x")
			res, err := s.Append(ctx, stream, st.exp, ev)
			if st.ok {
				if err != nil {
					t.Fatalf("Append(%v) with %d events in the stream: %v", st.exp, st.prepare, err)
				}
				if res.NextExpectedRevision != uint64(st.prepare) {
					t.Errorf("NextExpectedRevision = %d, want %d", res.NextExpectedRevision, st.prepare)
				}
				got := mustRead(ctx, t, s, stream, eventstore.Backwards, eventstore.End, 1)
				if len(got) != 1 || got[0].ID != ev.ID {
					t.Errorf("last event is %v, want %s", ids(got), ev.ID)
				}
				return
			}
			expectWrongRevision(t, err, stream, st.exp, uint64(st.prepare)-1, st.prepare > 0)
			// Nothing was written.
			got, rerr := s.ReadStream(ctx, stream, eventstore.Forwards, 0, 100)
			switch {
			case st.prepare == 0 && !errors.Is(rerr, eventstore.ErrStreamNotFound):
				t.Errorf("after a failed append to a new stream, ReadStream = %d events, %v; want ErrStreamNotFound", len(got), rerr)
			case st.prepare > 0 && (rerr != nil || len(got) != st.prepare):
				t.Errorf("after a failed append, stream holds %d events (%v), want %d", len(got), rerr, st.prepare)
			}
		})
	}
}

func testReadStream(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	stream := n.stream("r")
	evs := events(10, n.typ("E"), "r")
	mustAppend(ctx, t, s, stream, eventstore.NoStream(), evs[:4]...)
	mustAppend(ctx, t, s, n.stream("other"), eventstore.NoStream(), event(n.typ("E"), "o"))
	mustAppend(ctx, t, s, stream, eventstore.Exact(3), evs[4:]...)

	want := func(revs ...int) []string {
		out := make([]string, len(revs))
		for i, r := range revs {
			out[i] = evs[r].ID
		}
		return out
	}
	cases := []struct {
		name string
		dir  eventstore.Direction
		from uint64
		max  int
		want []string
	}{
		{"forwards all", eventstore.Forwards, 0, 100, want(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)},
		{"forwards from middle with max", eventstore.Forwards, 3, 4, want(3, 4, 5, 6)},
		{"forwards from last", eventstore.Forwards, 9, 4, want(9)},
		{"forwards past end", eventstore.Forwards, 10, 4, want()},
		{"forwards far past end", eventstore.Forwards, 1 << 40, 4, want()},
		{"backwards from end", eventstore.Backwards, eventstore.End, 3, want(9, 8, 7)},
		{"backwards from middle", eventstore.Backwards, 5, 100, want(5, 4, 3, 2, 1, 0)},
		{"backwards from first", eventstore.Backwards, 0, 100, want(0)},
		{"max one", eventstore.Forwards, 0, 1, want(0)},
	}
	for _, c := range cases {
		got, err := s.ReadStream(ctx, stream, c.dir, c.from, c.max)
		if err != nil {
			t.Errorf("%s: ReadStream: %v", c.name, err)
			continue
		}
		if !equalStrings(ids(got), c.want) {
			t.Errorf("%s: read %v, want %v", c.name, ids(got), c.want)
		}
		for i, ev := range got {
			var rev uint64
			_, _ = fmt.Sscanf(string(ev.Data), "r-%d", &rev)
			checkRecorded(t, ev, stream, rev, evs[rev])
			if i > 0 && (c.dir == eventstore.Forwards) != (ev.Position > got[i-1].Position) {
				t.Errorf("%s: positions %d then %d in the wrong order", c.name, got[i-1].Position, ev.Position)
			}
		}
	}
	for _, dir := range []eventstore.Direction{eventstore.Forwards, eventstore.Backwards} {
		got, err := s.ReadStream(ctx, n.stream("missing"), dir, 0, 10)
		if !errors.Is(err, eventstore.ErrStreamNotFound) {
			t.Errorf("ReadStream(missing stream, %v) = %d events, %v; want ErrStreamNotFound", dir, len(got), err)
		}
	}
	// A stream whose name is a prefix of another's is a stream of its own.
	if got, err := s.ReadStream(ctx, n.stream(""), eventstore.Forwards, 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("ReadStream(prefix of existing streams) = %v, %v; want ErrStreamNotFound", ids(got), err)
	}
	mustAppend(ctx, t, s, n.stream("r2"), eventstore.NoStream(), event(n.typ("E"), "r2"))
	if got := mustRead(ctx, t, s, n.stream("r"), eventstore.Forwards, 0, 100); len(got) != 10 {
		t.Errorf("stream r holds %d events after an append to stream r2, want 10", len(got))
	}
}

func testReadAll(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	from := lastPosition(ctx, t, s)

	type appended struct {
		stream string
		rev    uint64
		ev     eventstore.EventData
	}
	var all []appended
	add := func(stream string, exp eventstore.ExpectedRevision, evs ...eventstore.EventData) {
		res := mustAppend(ctx, t, s, stream, exp, evs...)
		for i, ev := range evs {
			all = append(all, appended{stream, res.NextExpectedRevision - uint64(len(evs)-1-i), ev})
		}
	}
	tA, tB, tOther := n.typ("order.A"), n.typ("order.B"), n.typ("invoice.C")
	add(n.stream("x-1"), eventstore.NoStream(), event(tA, "1"), event(tB, "2"))
	add(n.stream("y-1"), eventstore.NoStream(), event(tOther, "3"))
	add(n.stream("x-2"), eventstore.NoStream(), event(tB, "4"))
	add(n.stream("x-1"), eventstore.Exact(1), event(tOther, "5"), event(tA, "6"))
	add(n.stream("y-1"), eventstore.Exact(0), event(tA, "7"))

	check := func(name string, f eventstore.Filter, keep func(a appended) bool) {
		t.Helper()
		var want []appended
		for _, a := range all {
			if keep(a) {
				want = append(want, a)
			}
		}
		for _, page := range []int{1, 2, 100} {
			got := readAll(ctx, t, s, from, page, f)
			if len(got) != len(want) {
				t.Errorf("%s, page %d: read %v, want %d events", name, page, ids(got), len(want))
				continue
			}
			for i := range got {
				checkRecorded(t, got[i], want[i].stream, want[i].rev, want[i].ev)
				if i > 0 && got[i].Position <= got[i-1].Position {
					t.Errorf("%s: positions not increasing: %d then %d", name, got[i-1].Position, got[i].Position)
				}
			}
		}
	}
	has := func(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
	check("stream prefix", n.all(), func(appended) bool { return true })
	check("two stream prefixes", eventstore.Filter{StreamPrefixes: []string{n.stream("x-2"), n.stream("y")}},
		func(a appended) bool { return a.stream != n.stream("x-1") })
	check("event type prefix", eventstore.Filter{EventTypePrefixes: []string{n.typ("order.")}},
		func(a appended) bool { return has(a.ev.Type, n.typ("order.")) })
	check("two event type prefixes", eventstore.Filter{EventTypePrefixes: []string{tA, tOther}},
		func(a appended) bool { return a.ev.Type != tB })
	check("both", eventstore.Filter{StreamPrefixes: []string{n.stream("x")}, EventTypePrefixes: []string{tA, tB}},
		func(a appended) bool { return has(a.stream, n.stream("x")) && a.ev.Type != tOther })
	check("nothing matches", eventstore.Filter{StreamPrefixes: []string{n.stream("z")}}, func(appended) bool { return false })

	// The unfiltered read sees the same events, in the same order, among others'.
	var mine []eventstore.RecordedEvent
	for _, ev := range readAll(ctx, t, s, from, 1000, eventstore.Filter{}) {
		if has(ev.Stream, n.prefix) {
			mine = append(mine, ev)
		}
	}
	if len(mine) != len(all) {
		t.Errorf("unfiltered read found %d of the test's %d events", len(mine), len(all))
	}
	for i := range min(len(mine), len(all)) {
		if mine[i].ID != all[i].ev.ID {
			t.Errorf("unfiltered read: event %d is %s, want %s", i, mine[i].ID, all[i].ev.ID)
		}
	}

	// From the last position, and past it, there is nothing (of ours).
	last := lastPosition(ctx, t, s)
	if got, err := s.ReadAll(ctx, last, 10, n.all()); err != nil || len(got) != 0 {
		t.Errorf("ReadAll(last position) = %v, %v; want nothing", ids(got), err)
	}
	if got, err := s.ReadAll(ctx, last+1<<40, 10, eventstore.Filter{}); err != nil || len(got) != 0 {
		t.Errorf("ReadAll(past the end) = %v, %v; want nothing", ids(got), err)
	}
	// From the position of an event, reading starts after it.
	got := readAll(ctx, t, s, from, 100, n.all())
	if len(got) == len(all) {
		after := readAll(ctx, t, s, got[2].Position, 100, n.all())
		if !equalStrings(ids(after), ids(got[3:])) {
			t.Errorf("ReadAll(position of event 2) = %v, want %v", ids(after), ids(got[3:]))
		}
	}
}

func testConcurrentExpectedRevision(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	const racers = 16
	race := func(stream string, exp eventstore.ExpectedRevision, actual uint64, exists bool, before int) {
		t.Helper()
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			errs    = make([]error, racers)
			results = make([]eventstore.AppendResult, racers)
			evs     = make([]eventstore.EventData, racers)
		)
		for i := range racers {
			evs[i] = event(n.typ("Race"), fmt.Sprint(i))
			wg.Go(func() {
				<-start
				results[i], errs[i] = s.Append(ctx, stream, exp, evs[i])
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			if err == nil {
				if winner >= 0 {
					t.Fatalf("%s: appends %d and %d both succeeded with %v", stream, winner, i, exp)
				}
				winner = i
				continue
			}
			expectWrongRevision(t, err, stream, exp, uint64(before), true)
		}
		if winner < 0 {
			t.Fatalf("%s: no append succeeded with %v: %v", stream, exp, errs)
		}
		if results[winner].NextExpectedRevision != uint64(before) {
			t.Errorf("winner's NextExpectedRevision = %d, want %d", results[winner].NextExpectedRevision, before)
		}
		got := mustRead(ctx, t, s, stream, eventstore.Forwards, 0, 100)
		if len(got) != before+1 || got[before].ID != evs[winner].ID {
			t.Errorf("%s: stream holds %v, want %d events ending with the winner %s", stream, ids(got), before+1, evs[winner].ID)
		}
	}
	race(n.stream("new"), eventstore.NoStream(), 0, false, 0)
	stream := n.stream("existing")
	mustAppend(ctx, t, s, stream, eventstore.NoStream(), events(2, n.typ("E"), "e")...)
	race(stream, eventstore.Exact(1), 2, true, 2)
	race(stream, eventstore.Exact(2), 3, true, 3)
}

func testIdempotency(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	stream := n.stream("idem")
	typ := n.typ("E")
	ab := events(2, typ, "ab")
	first := mustAppend(ctx, t, s, stream, eventstore.NoStream(), ab...)
	last := lastPosition(ctx, t, s)

	// Retrying, whatever the expected revision, returns the first result and writes nothing.
	for _, exp := range []eventstore.ExpectedRevision{eventstore.NoStream(), eventstore.Any(), eventstore.Exact(1), eventstore.StreamExists()} {
		res, err := s.Append(ctx, stream, exp, ab...)
		if err != nil || res != first {
			t.Errorf("retry with %v = %+v, %v; want %+v", exp, res, err, first)
		}
	}
	c := event(typ, "c")
	second := mustAppend(ctx, t, s, stream, eventstore.Exact(1), c)
	if second.Position <= last {
		t.Errorf("append after retries at position %d, not after %d", second.Position, last)
	}
	// An older append retried after newer ones still returns its own result.
	if res, err := s.Append(ctx, stream, eventstore.Exact(0), ab...); err != nil || res != first {
		t.Errorf("late retry = %+v, %v; want %+v", res, err, first)
	}
	if res, err := s.Append(ctx, stream, eventstore.NoStream(), c); err != nil || res != second {
		t.Errorf("retry of the second append = %+v, %v; want %+v", res, err, second)
	}
	if got := mustRead(ctx, t, s, stream, eventstore.Forwards, 0, 100); !equalStrings(ids(got), []string{ab[0].ID, ab[1].ID, c.ID}) {
		t.Errorf("stream holds %v after retries, want %v", ids(got), []string{ab[0].ID, ab[1].ID, c.ID})
	}

	// Partial overlap: some ids are new, some not.
	d := event(typ, "d")
	for _, evs := range [][]eventstore.EventData{{ab[1], d}, {d, c}, {ab[0], d, ab[1]}} {
		_, err := s.Append(ctx, stream, eventstore.Any(), evs...)
		if !errors.Is(err, eventstore.ErrIdempotencyConflict) {
			t.Errorf("append of %v (partly written before) = %v, want ErrIdempotencyConflict", dataIDs(evs), err)
		}
	}
	if got := mustRead(ctx, t, s, stream, eventstore.Forwards, 0, 100); len(got) != 3 {
		t.Errorf("stream holds %d events after conflicting appends, want 3", len(got))
	}
	// The ids are per stream: another stream may use them.
	other := n.stream("other")
	res := mustAppend(ctx, t, s, other, eventstore.NoStream(), ab...)
	if res == first || res.NextExpectedRevision != 1 {
		t.Errorf("append of the same ids to another stream = %+v, want a new append at revision 1", res)
	}
}

func testConcurrentRetries(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	stream := n.stream("retries")
	const (
		rounds  = 5
		writers = 8
	)
	for round := range rounds {
		evs := events(2, n.typ("E"), fmt.Sprint("round-", round))
		var wg sync.WaitGroup
		results := make([]eventstore.AppendResult, writers)
		errs := make([]error, writers)
		start := make(chan struct{})
		for i := range writers {
			wg.Go(func() {
				<-start
				results[i], errs[i] = s.Append(ctx, stream, eventstore.Any(), evs...)
			})
		}
		close(start)
		wg.Wait()
		for i := range writers {
			if errs[i] != nil {
				t.Fatalf("round %d: concurrent retry %d: %v", round, i, errs[i])
			}
			if results[i] != results[0] {
				t.Errorf("round %d: retries returned %+v and %+v", round, results[0], results[i])
			}
		}
		if want := uint64(2*round + 1); results[0].NextExpectedRevision != want {
			t.Errorf("round %d: NextExpectedRevision = %d, want %d", round, results[0].NextExpectedRevision, want)
		}
	}
	if got := mustRead(ctx, t, s, stream, eventstore.Forwards, 0, 100); len(got) != 2*rounds {
		t.Errorf("stream holds %d events, want %d (no duplicates)", len(got), 2*rounds)
	}
}

func testInvalidInput(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	typ := n.typ("E")
	ok := event(typ, "ok")
	withID := func(id string) eventstore.EventData { e := event(typ, "x"); e.ID = id; return e }
	noType := event("", "x")
	cases := []struct {
		name   string
		stream string
		events []eventstore.EventData
	}{
		{"empty stream name", "", []eventstore.EventData{ok}},
		{"no events", n.stream("none"), nil},
		{"missing id", n.stream("noid"), []eventstore.EventData{ok, withID("")}},
		{"missing type", n.stream("notype"), []eventstore.EventData{noType}},
		{"id not a UUID", n.stream("baduuid"), []eventstore.EventData{withID("not-a-uuid")}},
		{"id with braces", n.stream("braces"), []eventstore.EventData{withID("{" + NewEventID() + "}")}},
		{"id with a bad digit", n.stream("baddigit"), []eventstore.EventData{withID("g" + NewEventID()[1:])}},
		{"same id twice", n.stream("dup"), []eventstore.EventData{ok, ok}},
	}
	for _, c := range cases {
		_, err := s.Append(ctx, c.stream, eventstore.Any(), c.events...)
		if !errors.Is(err, eventstore.ErrInvalidEvent) {
			t.Errorf("%s: Append = %v, want ErrInvalidEvent", c.name, err)
			continue
		}
		if c.stream != "" {
			if got, err := s.ReadStream(ctx, c.stream, eventstore.Forwards, 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
				t.Errorf("%s: after the failed append the stream holds %v (%v)", c.name, ids(got), err)
			}
		}
	}
	// Upper-case UUIDs are UUIDs.
	upper := event(typ, "upper")
	upper.ID = "0F8FAD5B-D9CB-469F-A165-70867728950E"
	mustAppend(ctx, t, s, n.stream("upper"), eventstore.NoStream(), upper)
}

// subscriber collects the events of a subscription in the background.
type subscriber struct {
	sub  eventstore.Subscription
	mu   sync.Mutex
	got  []eventstore.RecordedEvent
	err  error
	more chan struct{}
	done chan struct{}
}

func subscribe(ctx context.Context, t *testing.T, s eventstore.Store, from eventstore.Position, f eventstore.Filter) *subscriber {
	t.Helper()
	sub, err := s.Subscribe(ctx, from, f)
	if err != nil {
		t.Fatalf("Subscribe(%d): %v", from, err)
	}
	r := &subscriber{sub: sub, more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			ev, err := sub.Next(ctx)
			r.mu.Lock()
			if err != nil {
				r.err = err
				r.mu.Unlock()
				return
			}
			r.got = append(r.got, ev)
			r.mu.Unlock()
			select {
			case r.more <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { _ = sub.Close(); <-r.done })
	return r
}

// wait waits until the subscriber holds n events (or fails), and returns them.
func (r *subscriber) wait(t *testing.T, n int) []eventstore.RecordedEvent {
	t.Helper()
	timeout := time.After(testTimeout / 2)
	for {
		r.mu.Lock()
		got, err := append([]eventstore.RecordedEvent(nil), r.got...), r.err
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if err != nil {
			t.Fatalf("subscription ended after %d of %d events: %v", len(got), n, err)
		}
		select {
		case <-r.more:
		case <-r.done:
		case <-timeout:
			t.Fatalf("subscription delivered %d of %d events in %v", len(got), n, testTimeout/2)
		}
	}
}

// checkDelivery checks that got is exactly the events of want (by id), in increasing position
// order, each at the position that its append returned.
func checkDelivery(t *testing.T, got []eventstore.RecordedEvent, want map[string]eventstore.Position) {
	t.Helper()
	seen := make(map[string]bool, len(got))
	for i, ev := range got {
		if seen[ev.ID] {
			t.Errorf("event %s delivered twice", ev.ID)
		}
		seen[ev.ID] = true
		if i > 0 && ev.Position <= got[i-1].Position {
			t.Errorf("delivery %d: position %d after %d", i, ev.Position, got[i-1].Position)
		}
		p, ok := want[ev.ID]
		if !ok {
			t.Errorf("unexpected event %s (%s %s) delivered", ev.ID, ev.Stream, ev.Type)
		} else if p != ev.Position {
			t.Errorf("event %s delivered with position %d, appended at %d", ev.ID, ev.Position, p)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("delivered %d distinct events, want %d", len(seen), len(want))
	}
}

func testSubscribeCatchUpThenLive(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	from := lastPosition(ctx, t, s)
	const (
		writers   = 4
		perWriter = 60
		catchUp   = 25
	)
	var mu sync.Mutex
	want := make(map[string]eventstore.Position)
	appendOne := func(stream string, i int) {
		ev := event(n.typ("E"), fmt.Sprint(i))
		res, err := s.Append(ctx, stream, eventstore.Any(), ev)
		if err != nil {
			t.Errorf("Append: %v", err)
			return
		}
		mu.Lock()
		want[ev.ID] = res.Position
		mu.Unlock()
	}
	for i := range catchUp {
		appendOne(n.stream("pre"), i)
	}
	early := subscribe(ctx, t, s, from, n.all())
	var wg sync.WaitGroup
	third := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				appendOne(n.stream(fmt.Sprint("w", w)), i)
				if w == 0 && i == perWriter/3 {
					close(third)
				}
			}
		})
	}
	// A subscriber that starts while appends run, from the beginning.
	<-third
	late := subscribe(ctx, t, s, from, n.all())
	wg.Wait()
	if t.Failed() {
		return
	}
	total := catchUp + writers*perWriter
	checkDelivery(t, early.wait(t, total), want)
	checkDelivery(t, late.wait(t, total), want)

	// And nothing more arrives.
	appendOne(n.stream("post"), 0)
	got := early.wait(t, total+1)
	checkDelivery(t, got, want)
}

func testSubscribeFiltered(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	from := lastPosition(ctx, t, s)
	byType := subscribe(ctx, t, s, from, eventstore.Filter{EventTypePrefixes: []string{n.typ("keep.")}})
	byBoth := subscribe(ctx, t, s, from, eventstore.Filter{StreamPrefixes: []string{n.stream("a")}, EventTypePrefixes: []string{n.typ("keep.")}})
	wantType := map[string]eventstore.Position{}
	wantBoth := map[string]eventstore.Position{}
	for i := range 40 {
		typ := n.typ("drop.E")
		if i%3 == 0 {
			typ = n.typ("keep.E")
		}
		stream := n.stream("b")
		if i%2 == 0 {
			stream = n.stream("a")
		}
		ev := event(typ, fmt.Sprint(i))
		res := mustAppend(ctx, t, s, stream, eventstore.Any(), ev)
		if i%3 == 0 {
			wantType[ev.ID] = res.Position
			if i%2 == 0 {
				wantBoth[ev.ID] = res.Position
			}
		}
	}
	// A marker that both filters pass tells that everything before was seen.
	marker := event(n.typ("keep.Marker"), "m")
	res := mustAppend(ctx, t, s, n.stream("a"), eventstore.Any(), marker)
	wantType[marker.ID], wantBoth[marker.ID] = res.Position, res.Position
	checkDelivery(t, byType.wait(t, len(wantType)), wantType)
	checkDelivery(t, byBoth.wait(t, len(wantBoth)), wantBoth)
}

func testSubscribeFromEnd(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	mustAppend(ctx, t, s, n.stream("s"), eventstore.NoStream(), events(5, n.typ("Old"), "old")...)
	sub := subscribe(ctx, t, s, lastPosition(ctx, t, s), n.all())
	ev := event(n.typ("New"), "new")
	res := mustAppend(ctx, t, s, n.stream("s"), eventstore.Exact(4), ev)
	got := sub.wait(t, 1)
	checkDelivery(t, got, map[string]eventstore.Position{ev.ID: res.Position})
	checkRecorded(t, got[0], n.stream("s"), 5, ev)
}

func testSubscriptionEnds(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	mustAppend(ctx, t, s, n.stream("s"), eventstore.NoStream(), event(n.typ("E"), "1"))

	// Cancelling the subscription's context ends it, also while Next waits.
	subCtx, cancel := context.WithCancel(ctx)
	sub, err := s.Subscribe(subCtx, lastPosition(ctx, t, s), n.all())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Next after cancelling the subscription's context = %v, want context.Canceled", err)
		}
	case <-time.After(testTimeout / 2):
		t.Fatal("Next did not return after its subscription's context was cancelled")
	}
	mustAppend(ctx, t, s, n.stream("s"), eventstore.Exact(0), event(n.typ("E"), "2"))
	if _, err := sub.Next(ctx); err == nil {
		t.Error("Next after the end of the subscription returned an event")
	}

	// Close ends it too.
	sub2, err := s.Subscribe(ctx, eventstore.Start, n.all())
	if err != nil {
		t.Fatal(err)
	}
	if err := sub2.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := sub2.Next(ctx); err == nil {
		t.Error("Next after Close returned an event")
	}
	if _, err := sub2.Next(ctx); err == nil {
		t.Error("Next after Close, again, returned an event")
	}
}

func testSlowSubscriber(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	n := newNames(t)
	from := lastPosition(ctx, t, s)
	sub, err := s.Subscribe(ctx, from, eventstore.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// Read one event, then never again.
	first := event(n.typ("E"), "first")
	mustAppend(ctx, t, s, n.stream("s"), eventstore.NoStream(), first)
	if _, err := sub.Next(ctx); err != nil {
		t.Fatalf("Next: %v", err)
	}
	const count = 300
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range count / 4 {
				if _, err := s.Append(ctx, n.stream(fmt.Sprint("w", w)), eventstore.Any(), event(n.typ("E"), fmt.Sprint(i))); err != nil {
					t.Errorf("Append with a stalled subscriber: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	// The stalled subscriber may have ended (fallen too far behind); if it goes on, it goes on
	// in order.
	if ev, err := sub.Next(ctx); err == nil && ev.Position <= from {
		t.Errorf("stalled subscriber resumed at position %d, before %d", ev.Position, from)
	}
}
