package decision

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// noAKI returns a copy of parent without a subject key id, so that certificates created with it as
// the parent carry no authority key id (older PKIs; RFC 5280 only SHOULDs it).
func noAKI(parent *x509.Certificate) *x509.Certificate {
	p := *parent
	p.SubjectKeyId = nil
	return &p
}

func ecKey(c elliptic.Curve) *ecdsa.PrivateKey {
	k, _ := ecdsa.GenerateKey(c, rand.Reader)
	return k
}

// TestSingleCostlyIntermediate: a single intermediate with a P-384 or P-521 key, which the filter
// checks against the hostname's CAs before crypto/x509 sees it: validity reasons and revocations
// are as before (review of 5a7ac9a).
func TestSingleCostlyIntermediate(t *testing.T) {
	now := time.Now()
	valid := [2]time.Time{now.Add(-time.Hour), now.Add(24 * time.Hour)}
	expired := [2]time.Time{now.Add(-48 * time.Hour), now.Add(-time.Hour)}
	notYet := [2]time.Time{now.Add(time.Hour), now.Add(48 * time.Hour)}
	for _, tc := range []struct {
		name        string
		rootV, intV [2]time.Time
		sameSubject int // roots of the root's name (signer last)
		revoke      string
		want        string
	}{
		{"valid", valid, valid, 1, "", ReasonCertificateVerified},
		{"intermediate expired", valid, expired, 1, "", ReasonCertificateExpired},
		{"intermediate not yet valid", valid, notYet, 1, "", ReasonCertificateNotYetValid},
		{"root expired", expired, valid, 1, "", ReasonCertificateExpired},
		{"root not yet valid", notYet, valid, 1, "", ReasonCertificateNotYetValid},
		{"3 roots of one name, signer last", valid, valid, 3, "", ReasonCertificateVerified},
		{"3 roots of one name, signer last, intermediate expired", valid, expired, 3, "", ReasonCertificateExpired},
		{"intermediate's serial revoked under root", valid, valid, 1, "inter-serial", ReasonCertificateRevoked},
		{"leaf's serial revoked under root", valid, valid, 1, "leaf-serial", ReasonCertificateRevoked},
		{"intermediate by fingerprint", valid, valid, 3, "inter-fp", ReasonCertificateRevoked},
	} {
		for _, ik := range []struct {
			name string
			key  crypto.Signer
		}{{"P-384", ecKey(elliptic.P384())}, {"P-521", ecKey(elliptic.P521())}} {
			var roots []*x509.Certificate
			var rk *ecdsa.PrivateKey
			for range tc.sameSubject {
				rk = ecKey(elliptic.P384())
				roots = append(roots, create(t, caTmpl("Single Root", tc.rootV[0], tc.rootV[1]), nil, &rk.PublicKey, rk))
			}
			root := roots[len(roots)-1]
			inter := create(t, caTmpl("Single Issuing CA", tc.intV[0], tc.intV[1]), root, ik.key.Public(), rk)
			lk := ecKey(elliptic.P256())
			leaf := create(t, leafTmpl("device", valid[0], valid[1]), inter, &lk.PublicKey, ik.key)
			cfg := hostnameConfig(getPKI(t))
			cfg.CertificateAuthorities = nil
			for i, r := range roots {
				cfg.CertificateAuthorities = append(cfg.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: fmt.Sprintf("ca-%d", i), CertificateDer: r.Raw})
			}
			last := fmt.Sprintf("ca-%d", len(roots)-1)
			switch tc.revoke {
			case "inter-serial":
				revokeSerial(last, inter)(cfg)
			case "leaf-serial":
				revokeSerial(last, leaf)(cfg)
			case "inter-fp":
				revokeFingerprint("ca-0", inter)(cfg)
			}
			h, err := Prepare(cfg)
			if err != nil {
				t.Fatal(err)
			}
			peer := []*x509.Certificate{leaf, inter}
			d := Decide(h, peer, get("/"), now)
			kept, checks := certifiedIntermediates(h.trust.roots(), leaf, peer[1:])
			t.Logf("%s, %s intermediate: %s (kept %d, %d checks)", tc.name, ik.name, d.Reason, len(kept), checks)
			if d.Reason != tc.want {
				t.Errorf("%s, %s: got %s, want %s", tc.name, ik.name, d.Reason, tc.want)
			}
		}
	}
}

