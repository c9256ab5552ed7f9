package controlplane_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"guestlist.dev/edge/pkitest"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

func TestWalkthroughREST(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	ca := pkitest.NewCA(t, "Acme Devices")

	got := n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", tok,
		map[string]any{"displayName": "devices", "certificatePem": pkitest.PEM(ca.Cert)})
	if got.body["fingerprintSha256"] == "" || !strings.Contains(got.body["subject"].(string), "Acme Devices") || got.body["etag"] == "" {
		t.Errorf("CA = %s", got.raw)
	}
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=ops", tok, map[string]any{"rules": []any{
		map[string]any{"name": "ops", "action": "ACTION_ALLOW", "expression": `"ops" in cert.subject.organizational_unit`},
	}})
	h := n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, map[string]any{
		"hostname": "Pay.Example.COM.", "originUrl": "http://127.0.0.1:8081",
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}}, "policyId": "ops",
	})
	if h.body["hostname"] != "pay.example.com" || h.body["state"] != "STATE_ACTIVE" {
		t.Fatalf("hostname = %s", h.raw)
	}
	g := n.must(200, "GET", "/v1/tenants/acme/hostnames/PAY.example.com", tok, nil)
	if g.body["etag"] != h.body["etag"] {
		t.Errorf("etag changed without a write: %v vs %v", g.body["etag"], h.body["etag"])
	}
	// PATCH with update_mask from the body's fields: only origin_url changes.
	p := n.must(200, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com", tok, map[string]any{"originUrl": "https://origin.example.net/base", "etag": h.body["etag"]})
	if p.body["originUrl"] != "https://origin.example.net/base" || p.body["policyId"] != "ops" || p.body["etag"] == h.body["etag"] {
		t.Errorf("patched = %s", p.raw)
	}
	// The old etag is now stale: ABORTED (409), and nothing is written.
	before := n.streamRevision("acme")
	n.must(409, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com", tok, map[string]any{"originUrl": "http://x.example", "etag": h.body["etag"]})
	n.must(409, "DELETE", "/v1/tenants/acme/hostnames/pay.example.com?etag="+h.body["etag"].(string), tok, nil)
	if after := n.streamRevision("acme"); after != before {
		t.Errorf("a stale etag wrote: revision %d -> %d", before, after)
	}
	// A CA or policy in use cannot be deleted.
	n.must(400, "DELETE", "/v1/tenants/acme/certificateAuthorities/devices", tok, nil)
	n.must(400, "DELETE", "/v1/tenants/acme/policies/ops", tok, nil)
	list := n.must(200, "GET", "/v1/tenants/acme/hostnames", tok, nil)
	if hs, _ := list.body["hostnames"].([]any); len(hs) != 1 {
		t.Errorf("list = %s", list.raw)
	}
	n.must(200, "DELETE", "/v1/tenants/acme/hostnames/pay.example.com?etag="+p.body["etag"].(string), tok, nil)
	n.must(404, "GET", "/v1/tenants/acme/hostnames/pay.example.com", tok, nil)
	n.must(200, "DELETE", "/v1/tenants/acme/certificateAuthorities/devices", tok, nil)

	// Revocations by serial (any case, separators) are stored normalised.
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices2", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	rv := n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities/devices2/revocations", tok, map[string]any{"serialNumber": "00:0A:BC", "reason": "lost"})
	if rv.body["serialNumber"] != "abc" {
		t.Errorf("revocation = %s", rv.raw)
	}
	n.must(200, "DELETE", "/v1/tenants/acme/certificateAuthorities/devices2/revocations/"+rv.body["revocationId"].(string), tok, nil)
}

