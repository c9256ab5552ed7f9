package enforce

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
)

// cachedFor returns the cached verification of peer's chain, or nil.
func (c *verifyCache) cachedFor(peer []*x509.Certificate) *decision.Verification {
	if e, ok := c.m.Load(chainKey(peer)); ok {
		return e.(*verifyEntry).v
	}
	return nil
}

// padded adds an extension of n bytes to a certificate.
func padded(n int) pkitest.Options {
	return func(c *x509.Certificate) {
		c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: make([]byte, n)})
	}
}

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
	// Without the intermediate: another chain, which fails, and is not cached.
	if v := c.verify(h, []*x509.Certificate{leaf.Cert}, now); v == v1 || v.Verified() {
		t.Error("a different chain got the cached outcome")
	}
	if n, _ := c.stats(); n != 1 || c.cachedFor([]*x509.Certificate{leaf.Cert}) != nil {
		t.Errorf("a failed verification was cached (%d entries)", n)
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
	if n, _ := c.stats(); n > 16 {
		t.Errorf("%d entries", n)
	}
}

// TestVerifyCacheBoundedBytes: chains that verify (a tenant minting large certificates from its
// own CA) stay within the cache's byte bound, are evicted one at a time (not the whole cache), and
// do not evict a client that keeps reconnecting; a chain too large for an entry is not cached.
func TestVerifyCacheBoundedBytes(t *testing.T) {
	ca := pkitest.NewCA(t, "Tenant Root")
	h, err := decision.Prepare(host(hostA, "acme", ca))
	if err != nil {
		t.Fatal(err)
	}
	const maxBytes = 256 << 10
	c := verifyCache{max: 1000, maxBytes: maxBytes}
	now := time.Now()
	hot := []*x509.Certificate{ca.Client(t, "hot").Cert}
	vHot := c.verify(h, hot, now)
	if !vHot.Verified() {
		t.Fatal(vHot.Err())
	}
	most := 0
	for i := range 60 {
		l := ca.Client(t, "minted", padded(20<<10))
		if v := c.verify(h, []*x509.Certificate{l.Cert}, now); !v.Verified() {
			t.Fatal(v.Err())
		}
		n, b := c.stats()
		if b > maxBytes {
			t.Fatalf("after %d chains: %d bytes retained, bound %d", i+1, b, maxBytes)
		}
		if i > 20 && n < most {
			t.Fatalf("after %d chains: %d entries, %d before: more evicted than needed", i+1, n, most)
		}
		most = max(most, n)
		if c.verify(h, hot, now) != vHot { // the reconnecting client
			t.Fatalf("after %d chains: the reconnecting client's verification was evicted", i+1)
		}
	}
	n, b := c.stats()
	if n < 5 {
		t.Errorf("%d entries (%d bytes) for a bound of %d bytes", n, b, maxBytes)
	}
	big := []*x509.Certificate{ca.Client(t, "big", padded(maxVerifiedEntryBytes)).Cert}
	if v := c.verify(h, big, now); !v.Verified() || c.cachedFor(big) != nil {
		t.Errorf("a chain larger than an entry may be: verified %v, cached %v", v.Verified(), c.cachedFor(big) != nil)
	}
	if n2, b2 := c.stats(); n2 != n || b2 != b {
		t.Errorf("a chain too large to cache changed the cache: %d entries %d bytes, were %d %d", n2, b2, n, b)
	}
}

// TestVerifyCacheCountsTheCertificateMessage: retainedSize counts the array the certificates were
// parsed from (crypto/tls parses them from one copy of the certificate message), once.
func TestVerifyCacheCountsTheCertificateMessage(t *testing.T) {
	ca := pkitest.NewCA(t, "Root")
	inter := ca.Intermediate(t, "Inter")
	leaf := inter.Client(t, "device")
	const msgLen = 200 << 10
	msg := make([]byte, 0, msgLen)
	msg = append(append(msg, leaf.Cert.Raw...), inter.Cert.Raw...)
	l, err := x509.ParseCertificate(msg[:len(leaf.Cert.Raw)])
	if err != nil {
		t.Fatal(err)
	}
	in, err := x509.ParseCertificate(msg[len(leaf.Cert.Raw):])
	if err != nil {
		t.Fatal(err)
	}
	got := retainedSize([]*x509.Certificate{l, in})
	if got < msgLen || got > msgLen+64<<10 {
		t.Errorf("retainedSize = %d for certificates parsed from a %d-byte message", got, msgLen)
	}
	if own := retainedSize([]*x509.Certificate{leaf.Cert, inter.Cert}); own > 32<<10 {
		t.Errorf("retainedSize = %d for a usual chain", own)
	}
}

// TestVerifyCacheConcurrent: hits, insertions and evictions from several goroutines keep the
// cache consistent (run with -race): within its bounds, and its ring, map and byte count agree.
func TestVerifyCacheConcurrent(t *testing.T) {
	ca := pkitest.NewCA(t, "Root")
	h, err := decision.Prepare(host(hostA, "acme", ca))
	if err != nil {
		t.Fatal(err)
	}
	chains := make([][]*x509.Certificate, 30)
	for i := range chains {
		chains[i] = []*x509.Certificate{ca.Client(t, "device").Cert}
	}
	c := verifyCache{max: 8}
	now := time.Now()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 300 {
				if v := c.verify(h, chains[(i*(g+1))%len(chains)], now); !v.Verified() {
					t.Error(v.Err())
					return
				}
			}
		})
	}
	wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.ring) > 8 {
		t.Errorf("%d entries", len(c.ring))
	}
	var bytes int64
	for i, e := range c.ring {
		bytes += e.size
		if got, _ := c.m.Load(e.key); got != e || e.slot != i {
			t.Errorf("ring entry %d: in the map %v, slot %d", i, got == e, e.slot)
		}
	}
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	if n != len(c.ring) || bytes != c.bytes {
		t.Errorf("map %d entries, ring %d; bytes %d counted %d", n, len(c.ring), bytes, c.bytes)
	}
}
