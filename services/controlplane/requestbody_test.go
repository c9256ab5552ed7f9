package controlplane_test

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/pkitest"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/eventstore"
)

// create is a REST create call: POST path (its query has the requestId) with body, as the admin
// or as tenant acme's token.
type create struct {
	path  string
	admin bool
	body  any
}

// position returns the store's last global position: what "nothing written" is checked against
// (hostname reservations are in streams of their own, so a tenant stream's revision would miss
// them).
func (n *node) position() eventstore.Position {
	n.t.Helper()
	p, err := n.store.LastPosition(context.Background())
	if err != nil {
		n.t.Fatal(err)
	}
	return p
}

func (n *node) post(c create, tok string) reply {
	n.t.Helper()
	if c.admin {
		tok = adminToken
	}
	return n.do("POST", c.path, tok, c.body)
}

// violationReasons returns the BadRequest field violations of an error reply, field -> reason.
func violationReasons(r reply) map[string]string {
	out := map[string]string{}
	details, _ := r.body["details"].([]any)
	for _, d := range details {
		m, _ := d.(map[string]any)
		fvs, _ := m["fieldViolations"].([]any)
		for _, fv := range fvs {
			f, _ := fv.(map[string]any)
			out[f["field"].(string)], _ = f["description"].(string)
		}
	}
	return out
}

func hostnameBody(name, origin string) map[string]any {
	return map[string]any{"hostname": name, "originUrl": origin, "mtls": map[string]any{"mode": "MTLS_MODE_OFF"}}
}

func rulesBody(expr string) []any {
	return []any{map[string]any{"name": "r", "action": "ACTION_ALLOW", "expression": expr}}
}

