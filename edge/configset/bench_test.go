package configset

import (
	"fmt"
	"maps"
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"
	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// benchStore returns a store holding n hostnames (one tenant: one CA, one policy, shared by all).
func benchStore(b testing.TB, n int) (*Store, []*configv1.HostnameConfig) {
	b.Helper()
	ups := make([]*configv1.HostnameConfig, n)
	base := cfg(b, "x.example.com", 1)
	for i := range ups {
		c := &configv1.HostnameConfig{
			Hostname: fmt.Sprintf("h%07d.customers.example.com", i), TenantId: "acme", Active: true,
			OriginUrl: base.OriginUrl, Mode: base.Mode, CertificateAuthorities: base.CertificateAuthorities,
			Policy: base.Policy, Version: 1,
		}
		ups[i] = c
	}
	st := NewStore()
	if err := st.Apply(snapshot(1, ups...)); err != nil {
		b.Fatal(err)
	}
	return st, ups
}

// applyOneChange applies to st the change of one hostname of ups, the i-th of a benchmark's
// loop, to position pos: every hostname in turn, in a scattered order.
func applyOneChange(b *testing.B, st *Store, ups []*configv1.HostnameConfig, i int, pos uint64) {
	c := proto.CloneOf(ups[(i*7919)%len(ups)])
	c.Version = pos
	if err := st.Apply(delta(pos, nil, c)); err != nil {
		b.Fatal(err)
	}
}

// benchApplyDelta applies deltas of one changed hostname to a set of n.
func benchApplyDelta(b *testing.B, n int) {
	st, ups := benchStore(b, n)
	pos := uint64(1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		pos++
		applyOneChange(b, st, ups, i, pos)
	}
}

func BenchmarkApplyDelta1Change100k(b *testing.B) { benchApplyDelta(b, 100_000) }
func BenchmarkApplyDelta1Change1M(b *testing.B)   { benchApplyDelta(b, 1_000_000) }

// BenchmarkApplySnapshot100k applies a snapshot of 100,000 hostnames (preparation with a warm
// cache and the trie build).
func BenchmarkApplySnapshot100k(b *testing.B) {
	st, ups := benchStore(b, 100_000)
	pos := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		pos++
		if err := st.Apply(snapshot(pos, ups...)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLookup1M looks hostnames up in a set of 1,000,000: "spread" goes through all of them
// (each lookup misses the CPU caches), "same" looks the same hostname up again and again.
func BenchmarkLookup1M(b *testing.B) {
	st, ups := benchStore(b, 1_000_000)
	s := st.Load()
	names := make([]string, len(ups))
	for i, u := range ups {
		names[i] = u.GetHostname()
	}
	b.Run("spread", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, ok := s.Lookup(names[(i*7919)%len(names)]); !ok {
				b.Fatal("missing")
			}
		}
	})
	b.Run("same", func(b *testing.B) {
		name := names[4242]
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := s.Lookup(name); !ok {
				b.Fatal("missing")
			}
		}
	})
}

// BenchmarkMapCopy1M is the alternative design for comparison: copying a plain map of 1,000,000
// entries, which a copy-on-write map would do for every change.
func BenchmarkMapCopy1M(b *testing.B) {
	m := make(map[string]*decision.Hostname, 1_000_000)
	for i := range 1_000_000 {
		m[fmt.Sprintf("h%07d.customers.example.com", i)] = nil
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = maps.Clone(m)
	}
}

// TestMemoryPerHostname reports the heap used by a set of 100,000 hostnames (run with -v).
func TestMemoryPerHostname(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	st, ups := benchStore(t, n)
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d hostnames: %.0f bytes of heap per hostname (configurations included)", n, float64(after.HeapAlloc-before.HeapAlloc)/n)
	runtime.KeepAlive(st)
	runtime.KeepAlive(ups)
}

// benchSaveChange applies a change of one hostname to a set of n, then brings the state file up
// to date: with Store.Save, which writes the whole set (the baseline: how the edge saved before),
// or with a StateFile, which appends the change (and writes the whole set once the changes reach
// half its size; with n of 100,000 that takes some 50,000 changes, more than a run makes, so the
// figure is of appends alone: add the whole set's time divided by that many for the mean). It
// reports the bytes written per change and the file's size; the time includes the fsyncs, so it
// depends on the disk.
func benchSaveChange(b *testing.B, n int, whole bool) {
	st, ups := benchStore(b, n)
	path := b.TempDir() + "/edge-config.binpb"
	file := st.StateFile(path)
	if _, err := file.Save(); err != nil {
		b.Fatal(err)
	}
	pos := uint64(1)
	var written int64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		pos++
		applyOneChange(b, st, ups, i, pos)
		before := file.size
		if whole {
			fi, _, err := saveSet(path, st.Load())
			if err != nil {
				b.Fatal(err)
			}
			written += fi.Size()
			continue
		}
		appended, err := file.Save()
		if err != nil {
			b.Fatal(err)
		}
		if appended {
			written += file.size - before
		} else {
			written += file.size
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(written)/float64(b.N), "B-written/op")
}

func BenchmarkSaveChange100k(b *testing.B) {
	b.Run("whole", func(b *testing.B) { benchSaveChange(b, 100_000, true) })
	b.Run("append", func(b *testing.B) { benchSaveChange(b, 100_000, false) })
}

func BenchmarkSaveChange1M(b *testing.B) {
	b.Run("whole", func(b *testing.B) { benchSaveChange(b, 1_000_000, true) })
	b.Run("append", func(b *testing.B) { benchSaveChange(b, 1_000_000, false) })
}

// BenchmarkResnapshot applies again a snapshot of the configuration the store holds, as the
// control plane sends one to an edge it cannot resume with changes: n hostnames, each with a root
// CA of its own (the product's usual shape), in messages decoded afresh (clones, made with the
// timer stopped). It reports the heap the new set holds beyond the old one's while the old one
// is still referenced (a reader in the middle of a request, the state file's saver), measured
// with the timer stopped too.
func BenchmarkResnapshot20kOwnCAs(b *testing.B) {
	const n = 20_000
	ups := make([]*configv1.HostnameConfig, n)
	for i := range ups {
		c := cfg(b, fmt.Sprintf("h%07d.customers.example.com", i), 1)
		c.CertificateAuthorities = []*configv1.TrustedCertificateAuthority{{
			CertificateAuthorityId: "root", CertificateDer: pkitest.NewCA(b, fmt.Sprintf("Customer %d Devices", i)).Cert.Raw,
		}}
		ups[i] = c
	}
	st := NewStore()
	if err := st.Apply(snapshot(1, ups...)); err != nil {
		b.Fatal(err)
	}
	pos := uint64(1)
	var extra float64
	var ms runtime.MemStats
	heap := func() float64 {
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return float64(ms.HeapAlloc)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		old := st.Load()
		before := heap() // the old set
		fresh := make([]*configv1.HostnameConfig, n)
		for i, c := range ups {
			fresh[i] = proto.CloneOf(c)
		}
		pos++
		b.StartTimer()
		if err := st.Apply(snapshot(pos, fresh...)); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		fresh = nil
		extra += heap() - before
		runtime.KeepAlive(old)
		b.StartTimer()
	}
	b.ReportMetric(extra/float64(b.N)/n, "B-extra-a-hostname/op")
}
