package boltstore

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
)

func sampleRecords() [][]byte {
	id, _ := eventstore.ParseUUID("0f8fad5b-d9cb-469f-a165-70867728950e")
	full := eventstore.EventData{
		Type: "guestlist.events.v1.HostnameCreated",
		Data: []byte("\x0a\x10pay.example.com\x12\x04acme"),
		Metadata: eventstore.Metadata{
			Actor: "token:acme/t1", RequestID: "r-1", TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			TraceState: "a=b", CorrelationID: "c", CausationID: "d",
		},
	}
	return [][]byte{
		appendRecord(nil, time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC).UnixNano(), id, "tenant-acme", 300, &full),
		appendRecord(nil, 0, eventstore.UUID{}, "s", 0, &eventstore.EventData{Type: "T"}),
		appendRecord(nil, -1, id, strings.Repeat("s", 200), 1<<63, &eventstore.EventData{Type: "T", Data: bytes.Repeat([]byte{0xff}, 300)}),
	}
}

func TestRecordRoundTrip(t *testing.T) {
	id := eventstore.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	in := eventstore.EventData{
		Type: "T", Data: []byte("data"),
		Metadata: eventstore.Metadata{Actor: "a", RequestID: "b", TraceParent: "c", TraceState: "d", CorrelationID: "e", CausationID: "f"},
	}
	now := time.Now()
	b := appendRecord(nil, now.UnixNano(), id, "stream", 42, &in)
	if len(b) > recordSize("stream", &in) {
		t.Errorf("record of %d bytes, recordSize says at most %d", len(b), recordSize("stream", &in))
	}
	got, err := decodeRecord(7, b)
	if err != nil {
		t.Fatal(err)
	}
	want := eventstore.RecordedEvent{
		ID: id.String(), Type: "T", Stream: "stream", Data: []byte("data"), Metadata: in.Metadata,
		Time: now.UTC(), Revision: 42, Position: 7,
	}
	if !sameRecorded(got, want) || got.Time.Location() != time.UTC {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
	// The decoded event does not alias the input.
	b[len(b)-1] = 'X'
	if got.Metadata.CausationID != "f" {
		t.Error("decoded event aliases the record")
	}
}

func TestDecodeRejectsDamage(t *testing.T) {
	for _, rec := range sampleRecords() {
		for i := range len(rec) {
			if _, err := decodeRecord(1, rec[:i]); !errors.Is(err, errCorrupt) {
				t.Errorf("record truncated to %d of %d bytes: err = %v, want errCorrupt", i, len(rec), err)
			}
		}
		if _, err := decodeRecord(1, append(rec[:len(rec):len(rec)], 0)); !errors.Is(err, errCorrupt) {
			t.Errorf("record with a trailing byte: err = %v, want errCorrupt", err)
		}
		bad := append([]byte(nil), rec...)
		bad[0] = 2
		if _, err := decodeRecord(1, bad); !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), "version") {
			t.Errorf("record of version 2: err = %v, want an unknown version error", err)
		}
	}
	// A length that points past the end.
	rec := sampleRecords()[1]
	bad := append([]byte(nil), rec[:1+8+1+16]...)
	bad = append(bad, 0xff, 0xff, 0xff, 0xff, 0x0f, 's')
	if _, err := decodeRecord(1, bad); !errors.Is(err, errCorrupt) {
		t.Errorf("huge length: err = %v, want errCorrupt", err)
	}
}

func TestDecodeSkipsUnknownMetadata(t *testing.T) {
	// A later writer may add metadata fields; this decoder ignores them.
	rec := sampleRecords()[1]
	rec = rec[:len(rec)-numMetaFields-1] // drop the count and the six empty fields
	rec = append(rec, numMetaFields+2, 1, 'a', 0, 0, 0, 0, 0, 3, 'x', 'y', 'z', 0)
	got, err := decodeRecord(1, rec)
	if err != nil || got.Metadata.Actor != "a" {
		t.Errorf("decode = %+v, %v", got, err)
	}
	// And fewer fields than it knows leave the rest empty.
	rec = sampleRecords()[1]
	rec = append(rec[:len(rec)-numMetaFields-1], 1, 1, 'a')
	if got, err := decodeRecord(1, rec); err != nil || got.Metadata.Actor != "a" || got.Metadata.CausationID != "" {
		t.Errorf("decode = %+v, %v", got, err)
	}
}

func sameRecorded(a, b eventstore.RecordedEvent) bool {
	return a.ID == b.ID && a.Type == b.Type && a.Stream == b.Stream && bytes.Equal(a.Data, b.Data) &&
		a.Metadata == b.Metadata && a.Time.Equal(b.Time) && a.Revision == b.Revision && a.Position == b.Position
}

// FuzzDecodeRecord checks that the decoder never panics, and that whatever it accepts encodes
// back to a record that decodes to the same event.
func FuzzDecodeRecord(f *testing.F) {
	for _, rec := range sampleRecords() {
		f.Add(rec)
		f.Add(rec[:len(rec)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{recordVersion1})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, herr := decodeHeader(b)
		ev, err := decodeRecord(9, b)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("error %v does not wrap errCorrupt", err)
			}
			return
		}
		if herr != nil {
			t.Fatalf("decodeRecord accepts what decodeHeader rejects: %v", herr)
		}
		if string(h.stream) != ev.Stream || string(h.typ) != ev.Type || h.revision != ev.Revision {
			t.Fatalf("header %+v disagrees with record %+v", h, ev)
		}
		id, perr := eventstore.ParseUUID(ev.ID)
		if perr != nil {
			t.Fatalf("decoded id %q: %v", ev.ID, perr)
		}
		again := appendRecord(nil, ev.Time.UnixNano(), id, ev.Stream, ev.Revision,
			&eventstore.EventData{Type: ev.Type, Data: ev.Data, Metadata: ev.Metadata})
		ev2, err := decodeRecord(9, again)
		if err != nil {
			t.Fatalf("re-encoded record: %v", err)
		}
		if !sameRecorded(ev, ev2) {
			t.Fatalf("round trip: %+v became %+v", ev, ev2)
		}
	})
}