// TestCostlyParentChecked: a certified intermediate whose key costs more than the budget has left
// is still checked once as a parent: a P-521 intermediate after one failed P-384 check (a rollover
// of its root's name, no authority key id) was never checked, and the chain was untrusted where
// crypto/x509 alone verifies it (review of 5a7ac9a).
func TestCostlyParentChecked(t *testing.T) {
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	for _, tc := range []struct {
		name      string
		rootsN    int // roots of one name (P-384), the signer last; the first intermediate has no AKI
		upperKey  crypto.Signer
		upperName string
	}{
		{"2 P-384 roots of one name (rollover), signer 2nd -> P-521 -> P-256 -> leaf", 2, ecKey(elliptic.P521()), "P-521"},
	} {
		var roots []*x509.Certificate
		var rk crypto.Signer
		if tc.rootsN == 0 {
			rk = ecKey(elliptic.P256())
			roots = append(roots, create(t, caTmpl("Costly Root", nb, na), nil, rk.Public(), rk))
		}
		for range tc.rootsN {
			rk = ecKey(elliptic.P384())
			roots = append(roots, create(t, caTmpl("Costly Root", nb, na), nil, rk.Public(), rk))
		}
		i1 := create(t, caTmpl("Costly Upper CA", nb, na), noAKI(roots[len(roots)-1]), tc.upperKey.Public(), rk)
		k2 := ecKey(elliptic.P256())
		i2 := create(t, caTmpl("Costly Issuing CA", nb, na), i1, &k2.PublicKey, tc.upperKey)
		lk := ecKey(elliptic.P256())
		leaf := create(t, leafTmpl("device", nb, na), i2, &lk.PublicKey, k2)
		h := hostWithRoots(t, roots...)
		peer := []*x509.Certificate{leaf, i2, i1}
		x := x509Alone(roots, peer, now)
		d := Decide(h, peer, get("/"), now)
		kept, checks := certifiedIntermediates(h.trust.roots(), leaf, peer[1:])
		t.Logf("%s: crypto/x509 alone err=%v; Decide %s %s; kept %d of 2 (%d checks)", tc.name, x, d.Verdict, d.Reason, len(kept), checks)
		if x == nil && d.Reason != ReasonCertificateVerified {
			t.Errorf("%s: crypto/x509 alone verifies, Decide gives %s", tc.name, d.Reason)
		}
	}
}

// TestTenantTreeOfCopiesRefused: a tenant holding its CA's key certifies 3 levels of 3 copies of
// one intermediate each (renewals with one P-521 key per level), which crypto/x509 would explore
// path by path (0.17-0.21 s of CPU for each client sending them, a review measured); the edge
// refuses the chain as untrusted before crypto/x509 sees it. One copy a level verifies.
func TestTenantTreeOfCopiesRefused(t *testing.T) {
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	rk := ecKey(elliptic.P256())
	root := create(t, caTmpl("Tenant Root", nb, na), nil, &rk.PublicKey, rk)
	build := func(copies int) []*x509.Certificate {
		parents, pk := []*x509.Certificate{root}, crypto.Signer(rk)
		var sent []*x509.Certificate
		for level := range 3 {
			k := ecKey(elliptic.P521())
			var level_ []*x509.Certificate
			for i := range copies {
				c := create(t, caTmpl(fmt.Sprintf("Tenant Level %d", level), nb, na), parents[i%len(parents)], &k.PublicKey, pk)
				level_ = append(level_, c)
			}
			sent = append(level_, sent...)
			parents, pk = level_, k
		}
		lk := ecKey(elliptic.P256())
		leaf := create(t, leafTmpl("device", nb, na), parents[0], &lk.PublicKey, pk)
		return append([]*x509.Certificate{leaf}, sent...)
	}
	h := hostWithRoots(t, root)
	if d := Decide(h, build(1), get("/"), now); d.Reason != ReasonCertificateVerified {
		t.Fatalf("one copy a level: %s", d.Reason)
	}
	peer := build(3)
	kept, _ := certifiedIntermediates(h.trust.roots(), peer[0], peer[1:])
	v := h.VerifyClient(peer, now)
	if v.Reason() != ReasonCertificateUntrusted || !strings.Contains(v.Err().Error(), "P-256 checks") {
		t.Fatalf("3 copies a level (%d kept, work %d): %s, %v", len(kept), func() int { w, _ := pathWork(peer[0], kept, []*x509.Certificate{root}, now); return w }(), v.Reason(), v.Err())
	}
}
