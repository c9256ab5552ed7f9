package history

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
)

var sample = Ref{Position: 300, Stream: "tenant-acme", Revision: 7, ID: eventstore.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}

func TestTokenRoundTrip(t *testing.T) {
	token := sample.Encode()
	got, err := Decode(token)
	if err != nil || got != sample {
		t.Fatalf("Decode(Encode(%v)) = %v, %v", sample, got, err)
	}
	if (Ref{}).Encode() != nil {
		t.Error("the zero Ref encodes to a token")
	}
	if got, err := Decode(nil); err != nil || got != (Ref{}) {
		t.Errorf("Decode(nil) = %v, %v; want the zero Ref", got, err)
	}
}

// TestDecodeRefusesMalformedTokens: an edge sends the token back; anything Encode would not have
// written for a tenant stream's event is refused, oversized tokens without being read.
func TestDecodeRefusesMalformedTokens(t *testing.T) {
	good := sample.Encode()
	withStream := func(stream string) []byte { r := sample; r.Stream = stream; return r.Encode() }
	for name, token := range map[string][]byte{
		"oversized":              append(withStream("tenant-"+strings.Repeat("a", MaxTokenBytes)), 0),
		"version 2":              append([]byte{2}, good[1:]...),
		"version only":           {tokenVersion},
		"truncated id":           good[:5],
		"position 0":             Ref{Stream: "tenant-acme", Revision: 1}.Encode(),
		"long varint":            append([]byte{tokenVersion, 0x80 | 44, 0x82, 0x00}, good[3:]...),
		"another stream":         withStream("hostname-a.example.com"),
		"a system stream":        withStream("$all"),
		"no stream":              good[:len(good)-len(sample.Stream)],
		"stream not UTF-8":       withStream("tenant-\xff"),
		"varint overflow":        append([]byte{tokenVersion}, bytes.Repeat([]byte{0xff}, 11)...),
		"all of MaxTokenBytes+1": bytes.Repeat([]byte{tokenVersion}, MaxTokenBytes+1),
	} {
		t.Run(name, func(t *testing.T) {
			if r, err := Decode(token); !errors.Is(err, ErrBadToken) {
				t.Fatalf("Decode = %v, %v; want ErrBadToken", r, err)
			}
		})
	}
}

// FuzzDecode: Decode never panics, and what it accepts is what Encode writes.
func FuzzDecode(f *testing.F) {
	f.Add(sample.Encode())
	f.Add([]byte{tokenVersion, 1, 0})
	f.Fuzz(func(t *testing.T, token []byte) {
		r, err := Decode(token)
		if err == nil && len(token) > 0 && !bytes.Equal(r.Encode(), token) {
			t.Fatalf("Decode(%x) = %v, which encodes to %x", token, r, r.Encode())
		}
	})
}

// TestCheck: the verdicts on a real store: the event there (same), the store not at the position
// yet (not reached), the store past the position with another event there or none (diverged).
func TestCheck(t *testing.T) {
	ctx := context.Background()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	n := byte(0)
	append1 := func(stream string) eventstore.RecordedEvent {
		t.Helper()
		n++
		id := eventstore.UUID{n, 0x40, 3}
		if _, err := store.Append(ctx, stream, eventstore.Any(), eventstore.EventData{ID: id.String(), Type: "t"}); err != nil {
			t.Fatal(err)
		}
		evs, err := store.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, 1)
		if err != nil {
			t.Fatal(err)
		}
		return evs[0]
	}
	ev := append1("tenant-acme")
	ref, err := Of(ev)
	if err != nil {
		t.Fatal(err)
	}
	otherID := ref
	otherID.ID[15] ^= 1
	otherRevision := ref
	otherRevision.Revision++
	ahead := ref
	ahead.Position += 2
	ahead.Revision++
	otherStream := ref
	otherStream.Stream = "tenant-globex"
	check := func(r Ref, want Verdict) {
		t.Helper()
		res, err := Check(ctx, store, r)
		if err != nil || res.Verdict != want {
			t.Errorf("Check(%v) = %v (%s), %v; want %v", r, res.Verdict, res.Describe(), err, want)
		}
	}
	check(ref, Same)
	check(ahead, NotReached)
	check(otherID, Diverged) // the store holds another event there
	check(otherRevision, Diverged)
	check(otherStream, Diverged)
	append1("tenant-acme")
	append1("tenant-acme")
	check(ahead, Diverged) // reached, and its event is another
	check(ref, Same)
}
