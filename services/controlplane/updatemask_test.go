package controlplane_test

import (
	"fmt"
	"strings"
	"testing"

	"guestlist.dev/edge/pkitest"
)

// TestPatchMasksAsRESTUsersWriteThem: PATCH over REST with the mask the gateway derives from a
// body holding only some of mtls's fields, and with masks in the JSON's lowerCamelCase: each
// changes what it names and keeps the rest. Before, the derived "mtls.mode" and "originUrl" were
// refused as fields that cannot be updated (a new user's review).
func TestPatchMasksAsRESTUsersWriteThem(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	ca := pkitest.NewCA(t, "Acme Devices")
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	h := n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, map[string]any{
		"hostname": "pay.example.com", "originUrl": "http://127.0.0.1:8081",
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}, "rejectInHandshake": true},
	})
	etag := h.body["etag"]
	mtls := func(r reply) map[string]any { m, _ := r.body["mtls"].(map[string]any); return m }

	// The body names mtls.mode only: the CAs and reject_in_handshake stay.
	p := n.must(200, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com", tok, map[string]any{"mtls": map[string]any{"mode": "MTLS_MODE_REPORT"}, "etag": etag})
	if m := mtls(p); m["mode"] != "MTLS_MODE_REPORT" || fmt.Sprint(m["certificateAuthorityIds"]) != "[devices]" || m["rejectInHandshake"] != true {
		t.Fatalf("mode alone: %s", p.raw)
	}
	// A lowerCamelCase mask: only the origin changes, whatever else the body holds.
	p = n.must(200, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=originUrl", tok, map[string]any{"originUrl": "https://origin.example.net", "mtls": map[string]any{"mode": "MTLS_MODE_OFF"}, "etag": p.body["etag"]})
	if p.body["originUrl"] != "https://origin.example.net" || mtls(p)["mode"] != "MTLS_MODE_REPORT" {
		t.Fatalf("originUrl mask: %s", p.raw)
	}
	p = n.must(200, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=mtls.rejectInHandshake", tok, map[string]any{"mtls": map[string]any{}, "etag": p.body["etag"]})
	if m := mtls(p); m["rejectInHandshake"] == true || m["mode"] != "MTLS_MODE_REPORT" {
		t.Fatalf("mtls.rejectInHandshake mask: %s", p.raw)
	}
	// What the hostname would end with must hold together: ENFORCE without CAs is refused, and
	// nothing is written.
	before := n.streamRevision("acme")
	n.must(400, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=mtls.certificate_authority_ids", tok, map[string]any{"mtls": map[string]any{}, "etag": p.body["etag"]})
	n.must(400, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=state", tok, map[string]any{"etag": p.body["etag"]})
	if after := n.streamRevision("acme"); after != before {
		t.Errorf("a refused PATCH wrote: revision %d -> %d", before, after)
	}
	// Policies too.
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=ops", tok, map[string]any{"displayName": "ops", "rules": []any{
		map[string]any{"name": "ops", "action": "ACTION_ALLOW", "expression": `cert.verified`},
	}})
	pol := n.must(200, "PATCH", "/v1/tenants/acme/policies/ops?updateMask=displayName", tok, map[string]any{"displayName": "operators"})
	if pol.body["displayName"] != "operators" {
		t.Fatalf("policy displayName mask: %s", pol.raw)
	}
}

// TestPatchThatChangesNothingWritesNothing: a PATCH that would leave a hostname or a policy as it
// is answers it as it stands, writes no event and keeps its etag, so that the history holds
// changes only and a client holding the etag is not made stale (a new user's review: the README's
// own PATCH of an unchanged origin wrote an event). A PATCH that changes something still writes,
// and a stale etag is still refused.
func TestPatchThatChangesNothingWritesNothing(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	ca := pkitest.NewCA(t, "Acme Devices")
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=ops", tok, map[string]any{"displayName": "ops", "rules": []any{
		map[string]any{"name": "ops", "action": "ACTION_ALLOW", "expression": `cert.verified`},
		map[string]any{"name": "admin", "action": "ACTION_DENY", "expression": `request.path.startsWith("/admin")`},
	}})
	h := n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, map[string]any{
		"hostname": "pay.example.com", "originUrl": "http://127.0.0.1:8081", "policyId": "ops",
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	})
	etag := h.body["etag"]
	before := n.streamRevision("acme")

	for _, tc := range []struct {
		name, path string
		body       map[string]any
	}{
		{"ok/the same origin", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=originUrl", map[string]any{"originUrl": "http://127.0.0.1:8081", "etag": etag}},
		{"ok/the same mtls", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=mtls", map[string]any{"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}}, "etag": etag}},
		{"ok/the name alone", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=hostname", map[string]any{"hostname": "other.example.com"}},
		{"ok/the whole hostname again", "/v1/tenants/acme/hostnames/pay.example.com", map[string]any{
			"originUrl": "http://127.0.0.1:8081", "policyId": "ops",
			"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}}}},
	} {
		r := n.must(200, "PATCH", tc.path, tok, tc.body)
		if r.body["etag"] != etag || r.body["originUrl"] != "http://127.0.0.1:8081" || r.body["hostname"] != "pay.example.com" {
			t.Errorf("%s: %s; want the hostname as it stands, etag %v", tc.name, r.raw, etag)
		}
	}
	pol := n.must(200, "GET", "/v1/tenants/acme/policies/ops", tok, nil)
	r := n.must(200, "PATCH", "/v1/tenants/acme/policies/ops", tok, map[string]any{"displayName": "ops", "rules": pol.body["rules"], "etag": pol.body["etag"]})
	if r.body["etag"] != pol.body["etag"] {
		t.Errorf("ok/the same policy: %s; want etag %v", r.raw, pol.body["etag"])
	}
	if after := n.streamRevision("acme"); after != before {
		t.Fatalf("PATCHes that changed nothing wrote: revision %d -> %d", before, after)
	}

	// fail/a stale etag is refused even when nothing would change.
	n.must(409, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=originUrl", tok, map[string]any{"originUrl": "http://127.0.0.1:8081", "etag": "1"})
	// ok/a change writes, once; the same PATCH again is then stale.
	c := n.must(200, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=originUrl", tok, map[string]any{"originUrl": "http://localhost:8081", "etag": etag})
	if c.body["etag"] == etag || c.body["originUrl"] != "http://localhost:8081" {
		t.Errorf("a change: %s", c.raw)
	}
	if after := n.streamRevision("acme"); after != before+1 {
		t.Errorf("a change wrote %d events, want 1", after-before)
	}
	n.must(409, "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=originUrl", tok, map[string]any{"originUrl": "http://localhost:8081", "etag": etag})
	// ok/reordered rules are a change.
	rules, _ := pol.body["rules"].([]any)
	r = n.must(200, "PATCH", "/v1/tenants/acme/policies/ops?updateMask=rules", tok, map[string]any{"rules": []any{rules[1], rules[0]}, "etag": pol.body["etag"]})
	if r.body["etag"] == pol.body["etag"] {
		t.Errorf("reordered rules wrote nothing: %s", r.raw)
	}
}

// TestEtagThatIsNotOneIsRefused: an etag that is not one the API returns ("abc", an HTTP-style
// quoted etag) is INVALID_ARGUMENT naming the field, not ABORTED saying it is stale, and nothing
// is written (a new user's review).
func TestEtagThatIsNotOneIsRefused(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	n.must(200, "POST", "/v1/tenants/acme/policies?policyId=ops", tok, map[string]any{"displayName": "ops", "rules": []any{
		map[string]any{"name": "ops", "action": "ACTION_ALLOW", "expression": `cert.verified`},
	}})
	cur := n.must(200, "GET", "/v1/tenants/acme/policies/ops", tok, nil).body["etag"]
	before := n.streamRevision("acme")
	for _, tc := range []struct {
		name, method, path, field string
		body                      map[string]any
	}{
		{"fail/letters in a PATCH", "PATCH", "/v1/tenants/acme/policies/ops?updateMask=displayName", "policy.etag", map[string]any{"displayName": "x", "etag": "abc"}},
		{"fail/an HTTP-style quoted etag", "PATCH", "/v1/tenants/acme/policies/ops?updateMask=displayName", "policy.etag", map[string]any{"displayName": "x", "etag": `"2"`}},
		{"fail/letters in a DELETE", "DELETE", "/v1/tenants/acme/policies/ops?etag=abc", "etag", nil},
		// The current etag with a leading zero, and a number beyond any revision, are no etags
		// the API returns either: not "stale; the current etag is 2".
		{"fail/a leading zero", "PATCH", "/v1/tenants/acme/policies/ops?updateMask=displayName", "policy.etag", map[string]any{"displayName": "x", "etag": "0" + fmt.Sprint(cur)}},
		{"fail/a leading zero in a DELETE", "DELETE", "/v1/tenants/acme/policies/ops?etag=0" + fmt.Sprint(cur), "etag", nil},
		{"fail/beyond a uint64", "PATCH", "/v1/tenants/acme/policies/ops?updateMask=displayName", "policy.etag", map[string]any{"displayName": "x", "etag": "18446744073709551616"}},
	} {
		r := n.must(400, tc.method, tc.path, tok, tc.body)
		if f := fieldViolations(r); len(f) != 1 || f[0] != tc.field || !strings.Contains(r.raw, "not an etag of this API") {
			t.Errorf("%s: %s; want a violation of %s", tc.name, r.raw, tc.field)
		}
	}
	if after := n.streamRevision("acme"); after != before {
		t.Errorf("refused requests wrote: revision %d -> %d", before, after)
	}
	// ok/a numeric etag still works.
	pol := n.must(200, "GET", "/v1/tenants/acme/policies/ops", tok, nil)
	pol = n.must(200, "PATCH", "/v1/tenants/acme/policies/ops?updateMask=displayName", tok, map[string]any{"displayName": "operators", "etag": pol.body["etag"]})
	// ok/the largest uint64 is an etag (stale here), not refused as malformed.
	n.must(409, "PATCH", "/v1/tenants/acme/policies/ops?updateMask=displayName", tok, map[string]any{"displayName": "ops", "etag": "18446744073709551615"})
	n.must(409, "DELETE", "/v1/tenants/acme/policies/ops?etag=0", tok, nil)
}

// TestPatchThatChangesOneFieldWrites: a PATCH that changes any one field the update event carries
// (the policy, the CAs, a rule's action or expression, the number of rules) writes one event and
// the hostname or policy has the change: the comparison that lets an unchanged PATCH write nothing
// must not take a real change for none (which would lose it while answering 200).
func TestPatchThatChangesOneFieldWrites(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	for _, id := range []string{"devices", "laptops"} {
		ca := pkitest.NewCA(t, "Acme "+id)
		n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId="+id, tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	}
	rule := func(name, action, expr string) map[string]any {
		return map[string]any{"name": name, "action": action, "expression": expr}
	}
	for _, id := range []string{"ops", "dev"} {
		n.must(200, "POST", "/v1/tenants/acme/policies?policyId="+id, tok, map[string]any{"displayName": id, "rules": []any{
			rule("ops", "ACTION_ALLOW", `cert.verified`), rule("admin", "ACTION_DENY", `request.path.startsWith("/admin")`),
		}})
	}
	n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, map[string]any{
		"hostname": "pay.example.com", "originUrl": "http://127.0.0.1:8081", "policyId": "ops",
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	})
	for _, tc := range []struct {
		name, path string
		body       map[string]any
		field      string
		want       string
	}{
		{"ok/another policy", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=policyId", map[string]any{"policyId": "dev"}, "policyId", "dev"},
		{"ok/no policy", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=policyId", map[string]any{}, "policyId", "<nil>"},
		{"ok/another CA", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=mtls.certificateAuthorityIds", map[string]any{"mtls": map[string]any{"certificateAuthorityIds": []string{"laptops"}}}, "mtls", "map[certificateAuthorityIds:[laptops] mode:MTLS_MODE_ENFORCE]"},
		{"ok/one more CA", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=mtls.certificateAuthorityIds", map[string]any{"mtls": map[string]any{"certificateAuthorityIds": []string{"laptops", "devices"}}}, "mtls", "map[certificateAuthorityIds:[laptops devices] mode:MTLS_MODE_ENFORCE]"},
		{"ok/a rule's action", "/v1/tenants/acme/policies/ops?updateMask=rules", map[string]any{"rules": []any{
			rule("ops", "ACTION_DENY", `cert.verified`), rule("admin", "ACTION_DENY", `request.path.startsWith("/admin")`),
		}}, "rules", `[map[action:ACTION_DENY expression:cert.verified name:ops] map[action:ACTION_DENY expression:request.path.startsWith("/admin") name:admin]]`},
		{"ok/a rule's expression", "/v1/tenants/acme/policies/ops?updateMask=rules", map[string]any{"rules": []any{
			rule("ops", "ACTION_DENY", `!cert.verified`), rule("admin", "ACTION_DENY", `request.path.startsWith("/admin")`),
		}}, "rules", `[map[action:ACTION_DENY expression:!cert.verified name:ops] map[action:ACTION_DENY expression:request.path.startsWith("/admin") name:admin]]`},
		{"ok/a rule fewer", "/v1/tenants/acme/policies/ops?updateMask=rules", map[string]any{"rules": []any{
			rule("ops", "ACTION_DENY", `!cert.verified`),
		}}, "rules", `[map[action:ACTION_DENY expression:!cert.verified name:ops]]`},
		{"ok/a rule more", "/v1/tenants/acme/policies/ops?updateMask=rules", map[string]any{"rules": []any{
			rule("ops", "ACTION_DENY", `!cert.verified`), rule("all", "ACTION_ALLOW", `true`),
		}}, "rules", `[map[action:ACTION_DENY expression:!cert.verified name:ops] map[action:ACTION_ALLOW expression:true name:all]]`},
		{"ok/another name", "/v1/tenants/acme/policies/ops?updateMask=displayName", map[string]any{"displayName": "operators"}, "displayName", "operators"},
	} {
		before := n.streamRevision("acme")
		r := n.must(200, "PATCH", tc.path, tok, tc.body)
		get := n.must(200, "GET", strings.SplitN(tc.path, "?", 2)[0], tok, nil)
		if got := fmt.Sprint(get.body[tc.field]); got != tc.want || fmt.Sprint(r.body[tc.field]) != tc.want {
			t.Errorf("%s: %s is %s (answered %v), want %s", tc.name, tc.field, got, r.body[tc.field], tc.want)
		}
		if after := n.streamRevision("acme"); after != before+1 {
			t.Errorf("%s: wrote %d events, want 1", tc.name, after-before)
		}
	}
}
