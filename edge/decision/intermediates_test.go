package decision

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"slices"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// hostileChain is the chain of an unauthenticated client from an independent review: a P-256 leaf
// issued by "S", then n intermediates all named "S", self-issued with one key on curve (the key
// that signed the leaf), MaxPathLen 0; with distinct, each has its own DNS SAN, so that
// crypto/x509 takes each for another CA (same subject, key and SANs make it the same one) and,
// given them all as intermediates, builds paths through them until its limit of signature checks.
func hostileChain(t testing.TB, n int, curve elliptic.Curve, distinct bool) []*x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nb, na := time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	issuer := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "S"}, NotBefore: nb, NotAfter: na,
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign}
	lt := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "device"}, NotBefore: nb, NotAfter: na,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	out := []*x509.Certificate{mustCreate(t, lt, issuer, &leafKey.PublicKey, k)}
	for i := range n {
		it := *issuer
		it.SerialNumber = big.NewInt(int64(100 + i))
		if distinct {
			it.DNSNames = []string{fmt.Sprintf("i%d.example", i)}
		}
		out = append(out, mustCreate(t, &it, issuer, &k.PublicKey, k))
	}
	return out
}

// claimingIntermediates returns n CA certificates that name ca's subject as their issuer (without
// an authority key id) but are signed by a key of the client's, as a client without ca's key
// makes them.
func claimingIntermediates(t testing.TB, n int, ca *x509.Certificate) []*x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	parent := &x509.Certificate{RawSubject: ca.RawSubject}
	var out []*x509.Certificate
	for i := range n {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(200 + i)), Subject: pkix.Name{CommonName: fmt.Sprintf("Fake Issuing CA %d", i)},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		out = append(out, mustCreate(t, tmpl, parent, &k.PublicKey, k))
	}
	return out
}

// mustCreate is create with an ECDSA signer.
func mustCreate(t testing.TB, tmpl, parent *x509.Certificate, pub any, priv *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	return create(t, tmpl, parent, pub, priv)
}

// wrongAKIIntermediate returns an intermediate CA signed by ca whose authority key id is not ca's
// subject key id, and a client certificate it issued.
func wrongAKIIntermediate(t testing.TB, ca *pkitest.CA) (*x509.Certificate, *x509.Certificate) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	parent := *ca.Cert
	parent.SubjectKeyId = []byte("not the CA's subject key id") // crypto/x509 writes it as the child's authority key id
	inter := mustCreate(t, &x509.Certificate{SerialNumber: big.NewInt(300), Subject: pkix.Name{CommonName: "Acme Odd Issuing CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, &parent, &k.PublicKey, ca.Key)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := mustCreate(t, &x509.Certificate{SerialNumber: big.NewInt(301), Subject: pkix.Name{CommonName: "device-odd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, inter, &leafKey.PublicKey, k)
	return inter, leaf
}

// TestIntermediateWithWrongAuthorityKeyID: the price of the filter. crypto/x509 verifies a chain
// through an intermediate whose authority key id is not its issuer's subject key id; the
// decision, which does not try such an issuer, finds it untrusted.
func TestIntermediateWithWrongAuthorityKeyID(t *testing.T) {
	p := getPKI(t)
	inter, leaf := wrongAKIIntermediate(t, p.root)
	pool, roots := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(inter)
	roots.AddCert(p.root.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("crypto/x509 alone: %v", err)
	}
	h := preparedWith(t, p, nil)
	if d := Decide(h, []*x509.Certificate{leaf, inter}, get("/"), time.Now()); d.Verdict != Deny || d.Reason != ReasonCertificateUntrusted {
		t.Errorf("Decide = %s, %s; want deny, certificate_untrusted", d.Verdict, d.Reason)
	}
}

func certs(cas ...*pkitest.CA) []*x509.Certificate {
	out := make([]*x509.Certificate, len(cas))
	for i, ca := range cas {
		out[i] = ca.Cert
	}
	return out
}

// namedLeaf returns a client leaf whose issuer name is issuer's subject, signed by a key of the
// client's (so that only names lead from it to issuer).
func namedLeaf(t testing.TB, issuer *x509.Certificate) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return mustCreate(t, &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "mallory"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &x509.Certificate{RawSubject: issuer.RawSubject}, &k.PublicKey, k)
}

// claimingSameName returns n CA certificates all named name, each with a key of its own, naming
// ca's subject as their issuer but signed by the client: the most candidates a client can put on
// one path of names.
func claimingSameName(t testing.TB, n int, ca *x509.Certificate, name string) []*x509.Certificate {
	t.Helper()
	parent := &x509.Certificate{RawSubject: ca.RawSubject}
	var out []*x509.Certificate
	for i := range n {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(300 + i)), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		out = append(out, mustCreate(t, tmpl, parent, &k.PublicKey, k))
	}
	return out
}

