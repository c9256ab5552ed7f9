package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
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

// TestHTTPMetricsIgnoreHost: the REST listener's HTTP metrics are there, by method, route and
// status code, but not by the client's Host header: requests with ever new Host values (with or
// without a token, answered or refused) add no time series to /metrics.
func TestHTTPMetricsIgnoreHost(t *testing.T) {
	m, err := telemetry.NewMetrics(context.Background(), "guestlist-test", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	env := startServer(t, func(c *Config) {
		c.Metrics = m.Handler
		c.MeterProvider = m.Provider
	})
	requests := func(host func() string) {
		for _, tc := range []struct{ method, path, token, body string }{
			{"GET", "/v1/tenants/acme", testToken, ""},
			{"GET", "/v1/tenants/acme", "", ""},
			{"POST", "/v1/tenants?tenantId=acme", "wrong", `{"displayName":"Acme"}`},
			{"GET", "/v2/nothing", "", ""},
		} {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, err := http.NewRequestWithContext(ctxT(t), tc.method, env.base+tc.path, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = host()
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	// The series of HTTP metrics (the lines of their _count).
	series := func() []string {
		resp, err := http.Get(env.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if strings.Contains(string(b), "attacker.example") {
			t.Errorf("/metrics has a client's Host in a label:\n%s", b)
		}
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "http_server_") && strings.Contains(l, "_count{") {
				out = append(out, l[:strings.LastIndexByte(l, ' ')])
			}
		}
		return out
	}

	requests(func() string { return env.srv.HTTPAddr().String() })
	before := series()
	var routes, codes bool
	for _, s := range before {
		routes = routes || strings.Contains(s, `http_route="/"`)
		codes = codes || strings.Contains(s, `http_response_status_code="401"`)
	}
	if len(before) == 0 || !routes || !codes {
		t.Fatalf("no HTTP metrics by route and status code:\n%s", strings.Join(before, "\n"))
	}
	for _, s := range before {
		if strings.Contains(s, "server_address") || strings.Contains(s, "server_port") {
			t.Errorf("HTTP metric labelled with the Host header: %s", s)
		}
	}
	i := 0
	for range 250 {
		requests(func() string {
			i++
			return fmt.Sprintf("h%d.attacker.example:%d", i, 1+i)
		})
	}
	if after := series(); !slices.Equal(after, before) {
		t.Errorf("new Host values made new series:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after[:min(len(after), 20)], "\n"))
	}
}
