package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// benchServer serves the test TenantService (no logs, no tracing) until the benchmark ends.
func benchServer(b *testing.B) *Server {
	b.Helper()
	srv, err := New(Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Authenticator: &oneToken{},
		Services: []Service{{
			Name:            guestlistv1.TenantService_ServiceDesc.ServiceName,
			RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterTenantServiceServer(r, fakeTenants{}) },
			RegisterGateway: guestlistv1.RegisterTenantServiceHandler,
		}},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return srv
}

// BenchmarkRESTGetTenant: GET /v1/tenants/acme through the REST gateway (HTTP/1.1 keep-alive
// client, the gateway's connection to the gRPC server, authentication, validation). The
// in-run baseline is BenchmarkGRPCGetTenant, the same call straight over gRPC.
//
//	go test -run XXX -bench 'GetTenant' -benchmem -count 5 guestlist.dev/services/api/server
func BenchmarkRESTGetTenant(b *testing.B) {
	srv := benchServer(b)
	url := "http://" + srv.HTTPAddr().String() + "/v1/tenants/acme"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(client.CloseIdleConnections)
	get := func() {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d", url, resp.StatusCode)
		}
	}
	serialAndParallel(b, get)
}

// BenchmarkGRPCGetTenant is BenchmarkRESTGetTenant's call straight over gRPC (loopback TCP).
func BenchmarkGRPCGetTenant(b *testing.B) {
	srv := benchServer(b)
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	client := guestlistv1.NewTenantServiceClient(conn)
	ctx := withToken(context.Background(), testToken)
	get := func() {
		if _, err := client.GetTenant(ctx, &guestlistv1.GetTenantRequest{TenantId: "acme"}); err != nil {
			b.Fatal(err)
		}
	}
	serialAndParallel(b, get)
}

// serialAndParallel runs call as the sub-benchmarks "serial" (one at a time) and "parallel"
// (b.RunParallel).
func serialAndParallel(b *testing.B, call func()) {
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			call()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				call()
			}
		})
	})
}
