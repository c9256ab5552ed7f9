package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"guestlist.dev/edge/pkitest"
)

// replayFixture is what the replay tests share: a dev node with tenant acme, an auditor token of
// acme, a CA "devices" of acme, and a client certificate of it written to certFile.
type replayFixture struct {
	dir, auditor, certFile string
	n                      *devNode
	ca                     *pkitest.CA
	good                   *pkitest.Leaf
}

func newReplayFixture(t *testing.T) *replayFixture {
	t.Helper()
	f := &replayFixture{dir: t.TempDir()}
	f.n = startDev(t, f.dir)
	f.ca = pkitest.NewCA(t, "acme devices")
	f.good = f.ca.Client(t, "terminal-1")
	f.certFile = filepath.Join(f.dir, "good.pem")
	if err := os.WriteFile(f.certFile, []byte(pkitest.PEM(f.good.Cert)), 0o600); err != nil {
		t.Fatal(err)
	}
	f.n.rest("POST", "/v1/tenants?tenantId=acme", f.n.token, map[string]any{"displayName": "acme"})
	_, tok := f.n.rest("POST", "/v1/tenants/acme/tokens", f.n.token, map[string]any{"displayName": "auditor", "role": "ROLE_AUDITOR"})
	f.auditor, _ = tok["secret"].(string)
	f.n.rest("POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", f.n.token, map[string]any{"certificatePem": pkitest.PEM(f.ca.Cert)})
	return f
}

// explainLine re-derives one decision log line over REST, as TestAuditEndToEnd does, and with
// "guestlist audit explain --decision" (and extra, e.g. --header flags; headers, when not nil,
// go to REST as the headers field).
func explainLine(t *testing.T, n *devNode, auditor string, d loggedDecision, certFile string, headers map[string]string, extra ...string) (restCode int, rest map[string]any, cliCode int, cliOut string) {
	t.Helper()
	body := map[string]any{
		"hostname": d.Hostname, "method": d.Request.Method, "path": d.Request.Path,
		"atPosition": strconv.FormatUint(d.ConfigRevision, 10), "requestTime": d.Time,
	}
	args := append([]string{"audit", "explain", "--decision", d.raw}, extra...)
	if headers != nil {
		body["headers"] = map[string]any{"values": headers}
	}
	if certFile != "" {
		b, err := os.ReadFile(certFile)
		if err != nil {
			t.Fatal(err)
		}
		body["clientCertificateChainPem"] = string(b)
		args = append(args, "--cert", certFile)
	}
	restCode, rest = n.rest("POST", "/v1/tenants/"+d.TenantID+":explain", auditor, body)
	code, out, errOut := runCmd(t, map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": auditor}, args...)
	return restCode, rest, code, out + errOut
}

// TestAuditExplainsAHandshakeRefusal: a reject_in_handshake hostname with a policy that lets anyone
// see "/". The edge refuses the handshake of a client without a certificate and logs deny /
// certificate_missing / no rule (empty method and path), without evaluating the policy. The audit
// re-derives that line with the handshake's decision: the same verdict, reason and rule. It ran
// decision.Decide, which evaluated the policy on an empty request, and answered allow / rule_allow
// / landing-page (independent review).
func TestAuditExplainsAHandshakeRefusal(t *testing.T) {
	f := newReplayFixture(t)
	dir, n, good, auditor, certFile := f.dir, f.n, f.good, f.auditor, f.certFile
	// A public landing page, devices everywhere else.
	if code, _ := n.rest("POST", "/v1/tenants/acme/policies?policyId=p", n.token, map[string]any{"rules": []map[string]any{
		{"name": "landing-page", "action": "ACTION_ALLOW", "expression": "request.path == '/'"},
		{"name": "devices", "action": "ACTION_ALLOW", "expression": "cert.verified"},
	}}); code != 200 {
		t.Fatal("create policy")
	}
	if code, _ := n.rest("POST", "/v1/tenants/acme/hostnames", n.token, map[string]any{
		"hostname": "pay.acme.example", "originUrl": n.orig, "policyId": "p",
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}, "rejectInHandshake": true},
	}); code != 200 {
		t.Fatal("create hostname")
	}
	eventually(t, "the edge serves pay.acme.example", func() bool { code, _ := n.get("pay.acme.example", "/x", good); return code == 200 })

	if code, msg := n.get("pay.acme.example", "/", nil); code != -1 {
		t.Fatalf("no certificate on a reject_in_handshake hostname: %d %s, want a failed handshake", code, msg)
	}

	var line *loggedDecision
	eventually(t, "the handshake refusal is logged", func() bool {
		for _, d := range readDecisions(t, filepath.Join(dir, "decisions.jsonl")) {
			if d.Request.Method == "" {
				line = &d
				return true
			}
		}
		return false
	})
	_, rest, cliCode, cliOut := explainLine(t, n, auditor, *line, "", nil)
	rule, _ := rest["rule"].(string)
	if rest["verdict"] != line.Verdict || rest["reason"] != line.Reason || rule != line.Rule {
		t.Errorf("the edge logged %s/%s/%q, the audit re-derives %v/%v/%q", line.Verdict, line.Reason, line.Rule, rest["verdict"], rest["reason"], rule)
	}
	if cliCode != 0 || !strings.Contains(cliOut, "match") {
		t.Errorf("explain --decision: exit %d\n%s", cliCode, cliOut)
	}
	// With the device's certificate, the handshake completes (and the requests are decided).
	code, out, errOut := runCmd(t, map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": auditor},
		"audit", "explain", "--tenant", "acme", "--hostname", "pay.acme.example", "--handshake", "--cert", certFile)
	if code != 0 || !strings.Contains(out, "verdict=allow reason=handshake_completed") {
		t.Errorf("explain --handshake with the device's certificate: exit %d\n%s%s", code, out, errOut)
	}
}

