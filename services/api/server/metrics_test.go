package server

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/telemetry"
)

func TestMetricsEndpoint(t *testing.T) {
	m, err := telemetry.NewMetrics(context.Background(), "guestlist-test", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	env := startServer(t, func(c *Config) {
		c.Metrics = m.Handler
		c.MeterProvider = m.Provider
	})

	// Real traffic: a gRPC call, a REST call (through the gateway), an unauthenticated call, and a
	// call to a method nobody registered.
	ctx := withToken(ctxT(t), testToken)
	if _, err := env.client.GetTenant(ctx, &guestlistv1.GetTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatalf("GetTenant: %v", err)
	}
	if r := env.do(t, "GET", "/v1/tenants/acme", testToken, ""); r.status != http.StatusOK {
		t.Fatalf("REST GetTenant: %d %s", r.status, r.body)
	}
	if _, err := env.client.GetTenant(ctxT(t), &guestlistv1.GetTenantRequest{TenantId: "acme"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetTenant without a token: %v", err)
	}
	err = env.conn.Invoke(ctx, "/made.up.Service/Method"+strings.Repeat("x", 8), &guestlistv1.GetTenantRequest{}, &guestlistv1.Tenant{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("made-up method: %v", err)
	}

	// /metrics needs no token. The server records a call's duration once the call has ended,
	// which may be just after the client has its answer: scrape until every call is in.
	okCount := `rpc_method="guestlist.v1.TenantService/GetTenant",rpc_response_status_code="OK",rpc_system_name="grpc"} 2`
	unauthCount := `rpc_method="guestlist.v1.TenantService/GetTenant",rpc_response_status_code="UNAUTHENTICATED",rpc_system_name="grpc"} 1`
	var text string
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(env.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text = string(body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/metrics: %d %s", resp.StatusCode, text)
		}
		if strings.Contains(text, okCount) && strings.Contains(text, unauthCount) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	tests := []struct {
		name    string
		substr  string
		present bool
	}{
		{"ok/rpc duration of GetTenant, OK, counted for gRPC and REST", "rpc_server_call_duration_seconds_count{" + `otel_scope_name="go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"`, true},
		{"ok/both OK calls", okCount, true},
		{"ok/unauthenticated calls counted by status", unauthCount, true},
		{"ok/go runtime", "go_goroutines", true},
		{"fail/made-up method names are not measured", "made.up", false},
		{"fail/made-up method names are not measured (escaped)", "made_up", false},
		{"fail/no token in any label", testToken, false},
		{"fail/no bearer header in any label", "Bearer", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Contains(text, tc.substr); got != tc.present {
				t.Errorf("/metrics contains %q = %v, want %v", tc.substr, got, tc.present)
			}
		})
	}
}

func TestMetricsCollision(t *testing.T) {
	_, err := New(Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Authenticator: &oneToken{},
		Metrics: http.NotFoundHandler(), ExtraHTTP: map[string]http.Handler{"/metrics": http.NotFoundHandler()}})
	if err == nil || !strings.Contains(err.Error(), "Config.Metrics") {
		t.Fatalf("New with Metrics and ExtraHTTP /metrics: %v, want a collision error", err)
	}
}
