// Package eventstore defines guestlist's event store: append-only streams of events with
// EventStoreDB's semantics (stream revisions, expected-revision checks, one global order, catch-up
// subscriptions with filters). Backends live in their own packages (boltstore, and the EventStoreDB
// backend); every backend passes the conformance suite in package storetest.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors returned by every backend. Test for them with errors.Is; backends wrap them with context.
var (
	// ErrWrongExpectedRevision is returned by Append when the stream is not at the expected revision.
	// Nothing is written. Use errors.As with *WrongExpectedRevisionError for the actual revision.
	ErrWrongExpectedRevision = errors.New("eventstore: wrong expected revision")
	// ErrStreamNotFound is returned when reading a stream that has no events.
	ErrStreamNotFound = errors.New("eventstore: stream not found")
	// ErrInvalidEvent is returned by Append for an event without an id or a type, a stream name that
	// is empty, or an empty append. Nothing is written.
	ErrInvalidEvent = errors.New("eventstore: invalid event")
	// ErrIdempotencyConflict is returned by Append when some but not all of the events' ids were
	// already written to the stream, or they were written with different content. Nothing is written.
	ErrIdempotencyConflict = errors.New("eventstore: event ids already used")
	// ErrClosed is returned by operations on a closed store.
	ErrClosed = errors.New("eventstore: store closed")
	// ErrUnavailable is returned when the backend cannot be reached; the call may be retried.
	ErrUnavailable = errors.New("eventstore: unavailable")
	// ErrStreamDeleted is returned by a server backend (EventStoreDB) for a stream that was deleted
	// on the server. guestlist never deletes streams: an operator did, and the stream's history (and
	// the audit chain over it) is gone. Appends to it fail; nothing is written.
	ErrStreamDeleted = errors.New("eventstore: stream deleted")
)

// WrongExpectedRevisionError details ErrWrongExpectedRevision.
type WrongExpectedRevisionError struct {
	Stream   string
	Expected ExpectedRevision
	// Actual is the stream's current revision; ActualExists is false when the stream has no events.
	Actual       uint64
	ActualExists bool
}

// Error implements error.
func (e *WrongExpectedRevisionError) Error() string {
	actual := "no stream"
	if e.ActualExists {
		actual = fmt.Sprintf("revision %d", e.Actual)
	}
	return fmt.Sprintf("eventstore: append to %q: expected %v, stream is at %s", e.Stream, e.Expected, actual)
}

// Is makes errors.Is(err, ErrWrongExpectedRevision) true.
func (e *WrongExpectedRevisionError) Is(target error) bool { return target == ErrWrongExpectedRevision }

// ExpectedRevision is the precondition of an append.
type ExpectedRevision struct {
	kind     expectKind
	revision uint64
}

type expectKind uint8

const (
	expectAny expectKind = iota
	expectNoStream
	expectStreamExists
	expectExact
)

// Any appends whatever the stream's state. Retries with the same event ids are still idempotent.
func Any() ExpectedRevision { return ExpectedRevision{kind: expectAny} }

// NoStream appends only if the stream has no events.
func NoStream() ExpectedRevision { return ExpectedRevision{kind: expectNoStream} }

// StreamExists appends only if the stream has at least one event.
func StreamExists() ExpectedRevision { return ExpectedRevision{kind: expectStreamExists} }

// Exact appends only if the stream's last event has revision r (revisions start at 0).
func Exact(r uint64) ExpectedRevision { return ExpectedRevision{kind: expectExact, revision: r} }

// IsAny reports whether e is Any().
func (e ExpectedRevision) IsAny() bool { return e.kind == expectAny }

// IsNoStream reports whether e is NoStream().
func (e ExpectedRevision) IsNoStream() bool { return e.kind == expectNoStream }

// IsStreamExists reports whether e is StreamExists().
func (e ExpectedRevision) IsStreamExists() bool { return e.kind == expectStreamExists }

// Revision returns the exact revision and true when e is Exact(r).
func (e ExpectedRevision) Revision() (uint64, bool) { return e.revision, e.kind == expectExact }

// Satisfied reports whether a stream whose last revision is last (exists false: no events)
// satisfies e.
func (e ExpectedRevision) Satisfied(last uint64, exists bool) bool {
	switch e.kind {
	case expectAny:
		return true
	case expectNoStream:
		return !exists
	case expectStreamExists:
		return exists
	default:
		return exists && last == e.revision
	}
}

// String implements fmt.Stringer.
func (e ExpectedRevision) String() string {
	switch e.kind {
	case expectAny:
		return "any"
	case expectNoStream:
		return "no stream"
	case expectStreamExists:
		return "stream exists"
	default:
		return fmt.Sprintf("revision %d", e.revision)
	}
}

