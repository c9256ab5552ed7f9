package main

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"guestlist.dev/projections/audit"
	"guestlist.dev/projections/ledger"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// writeExport writes an export of tenant's n events (positions 10, 20, ...) with one signed
// checkpoint at the end, and the checkpoint key, to dir; it returns the export's lines and both
// files.
func writeExport(t *testing.T, dir, tenant string, n int) (lines []string, exportFile, keyFile string) {
	t.Helper()
	signer := ledger.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32)))
	lines = checkpointedExport(t, signer, tenant, n, n)
	exportFile = filepath.Join(dir, tenant+".ndjson")
	keyFile = filepath.Join(dir, "checkpoint.pub")
	if err := os.WriteFile(exportFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(signer.PublicKeyPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	return lines, exportFile, keyFile
}

// TestAuditVerifyFileRefusesAmbiguousLine: an export line with a forged event under "event" and
// the genuine one under "Event" (jq and Python read the forged one) makes verify --file exit 1,
// naming the line and why.
func TestAuditVerifyFileRefusesAmbiguousLine(t *testing.T) {
	dir := t.TempDir()
	lines, exportFile, keyFile := writeExport(t, dir, "acme", 3)
	if code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", exportFile, "--public-key", keyFile); code != exitOK {
		t.Fatalf("genuine export: exit %d\n%s%s", code, out, errOut)
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(lines[2], `{"event":`), "}")
	forged := strings.Replace(inner, `"actor":"token:acme/ci"`, `"actor":"token:mallory/x"`, 1)
	lines[2] = `{"event":` + forged + `,"Event":` + inner + `}`
	if err := os.WriteFile(exportFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", exportFile, "--public-key", keyFile)
	if code != exitError || !strings.Contains(out, "NOT intact") || !strings.Contains(out, `line 3: unknown key "Event"`) {
		t.Fatalf("forged line: exit %d\n%s%s", code, out, errOut)
	}
}

// TestAuditVerifyFileNamesTheTenant: a genuine export of another tenant verifies with the same
// key, so verify --file says which tenant (and which positions) it verified, and with --tenant
// refuses another tenant's export.
func TestAuditVerifyFileNamesTheTenant(t *testing.T) {
	dir := t.TempDir()
	_, exportFile, keyFile := writeExport(t, dir, "globex", 3)
	code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", exportFile, "--public-key", keyFile)
	if code != exitOK || !strings.Contains(out, `intact: 3 events of tenant "globex" checked, positions 10 to 30`) || !strings.Contains(out, "--tenant") {
		t.Fatalf("without --tenant: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, nil, "audit", "verify", "--file", exportFile, "--public-key", keyFile, "--tenant", "acme")
	if code != exitError || !strings.Contains(out, "NOT intact") || !strings.Contains(out, `"globex"`) {
		t.Fatalf("--tenant acme: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, nil, "audit", "verify", "--file", exportFile, "--public-key", keyFile, "--tenant", "globex")
	if code != exitOK || !strings.Contains(out, `intact: 3 events of tenant "globex" checked, positions 10 to 30`) || strings.Contains(out, "pass --tenant") {
		t.Fatalf("--tenant globex: exit %d\n%s%s", code, out, errOut)
	}
}

// TestAuditVerifyFileRefusesWrappedTime (from the review): the canonical encoding holds an event's
// time as Unix nanoseconds in an int64, and time.Time.UnixNano wraps around, so a time 2^64 ns
// (about 584.5 years) before or after the genuine one had the same canonical bytes: an export
// showing an event in 2610 or 1441 verified (exit 0) against checkpoints signed over 2026. Such a
// line is refused now, naming the line and the time.
func TestAuditVerifyFileRefusesWrappedTime(t *testing.T) {
	dir := t.TempDir()
	lines, exportFile, keyFile := writeExport(t, dir, "acme", 3)
	if code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", exportFile, "--public-key", keyFile, "--tenant", "acme"); code != exitOK {
		t.Fatalf("genuine export: exit %d\n%s%s", code, out, errOut)
	}
	genuine := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC) // the event at revision 1, line 3
	const wrapSec, wrapNsec = 18446744073, 709551616       // 2^64 ns
	for name, shifted := range map[string]time.Time{
		"2^64 ns later":   time.Unix(genuine.Unix()+wrapSec, int64(genuine.Nanosecond())+wrapNsec).UTC(),
		"2^64 ns earlier": time.Unix(genuine.Unix()-wrapSec, int64(genuine.Nanosecond())-wrapNsec).UTC(),
	} {
		if shifted.UnixNano() != genuine.UnixNano() {
			t.Fatalf("%s: %s does not wrap to the genuine time: the case shows nothing", name, shifted)
		}
		forged := append([]string(nil), lines...)
		forged[2] = strings.Replace(lines[2], `"time":"`+genuine.Format(time.RFC3339Nano)+`"`, `"time":"`+shifted.Format(time.RFC3339Nano)+`"`, 1)
		if forged[2] == lines[2] {
			t.Fatalf("%s: the time of line 3 not found: %s", name, lines[2])
		}
		f := writeLines(t, dir, "shifted.ndjson", forged)
		code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", f, "--public-key", keyFile, "--tenant", "acme")
		if code != exitError || !strings.Contains(out, "NOT intact") || !strings.Contains(out, "line 3:") || !strings.Contains(out, shifted.Format(time.RFC3339Nano)) {
			t.Errorf("%s (%s): exit %d\n%s%s", name, shifted.Format(time.RFC3339Nano), code, out, errOut)
		}
	}
}

// TestAuditVerifyFileRefusesDataOfAnotherType (from the review): an event's data as an Any must be
// what ExportEvents sends, a google.protobuf.BytesValue. Its "@type" was not read, so a line whose
// data claimed to be a google.protobuf.StringValue (protojson, and the audit's own RecordedEvent,
// read the base64 as text, not as the event's bytes) or a message of another event type verified
// (exit 0). Such a line is refused now, naming the line and the type.
func TestAuditVerifyFileRefusesDataOfAnotherType(t *testing.T) {
	dir := t.TempDir()
	lines, _, keyFile := writeExport(t, dir, "acme", 3)
	const data = `"data":"AQECAw=="` // the event at revision 1, line 3
	if !strings.Contains(lines[2], data) {
		t.Fatalf("line 3 has no %s: %s", data, lines[2])
	}
	asAny := func(typeURL string) []string {
		out := append([]string(nil), lines...)
		out[2] = strings.Replace(lines[2], data, `"data":{"@type":"`+typeURL+`","value":"AQECAw=="}`, 1)
		return out
	}
	// The form ExportEvents sends verifies.
	genuine := writeLines(t, dir, "bytes.ndjson", asAny("type.googleapis.com/google.protobuf.BytesValue"))
	if code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", genuine, "--public-key", keyFile, "--tenant", "acme"); code != exitOK {
		t.Fatalf("data as a BytesValue: exit %d\n%s%s", code, out, errOut)
	}
	for _, typeURL := range []string{
		"type.googleapis.com/google.protobuf.StringValue",
		"type.googleapis.com/guestlist.events.v1.PolicyDeleted",
		"example.com/google.protobuf.BytesValue",
		"",
	} {
		forged := asAny(typeURL)
		if typeURL == "type.googleapis.com/google.protobuf.StringValue" {
			// What the line says to a protojson reader: a string, not the event's bytes.
			var resp guestlistv1.ExportEventsResponse
			if err := protojson.Unmarshal([]byte(forged[2]), &resp); err != nil {
				t.Fatal(err)
			}
			var sv wrapperspb.StringValue
			if err := resp.GetEvent().GetData().UnmarshalTo(&sv); err != nil || sv.GetValue() != "AQECAw==" {
				t.Fatalf("protojson reads %v (%v): the case shows nothing", resp.GetEvent().GetData(), err)
			}
			if _, err := audit.RecordedEvent(resp.GetEvent()); err == nil {
				t.Fatal("audit.RecordedEvent takes a StringValue as the event's bytes")
			}
		}
		f := writeLines(t, dir, "other.ndjson", forged)
		code, out, errOut := runCmd(t, nil, "audit", "verify", "--file", f, "--public-key", keyFile, "--tenant", "acme")
		if code != exitError || !strings.Contains(out, "NOT intact") || !strings.Contains(out, "line 3:") || !strings.Contains(out, "google.protobuf.BytesValue") {
			t.Errorf("data with @type %q: exit %d\n%s%s", typeURL, code, out, errOut)
		}
	}
}