func TestAuthentication(t *testing.T) {
	n := startNode(t, t.TempDir())
	acme := n.tenantWithToken("acme")
	globex := n.tenantWithToken("globex")
	ca := pkitest.NewCA(t, "acme")
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", acme, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})

	tests := []struct {
		name, method, path, token string
		body                      any
		want                      int
	}{
		{"fail/no token", "GET", "/v1/tenants/acme/hostnames", "", nil, 401},
		{"fail/unknown token", "GET", "/v1/tenants/acme/hostnames", "glt_acme.abc." + strings.Repeat("0", 64), nil, 401},
		{"fail/garbage token", "GET", "/v1/tenants", "hello", nil, 401},
		{"fail/admin token with a suffix", "GET", "/v1/tenants", adminToken + "x", nil, 401},
		{"fail/tenant lists tenants", "GET", "/v1/tenants", acme, nil, 403},
		{"fail/tenant creates a tenant", "POST", "/v1/tenants?tenantId=evil", acme, map[string]any{"displayName": "x"}, 403},
		{"fail/cross-tenant read of an existing CA", "GET", "/v1/tenants/acme/certificateAuthorities/devices", globex, nil, 403},
		{"fail/cross-tenant read of a missing CA", "GET", "/v1/tenants/acme/certificateAuthorities/nope", globex, nil, 403},
		{"fail/cross-tenant read of a missing tenant", "GET", "/v1/tenants/nobody/hostnames", globex, nil, 403},
		{"fail/cross-tenant write", "POST", "/v1/tenants/acme/policies", globex, map[string]any{"rules": []any{map[string]any{"name": "a", "action": "ACTION_ALLOW", "expression": "true"}}}, 403},
		{"fail/cross-tenant token mint", "POST", "/v1/tenants/acme/tokens", globex, map[string]any{"role": "ROLE_TENANT_ADMIN"}, 403},
		{"fail/edge token reads a tenant", "GET", "/v1/tenants/acme/certificateAuthorities", edgeToken, nil, 403},
		{"fail/edge token lists tenants", "GET", "/v1/tenants", edgeToken, nil, 403},
		{"fail/edge token writes", "POST", "/v1/tenants?tenantId=edgy", edgeToken, map[string]any{"displayName": "x"}, 403},
		{"ok/own read", "GET", "/v1/tenants/acme/certificateAuthorities/devices", acme, nil, 200},
		{"ok/admin read", "GET", "/v1/tenants/acme/certificateAuthorities/devices", adminToken, nil, 200},
		{"ok/admin lists tenants", "GET", "/v1/tenants", adminToken, nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := n.do(tt.method, tt.path, tt.token, tt.body)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.raw)
			}
		})
	}
	// The answer to a cross-tenant call is the same whether or not the resource exists.
	a := n.do("GET", "/v1/tenants/acme/certificateAuthorities/devices", globex, nil)
	b := n.do("GET", "/v1/tenants/acme/certificateAuthorities/nope", globex, nil)
	if a.raw != b.raw {
		t.Errorf("cross-tenant answers differ: %q vs %q", a.raw, b.raw)
	}

	// Auditors read but never write; deleted tokens stop working.
	aud := n.must(200, "POST", "/v1/tenants/acme/tokens", acme, map[string]any{"role": "ROLE_AUDITOR"})
	auditor := aud.body["secret"].(string)
	n.must(200, "GET", "/v1/tenants/acme/certificateAuthorities", auditor, nil)
	n.must(403, "DELETE", "/v1/tenants/acme/certificateAuthorities/devices", auditor, nil)
	n.must(403, "POST", "/v1/tenants/acme/tokens", auditor, map[string]any{"role": "ROLE_TENANT_ADMIN"})
	n.must(200, "DELETE", "/v1/tenants/acme/tokens/"+aud.body["tokenId"].(string), acme, nil)
	n.must(401, "GET", "/v1/tenants/acme/certificateAuthorities", auditor, nil)
	// Listing tokens never shows secrets.
	l := n.must(200, "GET", "/v1/tenants/acme/tokens", acme, nil)
	if strings.Contains(l.raw, "secret") || strings.Contains(l.raw, acme[len(acme)-20:]) {
		t.Errorf("token list leaks secrets: %s", l.raw)
	}

	// gRPC: the same rules.
	c := guestlistv1.NewCertificateAuthorityServiceClient(n.conn)
	_, err := c.GetCertificateAuthority(context.Background(), &guestlistv1.GetCertificateAuthorityRequest{TenantId: "acme", CertificateAuthorityId: "devices"})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("gRPC without token: %v", err)
	}
	_, err = c.GetCertificateAuthority(withToken(globex), &guestlistv1.GetCertificateAuthorityRequest{TenantId: "acme", CertificateAuthorityId: "devices"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC cross-tenant: %v", err)
	}
	if _, err = c.GetCertificateAuthority(withToken(acme), &guestlistv1.GetCertificateAuthorityRequest{TenantId: "acme", CertificateAuthorityId: "devices"}); err != nil {
		t.Errorf("gRPC own read: %v", err)
	}
}

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

