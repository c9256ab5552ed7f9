package enforce

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net/url"
	"runtime"
	"strings"
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
	h, err := decision.Prepare(host(hostA, "acme", ca))
	if err != nil {
		t.Fatal(err)
	}
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
	sizeOf := func(peer ...*x509.Certificate) int64 {
		v := h.VerifyClient(peer, time.Now())
		if !v.Verified() {
			t.Fatal(v.Err())
		}
		return retainedSize(peer, v)
	}
	if got := sizeOf(l, in); got < msgLen || got > msgLen+64<<10 {
		t.Errorf("retainedSize = %d for certificates parsed from a %d-byte message", got, msgLen)
	}
	if own := sizeOf(leaf.Cert, inter.Cert); own > 32<<10 {
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

// TestVerifyCacheEstimateIsAnUpperBound: for chains of several shapes (a tenant's CA can issue any
// of them), retainedSize counts at least the heap that caching a verification keeps, measured: the
// live heap after caching n verifications of distinct chains, each parsed from its own copy of the
// DER as crypto/tls would, less the live heap before, both after two collections. Heap noise from
// elsewhere in the process can only be excused by measuring again (three times at most); the
// estimate may exceed the measure, never the other way round.
func TestVerifyCacheEstimateIsAnUpperBound(t *testing.T) {
	const long = 8000
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edKey, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	uri := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	// sanURIs sets the SAN extension by hand: crypto/x509 would write each URI as u.String().
	sanURIs := func(uris ...string) pkitest.Options {
		var names []asn1.RawValue
		for _, u := range uris {
			names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)})
		}
		der, err := asn1.Marshal(names)
		if err != nil {
			t.Fatal(err)
		}
		return func(c *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: oidSAN, Value: der})
		}
	}
	longOID := func(arcs int) asn1.ObjectIdentifier {
		oid := asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999}
		for range arcs {
			oid = append(oid, 1)
		}
		return oid
	}
	shapes := []struct {
		name  string
		inter bool // the leaf comes with an intermediate
		key   any  // the leaf's public key; nil for pkitest's P-256
		opt   pkitest.Options
	}{
		{name: "leaf and intermediate", inter: true},
		{name: "leaf"},
		{name: "RSA 2048 key", key: &rsaKey.PublicKey},
		{name: "Ed25519 key", key: edKey},
		{name: "long CN", opt: func(c *x509.Certificate) { c.Subject.CommonName = strings.Repeat("a", long) }},
		{name: "CN escaped in RFC 2253", opt: func(c *x509.Certificate) { c.Subject.CommonName = strings.Repeat(",", long/2) }},
		{name: "attribute of an unnamed type", opt: func(c *x509.Certificate) {
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 7}, Value: strings.Repeat("a", long/2)}}
		}},
		{name: "long OU", opt: func(c *x509.Certificate) { c.Subject.OrganizationalUnit = []string{strings.Repeat("a", long)} }},
		{name: "many OUs", opt: func(c *x509.Certificate) {
			for range 150 {
				c.Subject.OrganizationalUnit = append(c.Subject.OrganizationalUnit, "ou")
			}
		}},
		{name: "long URI", opt: func(c *x509.Certificate) { c.URIs = []*url.URL{uri("https://x.example/" + strings.Repeat("a", long))} }},
		{name: "URI with escapes", opt: sanURIs("https://" + strings.Repeat("%61", 500) + ":" + strings.Repeat("%62", 500) + "@x.example/" +
			strings.Repeat("%7E", 500) + "?" + strings.Repeat("q", 100) + "#" + strings.Repeat("%7E", 500))},
		{name: "many URIs", opt: func(c *x509.Certificate) {
			for i := range 100 {
				c.URIs = append(c.URIs, uri(fmt.Sprintf("spiffe://x.example/%d", i)))
			}
		}},
		{name: "many DNS names", opt: func(c *x509.Certificate) {
			for i := range 300 {
				c.DNSNames = append(c.DNSNames, fmt.Sprintf("d%d.example", i))
			}
		}},
		{name: "many tiny extensions", opt: func(c *x509.Certificate) {
			for i := range 200 {
				c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 2, i}, Value: []byte{5, 0}})
			}
		}},
		{name: "extension with a long OID", opt: func(c *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: longOID(3000), Value: []byte{5, 0}})
		}},
		{name: "long OIDs in key usages and policies", opt: func(c *x509.Certificate) {
			c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{longOID(1000)}
			c.PolicyIdentifiers = []asn1.ObjectIdentifier{longOID(1000)}
		}},
		{name: "padded", opt: padded(20 << 10)},
	}
	for _, s := range shapes {
		t.Run(s.name, func(t *testing.T) {
			ca := pkitest.NewCA(t, "Tenant Root")
			h, err := decision.Prepare(host(hostA, "acme", ca))
			if err != nil {
				t.Fatal(err)
			}
			issuer := ca
			var interDER []byte
			if s.inter {
				issuer = ca.Intermediate(t, "Issuing CA")
				interDER = issuer.Cert.Raw
			}
			const n = 200
			ders := make([][]byte, n)
			for i := range ders {
				var opts []pkitest.Options
				if s.opt != nil {
					opts = append(opts, s.opt)
				}
				if s.key == nil {
					ders[i] = issuer.Client(t, "device", opts...).Cert.Raw
					continue
				}
				tmpl := &x509.Certificate{
					SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: "device"},
					NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
					KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
				}
				for _, o := range opts {
					o(tmpl)
				}
				if ders[i], err = x509.CreateCertificate(rand.Reader, tmpl, issuer.Cert, s.key, issuer.Key); err != nil {
					t.Fatal(err)
				}
			}
			var counted, measured int64
			for range 3 {
				if counted, measured = measureVerifyCache(t, h, ders, interDER); counted >= measured {
					break
				}
			}
			t.Logf("%s: counted %d B per entry, heap retained %d B (%.2f)", s.name, counted, measured, float64(counted)/float64(measured))
			if counted < measured {
				t.Errorf("%s: retainedSize counts %d B per entry, the heap retained is %d B", s.name, counted, measured)
			}
		})
	}
}

