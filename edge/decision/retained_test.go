package decision

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"runtime"
	"testing"
	"time"
	"weak"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// collectUntil runs garbage collections (letting cleanups run between them) until done reports
// true, for at most a second; it returns done's last answer.
func collectUntil(done func() bool) bool {
	for deadline := time.Now().Add(time.Second); ; {
		runtime.GC()
		if done() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// TestParsedCAsFreedWithTheirHostname: once no prepared hostname uses a trust any more, its parsed
// CAs are freed, even those rootKeeper kept for their last use. Otherwise what a cache of prepared
// hostnames evicts (the audit's, bounded by SizeEstimate; the edge's configuration after an
// update) stays in memory, counted nowhere: up to keptRootSets sets of up to 16 CAs of 46 KB of
// DER each, over 10 MB a set parsed, whatever the bounds of the configuration or of the cache.
func TestParsedCAsFreedWithTheirHostname(t *testing.T) {
	p := getPKI(t)
	for _, cache := range []*Cache{nil, NewCache()} {
		h, err := cache.Prepare(hostnameConfig(p))
		if err != nil {
			t.Fatal(err)
		}
		if _, reason, _ := h.Verify(chain(p.leaf), time.Now()); reason != ReasonCertificateVerified {
			t.Fatalf("the leaf of root: %s", reason)
		}
		rs := weak.Make(h.trust.alive())
		if rs.Value() == nil {
			t.Fatal("a verification kept no parsed CAs")
		}
		h = nil
		if !collectUntil(func() bool { return rs.Value() == nil }) {
			t.Errorf("with Cache %v: the parsed CAs of a hostname nobody holds any more stay in memory (rootKeeper)", cache != nil)
		}
	}

	// What that costs: CAs of the largest size the API accepts, made of 3-byte extended key
	// usages (see TestSizeEstimate), each hostname used once and then dropped.
	const maxDER = 46_000
	ekus := func(c *x509.Certificate) {
		for range maxDER / 3 {
			c.UnknownExtKeyUsage = append(c.UnknownExtKeyUsage, asn1.ObjectIdentifier{1, 2})
		}
	}
	const hostnames = 4
	var ders [][]byte
	for i := range hostnames {
		ders = append(ders, pkitest.NewCA(t, fmt.Sprint("big ", i), ekus).Cert.Raw)
	}
	sets := make([]weak.Pointer[rootSet], 0, hostnames)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i, der := range ders {
		cfg := &configv1.HostnameConfig{Hostname: fmt.Sprintf("h%d.example", i), Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE, Active: true,
			CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "big", CertificateDer: bytes.Clone(der)}}}
		h, err := Prepare(cfg)
		if err != nil {
			t.Fatal(err)
		}
		h.ClientCAs()
		sets = append(sets, weak.Make(h.trust.alive()))
	}
	collectUntil(func() bool {
		for _, rs := range sets {
			if rs.Value() != nil {
				return false
			}
		}
		return true
	})
	runtime.ReadMemStats(&after)
	held := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / hostnames
	t.Logf("a hostname of one CA of %d bytes, used once, then dropped, leaves %d bytes in memory", len(ders[0]), held)
	if held > 64<<10 {
		t.Errorf("a dropped hostname of one CA of %d bytes still holds %d bytes", len(ders[0]), held)
	}
}

// TestKeptInOneSlot: a set kept again (its last slot in the ring's older half) leaves its previous
// slot, so that what unkeepRoots clears is the only reference rootKeeper holds; a set in use is
// kept again at most once for every keptRootSets/2 sets kept.
func TestKeptInOneSlot(t *testing.T) {
	p := getPKI(t)
	h, err := Prepare(hostnameConfig(p))
	if err != nil {
		t.Fatal(err)
	}
	slotsOf := func(rs *rootSet) (n int) {
		for i := range rootKeeper.slots {
			if rootKeeper.slots[i].Load() == rs {
				n++
			}
		}
		return n
	}
	for _, skip := range []uint64{0, 1, keptRootSets/2 - 2, keptRootSets/2 - 1, keptRootSets - 1, keptRootSets, 3 * keptRootSets / 2} {
		h.ClientCAs()
		rs := h.trust.alive()
		kept := rs.kept.Load()
		rootKeeper.uses.Add(skip) // as if skip other sets were kept meanwhile
		h.ClientCAs()
		again := rs.kept.Load() != kept
		if want := skip+1 >= keptRootSets/2; again != want {
			t.Errorf("after %d other sets were kept: kept again %v, want %v", skip, again, want)
		}
		if n := slotsOf(rs); n != 1 {
			t.Errorf("after %d other sets were kept: the set is in %d slots, want 1", skip, n)
		}
		runtime.KeepAlive(rs)
	}
}