func TestBadInputNamesTheFieldAndWritesNothing(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	n.tenantWithToken("globex")
	ca := pkitest.NewCA(t, "acme root")
	leaf := ca.Client(t, "device")
	expired := pkitest.NewCA(t, "old root", pkitest.Validity(time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)))
	other := pkitest.NewCA(t, "globex root")
	globexTok := n.tenantWithToken("initech")
	_ = globexTok
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=good", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	n.must(200, "POST", "/v1/tenants/globex/certificateAuthorities?certificateAuthorityId=theirs", adminToken, map[string]any{"certificatePem": pkitest.PEM(other.Cert)})
	keyPEM := pkitest.KeyPEM(t, ca.Key)

	hostname := func(extra map[string]any) map[string]any {
		h := map[string]any{"hostname": "pay.acme.example", "originUrl": "http://127.0.0.1:8081", "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"good"}}}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	rule := func(expr string) map[string]any {
		return map[string]any{"rules": []any{map[string]any{"name": "r1", "action": "ACTION_ALLOW", "expression": expr}}}
	}
	tests := []struct {
		name, path string
		body       any
		field      string
	}{
		{"fail/CA garbage", "/v1/tenants/acme/certificateAuthorities", map[string]any{"certificatePem": "hello"}, "certificate_authority.certificate_pem"},
		{"fail/CA leaf certificate", "/v1/tenants/acme/certificateAuthorities", map[string]any{"certificatePem": pkitest.PEM(leaf.Cert)}, "certificate_authority.certificate_pem"},
		{"fail/CA two certificates", "/v1/tenants/acme/certificateAuthorities", map[string]any{"certificatePem": pkitest.PEM(ca.Cert) + pkitest.PEM(other.Cert)}, "certificate_authority.certificate_pem"},
		{"fail/CA with a private key", "/v1/tenants/acme/certificateAuthorities", map[string]any{"certificatePem": pkitest.PEM(ca.Cert) + keyPEM}, "certificate_authority.certificate_pem"},
		{"fail/CA private key alone", "/v1/tenants/acme/certificateAuthorities", map[string]any{"certificatePem": keyPEM}, "certificate_authority.certificate_pem"},
		{"fail/CA over 64 KiB", "/v1/tenants/acme/certificateAuthorities", map[string]any{"certificatePem": pkitest.PEM(ca.Cert) + strings.Repeat(" ", 65536)}, "certificate_authority.certificate_pem"},
		{"fail/CA expired", "/v1/tenants/acme/certificateAuthorities", map[string]any{"certificatePem": pkitest.PEM(expired.Cert)}, "certificate_authority.certificate_pem"},
		{"fail/CA bad id", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=Bad_Id", map[string]any{"certificatePem": pkitest.PEM(ca.Cert)}, "certificate_authority_id"},
		{"fail/tenant id", "/v1/tenants?tenantId=A!", map[string]any{"displayName": "x"}, "tenant_id"},
		{"fail/hostname invalid", "/v1/tenants/acme/hostnames", hostname(map[string]any{"hostname": "-bad-.example"}), "hostname.hostname"},
		{"fail/hostname an IP", "/v1/tenants/acme/hostnames", hostname(map[string]any{"hostname": "127.0.0.1"}), "hostname.hostname"},
		{"fail/hostname origin not http", "/v1/tenants/acme/hostnames", hostname(map[string]any{"originUrl": "ftp://x.example"}), "hostname.origin_url"},
		{"fail/hostname without mtls", "/v1/tenants/acme/hostnames", map[string]any{"hostname": "a.acme.example", "originUrl": "http://o.example"}, "hostname.mtls"},
		{"fail/hostname mode missing", "/v1/tenants/acme/hostnames", hostname(map[string]any{"mtls": map[string]any{"certificateAuthorityIds": []string{"good"}}}), "hostname.mtls.mode"},
		{"fail/hostname enforce without CA", "/v1/tenants/acme/hostnames", hostname(map[string]any{"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE"}}), "hostname.mtls.certificate_authority_ids"},
		{"fail/hostname another tenant's CA", "/v1/tenants/acme/hostnames", hostname(map[string]any{"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"theirs"}}}), "hostname.mtls.certificate_authority_ids[0]"},
		{"fail/hostname unknown policy", "/v1/tenants/acme/hostnames", hostname(map[string]any{"policyId": "nope"}), "hostname.policy_id"},
		{"fail/policy syntax error", "/v1/tenants/acme/policies", rule(`cert.verified &&`), "policy.rules[0].expression"},
		{"fail/policy type error", "/v1/tenants/acme/policies", rule(`cert.subject.common_name`), "policy.rules[0].expression"},
		{"fail/policy unknown variable", "/v1/tenants/acme/policies", rule(`cret.verified`), "policy.rules[0].expression"},
		{"fail/policy no rules", "/v1/tenants/acme/policies", map[string]any{"rules": []any{}}, "policy.rules"},
		{"fail/policy bad action", "/v1/tenants/acme/policies", map[string]any{"rules": []any{map[string]any{"name": "x", "expression": "true"}}}, "policy.rules[0].action"},
		{"fail/revocation bad serial", "/v1/tenants/acme/certificateAuthorities/good/revocations", map[string]any{"serialNumber": "xyz"}, "revocation.serial_number"},
		{"fail/revocation no target", "/v1/tenants/acme/certificateAuthorities/good/revocations", map[string]any{"reason": "x"}, "revocation.target"},
		{"fail/token without role", "/v1/tenants/acme/tokens", map[string]any{"displayName": "x"}, "token.role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := n.streamRevision("acme")
			r := n.do("POST", tt.path, tok, tt.body)
			if r.status != 400 {
				t.Fatalf("status %d, want 400: %s", r.status, r.raw)
			}
			fields := fieldViolations(r)
			found := false
			for _, f := range fields {
				found = found || f == tt.field
			}
			if !found {
				t.Errorf("field violations %v do not name %q: %s", fields, tt.field, r.raw)
			}
			if strings.Contains(r.raw, "PRIVATE KEY") || strings.Contains(r.raw, keyPEM[40:80]) {
				t.Errorf("the answer echoes key material: %s", r.raw)
			}
			if after := n.streamRevision("acme"); after != before {
				t.Errorf("bad input wrote events: revision %d -> %d", before, after)
			}
		})
	}

	// A missing enum says so, not "must not be in list [0]".
	for _, c := range []struct{ path, field string }{{"/v1/tenants/acme/policies", "policy.rules[0].action"}, {"/v1/tenants/acme/tokens", "token.role"}} {
		body := map[string]any{"displayName": "x"}
		if strings.HasSuffix(c.path, "policies") {
			body = map[string]any{"rules": []any{map[string]any{"name": "x", "expression": "true"}}}
		}
		if r := n.do("POST", c.path, tok, body); !strings.Contains(r.raw, "value is required") || strings.Contains(r.raw, "in list") {
			t.Errorf("%s missing: %s", c.field, r.raw)
		}
	}

	// CEL errors name the rule and the position.
	r := n.do("POST", "/v1/tenants/acme/policies", tok, map[string]any{"rules": []any{
		map[string]any{"name": "fine", "action": "ACTION_ALLOW", "expression": "cert.verified"},
		map[string]any{"name": "broken", "action": "ACTION_DENY", "expression": "request.path.startsWith('/a') && cret.verified"},
	}})
	if r.status != 400 || !strings.Contains(r.raw, `broken`) || !strings.Contains(r.raw, "column") || fieldViolations(r)[0] != "policy.rules[1].expression" {
		t.Errorf("CEL error = %d %s", r.status, r.raw)
	}

	// gRPC returns the same BadRequest details.
	_, err := guestlistv1.NewCertificateAuthorityServiceClient(n.conn).CreateCertificateAuthority(withToken(tok), &guestlistv1.CreateCertificateAuthorityRequest{
		TenantId: "acme", CertificateAuthority: &guestlistv1.CertificateAuthority{CertificatePem: pkitest.PEM(leaf.Cert)},
	})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("gRPC code = %v", st.Code())
	}
	var br *errdetails.BadRequest
	for _, d := range st.Details() {
		if b, ok := d.(*errdetails.BadRequest); ok {
			br = b
		}
	}
	if br == nil || br.GetFieldViolations()[0].GetField() != "certificate_authority.certificate_pem" {
		t.Errorf("gRPC details = %v", st.Details())
	}
}

func TestRequestIDIsIdempotent(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	body := map[string]any{"hostname": "a.acme.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_OFF"}}
	first := n.must(200, "POST", "/v1/tenants/acme/hostnames?requestId=r-1", tok, body)
	rev := n.streamRevision("acme")
	again := n.must(200, "POST", "/v1/tenants/acme/hostnames?requestId=r-1", tok, body)
	if first.raw != again.raw {
		t.Errorf("repeat differs:\n%s\n%s", first.raw, again.raw)
	}
	if n.streamRevision("acme") != rev {
		t.Error("a repeated request wrote events")
	}
	// Without the request id the same create is a conflict.
	n.must(409, "POST", "/v1/tenants/acme/hostnames", tok, body)
	// Tenants too.
	t1 := n.must(200, "POST", "/v1/tenants?tenantId=initech&requestId=t-1", adminToken, map[string]any{"displayName": "Initech"})
	t2 := n.must(200, "POST", "/v1/tenants?tenantId=initech&requestId=t-1", adminToken, map[string]any{"displayName": "Initech"})
	if t1.raw != t2.raw {
		t.Errorf("tenant repeat differs")
	}
	n.must(409, "POST", "/v1/tenants?tenantId=initech", adminToken, map[string]any{"displayName": "Initech"})
}

