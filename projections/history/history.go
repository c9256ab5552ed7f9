// Package history identifies an event-store history at a position: by the event stored there.
//
// Positions alone do not tell two histories apart. An event store restored from an older backup
// (at position Q) and written to since reaches the positions after Q again, with other events: a
// read model, a ledger or an edge that holds position P > Q of the old history would take the new
// events after P for the continuation of what it holds, and silently miss every change of the new
// history between Q and P. A Ref names the event at a position (its stream, revision and id); Check
// asks the store whether it still holds that event there.
//
// Encode turns a Ref into the opaque history token that the distribution hands to edges
// (configv1.WatchResponse.history_token) and that the projector and the ledger keep with their
// checkpoints; Decode reads one back, refusing anything it did not write.
package history

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"guestlist.dev/projections/fold"
	"guestlist.dev/services/eventstore"
)

// MaxTokenBytes bounds an encoded Ref: Decode refuses longer input without reading it.
const MaxTokenBytes = 1024

// tokenVersion is the first byte of an encoded Ref. Version 1: the version, the position and the
// revision as unsigned varints, the event id as 16 bytes, then the stream name (the rest).
const tokenVersion = 1

// ErrBadToken is wrapped by Decode's errors.
var ErrBadToken = errors.New("history: malformed history token")

// Ref identifies the event at a position of an event store: the checkpoint of a read model, or
// the position an edge holds.
type Ref struct {
	// Position is the event's global position.
	Position uint64
	// Stream and Revision are where the event is in its stream (a tenant stream).
	Stream   string
	Revision uint64
	// ID is the event's id (a UUID).
	ID eventstore.UUID
}

// Of returns the Ref of a stored event. It fails for an event whose id is not a UUID (every
// backend refuses to store such an event).
func Of(ev eventstore.RecordedEvent) (Ref, error) {
	id, err := eventstore.ParseUUID(ev.ID)
	if err != nil {
		return Ref{}, fmt.Errorf("history: the event at position %d (stream %q revision %d): id %q: %w", ev.Position, ev.Stream, ev.Revision, ev.ID, err)
	}
	return Ref{Position: uint64(ev.Position), Stream: ev.Stream, Revision: ev.Revision, ID: id}, nil
}

// String describes r for logs and errors.
func (r Ref) String() string {
	return fmt.Sprintf("event %s (stream %q revision %d) at position %d", r.ID, r.Stream, r.Revision, r.Position)
}

// Encode returns r's history token. The zero Ref encodes to nil.
func (r Ref) Encode() []byte {
	if r == (Ref{}) {
		return nil
	}
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(r.ID)+len(r.Stream))
	b = append(b, tokenVersion)
	b = binary.AppendUvarint(b, r.Position)
	b = binary.AppendUvarint(b, r.Revision)
	b = append(b, r.ID[:]...)
	return append(b, r.Stream...)
}

// Decode reads a history token written by Encode. Empty input is the zero Ref. Anything else that
// Encode would not have written for an event of a tenant stream (another version, a truncated
// token, trailing bytes, position 0, a stream that is not a tenant's or not UTF-8, more than
// MaxTokenBytes) is an error wrapping ErrBadToken.
func Decode(token []byte) (Ref, error) {
	if len(token) == 0 {
		return Ref{}, nil
	}
	bad := func(format string, args ...any) (Ref, error) {
		return Ref{}, fmt.Errorf("%w: %s", ErrBadToken, fmt.Sprintf(format, args...))
	}
	if len(token) > MaxTokenBytes {
		return bad("%d bytes, at most %d", len(token), MaxTokenBytes)
	}
	if token[0] != tokenVersion {
		return bad("version %d, want %d", token[0], tokenVersion)
	}
	rest := token[1:]
	var r Ref
	var n int
	if r.Position, n = binary.Uvarint(rest); n <= 0 || r.Position == 0 {
		return bad("no position")
	}
	rest = rest[n:]
	if r.Revision, n = binary.Uvarint(rest); n <= 0 {
		return bad("no revision")
	}
	rest = rest[n:]
	if len(rest) < len(r.ID) {
		return bad("no event id")
	}
	copy(r.ID[:], rest)
	r.Stream = string(rest[len(r.ID):])
	if !strings.HasPrefix(r.Stream, fold.TenantStreamPrefix) || !utf8.ValidString(r.Stream) {
		return bad("stream %q is not a tenant stream", r.Stream)
	}
	if !bytes.Equal(r.Encode(), token) { // varints not in their shortest form
		return bad("not in canonical form")
	}
	return r, nil
}

// Verdict is what Check found.
type Verdict int

const (
	// Same: the store holds the Ref's event at its position; the history goes on.
	Same Verdict = iota + 1
	// NotReached: the store's last position is before the Ref's. The store may be catching up (a
	// follower), or be an older copy, an empty or another store: nothing is known of the history.
	NotReached
	// Diverged: the store has passed the Ref's position, but its event there (if it has one) is
	// not the Ref's: the store's history is not the one the Ref was taken from (an older backup
	// restored and written to since, or another store).
	Diverged
)

// String names v.
func (v Verdict) String() string {
	switch v {
	case Same:
		return "same"
	case NotReached:
		return "not reached"
	case Diverged:
		return "diverged"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Result is what Check found.
type Result struct {
	// Verdict is the answer.
	Verdict Verdict
	// Last is the store's last position.
	Last uint64
	// Found is the event the store holds at the Ref's stream and revision; the zero Ref when it
	// holds none.
	Found Ref
}

// Describe says what the store holds, for logs and errors.
func (r Result) Describe() string {
	found := "no event at that stream and revision"
	if r.Found != (Ref{}) {
		found = "the " + r.Found.String()
	}
	return fmt.Sprintf("the event store's last position is %d, and it holds %s", r.Last, found)
}

// Check asks store whether it holds r's event at r's position: it reads the event at r's stream
// and revision and the store's last position. This works on every backend, positions being
// compared and never counted (EventStoreDB's are not dense). The error, for a failed read, says
// nothing about the history.
func Check(ctx context.Context, store eventstore.Store, r Ref) (Result, error) {
	last, err := store.LastPosition(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("history: read the event store's last position: %w", err)
	}
	evs, err := store.ReadStream(ctx, r.Stream, eventstore.Forwards, r.Revision, 1)
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		return Result{}, fmt.Errorf("history: read %q at revision %d: %w", r.Stream, r.Revision, err)
	}
	res := Result{Last: uint64(last)}
	if len(evs) == 1 && evs[0].Revision == r.Revision {
		res.Found, _ = Of(evs[0]) // an id that is no UUID is no match
	}
	switch {
	case res.Found == r:
		res.Verdict = Same
	case res.Last < r.Position:
		res.Verdict = NotReached
	default:
		res.Verdict = Diverged
	}
	return res, nil
}