// TestAuditExplainHeaderRule: a policy rule on request.headers. The edge allows with the rule; the
// log has no headers. Without them, the audit says it cannot re-derive the decision and names the
// rule, over REST (FAILED_PRECONDITION) and in the CLI, which no longer blames the configuration;
// it had replayed the request without headers and answered deny / no_rule_matched (independent
// review). Given the headers (REST headers, CLI --header), it matches.
func TestAuditExplainHeaderRule(t *testing.T) {
	f := newReplayFixture(t)
	dir, n, ca, good, auditor, certFile := f.dir, f.n, f.ca, f.good, f.auditor, f.certFile

	if code, _ := n.rest("POST", "/v1/tenants/acme/policies?policyId=p", n.token, map[string]any{"rules": []map[string]any{
		{"name": "prod-only", "action": "ACTION_ALLOW", "expression": "cert.verified && request.headers[?'x-env'].orValue('') == 'prod'"},
	}}); code != 200 {
		t.Fatal("create policy")
	}
	if code, _ := n.rest("POST", "/v1/tenants/acme/hostnames", n.token, map[string]any{
		"hostname": "pay.acme.example", "originUrl": n.orig, "policyId": "p",
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	}); code != 200 {
		t.Fatal("create hostname")
	}
	eventually(t, "the edge serves pay.acme.example", func() bool {
		code, _ := n.getWithHeader("pay.acme.example", "/pay", good, map[string]string{"X-Env": "prod"})
		return code == 200
	})
	var line *loggedDecision
	eventually(t, "the allowed request is logged", func() bool {
		for _, d := range readDecisions(t, filepath.Join(dir, "decisions.jsonl")) {
			if d.Verdict == "allow" {
				line = &d
				return true
			}
		}
		return false
	})
	restCode, rest, cliCode, cliOut := explainLine(t, n, auditor, *line, certFile, nil)
	if restCode != http.StatusBadRequest || !strings.Contains(fmt.Sprint(rest["message"]), `rule "prod-only"`) {
		t.Errorf("REST explain without the headers: %d %v; want 400 (FAILED_PRECONDITION) naming the rule", restCode, rest)
	}
	if cliCode != 1 || !strings.Contains(cliOut, "CANNOT RE-DERIVE") || strings.Contains(cliOut, "MISMATCH") {
		t.Errorf("explain --decision without the headers: exit %d\n%s", cliCode, cliOut)
	}
	_, rest, cliCode, cliOut = explainLine(t, n, auditor, *line, certFile, map[string]string{"x-env": "prod"}, "--header", "X-Env: prod")
	rule, _ := rest["rule"].(string)
	if rest["verdict"] != line.Verdict || rest["reason"] != line.Reason || rule != line.Rule {
		t.Errorf("with the headers: the edge logged %s/%s/%q, the audit re-derives %v/%v/%q", line.Verdict, line.Reason, line.Rule, rest["verdict"], rest["reason"], rule)
	}
	if cliCode != 0 || !strings.Contains(cliOut, "match") {
		t.Errorf("explain --decision --header: exit %d\n%s", cliCode, cliOut)
	}
	// Another certificate, or none, is a usage error naming the logged fingerprint, not a
	// MISMATCH that would blame the history (a new user's review).
	other := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(other, []byte(pkitest.PEM(ca.Client(t, "terminal-2").Cert)), 0o600); err != nil {
		t.Fatal(err)
	}
	auditEnv := map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": auditor}
	for _, args := range [][]string{
		{"audit", "explain", "--decision", line.raw, "--header", "X-Env: prod", "--cert", other},
		{"audit", "explain", "--decision", line.raw, "--header", "X-Env: prod"},
	} {
		code, out, errOut := runCmd(t, auditEnv, args...)
		if code != 2 || !strings.Contains(errOut, line.Cert.FingerprintSHA256) || strings.Contains(out, "MISMATCH") {
			t.Errorf("%v: exit %d\n%s%s", args[len(args)-2:], code, out, errOut)
		}
	}
}

// TestAuditExplainsALongPath: the edge decides (and logs) requests with paths up to its 64 KiB of
// request head; Explain takes them too. It refused paths over 8,192 bytes (independent review).
func TestAuditExplainsALongPath(t *testing.T) {
	f := newReplayFixture(t)
	dir, n, good, auditor, certFile := f.dir, f.n, f.good, f.auditor, f.certFile
	n.rest("POST", "/v1/tenants/acme/hostnames", n.token, map[string]any{
		"hostname": "pay.acme.example", "originUrl": n.orig,
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	})
	eventually(t, "the edge serves pay.acme.example", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 200 })
	long := "/" + strings.Repeat("a", 9000)
	if code, _ := n.get("pay.acme.example", long, good); code != 200 {
		t.Fatalf("long path: %d", code)
	}
	var line *loggedDecision
	eventually(t, "the long request is logged", func() bool {
		for _, d := range readDecisions(t, filepath.Join(dir, "decisions.jsonl")) {
			if len(d.Request.Path) > 8192 {
				line = &d
				return true
			}
		}
		return false
	})
	_, rest, cliCode, cliOut := explainLine(t, n, auditor, *line, certFile, nil)
	if rest["verdict"] != line.Verdict || rest["reason"] != line.Reason {
		t.Errorf("a logged decision Explain does not re-derive: %v", rest)
	}
	if cliCode != 0 {
		t.Errorf("explain --decision: exit %d\n%.400s", cliCode, cliOut)
	}
}
