package decision

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestBridgeCrossCertification: a bridge CA cross-certified both ways with an organisation's root
// and a partner's, and two roots cross-certifying each other, with P-256 and P-384 keys: verified,
// as with crypto/x509 alone. The path-work estimate followed the loops crypto/x509 cuts
// (alreadyInChain) and refused the P-384 bridges (review of 197154b).
func TestBridgeCrossCertification(t *testing.T) {
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		name := curve.Params().Name
		key := func() *ecdsa.PrivateKey { return ecKey(curve) }
		cert := func(cn string, pub *ecdsa.PrivateKey, parent *x509.Certificate, signer crypto.Signer) *x509.Certificate {
			return create(t, caTmpl(cn, nb, na), parent, &pub.PublicKey, signer)
		}
		// Bridge: organisation A's root and partner root B cross-certify with a bridge CA, both ways.
		ka, kb, kbr, ki := key(), key(), key(), ecKey(elliptic.P256())
		rootA := cert("Org A Root", ka, nil, ka)
		rootB := cert("Partner B Root", kb, nil, kb)
		bridgeSelf := cert("Bridge CA", kbr, nil, kbr)
		bridgeByA := cert("Bridge CA", kbr, rootA, ka)
		bridgeByB := cert("Bridge CA", kbr, rootB, kb)
		aByBridge := cert("Org A Root", ka, bridgeSelf, kbr)
		bByBridge := cert("Partner B Root", kb, bridgeSelf, kbr)
		issuing := create(t, caTmpl("Org A Issuing CA", nb, na), rootA, &ki.PublicKey, ka)
		lk := ecKey(elliptic.P256())
		leaf := create(t, leafTmpl("device", nb, na), issuing, &lk.PublicKey, ki)

		// Two roots that cross-certify each other, both trusted.
		kc, kd := key(), key()
		rootC := cert("Root C", kc, nil, kc)
		rootD := cert("Root D", kd, nil, kd)
		cByD := cert("Root C", kc, rootD, kd)
		dByC := cert("Root D", kd, rootC, kc)
		ki2 := ecKey(elliptic.P256())
		issuing2 := create(t, caTmpl("Root C Issuing CA", nb, na), rootC, &ki2.PublicKey, kc)
		leaf2 := create(t, leafTmpl("device", nb, na), issuing2, &lk.PublicKey, ki2)

		for _, tc := range []struct {
			name  string
			roots []*x509.Certificate
			peer  []*x509.Certificate
		}{
			{"bridge, hostname trusts B", []*x509.Certificate{rootB}, []*x509.Certificate{leaf, issuing, aByBridge, bridgeByB, bridgeByA, bByBridge}},
			{"bridge, hostname trusts A and B", []*x509.Certificate{rootA, rootB}, []*x509.Certificate{leaf, issuing, aByBridge, bridgeByB, bridgeByA, bByBridge}},
			{"mutual cross-certs C<->D, both trusted", []*x509.Certificate{rootC, rootD}, []*x509.Certificate{leaf2, issuing2, dByC, cByD}},
			{"mutual cross-certs C<->D, D trusted", []*x509.Certificate{rootD}, []*x509.Certificate{leaf2, issuing2, cByD, dByC}},
		} {
			h := hostWithRoots(t, tc.roots...)
			x := x509Alone(tc.roots, tc.peer, now)
			kept, _ := certifiedIntermediates(h.trust.roots(), tc.peer[0], tc.peer[1:])
			work, chains := pathWork(tc.peer[0], kept, h.trust.roots(), now)
			d := Decide(h, tc.peer, get("/"), now)
			if x != nil || d.Reason != ReasonCertificateVerified {
				t.Errorf("%s, %s: crypto/x509 alone: %v; Decide gives %s (kept %d of %d, path work %d, %d chains)", name, tc.name, x, d.Reason, len(kept), len(tc.peer)-1, work, chains)
			}
		}
	}
}

// TestTenantCopiesMultiplyingChainsRefused: a tenant's copies of three levels of intermediates (3,
// 3 and 2 certificates of one name and key each, P-256) make 18 chains, each of which crypto/x509
// checks for name constraints and policies (with 4,000 permitted subtrees and a leaf of 6,000
// names, 70-97 ms a review measured, 286 ms with its root renewed 3 times): refused as untrusted,
// naming the chains. One copy a level verifies.
func TestTenantCopiesMultiplyingChainsRefused(t *testing.T) {
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	rk := ecKey(elliptic.P256())
	root := create(t, caTmpl("Tenant Root", nb, na), nil, &rk.PublicKey, rk)
	build := func(copies []int) []*x509.Certificate {
		parents, pk := []*x509.Certificate{root}, crypto.Signer(rk)
		var sent []*x509.Certificate
		for level, n := range copies {
			k := ecKey(elliptic.P256())
			var these []*x509.Certificate
			for i := range n {
				these = append(these, create(t, caTmpl(fmt.Sprintf("Tenant Level %d", level), nb, na), parents[i%len(parents)], &k.PublicKey, pk))
			}
			sent = append(these, sent...)
			parents, pk = these, k
		}
		lk := ecKey(elliptic.P256())
		return append([]*x509.Certificate{create(t, leafTmpl("device", nb, na), parents[0], &lk.PublicKey, pk)}, sent...)
	}
	h := hostWithRoots(t, root)
	if d := Decide(h, build([]int{1, 1, 1}), get("/"), now); d.Reason != ReasonCertificateVerified {
		t.Fatalf("one copy a level: %s", d.Reason)
	}
	if d := Decide(h, build([]int{2, 2, 2}), get("/"), now); d.Reason != ReasonCertificateVerified {
		t.Fatalf("two copies a level (renewals; 8 chains): %s", d.Reason)
	}
	v := h.VerifyClient(build([]int{3, 3, 2}), now)
	if v.Reason() != ReasonCertificateUntrusted || !strings.Contains(v.Err().Error(), "chains") {
		t.Fatalf("3, 3 and 2 copies: %s, %v", v.Reason(), v.Err())
	}
}