// TestHostnameClaimRace: tenants claim the same hostnames at the same moment; each hostname ends
// up with exactly one of them, and the losers got ALREADY_EXISTS.
func TestHostnameClaimRace(t *testing.T) {
	n := startNode(t, t.TempDir())
	tenants := []string{"acme", "globex", "initech", "umbrella"}
	tokens := map[string]string{}
	for _, id := range tenants {
		tokens[id] = n.tenantWithToken(id)
	}
	c := guestlistv1.NewHostnameServiceClient(n.conn)
	const names = 20
	wins := make([]map[string]bool, names)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range names {
		wins[i] = map[string]bool{}
		for _, id := range tenants {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := c.CreateHostname(withToken(tokens[id]), &guestlistv1.CreateHostnameRequest{TenantId: id, Hostname: &guestlistv1.Hostname{
					Hostname: fmt.Sprintf("h%d.shared.example", i), OriginUrl: "http://o.example", Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
				}})
				switch status.Code(err) {
				case codes.OK:
					mu.Lock()
					wins[i][id] = true
					mu.Unlock()
				case codes.AlreadyExists:
				default:
					t.Errorf("claim h%d by %s: %v", i, id, err)
				}
			}()
		}
	}
	wg.Wait()
	for i := range names {
		if len(wins[i]) != 1 {
			t.Errorf("h%d.shared.example won by %v, want exactly one tenant", i, wins[i])
		}
		owners := 0
		for _, id := range tenants {
			if n.do("GET", fmt.Sprintf("/v1/tenants/%s/hostnames/h%d.shared.example", id, i), tokens[id], nil).status == 200 {
				owners++
			}
		}
		if owners != 1 {
			t.Errorf("h%d.shared.example belongs to %d tenants", i, owners)
		}
	}
	// Once deleted, another tenant may claim it.
	var owner string
	for id := range wins[0] {
		owner = id
	}
	n.must(200, "DELETE", "/v1/tenants/"+owner+"/hostnames/h0.shared.example", tokens[owner], nil)
	next := "acme"
	if owner == "acme" {
		next = "globex"
	}
	n.must(200, "POST", "/v1/tenants/"+next+"/hostnames", tokens[next], map[string]any{"hostname": "h0.shared.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_OFF"}})
}

