// Package esdbstore is the event store on EventStoreDB/KurrentDB (server 22.10 or newer), through
// the gRPC client github.com/EventStore/EventStore-Client-Go/v4. It passes the conformance suite
// of package storetest; this comment says how each part of the contract maps, which guarantee
// comes from the server and which from this package. docs/storage.md is the operator's view.
//
// # Positions
//
// A $all position is a pair (commit, prepare) of byte offsets in the server's transaction log. An
// event written through the gRPC append is committed by its own prepare record (no explicit
// transaction, which only the retired TCP API could open), so its commit and prepare positions
// are both that record's log position: the server's AllReader returns such events with commit =
// the event's log position, and since mid-2020 (KurrentDB pull request 2522) gRPC reads report
// the event's own position as prepare, not its transaction's; since 2022 (pull request 3459)
// stream reads carry the position too. Position is therefore the commit position, and every event read
// is checked: commit ≠ prepare, or a missing position (older servers send 2^64-1), fails the call
// with an error saying so; nothing is mapped by guess. An append's answer carries the commit
// position of its last event, which is the AppendResult's Position (a retry the server
// deduplicates is answered with the position of its last event too); an answer without one (the
// server found the events written but could not read back where) is answered from a read of the
// stream.
//
// Positions are sparse (byte offsets, not counts) and grow with every write, also the server's
// own; guestlist only orders and compares them. $all reads forward from a position include the
// event there, so ReadAll reads from the position and drops what is not after it; subscriptions
// start after their position on the server, and the package checks that too. Position 0 is
// Start (the log begins with an epoch record, never an event).
//
// # System events
//
// Streams and event types starting with "$" are the server's (statistics, settings, users,
// projections, links, tombstones, stream metadata). They are never returned, are skipped by
// LastPosition, and appends may not use such names.
//
// # Filters
//
// The client's ReadAll has no server-side filter, so ReadAll filters here and reads through
// everything after from. A subscription filters on the server by one kind of prefix: stream
// prefixes when the Filter has any, else event type prefixes, else a filter that drops system
// events; the complete Filter applies again here. The server then sends checkpoints while it
// skips events; they advance the position a dropped subscription resumes from, kept as the
// server's pair because a checkpoint's prepare part is 0, not an event's.
//
// # Subscriptions
//
// Every subscription names its start explicitly (the client's default is the end). When it
// drops (server restart, network, a slow reader cut off by the server), it resubscribes after a
// backoff from the later of the last event received and the last checkpoint, and skips anything
// at or before the last event received: no gap, no duplicate. Errors that resubscribing cannot
// fix (access denied) end it. Cancelling the context given to Subscribe, closing the
// subscription or closing the store end it with context.Canceled, ErrClosed and ErrClosed.
//
// # Expected revisions and idempotency
//
// Any, NoStream, StreamExists and Exact map to the client's Any, NoStream, StreamExists and
// Revision. The server deduplicates a retried append by event id only when the retry names the
// expected revision of the first attempt, and with Any only while the ids are in its cache; the
// contract is stricter (any expected revision; ErrIdempotencyConflict for a partial or altered
// retry). So Append first reads the stream's newest events (64 by default, see
// WithIdempotencyWindow): ids found there are answered from the stream, with the first append's
// result or ErrIdempotencyConflict, as the embedded store does (type and data compared, metadata
// not). Otherwise it checks the expected revision against the revision it read and appends with
// that exact revision, so the server refuses the append if anything landed in between (the
// server's guarantee: atomic expected-version check); on that refusal it reads and decides again.
// A WrongExpectedRevisionError therefore carries the revision the server reported right before.
// Every event id is set from EventData.ID (the nil UUID is refused: the client would replace it
// with a random id).
//
// Limit: a retry whose first attempt lies more than the window back in its stream is not
// recognised; it is appended again (with an expected revision that matches the stream) or
// refused. The embedded store has no such limit. Appends cost one stream read more than the
// append itself.
//
// # Errors
//
// Wrong expected version becomes *eventstore.WrongExpectedRevisionError; a stream deleted on the
// server eventstore.ErrStreamDeleted; a stream with no events eventstore.ErrStreamNotFound; an
// unreachable server, a deadline of the server or the client (appends have the client's default
// of 10 s), a leader change, or a client that gave up eventstore.ErrUnavailable; any call on a
// closed store eventstore.ErrClosed. The client's error stays in the chain (errors.As with
// *esdb.Error works). Refused credentials or ACLs are reported as such, not as unavailable.
//
// # Metadata and time
//
// Data is stored as given, with content type application/octet-stream (the client knows only
// binary and JSON; the event type, the protobuf message's full name, says what it holds).
// eventstore.Metadata is the event's user metadata, a JSON object with the keys actor,
// requestId, traceparent, tracestate, $correlationId and $causationId (the last two are the
// server's well-known keys), empty ones left out. RecordedEvent.Time is the server's created
// date, in UTC.
//
// # The client's pitfalls
//
// The client gives up for good when its node discovery fails (a server down for about a second
// with the default settings): every later call fails with "connection closed". The store then
// makes a new client. The old one can hold calls blocked on its internal channel, ignoring their
// context, so every call runs in a goroutine of its own and the caller waits only for its
// context. A client is closed by the last call that leaves it: closing it with a call inside
// would race with the blocked sends. A known limitation of the client (v4.2.0): the calls that
// queued behind a discovery that failed stay blocked for good, with what they hold, and such a
// client is then never closed. The store bounds this to the calls that were inside the client
// when the outage began: a client made to replace one that gave up lets one call in at a time
// (a probe, which is the one that runs the discovery and gets its answer) until the server
// answers, and the others fail at once with ErrUnavailable; so the replacements never hold a
// stuck call, however long the outage lasts. The client panics on a read response it does not
// know; that panic becomes an error.
//
// Connection strings: a '/', '?' or '#' in the user name or password must be percent-encoded;
// unescaped, they end the host part early and the rest of the password would be read as the
// path, a setting or the fragment, so such strings are refused (without repeating them).
package esdbstore
