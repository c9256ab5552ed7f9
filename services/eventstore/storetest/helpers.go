package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
)

// testTimeout bounds each test of the suite.
const testTimeout = 30 * time.Second

// NewEventID returns a random (version 4) UUID in canonical text form, for EventData.ID.
func NewEventID() string {
	var u eventstore.UUID
	if _, err := rand.Read(u[:]); err != nil {
		panic(err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u.String()
}

// names gives a test stream names and event types of its own, so that the suite can run
// against a store shared with other tests (and earlier runs).
type names struct{ prefix string }

func newNames(t *testing.T) names {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return names{prefix: "storetest-" + hex.EncodeToString(b[:]) + "-"}
}

// stream returns a stream name unique to the test.
func (n names) stream(s string) string { return n.prefix + s }

// typ returns an event type unique to the test.
func (n names) typ(s string) string { return "storetest." + n.prefix[len("storetest-"):] + s }

// all is a filter that selects the test's streams.
func (n names) all() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{n.prefix}}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// event returns an event with a fresh id, the given type and data, and full metadata.
func event(typ, data string) eventstore.EventData {
	id := NewEventID()
	return eventstore.EventData{
		ID:   id,
		Type: typ,
		Data: []byte(data),
		Metadata: eventstore.Metadata{
			Actor:         "storetest",
			RequestID:     "req-" + id[:8],
			TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			TraceState:    "congo=t61rcWkgMzE",
			CorrelationID: "corr-" + id[:8],
			CausationID:   "cause-" + id[:8],
		},
	}
}

func events(n int, typ, dataPrefix string) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	for i := range out {
		out[i] = event(typ, fmt.Sprintf("%s-%d", dataPrefix, i))
	}
	return out
}

// checkRecorded compares a recorded event with the data it was appended from.
func checkRecorded(t *testing.T, got eventstore.RecordedEvent, stream string, rev uint64, want eventstore.EventData) {
	t.Helper()
	if got.ID != want.ID || got.Type != want.Type || got.Stream != stream || got.Revision != rev ||
		!bytes.Equal(got.Data, want.Data) || got.Metadata != want.Metadata {
		t.Errorf("recorded event = {ID:%s Type:%s Stream:%s Revision:%d Data:%q Metadata:%+v}, want {ID:%s Type:%s Stream:%s Revision:%d Data:%q Metadata:%+v}",
			got.ID, got.Type, got.Stream, got.Revision, got.Data, got.Metadata,
			want.ID, want.Type, stream, rev, want.Data, want.Metadata)
	}
	if got.Position == eventstore.Start {
		t.Errorf("event %s has position 0", got.ID)
	}
	if got.Time.Location() != time.UTC {
		t.Errorf("event %s: time %v is not in UTC", got.ID, got.Time)
	}
	if d := time.Since(got.Time); d < -5*time.Minute || d > 5*time.Minute {
		t.Errorf("event %s: time %v is %v away from now", got.ID, got.Time, d)
	}
}

// sameEvent reports whether two recorded events are the same, field by field.
func sameEvent(a, b eventstore.RecordedEvent) bool {
	return a.ID == b.ID && a.Type == b.Type && a.Stream == b.Stream && bytes.Equal(a.Data, b.Data) &&
		a.Metadata == b.Metadata && a.Time.Equal(b.Time) && a.Revision == b.Revision && a.Position == b.Position
}

func mustAppend(ctx context.Context, t *testing.T, s eventstore.Store, stream string, exp eventstore.ExpectedRevision, evs ...eventstore.EventData) eventstore.AppendResult {
	t.Helper()
	res, err := s.Append(ctx, stream, exp, evs...)
	if err != nil {
		t.Fatalf("Append(%q, %v, %d events): %v", stream, exp, len(evs), err)
	}
	return res
}

func mustRead(ctx context.Context, t *testing.T, s eventstore.Store, stream string, dir eventstore.Direction, from uint64, max int) []eventstore.RecordedEvent {
	t.Helper()
	evs, err := s.ReadStream(ctx, stream, dir, from, max)
	if err != nil {
		t.Fatalf("ReadStream(%q, %v, %d, %d): %v", stream, dir, from, max, err)
	}
	return evs
}

func lastPosition(ctx context.Context, t *testing.T, s eventstore.Store) eventstore.Position {
	t.Helper()
	p, err := s.LastPosition(ctx)
	if err != nil {
		t.Fatalf("LastPosition: %v", err)
	}
	return p
}

// readAll reads every event after from that passes f, in pages of page events.
func readAll(ctx context.Context, t *testing.T, s eventstore.Store, from eventstore.Position, page int, f eventstore.Filter) []eventstore.RecordedEvent {
	t.Helper()
	var out []eventstore.RecordedEvent
	for {
		evs, err := s.ReadAll(ctx, from, page, f)
		if err != nil {
			t.Fatalf("ReadAll(%d, %d): %v", from, page, err)
		}
		if len(evs) > page {
			t.Fatalf("ReadAll(%d, %d) returned %d events", from, page, len(evs))
		}
		for _, ev := range evs {
			if ev.Position <= from {
				t.Fatalf("ReadAll(%d) returned position %d, not after %d", from, ev.Position, from)
			}
			from = ev.Position
		}
		out = append(out, evs...)
		if len(evs) < page {
			return out
		}
	}
}

func ids(evs []eventstore.RecordedEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

func dataIDs(evs []eventstore.EventData) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// expectWrongRevision checks that err is a WrongExpectedRevisionError with these details.
func expectWrongRevision(t *testing.T, err error, stream string, exp eventstore.ExpectedRevision, actual uint64, exists bool) {
	t.Helper()
	if err == nil {
		t.Fatalf("append with %v to %q succeeded, want wrong expected revision", exp, stream)
	}
	var werr *eventstore.WrongExpectedRevisionError
	if !errors.As(err, &werr) {
		t.Fatalf("append with %v: error %v is not a *WrongExpectedRevisionError", exp, err)
	}
	if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		t.Errorf("errors.Is(%v, ErrWrongExpectedRevision) = false", err)
	}
	if werr.Stream != stream || werr.Expected != exp || werr.ActualExists != exists || (exists && werr.Actual != actual) {
		t.Errorf("error details = {Stream:%q Expected:%v Actual:%d ActualExists:%v}, want {Stream:%q Expected:%v Actual:%d ActualExists:%v}",
			werr.Stream, werr.Expected, werr.Actual, werr.ActualExists, stream, exp, actual, exists)
	}
}
