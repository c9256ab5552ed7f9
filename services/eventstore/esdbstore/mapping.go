package esdbstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/services/eventstore"
)

// This file holds the pure mappings between guestlist's event store and EventStoreDB's client
// types: positions, revisions, expected revisions, filters, metadata and errors. None of it does
// I/O; mapping_test.go covers it without a server.

// errNoPosition and errSplitPosition are the two ways an event's $all position can fail to map.
var (
	errNoPosition    = errors.New("the server did not report the event's $all position (EventStoreDB before 22.10 leaves it out of stream reads; guestlist needs 22.10 or newer)")
	errSplitPosition = errors.New("the event's commit and prepare positions differ (an explicit transaction, or a server from before mid-2020); guestlist's single-number positions need them equal")
)

// positionOf maps an EventStoreDB $all position to a guestlist Position. Events written through
// the gRPC append are committed by their own prepare record, so their commit and prepare
// positions are both the record's log position; anything else cannot be one number and is an
// error, never a guess.
func positionOf(p esdb.Position) (eventstore.Position, error) {
	switch {
	case p.Commit == math.MaxUint64 || p.Prepare == math.MaxUint64:
		return 0, errNoPosition
	case p.Commit != p.Prepare:
		return 0, fmt.Errorf("%w: commit %d, prepare %d", errSplitPosition, p.Commit, p.Prepare)
	case p.Commit == 0:
		// The transaction log starts with the epoch record, never an event.
		return 0, fmt.Errorf("%w: position 0", errNoPosition)
	}
	return eventstore.Position(p.Commit), nil
}

// allPosition maps a guestlist Position to where an EventStoreDB $all read or subscription
// starts: Start for 0, else the event's own position (commit == prepare).
func allPosition(p eventstore.Position) esdb.AllPosition {
	if p == eventstore.Start {
		return esdb.Start{}
	}
	return esdb.Position{Commit: uint64(p), Prepare: uint64(p)}
}

// after reports whether position a is after b in the $all order (commit first, then prepare).
func after(a, b esdb.Position) bool {
	return a.Commit > b.Commit || (a.Commit == b.Commit && a.Prepare > b.Prepare)
}

// expectedRevision maps an expected revision to the client's type. Revisions above the largest
// the server can hold (int64) are never sent: the caller checks them against the stream first.
func expectedRevision(e eventstore.ExpectedRevision) esdb.ExpectedRevision {
	switch {
	case e.IsAny():
		return esdb.Any{}
	case e.IsNoStream():
		return esdb.NoStream{}
	case e.IsStreamExists():
		return esdb.StreamExists{}
	}
	r, _ := e.Revision()
	return esdb.Revision(r)
}

// concreteRevision is the expected revision of an append to a stream whose last revision is last
// (exists false: no events): the server then refuses it if anything was appended in between.
func concreteRevision(last uint64, exists bool) esdb.ExpectedRevision {
	if !exists {
		return esdb.NoStream{}
	}
	return esdb.Revision(last)
}

// maxRevision is the largest stream revision the server stores (a signed 64-bit number).
const maxRevision = math.MaxInt64

// isSystem reports whether an event is EventStoreDB's own: a stream or an event type starting
// with "$" (statistics, settings, users, projections, links, tombstones, stream metadata).
// guestlist neither writes nor shows them.
func isSystem(stream, eventType string) bool {
	return strings.HasPrefix(stream, "$") || strings.HasPrefix(eventType, "$")
}

// filterPlan is how a Filter runs against EventStoreDB: the server filters on one kind of
// prefix (it takes one kind per subscription), the client applies the whole filter again and
// drops system events.
type filterPlan struct {
	// server is the server-side filter of a subscription; never nil, so that the server sends
	// checkpoints while it skips events.
	server *esdb.SubscriptionFilter
	// client is the complete filter.
	client eventstore.Filter
}

// planFilter splits f: stream prefixes go to the server when set (the more selective kind for
// guestlist, whose streams are per tenant), else event type prefixes, else a filter that drops
// system events.
func planFilter(f eventstore.Filter) filterPlan {
	p := filterPlan{client: f}
	switch {
	case len(f.StreamPrefixes) > 0:
		p.server = &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: append([]string(nil), f.StreamPrefixes...)}
	case len(f.EventTypePrefixes) > 0:
		p.server = &esdb.SubscriptionFilter{Type: esdb.EventFilterType, Prefixes: append([]string(nil), f.EventTypePrefixes...)}
	default:
		p.server = esdb.ExcludeSystemEventsFilter()
	}
	return p
}

// match reports whether an event the server sent passes the whole filter.
func (p filterPlan) match(stream, eventType string) bool {
	return !isSystem(stream, eventType) && p.client.Match(stream, eventType)
}

