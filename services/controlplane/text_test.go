package controlplane_test

import (
	"strings"
	"testing"
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
