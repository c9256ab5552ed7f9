package main

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"guestlist.dev/projections/ledger"
	"guestlist.dev/services/eventstore"
)

// checkpointedExport returns the lines of an export of tenant's n events with a signed checkpoint
// after every `every` events (and after the last), signed by signer.
func checkpointedExport(t *testing.T, signer *ledger.Signer, tenant string, n, every int) []string {
	t.Helper()
	var b bytes.Buffer
	ew, err := ledger.NewExportWriter(&b, tenant)
	if err != nil {
		t.Fatal(err)
	}
	var chain [32]byte
	var leaves [][32]byte
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		ev := eventstore.RecordedEvent{Type: "guestlist.events.v1.HostnameUpdated", Stream: "tenant-" + tenant,
			Data: []byte{byte(i), 1, 2, 3}, Metadata: eventstore.Metadata{Actor: "token:" + tenant + "/ci"},
			Time: t0.Add(time.Duration(i) * time.Second), Revision: uint64(i), Position: eventstore.Position(10 * (i + 1))}
		if err := ew.WriteEvent(ev); err != nil {
			t.Fatal(err)
		}
		c := ledger.Canonical(tenant, ev)
		chain = ledger.Chain(chain, c)
		leaves = append(leaves, ledger.LeafHash(c))
		if (i+1)%every == 0 || i == n-1 {
			cp := ledger.Checkpoint{Tenant: tenant, Size: uint64(i + 1), Root: ledger.RootFromLeafHashes(leaves), Chain: chain, Time: t0.Add(time.Duration(i) * time.Second)}
			if err := ew.WriteCheckpoint(signer.Sign(cp)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := ew.Flush(); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
}

// TestAuditVerifyFileAttacks: edits of an export by someone who controls the file (or the server
// that wrote it) but not the checkpoint key. Every edit that changes the history the signed
// checkpoints commit to makes verify --file exit 1, naming the line; edits that every JSON reader
// reads as the same history (another framing, another spelling of the same value) verify; a
// usage error (no key, no file) is exit 2.
func TestAuditVerifyFileAttacks(t *testing.T) {
	dir := t.TempDir()
	signer := ledger.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32)))
	keyFile := filepath.Join(dir, "checkpoint.pub")
	if err := os.WriteFile(keyFile, []byte(signer.PublicKeyPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	other := ledger.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{6}, 32)))
	// Lines: 0 tenant, 1 ev0, 2 ev1, 3 cp2, 4 ev2, 5 ev3, 6 cp4, 7 ev4, 8 ev5, 9 cp6.
	lines := checkpointedExport(t, signer, "acme", 6, 2)
	if len(lines) != 10 || !strings.HasPrefix(lines[9], `{"checkpoint":`) || !strings.HasPrefix(lines[3], `{"checkpoint":`) {
		t.Fatalf("unexpected export layout:\n%s", strings.Join(lines, "\n"))
	}
	globex := checkpointedExport(t, signer, "globex", 6, 2)
	forgedKey := checkpointedExport(t, other, "acme", 6, 2)
	edit := func(f func(l []string) []string) []string { return f(append([]string(nil), lines...)) }
	inner := func(l string) string { return strings.TrimSuffix(strings.TrimPrefix(l, `{"event":`), "}") }
	cases := []struct {
		name  string
		lines []string
		raw   string // the file's content, when not lines
		code  int
		want  string // in the output
	}{
		{name: "genuine", lines: lines, code: exitOK, want: "intact: 6 events"},
		{name: "an event dropped", lines: edit(func(l []string) []string { return append(l[:4], l[5:]...) }), code: exitError, want: "revision gap"},
		{name: "two events swapped", lines: edit(func(l []string) []string { l[4], l[5] = l[5], l[4]; return l }), code: exitError, want: "line 5:"},
		{name: "an event twice", lines: edit(func(l []string) []string { return append(l[:5], l[4:]...) }), code: exitError, want: "duplicate or out-of-order revision"},
		{name: "a checkpoint twice", lines: edit(func(l []string) []string { return append(l[:7], l[6:]...) }), code: exitError, want: "again"},
		{name: "two checkpoints swapped", lines: edit(func(l []string) []string { l[3], l[6] = l[6], l[3]; return l }), code: exitError, want: "increasing size"},
		{name: "the last checkpoint dropped", lines: lines[:9], code: exitError, want: "not covered by a signed checkpoint"},
		{name: "an event appended", lines: append(append([]string(nil), lines...), strings.Replace(lines[8], `"revision":"5"`, `"revision":"6"`, 1)), code: exitError, want: "line 11:"},
		{name: "every checkpoint dropped", lines: []string{lines[0], lines[1], lines[2], lines[4], lines[5], lines[7], lines[8]}, code: exitError, want: "not covered"},
		{name: "a checkpoint of another tenant", lines: edit(func(l []string) []string { return append(l[:4], append([]string{globex[6]}, l[4:]...)...) }), code: exitError, want: `checkpoint of tenant "globex"`},
		{name: "checkpoints of another tenant instead", lines: edit(func(l []string) []string { l[3], l[6], l[9] = globex[3], globex[6], globex[9]; return l }), code: exitError, want: `"globex"`},
		// Events are hashed with their tenant: another tenant's events are not this one's.
		{name: "the events of another tenant", lines: append([]string{lines[0]}, globex[1:]...), code: exitError, want: "line 2: event at revision 0 (position 10) does not match its hash chain"},
		{name: "two events of another tenant", lines: append([]string{lines[0]}, append([]string{globex[1], globex[2]}, lines[3:]...)...), code: exitError, want: "line 2: event at revision 0 (position 10) does not match its hash chain"},
		{name: "checkpoints signed by another key", lines: edit(func(l []string) []string { l[3], l[6], l[9] = forgedKey[3], forgedKey[6], forgedKey[9]; return l }), code: exitError, want: "signature invalid"},
		{name: "an actor changed, hash left", lines: edit(func(l []string) []string {
			l[5] = strings.Replace(l[5], "token:acme/ci", "token:acme/mallory", 1)
			return l
		}), code: exitError, want: "does not match its hash chain"},
		{name: "an actor changed, hash removed", lines: edit(func(l []string) []string {
			l[5] = strings.Replace(l[5], "token:acme/ci", "token:acme/mallory", 1)
			i := strings.Index(l[5], `,"hash":`)
			l[5] = l[5][:i] + "}}"
			return l
		}), code: exitError, want: "do not match the signed checkpoint"},
		{name: "an error line in the middle", lines: edit(func(l []string) []string {
			return append(l[:4], append([]string{`{"error":{"code":14,"message":"unavailable"}}`}, l[4:]...)...)
		}), code: exitError, want: "incomplete"},
		{name: "an error line at the end", lines: append(append([]string(nil), lines...), `{"error":{"code":14,"message":"unavailable"}}`), code: exitError, want: "incomplete"},
		{name: "an empty file", raw: "", code: exitError, want: "no events"},
		{name: "blank lines only", raw: "\n  \n\t\n", code: exitError, want: "no events"},
		{name: "only the tenant line", lines: lines[:1], code: exitError, want: "no events"},
		{name: "no tenant line", lines: lines[1:], code: exitError, want: "tenant is not known"},
		{name: "the tenant line twice", lines: append([]string{lines[0]}, lines...), code: exitOK, want: "intact: 6 events"},
		{name: "a second tenant line of another tenant", lines: edit(func(l []string) []string {
			return append(l[:4], append([]string{`{"tenantId":"globex"}`}, l[4:]...)...)
		}), code: exitError, want: `export of tenant "globex" inside`},
		{name: "framings mixed", lines: edit(func(l []string) []string {
			l[0] = `{"result":{"tenantId":"acme"}}`
			l[2] = `{"result":` + l[2] + `}`
			l[3] = `{"result":` + l[3] + `}`
			l[5] = inner(l[5])
			return l
		}), code: exitOK, want: "intact: 6 events"},
		{name: "an event in two framings at once", lines: edit(func(l []string) []string { l[2] = `{"result":` + l[2] + `,"event":` + inner(l[2]) + `}`; return l }), code: exitError, want: "line 3:"},
		{name: "a duplicate key", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"actor":`, `"actor":"token:acme/mallory","actor":`, 1)
			return l
		}), code: exitError, want: `duplicate key "actor"`},
		{name: "an unknown key", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"actor":`, `"tenantId":"globex","actor":`, 1)
			return l
		}), code: exitError, want: `unknown key "tenantId"`},
		{name: "an unknown key at the top", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `{"event":`, `{"note":"x","event":`, 1)
			return l
		}), code: exitError, want: `unknown key "note"`},
		{name: "positions as JSON numbers", lines: edit(func(l []string) []string {
			for i := range l {
				for _, p := range []string{"10", "20", "30", "40", "50", "60"} {
					l[i] = strings.Replace(l[i], `"position":"`+p+`"`, `"position":`+p, 1)
				}
				l[i] = strings.Replace(l[i], `"revision":"1"`, `"revision":1`, 1)
			}
			return l
		}), code: exitOK, want: "intact: 6 events"},
		{name: "a position with a leading zero", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"position":"20"`, `"position":"020"`, 1)
			return l
		}), code: exitError, want: "leading zeros"},
		{name: "a position as 2e1", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"position":"20"`, `"position":2e1`, 1)
			return l
		}), code: exitError, want: "line 3:"},
		{name: "a position as a negative number", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"position":"20"`, `"position":-20`, 1)
			return l
		}), code: exitError, want: "line 3:"},
		{name: "a position beyond 2^53 as a number", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"position":"20"`, `"position":9007199254740993`, 1)
			return l
		}), code: exitError, want: "2^53"},
		{name: "a position of null", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"position":"20"`, `"position":null`, 1)
			return l
		}), code: exitError, want: "line 3:"},
		{name: "the hash with \\u escapes", lines: edit(func(l []string) []string {
			i := strings.Index(l[2], `"hash":"`) + len(`"hash":"`)
			l[2] = l[2][:i] + fmt.Sprintf(`\u%04X`, l[2][i]) + l[2][i+1:] // every JSON reader reads the same hash
			return l
		}), code: exitOK, want: "intact: 6 events"},
		{name: "the hash in upper case", lines: edit(func(l []string) []string {
			i := strings.Index(l[2], `"hash":"`) + len(`"hash":"`)
			l[2] = l[2][:i] + strings.ToUpper(l[2][i:i+64]) + l[2][i+64:]
			return l
		}), code: exitError, want: "lower-case hex"},
		{name: "the data with an escaped character", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"data":"AQECAw=="`, `"data":"AQECAw\u003d="`, 1)
			return l
		}), code: exitOK, want: "intact: 6 events"},
		{name: "the data in URL-safe base64 or unpadded", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"data":"AQECAw=="`, `"data":"AQECAw"`, 1)
			return l
		}), code: exitError, want: "base64"},
		{name: "text after a line's object", lines: edit(func(l []string) []string { l[2] += ` {"event":{}}`; return l }), code: exitError, want: "text after the JSON object"},
		{name: "a trailing comma", lines: edit(func(l []string) []string { l[2] = strings.TrimSuffix(l[2], "}}") + ",}}"; return l }), code: exitError, want: "line 3:"},
		{name: "a byte-order mark", raw: "\ufeff" + strings.Join(lines, "\n") + "\n", code: exitError, want: "line 1:"},
		{name: "CRLF line ends", raw: strings.Join(lines, "\r\n") + "\r\n", code: exitOK, want: "intact: 6 events"},
		{name: "no final newline", raw: strings.Join(lines, "\n"), code: exitOK, want: "intact: 6 events"},
		{name: "a time with an offset", lines: edit(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"time":"2026-01-01T00:00:01Z"`, `"time":"2026-01-01T01:00:01+01:00"`, 1)
			return l
		}), code: exitError, want: "line 3:"},
		{name: "a checkpoint with text after its signature", lines: edit(func(l []string) []string { l[3] = strings.Replace(l[3], `\n"}`, `\nnote: all good\n"}`, 1); return l }), code: exitOK, want: "intact: 6 events"},
		{name: "a checkpoint's body changed", lines: edit(func(l []string) []string { l[9] = strings.Replace(l[9], `\n6\n`, `\n5\n`, 1); return l }), code: exitError, want: "signature invalid"},
	}
	for _, c := range cases {
		raw := c.raw
		if c.lines != nil {
			raw = strings.Join(c.lines, "\n") + "\n"
		}
		f := filepath.Join(dir, "export.ndjson")
		if err := os.WriteFile(f, []byte(raw), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", f, "--public-key", keyFile)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, want %d and %q\n%s%s", c.name, code, c.code, c.want, out, errOut)
		}
	}
	// Usage errors are exit 2, not 1: no key, no file, a key that is not one.
	f := writeLines(t, dir, "export.ndjson", lines)
	for name, args := range map[string][]string{
		"no --public-key":         {"--file", f},
		"a missing file":          {"--file", filepath.Join(dir, "missing.ndjson"), "--public-key", keyFile},
		"a missing key":           {"--file", f, "--public-key", filepath.Join(dir, "missing.pub")},
		"the export as the key":   {"--file", f, "--public-key", f},
		"a directory as the file": {"--file", dir, "--public-key", keyFile},
	} {
		if code, out, errOut := runCmd(t, nil, append([]string{"audit", "verify"}, args...)...); code != exitUsage {
			t.Errorf("%s: exit %d, want %d\n%s%s", name, code, exitUsage, out, errOut)
		}
	}
}

