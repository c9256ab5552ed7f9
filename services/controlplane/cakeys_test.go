package controlplane_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"guestlist.dev/edge/pkitest"
)

// caPEMWithKey returns, in PEM, a CA certificate named cn (valid now) for the public key pub,
// signed by another (P-256) key: an upload needs no private key.
func caPEMWithKey(t testing.TB, cn string, pub any) string {
	t.Helper()
	return pkitest.PEM(pkitest.CAForKey(t, cn, pub))
}

// TestCAKeyRefusedAtUpload: a CA whose key the edge does not accept (decision.CheckCAKey) is
// refused at upload with INVALID_ARGUMENT naming certificate_pem and the reason, and nothing is
// written.
func TestCAKeyRefusedAtUpload(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	modulus := func(bits int) *big.Int {
		m, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits)))
		if err != nil {
			t.Fatal(err)
		}
		return m.SetBit(m.SetBit(m, bits-1, 1), 0, 1)
	}
	for _, tc := range []struct {
		name, pem, reason string
	}{
		{"fail/P-521", caPEMWithKey(t, "P-521 root", &p521.PublicKey), "ECDSA on P-521, which is refused because checking a P-521 signature costs the edge about 40 times as much as a P-256 one"},
		{"fail/RSA-1024", caPEMWithKey(t, "small root", &rsa.PublicKey{N: modulus(1024), E: 65537}), "RSA of 1024 bits"},
		{"fail/RSA-262144 exponent 2^31-1", caPEMWithKey(t, "huge root", &rsa.PublicKey{N: modulus(262144), E: 1<<31 - 1}), "RSA of 262144 bits"},
		{"fail/RSA-2048 exponent 3", caPEMWithKey(t, "e3 root", &rsa.PublicKey{N: modulus(2048), E: 3}), "RSA with public exponent 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := n.streamRevision("acme")
			r := n.do("POST", "/v1/tenants/acme/certificateAuthorities", tok, map[string]any{"certificatePem": tc.pem})
			if r.status != 400 {
				t.Fatalf("status %d, want 400: %s", r.status, r.raw)
			}
			if f := fieldViolations(r); len(f) != 1 || f[0] != "certificate_authority.certificate_pem" {
				t.Errorf("field violations %v, want certificate_authority.certificate_pem", f)
			}
			if !strings.Contains(r.raw, "the certificate's key is not accepted: ") || !strings.Contains(r.raw, tc.reason) {
				t.Errorf("the answer does not say why (%q): %s", tc.reason, r.raw)
			}
			if after := n.streamRevision("acme"); after != before {
				t.Errorf("the refused upload wrote events: revision %d -> %d", before, after)
			}
		})
	}
}

// TestHostnameCAsPerSubject: a hostname create, batch create or update whose
// mtls.certificate_authority_ids reference more than 3 CAs with one subject is refused with
// INVALID_ARGUMENT naming the field and the CAs that share the subject, and writes nothing; 3 are
// accepted, and so are 4 references when two of them are the same certificate.
func TestHostnameCAsPerSubject(t *testing.T) {
	n := startNode(t, t.TempDir())
	tok := n.tenantWithToken("acme")
	for i := range 4 {
		ca := pkitest.NewCA(t, "Same Name CA")
		n.must(200, "POST", fmt.Sprintf("/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=same-%d", i), tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
		if i == 0 {
			// The same certificate under another id: one CA of that subject for the edge.
			n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=same-0-again", tok, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
		}
	}
	other := pkitest.NewCA(t, "Other CA")
	n.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=other", tok, map[string]any{"certificatePem": pkitest.PEM(other.Cert)})
	hostname := func(name string, ids ...string) map[string]any {
		return map[string]any{"hostname": name, "originUrl": "http://127.0.0.1:8081", "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": ids}}
	}
	const reason = `certificate authorities \"same-0\", \"same-1\", \"same-2\", \"same-3\" share the subject \"CN=Same Name CA,O=guestlist tests\"; a hostname may trust at most 3 certificate authorities of one subject`
	refused := func(t *testing.T, r reply, field string) {
		t.Helper()
		if r.status != 400 {
			t.Fatalf("status %d, want 400: %s", r.status, r.raw)
		}
		if f := fieldViolations(r); len(f) != 1 || f[0] != field {
			t.Errorf("field violations %v, want [%s]: %s", f, field, r.raw)
		}
		if !strings.Contains(r.raw, reason) {
			t.Errorf("the answer does not say which CAs share the subject: %s", r.raw)
		}
	}
	four := []string{"other", "same-0", "same-1", "same-2", "same-3"}

	t.Run("fail/create", func(t *testing.T) {
		before := n.streamRevision("acme")
		refused(t, n.do("POST", "/v1/tenants/acme/hostnames", tok, hostname("a.acme.example", four...)), "hostname.mtls.certificate_authority_ids")
		if after := n.streamRevision("acme"); after != before {
			t.Errorf("the refused creation wrote events: revision %d -> %d", before, after)
		}
	})
	t.Run("fail/batch create", func(t *testing.T) {
		before := n.streamRevision("acme")
		r := n.do("POST", "/v1/tenants/acme/hostnames:batchCreate", tok, map[string]any{"requests": []any{
			map[string]any{"hostname": hostname("b.acme.example", "same-0", "same-1", "same-2")},
			map[string]any{"hostname": hostname("c.acme.example", four...)},
		}})
		refused(t, r, "requests[1].hostname.mtls.certificate_authority_ids")
		if after := n.streamRevision("acme"); after != before {
			t.Errorf("the refused batch wrote events: revision %d -> %d", before, after)
		}
	})
	t.Run("ok/3 of one subject, and one certificate under two ids", func(t *testing.T) {
		n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, hostname("d.acme.example", "other", "same-0", "same-1", "same-2"))
		n.must(200, "POST", "/v1/tenants/acme/hostnames", tok, hostname("e.acme.example", "same-0", "same-0-again", "same-1", "same-2"))
	})
	t.Run("fail/update", func(t *testing.T) {
		before := n.streamRevision("acme")
		r := n.do("PATCH", "/v1/tenants/acme/hostnames/d.acme.example?updateMask=mtls", tok, hostname("d.acme.example", four...))
		refused(t, r, "hostname.mtls.certificate_authority_ids")
		if after := n.streamRevision("acme"); after != before {
			t.Errorf("the refused update wrote events: revision %d -> %d", before, after)
		}
		got := n.must(200, "GET", "/v1/tenants/acme/hostnames/d.acme.example", tok, nil)
		if strings.Contains(got.raw, "same-3") {
			t.Errorf("the refused update changed the hostname: %s", got.raw)
		}
	})
}