// TestCertifiedIntermediates checks the filter of the intermediates a client sends: which it
// keeps, in which order, and how many signature checks it makes.
func TestCertifiedIntermediates(t *testing.T) {
	p := getPKI(t)
	sameName := sameSubjectCAs(t, 3, true)
	otherInter := p.other.Intermediate(t, "Other Issuing CA")
	wrongAKI, _ := wrongAKIIntermediate(t, p.root)
	junk := claimingSameName(t, 17, p.root.Cert, "Fake Issuing CA")
	junkSame := claimingSameName(t, 17, sameName[0].Cert, "Fake Issuing CA")
	issuedBySame := sameName[2].Intermediate(t, "Fake Issuing CA")
	hostile := hostileChain(t, 9, elliptic.P256(), true)
	// An intermediate the CA did certify, with a P-521 key: kept, its checks weighed.
	k521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	inter521 := mustCreate(t, &x509.Certificate{SerialNumber: big.NewInt(521), Subject: pkix.Name{CommonName: "P-521 Issuing CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, p.root.Cert, &k521.PublicKey, p.root.Key)
	// Copies of the root with its name and key, self-issued, each with its own SAN: crypto/x509
	// would build paths among them (the tenant-held key of a review's finding).
	var rootCopies []*x509.Certificate
	for i := range 9 {
		rootCopies = append(rootCopies, mustCreate(t, &x509.Certificate{SerialNumber: big.NewInt(int64(600 + i)), Subject: p.root.Cert.Subject,
			DNSNames: []string{fmt.Sprintf("c%d.example", i)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, p.root.Cert, p.root.Cert.PublicKey, p.root.Key))
	}

	tests := []struct {
		name   string
		roots  []*pkitest.CA // the hostname's CAs; p.root when nil
		leaf   *x509.Certificate
		sent   []*x509.Certificate
		kept   []*x509.Certificate
		checks int
	}{
		{name: "ok/none sent", leaf: p.leaf.Cert, checks: 0},
		{name: "ok/one intermediate of the CA, its signature left to crypto/x509", leaf: p.interLeaf.Cert, sent: certs(p.inter), kept: certs(p.inter), checks: 0},
		{name: "ok/two levels, sent upside down", leaf: p.deepLeaf.Cert, sent: certs(p.deepInter, p.policyCA), kept: certs(p.deepInter, p.policyCA), checks: 2},
		{name: "ok/expired intermediate", leaf: p.expiredInterLeaf.Cert, sent: certs(p.expiredInter), kept: certs(p.expiredInter), checks: 0},
		{name: "ok/copies of the CA and repeats dropped unchecked", leaf: p.interLeaf.Cert, sent: certs(p.root, p.inter, p.inter), kept: certs(p.inter), checks: 0},
		{name: "ok/certificates off the leaf's path of names dropped unchecked", leaf: p.leaf.Cert, sent: []*x509.Certificate{p.inter.Cert, selfSignedClient(t, "device-1").Cert}, checks: 0},
		{name: "ok/intermediate of the last of 3 CAs of one name", roots: sameName, leaf: namedLeaf(t, issuedBySame.Cert), sent: certs(issuedBySame), kept: certs(issuedBySame), checks: 0},
		{name: "ok/an intermediate of the CA with a P-521 key: kept, checked first (crypto/x509 would check the leaf with its key)", leaf: namedLeaf(t, inter521), sent: []*x509.Certificate{inter521}, kept: []*x509.Certificate{inter521}, checks: 1},
		{name: "fail/the review's 9 self-signed intermediates of one name and key: one left, dropped by name", leaf: hostile[0], sent: hostile[1:], checks: 0},
		{name: "fail/9 self-issued copies of the CA (its name and key): dropped unchecked", leaf: p.interLeaf.Cert, sent: append(certs(p.inter), rootCopies...), kept: certs(p.inter), checks: 0},
		{name: "fail/intermediate of another CA", leaf: otherInter.Client(t, "d").Cert, sent: certs(otherInter), checks: 0},
		{name: "ok/one intermediate naming the CA, signed by the client: left to crypto/x509", leaf: namedLeaf(t, junk[0]), sent: junk[:1], kept: junk[:1], checks: 0},
		{name: "fail/two of one name naming the CA, signed by the client: checked", leaf: namedLeaf(t, junk[0]), sent: junk[:2], checks: 2},
		{name: "fail/authority key id is not the CA's subject key id", leaf: namedLeaf(t, wrongAKI), sent: []*x509.Certificate{wrongAKI}, checks: 0},
		{name: "fail/9 of one name naming the CA, signed by the client", leaf: namedLeaf(t, junk[0]), sent: junk[:9], checks: 9},
		{name: "fail/9 of one name naming 3 CAs of one name, signed by the client", roots: sameName, leaf: namedLeaf(t, junkSame[0]), sent: junkSame[:9], checks: 27},
		// Beyond the budget (more than a client may send, to reach it): the rest is dropped, a
		// genuine intermediate after the budget too.
		{name: "fail/17 naming 3 CAs of one name, then a genuine one", roots: sameName, leaf: namedLeaf(t, junkSame[0]), sent: append(slices.Clip(junkSame), issuedBySame.Cert), checks: intermediateBudget},
		{name: "ok/a genuine one, then 17 naming 3 CAs of one name", roots: sameName, leaf: namedLeaf(t, junkSame[0]), sent: append(certs(issuedBySame), junkSame...), kept: certs(issuedBySame), checks: 1 + intermediateBudget},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			roots := tc.roots
			if roots == nil {
				roots = []*pkitest.CA{p.root}
			}
			cfg := hostnameConfig(p)
			cfg.CertificateAuthorities = nil
			for i, ca := range roots {
				withCA(fmt.Sprintf("ca-%d", i), ca)(cfg)
			}
			h, err := Prepare(cfg)
			if err != nil {
				t.Fatal(err)
			}
			kept, checks := certifiedIntermediates(h.trust.roots(), tc.leaf, tc.sent)
			if !slices.EqualFunc(kept, tc.kept, (*x509.Certificate).Equal) {
				t.Errorf("kept %s, want %s", names(kept), names(tc.kept))
			}
			if checks != tc.checks {
				t.Errorf("made %d signature checks, want %d", checks, tc.checks)
			}
		})
	}
}

// TestCertifiedIntermediatesBudgetWeighsKeys: the budget is a cost, not a count: against CAs
// with P-384 keys (9 P-256 checks each), fewer checks fit than against P-256 ones.
func TestCertifiedIntermediatesBudgetWeighsKeys(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "P-384 Root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	root := mustCreate(t, tmpl, tmpl, &k.PublicKey, k)
	cfg := hostnameConfig(getPKI(t))
	cfg.CertificateAuthorities = []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "p384", CertificateDer: root.Raw}}
	h, err := Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	junk := claimingSameName(t, 9, root, "Fake Issuing CA")
	if _, checks := certifiedIntermediates(h.trust.roots(), namedLeaf(t, junk[0]), junk); checks != (intermediateBudget+8)/9 {
		t.Fatalf("made %d checks against a P-384 CA, want %d", checks, (intermediateBudget+8)/9)
	}
}

func names(cs []*x509.Certificate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Subject.CommonName
	}
	return out
}

