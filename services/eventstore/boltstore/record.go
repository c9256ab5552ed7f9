package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"guestlist.dev/services/eventstore"
)

// Record encoding.
//
// Every value of the log bucket is one event, encoded as follows (version 1). The event's
// position is the bucket key and is not repeated in the value.
//
//	version   1 byte, recordVersion1
//	time      8 bytes, big-endian int64, Unix nanoseconds (UTC)
//	revision  uvarint, the event's revision in its stream
//	id        16 bytes, the event id (UUID) in binary
//	stream    uvarint length, then that many bytes
//	type      uvarint length, then that many bytes
//	data      uvarint length, then that many bytes
//	metadata  uvarint count n, then n times (uvarint length, bytes); the fields in order are
//	          actor, request id, traceparent, tracestate, correlation id, causation id.
//	          A decoder ignores fields beyond those it knows and leaves missing ones empty,
//	          so metadata fields can be added without a new version.
//
// Nothing may follow the metadata. A new layout gets a new version byte; the decoder rejects
// versions it does not know.
const recordVersion1 = 1

// numMetaFields is the number of metadata fields that version 1 writes.
const numMetaFields = 6

// errCorrupt is wrapped by every decoding error.
var errCorrupt = errors.New("corrupt record")

// appendRecord appends the encoding of ev (Stream, Revision, Type, Data, Metadata; the id given
// in binary) with time t to dst.
func appendRecord(dst []byte, t int64, id eventstore.UUID, stream string, rev uint64, ev *eventstore.EventData) []byte {
	dst = append(dst, recordVersion1)
	dst = binary.BigEndian.AppendUint64(dst, uint64(t))
	dst = binary.AppendUvarint(dst, rev)
	dst = append(dst, id[:]...)
	dst = appendString(dst, stream)
	dst = appendString(dst, ev.Type)
	dst = binary.AppendUvarint(dst, uint64(len(ev.Data)))
	dst = append(dst, ev.Data...)
	m := &ev.Metadata
	dst = binary.AppendUvarint(dst, numMetaFields)
	for _, s := range [numMetaFields]string{m.Actor, m.RequestID, m.TraceParent, m.TraceState, m.CorrelationID, m.CausationID} {
		dst = appendString(dst, s)
	}
	return dst
}

// recordSize returns an upper bound of the encoded size of ev, for sizing buffers and limits.
func recordSize(stream string, ev *eventstore.EventData) int {
	m := &ev.Metadata
	return 1 + 8 + binary.MaxVarintLen64 + 16 + 10*binary.MaxVarintLen64 +
		len(stream) + len(ev.Type) + len(ev.Data) + len(m.Actor) + len(m.RequestID) +
		len(m.TraceParent) + len(m.TraceState) + len(m.CorrelationID) + len(m.CausationID)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// recordReader decodes a record step by step. It copies everything it returns, so the input may
// be memory that is only valid during a bbolt transaction.
type recordReader struct {
	b   []byte
	off int
	err error
}

func (r *recordReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s at offset %d of %d", errCorrupt, what, r.off, len(r.b))
	}
}

func (r *recordReader) fixed(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b)-r.off < n {
		r.fail("truncated " + what)
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *recordReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		r.fail("bad " + what)
		return 0
	}
	r.off += n
	return v
}

// bytes returns the next length-prefixed field, without copying.
func (r *recordReader) bytes(what string) []byte {
	n := r.uvarint(what + " length")
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)-r.off) {
		r.fail("truncated " + what)
		return nil
	}
	return r.fixed(int(n), what)
}

// recordHeader is the part of a record that filters need.
type recordHeader struct {
	time     int64
	revision uint64
	id       eventstore.UUID
	stream   []byte // aliases the input
	typ      []byte // aliases the input
}

func (r *recordReader) header() (h recordHeader) {
	v := r.fixed(1, "version")
	if r.err != nil {
		return h
	}
	if v[0] != recordVersion1 {
		r.off--
		r.fail(fmt.Sprintf("unknown version %d", v[0]))
		return h
	}
	if t := r.fixed(8, "time"); t != nil {
		h.time = int64(binary.BigEndian.Uint64(t))
	}
	h.revision = r.uvarint("revision")
	if id := r.fixed(16, "id"); id != nil {
		h.id = eventstore.UUID(id)
	}
	h.stream = r.bytes("stream")
	h.typ = r.bytes("type")
	return h
}

// decodeHeader decodes the header of b, without copying stream and type.
func decodeHeader(b []byte) (recordHeader, error) {
	r := recordReader{b: b}
	h := r.header()
	return h, r.err
}

// decodeRecord decodes the record b stored at position pos. It never panics: a truncated or
// otherwise malformed record gives an error wrapping errCorrupt.
func decodeRecord(pos eventstore.Position, b []byte) (eventstore.RecordedEvent, error) {
	r := recordReader{b: b}
	h := r.header()
	data := r.bytes("data")
	var meta [numMetaFields]string
	n := r.uvarint("metadata count")
	for i := uint64(0); i < n && r.err == nil; i++ {
		f := r.bytes("metadata field")
		if i < numMetaFields {
			meta[i] = string(f)
		}
	}
	if r.err == nil && r.off != len(b) {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return eventstore.RecordedEvent{}, r.err
	}
	ev := eventstore.RecordedEvent{
		ID:     h.id.String(),
		Type:   string(h.typ),
		Stream: string(h.stream),
		Metadata: eventstore.Metadata{
			Actor:         meta[0],
			RequestID:     meta[1],
			TraceParent:   meta[2],
			TraceState:    meta[3],
			CorrelationID: meta[4],
			CausationID:   meta[5],
		},
		Time:     time.Unix(0, h.time).UTC(),
		Revision: h.revision,
		Position: pos,
	}
	if len(data) > 0 {
		ev.Data = append([]byte(nil), data...)
	}
	return ev, nil
}
