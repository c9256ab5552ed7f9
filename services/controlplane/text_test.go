package controlplane_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"guestlist.dev/edge/pkitest"
	"guestlist.dev/services/api/server"
)

// TestInvalidUTF8NamesTheField: a REST request whose path, query or body holds bytes that are not
// UTF-8 is a 400 with a BadRequest naming the field, and writes nothing. Before, a path or query
// parameter of that kind got 500 INTERNAL "grpc: error while marshaling: string field contains
// invalid UTF-8" (the gateway could not encode the request it passes on over gRPC), and a body
// got a 400 without details.
func TestInvalidUTF8NamesTheField(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	policy := map[string]any{"displayName": "p", "rules": rulesBody("true")}
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=p1", tok, policy)
	n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, hostnameBody("h.acme.example", "http://o.example"))
	tests := []struct {
		name, method, path string
		body               any
		field              string
	}{
		{"fail/path hostname", "GET", "/v1/tenants/acme/hostnames/%ff.example", nil, "hostname"},
		{"fail/path policy id", "GET", "/v1/tenants/acme/policies/p%ff", nil, "policy_id"},
		{"fail/path token id", "DELETE", "/v1/tenants/acme/tokens/%fe%ff", nil, "token_id"},
		{"fail/path hostname of a PATCH", "PATCH", "/v1/tenants/acme/hostnames/h%ff.acme.example", map[string]any{"originUrl": "http://p.example"}, "hostname.hostname"},
		{"fail/query page token", "GET", "/v1/tenants/acme/hostnames?pageToken=%ff", nil, "page_token"},
		{"fail/query request id", "POST", "/v1/tenants/acme/policies?policyId=p2&requestId=%ff%fe", policy, "request_id"},
		{"fail/query update mask", "PATCH", "/v1/tenants/acme/hostnames/h.acme.example?updateMask=%ff", map[string]any{"originUrl": "http://p.example"}, "update_mask.paths[0]"},
		{"fail/path tenant of the export", "GET", "/v1/tenants/acme%ff/events:export", nil, "tenant_id"},
		{"fail/body display name", "POST", "/v1/tenants/acme/policies?policyId=p3", "{\"displayName\":\"\xff\xfe\",\"rules\":[{\"name\":\"a\",\"action\":\"ACTION_ALLOW\",\"expression\":\"true\"}]}", "body"},
		{"fail/body hostname", "POST", "/v1/tenants/acme/hostnames", "{\"hostname\":\"x\xc0.acme.example\",\"originUrl\":\"http://o.example\",\"mtls\":{\"mode\":\"MTLS_MODE_OFF\"}}", "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := n.position()
			r := n.do(tt.method, tt.path, tok, tt.body)
			if r.status != 400 {
				t.Fatalf("status %d, want 400: %s", r.status, r.raw)
			}
			reasons := violationReasons(r)
			reason, ok := reasons[tt.field]
			if !ok {
				t.Fatalf("field violations %v do not name %q: %s", reasons, tt.field, r.raw)
			}
			if !strings.Contains(reason, "UTF-8") {
				t.Errorf("reason %q does not say what is wrong", reason)
			}
			if after := n.position(); after != before {
				t.Errorf("bad input wrote events: position %d -> %d", before, after)
			}
		})
	}
}