// wireMetadata is eventstore.Metadata as stored in an event's user metadata: JSON, with
// EventStoreDB's well-known "$correlationId" and "$causationId" keys (which its projections and
// UI understand) for those two fields.
type wireMetadata struct {
	Actor         string `json:"actor,omitempty"`
	RequestID     string `json:"requestId,omitempty"`
	TraceParent   string `json:"traceparent,omitempty"`
	TraceState    string `json:"tracestate,omitempty"`
	CorrelationID string `json:"$correlationId,omitempty"`
	CausationID   string `json:"$causationId,omitempty"`
}

// encodeMetadata returns m as the JSON object stored in the event's user metadata. Every field
// must be valid UTF-8 (checked by checkMetadata), so that decoding gives m back exactly.
func encodeMetadata(m eventstore.Metadata) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	// Encoding a struct of strings cannot fail.
	_ = enc.Encode(wireMetadata(m))
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// decodeMetadata parses an event's user metadata. Empty metadata (an event written by another
// program) is the zero Metadata; other keys are ignored; anything that is not a JSON object whose
// known keys hold strings is an error.
func decodeMetadata(b []byte) (eventstore.Metadata, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return eventstore.Metadata{}, nil
	}
	var w wireMetadata
	if err := json.Unmarshal(b, &w); err != nil {
		return eventstore.Metadata{}, fmt.Errorf("metadata is not guestlist's JSON object: %w", err)
	}
	return eventstore.Metadata(w), nil
}

// checkMetadata reports the first metadata field that is not valid UTF-8 (JSON cannot hold it).
func checkMetadata(m eventstore.Metadata) error {
	for _, f := range []struct{ name, v string }{
		{"actor", m.Actor}, {"requestId", m.RequestID}, {"traceparent", m.TraceParent},
		{"tracestate", m.TraceState}, {"correlationId", m.CorrelationID}, {"causationId", m.CausationID},
	} {
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("metadata field %s is not valid UTF-8", f.name)
		}
	}
	return nil
}

// checkAppend adds EventStoreDB's rules to eventstore.ValidateAppend: names and types in UTF-8
// without the "$" that marks the server's own streams and events, no nil UUID (the client would
// replace it with a random id, which defeats idempotent retries), metadata in UTF-8. It returns
// the ids in binary form.
func checkAppend(stream string, events []eventstore.EventData) ([]uuid.UUID, error) {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return nil, err
	}
	switch {
	case !utf8.ValidString(stream):
		return nil, fmt.Errorf("%w: stream name %q is not valid UTF-8", eventstore.ErrInvalidEvent, stream)
	case strings.HasPrefix(stream, "$"):
		return nil, fmt.Errorf("%w: stream name %q starts with \"$\", which EventStoreDB keeps for its own streams", eventstore.ErrInvalidEvent, stream)
	}
	ids := make([]uuid.UUID, len(events))
	for i := range events {
		ev := &events[i]
		u, _ := eventstore.ParseUUID(ev.ID) // checked by ValidateAppend
		ids[i] = uuid.UUID(u)
		switch {
		case ids[i] == uuid.Nil:
			return nil, fmt.Errorf("%w: append to %q: event %d: id is the nil UUID, which the EventStoreDB client replaces with a random one", eventstore.ErrInvalidEvent, stream, i)
		case !utf8.ValidString(ev.Type):
			return nil, fmt.Errorf("%w: append to %q: event %d: type %q is not valid UTF-8", eventstore.ErrInvalidEvent, stream, i, ev.Type)
		case strings.HasPrefix(ev.Type, "$"):
			return nil, fmt.Errorf("%w: append to %q: event %d: type %q starts with \"$\", which EventStoreDB keeps for its own events", eventstore.ErrInvalidEvent, stream, i, ev.Type)
		}
		if err := checkMetadata(ev.Metadata); err != nil {
			return nil, fmt.Errorf("%w: append to %q: event %d: %v", eventstore.ErrInvalidEvent, stream, i, err)
		}
	}
	return ids, nil
}

// toEventData builds the client's events. The ids are set here, always: left nil, the client
// would make up random ones.
func toEventData(events []eventstore.EventData, ids []uuid.UUID) []esdb.EventData {
	out := make([]esdb.EventData, len(events))
	for i := range events {
		out[i] = esdb.EventData{
			EventID:     ids[i],
			EventType:   events[i].Type,
			ContentType: esdb.ContentTypeBinary, // protobuf: application/octet-stream
			Data:        events[i].Data,
			Metadata:    encodeMetadata(events[i].Metadata),
		}
	}
	return out
}