// TestRequestIDWithAnotherBody: a create repeated with its requestId and the same request (as
// REST sends it; equal after the normalisation the command applies) gets the first result and
// writes nothing; the same requestId with another request (other content, other method) is
// INVALID_ARGUMENT naming request_id and writes nothing, whether the server or the client chose
// the resource's id. Both hold in the process that wrote the first create and in a new one on the
// same store (the comparison uses only the history). Before request digests, every "fail/" case
// answered 200 with the first create's resource, as if the second create had happened.
func TestRequestIDWithAnotherBody(t *testing.T) {
	ca1, ca2 := pkitest.NewCA(t, "Acme Devices"), pkitest.NewCA(t, "Acme Kiosks")
	pem1 := pkitest.PEM(ca1.Cert)
	caBody := func(name, pem string) map[string]any {
		return map[string]any{"displayName": name, "certificatePem": pem}
	}
	const (
		cas  = "/v1/tenants/acme/certificateAuthorities"
		revs = "/v1/tenants/acme/certificateAuthorities/devices/revocations"
		pols = "/v1/tenants/acme/policies"
		hns  = "/v1/tenants/acme/hostnames"
	)
	// A batch's requestId is in its body (the whole body is the request).
	batch := func(requestID string, names ...string) map[string]any {
		var reqs []any
		for _, n := range names {
			reqs = append(reqs, map[string]any{"hostname": hostnameBody(n, "http://o.example")})
		}
		return map[string]any{"requestId": requestID, "requests": reqs}
	}
	tests := []struct {
		name         string
		first, again create
	}{
		{"ok/tenant", create{"/v1/tenants?tenantId=t-ok&requestId=t1", true, map[string]any{"displayName": "T"}}, create{"/v1/tenants?tenantId=t-ok&requestId=t1", true, map[string]any{"displayName": "T"}}},
		{"fail/tenant other display name", create{"/v1/tenants?tenantId=t-fail&requestId=t2", true, map[string]any{"displayName": "T"}}, create{"/v1/tenants?tenantId=t-fail&requestId=t2", true, map[string]any{"displayName": "U"}}},

		{"ok/token", create{"/v1/tenants/acme/tokens?requestId=k1", false, map[string]any{"displayName": "ci", "role": "ROLE_AUDITOR"}}, create{"/v1/tenants/acme/tokens?requestId=k1", false, map[string]any{"displayName": "ci", "role": "ROLE_AUDITOR"}}},
		{"fail/token other role", create{"/v1/tenants/acme/tokens?requestId=k2", false, map[string]any{"displayName": "ci", "role": "ROLE_AUDITOR"}}, create{"/v1/tenants/acme/tokens?requestId=k2", false, map[string]any{"displayName": "ci", "role": "ROLE_TENANT_ADMIN"}}},
		{"fail/token other display name", create{"/v1/tenants/acme/tokens?requestId=k3", false, map[string]any{"displayName": "ci", "role": "ROLE_AUDITOR"}}, create{"/v1/tenants/acme/tokens?requestId=k3", false, map[string]any{"displayName": "cd", "role": "ROLE_AUDITOR"}}},
		{"ok/platform token", create{"/v1/tenants/-/tokens?requestId=k4", true, map[string]any{"displayName": "all", "role": "ROLE_AUDITOR"}}, create{"/v1/tenants/-/tokens?requestId=k4", true, map[string]any{"displayName": "all", "role": "ROLE_AUDITOR"}}},
		{"fail/platform token other display name", create{"/v1/tenants/-/tokens?requestId=k5", true, map[string]any{"displayName": "all", "role": "ROLE_AUDITOR"}}, create{"/v1/tenants/-/tokens?requestId=k5", true, map[string]any{"displayName": "every", "role": "ROLE_AUDITOR"}}},

		{"ok/CA", create{cas + "?certificateAuthorityId=c1&requestId=c1", false, caBody("d", pem1)}, create{cas + "?certificateAuthorityId=c1&requestId=c1", false, caBody("d", pem1)}},
		{"ok/CA same certificate in another PEM text", create{cas + "?certificateAuthorityId=c2&requestId=c2", false, caBody("d", pem1)}, create{cas + "?certificateAuthorityId=c2&requestId=c2", false, caBody("d", "\n"+strings.ReplaceAll(pem1, "\n", "\r\n"))}},
		{"ok/CA id chosen by the server", create{cas + "?requestId=c3", false, caBody("d", pem1)}, create{cas + "?requestId=c3", false, caBody("d", pem1)}},
		{"fail/CA id chosen by the server, another certificate", create{cas + "?requestId=c4", false, caBody("d", pem1)}, create{cas + "?requestId=c4", false, caBody("d", pkitest.PEM(ca2.Cert))}},
		{"fail/CA other certificate", create{cas + "?certificateAuthorityId=c5&requestId=c5", false, caBody("d", pem1)}, create{cas + "?certificateAuthorityId=c5&requestId=c5", false, caBody("d", pkitest.PEM(ca2.Cert))}},
		{"fail/CA other display name", create{cas + "?certificateAuthorityId=c6&requestId=c6", false, caBody("d", pem1)}, create{cas + "?certificateAuthorityId=c6&requestId=c6", false, caBody("e", pem1)}},
		{"fail/CA now with an id of the client's", create{cas + "?requestId=c7", false, caBody("d", pem1)}, create{cas + "?certificateAuthorityId=c7&requestId=c7", false, caBody("d", pem1)}},

		{"ok/revocation serial number written otherwise", create{revs + "?requestId=r1", false, map[string]any{"serialNumber": "0a:bc", "reason": "lost"}}, create{revs + "?requestId=r1", false, map[string]any{"serialNumber": "ABC", "reason": "lost"}}},
		{"ok/revocation id chosen by the client", create{revs + "?revocationId=r2&requestId=r2", false, map[string]any{"serialNumber": "abd"}}, create{revs + "?revocationId=r2&requestId=r2", false, map[string]any{"serialNumber": "abd"}}},
		{"fail/revocation other serial number", create{revs + "?requestId=r3", false, map[string]any{"serialNumber": "ab1"}}, create{revs + "?requestId=r3", false, map[string]any{"serialNumber": "ab2"}}},
		{"fail/revocation other reason", create{revs + "?revocationId=r4&requestId=r4", false, map[string]any{"serialNumber": "ab3", "reason": "lost"}}, create{revs + "?revocationId=r4&requestId=r4", false, map[string]any{"serialNumber": "ab3", "reason": "stolen"}}},
		{"fail/revocation under another CA", create{revs + "?requestId=r5", false, map[string]any{"serialNumber": "ab4"}}, create{"/v1/tenants/acme/certificateAuthorities/kiosks/revocations?requestId=r5", false, map[string]any{"serialNumber": "ab4"}}},

		{"ok/policy", create{pols + "?requestId=p1", false, map[string]any{"displayName": "p", "rules": rulesBody("cert.verified")}}, create{pols + "?requestId=p1", false, map[string]any{"displayName": "p", "rules": rulesBody("cert.verified")}}},
		{"fail/policy other rules", create{pols + "?requestId=p2", false, map[string]any{"rules": rulesBody("cert.verified")}}, create{pols + "?requestId=p2", false, map[string]any{"rules": rulesBody("!cert.verified")}}},
		{"fail/policy other display name", create{pols + "?policyId=p3&requestId=p3", false, map[string]any{"displayName": "p", "rules": rulesBody("cert.verified")}}, create{pols + "?policyId=p3&requestId=p3", false, map[string]any{"displayName": "q", "rules": rulesBody("cert.verified")}}},

		{"ok/hostname in other case with a trailing dot", create{hns + "?requestId=h1", false, hostnameBody("h1.acme.example", "http://o.example")}, create{hns + "?requestId=h1", false, hostnameBody("H1.Acme.EXAMPLE.", "http://o.example")}},
		{"ok/hostname trusting CAs", create{hns + "?requestId=h2", false, map[string]any{"hostname": "h2.acme.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices", "kiosks"}}}}, create{hns + "?requestId=h2", false, map[string]any{"hostname": "h2.acme.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices", "kiosks"}}}}},
		{"fail/hostname other origin", create{hns + "?requestId=h3", false, hostnameBody("h3.acme.example", "http://o.example")}, create{hns + "?requestId=h3", false, hostnameBody("h3.acme.example", "http://p.example")}},
		{"fail/hostname other mode", create{hns + "?requestId=h4", false, hostnameBody("h4.acme.example", "http://o.example")}, create{hns + "?requestId=h4", false, map[string]any{"hostname": "h4.acme.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_REPORT", "certificateAuthorityIds": []string{"devices"}}}}},
		{"fail/hostname other CAs", create{hns + "?requestId=h5", false, map[string]any{"hostname": "h5.acme.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices", "kiosks"}}}}, create{hns + "?requestId=h5", false, map[string]any{"hostname": "h5.acme.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"kiosks", "devices"}}}}},
		{"fail/hostname another one", create{hns + "?requestId=h6", false, hostnameBody("h6.acme.example", "http://o.example")}, create{hns + "?requestId=h6", false, hostnameBody("h6b.acme.example", "http://o.example")}},

		{"ok/batch", create{hns + ":batchCreate", false, batch("b1", "b1a.acme.example", "b1b.acme.example")}, create{hns + ":batchCreate", false, batch("b1", "B1A.acme.example", "b1b.acme.example.")}},
		{"fail/batch in another order", create{hns + ":batchCreate", false, batch("b2", "b2a.acme.example", "b2b.acme.example")}, create{hns + ":batchCreate", false, batch("b2", "b2b.acme.example", "b2a.acme.example")}},
		{"fail/batch with one more", create{hns + ":batchCreate", false, batch("b3", "b3a.acme.example")}, create{hns + ":batchCreate", false, batch("b3", "b3a.acme.example", "b3b.acme.example")}},
		{"fail/batch of what a single create made", create{hns + "?requestId=b4", false, hostnameBody("b4.acme.example", "http://o.example")}, create{hns + ":batchCreate", false, batch("b4", "b4.acme.example")}},

		{"fail/a CA's request id on a policy", create{cas + "?certificateAuthorityId=x1&requestId=x1", false, caBody("d", pem1)}, create{pols + "?policyId=x1&requestId=x1", false, map[string]any{"rules": rulesBody("cert.verified")}}},
		{"fail/the tenant's request id on a token", create{"/v1/tenants?tenantId=x-tenant&requestId=x2", true, map[string]any{"displayName": "X"}}, create{"/v1/tenants/x-tenant/tokens?requestId=x2", true, map[string]any{"displayName": "ci", "role": "ROLE_AUDITOR"}}},
	}
	for _, restart := range []bool{false, true} {
		name := "same process"
		if restart {
			name = "after a restart"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			n := startNode(t, dir)
			tok := n.tenantWithToken("acme")
			n.must(200, "POST", cas+"?certificateAuthorityId=devices", tok, caBody("devices", pem1))
			n.must(200, "POST", cas+"?certificateAuthorityId=kiosks", tok, caBody("kiosks", pkitest.PEM(ca2.Cert)))
			firsts := make([]reply, len(tests))
			for i, tc := range tests {
				if firsts[i] = n.post(tc.first, tok); firsts[i].status != 200 {
					t.Fatalf("%s: first create: %d %s", tc.name, firsts[i].status, firsts[i].raw)
				}
			}
			if restart {
				n.stop()
				n = startNode(t, dir)
			}
			for i, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					before := n.position()
					again := n.post(tc.again, tok)
					if after := n.position(); after != before {
						t.Errorf("the repeat wrote: position %d -> %d", before, after)
					}
					if strings.HasPrefix(tc.name, "ok/") {
						if again.status != 200 {
							t.Fatalf("repeat: %d %s", again.status, again.raw)
						}
						first := firsts[i].body
						delete(first, "secret") // shown once; a repeat's token has none
						if !reflect.DeepEqual(again.body, first) {
							t.Errorf("repeat answered\n%s\nwant the first result\n%s", again.raw, firsts[i].raw)
						}
						return
					}
					if again.status != 400 {
						t.Fatalf("status %d, want 400: %s", again.status, again.raw)
					}
					v := violationReasons(again)
					// Another client-chosen id gets the older, more precise reason ("already used
					// to create certificate authority ...").
					if len(v) != 1 || !strings.Contains(v["request_id"], "already used for a different request") && !strings.Contains(v["request_id"], "already used to create") {
						t.Errorf("violations %v, want one on request_id saying it was used for a different request", v)
					}
				})
			}
		})
	}
}

