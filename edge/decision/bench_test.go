package decision

import (
	"crypto/elliptic"
	"crypto/x509"
	"net/http"
	"runtime"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// benchSetup is a hostname with a five-rule policy (as in edge/policy's benchmark: the first four
// rules are false for the request and the fifth is true, so every rule is evaluated), and a client
// certificate issued through an intermediate that the client sends.
func benchSetup(b *testing.B) (*Hostname, []*x509.Certificate, *Request) {
	b.Helper()
	root := pkitest.NewCA(b, "Acme Device CA")
	inter := root.Intermediate(b, "Acme Issuing CA")
	leaf := inter.Client(b, "device-42", ou("devices", "eu-west"), dns("device-42.devices.acme.example", "device-42.eu-west.acme.example"), func(c *x509.Certificate) {
		c.Subject.Organization = []string{"Acme Corp"}
	})
	cfg := &configv1.HostnameConfig{
		Hostname: "pay.example.com", TenantId: "acme", Active: true, Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE,
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "root", CertificateDer: root.Cert.Raw}},
		Revocations:            []*configv1.Revocation{{CertificateAuthorityId: "root", RevocationId: "r1", SerialNumber: "1a2b3c"}},
		Policy: &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{
			rule("allow-ops-admin", allow, `"ops" in cert.subject.organizational_unit && request.path.startsWith("/admin/")`),
			rule("deny-blocked-devices", deny, `cert.dns_names.exists(n, n.endsWith(".blocked.acme.example"))`),
			rule("deny-internal", deny, `request.path.startsWith("/internal/")`),
			rule("deny-writes", deny, `request.method in ["DELETE", "PUT", "PATCH"] && !("admin" in cert.subject.organizational_unit)`),
			rule("allow-prod", allow, `cert.verified && request.headers[?"x-env"].orValue("") == "prod"`),
		}},
	}
	h, err := Prepare(cfg)
	if err != nil {
		b.Fatal(err)
	}
	hdr := http.Header{}
	hdr.Set("Accept", "application/json")
	hdr.Set("User-Agent", "device-agent/1.2")
	hdr.Set("X-Env", "prod")
	hdr.Set("X-Request-Id", "4bf92f3577b34da6a3ce929d0e0e4736")
	req := &Request{Host: "pay.example.com", Method: http.MethodGet, Path: "/api/v1/payments/123", Header: hdr}
	return h, []*x509.Certificate{leaf.Cert, inter.Cert}, req
}

// BenchmarkDecide5Rules is a whole decision: chain verification through an intermediate the
// client sent, revocation check, and the five-rule policy.
func BenchmarkDecide5Rules(b *testing.B) {
	h, peer, req := benchSetup(b)
	now := time.Now()
	if d := Decide(h, peer, req, now); d.Verdict != Allow || d.Rule != "allow-prod" {
		b.Fatalf("Decide = %+v", d)
	}
	b.ReportAllocs()
	for b.Loop() {
		Decide(h, peer, req, now)
	}
}

// BenchmarkDecidePolicyOnly is the per-request part alone: the connection's certificate verified
// once (VerifyClient), each request decided with DecideVerified.
func BenchmarkDecidePolicyOnly(b *testing.B) {
	h, peer, req := benchSetup(b)
	now := time.Now()
	v := h.VerifyClient(peer, now)
	if d := h.DecideVerified(v, req, now); d.Verdict != Allow || d.Rule != "allow-prod" {
		b.Fatalf("DecideVerified = %+v", d)
	}
	b.ReportAllocs()
	for b.Loop() {
		h.DecideVerified(v, req, now)
	}
}

// BenchmarkVerifyClient is the per-connection part alone.
func BenchmarkVerifyClient(b *testing.B) {
	h, peer, _ := benchSetup(b)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if v := h.VerifyClient(peer, now); !v.Verified() {
			b.Fatal(v.Err())
		}
	}
}

// BenchmarkDecideUntrusted is a whole decision for a self-signed certificate.
func BenchmarkDecideUntrusted(b *testing.B) {
	h, _, req := benchSetup(b)
	peer := []*x509.Certificate{selfSignedClient(b, "mallory", ou("ops")).Cert}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if d := Decide(h, peer, req, now); d.Verdict != Deny {
			b.Fatal(d)
		}
	}
}

