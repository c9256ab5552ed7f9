package servercert

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkIssueParallel: leaves issued for distinct hostnames (every call a new leaf) by
// GOMAXPROCS goroutines at once, as the handshakes to an edge's many hostnames after a restart.
func BenchmarkIssueParallel(b *testing.B) {
	ca, err := LoadOrCreateCA(b.TempDir(), WithCacheSize(1<<30))
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ca.GetCertificate(fmt.Sprintf("h%d.example.com", n.Add(1))); err != nil {
				b.Error(err)
			}
		}
	})
}