// TestControlCharactersRefused: display names and revocation reasons are text for people to read,
// and auditors read them in `guestlist audit diff`, one change a line: a control character
// (newline, escape, NUL) or a bidirectional override in one is a 400 naming the field, and
// writes nothing. Before, they were stored, and a tenant admin could forge the diff an auditor
// reads: a policy's display name "x\nhostname pay.acme.example: mtls.mode OFF -> ENFORCE\x1b[8m"
// showed mTLS switched on, and hid the next line (switched off).
func TestControlCharactersRefused(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	ca := pkitest.NewCA(t, "acme root")
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=pol", tok, map[string]any{"displayName": "p", "rules": rulesBody("true")})
	forged := "x\nhostname pay.acme.example: mtls.mode OFF -> ENFORCE\x1b[8m"
	type call struct {
		method, path string
		admin        bool
		body         func(text string) map[string]any
		field        string
	}
	calls := []call{
		{"POST", "/v1/tenants?tenantId=other", true, func(s string) map[string]any { return map[string]any{"displayName": s} }, "tenant.display_name"},
		{"POST", "/v1/tenants/acme/tokens", false, func(s string) map[string]any { return map[string]any{"displayName": s, "role": "ROLE_AUDITOR"} }, "token.display_name"},
		{"POST", "/v1/tenants/-/tokens", true, func(s string) map[string]any { return map[string]any{"displayName": s, "role": "ROLE_AUDITOR"} }, "token.display_name"},
		{"POST", "/v1/tenants/acme/certificateAuthorities", false, func(s string) map[string]any {
			return map[string]any{"displayName": s, "certificatePem": pkitest.PEM(ca.Cert)}
		}, "certificate_authority.display_name"},
		{"POST", "/v1/tenants/acme/policies", false, func(s string) map[string]any { return map[string]any{"displayName": s, "rules": rulesBody("true")} }, "policy.display_name"},
		{"PATCH", "/v1/tenants/acme/policies/pol?updateMask=displayName", false, func(s string) map[string]any { return map[string]any{"displayName": s} }, "policy.display_name"},
		{"PATCH", "/v1/tenants/acme/policies/pol", false, func(s string) map[string]any { return map[string]any{"displayName": s, "rules": rulesBody("true")} }, "policy.display_name"},
		{"POST", "/v1/tenants/acme/certificateAuthorities/devices/revocations", false, func(s string) map[string]any { return map[string]any{"serialNumber": "1f", "reason": s} }, "revocation.reason"},
	}
	texts := map[string]string{
		"forged diff lines": forged,
		"NUL":               "a\x00b",
		"tab":               "a\tb",
		"carriage return":   "ok\rforged",
		"DEL":               "a\x7f",
		"C1 control":        "a\u0085b",
		"bidi override":     "devices \u202eved",
		"bidi isolate":      "a\u2066b\u2069",
	}
	for _, c := range calls {
		for name, text := range texts {
			t.Run("fail/"+c.field+"/"+name+"/"+c.method, func(t *testing.T) {
				tk := tok
				if c.admin {
					tk = adminToken
				}
				before := n.position()
				r := n.do(c.method, c.path, tk, c.body(text))
				if r.status != 400 {
					t.Fatalf("status %d, want 400: %s", r.status, r.raw)
				}
				if reason, ok := violationReasons(r)[c.field]; !ok || !strings.Contains(reason, "character") {
					t.Errorf("field violations %v do not name %q with the character: %s", violationReasons(r), c.field, r.raw)
				}
				if after := n.position(); after != before {
					t.Errorf("bad input wrote events: position %d -> %d", before, after)
				}
			})
		}
	}
	// Text of any script, with spaces, joiners and emoji, is fine.
	for i, c := range calls {
		t.Run("ok/"+c.field+"/"+c.method, func(t *testing.T) {
			tk := tok
			if c.admin {
				tk = adminToken
			}
			path := c.path
			if c.method == "POST" && c.path == "/v1/tenants?tenantId=other" {
				path = "/v1/tenants?tenantId=other" + string(rune('a'+i))
			}
			n.must(200, c.method, path, tk, c.body("Acme Zahlungsgeräte — 決済 👩‍💻 (شركة)"))
		})
	}
}

// TestOversizeBodyNamesTheBody: a REST body over server.MaxHTTPBodySize is a 413 whose
// google.rpc.Status names the body in a BadRequest, whether its length was declared (refused
// before it is read) or not (chunked: refused once the limit is passed), and writes nothing.
// Before, the first had no details and the second was a 400 "http: request body too large"
// without details.
func TestOversizeBodyNamesTheBody(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	body := `{"displayName":"` + strings.Repeat("a", server.MaxHTTPBodySize) + `","rules":[]}`
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail/chunked=%v", chunked), func(t *testing.T) {
			before := n.position()
			var r io.Reader = strings.NewReader(body)
			if chunked {
				r = io.MultiReader(r) // no length known: sent chunked
			}
			out := n.do("POST", "/v1/tenants/acme/policies", tok, r)
			if out.status != http.StatusRequestEntityTooLarge {
				t.Errorf("status %d, want 413: %.300s", out.status, out.raw)
			}
			if reason := violationReasons(out)["body"]; !strings.Contains(reason, strconv.Itoa(server.MaxHTTPBodySize)) {
				t.Errorf("field violations %v do not name the body and the limit: %.300s", violationReasons(out), out.raw)
			}
			if after := n.position(); after != before {
				t.Errorf("wrote events: position %d -> %d", before, after)
			}
		})
	}
}