// BenchmarkPrepare prepares a hostname with one CA, a revocation and the five-rule policy, without
// a cache (every CA parsed and every rule compiled again), and with a warm cache.
func BenchmarkPrepare(b *testing.B) {
	h, _, _ := benchSetup(b)
	b.Run("uncached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Prepare(h.Config); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		c := NewCache()
		keep, err := c.Prepare(h.Config)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Prepare(h.Config); err != nil {
				b.Fatal(err)
			}
		}
		runtime.KeepAlive(keep)
	})
}

// BenchmarkPrepareSameSubjectCAs links (linkCAs alone) 200 CAs that share a subject name, each
// with its own key, as Prepare does for a serial revocation: self-signed (200 signature checks),
// and signed by none of them (maxLinkSignatureChecks checks, then an error). Prepare itself now
// refuses more than MaxCAsPerSubject CAs of one name before it links them: "refused by Prepare"
// is that refusal (parsing the 200 CAs included).
func BenchmarkPrepareSameSubjectCAs(b *testing.B) {
	p := getPKI(b)
	for _, bc := range []struct {
		name       string
		selfSigned bool
	}{{"self-signed", true}, {"signed by none", false}} {
		b.Run(bc.name, func(b *testing.B) {
			cas := sameSubjectCAs(b, 200, bc.selfSigned)
			b.ReportAllocs()
			for b.Loop() {
				tr := &trust{}
				var roots []*x509.Certificate
				for _, ca := range cas {
					roots = append(roots, ca.Cert)
				}
				if err := tr.linkCAs(roots); (err == nil) != bc.selfSigned {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("refused by Prepare", func(b *testing.B) {
		cfg := preparedConfig(p, withCAs(sameSubjectCAs(b, 200, true)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Prepare(cfg); err == nil {
				b.Fatal("Prepare accepted 200 CAs of one subject")
			}
		}
	})
}

// verifyBenchHostname prepares a hostname in mode ENFORCE trusting root alone, without revocations
// or policy, so that a benchmark of VerifyClient measures the chain.
func verifyBenchHostname(b *testing.B, root *pkitest.CA) *Hostname {
	b.Helper()
	h, err := Prepare(&configv1.HostnameConfig{
		Hostname: "pay.example.com", TenantId: "acme", Active: true, Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE,
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "root", CertificateDer: root.Cert.Raw}},
	})
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkVerifyOrdinaryChain is the baseline of BenchmarkVerifyHostileChain: a client
// certificate issued through one intermediate that the client sends, verified (P-256 keys).
func BenchmarkVerifyOrdinaryChain(b *testing.B) {
	root := pkitest.NewCA(b, "Acme Device CA")
	inter := root.Intermediate(b, "Acme Issuing CA")
	leaf := inter.Client(b, "device-42")
	h := verifyBenchHostname(b, root)
	peer := []*x509.Certificate{leaf.Cert, inter.Cert}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if v := h.VerifyClient(peer, now); !v.Verified() {
			b.Fatal(v.Err())
		}
	}
}

// BenchmarkVerifyHostileChain verifies chains an unauthenticated client makes to cost the edge
// CPU (independent review): 9 self-signed intermediates of one name and key with distinct SANs
// (P-256 and P-521 keys), on which crypto/x509 alone builds paths until about 100 signature
// checks; and 9 intermediates naming the hostname's CA as their issuer, signed by the client. Each
// is certificate_untrusted. "unfiltered" verifies the P-521 chain as before the intermediates were
// filtered (all of them given to crypto/x509), for comparison.
func BenchmarkVerifyHostileChain(b *testing.B) {
	root := pkitest.NewCA(b, "Acme Device CA")
	h := verifyBenchHostname(b, root)
	p521 := hostileChain(b, 9, elliptic.P521(), true)
	now := time.Now()
	for _, bc := range []struct {
		name       string
		peer       []*x509.Certificate
		unfiltered bool
	}{
		{name: "9 self-signed P-256", peer: hostileChain(b, 9, elliptic.P256(), true)},
		{name: "9 self-signed P-521", peer: p521},
		{name: "9 naming the CA", peer: append([]*x509.Certificate{selfSignedClient(b, "mallory").Cert}, claimingIntermediates(b, 9, root.Cert)...)},
		{name: "9 self-signed P-521 unfiltered", peer: p521, unfiltered: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				reason := ""
				if bc.unfiltered {
					_, reason, _ = h.trust.verify(h.trust.parsed(), bc.peer[0], bc.peer[1:], now)
				} else {
					reason = h.VerifyClient(bc.peer, now).Reason()
				}
				if reason != ReasonCertificateUntrusted {
					b.Fatalf("reason %s, want %s", reason, ReasonCertificateUntrusted)
				}
			}
		})
	}
}