// TestConcurrentEtags: of many updates racing with the same etag, exactly one wins.
func TestConcurrentEtags(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	p := n.must(200, "POST", "/v1/tenants/acme/policies?policyId=p", tok, map[string]any{"rules": []any{map[string]any{"name": "a", "action": "ACTION_ALLOW", "expression": "true"}}})
	etag := p.body["etag"].(string)
	c := guestlistv1.NewPolicyServiceClient(n.conn)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codesSeen := map[codes.Code]int{}
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.UpdatePolicy(withToken(tok), &guestlistv1.UpdatePolicyRequest{TenantId: "acme", Policy: &guestlistv1.Policy{PolicyId: "p", DisplayName: fmt.Sprint("v", i), Etag: etag}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			mu.Lock()
			codesSeen[status.Code(err)]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codesSeen[codes.OK] != 1 || codesSeen[codes.Aborted] != 15 {
		t.Errorf("results = %v, want 1 OK and 15 ABORTED", codesSeen)
	}
}

func TestBatchCreateIsAllOrNothing(t *testing.T) {
	n := startNode(t, t.TempDir())
	acme := n.tenantWithToken("acme")
	globex := n.tenantWithToken("globex")
	n.must(200, "POST", "/v1/tenants/globex/hostnames", globex, map[string]any{"hostname": "taken.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_OFF"}})
	c := guestlistv1.NewHostnameServiceClient(n.conn)
	batch := func(names ...string) *guestlistv1.BatchCreateHostnamesRequest {
		req := &guestlistv1.BatchCreateHostnamesRequest{TenantId: "acme"}
		for _, name := range names {
			req.Requests = append(req.Requests, &guestlistv1.CreateHostnameRequest{Hostname: &guestlistv1.Hostname{Hostname: name, OriginUrl: "http://o.example", Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF}}})
		}
		return req
	}
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf("c%04d.acme.example", i)
	}
	// One name already belongs to another tenant: nothing is created, nothing stays reserved.
	_, err := c.BatchCreateHostnames(withToken(acme), batch(append(names[:10:10], "taken.example")...))
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("batch with a taken name: %v", err)
	}
	_, err = c.BatchCreateHostnames(withToken(acme), batch("ok.acme.example", "-bad.example"))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "requests[1].hostname.hostname") {
		t.Fatalf("batch with a bad name: %v", err)
	}
	if l := n.must(200, "GET", "/v1/tenants/acme/hostnames", acme, nil); strings.Contains(l.raw, "hostname") {
		t.Fatalf("a failed batch left hostnames: %s", l.raw)
	}
	n.must(200, "POST", "/v1/tenants/globex/hostnames", globex, map[string]any{"hostname": names[0], "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_OFF"}})
	n.must(200, "DELETE", "/v1/tenants/globex/hostnames/"+names[0], globex, nil)

	resp, err := c.BatchCreateHostnames(withToken(acme), batch(names...))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetHostnames()) != 1000 || resp.GetHostnames()[999].GetHostname() != names[999] {
		t.Fatalf("batch created %d hostnames", len(resp.GetHostnames()))
	}
	// Paging walks all of them exactly once, in order.
	var seen []string
	tokPage := ""
	for {
		page, err := c.ListHostnames(withToken(acme), &guestlistv1.ListHostnamesRequest{TenantId: "acme", PageSize: 300, PageToken: tokPage})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range page.GetHostnames() {
			seen = append(seen, h.GetHostname())
		}
		if tokPage = page.GetNextPageToken(); tokPage == "" {
			break
		}
	}
	if len(seen) != 1000 || seen[0] != names[0] || seen[999] != names[999] {
		t.Errorf("paging saw %d hostnames", len(seen))
	}
}

func TestRestartKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	tok := n.tenantWithToken("acme")
	ca := pkitest.NewCA(t, "root")
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=root", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=p", tok, map[string]any{"rules": []any{map[string]any{"name": "a", "action": "ACTION_ALLOW", "expression": "cert.verified"}}})
	h := n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, map[string]any{"hostname": "pay.acme.example", "originUrl": "http://o.example", "policyId": "p", "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"root"}}})
	n.stop()

	n2 := startNode(t, dir)
	got := n2.must(200, "GET", "/v1/tenants/acme/hostnames/pay.acme.example", tok, nil)
	if got.raw != h.raw {
		t.Errorf("after restart:\n%s\nbefore:\n%s", got.raw, h.raw)
	}
	c := n2.must(200, "GET", "/v1/tenants/acme/certificateAuthorities/root", tok, nil)
	block, _ := pem.Decode([]byte(c.body["certificatePem"].(string)))
	if cert, err := x509.ParseCertificate(block.Bytes); err != nil || !cert.Equal(ca.Cert) {
		t.Errorf("CA after restart differs: %v", err)
	}
	if l := n2.must(200, "GET", "/v1/tenants", adminToken, nil); !strings.Contains(l.raw, `"acme"`) {
		t.Errorf("tenants after restart: %s", l.raw)
	}
	// The hostname is still reserved for acme.
	other := n2.tenantWithToken("globex")
	n2.must(409, "POST", "/v1/tenants/globex/hostnames", other, map[string]any{"hostname": "pay.acme.example", "originUrl": "http://o.example", "mtls": map[string]any{"mode": "MTLS_MODE_OFF"}})
}

var _ = errors.New