// Metadata travels with every event. It says who made the change and ties it to its request and
// trace. Backends store it as given.
type Metadata struct {
	// Actor names who made the change ("admin", "token:<tenant>/<token id>").
	Actor string `json:"actor,omitempty"`
	// RequestID is the client's idempotency key, if any.
	RequestID string `json:"requestId,omitempty"`
	// TraceParent and TraceState are the W3C trace context of the request that wrote the event.
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
	// CorrelationID groups events caused by one user action; CausationID names the event or
	// request that directly caused this one.
	CorrelationID string `json:"correlationId,omitempty"`
	CausationID   string `json:"causationId,omitempty"`
}

// EventData is an event to append.
type EventData struct {
	// ID identifies the event (a UUID in canonical text form). Appending the same ids again to the
	// same stream is a no-op that returns the first result; callers set it, so retries are safe.
	ID string
	// Type is the event's type, for guestlist the protobuf message's full name.
	Type string
	// Data is the event's payload.
	Data []byte
	// Metadata is stored alongside.
	Metadata Metadata
}

// RecordedEvent is an event as stored.
type RecordedEvent struct {
	ID       string
	Type     string
	Stream   string
	Data     []byte
	Metadata Metadata
	// Time is when the store wrote the event (UTC).
	Time time.Time
	// Revision is the event's number within its stream, from 0.
	Revision uint64
	// Position is the event's place in the global order, from 1, strictly increasing across all
	// streams in commit order.
	Position Position
}

// Position is a place in the store's global order. Position 0 is before the first event; reads
// and subscriptions "from p" deliver the events after p.
type Position uint64

// Start is the position before the first event.
const Start Position = 0

// AppendResult says where an append landed.
type AppendResult struct {
	// NextExpectedRevision is the revision of the stream's last event after the append.
	NextExpectedRevision uint64
	// Position is the global position of the last appended event.
	Position Position
}

// Direction is the order of a stream read.
type Direction uint8

const (
	// Forwards reads from older to newer.
	Forwards Direction = iota
	// Backwards reads from newer to older.
	Backwards
)

// End, given as the from revision of a backwards read, starts at the stream's last event.
const End uint64 = ^uint64(0)

// Filter selects events for ReadAll and subscriptions. An empty Filter selects everything. When
// both prefixes lists are set, an event must match one prefix of each.
type Filter struct {
	// StreamPrefixes selects events whose stream name starts with one of these.
	StreamPrefixes []string
	// EventTypePrefixes selects events whose type starts with one of these.
	EventTypePrefixes []string
}

// Match reports whether ev passes the filter.
func (f Filter) Match(stream, eventType string) bool {
	return matchAny(f.StreamPrefixes, stream) && matchAny(f.EventTypePrefixes, eventType)
}

func matchAny(prefixes []string, s string) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, p := range prefixes {
		if len(s) >= len(p) && s[:len(p)] == p {
			return true
		}
	}
	return false
}

// Store is an event store. All methods are safe for concurrent use.
type Store interface {
	// Append writes events to the end of stream, atomically, if the stream satisfies expected.
	// It returns only once the events are durable (for the embedded store: fsynced). It returns
	// ErrWrongExpectedRevision (as *WrongExpectedRevisionError) if the precondition fails, and
	// ErrInvalidEvent for malformed input; in both cases nothing is written. Appending events whose
	// ids were all already appended to the stream, in the same order, returns the original result.
	Append(ctx context.Context, stream string, expected ExpectedRevision, events ...EventData) (AppendResult, error)

	// ReadStream returns up to max events of stream starting at revision from (inclusive), in
	// direction dir. For Backwards, from may be End. It returns ErrStreamNotFound if the stream has
	// no events, and an empty slice when from is past the end.
	ReadStream(ctx context.Context, stream string, dir Direction, from uint64, max int) ([]RecordedEvent, error)

	// ReadAll returns up to max events after position from, in global order, that pass filter.
	ReadAll(ctx context.Context, from Position, max int, filter Filter) ([]RecordedEvent, error)

	// Subscribe delivers every event after position from that passes filter, in global order:
	// first the stored ones (catch-up), then new ones as they are appended (live), without gap or
	// duplicate at the hand-over. The subscription ends when ctx is cancelled or the store closes.
	Subscribe(ctx context.Context, from Position, filter Filter) (Subscription, error)

	// LastPosition returns the global position of the newest event (Start when empty).
	LastPosition(ctx context.Context) (Position, error)

	// Close releases the store. Pending appends either complete or fail; later calls fail with
	// ErrClosed.
	Close() error
}

// Subscription is a running catch-up subscription.
type Subscription interface {
	// Next blocks until the next event, and returns it. It returns an error when the context given
	// to Subscribe (or to Next) is done, when the store closes (ErrClosed), or when the subscriber
	// fell too far behind for the backend to keep up (the caller resubscribes from its last
	// position). After an error, Next keeps returning it.
	Next(ctx context.Context) (RecordedEvent, error)
	// Close ends the subscription.
	Close() error
}
