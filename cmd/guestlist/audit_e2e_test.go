package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/projections/audit"
	"guestlist.dev/projections/ledger"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// loggedDecision is a decision log line, as far as the audit test reads it.
type loggedDecision struct {
	raw            string
	Time           string `json:"time"`
	TenantID       string `json:"tenant_id"`
	Hostname       string `json:"hostname"`
	ConfigRevision uint64 `json:"config_revision"`
	Verdict        string `json:"verdict"`
	Reason         string `json:"reason"`
	Rule           string `json:"rule"`
	Cert           struct {
		FingerprintSHA256 string `json:"fingerprint_sha256"`
	} `json:"cert"`
	Request struct {
		Method string `json:"method"`
		Path   string `json:"path"`
	} `json:"request"`
}

func readDecisions(t *testing.T, path string) []loggedDecision {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []loggedDecision
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var d loggedDecision
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("decision log line %q: %v", sc.Text(), err)
		}
		d.raw = sc.Text()
		out = append(out, d)
	}
	return out
}

// TestAuditEndToEnd: requests through the real edge under a changing configuration; every line of
// the decision log is re-derived by Explain (REST, at the line's config_revision and time) and by
// "guestlist audit explain --decision"; an auditor token reads but cannot write, nor read another
// tenant; history pages (with the ledger's hashes), snapshots and diffs over REST and the CLI;
// verify online, and an export verified offline with only the checkpoint key.
func TestAuditEndToEnd(t *testing.T) {
	dir := t.TempDir()
	n := startDev(t, dir)
	acmeCA := pkitest.NewCA(t, "acme devices")
	good := acmeCA.Client(t, "terminal-1")
	ops := acmeCA.Client(t, "ops-1")
	foreign := pkitest.NewCA(t, "globex devices").Client(t, "globex-terminal")
	certFiles := map[string]string{} // fingerprint -> PEM file
	for name, l := range map[string]*pkitest.Leaf{"good": good, "ops": ops, "foreign": foreign} {
		p := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(p, []byte(pkitest.PEM(l.Cert)), 0o600); err != nil {
			t.Fatal(err)
		}
		certFiles[certid.FingerprintSHA256(l.Cert.Raw)] = p
	}

	for _, id := range []string{"acme", "globex"} {
		if code, _ := n.rest("POST", "/v1/tenants?tenantId="+id, n.token, map[string]any{"displayName": id}); code != 200 {
			t.Fatal("create tenant")
		}
	}
	_, tok := n.rest("POST", "/v1/tenants/acme/tokens", n.token, map[string]any{"displayName": "auditor", "role": "ROLE_AUDITOR"})
	auditor, _ := tok["secret"].(string)
	if auditor == "" {
		t.Fatalf("no auditor token: %v", tok)
	}
	n.rest("POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", n.token, map[string]any{"certificatePem": pkitest.PEM(acmeCA.Cert)})
	if code, _ := n.rest("POST", "/v1/tenants/acme/hostnames", n.token, map[string]any{
		"hostname": "pay.acme.example", "originUrl": n.orig, "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	}); code != 200 {
		t.Fatal("create hostname")
	}
	eventually(t, "the edge serves pay.acme.example", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 200 })
	requests := func() {
		for _, c := range []*pkitest.Leaf{good, ops, foreign, nil} {
			for _, p := range []string{"/", "/admin/x"} {
				n.get("pay.acme.example", p, c)
			}
		}
	}
	requests()
	// (The TLS client sends the foreign certificate only if the edge named its issuer: it
	// does not, so that request has no certificate.)
	// Revoke one certificate, then add a policy, with requests under each configuration.
	n.rest("POST", "/v1/tenants/acme/certificateAuthorities/devices/revocations", n.token, map[string]any{"serialNumber": certid.SerialNumber(ops.Cert.SerialNumber)})
	eventually(t, "the revocation is enforced", func() bool { code, _ := n.get("pay.acme.example", "/", ops); return code == 403 })
	requests()
	n.rest("POST", "/v1/tenants/acme/policies?policyId=p", n.token, map[string]any{"rules": []map[string]any{
		{"name": "no-admin", "action": "ACTION_DENY", "expression": "request.path.startsWith('/admin')"},
		{"name": "devices", "action": "ACTION_ALLOW", "expression": "cert.verified"},
	}})
	n.rest("PATCH", "/v1/tenants/acme/hostnames/pay.acme.example?updateMask=policy_id,mtls", n.token, map[string]any{
		"hostname": "pay.acme.example", "originUrl": n.orig, "policyId": "p", "mtls": map[string]any{"mode": "MTLS_MODE_REPORT", "certificateAuthorityIds": []string{"devices"}},
	})
	eventually(t, "the policy is enforced", func() bool {
		_, body := n.get("pay.acme.example", "/admin/x", good)
		return strings.Contains(body, "report_deny")
	})
	requests()
	// Another tenant's changes move the global position on.
	n.rest("POST", "/v1/tenants/globex/tokens", n.token, map[string]any{"displayName": "x", "role": "ROLE_AUDITOR"})
	requests()

	logPath := filepath.Join(dir, "decisions.jsonl")
	var lines []loggedDecision
	eventually(t, "the decision log is written", func() bool { lines = readDecisions(t, logPath); return len(lines) >= 32 })
	reasons := map[string]bool{}
	for _, d := range lines {
		body := map[string]any{
			"hostname": d.Hostname, "method": d.Request.Method, "path": d.Request.Path,
			"atPosition": strconv.FormatUint(d.ConfigRevision, 10), "requestTime": d.Time,
		}
		if d.Cert.FingerprintSHA256 != "" {
			pemBytes, err := os.ReadFile(certFiles[d.Cert.FingerprintSHA256])
			if err != nil {
				t.Fatalf("unknown certificate in %s", d.raw)
			}
			body["clientCertificateChainPem"] = string(pemBytes)
		}
		code, got := n.rest("POST", "/v1/tenants/"+d.TenantID+":explain", auditor, body)
		rule, _ := got["rule"].(string)
		if code != 200 || got["verdict"] != d.Verdict || got["reason"] != d.Reason || rule != d.Rule {
			t.Errorf("logged %s\nexplained %d %v", d.raw, code, got)
		}
		reasons[d.Reason] = true
	}
	for _, r := range []string{"certificate_verified", "certificate_missing", "certificate_revoked", "rule_allow", "rule_deny"} {
		if !reasons[r] {
			t.Errorf("no decision with reason %s in the log", r)
		}
	}

	// The CLI re-derives logged decisions: exit 0 on a match, 1 on a line that was tampered with.
	env := map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": auditor}
	for i, d := range lines {
		if i%5 != 0 {
			continue
		}
		args := []string{"audit", "explain", "--decision", d.raw}
		if f := certFiles[d.Cert.FingerprintSHA256]; f != "" {
			args = append(args, "--cert", f)
		}
		if code, out, errOut := runCmd(t, env, args...); code != exitOK || !strings.Contains(out, "match") {
			t.Errorf("explain --decision %s: exit %d\n%s%s", d.raw, code, out, errOut)
		}
		tampered := strings.Replace(d.raw, `"reason":"`+d.Reason+`"`, `"reason":"mtls_off"`, 1)
		if code, out, _ := runCmd(t, env, append([]string{"audit", "explain", "--decision", tampered}, args[4:]...)...); code != exitError || !strings.Contains(out, "MISMATCH") {
			t.Errorf("explain --decision on a tampered line: exit %d\n%s", code, out)
		}
	}
	if code, _, _ := runCmd(t, env, "audit", "explain", "--decision", "not json"); code != exitUsage {
		t.Errorf("explain --decision garbage: exit %d", code)
	}

	// Verify online; export, and verify the export offline with the checkpoint key alone.
	if code, out, errOut := runCmd(t, env, "audit", "verify", "--tenant", "acme"); code != exitOK || !strings.Contains(out, "intact") {
		t.Errorf("verify: exit %d\n%s%s", code, out, errOut)
	}
	_, key := n.rest("GET", "/v1/checkpointKey", auditor, nil)
	keyFile := filepath.Join(dir, "checkpoint-key", "checkpoint.pub")
	if onDisk, _ := os.ReadFile(keyFile); key["publicKeyPem"] != string(onDisk) || len(onDisk) == 0 {
		t.Errorf("checkpoint key: API %v, file %q", key, onDisk)
	}
	// The export (the REST stream of ExportEvents, one bare ExportEventsResponse a line) carries
	// the tenant, the 7 events and the signed checkpoints; wait for the ledger's checkpoint of the
	// whole history (it signs one shortly after a burst of changes ends).
	exportFile := filepath.Join(t.TempDir(), "acme.ndjson")
	var exportLines []string
	var cpLines []int           // indexes of the checkpoint lines
	eventLines := map[int]int{} // revision -> index of its line
	eventually(t, "the export has a signed checkpoint of all 7 events", func() bool {
		if code, _, errOut := runCmd(t, env, "audit", "export", "--tenant", "acme", "--out", exportFile); code != exitOK {
			t.Fatalf("export: exit %d %s", code, errOut)
		}
		exported, _ := os.ReadFile(exportFile)
		exportLines = strings.Split(strings.TrimSuffix(string(exported), "\n"), "\n")
		cpLines, eventLines = nil, map[int]int{}
		lastSize := ""
		for i, l := range exportLines {
			var x struct {
				TenantID   *string `json:"tenantId"`
				Checkpoint *string `json:"checkpoint"`
				Event      *struct {
					Revision string `json:"revision"`
				} `json:"event"`
			}
			if err := json.Unmarshal([]byte(l), &x); err != nil {
				t.Fatalf("export line %d: %v\n%s", i+1, err, l)
			}
			switch r := x; {
			case i == 0:
				if r.TenantID == nil || *r.TenantID != "acme" {
					t.Fatalf("export line 1 is not the tenant: %s", l)
				}
			case r.Checkpoint != nil:
				cpLines = append(cpLines, i)
				lastSize = strings.Split(*r.Checkpoint, "\n")[1]
			case r.Event != nil:
				rev, _ := strconv.Atoi(r.Event.Revision) // (revision 0 is omitted: "")
				eventLines[rev] = i
			default:
				t.Fatalf("export line %d: %s", i+1, l)
			}
		}
		return len(eventLines) == 7 && lastSize == "7" && len(cpLines) > 0
	})
	offline := map[string]string{} // no API, no token
	if code, out, errOut := runCmd(t, offline, "audit", "verify", "--file", exportFile, "--public-key", keyFile); code != exitOK || !strings.Contains(out, "intact: 7 events") {
		t.Errorf("verify --file: exit %d\n%s%s", code, out, errOut)
	}
	// Tampering with the export is detected offline, the checkpoints' signatures included.
	editCheckpoint := func(i int, edit func(lines []string)) string {
		var x struct {
			Checkpoint string `json:"checkpoint"`
		}
		_ = json.Unmarshal([]byte(exportLines[i]), &x)
		lines := strings.Split(x.Checkpoint, "\n")
		edit(lines)
		x.Checkpoint = strings.Join(lines, "\n")
		b, _ := json.Marshal(x)
		return string(b)
	}
	nextDigit := func(s string) string { // changes the first decimal digit of s (or its first letter)
		i := strings.IndexAny(s, "0123456789")
		if i < 0 {
			return map[bool]string{true: "B", false: "A"}[s[0] == 'A'] + s[1:]
		}
		return s[:i] + string('0'+(s[i]-'0'+1)%10) + s[i+1:]
	}
	last := cpLines[len(cpLines)-1]
	tampers := map[string]func(lines []string) []string{
		"the actor of an event": func(lines []string) []string {
			i := eventLines[3]
			lines[i] = strings.Replace(lines[i], `"actor":"admin"`, `"actor":"mallory"`, 1)
			return lines
		},
		"a digit of a checkpoint's root": func(lines []string) []string {
			lines[last] = editCheckpoint(last, func(cp []string) { cp[2] = nextDigit(cp[2]) })
			return lines
		},
		"a checkpoint's size": func(lines []string) []string {
			lines[last] = editCheckpoint(last, func(cp []string) { cp[1] = nextDigit(cp[1]) })
			return lines
		},
		"a dropped event line": func(lines []string) []string {
			i := eventLines[3]
			return append(lines[:i:i], lines[i+1:]...)
		},
		"the last event line dropped": func(lines []string) []string {
			i := eventLines[6]
			return append(lines[:i:i], lines[i+1:]...)
		},
	}
	for name, tamper := range tampers {
		lines := tamper(append([]string(nil), exportLines...))
		if strings.Join(lines, "\n") == strings.Join(exportLines, "\n") {
			t.Fatalf("tampering with %s changed nothing", name)
		}
		tamperedFile := filepath.Join(t.TempDir(), "tampered.ndjson")
		if err := os.WriteFile(tamperedFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, out, _ := runCmd(t, offline, "audit", "verify", "--file", tamperedFile, "--public-key", keyFile); code != exitError || !strings.Contains(out, "NOT intact") {
			t.Errorf("verify --file of an export with %s tampered with: exit %d\n%s", name, code, out)
		} else {
			t.Logf("%s tampered with: %s", name, strings.TrimSpace(out))
		}
	}

	// The auditor reads acme, writes nothing, and reads no other tenant.
	if code, _ := n.rest("GET", "/v1/tenants/acme/events", auditor, nil); code != 200 {
		t.Errorf("auditor history: %d", code)
	}
	if code, _ := n.rest("POST", "/v1/tenants/acme/policies?policyId=q", auditor, map[string]any{"rules": []map[string]any{{"name": "a", "action": "ACTION_ALLOW", "expression": "true"}}}); code != 403 {
		t.Errorf("auditor write: %d, want 403", code)
	}
	for _, path := range []string{"/v1/tenants/globex/events", "/v1/tenants/globex/snapshot", "/v1/tenants/nobody/events"} {
		if code, _ := n.rest("GET", path, auditor, nil); code != 403 {
			t.Errorf("auditor GET %s: %d, want 403", path, code)
		}
	}
	if code, _ := n.rest("POST", "/v1/tenants/globex:explain", auditor, map[string]any{"hostname": "pay.acme.example"}); code != 403 {
		t.Errorf("auditor explain on globex: %d, want 403", code)
	}
	if code, _ := n.rest("GET", "/v1/tenants/acme/events", "gla_unknown", nil); code != 401 {
		t.Errorf("unknown token: %d, want 401", code)
	}

	// History in pages equals history at once.
	_, all := n.rest("GET", "/v1/tenants/acme/events?pageSize=1000", auditor, nil)
	allEvents, _ := all["events"].([]any)
	var paged []any
	for tokq := ""; ; {
		_, page := n.rest("GET", "/v1/tenants/acme/events?pageSize=2"+tokq, auditor, nil)
		evs, _ := page["events"].([]any)
		paged = append(paged, evs...)
		next, _ := page["nextPageToken"].(string)
		if next == "" || len(paged) > 100 {
			break
		}
		tokq = "&pageToken=" + url.QueryEscape(next)
	}
	if len(allEvents) != 7 || len(paged) != len(allEvents) {
		t.Fatalf("history: %d events at once, %d paged; want 7", len(allEvents), len(paged))
	}
	eventually(t, "the ledger hashes every event", func() bool {
		_, all = n.rest("GET", "/v1/tenants/acme/events?pageSize=1000", auditor, nil)
		allEvents, _ = all["events"].([]any)
		for _, ev := range allEvents {
			if h, _ := ev.(map[string]any)["hash"].(string); len(h) != 64 {
				return false
			}
		}
		return len(allEvents) == 7
	})
	hostnameEvent := allEvents[3].(map[string]any)
	if hostnameEvent["type"] != "guestlist.events.v1.HostnameCreated" || hostnameEvent["actor"] != "admin" || !strings.Contains(jsonString(hostnameEvent["data"]), "pay.acme.example") {
		t.Errorf("history event: %v", hostnameEvent)
	}

	// Snapshots at the hostname's creation, by position and by time, agree.
	pos := hostnameEvent["position"].(string)
	_, byPos := n.rest("GET", "/v1/tenants/acme/snapshot?atPosition="+pos, auditor, nil)
	_, byTime := n.rest("GET", "/v1/tenants/acme/snapshot?atTime="+url.QueryEscape(hostnameEvent["time"].(string)), auditor, nil)
	if jsonString(byPos) != jsonString(byTime) || len(byPos["hostnames"].([]any)) != 1 || byPos["policies"] != nil {
		t.Errorf("snapshot at %s:\nby position %v\nby time %v", pos, byPos, byTime)
	}

	// The CLI: history, snapshot, diff.
	code, out, errOut := runCmd(t, env, "audit", "history", "--tenant", "acme")
	if code != exitOK || strings.Count(out, "\n") != 7 {
		t.Errorf("audit history: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, env, "audit", "snapshot", "--tenant", "acme", "--at-position", pos)
	if code != exitOK || !strings.Contains(out, "pay.acme.example") || strings.Contains(out, `"policies"`) {
		t.Errorf("audit snapshot: exit %d\n%s%s", code, out, errOut)
	}
	// A position and a time is a usage error (2), for snapshot and diff alike; a point before the
	// tenant existed says so.
	for _, args := range [][]string{{"snapshot", "--at-position", pos}, {"diff", "--from-position", pos, "--from-time", "2020-01-01T00:00:00Z"}, {"diff", "--from-position", "1", "--to-position", pos}} {
		args = append(args, "--tenant", "acme")
		if args[0] == "snapshot" {
			args = append(args, "--at-time", "2020-01-01T00:00:00Z")
		} else if args[3] == "--to-position" {
			args = append(args, "--to-time", "2020-01-01T00:00:00Z")
		}
		if code, _, errOut := runCmd(t, env, append([]string{"audit"}, args...)...); code != exitUsage || !strings.Contains(errOut, "not both") {
			t.Errorf("audit %v: exit %d, want 2 saying not both:\n%s", args, code, errOut)
		}
	}
	if code, out, errOut := runCmd(t, env, "audit", "snapshot", "--tenant", "acme", "--at-time", "2020-01-01T00:00:00Z"); code != exitOK || !strings.Contains(errOut, `tenant "acme" did not exist yet`) {
		t.Errorf("audit snapshot before the tenant: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, env, "audit", "diff", "--tenant", "acme", "--from-position", pos)
	for _, want := range []string{"policy p added", "hostname pay.acme.example: mtls.mode ENFORCE -> REPORT", "hostname pay.acme.example: policy_id \"\" -> p"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("audit diff lacks %q: exit %d\n%s%s", want, code, out, errOut)
		}
	}
	if code, _, _ := runCmd(t, map[string]string{"GUESTLIST_API": n.api}, "audit", "history", "--tenant", "acme"); code != exitUsage {
		t.Errorf("history without a token: exit %d", code)
	}
	if code, _, _ := runCmd(t, map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": auditor}, "audit", "history", "--tenant", "globex"); code != exitError {
		t.Errorf("history of another tenant: exit %d", code)
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestAuditProofsEndToEnd: an auditor keeps a signed checkpoint, the tenant changes, and
// "guestlist audit verify --checkpoint" proves (RFC 6962 consistency) that the newer history
// extends the kept one, refusing forged checkpoints; "verify --revision" proves one event is in it
// (inclusion), and the verification refuses an altered event or proof.
func TestAuditProofsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	n := startDev(t, dir)
	if code, _ := n.rest("POST", "/v1/tenants?tenantId=acme", n.token, map[string]any{"displayName": "acme"}); code != 200 {
		t.Fatal("create tenant")
	}
	_, tok := n.rest("POST", "/v1/tenants/acme/tokens", n.token, map[string]any{"displayName": "auditor", "role": "ROLE_AUDITOR"})
	auditor, _ := tok["secret"].(string)
	if auditor == "" {
		t.Fatalf("no auditor token: %v", tok)
	}
	env := map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": auditor}
	keyFile := filepath.Join(dir, "checkpoint-key", "checkpoint.pub")
	pub, err := readPublicKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// checkpointAt waits for the latest signed checkpoint to cover size events and keeps it in a file.
	checkpointAt := func(size uint64) (string, ledger.SignedCheckpoint) {
		t.Helper()
		file := filepath.Join(t.TempDir(), "checkpoint.txt")
		eventually(t, fmt.Sprintf("a signed checkpoint of %d events", size), func() bool {
			if code, _, _ := runCmd(t, env, "audit", "checkpoint", "--tenant", "acme", "--out", file); code != exitOK {
				return false
			}
			raw, _ := os.ReadFile(file)
			cp, err := ledger.VerifyCheckpoint(pub, ledger.SignedCheckpoint(raw))
			return err == nil && cp.Size == size
		})
		raw, _ := os.ReadFile(file)
		return file, ledger.SignedCheckpoint(raw)
	}
	oldFile, old := checkpointAt(2)
	code, out, _ := runCmd(t, env, "audit", "checkpoint", "--tenant", "acme")
	if code != exitOK || out != string(old) {
		t.Errorf("audit checkpoint to stdout: exit %d\n%s", code, out)
	}

	// More changes, and a newer checkpoint; the kept one is extended by it.
	for _, name := range []string{"ci", "ops"} {
		if code, _ := n.rest("POST", "/v1/tenants/acme/tokens", n.token, map[string]any{"displayName": name, "role": "ROLE_AUDITOR"}); code != 200 {
			t.Fatal("create token")
		}
	}
	latestFile, _ := checkpointAt(4)
	for _, f := range []string{oldFile, latestFile} {
		if code, out, errOut := runCmd(t, env, "audit", "verify", "--tenant", "acme", "--checkpoint", f, "--public-key", keyFile); code != exitOK || !strings.Contains(out, "consistent: the history of acme at size 4") {
			t.Errorf("verify --checkpoint %s: exit %d\n%s%s", f, code, out, errOut)
		}
	}

	// Forged old checkpoints: an altered root, not re-signed or re-signed with another key.
	other, err := ledger.LoadOrCreateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	oldCP, _ := ledger.ParseCheckpoint(old)
	oldCP.Root = append([]byte(nil), oldCP.Root...)
	oldCP.Root[0] ^= 1
	_, sig, _ := strings.Cut(string(old), "\n\n")
	for name, forged := range map[string]string{
		"not re-signed":            string(oldCP.Body()) + "\n" + sig,
		"re-signed by another key": string(other.Sign(oldCP)),
	} {
		f := filepath.Join(t.TempDir(), "forged.txt")
		if err := os.WriteFile(f, []byte(forged), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, out, errOut := runCmd(t, env, "audit", "verify", "--tenant", "acme", "--checkpoint", f, "--public-key", keyFile); code != exitError || !strings.Contains(out, "NOT") {
			t.Errorf("verify --checkpoint of a forged checkpoint (%s): exit %d\n%s%s", name, code, out, errOut)
		}
	}
	// The genuine one, checked with another key, does not verify either.
	otherKey := filepath.Join(t.TempDir(), "other.pub")
	if err := os.WriteFile(otherKey, []byte(other.PublicKeyPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := runCmd(t, env, "audit", "verify", "--tenant", "acme", "--checkpoint", oldFile, "--public-key", otherKey); code != exitError {
		t.Errorf("verify --checkpoint with another key: exit %d\n%s", code, out)
	}

	// Inclusion of every event in the latest checkpoint; none beyond it.
	for rev := range 4 {
		if code, out, errOut := runCmd(t, env, "audit", "verify", "--tenant", "acme", "--revision", strconv.Itoa(rev), "--public-key", keyFile); code != exitOK || !strings.Contains(out, "included: revision "+strconv.Itoa(rev)) {
			t.Errorf("verify --revision %d: exit %d\n%s%s", rev, code, out, errOut)
		}
	}
	if code, _, errOut := runCmd(t, env, "audit", "verify", "--tenant", "acme", "--revision", "9", "--public-key", keyFile); code != exitError || !strings.Contains(errOut, "412") && !strings.Contains(errOut, "400") {
		t.Errorf("verify --revision 9: exit %d %s", code, errOut)
	}
	// The proof as REST returns it verifies; with the event altered (the server is honest, so
	// altered here) it does not.
	code, body := n.rest("GET", "/v1/tenants/acme/proofs/inclusion?revision=1", auditor, nil)
	if code != 200 {
		t.Fatalf("GET inclusion proof: %d %v", code, body)
	}
	ip := &guestlistv1.InclusionProof{}
	if err := protojson.Unmarshal([]byte(jsonString(body)), ip); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifyInclusionProof(pub, "acme", ip); err != nil {
		t.Fatalf("the REST inclusion proof: %v", err)
	}
	ip.Event.Actor = "mallory"
	if _, err := audit.VerifyInclusionProof(pub, "acme", ip); err == nil {
		t.Error("an inclusion proof of an altered event verifies")
	}
	code, body = n.rest("GET", "/v1/tenants/acme/proofs/consistency?fromSize=2&toSize=3", auditor, nil)
	if code != 400 || !strings.Contains(jsonString(body), "sizes signed") {
		t.Errorf("consistency to a size without a checkpoint: %d %v", code, body)
	}

	// Usage errors, and another tenant's auditor.
	if code, _, _ := runCmd(t, env, "audit", "verify", "--tenant", "acme", "--checkpoint", oldFile); code != exitUsage {
		t.Errorf("verify --checkpoint without --public-key: exit %d", code)
	}
	if code, _, _ := runCmd(t, env, "audit", "verify", "--tenant", "acme", "--checkpoint", oldFile, "--revision", "1", "--public-key", keyFile); code != exitUsage {
		t.Errorf("verify --checkpoint --revision: exit %d", code)
	}
	if code, _, _ := runCmd(t, env, "audit", "verify", "--tenant", "globex", "--revision", "0", "--public-key", keyFile); code != exitError {
		t.Errorf("verify --revision of another tenant: exit %d", code)
	}
}
