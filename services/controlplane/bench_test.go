package controlplane_test

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// BenchmarkCreateHostnameGRPC measures hostname creations per second through the gRPC API with 16
// concurrent clients in one tenant, on the embedded store with fsync on. Goal: at least 2,500/s.
func BenchmarkCreateHostnameGRPC(b *testing.B) {
	n := startNode(b, b.TempDir())
	tok := n.tenantWithToken("acme")
	c := guestlistv1.NewHostnameServiceClient(n.conn)
	ctx := withToken(tok)
	clients := 16
	if v, _ := strconv.Atoi(os.Getenv("BENCH_CLIENTS")); v > 0 {
		clients = v
	}
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				_, err := c.CreateHostname(ctx, &guestlistv1.CreateHostnameRequest{TenantId: "acme", Hostname: &guestlistv1.Hostname{
					Hostname: fmt.Sprintf("h%d.bench.example", i), OriginUrl: "http://127.0.0.1:8081",
					Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
				}})
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "hostnames/s")
	st := n.store.Stats()
	b.ReportMetric(float64(st.Appends)/float64(st.Commits), "appends/commit")
}

// BenchmarkBatchCreateHostnames measures hostnames created per second through BatchCreateHostnames
// with 1,000 hostnames a call. Goal: at least 20,000/s.
func BenchmarkBatchCreateHostnames(b *testing.B) {
	n := startNode(b, b.TempDir())
	tok := n.tenantWithToken("acme")
	c := guestlistv1.NewHostnameServiceClient(n.conn)
	ctx := withToken(tok)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		req := &guestlistv1.BatchCreateHostnamesRequest{TenantId: "acme"}
		for j := range 1000 {
			req.Requests = append(req.Requests, &guestlistv1.CreateHostnameRequest{Hostname: &guestlistv1.Hostname{
				Hostname: fmt.Sprintf("b%d-%d.bench.example", i, j), OriginUrl: "http://127.0.0.1:8081",
				Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
			}})
		}
		if _, err := c.BatchCreateHostnames(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/time.Since(start).Seconds(), "hostnames/s")
}
