package decision

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"net/url"
	"testing"
	"time"
)

// TestSANCopiesCycleRefused: a tenant holding its root's key certifies two CAs, A and B, each in
// 3 certificates of one subject and key differing only in a URI SAN (A1 by the root, A2 and A3 by
// B; B1 to B3 by A). crypto/x509's alreadyInChain compares the SANs too, so it re-enters A and B
// through the other copies, every check succeeding, to its 100-check limit (140 ms with A on P-521,
// 19 chains); the estimate compared subject and key only and saw 1 chain (review of 61c85a8). Now
// refused as untrusted; without the SANs (the same CA repeated), verified.
func TestSANCopiesCycleRefused(t *testing.T) {
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	rk := ecKey(elliptic.P256())
	root := create(t, caTmpl("Tenant Root", nb, na), nil, &rk.PublicKey, rk)
	h := hostWithRoots(t, root)
	for _, tc := range []struct {
		name   string
		ca, cb elliptic.Curve
		sans   bool
		want   string
	}{
		{"fail/A P-256, B P-256, SANs", elliptic.P256(), elliptic.P256(), true, ReasonCertificateUntrusted},
		{"fail/A P-521, B P-256, SANs", elliptic.P521(), elliptic.P256(), true, ReasonCertificateUntrusted},
		{"ok/A P-384, B P-384, no SANs", elliptic.P384(), elliptic.P384(), false, ReasonCertificateVerified},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ka, kb := ecKey(tc.ca), ecKey(tc.cb)
			tmpl := func(cn string, i int) *x509.Certificate {
				tm := caTmpl(cn, nb, na)
				if tc.sans {
					u, _ := url.Parse(fmt.Sprintf("urn:copy:%d", i))
					tm.URIs = []*url.URL{u}
				}
				return tm
			}
			a1 := create(t, tmpl("Tenant CA A", 1), root, &ka.PublicKey, rk)
			var bs []*x509.Certificate
			for i := range 3 {
				bs = append(bs, create(t, tmpl("Tenant CA B", i+1), a1, &kb.PublicKey, ka))
			}
			a2 := create(t, tmpl("Tenant CA A", 2), bs[0], &ka.PublicKey, kb)
			a3 := create(t, tmpl("Tenant CA A", 3), bs[0], &ka.PublicKey, kb)
			lk := ecKey(elliptic.P256())
			leaf := create(t, leafTmpl("device", nb, na), a1, &lk.PublicKey, ka)
			peer := []*x509.Certificate{leaf, a1, a2, a3, bs[0], bs[1], bs[2]}
			if !tc.sans {
				peer = []*x509.Certificate{leaf, a1, a2, bs[0], bs[1]}
			}
			if v := h.VerifyClient(peer, now); v.Reason() != tc.want {
				t.Fatalf("%s (%v); want %s", v.Reason(), v.Err(), tc.want)
			}
		})
	}
}

// TestRolloverBundles: bundles carrying the old and the new certificate of each CA level (new keys,
// same names) and roots renewed or rolled over: verified as with crypto/x509 alone. The path-work
// estimate followed every certificate of the issuer's name, signer or not, and refused the larger
// ones ("more than 8 chains", "about 198 P-256 checks"; review of 61c85a8).
func TestRolloverBundles(t *testing.T) {
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	for _, tc := range []struct {
		name   string
		curve  elliptic.Curve
		levels []int // copies (keys) per CA level, the issuing CA first
		roots  int   // roots of one name: keys old, old (renewed), new...
	}{
		{"P-256, issuing and policy CA renewed, 2 roots", elliptic.P256(), []int{2, 2}, 2},
		{"P-256, issuing and policy CA renewed, 3 roots", elliptic.P256(), []int{2, 2}, 3},
		{"P-256, 3 levels renewed, 2 roots", elliptic.P256(), []int{2, 2, 2}, 2},
		{"P-384, 8 levels, issuing CA renewed, 2 roots", elliptic.P384(), []int{2, 1, 1, 1, 1, 1, 1, 1}, 2},
		{"P-384, 8 levels, issuing CA renewed, 3 roots", elliptic.P384(), []int{2, 1, 1, 1, 1, 1, 1, 1}, 3},
		{"P-384, 4 levels, issuing CA renewed, 3 roots", elliptic.P384(), []int{2, 1, 1, 1}, 3},
		{"P-384, 3 levels, 2 renewed, 2 roots", elliptic.P384(), []int{2, 2, 1}, 2},
	} {
		// Roots: key 0 (old) twice (renewal, same key), then new keys.
		var roots []*x509.Certificate
		var rootKeys []*ecdsa.PrivateKey
		old := ecKey(tc.curve)
		for i := range tc.roots {
			k := old
			if i == 2 || (i == 1 && tc.roots == 2) {
				k = ecKey(tc.curve)
			}
			roots = append(roots, create(t, caTmpl("Org Root", nb.Add(-time.Duration(i)*time.Hour), na), nil, &k.PublicKey, k))
			rootKeys = append(rootKeys, k)
		}
		// Levels from the top: copy j of a level signed by copy j (or the last) of the level above.
		parents, pks := roots, rootKeys
		var sent []*x509.Certificate
		for l := len(tc.levels) - 1; l >= 0; l-- {
			var lv []*x509.Certificate
			var lk []*ecdsa.PrivateKey
			for j := range tc.levels[l] {
				k := ecKey(tc.curve)
				pi := len(parents) - tc.levels[l] + j // the newest parents sign the newest
				if pi < 0 {
					pi = 0
				}
				lv = append(lv, create(t, caTmpl(fmt.Sprintf("Org CA level %d", l), nb, na), parents[pi], &k.PublicKey, pks[pi]))
				lk = append(lk, k)
			}
			sent = append(lv, sent...)
			parents, pks = lv, lk
		}
		lkey := ecKey(elliptic.P256())
		leaf := create(t, leafTmpl("device", nb, na), parents[len(parents)-1], &lkey.PublicKey, pks[len(pks)-1])
		peer := append([]*x509.Certificate{leaf}, sent...)
		h := hostWithRoots(t, roots...)
		xerr := x509Alone(roots, peer, now)
		d := Decide(h, peer, get("/"), now)
		if xerr != nil || d.Reason != ReasonCertificateVerified {
			t.Errorf("%s: legitimate chain refused: %s (%v)", tc.name, d.Reason, h.VerifyClient(peer, now).Err())
		}
	}
}
