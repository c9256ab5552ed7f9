package ledger

import (
	"strconv"
	"strings"
	"testing"
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