// recorded maps an event the server sent. system is true for EventStoreDB's own events, which
// the caller skips (their positions are not checked). The event's data is not copied.
func recorded(re *esdb.ResolvedEvent) (ev eventstore.RecordedEvent, system bool, err error) {
	r := re.OriginalEvent()
	if r == nil {
		return ev, false, errors.New("the server sent a read result without an event")
	}
	if isSystem(r.StreamID, r.EventType) {
		return ev, true, nil
	}
	where := func(err error) error {
		return fmt.Errorf("event %s of %q at revision %d: %w", r.EventID, r.StreamID, r.EventNumber, err)
	}
	pos, err := positionOf(r.Position)
	if err != nil {
		return ev, false, where(err)
	}
	md, err := decodeMetadata(r.UserMetadata)
	if err != nil {
		return ev, false, where(err)
	}
	return eventstore.RecordedEvent{
		ID:       r.EventID.String(),
		Type:     r.EventType,
		Stream:   r.StreamID,
		Data:     r.Data,
		Metadata: md,
		Time:     r.CreatedDate.UTC(),
		Revision: r.EventNumber,
		Position: pos,
	}, false, nil
}

// errorCode returns the client's error code in err's chain, and whether there is one.
func errorCode(err error) (esdb.ErrorCode, bool) {
	var e *esdb.Error
	if errors.As(err, &e) {
		return e.Code(), true
	}
	return 0, false
}

// discoveryFailed is how the client (v4.2.0) words the error with which it gives up for good.
const discoveryFailed = "maximum discovery attempt count reached"

// errorKind is what an error from the client means to guestlist.
type errorKind int

const (
	kindOther errorKind = iota
	// kindUnavailable: the server could not be reached or did not answer in time; retry.
	kindUnavailable
	// kindDead: the client gave up (its discovery failed) and must be replaced.
	kindDead
	kindWrongExpectedVersion
	kindStreamDeleted
	kindNotFound
	kindAccessDenied
)

// classify tells what an error from the client means. It looks at the client's error code and,
// for errors the client passes through unclassified (subscription drops, failures while a call
// is set up), at the gRPC status.
func classify(err error) errorKind {
	if code, ok := errorCode(err); ok {
		switch code {
		case esdb.ErrorCodeWrongExpectedVersion:
			return kindWrongExpectedVersion
		case esdb.ErrorCodeStreamDeleted:
			return kindStreamDeleted
		case esdb.ErrorCodeResourceNotFound:
			return kindNotFound
		case esdb.ErrorCodeConnectionClosed:
			return kindDead
		case esdb.ErrorUnavailable:
			if strings.Contains(err.Error(), discoveryFailed) {
				// The client closed itself (see conn).
				return kindDead
			}
			return kindUnavailable
		case esdb.ErrorCodeDeadlineExceeded, esdb.ErrorCodeNotLeader, esdb.ErrorAborted:
			return kindUnavailable
		case esdb.ErrorCodeAccessDenied, esdb.ErrorCodeUnauthenticated:
			return kindAccessDenied
		}
	}
	// status.FromError finds a status wrapped anywhere in the chain.
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted, codes.Canceled:
			// Canceled with the caller's context alive: the connection was closed under the call.
			return kindUnavailable
		case codes.PermissionDenied, codes.Unauthenticated:
			return kindAccessDenied
		}
	}
	return kindOther
}

// mapError maps an error of the client to the store's errors, keeping the original in the chain
// (errors.As with *esdb.Error still works). closed reports whether the store is closed; ctx is
// the caller's context. The order matters: a closed store and a done context explain any error
// that follows from them.
func mapError(ctx context.Context, closed bool, op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, eventstore.ErrClosed), errors.Is(err, eventstore.ErrUnavailable),
		errors.Is(err, eventstore.ErrStreamNotFound), errors.Is(err, eventstore.ErrStreamDeleted),
		errors.Is(err, eventstore.ErrInvalidEvent), errors.Is(err, eventstore.ErrIdempotencyConflict),
		errors.Is(err, eventstore.ErrWrongExpectedRevision):
		return fmt.Errorf("esdbstore: %s: %w", op, err)
	case closed:
		return fmt.Errorf("esdbstore: %s: %w", op, eventstore.ErrClosed)
	case ctx.Err() != nil:
		return fmt.Errorf("esdbstore: %s: %w", op, ctx.Err())
	}
	switch classify(err) {
	case kindUnavailable, kindDead:
		return fmt.Errorf("esdbstore: %s: %w: %w", op, eventstore.ErrUnavailable, err)
	case kindStreamDeleted:
		return fmt.Errorf("esdbstore: %s: %w (deleted on the server; guestlist never deletes streams): %w", op, eventstore.ErrStreamDeleted, err)
	case kindNotFound:
		return fmt.Errorf("esdbstore: %s: %w: %w", op, eventstore.ErrStreamNotFound, err)
	case kindAccessDenied:
		return fmt.Errorf("esdbstore: %s: EventStoreDB refused the credentials or the ACL (guestlist's user needs $all read and stream write): %w", op, err)
	}
	return fmt.Errorf("esdbstore: %s: %w", op, err)
}
