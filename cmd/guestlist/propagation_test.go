package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkPropagation measures, for changes made through the REST API of "guestlist dev", the time
// from the API's acknowledgment to the in-process edge holding the change (the next request it
// decides uses it). Each op is one change; p50 and p99 are reported. Goal: p99 ≤ 100 ms.
//
//	go test -run XXX -bench Propagation -benchtime 200x guestlist.dev/guestlist/cmd/guestlist
func BenchmarkPropagation(b *testing.B) {
	dir := b.TempDir()
	out := &lockedBuffer{}
	token := "gla_" + strings.Repeat("ab", 32)
	cfg := devConfig{
		DataDir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", EdgeAddr: "127.0.0.1:0", OriginAddr: "127.0.0.1:0",
		AdminToken: token, TokenSource: tokenFromFlag, Logger: slog.New(slog.DiscardHandler), Stdout: out,
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp, err := openDev(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serveAPI(ctx, cfg, cp) }()
	defer func() {
		cancel()
		<-done
		cp.Close()
	}()
	var api string
	for deadline := time.Now().Add(10 * time.Second); api == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if m := regexp.MustCompile(`REST API\s+(http://127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String()); m != nil {
			api = m[1]
		}
	}
	call := func(method, path, body string) {
		req, _ := http.NewRequest(method, api+path, bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("%s %s: %d", method, path, resp.StatusCode)
		}
	}
	call("POST", "/v1/tenants?tenantId=acme", `{"displayName":"a"}`)
	call("POST", "/v1/tenants/acme/hostnames", `{"hostname":"pay.acme.example","originUrl":"http://127.0.0.1:1/v0","mtls":{"mode":"MTLS_MODE_OFF"}}`)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		want := fmt.Sprintf("http://127.0.0.1:1/v%d", i+1)
		call("PATCH", "/v1/tenants/acme/hostnames/pay.acme.example", `{"originUrl":"`+want+`"}`)
		acked := time.Now()
		for {
			if h, ok := cp.edgeConfigs.Load().Lookup("pay.acme.example"); ok && h.Config.GetOriginUrl() == want {
				break
			}
			if time.Since(acked) > 10*time.Second {
				b.Fatalf("change %d never reached the edge", i)
			}
			time.Sleep(20 * time.Microsecond)
		}
		lat = append(lat, time.Since(acked))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds())/1000, "p99-ms")
}