// TestHostileChains: the review's hostile chains, and others a client can make without a CA's
// key, give the verdict they gave before the intermediates were filtered: certificate_untrusted,
// in the handshake and in HTTP, in every mode that looks at certificates.
func TestHostileChains(t *testing.T) {
	p := getPKI(t)
	chains := map[string][]*x509.Certificate{
		"9 self-signed intermediates of one name and key, distinct SANs": hostileChain(t, 9, elliptic.P256(), true),
		"9 self-signed intermediates of one name and key":                hostileChain(t, 9, elliptic.P256(), false),
		"leaf and 9 intermediates naming the CA, signed by the client":   append([]*x509.Certificate{selfSignedClient(t, "mallory").Cert}, claimingIntermediates(t, 9, p.root.Cert)...),
		"a genuine intermediate among 8 self-signed ones":                append(append([]*x509.Certificate{p.interLeaf.Cert}, hostileChain(t, 8, elliptic.P256(), true)[1:]...), p.inter.Cert),
	}
	now := time.Now()
	for name, peer := range chains {
		for _, mode := range []configv1.MtlsMode{configv1.MtlsMode_MTLS_MODE_ENFORCE, configv1.MtlsMode_MTLS_MODE_REPORT} {
			t.Run(name+"/"+mode.String(), func(t *testing.T) {
				h := preparedWith(t, p, fns(withMode(mode), rejectInHandshake))
				want, wantVerdict := ReasonCertificateUntrusted, Deny
				if mode == configv1.MtlsMode_MTLS_MODE_REPORT {
					wantVerdict = ReportDeny
				}
				if peer[0] == p.interLeaf.Cert {
					// The genuine chain still verifies through the genuine intermediate.
					want, wantVerdict = ReasonCertificateVerified, Allow
				}
				if d := Decide(h, peer, get("/"), now); d.Verdict != wantVerdict || d.Reason != want {
					t.Errorf("Decide = %s, %s; want %s, %s", d.Verdict, d.Reason, wantVerdict, want)
				}
				if mode == configv1.MtlsMode_MTLS_MODE_ENFORCE {
					wantHandshake := Deny
					if want == ReasonCertificateVerified {
						want, wantHandshake = ReasonHandshakeCompleted, Allow
					}
					if d := DecideHandshake(h, peer, now); d.Verdict != wantHandshake || d.Reason != want {
						t.Errorf("DecideHandshake = %s, %s; want %s, %s", d.Verdict, d.Reason, wantHandshake, want)
					}
				}
			})
		}
	}
}