// TestAuditVerifyFileSaysAsOfWhen (from the review): an export cut short right after an earlier
// checkpoint (or an old export served again) is a genuine, shorter history and verifies: nothing
// in the file tells it from the full one. verify --file said only how many events it checked; it
// now also says when the checkpoint that covers the last of them was signed, so that the auditor
// sees the history is not recent.
func TestAuditVerifyFileSaysAsOfWhen(t *testing.T) {
	dir := t.TempDir()
	signer := ledger.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32)))
	keyFile := filepath.Join(dir, "checkpoint.pub")
	if err := os.WriteFile(keyFile, []byte(signer.PublicKeyPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := checkpointedExport(t, signer, "acme", 6, 2) // checkpoints at sizes 2, 4, 6 (lines 4, 7, 10)
	for _, c := range []struct {
		lines []string
		want  string
	}{
		{lines, `intact: 6 events of tenant "acme" checked, positions 10 to 60` + "\n" + "the history as of the signed checkpoint of 2026-01-01T00:00:05Z (size 6)\n"},
		{lines[:7], `intact: 4 events of tenant "acme" checked, positions 10 to 40` + "\n" + "the history as of the signed checkpoint of 2026-01-01T00:00:03Z (size 4)\n"},
	} {
		f := writeLines(t, dir, "export.ndjson", c.lines)
		code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", f, "--public-key", keyFile, "--tenant", "acme")
		if code != exitOK || !strings.Contains(out, c.want) {
			t.Errorf("%d lines: exit %d, want 0 and %q\n%s%s", len(c.lines), code, c.want, out, errOut)
		}
	}
}

// TestAuditVerifyFileRefusesHugeLines (from the review): a line of an export holds one event, at
// most what one API request carries (4 MiB of data, 5.6 MiB in base64), but lines of up to 256
// MiB were read, several at a time (a file of 200 MB lines took 3.5 GB to verify). A line longer
// than ledger.MaxExportLine (64 MiB) is refused now, naming it; here a genuine export whose line 3
// is padded with spaces (JSON whitespace) to that length, which verified before.
func TestAuditVerifyFileRefusesHugeLines(t *testing.T) {
	dir := t.TempDir()
	lines, _, keyFile := writeExport(t, dir, "acme", 3)
	lines[2] += strings.Repeat(" ", ledger.MaxExportLine+1-len(lines[2]))
	f := writeLines(t, dir, "padded.ndjson", lines)
	code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", f, "--public-key", keyFile, "--tenant", "acme")
	if code != exitError || !strings.Contains(out, "line 3 is longer than 64 MiB") {
		t.Errorf("a line of 64 MiB + 1: exit %d\n%s%s", code, out, errOut)
	}
	lines[2] = lines[2][:ledger.MaxExportLine] // the longest line read: the export verifies
	f = writeLines(t, dir, "padded.ndjson", lines)
	if code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", f, "--public-key", keyFile, "--tenant", "acme"); code != exitOK {
		t.Errorf("a line of 64 MiB: exit %d\n%s%s", code, out, errOut)
	}
}