// TestRequestIDRepeatOverGRPC: a create made over REST and repeated over gRPC with the same
// content (as each sends it) is a repeat; over gRPC with other content it is INVALID_ARGUMENT with
// a BadRequest on request_id. Neither writes.
func TestRequestIDRepeatOverGRPC(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	first := n.must(200, "POST", "/v1/tenants/acme/policies?requestId=g1", tok, map[string]any{"displayName": "p", "rules": []any{
		map[string]any{"name": "deny-admin", "action": "ACTION_DENY", "expression": `request.path.startsWith("/admin")`},
		map[string]any{"name": "ok", "action": "ACTION_ALLOW", "expression": "cert.verified"},
	}})
	c := guestlistv1.NewPolicyServiceClient(n.conn)
	req := func(expr string) *guestlistv1.CreatePolicyRequest {
		return &guestlistv1.CreatePolicyRequest{TenantId: "acme", RequestId: "g1", Policy: &guestlistv1.Policy{DisplayName: "p", Rules: []*guestlistv1.Rule{
			{Name: "deny-admin", Action: guestlistv1.Action_ACTION_DENY, Expression: `request.path.startsWith("/admin")`},
			{Name: "ok", Action: guestlistv1.Action_ACTION_ALLOW, Expression: expr},
		}}}
	}
	tests := []struct {
		name string
		expr string
		code codes.Code
	}{
		{"ok/same content", "cert.verified", codes.OK},
		{"fail/other expression", "cert.presented", codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := n.position()
			got, err := c.CreatePolicy(withToken(tok), req(tc.expr))
			if after := n.position(); after != before {
				t.Errorf("the repeat wrote: position %d -> %d", before, after)
			}
			if status.Code(err) != tc.code {
				t.Fatalf("CreatePolicy: %v, want %v", err, tc.code)
			}
			if err == nil {
				if got.GetPolicyId() != first.body["policyId"] || got.GetEtag() != first.body["etag"] {
					t.Errorf("repeat over gRPC answered %v, want the first result %s", got, first.raw)
				}
				return
			}
			var br *errdetails.BadRequest
			for _, d := range status.Convert(err).Details() {
				if b, ok := d.(*errdetails.BadRequest); ok {
					br = b
				}
			}
			if fv := br.GetFieldViolations(); len(fv) != 1 || fv[0].GetField() != "request_id" || !strings.Contains(fv[0].GetDescription(), "different request") {
				t.Errorf("details %v, want one BadRequest violation on request_id", status.Convert(err).Details())
			}
		})
	}
}

