package decision

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// x509Alone verifies peer with crypto/x509 only: the hostname's CAs as roots, every
// intermediate the client sent in the pool.
func x509Alone(roots []*x509.Certificate, peer []*x509.Certificate, now time.Time) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, c := range peer[1:] {
		ip.AddCert(c)
	}
	_, err := peer[0].Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

func hostWithRoots(t testing.TB, roots ...*x509.Certificate) *Hostname {
	t.Helper()
	cfg := hostnameConfig(getPKI(t))
	cfg.CertificateAuthorities = nil
	for i, r := range roots {
		cfg.CertificateAuthorities = append(cfg.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: fmt.Sprintf("ca-%d", i), CertificateDer: r.Raw})
	}
	h, err := Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// create signs tmpl with signer (parent nil: self-signed) for pub.
func create(t testing.TB, tmpl, parent *x509.Certificate, pub any, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var chainSerial int64 = 1 << 40

func caTmpl(cn string, nb, na time.Time) *x509.Certificate {
	chainSerial++
	return &x509.Certificate{SerialNumber: big.NewInt(chainSerial), Subject: pkix.Name{CommonName: cn}, NotBefore: nb, NotAfter: na,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
}

func leafTmpl(cn string, nb, na time.Time) *x509.Certificate {
	chainSerial++
	return &x509.Certificate{SerialNumber: big.NewInt(chainSerial), Subject: pkix.Name{CommonName: cn}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}

// TestReviewRepeatsByIssuerName: "repeats" are dropped by subject, key and issuer NAME. Two
// roots of one name with different keys (a root key rollover that kept the DN; 2 such CAs is what
// MaxCAsPerSubject is for) certify one intermediate: two certificates of one subject and key with
// the same issuer name but different issuers (different authority key ids and signatures). The
// filter keeps the first sent and drops the other unchecked.
// TestRootRolloverSameName: roots of one name with two keys (a rollover), both certifying one
// intermediate: whichever certificate of the intermediate the client sends first, and with the
// old root expired, the chain verifies as with crypto/x509 alone. Dropping "repeats" of one
// subject, key and issuer name kept the first and made it untrusted or expired (review).
func TestRootRolloverSameName(t *testing.T) {
	now := time.Now()
	r1 := pkitest.NewCA(t, "Rollover Root", pkitest.Validity(now.Add(-2*365*24*time.Hour), now.Add(-time.Hour))) // old root, expired
	r2 := pkitest.NewCA(t, "Rollover Root")                                                                      // new root, new key, same DN
	i1 := r1.Intermediate(t, "Rollover Issuing CA")
	i2 := recertify(t, i1, r2)
	leaf := i1.Client(t, "device")
	if string(r1.Cert.RawSubject) != string(r2.Cert.RawSubject) || string(i1.Cert.RawIssuer) != string(i2.Cert.RawIssuer) {
		t.Fatal("setup")
	}
	for _, tc := range []struct {
		name  string
		roots []*x509.Certificate
		peer  []*x509.Certificate
	}{
		{"hostname trusts the new root; client sends old then new", []*x509.Certificate{r2.Cert}, []*x509.Certificate{leaf.Cert, i1.Cert, i2.Cert}},
		{"hostname trusts the new root; client sends new then old", []*x509.Certificate{r2.Cert}, []*x509.Certificate{leaf.Cert, i2.Cert, i1.Cert}},
		{"hostname trusts both (old expired); old then new", []*x509.Certificate{r1.Cert, r2.Cert}, []*x509.Certificate{leaf.Cert, i1.Cert, i2.Cert}},
	} {
		h := hostWithRoots(t, tc.roots...)
		x := x509Alone(tc.roots, tc.peer, now)
		d := Decide(h, tc.peer, get("/"), now)
		t.Logf("%s: crypto/x509 alone: err=%v; Decide: %s %s", tc.name, x, d.Verdict, d.Reason)
		if x == nil && d.Reason != ReasonCertificateVerified {
			t.Errorf("%s: crypto/x509 alone verifies, Decide gives %s", tc.name, d.Reason)
		}
	}
}

// TestReviewRenewedIntermediateSameIssuer: an intermediate re-issued by the same root with the
// same key (a renewal, or a re-issue with a fixed extension). A client bundle holding both the old
// and the new certificate verifies with crypto/x509; the filter keeps whichever came first.
// TestRenewedIntermediateSameIssuer: an intermediate renewed by its root (same key), the old
// certificate expired or allowing serverAuth only, sent before the renewed one: verified, as with
// crypto/x509 alone (review).
func TestRenewedIntermediateSameIssuer(t *testing.T) {
	p := getPKI(t)
	now := time.Now()
	old := p.root.Intermediate(t, "Renewed Issuing CA", pkitest.Validity(now.Add(-400*24*time.Hour), now.Add(-time.Hour)))
	renewed := recertify(t, old, p.root, pkitest.Validity(now.Add(-time.Hour), now.Add(365*24*time.Hour)))
	leaf := old.Client(t, "device")
	// EKU variant: the old certificate was for serverAuth only; the re-issue has no EKU.
	srv := p.root.Intermediate(t, "Reissued Issuing CA", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })
	fixed := recertify(t, srv, p.root)
	srvLeaf := srv.Client(t, "device-2")
	h := hostWithRoots(t, p.root.Cert)
	for _, tc := range []struct {
		name string
		peer []*x509.Certificate
	}{
		{"expired, then renewed", []*x509.Certificate{leaf.Cert, old.Cert, renewed.Cert}},
		{"renewed, then expired", []*x509.Certificate{leaf.Cert, renewed.Cert, old.Cert}},
		{"serverAuth-only, then fixed", []*x509.Certificate{srvLeaf.Cert, srv.Cert, fixed.Cert}},
	} {
		x := x509Alone([]*x509.Certificate{p.root.Cert}, tc.peer, now)
		d := Decide(h, tc.peer, get("/"), now)
		t.Logf("%s: crypto/x509 alone: err=%v; Decide: %s %s", tc.name, x, d.Verdict, d.Reason)
		if x == nil && d.Reason != ReasonCertificateVerified {
			t.Errorf("%s: crypto/x509 alone verifies, Decide gives %s", tc.name, d.Reason)
		}
	}
}

// ecChain makes a root with rootCurve and n intermediates below it with the curves given (the last
// issues the leaf), and returns root, intermediates (leaf first order: the leaf's issuer first)
// and a leaf.
func ecChain(t testing.TB, rootCurve elliptic.Curve, curves []elliptic.Curve) (*x509.Certificate, []*x509.Certificate, *x509.Certificate) {
	t.Helper()
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	rk, _ := ecdsa.GenerateKey(rootCurve, rand.Reader)
	root := create(t, caTmpl("EC Root", nb, na), nil, &rk.PublicKey, rk)
	parent, pk := root, rk
	var inters []*x509.Certificate
	for i, c := range curves {
		k, _ := ecdsa.GenerateKey(c, rand.Reader)
		ic := create(t, caTmpl(fmt.Sprintf("EC Inter %d", i), nb, na), parent, &k.PublicKey, pk)
		inters = append([]*x509.Certificate{ic}, inters...)
		parent, pk = ic, k
	}
	lk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := create(t, leafTmpl("device", nb, na), parent, &lk.PublicKey, pk)
	return root, inters, leaf
}

// TestReviewBudgetCutsLegitimateChains: the budget of 48 P-256 checks, weighed by the parent's
// key, cuts chains a CA may issue: 6 or more P-384 levels under a P-384 root, 7 under a P-256
// root, and 2 P-521 intermediates (intermediates' keys are not limited by CheckCAKey).
// TestDeepChainsWithinTheBudget: legitimate deep chains with costly keys (up to 9 P-384
// intermediates, two P-521 ones) verify: only failed checks count against the budget (review).
func TestDeepChainsWithinTheBudget(t *testing.T) {
	p384 := func(n int) []elliptic.Curve {
		out := make([]elliptic.Curve, n)
		for i := range out {
			out[i] = elliptic.P384()
		}
		return out
	}
	now := time.Now()
	for _, tc := range []struct {
		name      string
		rootCurve elliptic.Curve
		curves    []elliptic.Curve
	}{
		{"P-384 root, 5 P-384 intermediates", elliptic.P384(), p384(5)},
		{"P-384 root, 6 P-384 intermediates", elliptic.P384(), p384(6)},
		{"P-384 root, 9 P-384 intermediates", elliptic.P384(), p384(9)},
		{"P-256 root, 6 P-384 intermediates", elliptic.P256(), p384(6)},
		{"P-256 root, 7 P-384 intermediates", elliptic.P256(), p384(7)},
		{"P-256 root, P-521, P-521, P-256 intermediates", elliptic.P256(), []elliptic.Curve{elliptic.P521(), elliptic.P521(), elliptic.P256()}},
	} {
		root, inters, leaf := ecChain(t, tc.rootCurve, tc.curves)
		h := hostWithRoots(t, root)
		peer := append([]*x509.Certificate{leaf}, inters...)
		x := x509Alone([]*x509.Certificate{root}, peer, now)
		d := Decide(h, peer, get("/"), now)
		kept, checks := certifiedIntermediates(h.trust.roots(), leaf, inters)
		t.Logf("%s: crypto/x509 alone: err=%v; Decide: %s %s (filter kept %d of %d, %d checks)", tc.name, x, d.Verdict, d.Reason, len(kept), len(inters), checks)
		if x == nil && d.Reason != ReasonCertificateVerified {
			t.Errorf("%s: crypto/x509 alone verifies, Decide gives %s", tc.name, d.Reason)
		}
	}
}

// TestReviewRevocationThroughRepeats: revocations through intermediates sent in any order,
// duplicated, with the root also sent, stay certificate_revoked; and a revoked copy dropped as a
// repeat (informational: the client could leave it out anyway).
// TestRevocationThroughRepeats: revocations by serial and fingerprint through intermediates sent
// upside down, repeated, with the root, or re-issued, stay certificate_revoked (review; the last
// case, the revoked copy sent after its re-issue, verifies through the re-issue, which the client
// could have sent alone anyway).
func TestRevocationThroughRepeats(t *testing.T) {
	p := getPKI(t)
	now := time.Now()
	base := func(fs ...func(*configv1.HostnameConfig)) *Hostname {
		cfg := hostnameConfig(p)
		for _, f := range fs {
			f(cfg)
		}
		h, err := Prepare(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	reissued := recertify(t, p.deepInter, p.policyCA)
	for _, tc := range []struct {
		name string
		h    *Hostname
		peer []*x509.Certificate
		want string
	}{
		{"policy CA's serial under root, sent upside down with dupes and root", base(revokeSerial("root", p.policyCA.Cert)),
			[]*x509.Certificate{p.deepLeaf.Cert, p.root.Cert, p.policyCA.Cert, p.deepInter.Cert, p.policyCA.Cert, p.deepInter.Cert}, ReasonCertificateRevoked},
		{"leaf serial under root through 2 levels", base(revokeSerial("root", p.deepLeaf.Cert)),
			[]*x509.Certificate{p.deepLeaf.Cert, p.policyCA.Cert, p.deepInter.Cert}, ReasonCertificateRevoked},
		{"deep inter by fingerprint, sent first", base(revokeFingerprint("root", p.deepInter.Cert)),
			[]*x509.Certificate{p.deepLeaf.Cert, p.deepInter.Cert, reissued.Cert, p.policyCA.Cert}, ReasonCertificateRevoked},
		{"deep inter by fingerprint, its re-issue sent first (dropped as repeat)", base(revokeFingerprint("root", p.deepInter.Cert)),
			[]*x509.Certificate{p.deepLeaf.Cert, reissued.Cert, p.deepInter.Cert, p.policyCA.Cert}, ""},
	} {
		d := Decide(tc.h, tc.peer, get("/"), now)
		t.Logf("%s: Decide %s %s", tc.name, d.Verdict, d.Reason)
		if tc.want != "" && d.Reason != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, d.Reason, tc.want)
		}
	}
}

// TestReviewCrossCertifiedBothSent: a cross-certified CA's two certificates sent together, in
// both orders, after one expired; the root also sent; name-constrained intermediate.
// TestCrossCertifiedBothSent: cross-certified intermediates and roots sent in either order, and
// name constraints, give crypto/x509's verdict (review).
func TestCrossCertifiedBothSent(t *testing.T) {
	p := getPKI(t)
	at := time.Now().Add(afterCrossExpiry)
	roots := []*x509.Certificate{p.crossR1.Cert, p.crossR2.Cert}
	h := hostWithRoots(t, roots...)
	nc := p.root.Intermediate(t, "Constrained CA", func(c *x509.Certificate) { c.PermittedDNSDomains = []string{"devices.acme.example"} })
	okLeaf := nc.Client(t, "d", dns("a.devices.acme.example"))
	badLeaf := nc.Client(t, "d", dns("a.evil.example"))
	hr := hostWithRoots(t, p.root.Cert)
	for _, tc := range []struct {
		name  string
		h     *Hostname
		roots []*x509.Certificate
		peer  []*x509.Certificate
		at    time.Time
	}{
		{"R1 (expired) then R2", h, roots, []*x509.Certificate{p.crossLeaf.Cert, p.crossInterR1.Cert, p.crossInterR2.Cert}, at},
		{"R2 then R1 (expired), roots sent", h, roots, []*x509.Certificate{p.crossLeaf.Cert, p.crossR2.Cert, p.crossInterR2.Cert, p.crossInterR1.Cert, p.crossR1.Cert}, at},
		{"name constraints ok, with policy CA chain and dupes", hr, []*x509.Certificate{p.root.Cert}, []*x509.Certificate{okLeaf.Cert, nc.Cert, p.policyCA.Cert, nc.Cert}, time.Now()},
		{"name constraints violated", hr, []*x509.Certificate{p.root.Cert}, []*x509.Certificate{badLeaf.Cert, nc.Cert, p.inter.Cert}, time.Now()},
	} {
		x := x509Alone(tc.roots, tc.peer, tc.at)
		d := Decide(tc.h, tc.peer, get("/"), tc.at)
		t.Logf("%s: crypto/x509 alone err=%v; Decide %s %s", tc.name, x, d.Verdict, d.Reason)
		if (x == nil) != (d.Reason == ReasonCertificateVerified) {
			t.Errorf("%s: differs", tc.name)
		}
	}
}
