package decision

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestSizeEstimate: Hostname.SizeEstimate is at least the heap a prepared hostname keeps (with its
// configuration), at rest and once used (its CAs parsed again, with their pool), for hostnames of 1 to 16 CAs, P-256 and RSA, with many revocations and with a
// policy, so that the audit's cache of prepared configurations stays within its bound. The
// configurations are built afresh for each hostname (their strings and bytes included), as the
// fold builds them for Explain. Besides ordinary hostnames, those a tenant could build to hold
// more than their encoded size: CA certificates of the largest size the API accepts (64 KiB of
// PEM) made of the smallest items that parsing turns into slices of their own (extended key
// usages of 3 bytes, certificate policies of 6), and a hostname in mode OFF (whose CAs are not
// parsed) with many short revocations, each a message of its own in memory.
func TestSizeEstimate(t *testing.T) {
	rules := []*configv1.Rule{{Name: "no-admin", Action: configv1.Action_ACTION_DENY, Expression: "request.path.startsWith('/admin')"}, {Name: "devices", Action: configv1.Action_ACTION_ALLOW, Expression: "cert.verified && cert.subject.organizational_unit.exists(u, u.matches('^dev(ice|elopment)s?$'))"}}
	// What is built once for all hostnames (the policy environment, cel-go's tables, the tables of
	// certificate parsing) is not theirs.
	if _, err := Prepare(&configv1.HostnameConfig{Hostname: "warm.example", Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE, Policy: &configv1.Policy{PolicyId: "p", Rules: rules},
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "warm", CertificateDer: pkitest.NewCA(t, "warm").Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	// maxDER is about the largest CA certificate the API accepts: 64 KiB of PEM.
	const maxDER = 46_000
	ekus := func(c *x509.Certificate) {
		for range maxDER / 3 {
			c.UnknownExtKeyUsage = append(c.UnknownExtKeyUsage, asn1.ObjectIdentifier{1, 2})
		}
	}
	policies := func(c *x509.Certificate) {
		for i := range maxDER / 7 {
			oid, err := x509.OIDFromInts([]uint64{1, 2, uint64(i)})
			if err != nil {
				t.Fatal(err)
			}
			c.Policies = append(c.Policies, oid)
		}
	}
	var dropped []weak.Pointer[rootSet] // the parsed CAs of the hostnames measured
	for _, tc := range []struct {
		cas, revocations int
		rsa, policy      bool
		mode             configv1.MtlsMode
		ca               pkitest.Options
		name             string
	}{
		{cas: 1}, {cas: 1, policy: true}, {cas: 16}, {cas: 16, revocations: 1000, policy: true}, {cas: 4, rsa: true},
		{cas: 16, ca: ekus, name: "16 CAs of 15,333 extended key usages"},
		{cas: 16, ca: policies, name: "16 CAs of 6,571 policies"},
		{cas: 1, revocations: 20_000, mode: configv1.MtlsMode_MTLS_MODE_OFF, name: "mode OFF, 20,000 revocations"},
		{cas: 1, revocations: 20_000, name: "20,000 revocations"},
	} {
		mode := tc.mode
		if mode == configv1.MtlsMode_MTLS_MODE_UNSPECIFIED {
			mode = configv1.MtlsMode_MTLS_MODE_ENFORCE
		}
		var ders [][]byte
		for i := range tc.cas {
			var opts []pkitest.Options
			if tc.ca != nil {
				opts = append(opts, tc.ca)
			}
			if tc.rsa {
				ders = append(ders, pkitest.CAForKey(t, fmt.Sprint("ca ", i), pkitest.RandomRSA(t, 4096, 65537)).Raw)
			} else {
				ders = append(ders, pkitest.NewCA(t, fmt.Sprint("ca ", i), opts...).Cert.Raw)
			}
		}
		// build makes the configuration afresh: every string and byte of it its own, as the
		// fold's are once the state it was built from is gone.
		build := func() *configv1.HostnameConfig {
			cfg := &configv1.HostnameConfig{Hostname: fmt.Sprint("pay.example"), TenantId: fmt.Sprint("acme"), Mode: mode, Active: true}
			for i, der := range ders {
				cfg.CertificateAuthorities = append(cfg.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: fmt.Sprint("ca", i), CertificateDer: bytes.Clone(der)})
			}
			for i := range tc.revocations {
				cfg.Revocations = append(cfg.Revocations, &configv1.Revocation{CertificateAuthorityId: fmt.Sprint("ca0"), RevocationId: fmt.Sprint("r", i), SerialNumber: fmt.Sprintf("%x", 1_000_000+i)})
			}
			if tc.policy {
				cfg.Policy = &configv1.Policy{PolicyId: fmt.Sprint("p"), Rules: rules}
			}
			return cfg
		}
		n := 20
		if tc.ca != nil || tc.revocations > 1000 {
			n = 4
		}
		// A hostname at rest holds its CAs as DER alone; one in use (the audit's, the edge's)
		// holds them parsed too, with their pool.
		for _, used := range []bool{false, true} {
			// What the hostnames measured before held goes first (their parsed CAs leave
			// rootKeeper by a cleanup, after a collection).
			collectUntil(func() bool {
				for _, rs := range dropped {
					if rs.Value() != nil {
						return false
					}
				}
				return true
			})
			hs := make([]*Hostname, 0, n)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range n {
				h, err := Prepare(build())
				if err != nil {
					t.Fatal(err)
				}
				if used {
					h.ClientCAs()
					dropped = append(dropped, weak.Make(h.trust.alive()))
				}
				hs = append(hs, h)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			held := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / int64(n)
			name := tc.name
			if name == "" {
				name = fmt.Sprintf("%d CAs (RSA %v), %d revocations, policy %v", tc.cas, tc.rsa, tc.revocations, tc.policy)
			}
			name = fmt.Sprint(name, ", used ", used)
			t.Logf("%s: holds %d bytes, estimated %d", name, held, hs[0].SizeEstimate())
			if hs[0].SizeEstimate() < held {
				t.Errorf("%s: SizeEstimate %d bytes, but a prepared hostname holds %d", name, hs[0].SizeEstimate(), held)
			}
			runtime.KeepAlive(hs)
		}
	}
}

// TestRootPoolBuiltOnFirstUse: preparing a hostname builds no pool of its roots; ClientCAs builds
// it once, equal to a pool of the hostname's CAs, and gives every caller (concurrent ones too)
// the same one.
func TestRootPoolBuiltOnFirstUse(t *testing.T) {
	p := getPKI(t)
	cfg := hostnameConfig(p)
	withCA("other", p.other)(cfg)
	h, err := Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rs := h.trust.alive(); rs != nil && rs.pool != nil {
		t.Fatal("Prepare built the pool of roots")
	}
	want := x509.NewCertPool()
	want.AddCert(p.root.Cert)
	want.AddCert(p.other.Cert)
	first := oneConcurrentPool(t, h)
	if first == nil || !first.Equal(want) {
		t.Fatal("the pool is not the hostname's CAs")
	}
	offCfg := hostnameConfig(p)
	withMode(configv1.MtlsMode_MTLS_MODE_OFF)(offCfg)
	off, err := Prepare(offCfg)
	if err != nil {
		t.Fatal(err)
	}
	if pool := off.ClientCAs(); pool == nil || !pool.Equal(x509.NewCertPool()) {
		t.Fatal("mode OFF: want an empty pool, never nil (nil means the system's roots)")
	}
}

// forgetKeptRoots makes rootKeeper forget every rootSet, as keptRootSets uses of other trusts
// would, so that the next garbage collection frees the parsed CAs of every trust not in use.
func forgetKeptRoots() {
	rootKeeper.uses.Add(keptRootSets)
	for i := range rootKeeper.slots {
		rootKeeper.slots[i].Store(nil)
	}
}

// parsedAfterGC reports whether h's parsed CAs are still in memory after a garbage collection.
func parsedAfterGC(h *Hostname) bool {
	runtime.GC()
	return h.trust.alive() != nil
}

// TestParsedCAsDroppedWhenIdle: a prepared hostname does not keep its CAs parsed: once rootKeeper
// has forgotten them (idle while others were used), a garbage collection frees them, and the next
// use parses them again, once for concurrent callers, with the same verdicts as a hostname whose
// parsed CAs were never dropped. A use keeps them in memory across collections.
func TestParsedCAsDroppedWhenIdle(t *testing.T) {
	p := getPKI(t)
	build := func() *configv1.HostnameConfig {
		cfg := hostnameConfig(p)
		withCA("other", p.other)(cfg)
		revokeSerial("root", p.opsLeaf.Cert)(cfg)
		return cfg
	}
	idle, err := NewCache().Prepare(build())
	if err != nil {
		t.Fatal(err)
	}
	forgetKeptRoots()
	if parsedAfterGC(idle) {
		t.Fatal("a hostname nobody used keeps its CAs parsed after a garbage collection")
	}
	// Concurrent first uses parse them once: one pool for all.
	first := oneConcurrentPool(t, idle)
	want := x509.NewCertPool()
	want.AddCert(p.root.Cert)
	want.AddCert(p.other.Cert)
	if !first.Equal(want) {
		t.Fatal("the pool parsed again is not the hostname's CAs")
	}
	if !parsedAfterGC(idle) {
		t.Fatal("a hostname just used lost its parsed CAs at the next garbage collection")
	}

	fresh, err := Prepare(build())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		name string
		peer []*x509.Certificate
		want string
	}{
		{"ok/a leaf of root", chain(p.leaf), ReasonCertificateVerified},
		{"ok/a leaf of other", chain(p.otherLeaf), ReasonCertificateVerified},
		{"ok/through an intermediate", chain(p.interLeaf, p.inter), ReasonCertificateVerified},
		{"fail/revoked under root", chain(p.opsLeaf), ReasonCertificateRevoked},
		{"fail/expired", chain(p.expired), ReasonCertificateExpired},
		{"fail/not yet valid", chain(p.notYet), ReasonCertificateNotYetValid},
		{"fail/expired intermediate", chain(p.expiredInterLeaf, p.expiredInter), ReasonCertificateExpired},
		{"fail/self-signed", chain(p.forged), ReasonCertificateUntrusted},
		{"fail/key usage", chain(p.badKeyUsage), ReasonCertificateWrongKeyUsage},
		{"fail/a server certificate", chain(p.serverLeaf), ReasonCertificateWrongKeyUsage},
	} {
		forgetKeptRoots()
		if parsedAfterGC(idle) {
			t.Fatalf("%s: the parsed CAs outlived rootKeeper's forgetting them", tc.name)
		}
		gotChain, got, gotErr := idle.Verify(tc.peer, now)
		wantChain, want, wantErr := fresh.Verify(tc.peer, now)
		if got != tc.want || want != tc.want || (gotErr == nil) != (wantErr == nil) || len(gotChain) != len(wantChain) {
			t.Errorf("%s: after its CAs were dropped: %s (%v), chain of %d; never dropped: %s (%v), chain of %d; want %s", tc.name, got, gotErr, len(gotChain), want, wantErr, len(wantChain), tc.want)
			continue
		}
		for i := range gotChain {
			if !gotChain[i].Equal(wantChain[i]) {
				t.Errorf("%s: chain[%d] is %q, want %q", tc.name, i, gotChain[i].Subject, wantChain[i].Subject)
			}
		}
	}
	forgetKeptRoots()
	if parsedAfterGC(idle) {
		t.Fatal("the parsed CAs outlived rootKeeper's forgetting them")
	}
	if ca := idle.CertificateAuthority("other"); ca == nil || !ca.Equal(p.other.Cert) || idle.CertificateAuthority("nope") != nil {
		t.Error("CertificateAuthority after the CAs were dropped: not the configured certificate")
	}
}

// oneConcurrentPool calls h.ClientCAs from 8 goroutines at once and returns the pool they all got;
// it fails the test when they got different pools.
func oneConcurrentPool(t *testing.T, h *Hostname) *x509.CertPool {
	t.Helper()
	pools := make(chan *x509.CertPool, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { pools <- h.ClientCAs() })
	}
	wg.Wait()
	close(pools)
	first := <-pools
	for got := range pools {
		if got != first {
			t.Fatal("concurrent callers of ClientCAs got different pools (the CAs were parsed more than once)")
		}
	}
	return first
}
