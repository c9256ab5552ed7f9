package decision

import (
	"crypto/x509"
	"reflect"
	"testing"
	"time"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

func rejectInHandshake(c *configv1.HostnameConfig) { c.RejectInHandshake = true }

// TestDecideHandshake: the handshake's decision never evaluates the policy: with mode ENFORCE and
// reject_in_handshake, a missing or failing certificate is denied with its own reason and no rule,
// even under a policy with a rule that would allow the request; anything else completes the
// handshake. DecideHandshakeVerified agrees.
func TestDecideHandshake(t *testing.T) {
	p := getPKI(t)
	now := time.Now()
	// A policy that allows anyone to "/" and that a handshake must not consult.
	landing := withPolicy(rule("landing-page", allow, `request.path == "/" || request.method == ""`), rule("devices", allow, `cert.verified`))
	tests := []struct {
		name    string
		cfg     []func(*configv1.HostnameConfig)
		peer    []*x509.Certificate
		verdict Verdict
		reason  string
	}{
		{"ok/verified", fns(rejectInHandshake, landing), chain(p.leaf), Allow, ReasonHandshakeCompleted},
		{"ok/not rejecting in the handshake: completes without a certificate", fns(landing), nil, Allow, ReasonHandshakeCompleted},
		{"ok/mode REPORT never rejects in the handshake", fns(rejectInHandshake, withMode(configv1.MtlsMode_MTLS_MODE_REPORT)), nil, Allow, ReasonHandshakeCompleted},
		{"ok/mode OFF", fns(rejectInHandshake, withMode(configv1.MtlsMode_MTLS_MODE_OFF)), nil, Allow, ReasonHandshakeCompleted},
		{"fail/no certificate, whatever the policy", fns(rejectInHandshake, landing), nil, Deny, ReasonCertificateMissing},
		{"fail/another CA's certificate", fns(rejectInHandshake, landing), chain(p.otherLeaf), Deny, ReasonCertificateUntrusted},
		{"fail/expired", fns(rejectInHandshake), chain(p.expired), Deny, ReasonCertificateExpired},
		{"fail/revoked", fns(rejectInHandshake, revokeSerial("root", p.leaf.Cert)), chain(p.leaf), Deny, ReasonCertificateRevoked},
		{"fail/inactive", fns(rejectInHandshake, func(c *configv1.HostnameConfig) { c.Active = false }), chain(p.leaf), Deny, ReasonHostnameInactive},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := preparedWith(t, p, tc.cfg)
			d := DecideHandshake(h, tc.peer, now)
			if d.Verdict != tc.verdict || d.Reason != tc.reason || d.Rule != "" {
				t.Fatalf("DecideHandshake = %s, %s, %q; want %s, %s, no rule", d.Verdict, d.Reason, d.Rule, tc.verdict, tc.reason)
			}
			if d2 := h.DecideHandshakeVerified(h.VerifyClient(tc.peer, now), now); !reflect.DeepEqual(d, d2) {
				t.Fatalf("DecideHandshakeVerified = %+v; DecideHandshake = %+v", d2, d)
			}
		})
	}
	if d := DecideHandshake(nil, nil, now); d.Verdict != Deny || d.Reason != ReasonHostnameUnknown {
		t.Fatalf("DecideHandshake(nil) = %+v", d)
	}
}

// TestDecideHeaderUnknown: without the headers (the audit), a decision that depends on them is
// request_headers_unknown naming the rule, never another verdict; one that does not is the edge's.
func TestDecideHeaderUnknown(t *testing.T) {
	p := getPKI(t)
	now := time.Now()
	env := withPolicy(rule("prod-only", allow, `cert.verified && request.headers[?"x-env"].orValue("") == "prod"`))
	first := withPolicy(rule("devices", allow, `cert.verified`), rule("prod-only", allow, `request.headers["x-env"] == "prod"`))
	tests := []struct {
		name    string
		cfg     []func(*configv1.HostnameConfig)
		peer    []*x509.Certificate
		verdict Verdict
		reason  string
		rule    string
	}{
		{"fail/the rule reads them", fns(env), chain(p.leaf), Deny, ReasonRequestHeadersUnknown, "prod-only"},
		{"fail/REPORT", fns(env, withMode(configv1.MtlsMode_MTLS_MODE_REPORT)), chain(p.leaf), ReportDeny, ReasonRequestHeadersUnknown, "prod-only"},
		{"ok/absorbed: no certificate", fns(env), nil, Deny, ReasonCertificateMissing, ""},
		{"ok/an earlier rule decides", fns(first), chain(p.leaf), Allow, ReasonRuleAllow, "devices"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := preparedWith(t, p, tc.cfg)
			d := Decide(h, tc.peer, &Request{Method: "GET", Path: "/pay", HeaderUnknown: true}, now)
			if d.Verdict != tc.verdict || d.Reason != tc.reason || d.Rule != tc.rule {
				t.Fatalf("Decide = %s, %s, %q; want %s, %s, %q", d.Verdict, d.Reason, d.Rule, tc.verdict, tc.reason, tc.rule)
			}
		})
	}
}
