package enforce

import (
	"crypto/x509"
	"testing"
	"time"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
)

func TestVerifyCache(t *testing.T) {
	ca := pkitest.NewCA(t, "Root")
	inter := ca.Intermediate(t, "Inter")
	leaf := inter.Client(t, "device", pkitest.Validity(time.Now().Add(-time.Hour), time.Now().Add(time.Hour)))
	prep := func() *decision.Hostname {
		h, err := decision.Prepare(host(hostA, "acme", ca))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	h := prep()
	c := verifyCache{max: 16}
	now := time.Now()
	peer := []*x509.Certificate{leaf.Cert, inter.Cert}
	v1 := c.verify(h, peer, now)
	if !v1.Verified() {
		t.Fatalf("not verified: %v", v1.Err())
	}
	// Another connection, the same chain (parsed again): the cached outcome.
	again, _ := x509.ParseCertificate(leaf.Cert.Raw)
	if v := c.verify(h, []*x509.Certificate{again, inter.Cert}, now.Add(time.Minute)); v != v1 {
		t.Error("not reused")
	}
	// Without the intermediate: another chain.
	if v := c.verify(h, []*x509.Certificate{leaf.Cert}, now); v == v1 || v.Verified() {
		t.Error("a different chain got the cached outcome")
	}
	// A new configuration of the hostname: verified again.
	h2 := prep()
	if v := c.verify(h2, peer, now); v == v1 || !v.Verified() {
		t.Error("not verified again for a new configuration")
	}
	// Past the leaf's expiry: verified again, and expired.
	if v := c.verify(h2, peer, now.Add(2*time.Hour)); v.Verified() || v.Reason() != decision.ReasonCertificateExpired {
		t.Errorf("after expiry: %s", v.Reason())
	}
	// No certificate: not cached.
	if v := c.verify(h2, nil, now); v.Reason() != decision.ReasonCertificateMissing {
		t.Errorf("no certificate: %s", v.Reason())
	}
	// The bound.
	for range 20 {
		l := ca.Client(t, "x")
		c.verify(h2, []*x509.Certificate{l.Cert}, now)
	}
	if n := c.n.Load(); n > 16 {
		t.Errorf("%d entries", n)
	}
}