// measureVerifyCache caches a verification of each leaf (with the intermediate when there is one)
// for h and returns the bytes the cache counts per entry and the live heap per entry it took.
func measureVerifyCache(t *testing.T, h *decision.Hostname, leaves [][]byte, interDER []byte) (counted, measured int64) {
	t.Helper()
	parse := func(der []byte) []*x509.Certificate {
		peer := make([]*x509.Certificate, 0, 2)
		for _, d := range [][]byte{der, interDER} {
			if d == nil {
				continue
			}
			c, err := x509.ParseCertificate(append([]byte(nil), d...))
			if err != nil {
				t.Fatal(err)
			}
			peer = append(peer, c)
		}
		return peer
	}
	now := time.Now()
	(&verifyCache{}).verify(h, parse(leaves[0]), now) // whatever verifying allocates once
	c := &verifyCache{max: len(leaves) + 1, maxBytes: 1 << 40}
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	for _, der := range leaves {
		peer := parse(der)
		if v := c.verify(h, peer, now); !v.Verified() {
			t.Fatal(v.Err())
		}
		if c.cachedFor(peer) == nil {
			_, size := c.stats()
			t.Fatalf("not cached: counted larger than an entry may be (%d B in the cache)", size)
		}
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	entries, bytes := c.stats()
	if entries != len(leaves) {
		t.Fatalf("%d entries cached of %d", entries, len(leaves))
	}
	runtime.KeepAlive(c)
	runtime.KeepAlive(leaves)
	return bytes / int64(entries), (int64(ms.HeapAlloc) - int64(before)) / int64(entries)
}
