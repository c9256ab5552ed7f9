package controlplane_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/enforce"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/servercert"
	"guestlist.dev/edge/watch"
	"guestlist.dev/projections/distribute"
	"guestlist.dev/projections/projector"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	"guestlist.dev/services/api/server"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/controlplane"
	"guestlist.dev/services/eventstore/boltstore"
	"guestlist.dev/services/eventstore/instrument"
	"guestlist.dev/services/telemetry"
)

// stack is the whole product in one test: the control plane's API on a bbolt store wrapped by
// the store instrumentation, the projector, the ConfigService on the API's gRPC listener, one edge
// (watch over loopback gRPC, enforce on loopback TLS) and an echo origin, all reporting to one
// in-memory span exporter and one metric pipeline served at the API's /metrics.
type stack struct {
	*node
	spans   *tracetest.InMemoryExporter
	configs *configset.Store
	edge    string // the edge's address
	edgeCA  *servercert.CA
	origin  string
	logs    *lockedBuffer // JSON debug logs of the projector, the distribution and the edge's watch
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startStack(t *testing.T) *stack {
	t.Helper()
	// The process-wide W3C propagator, as telemetry.Setup installs it: the REST gateway and the
	// gRPC server pass the trace context with it.
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	logs := &lockedBuffer{}
	debug := telemetry.NewLogger(logs, slog.LevelDebug, true)
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	metrics, err := telemetry.NewMetrics(context.Background(), "guestlist-test", "test")
	if err != nil {
		t.Fatal(err)
	}
	mp := metrics.Provider

	bolt, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := instrument.Wrap(bolt, instrument.WithTracerProvider(tp), instrument.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.New(controlplane.Config{Store: store, AdminToken: adminToken, EdgeToken: edgeToken, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	proj, err := projector.Open(filepath.Join(dir, "projections.db"), store, projector.WithLogger(debug),
		projector.WithTracerProvider(tp), projector.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	dist := distribute.New(proj, distribute.WithLogger(debug), distribute.WithTracerProvider(tp), distribute.WithMeterProvider(mp),
		distribute.WithAuthorize(func(ctx context.Context) error { _, err := auth.AuthorizeEdge(ctx); return err }))
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Authenticator: cp.Authenticator(), Ready: cp.Ready, Logger: quiet,
		Services: append(cp.Services(), server.Service{
			Name:         configv1.ConfigService_ServiceDesc.ServiceName,
			RegisterGRPC: func(r grpc.ServiceRegistrar) { configv1.RegisterConfigServiceServer(r, dist) },
		}),
		TracerProvider: tp, MeterProvider: mp, Metrics: metrics.Handler,
	})
	if err != nil {
		t.Fatal(err)
	}

	// The edge.
	configs := configset.NewStore()
	edgeCA, err := servercert.LoadOrCreateCA(filepath.Join(dir, "edge-ca"))
	if err != nil {
		t.Fatal(err)
	}
	edgeSrv, err := enforce.New(enforce.Config{Addr: "127.0.0.1:0", Configs: configs, Certificates: edgeCA.GetCertificate,
		EdgeID: "edge-1", Logger: quiet, MeterProvider: mp, Egress: egress.Loopback()})
	if err != nil {
		t.Fatal(err)
	}
	originLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}

	stateDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	runs := []func(context.Context) error{
		srv.Serve, proj.Run, edgeSrv.Serve,
		func(ctx context.Context) error { return echo.ServeListener(ctx, originLn) },
		func(ctx context.Context) error {
			return watch.Run(ctx, conn, configs, watch.Options{EdgeID: "edge-1", Token: edgeToken, Logger: debug,
				StatePath: filepath.Join(stateDir, "edge-config.pb"), TracerProvider: tp, MeterProvider: mp, Backoff: watch.Backoff{Min: 10 * time.Millisecond, Max: 100 * time.Millisecond}})
		},
	}
	done := make(chan error, len(runs))
	for _, run := range runs {
		go func() { done <- run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range runs {
			if err := <-done; err != nil {
				t.Errorf("stopping: %v", err)
			}
		}
		_ = conn.Close()
		_ = proj.Close()
		_ = bolt.Close()
		_ = metrics.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	n := &node{t: t, dir: dir, store: bolt, base: "http://" + srv.HTTPAddr().String(), conn: conn, stop: func() {}}
	n.waitReady()
	return &stack{node: n, spans: spans, configs: configs, edge: edgeSrv.Addr().String(), edgeCA: edgeCA, origin: "http://" + originLn.Addr().String(), logs: logs}
}

// TestOneTraceFromAPIToEdge makes one change over REST with a client's traceparent and follows it:
// the API's spans, the store append, the projector's apply, the distribution's send and the
// edge's configuration update are one trace, each span the parent of the next.
func TestOneTraceFromAPIToEdge(t *testing.T) {
	s := startStack(t)
	token := s.tenantWithToken("acme")
	ca := pkitest.NewCA(t, "Acme Devices")
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}))
	s.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", token,
		map[string]any{"displayName": "devices", "certificatePem": caPEM})

	// The traced change: a client span whose context goes in the traceparent header.
	clientTP := sdktrace.NewTracerProvider()
	_, client := clientTP.Tracer("test-client").Start(context.Background(), "client: create hostname")
	traceID := client.SpanContext().TraceID()
	body := `{"hostname": "pay.example.com", "originUrl": "` + s.origin + `", "mtls": {"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": ["devices"]}}`
	req, err := http.NewRequest("POST", s.base+"/v1/tenants/acme/hostnames", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	propagation.TraceContext{}.Inject(trace.ContextWithSpan(context.Background(), client), propagation.HeaderCarrier(req.Header))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.End()
	if resp.StatusCode != 200 {
		t.Fatalf("create hostname: %d", resp.StatusCode)
	}

	// Wait until the edge holds the hostname and has ended its update span in our trace.
	var edgeSpan tracetest.SpanStub
	deadline := time.Now().Add(10 * time.Second)
	for edgeSpan.Name == "" {
		if _, ok := s.configs.Load().Lookup("pay.example.com"); ok {
			for _, sp := range s.spans.GetSpans() {
				if sp.Name == watch.UpdateSpanName && sp.SpanContext.TraceID() == traceID {
					edgeSpan = sp
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the edge never applied the change in the client's trace")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Walk from the edge's span up to the client, parent by parent.
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, sp := range s.spans.GetSpans() {
		if sp.SpanContext.TraceID() == traceID {
			byID[sp.SpanContext.SpanID()] = sp
		}
	}
	var chain []string
	for sp, ok := edgeSpan, true; ok; sp, ok = byID[sp.Parent.SpanID()] {
		chain = append(chain, sp.Name)
		if sp.Parent.SpanID() == client.SpanContext().SpanID() {
			chain = append(chain, "client")
			break
		}
	}
	want := []string{
		watch.UpdateSpanName,                          // the edge applies the change
		distribute.SendSpanName,                       // the ConfigService sends it to the edge
		projector.ApplySpanName,                       // the projector applies the event
		instrument.SpanName,                           // the event store append of the event
		"guestlist.v1.HostnameService/CreateHostname", // the gRPC server
		"guestlist.v1.HostnameService/CreateHostname", // the REST gateway's loopback client
		"HTTP POST",                                   // the REST server
		"client",
	}
	if strings.Join(chain, " <- ") != strings.Join(want, " <- ") {
		t.Errorf("parent chain from the edge:\n got %s\nwant %s", strings.Join(chain, " <- "), strings.Join(want, " <- "))
	}

	// The per-change logs of the projector, the distribution and the edge carry the trace id.
	// (The distribution logs just after the send, so its line may come after the edge's span.)
	for _, msg := range []string{"projector: change committed", "distribute: change sent", "configuration applied"} {
		found := false
		for deadline := time.Now().Add(5 * time.Second); !found && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			for _, line := range strings.Split(s.logs.String(), "\n") {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg && rec[telemetry.TraceIDKey] == traceID.String() {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("no %q log line with trace_id %s", msg, traceID)
		}
	}
}

// TestMetricsScrape drives real traffic through the edge (an allowed and a denied mTLS request, a
// handshake for an unknown hostname) and the API, then scrapes /metrics over HTTP.
func TestMetricsScrape(t *testing.T) {
	s := startStack(t)
	token := s.tenantWithToken("acme")
	ca := pkitest.NewCA(t, "Acme Devices")
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}))
	s.must(200, "POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", token,
		map[string]any{"displayName": "devices", "certificatePem": caPEM})
	s.must(200, "POST", "/v1/tenants/acme/hostnames", token, map[string]any{
		"hostname": "pay.example.com", "originUrl": s.origin,
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := s.configs.Load().Lookup("pay.example.com"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the edge never got the hostname")
		}
		time.Sleep(5 * time.Millisecond)
	}

	leaf := ca.Client(t, "terminal-42")
	get := func(serverName string, cert *pkitest.Leaf) (int, error) {
		cfg := &tls.Config{RootCAs: s.edgeCA.Pool(), ServerName: serverName}
		if cert != nil {
			c := tls.Certificate{Certificate: [][]byte{cert.Cert.Raw}, PrivateKey: cert.Key}
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		}
		tr := &http.Transport{TLSClientConfig: cfg, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, s.edge)
		}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + serverName + "/hello")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := get("pay.example.com", leaf); err != nil || code != 200 {
		t.Fatalf("with the device certificate: %d %v, want 200", code, err)
	}
	if code, err := get("pay.example.com", nil); err != nil || code != 403 {
		t.Fatalf("without a certificate: %d %v, want 403", code, err)
	}
	if _, err := get("other.example.com", nil); err == nil {
		t.Fatal("a handshake for an unknown hostname succeeded")
	}

	pos := float64(s.streamPosition())
	tests := []struct {
		name   string
		metric string
		labels map[string]string
		check  func(v float64) bool
		want   string
	}{
		{"ok/allowed request", "guestlist_edge_decisions_total", map[string]string{"stage": "request", "mode": "enforce", "verdict": "allow", "reason": "certificate_verified"}, eq(1), "1"},
		{"ok/denied request", "guestlist_edge_decisions_total", map[string]string{"stage": "request", "mode": "enforce", "verdict": "deny", "reason": "certificate_missing"}, eq(1), "1"},
		{"ok/unknown SNI", "guestlist_edge_handshake_failures_total", map[string]string{"cause": enforce.HandshakeCauseUnknownHostname}, eq(1), "1"},
		{"ok/edge revision is the store's position", "guestlist_edge_config_revision", nil, eq(pos), fmt.Sprint(pos)},
		{"ok/edge config age", "guestlist_edge_config_age_seconds", nil, func(v float64) bool { return v >= 0 && v < 60 }, "0 to 60"},
		{"ok/edge updates applied", "guestlist_edge_config_updates_total", map[string]string{"result": "applied"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"ok/edge connected", "guestlist_edge_config_connected", nil, eq(1), "1"},
		{"ok/edge configuration saved", "guestlist_edge_config_saves_total", map[string]string{"result": "whole"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"ok/projector caught up: no lag in events", "guestlist_projector_lag_events", nil, eq(0), "0"},
		{"ok/projector caught up: no lag in seconds", "guestlist_projector_lag_seconds", nil, eq(0), "0"},
		{"ok/projector position", "guestlist_projector_position", nil, eq(pos), fmt.Sprint(pos)},
		{"ok/projector applied events", "guestlist_projector_applied_events_total", nil, func(v float64) bool { return v >= 4 }, ">= 4"},
		{"ok/store appends measured", "guestlist_eventstore_append_duration_seconds", map[string]string{"outcome": "ok"}, func(v float64) bool { return v >= 4 }, ">= 4 appends"},
		{"ok/one watcher", "guestlist_distribute_watchers", nil, eq(1), "1"},
		{"ok/the watcher acknowledged the position", "guestlist_distribute_edge_acked_position", map[string]string{"edge_id": "edge-1"}, eq(pos), fmt.Sprint(pos)},
		{"ok/API calls measured", "rpc_server_call_duration_seconds", map[string]string{"rpc_method": "guestlist.v1.HostnameService/CreateHostname", "rpc_response_status_code": "OK"}, eq(1), "1 call"},
	}
	// Some values settle just after the traffic (the edge's ack reaches the server, the server
	// records a call once it has ended): scrape until they all hold, or report what does not.
	var families map[string]*dto.MetricFamily
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		families = scrape(t, s.base+"/metrics")
		all := true
		for _, tc := range tests {
			v, ok := value(families, tc.metric, tc.labels)
			all = all && ok && tc.check(v)
		}
		if all || time.Now().After(deadline) {
			break
		}
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, ok := value(families, tc.metric, tc.labels)
			if !ok || !tc.check(v) {
				t.Errorf("%s%v = %v (present %v), want %s", tc.metric, tc.labels, v, ok, tc.want)
			}
		})
	}
	// No label anywhere carries a token, a hostname or a tenant id.
	for name, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				for _, bad := range []string{adminToken, edgeToken, token, "pay.example.com", "other.example.com", "acme"} {
					if strings.Contains(l.GetValue(), bad) {
						t.Errorf("%s{%s=%q} carries %q", name, l.GetName(), l.GetValue(), bad)
					}
				}
			}
		}
	}
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }

// streamPosition is the store's last position.
func (n *node) streamPosition() uint64 {
	n.t.Helper()
	p, err := n.store.LastPosition(context.Background())
	if err != nil {
		n.t.Fatal(err)
	}
	return uint64(p)
}

// scrape reads a Prometheus text exposition over HTTP.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// value sums the series of metric name whose labels include labels: counters' and gauges' values,
// histograms' sample counts.
func value(families map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f, ok := families[name]
	if !ok {
		return 0, false
	}
	var sum float64
	found := false
series:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue series
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum, found
}