// TestRequestIDOfAnotherTenant: request ids are per tenant. A token of tenant globex that reuses
// tenant acme's request id on acme's resources gets the same PERMISSION_DENIED whatever the body
// and whether or not acme used that request id; on its own tenant the request id is new (the
// create happens, and is then repeatable and guarded like any other). Nothing of acme's is
// written or told.
func TestRequestIDOfAnotherTenant(t *testing.T) {
	n := startNode(t, t.TempDir())
	acme, globex := n.tenantWithToken("acme"), n.tenantWithToken("globex")
	pemA, pemB := pkitest.PEM(pkitest.NewCA(t, "Acme Devices").Cert), pkitest.PEM(pkitest.NewCA(t, "Globex Devices").Cert)
	acmeCA := n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices&requestId=shared", acme, map[string]any{"certificatePem": pemA})
	n.must(200, "POST", "/v1/tenants/acme/hostnames?requestId=shared-h", acme, hostnameBody("pay.acme.example", "http://o.example"))

	var denied []string
	probes := []struct {
		name, path string
		body       any
	}{
		{"fail/acme's request id, acme's body", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices&requestId=shared", map[string]any{"certificatePem": pemA}},
		{"fail/acme's request id, another body", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices&requestId=shared", map[string]any{"certificatePem": pemB}},
		{"fail/a request id acme never used", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices&requestId=never", map[string]any{"certificatePem": pemA}},
		{"fail/acme's hostname request id", "/v1/tenants/acme/hostnames?requestId=shared-h", hostnameBody("pay.acme.example", "http://o.example")},
		{"fail/acme's hostname request id, another hostname", "/v1/tenants/acme/hostnames?requestId=shared-h", hostnameBody("pay.globex.example", "http://o.example")},
	}
	for _, p := range probes {
		t.Run(p.name, func(t *testing.T) {
			before := n.position()
			r := n.do("POST", p.path, globex, p.body)
			if r.status != 403 {
				t.Errorf("status %d, want 403: %s", r.status, r.raw)
			}
			if after := n.position(); after != before {
				t.Errorf("wrote: position %d -> %d", before, after)
			}
			denied = append(denied, r.raw)
		})
	}
	for i := range denied {
		if denied[i] != denied[0] {
			t.Errorf("the denials differ, so they tell something:\n%s\n%s", denied[0], denied[i])
		}
	}

	own := []struct {
		name, path string
		body       any
		want       int
		writes     bool
	}{
		{"ok/acme's request id on globex: a new create", "/v1/tenants/globex/certificateAuthorities?certificateAuthorityId=devices&requestId=shared", map[string]any{"certificatePem": pemB}, 200, true},
		{"ok/then a repeat of globex's own", "/v1/tenants/globex/certificateAuthorities?certificateAuthorityId=devices&requestId=shared", map[string]any{"certificatePem": pemB}, 200, false},
		{"fail/then acme's body for globex's own", "/v1/tenants/globex/certificateAuthorities?certificateAuthorityId=devices&requestId=shared", map[string]any{"certificatePem": pemA}, 400, false},
		{"ok/acme's hostname request id on globex: a new create", "/v1/tenants/globex/hostnames?requestId=shared-h", hostnameBody("pay.globex.example", "http://o.example"), 200, true},
	}
	for _, o := range own {
		t.Run(o.name, func(t *testing.T) {
			before := n.position()
			r := n.do("POST", o.path, globex, o.body)
			if r.status != o.want {
				t.Fatalf("status %d, want %d: %s", r.status, o.want, r.raw)
			}
			if wrote := n.position() != before; wrote != o.writes {
				t.Errorf("wrote %v, want %v: %s", wrote, o.writes, r.raw)
			}
			if r.status == 200 && strings.Contains(r.raw, "acme") {
				t.Errorf("globex's create answered with something of acme's: %s", r.raw)
			}
		})
	}
	if got := n.must(200, "GET", "/v1/tenants/acme/certificateAuthorities/devices", acme, nil); got.raw != acmeCA.raw {
		t.Errorf("acme's CA changed:\n%s\n%s", acmeCA.raw, got.raw)
	}
}

// TestRequestIDBeforeDigests: events written by versions before request digests carry no
// request_digest. A create repeating their request id keeps the behaviour of those versions: it
// gets the first result, whatever its content (and another client-chosen id is still refused),
// and writes nothing. The digests this version records are in the history as the audit shows it.
func TestRequestIDBeforeDigests(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	ctx := context.Background()
	rev := n.streamRevision("acme")
	data, err := proto.Marshal(&eventsv1.PolicyCreated{PolicyId: "old", DisplayName: "old", Rules: []*eventsv1.PolicyRule{{Name: "r", Action: eventsv1.Action_ACTION_ALLOW, Expression: "cert.verified"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.store.Append(ctx, "tenant-acme", eventstore.Exact(uint64(rev)), eventstore.EventData{
		ID: "0b1e2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3", Type: "guestlist.events.v1.PolicyCreated", Data: data,
		Metadata: eventstore.Metadata{Actor: "admin", RequestID: "old-1"},
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		path   string
		body   any
		status int
	}{
		{"ok/same content", "/v1/tenants/acme/policies?policyId=old&requestId=old-1", map[string]any{"displayName": "old", "rules": rulesBody("cert.verified")}, 200},
		{"ok/other content: the first result, as before digests", "/v1/tenants/acme/policies?policyId=old&requestId=old-1", map[string]any{"displayName": "new", "rules": rulesBody("false")}, 200},
		{"fail/another policy id, as before digests", "/v1/tenants/acme/policies?policyId=new&requestId=old-1", map[string]any{"displayName": "old", "rules": rulesBody("cert.verified")}, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := n.position()
			r := n.must(tc.status, "POST", tc.path, tok, tc.body)
			if after := n.position(); after != before {
				t.Errorf("wrote: position %d -> %d", before, after)
			}
			if tc.status == 200 && (r.body["policyId"] != "old" || r.body["displayName"] != "old") {
				t.Errorf("answered %s, want the stored policy", r.raw)
			}
		})
	}

	// This version's creates record their digest, and the audit history shows it.
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=new&requestId=new-1", tok, map[string]any{"rules": rulesBody("cert.verified")})
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=plain", tok, map[string]any{"rules": rulesBody("cert.verified")})
	evs, err := n.store.ReadStream(ctx, "tenant-acme", eventstore.Backwards, ^uint64(0), 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{0, 32} { // newest first: without a request id, then with one
		var m eventsv1.PolicyCreated
		if err := proto.Unmarshal(evs[i].Data, &m); err != nil {
			t.Fatal(err)
		}
		if len(m.GetRequestDigest()) != want {
			t.Errorf("%s (request id %q): request_digest of %d bytes, want %d", m.GetPolicyId(), evs[i].Metadata.RequestID, len(m.GetRequestDigest()), want)
		}
	}
	hist := n.must(200, "GET", "/v1/tenants/acme/events?fromPosition="+"0", tok, nil)
	if !strings.Contains(hist.raw, `"requestDigest"`) {
		t.Errorf("the history does not show request digests: %s", hist.raw)
	}
}

// TestRequestIDAcrossReplicas: two API processes on one store. The second one loaded the tenant
// before the first one made the create; a repeat sent to the second one is still recognised
// (identical: the first result, nothing written, not even a hostname reservation; another request:
// INVALID_ARGUMENT on request_id, nothing written), since the comparison uses the history alone.
func TestRequestIDAcrossReplicas(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	tests := []struct {
		name         string
		first, again create
	}{
		{"ok/hostname", create{"/v1/tenants/acme/hostnames?requestId=x1", false, hostnameBody("x1.acme.example", "http://o.example")}, create{"/v1/tenants/acme/hostnames?requestId=x1", false, hostnameBody("X1.acme.example", "http://o.example")}},
		{"fail/hostname other origin", create{"/v1/tenants/acme/hostnames?requestId=x2", false, hostnameBody("x2.acme.example", "http://o.example")}, create{"/v1/tenants/acme/hostnames?requestId=x2", false, hostnameBody("x2.acme.example", "http://p.example")}},
		// A tenant's token makes the replica read the tenant's history (to authenticate it); the
		// admin's does not.
		{"ok/hostname, the admin repeating", create{"/v1/tenants/acme/hostnames?requestId=x5", true, hostnameBody("x5.acme.example", "http://o.example")}, create{"/v1/tenants/acme/hostnames?requestId=x5", true, hostnameBody("x5.acme.example", "http://o.example")}},
		{"fail/hostname other origin, the admin repeating", create{"/v1/tenants/acme/hostnames?requestId=x6", true, hostnameBody("x6.acme.example", "http://o.example")}, create{"/v1/tenants/acme/hostnames?requestId=x6", true, hostnameBody("x6.acme.example", "http://p.example")}},
		{"ok/policy", create{"/v1/tenants/acme/policies?requestId=x3", false, map[string]any{"rules": rulesBody("cert.verified")}}, create{"/v1/tenants/acme/policies?requestId=x3", false, map[string]any{"rules": rulesBody("cert.verified")}}},
		{"fail/policy other rules", create{"/v1/tenants/acme/policies?requestId=x4", false, map[string]any{"rules": rulesBody("cert.verified")}}, create{"/v1/tenants/acme/policies?requestId=x4", false, map[string]any{"rules": rulesBody("false")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			replica := n.startReplica(t)
			if r := replica.do("GET", "/v1/tenants/acme/hostnames", tok, nil); r.status != 200 { // the replica loads acme now
				t.Fatalf("list on the replica: %s", r.raw)
			}
			first := n.post(tc.first, tok)
			if first.status != 200 {
				t.Fatalf("first create: %s", first.raw)
			}
			before := n.position()
			again := replica.post(tc.again, tok)
			if after := n.position(); after != before {
				t.Errorf("the repeat wrote: position %d -> %d", before, after)
			}
			if strings.HasPrefix(tc.name, "ok/") {
				if again.status != 200 || again.raw != first.raw {
					t.Errorf("repeat on the replica answered %d %s, want the first result %s", again.status, again.raw, first.raw)
				}
				return
			}
			if v := violationReasons(again); again.status != 400 || len(v) != 1 || !strings.Contains(v["request_id"], "different request") {
				t.Errorf("repeat on the replica answered %d %s, want 400 on request_id", again.status, again.raw)
			}
		})
	}
}

// TestRequestIDConcurrentBodies: creates with one request id and two different bodies, all at
// once: exactly one policy is created; every answer is either that policy (a create of its body)
// or INVALID_ARGUMENT on request_id (a create of the other body).
func TestRequestIDConcurrentBodies(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	c := guestlistv1.NewPolicyServiceClient(n.conn)
	exprs := []string{"cert.verified", "cert.presented"}
	const each = 6
	type answer struct {
		expr string
		got  *guestlistv1.Policy
		err  error
	}
	answers := make(chan answer, 2*each)
	var wg sync.WaitGroup
	for i := range 2 * each {
		wg.Add(1)
		go func() {
			defer wg.Done()
			expr := exprs[i%2]
			got, err := c.CreatePolicy(withToken(tok), &guestlistv1.CreatePolicyRequest{TenantId: "acme", RequestId: "race", Policy: &guestlistv1.Policy{
				Rules: []*guestlistv1.Rule{{Name: "r", Action: guestlistv1.Action_ACTION_ALLOW, Expression: expr}},
			}})
			answers <- answer{expr, got, err}
		}()
	}
	wg.Wait()
	close(answers)
	list, err := c.ListPolicies(withToken(tok), &guestlistv1.ListPoliciesRequest{TenantId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetPolicies()) != 1 {
		t.Fatalf("%d policies created, want 1: %v", len(list.GetPolicies()), list)
	}
	stored := list.GetPolicies()[0]
	won := stored.GetRules()[0].GetExpression()
	for a := range answers {
		switch {
		case a.expr == won && a.err == nil && proto.Equal(a.got, stored):
		case a.expr != won && status.Code(a.err) == codes.InvalidArgument && strings.Contains(a.err.Error(), "request_id"):
		default:
			t.Errorf("a create of %q (stored: %q) answered %v, %v", a.expr, won, a.got, a.err)
		}
	}
}
