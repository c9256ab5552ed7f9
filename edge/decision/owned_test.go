package decision

import (
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestShareLists: ShareLists gives configurations of equal CAs one list of CA messages (one copy of
// the certificates) and of equal rules one list of rules, only where the content is equal, and
// never changes what a configuration says or what is decided.
func TestShareLists(t *testing.T) {
	p := getPKI(t)
	// decoded returns cfg as an edge gets it: decoded from the wire, with its own copy of every
	// byte.
	decoded := func(name string, opts ...func(*configv1.HostnameConfig)) *configv1.HostnameConfig {
		cfg := hostnameConfig(p)
		cfg.Hostname = name
		for _, o := range opts {
			o(cfg)
		}
		b, err := proto.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		out := &configv1.HostnameConfig{}
		if err := proto.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	withUnknown := func(c *configv1.HostnameConfig) {
		ca := c.CertificateAuthorities[0]
		ca.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	}
	shares := func(a, b *configv1.HostnameConfig) bool {
		x, y := a.GetCertificateAuthorities(), b.GetCertificateAuthorities()
		return len(x) > 0 && len(x) == len(y) && &x[0] == &y[0]
	}
	sharesRules := func(a, b *configv1.HostnameConfig) bool {
		x, y := a.GetPolicy().GetRules(), b.GetPolicy().GetRules()
		return len(x) > 0 && len(x) == len(y) && &x[0] == &y[0]
	}
	sharesRevs := func(a, b *configv1.HostnameConfig) bool {
		x, y := a.GetRevocations(), b.GetRevocations()
		return len(x) > 0 && len(x) == len(y) && &x[0] == &y[0]
	}
	revoked := func(c *configv1.HostnameConfig) { // new messages every time
		revokeSerial("root", p.leaf.Cert)(c)
		revokeFingerprint("root", p.opsLeaf.Cert)(c)
	}
	rules := func(c *configv1.HostnameConfig) { // new messages every time: cases modify them
		withPolicy(rule("ops", allow, `"ops" in cert.subject.organizational_unit`), rule("devices", deny, "cert.verified"))(c)
	}
	unknownRule := func(c *configv1.HostnameConfig) {
		r := c.Policy.Rules[1]
		r.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	}

	tests := []struct {
		name        string
		first, next []func(*configv1.HostnameConfig)
		share       bool
		shareRules  bool
		shareRevs   bool
	}{
		{name: "ok/the same revocations", share: true, shareRevs: true,
			first: []func(*configv1.HostnameConfig){revoked}, next: []func(*configv1.HostnameConfig){revoked}},
		{name: "fail/a revocation of another id", share: true,
			first: []func(*configv1.HostnameConfig){revoked},
			next:  []func(*configv1.HostnameConfig){revoked, func(c *configv1.HostnameConfig) { c.Revocations[1].RevocationId = "other" }}},
		{name: "fail/a revocation more", share: true,
			first: []func(*configv1.HostnameConfig){revoked},
			next:  []func(*configv1.HostnameConfig){revoked, revokeSerial("root", p.interLeaf.Cert)}},
		{name: "fail/a revocation with unknown fields", share: true,
			first: []func(*configv1.HostnameConfig){revoked},
			next: []func(*configv1.HostnameConfig){revoked, func(c *configv1.HostnameConfig) {
				c.Revocations[0].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
			}}},
		{name: "fail/the first's revocation has unknown fields", share: true,
			first: []func(*configv1.HostnameConfig){revoked, func(c *configv1.HostnameConfig) {
				c.Revocations[0].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
			}},
			next: []func(*configv1.HostnameConfig){revoked}},
		{name: "ok/the same CA", share: true},
		{name: "ok/the same rules", share: true, shareRules: true,
			first: []func(*configv1.HostnameConfig){rules},
			next:  []func(*configv1.HostnameConfig){rules, func(c *configv1.HostnameConfig) { c.Policy.PolicyId = "p2" }}},
		{name: "ok/the same rules, other CAs", shareRules: true,
			first: []func(*configv1.HostnameConfig){rules},
			next:  []func(*configv1.HostnameConfig){rules, withCA("other", p.other)}},
		{name: "fail/rules in another order", share: true,
			first: []func(*configv1.HostnameConfig){rules},
			next: []func(*configv1.HostnameConfig){rules, func(c *configv1.HostnameConfig) {
				c.Policy.Rules[0], c.Policy.Rules[1] = c.Policy.Rules[1], c.Policy.Rules[0]
			}}},
		{name: "fail/a rule of another action", share: true,
			first: []func(*configv1.HostnameConfig){rules},
			next:  []func(*configv1.HostnameConfig){rules, func(c *configv1.HostnameConfig) { c.Policy.Rules[1].Action = allow }}},
		{name: "fail/a rule with unknown fields", share: true,
			first: []func(*configv1.HostnameConfig){rules},
			next:  []func(*configv1.HostnameConfig){rules, unknownRule}},
		{name: "ok/the same two CAs and different revocations and policies", share: true,
			first: []func(*configv1.HostnameConfig){withCA("other", p.other), revokeSerial("root", p.leaf.Cert)},
			next:  []func(*configv1.HostnameConfig){withCA("other", p.other), withPolicy(rule("r", allow, "true"))}},
		{name: "fail/the same CAs in another order",
			first: []func(*configv1.HostnameConfig){withCA("other", p.other)},
			next: []func(*configv1.HostnameConfig){func(c *configv1.HostnameConfig) {
				c.CertificateAuthorities = nil
				withCA("other", p.other)(c)
				withCA("root", p.root)(c)
			}}},
		{name: "fail/one CA more", next: []func(*configv1.HostnameConfig){withCA("other", p.other)}},
		{name: "fail/the same CA twice", next: []func(*configv1.HostnameConfig){func(c *configv1.HostnameConfig) {
			c.CertificateAuthorities = append(c.CertificateAuthorities, proto.CloneOf(c.CertificateAuthorities[0]))
		}}},
		{name: "fail/a rule more", share: true,
			first: []func(*configv1.HostnameConfig){rules},
			next: []func(*configv1.HostnameConfig){rules, func(c *configv1.HostnameConfig) {
				c.Policy.Rules = append(c.Policy.Rules, &configv1.Rule{Name: "more", Action: allow, Expression: "true"})
			}}},
		{name: "fail/the first's rule has unknown fields", share: true,
			first: []func(*configv1.HostnameConfig){rules, unknownRule},
			next:  []func(*configv1.HostnameConfig){rules}},
		{name: "fail/the same certificate under another id",
			next: []func(*configv1.HostnameConfig){func(c *configv1.HostnameConfig) { c.CertificateAuthorities[0].CertificateAuthorityId = "root2" }}},
		{name: "fail/another certificate",
			next: []func(*configv1.HostnameConfig){func(c *configv1.HostnameConfig) { c.CertificateAuthorities[0].CertificateDer = p.other.Cert.Raw }}},
		{name: "fail/the next has unknown fields", next: []func(*configv1.HostnameConfig){withUnknown}},
		{name: "fail/the first has unknown fields", first: []func(*configv1.HostnameConfig){withUnknown}},
		{name: "fail/mode OFF (no trust prepared)",
			first: []func(*configv1.HostnameConfig){withMode(configv1.MtlsMode_MTLS_MODE_OFF)},
			next:  []func(*configv1.HostnameConfig){withMode(configv1.MtlsMode_MTLS_MODE_OFF)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCache()
			first, next := decoded("a.example.com", tt.first...), decoded("b.example.com", tt.next...)
			firstWas, nextWas := proto.Clone(first), proto.Clone(next)
			h1, err := c.Prepare(first)
			if err != nil {
				t.Fatal(err)
			}
			h1.ShareLists()
			h2, err := c.Prepare(next)
			if err != nil {
				t.Fatal(err)
			}
			h2.ShareLists()
			if got := shares(first, next); got != tt.share {
				t.Errorf("the CA lists shared: %v, want %v", got, tt.share)
			}
			if got := sharesRules(first, next); got != tt.shareRules {
				t.Errorf("the rules shared: %v, want %v", got, tt.shareRules)
			}
			if got := sharesRevs(first, next); got != tt.shareRevs {
				t.Errorf("the revocations shared: %v, want %v", got, tt.shareRevs)
			}
			for _, x := range []struct{ got, was proto.Message }{{first, firstWas}, {next, nextWas}, {h1.Config, firstWas}, {h2.Config, nextWas}} {
				if !proto.Equal(x.got, x.was) {
					t.Errorf("a configuration changed:\n got %v\nwant %v", x.got, x.was)
				}
			}
			// The decisions are those of configurations prepared on their own.
			for i, cfg := range []*configv1.HostnameConfig{nextWas.(*configv1.HostnameConfig), firstWas.(*configv1.HostnameConfig)} {
				alone, err := Prepare(cfg)
				if err != nil {
					t.Fatal(err)
				}
				h := []*Hostname{h2, h1}[i]
				for _, peer := range [][]*x509.Certificate{{p.leaf.Cert}, {p.opsLeaf.Cert}, {p.interLeaf.Cert, p.inter.Cert}, {p.otherLeaf.Cert}} {
					now := time.Now()
					if got, want := Decide(h, peer, get("/"), now), Decide(alone, peer, get("/"), now); got.Verdict != want.Verdict || got.Reason != want.Reason || got.Rule != want.Rule {
						t.Errorf("%s: %+v, prepared alone %+v", cfg.GetHostname(), got, want)
					}
				}
			}
		})
	}

	t.Run("ok/Prepare changes nothing", func(t *testing.T) {
		c := NewCache()
		first, next := decoded("a.example.com", rules, revoked), decoded("b.example.com", rules, revoked)
		for _, cfg := range []*configv1.HostnameConfig{first, next} {
			if _, err := c.Prepare(cfg); err != nil {
				t.Fatal(err)
			}
		}
		if shares(first, next) || sharesRules(first, next) || sharesRevs(first, next) {
			t.Error("Prepare replaced a list of a configuration it does not own")
		}
	})
	t.Run("ok/trusts of the same CAs hold one copy of the certificates", func(t *testing.T) {
		// Other revocations make another trust, parsed from the cache's list of these CAs.
		c := NewCache()
		first, next := decoded("a.example.com"), decoded("b.example.com", revokeSerial("root", p.leaf.Cert))
		h1, err := c.Prepare(first)
		if err != nil {
			t.Fatal(err)
		}
		h2, err := c.Prepare(next)
		if err != nil {
			t.Fatal(err)
		}
		if h1.trust == h2.trust {
			t.Fatal("one trust for other revocations")
		}
		if r1, r2 := h1.trust.roots()[0].Raw, h2.trust.roots()[0].Raw; &r1[0] != &r2[0] {
			t.Error("each trust holds its own copy of the CA certificate")
		}
	})
	t.Run("ok/without a Cache nothing is shared", func(t *testing.T) {
		first, next := decoded("a.example.com", rules), decoded("b.example.com", rules)
		for _, cfg := range []*configv1.HostnameConfig{first, next} {
			h, err := Prepare(cfg)
			if err != nil {
				t.Fatal(err)
			}
			h.ShareLists()
		}
		if shares(first, next) || sharesRules(first, next) {
			t.Error("hostnames prepared without a Cache share a list")
		}
	})
}