// TestPagingIsStableUnderConcurrentWrites: while other hostnames are created and deleted, a paged
// listing returns every hostname that existed throughout exactly once, in order.
func TestPagingIsStableUnderConcurrentWrites(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	c := guestlistv1.NewHostnameServiceClient(n.conn)
	create := func(name string) {
		if _, err := c.CreateHostname(withToken(tok), &guestlistv1.CreateHostnameRequest{TenantId: "acme", Hostname: &guestlistv1.Hostname{
			Hostname: name, OriginUrl: "http://o.example", Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
		}}); err != nil {
			t.Error(err)
		}
	}
	stable := map[string]bool{}
	for i := range 200 {
		name := fmt.Sprintf("s%03d.acme.example", i)
		create(name)
		stable[name] = true
	}
	stop := make(chan struct{})
	churned := make(chan struct{})
	go func() {
		defer close(churned)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Names that sort between and around the stable ones.
			name := fmt.Sprintf("s%03d-x%d.acme.example", i%200, i)
			create(name)
			if _, err := c.DeleteHostname(withToken(tok), &guestlistv1.DeleteHostnameRequest{TenantId: "acme", Hostname: name}); err != nil {
				t.Error(err)
			}
		}
	}()
	seen := map[string]int{}
	last := ""
	tokPage := ""
	for {
		page, err := c.ListHostnames(withToken(tok), &guestlistv1.ListHostnamesRequest{TenantId: "acme", PageSize: 7, PageToken: tokPage})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range page.GetHostnames() {
			if h.GetHostname() <= last {
				t.Errorf("out of order: %s after %s", h.GetHostname(), last)
			}
			last = h.GetHostname()
			seen[h.GetHostname()]++
		}
		if tokPage = page.GetNextPageToken(); tokPage == "" {
			break
		}
	}
	close(stop)
	<-churned
	for name := range stable {
		if seen[name] != 1 {
			t.Errorf("%s seen %d times", name, seen[name])
		}
	}
}

// TestPlatformAuditor: the platform operator issues all-tenant auditor tokens (tenant "-"); they
// read every tenant and write nothing.
func TestPlatformAuditor(t *testing.T) {
	n := startNode(t, t.TempDir())
	acme := n.tenantWithToken("acme")
	n.tenantWithToken("globex")
	n.must(403, "POST", "/v1/tenants/-/tokens", acme, map[string]any{"role": "ROLE_AUDITOR"})
	r := n.must(400, "POST", "/v1/tenants/-/tokens", adminToken, map[string]any{"role": "ROLE_TENANT_ADMIN"})
	if fv := fieldViolations(r); len(fv) != 1 || fv[0] != "token.role" {
		t.Errorf("violations = %v", fv)
	}
	tok := n.must(200, "POST", "/v1/tenants/-/tokens", adminToken, map[string]any{"displayName": "external auditor", "role": "ROLE_AUDITOR"})
	auditor := tok.body["secret"].(string)
	for _, path := range []string{"/v1/tenants", "/v1/tenants/acme/hostnames", "/v1/tenants/globex/certificateAuthorities", "/v1/tenants/acme/events"} {
		n.must(200, "GET", path, auditor, nil)
	}
	n.must(403, "POST", "/v1/tenants/acme/policies", auditor, map[string]any{"rules": []any{map[string]any{"name": "a", "action": "ACTION_ALLOW", "expression": "true"}}})
	n.must(403, "POST", "/v1/tenants?tenantId=evil", auditor, map[string]any{"displayName": "x"})
	n.must(403, "GET", "/v1/tenants/-/tokens", auditor, nil)
	n.must(403, "GET", "/v1/tenants/-/tokens", acme, nil)
	l := n.must(200, "GET", "/v1/tenants/-/tokens", adminToken, nil)
	if !strings.Contains(l.raw, "external auditor") || strings.Contains(l.raw, "secret") {
		t.Errorf("platform tokens = %s", l.raw)
	}
	// The platform is not a tenant.
	if ts := n.must(200, "GET", "/v1/tenants", adminToken, nil); strings.Count(ts.raw, "tenantId") != 2 {
		t.Errorf("tenants = %s", ts.raw)
	}
	n.must(200, "DELETE", "/v1/tenants/-/tokens/"+tok.body["tokenId"].(string), adminToken, nil)
	n.must(401, "GET", "/v1/tenants/acme/hostnames", auditor, nil)
}
