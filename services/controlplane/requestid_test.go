package controlplane_test

import (
	"strings"
	"testing"

	"guestlist.dev/edge/pkitest"
)

// TestRequestIDNamesOneRequest: repeating a create with its requestId returns the first result;
// the same requestId on a create of another resource (another client-chosen id) is a 400 naming
// request_id, and writes nothing. Before, it answered 200 with the first resource and the second
// was never created (a new user's review).
func TestRequestIDNamesOneRequest(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	policy := map[string]any{"rules": []any{map[string]any{"name": "r", "action": "ACTION_ALLOW", "expression": "cert.verified"}}}
	first := n.must(200, "POST", "/v1/tenants/acme/policies?policyId=rq&requestId=abc-1", tok, policy)
	again := n.must(200, "POST", "/v1/tenants/acme/policies?policyId=rq&requestId=abc-1", tok, policy)
	if again.body["etag"] != first.body["etag"] {
		t.Fatalf("the repeat answered %s, want the first result %s", again.raw, first.raw)
	}
	other := n.must(400, "POST", "/v1/tenants/acme/policies?policyId=rq2&requestId=abc-1", tok, policy)
	if !strings.Contains(other.raw, "request_id") || !strings.Contains(other.raw, `policy \"rq\"`) {
		t.Fatalf("another policy with the same requestId: %s", other.raw)
	}
	ca := pkitest.NewCA(t, "Acme Devices")
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices&requestId=ca-1", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	before := n.streamRevision("acme")
	n.must(400, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices2&requestId=ca-1", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	if after := n.streamRevision("acme"); after != before {
		t.Errorf("a refused create wrote: revision %d -> %d", before, after)
	}
}
