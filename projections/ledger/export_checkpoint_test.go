package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
)

// checkpointLines returns the indexes of the checkpoint lines.
func checkpointLines(lines []string) []int {
	var out []int
	for i, l := range lines {
		if strings.HasPrefix(l, `{"checkpoint":`) {
			out = append(out, i)
		}
	}
	return out
}

// TestReviewRepeatedCheckpoint (from the review, without timing): copies of a genuine checkpoint
// line whose size is below the events read were each checked again, by a Merkle root over that
// many events (800 copies over 200k events: 50 s), and the export still verified. A checkpoint
// line that does not grow the size is refused now, naming both lines.
func TestReviewRepeatedCheckpoint(t *testing.T) {
	lines, pub := smallExport(t, 100, 10, ciActor)
	cps := checkpointLines(lines)
	if len(cps) != 10 {
		t.Fatalf("%d checkpoint lines", len(cps))
	}
	cases := []struct {
		name  string
		edit  func(ls []string) []string
		wantL int    // the line refused
		want  string // what the problem says
	}{
		{"800 copies of the checkpoint at size 90 at the end", func(ls []string) []string {
			for range 800 {
				ls = append(ls, ls[cps[8]])
			}
			return ls
		}, len(lines) + 1, "checkpoint at size 90 after the checkpoint at size 100 (line " + strconv.Itoa(cps[9]+1) + ")"},
		{"a copy right after it", func(ls []string) []string {
			return append(ls[:cps[0]+1:cps[0]+1], append([]string{ls[cps[0]]}, ls[cps[0]+1:]...)...)
		}, cps[0] + 2, "the checkpoint at size 10 again (first on line " + strconv.Itoa(cps[0]+1) + ")"},
		{"two checkpoints swapped", func(ls []string) []string {
			ls[cps[3]], ls[cps[4]] = ls[cps[4]], ls[cps[3]]
			return ls
		}, cps[4] + 1, "checkpoint at size 40 after the checkpoint at size 50"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := verifyExportLines(c.edit(append([]string(nil), lines...)), pub)
			t.Logf("%+v", r)
			want := "line " + strconv.Itoa(c.wantL) + ": " + c.want
			if r.Valid || !strings.HasPrefix(r.Problem, want) {
				t.Fatalf("got %+v, want a problem starting %q", r, want)
			}
		})
	}
}

// TestLateCheckpointsCostOnePass: checkpoints that come after more events than their size (here
// all at the end, in order) still verify, and checking them adds each event to a Merkle range at
// most once in all (it was once per checkpoint: quadratic).
func TestLateCheckpointsCostOnePass(t *testing.T) {
	const n = 1000
	lines, pub := smallExport(t, n, 10, ciActor)
	var events, cps []string
	for _, l := range lines {
		if strings.HasPrefix(l, `{"checkpoint":`) {
			cps = append(cps, l)
		} else {
			events = append(events, l)
		}
	}
	late := append(events, cps...)
	v := &exportVerifier{pub: pub, rng: rangeFactory.NewEmptyRange(0)}
	r := v.verify(strings.NewReader(strings.Join(late, "\n")), "")
	if !r.Valid || r.Checked != n {
		t.Fatalf("%+v", r)
	}
	if v.lagLeaves > n {
		t.Fatalf("%d checkpoints at the end added %d events to Merkle ranges, want at most %d", len(cps), v.lagLeaves, n)
	}
	t.Logf("%d late checkpoints: %d events added", len(cps), v.lagLeaves)
	// A late checkpoint of another history (signed by the same key) is still found out.
	other, _ := smallExport(t, n, 10, func(int) string { return "someone else" })
	otherCPs := checkpointLines(other)
	late[len(events)+49] = other[otherCPs[49]] // the checkpoint at size 500
	if r := verifyExportLines(late, pub); r.Valid || !strings.Contains(r.Problem, "do not match the signed checkpoint at size 500") {
		t.Fatalf("another history's checkpoint at size 500: %+v", r)
	}
}

// TestExportReadAheadIsBounded (from the review): the verifier parses lines ahead of the one it
// applies in batches of 1,024 lines, which had no bound in bytes, so an export of large lines
// (events carry up to 4 MiB; lines of up to 256 MiB were read) was held in memory nearly whole: a 630 MB
// file of 512 KB lines took 1.7 GB, and a larger one exhausted the auditor's memory. A batch
// now takes no more lines once it holds 4 MiB.
func TestExportReadAheadIsBounded(t *testing.T) {
	signer := NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)))
	const n, size = 48, 512 << 10
	evs := make([]eventstore.RecordedEvent, n)
	var leaves [][32]byte
	var chain [32]byte
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range evs {
		evs[i] = eventstore.RecordedEvent{Type: "guestlist.events.v1.PolicyUpdated", Stream: "tenant-acme",
			Data: bytes.Repeat([]byte{byte(i)}, size), Time: t0.Add(time.Duration(i) * time.Second),
			Revision: uint64(i), Position: eventstore.Position(i + 1)}
		c := Canonical("acme", evs[i])
		chain = Chain(chain, c)
		leaves = append(leaves, LeafHash(c))
	}
	cp := signer.Sign(Checkpoint{Tenant: "acme", Size: n, Root: RootFromLeafHashes(leaves), Chain: chain, Time: t0})
	file := filepath.Join(t.TempDir(), "acme.ndjson")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteExport(f, "acme", evs, []SignedCheckpoint{cp}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	v := &exportVerifier{pub: signer.PublicKey(), rng: rangeFactory.NewEmptyRange(0)}
	if r := v.verify(in, ""); !r.Valid || r.Checked != n {
		t.Fatalf("genuine export: %+v", r)
	}
	line := base64.StdEncoding.EncodedLen(size) + 512
	if v.maxBatch > batchBytes+line {
		t.Errorf("a batch held %d bytes of lines (%d lines of about %d bytes): more than %d + one line", v.maxBatch, v.maxBatch/line, line, batchBytes)
	}
}
