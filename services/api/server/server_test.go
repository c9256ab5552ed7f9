package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"guestlist.dev/edge/pkitest"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/auth"
)

const testToken = "test-token"

func TestMain(m *testing.M) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	m.Run()
}

// --- scaffolding: a test-only TenantService, a one-token authenticator, a streaming method ---

// fakeTenants is test scaffolding for the plumbing: it echoes requests, reports the caller's
// principal, and fails, panics or stalls on demand.
type fakeTenants struct {
	guestlistv1.UnimplementedTenantServiceServer
}

var testCodes = map[string]codes.Code{
	"code:PERMISSION_DENIED": codes.PermissionDenied,
	"code:ABORTED":           codes.Aborted,
	"code:ALREADY_EXISTS":    codes.AlreadyExists,
	"code:NOT_FOUND":         codes.NotFound,
}

func (fakeTenants) CreateTenant(_ context.Context, req *guestlistv1.CreateTenantRequest) (*guestlistv1.Tenant, error) {
	if c, ok := testCodes[req.GetTenant().GetDisplayName()]; ok {
		return nil, status.Error(c, "as requested")
	}
	return &guestlistv1.Tenant{TenantId: req.GetTenantId(), DisplayName: req.GetTenant().GetDisplayName(), State: guestlistv1.Tenant_STATE_ACTIVE}, nil
}

func (fakeTenants) GetTenant(ctx context.Context, req *guestlistv1.GetTenantRequest) (*guestlistv1.Tenant, error) {
	switch req.GetTenantId() {
	case "panic":
		panic("boom")
	case "slow":
		time.Sleep(300 * time.Millisecond)
	}
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no principal in context")
	}
	return &guestlistv1.Tenant{TenantId: req.GetTenantId(), DisplayName: p.Actor()}, nil
}

type oneToken struct{ calls atomic.Int64 }

func (a *oneToken) Authenticate(_ context.Context, token string) (auth.Principal, error) {
	a.calls.Add(1)
	if token != testToken {
		return auth.Principal{}, status.Error(codes.Unauthenticated, "unknown token")
	}
	return auth.Principal{Role: auth.RoleAdmin}, nil
}

// A server-streaming method built by hand, to exercise the stream interceptors.
const watchMethod = "/guestlist.test.v1.StreamTest/Watch"

var streamTestDesc = grpc.ServiceDesc{
	ServiceName: "guestlist.test.v1.StreamTest",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Watch",
		ServerStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			req := &guestlistv1.GetTenantRequest{}
			if err := stream.RecvMsg(req); err != nil {
				return err
			}
			if req.GetTenantId() == "panic" {
				panic("stream boom")
			}
			p, _ := auth.FromContext(stream.Context())
			return stream.SendMsg(&guestlistv1.Tenant{TenantId: req.GetTenantId(), DisplayName: p.Actor()})
		},
	}},
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testEnv struct {
	srv    *Server
	authn  *oneToken
	logs   *syncBuffer
	conn   *grpc.ClientConn
	base   string // http://127.0.0.1:port
	stop   func() error
	ready  *atomic.Pointer[error]
	client guestlistv1.TenantServiceClient
}

func startServer(t *testing.T, mutate func(*Config)) *testEnv {
	t.Helper()
	env := &testEnv{authn: &oneToken{}, logs: &syncBuffer{}, ready: &atomic.Pointer[error]{}}
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	cfg := Config{
		GRPCAddr:      "127.0.0.1:0",
		HTTPAddr:      "127.0.0.1:0",
		Authenticator: env.authn,
		Services: []Service{
			{
				Name:            guestlistv1.TenantService_ServiceDesc.ServiceName,
				RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterTenantServiceServer(r, fakeTenants{}) },
				RegisterGateway: guestlistv1.RegisterTenantServiceHandler,
			},
			{
				Name:         streamTestDesc.ServiceName,
				RegisterGRPC: func(r grpc.ServiceRegistrar) { r.RegisterService(&streamTestDesc, struct{}{}) },
			},
		},
		Ready: func(context.Context) error {
			if e := env.ready.Load(); e != nil {
				return *e
			}
			return nil
		},
		Logger:          slog.New(slog.NewJSONHandler(env.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TracerProvider:  tp,
		ShutdownTimeout: 5 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	env.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	env.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(15 * time.Second):
				serveErr = errors.New("Serve did not return within 15s of cancellation")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := env.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		// The tests that set TLS check the server's certificate themselves; env.conn only
		// waits for the server and calls it.
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	}
	env.conn, err = grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = env.conn.Close() })
	env.client = guestlistv1.NewTenantServiceClient(env.conn)
	env.base = "http://" + srv.HTTPAddr().String()
	waitServing(t, env)
	return env
}

// waitServing waits until the gRPC health check answers SERVING.
func waitServing(t *testing.T, env *testEnv) {
	t.Helper()
	hc := healthpb.NewHealthClient(env.conn)
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not SERVING after 5s: %v %v", resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type httpResult struct {
	status int
	header http.Header
	body   []byte
}

func (env *testEnv) do(t *testing.T, method, path, token, body string, header ...string) httpResult {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, env.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return httpResult{status: resp.StatusCode, header: resp.Header, body: b}
}

// --- tests ---

func TestHealthServing(t *testing.T) {
	env := startServer(t, nil)
	hc := healthpb.NewHealthClient(env.conn)
	for _, svc := range []string{"", guestlistv1.TenantService_ServiceDesc.ServiceName, streamTestDesc.ServiceName} {
		resp, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("Check(%q): %v", svc, err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, want SERVING", svc, resp.GetStatus())
		}
	}
	if n := env.authn.calls.Load(); n != 0 {
		t.Errorf("health checks called the authenticator %d times", n)
	}
}

func TestReflectionListsServices(t *testing.T) {
	env := startServer(t, nil)
	stream, err := reflectionpb.NewServerReflectionClient(env.conn).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	got := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		got[s.GetName()] = true
	}
	for _, want := range []string{"guestlist.v1.TenantService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !got[want] {
			t.Errorf("reflection does not list %s; got %v", want, got)
		}
	}
}

func TestGRPCAuthentication(t *testing.T) {
	env := startServer(t, nil)
	req := &guestlistv1.GetTenantRequest{TenantId: "acme"}

	// Missing or malformed: UNAUTHENTICATED without asking the authenticator.
	for name, ctx := range map[string]context.Context{
		"missing":      ctxT(t),
		"basic scheme": metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Basic dXNlcjpwYXNz"),
		"empty token":  metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "),
		"no scheme":    metadata.AppendToOutgoingContext(ctxT(t), "authorization", testToken),
		"two headers":  metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+testToken, "authorization", "Bearer "+testToken),
	} {
		_, err := env.client.GetTenant(ctx, req)
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: GetTenant error = %v, want UNAUTHENTICATED", name, err)
		}
	}
	if n := env.authn.calls.Load(); n != 0 {
		t.Errorf("missing/malformed headers called the authenticator %d times", n)
	}

	_, err := env.client.GetTenant(withToken(ctxT(t), "wrong"), req)
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("unknown token: GetTenant error = %v, want UNAUTHENTICATED", err)
	}

	got, err := env.client.GetTenant(withToken(ctxT(t), testToken), req)
	if err != nil {
		t.Fatalf("GetTenant with the token: %v", err)
	}
	if got.GetDisplayName() != "admin" {
		t.Errorf("handler saw principal %q, want admin", got.GetDisplayName())
	}
	// The scheme is case-insensitive.
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "bearer "+testToken)
	if _, err := env.client.GetTenant(ctx, req); err != nil {
		t.Errorf("lower-case bearer scheme: %v", err)
	}
}

func TestRESTAuthentication(t *testing.T) {
	env := startServer(t, nil)
	r := env.do(t, "GET", "/v1/tenants/acme", "", "")
	if r.status != http.StatusUnauthorized {
		t.Errorf("no token: status %d, want 401; body %s", r.status, r.body)
	}
	if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
		t.Errorf("no token: WWW-Authenticate = %q, want a Bearer challenge", got)
	}
	var st struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(r.body, &st); err != nil || st.Code != int(codes.Unauthenticated) {
		t.Errorf("no token: body %s is not a google.rpc.Status with code 16 (%v)", r.body, err)
	}
	if r := env.do(t, "GET", "/v1/tenants/acme", "wrong", ""); r.status != http.StatusUnauthorized {
		t.Errorf("unknown token: status %d, want 401", r.status)
	}

	r = env.do(t, "GET", "/v1/tenants/acme", testToken, "")
	if r.status != http.StatusOK {
		t.Fatalf("with the token: status %d, want 200; body %s", r.status, r.body)
	}
	var body map[string]any
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("body %s: %v", r.body, err)
	}
	if body["tenantId"] != "acme" || body["displayName"] != "admin" {
		t.Errorf("body = %s, want lowerCamelCase tenantId=acme and displayName=admin (the principal)", r.body)
	}
	if _, ok := body["createTime"]; ok {
		t.Errorf("body = %s: unpopulated fields must be omitted", r.body)
	}
}

func badRequestOf(t *testing.T, err error) *errdetails.BadRequest {
	t.Helper()
	st := status.Convert(err)
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			return br
		}
	}
	t.Fatalf("status %v has no BadRequest detail", st)
	return nil
}

func TestGRPCValidation(t *testing.T) {
	env := startServer(t, nil)
	ctx := withToken(ctxT(t), testToken)

	_, err := env.client.CreateTenant(ctx, &guestlistv1.CreateTenantRequest{TenantId: "A!", Tenant: &guestlistv1.Tenant{DisplayName: "Acme"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("CreateTenant(A!) error = %v, want INVALID_ARGUMENT", err)
	}
	br := badRequestOf(t, err)
	if len(br.GetFieldViolations()) != 1 || br.GetFieldViolations()[0].GetField() != "tenant_id" || br.GetFieldViolations()[0].GetDescription() == "" {
		t.Errorf("violations = %v, want one for tenant_id with a reason", br.GetFieldViolations())
	}

	// Nested fields are named by their proto path, and every violation is reported.
	_, err = env.client.CreateTenant(ctx, &guestlistv1.CreateTenantRequest{TenantId: "B", Tenant: &guestlistv1.Tenant{}})
	br = badRequestOf(t, err)
	fields := map[string]bool{}
	for _, v := range br.GetFieldViolations() {
		fields[v.GetField()] = true
	}
	if !fields["tenant_id"] || !fields["tenant.display_name"] || len(fields) != 2 {
		t.Errorf("violated fields = %v, want tenant_id and tenant.display_name", fields)
	}

	// Validation runs after authentication: an unauthenticated bad request is UNAUTHENTICATED.
	_, err = env.client.CreateTenant(ctxT(t), &guestlistv1.CreateTenantRequest{TenantId: "A!"})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("unauthenticated invalid request: %v, want UNAUTHENTICATED", err)
	}
}

func TestRESTValidationAndErrors(t *testing.T) {
	env := startServer(t, nil)

	r := env.do(t, "POST", "/v1/tenants?tenantId=A!", testToken, `{"displayName":"Acme"}`)
	if r.status != http.StatusBadRequest {
		t.Fatalf("invalid tenant id: status %d, want 400; body %s", r.status, r.body)
	}
	var st struct {
		Code    int `json:"code"`
		Details []struct {
			Type            string `json:"@type"`
			FieldViolations []struct {
				Field       string `json:"field"`
				Description string `json:"description"`
			} `json:"fieldViolations"`
		} `json:"details"`
	}
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatalf("body %s: %v", r.body, err)
	}
	if st.Code != int(codes.InvalidArgument) || len(st.Details) == 0 || len(st.Details[0].FieldViolations) == 0 ||
		st.Details[0].FieldViolations[0].Field != "tenant_id" || !strings.HasSuffix(st.Details[0].Type, "google.rpc.BadRequest") {
		t.Errorf("body = %s, want code 3 with details[0].fieldViolations[0].field == tenant_id", r.body)
	}

	r = env.do(t, "POST", "/v1/tenants?tenantId=acme", testToken, `{"displayName":"Acme","bogus":1}`)
	if r.status != http.StatusBadRequest {
		t.Errorf("unknown JSON field: status %d, want 400; body %s", r.status, r.body)
	}

	r = env.do(t, "POST", "/v1/tenants?tenantId=acme", testToken, `{"displayName":"Acme"}`)
	if r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"state":"STATE_ACTIVE"`)) {
		t.Errorf("valid create: status %d body %s, want 200 with the enum's name", r.status, r.body)
	}

	for name, want := range map[string]int{
		"code:PERMISSION_DENIED": http.StatusForbidden,
		"code:ABORTED":           http.StatusConflict,
		"code:ALREADY_EXISTS":    http.StatusConflict,
		"code:NOT_FOUND":         http.StatusNotFound,
	} {
		r := env.do(t, "POST", "/v1/tenants?tenantId=acme", testToken, fmt.Sprintf(`{"displayName":%q}`, name))
		if r.status != want {
			t.Errorf("%s: status %d, want %d; body %s", name, r.status, want, r.body)
		}
	}
}

func TestBuiltinHTTP(t *testing.T) {
	env := startServer(t, func(c *Config) {
		c.ExtraHTTP = map[string]http.Handler{"GET /metrics": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "metrics here")
		})}
	})

	r := env.do(t, "GET", "/openapi.json", "", "")
	if r.status != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Errorf("/openapi.json: status %d, content type %q", r.status, r.header.Get("Content-Type"))
	}
	var doc struct {
		Paths map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatalf("/openapi.json is not JSON: %v", err)
	}
	if _, ok := doc.Paths["/v1/tenants"]; !ok {
		t.Errorf("/openapi.json has no /v1/tenants path")
	}

	if r := env.do(t, "GET", "/healthz", "", ""); r.status != http.StatusOK || strings.TrimSpace(string(r.body)) != "ok" {
		t.Errorf("/healthz: %d %q", r.status, r.body)
	}
	if r := env.do(t, "GET", "/metrics", "", ""); r.status != http.StatusOK || string(r.body) != "metrics here" {
		t.Errorf("/metrics (ExtraHTTP): %d %q", r.status, r.body)
	}

	notReady := errors.New("event store not open yet")
	env.ready.Store(&notReady)
	r = env.do(t, "GET", "/readyz", "", "")
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "event store not open yet") {
		t.Errorf("/readyz while not ready: %d %q, want 503 with the reason", r.status, r.body)
	}
	env.ready.Store(nil)
	if r := env.do(t, "GET", "/readyz", "", ""); r.status != http.StatusOK {
		t.Errorf("/readyz when ready: %d %q, want 200", r.status, r.body)
	}

	// Bodies beyond the limit are refused.
	big := `{"displayName":"` + strings.Repeat("x", MaxHTTPBodySize) + `"}`
	if r := env.do(t, "POST", "/v1/tenants?tenantId=acme", testToken, big); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: status %d, want 413", r.status)
	}

	// Requests that match no binding get the router's status.
	if r := env.do(t, "DELETE", "/v1/tenants/acme", testToken, ""); r.status != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /v1/tenants/acme: status %d, want 405", r.status)
	}
	if r := env.do(t, "GET", "/v2/nothing", testToken, ""); r.status != http.StatusNotFound {
		t.Errorf("GET /v2/nothing: status %d, want 404", r.status)
	}
}

func TestPanicRecovery(t *testing.T) {
	env := startServer(t, nil)
	ctx := withToken(ctxT(t), testToken)
	_, err := env.client.GetTenant(ctx, &guestlistv1.GetTenantRequest{TenantId: "panic"})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panicking handler: %v, want INTERNAL", err)
	}
	if strings.Contains(err.Error(), "boom") {
		t.Errorf("the panic value leaked to the client: %v", err)
	}
	if r := env.do(t, "GET", "/v1/tenants/panic", testToken, ""); r.status != http.StatusInternalServerError {
		t.Errorf("REST panicking handler: status %d, want 500", r.status)
	}
	if _, err := env.client.GetTenant(ctx, &guestlistv1.GetTenantRequest{TenantId: "acme"}); err != nil {
		t.Errorf("after a panic: %v", err)
	}
	logs := env.logs.String()
	if !strings.Contains(logs, "panic in RPC handler") || !strings.Contains(logs, "boom") || !strings.Contains(logs, "goroutine") {
		t.Errorf("the panic was not logged with its stack:\n%s", logs)
	}
}

func TestStreamInterceptors(t *testing.T) {
	env := startServer(t, nil)
	watch := func(ctx context.Context, id string) (*guestlistv1.Tenant, error) {
		s, err := env.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, watchMethod)
		if err != nil {
			return nil, err
		}
		if err := s.SendMsg(&guestlistv1.GetTenantRequest{TenantId: id}); err != nil {
			return nil, err
		}
		if err := s.CloseSend(); err != nil {
			return nil, err
		}
		out := &guestlistv1.Tenant{}
		if err := s.RecvMsg(out); err != nil {
			return nil, err
		}
		return out, nil
	}
	if _, err := watch(ctxT(t), "acme"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("stream without token: %v, want UNAUTHENTICATED", err)
	}
	ctx := withToken(ctxT(t), testToken)
	if _, err := watch(ctx, "A!"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("stream with invalid request: %v, want INVALID_ARGUMENT", err)
	} else if br := badRequestOf(t, err); br.GetFieldViolations()[0].GetField() != "tenant_id" {
		t.Errorf("stream violations = %v", br.GetFieldViolations())
	}
	if _, err := watch(ctx, "panic"); status.Code(err) != codes.Internal {
		t.Errorf("panicking stream: %v, want INTERNAL", err)
	}
	got, err := watch(ctx, "acme")
	if err != nil || got.GetDisplayName() != "admin" {
		t.Errorf("stream: %v, %v; want the admin principal", got, err)
	}
}

func TestAccessLogCarriesTraceFromREST(t *testing.T) {
	env := startServer(t, nil)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	r := env.do(t, "GET", "/v1/tenants/acme", testToken, "", "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var found bool
	for _, line := range strings.Split(env.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "rpc" || rec["method"] != "/guestlist.v1.TenantService/GetTenant" {
			continue
		}
		found = true
		if rec["code"] != "OK" || rec["actor"] != "admin" || rec["duration"] == nil {
			t.Errorf("access log = %v", rec)
		}
		if rec["trace_id"] != traceID || rec["span_id"] == nil {
			t.Errorf("access log trace_id = %v, want the caller's %s", rec["trace_id"], traceID)
		}
	}
	if !found {
		t.Errorf("no access log line for GetTenant:\n%s", env.logs.String())
	}
}

func TestGracefulShutdown(t *testing.T) {
	env := startServer(t, nil)
	ctx := withToken(ctxT(t), testToken)

	type result struct {
		t   *guestlistv1.Tenant
		err error
	}
	inflight := make(chan result, 1)
	go func() {
		got, err := env.client.GetTenant(ctx, &guestlistv1.GetTenantRequest{TenantId: "slow"})
		inflight <- result{got, err}
	}()
	// A long-lived stream must not hold the shutdown up until its timeout.
	watch, err := healthpb.NewHealthClient(env.conn).Watch(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if first, err := watch.Recv(); err != nil || first.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch first: %v %v", first, err)
	}
	time.Sleep(100 * time.Millisecond) // let the slow call start

	start := time.Now()
	if err := env.stop(); err != nil {
		t.Fatalf("Serve returned %v after cancellation", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v (the timeout is 5s: something was not drained)", d)
	}
	for {
		resp, err := watch.Recv()
		if err != nil {
			break // the stream ended
		}
		if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health still SERVING during shutdown")
		}
	}
	res := <-inflight
	if res.err != nil {
		t.Errorf("in-flight call was cut off by a graceful shutdown: %v", res.err)
	}
	// Both listeners are closed.
	if _, err := http.Get(env.base + "/healthz"); err == nil {
		t.Error("HTTP still answers after shutdown")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	base := func() Config {
		return Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Authenticator: &oneToken{}}
	}
	cases := map[string]func(*Config){
		"no authenticator": func(c *Config) { c.Authenticator = nil },
		"no address":       func(c *Config) { c.HTTPAddr = "" },
		"nameless service": func(c *Config) { c.Services = []Service{{RegisterGRPC: func(grpc.ServiceRegistrar) {}}} },
		"wrong name": func(c *Config) {
			c.Services = []Service{{Name: "guestlist.v1.Nope", RegisterGRPC: func(r grpc.ServiceRegistrar) {
				guestlistv1.RegisterTenantServiceServer(r, fakeTenants{})
			}}}
		},
		"builtin collision": func(c *Config) { c.ExtraHTTP = map[string]http.Handler{"/healthz": http.NotFoundHandler()} },
		"bad address":       func(c *Config) { c.GRPCAddr = "127.0.0.1:notaport" },
	}
	for name, mutate := range cases {
		cfg := base()
		mutate(&cfg)
		if s, err := New(cfg); err == nil {
			_ = s.Close()
			t.Errorf("%s: New succeeded", name)
		}
	}

	// A server that is never served releases its ports on Close.
	s, err := New(base())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Serve(context.Background()); err == nil {
		t.Error("Serve after Close succeeded")
	}
}

// TestGatewayOnAWildcardGRPCAddress: the REST gateway reaches the gRPC server in memory, so it
// works whatever interface the gRPC listener is bound to.
func TestGatewayOnAWildcardGRPCAddress(t *testing.T) {
	env := startServer(t, func(c *Config) { c.GRPCAddr = ":0" })
	if r := env.do(t, "GET", "/v1/tenants/acme", testToken, ""); r.status != http.StatusOK {
		t.Fatalf("GET /v1/tenants/acme = %d %s", r.status, r.body)
	}
}

// TestGRPCListenerTLS: with Config.TLS the gRPC listener speaks TLS only, clients that trust its
// certificate's CA reach it, plaintext clients and clients trusting another CA do not, and the
// REST gateway still reaches the gRPC server (in memory, without a certificate naming this
// process).
func TestGRPCListenerTLS(t *testing.T) {
	ca := pkitest.NewCA(t, "config service CA")
	leaf := ca.Server(t, []string{"projector.internal"})
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert}
	env := startServer(t, func(c *Config) {
		c.GRPCAddr = ":0"
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	addr := env.srv.GRPCAddr().String()
	if _, port, _ := net.SplitHostPort(addr); port != "" {
		addr = "127.0.0.1:" + port
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	check := func(t *testing.T, creds credentials.TransportCredentials) error {
		t.Helper()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = guestlistv1.NewTenantServiceClient(conn).GetTenant(withToken(ctx, testToken), &guestlistv1.GetTenantRequest{TenantId: "acme"})
		return err
	}
	t.Run("ok/a client trusting the CA", func(t *testing.T) {
		if err := check(t, credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "projector.internal"})); err != nil {
			t.Fatalf("GetTenant over TLS: %v", err)
		}
	})
	t.Run("ok/REST through the gateway", func(t *testing.T) {
		if r := env.do(t, "GET", "/v1/tenants/acme", testToken, ""); r.status != http.StatusOK {
			t.Fatalf("GET /v1/tenants/acme = %d %s", r.status, r.body)
		}
	})
	t.Run("fail/plaintext client", func(t *testing.T) {
		if err := check(t, insecure.NewCredentials()); status.Code(err) != codes.Unavailable {
			t.Fatalf("GetTenant in plaintext = %v, want UNAVAILABLE", err)
		}
	})
	t.Run("fail/a client trusting another CA", func(t *testing.T) {
		other := x509.NewCertPool()
		other.AddCert(pkitest.NewCA(t, "another CA").Cert)
		err := check(t, credentials.NewTLS(&tls.Config{RootCAs: other, ServerName: "projector.internal"}))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("GetTenant trusting another CA = %v, want UNAVAILABLE about the certificate", err)
		}
	})
	t.Run("fail/a client expecting another name", func(t *testing.T) {
		err := check(t, credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "api.internal"}))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("GetTenant expecting another name = %v, want UNAVAILABLE about the certificate", err)
		}
	})
	t.Run("fail/no certificate configured", func(t *testing.T) {
		_, err := New(Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Authenticator: &oneToken{}, TLS: &tls.Config{}})
		if err == nil || !strings.Contains(err.Error(), "Config.TLS") {
			t.Fatalf("New with a TLS config without a certificate = %v", err)
		}
	})
}

// TestHTTPListenerTLS: with Config.HTTPTLS the HTTP listener serves HTTPS only, at TLS 1.2 or
// later even when the configuration allows less, and offers h2: REST calls over it work, a
// plaintext request gets net/http's 400, clients that do not trust the CA or offer TLS 1.1 at most
// fail the handshake; the gRPC listener is not affected.
func TestHTTPListenerTLS(t *testing.T) {
	ca := pkitest.NewCA(t, "HTTP listener CA")
	leaf := ca.Server(t, []string{"api.internal"})
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert}
	env := startServer(t, func(c *Config) {
		c.HTTPTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS10}
	})
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	addr := env.srv.HTTPAddr().String()
	// get sends a REST call over TLS with tc, offering h2 too when h2 is set.
	get := func(t *testing.T, tc *tls.Config, h2 bool) (*http.Response, []byte, error) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: h2}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctxT(t), "GET", "https://"+addr+"/v1/tenants/acme", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b, nil
	}
	t.Run("ok/REST over HTTPS, h2 offered", func(t *testing.T) {
		resp, body, err := get(t, &tls.Config{RootCAs: roots, ServerName: "api.internal"}, true)
		if err != nil || resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Fatalf("GET over HTTPS: %v %v %s", resp, err, body)
		}
	})
	t.Run("ok/gRPC stays plaintext", func(t *testing.T) {
		if _, err := env.client.GetTenant(withToken(ctxT(t), testToken), &guestlistv1.GetTenantRequest{TenantId: "acme"}); err != nil {
			t.Fatalf("GetTenant in plaintext: %v", err)
		}
	})
	t.Run("fail/plaintext request", func(t *testing.T) {
		if r := env.do(t, "GET", "/v1/tenants/acme", testToken, ""); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "HTTP request to an HTTPS server") {
			t.Fatalf("GET in plaintext = %d %s, want 400", r.status, r.body)
		}
	})
	t.Run("fail/a client trusting another CA", func(t *testing.T) {
		other := x509.NewCertPool()
		other.AddCert(pkitest.NewCA(t, "another CA").Cert)
		if _, _, err := get(t, &tls.Config{RootCAs: other, ServerName: "api.internal"}, true); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Fatalf("GET trusting another CA = %v", err)
		}
	})
	t.Run("fail/TLS 1.1", func(t *testing.T) {
		// HTTP/1.1 only: h2 refuses TLS older than 1.2 by itself.
		_, _, err := get(t, &tls.Config{RootCAs: roots, ServerName: "api.internal", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, false)
		if err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("a client offering TLS 1.1 at most: %v, want a handshake failure about the protocol version", err)
		}
	})
	t.Run("fail/no certificate configured", func(t *testing.T) {
		_, err := New(Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Authenticator: &oneToken{}, HTTPTLS: &tls.Config{}})
		if err == nil || !strings.Contains(err.Error(), "Config.HTTPTLS has no certificate") {
			t.Fatalf("New with an HTTP TLS config without a certificate = %v", err)
		}
	})
}

// TestGatewayConnectionIsNotForgeable: the gateway's plaintext exception goes by the connection's
// type, which only the in-memory listener makes; a network client that sends what the gateway
// sends (plaintext HTTP/2 prior knowledge) still gets TLS.
func TestGatewayConnectionIsNotForgeable(t *testing.T) {
	ca := pkitest.NewCA(t, "config service CA")
	leaf := ca.Server(t, []string{"projector.internal"})
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert}
	env := startServer(t, func(c *Config) { c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}} })
	c, err := net.DialTimeout("tcp", env.srv.GRPCAddr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	// A TLS server answers a ClientHello-less stream with an alert record (or nothing) and closes;
	// an HTTP/2 server would answer with a SETTINGS frame (type 4 at byte 3).
	if len(b) >= 4 && b[3] == 0x04 {
		t.Fatalf("the TLS listener answered plaintext HTTP/2: % x", b)
	}
	if len(b) > 0 && b[0] != 0x15 {
		t.Fatalf("the TLS listener answered something other than a TLS alert: % x", b)
	}
}

// TestNoRESTWithoutBindings: a server whose services have no REST bindings (the projector's
// ConfigService) serves no gateway and no /openapi.json, only the built-in endpoints.
func TestNoRESTWithoutBindings(t *testing.T) {
	env := startServer(t, func(c *Config) {
		c.Services = c.Services[1:] // the gRPC-only test service
	})
	for _, path := range []string{"/openapi.json", "/v1/tenants", "/"} {
		if r := env.do(t, "GET", path, "", ""); r.status != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, r.status)
		}
	}
	if r := env.do(t, "GET", "/healthz", "", ""); r.status != http.StatusOK {
		t.Errorf("/healthz: %d", r.status)
	}
	if r := env.do(t, "GET", "/readyz", "", ""); r.status != http.StatusOK {
		t.Errorf("/readyz: %d", r.status)
	}
}

// TestServeCancelledAtOnce: a Serve whose context is done before its listeners are served (a
// SIGTERM during startup) shuts down cleanly and returns nil, whichever of its gRPC listeners
// (the network one, the gateway's in-memory one) had not started serving yet.
func TestServeCancelledAtOnce(t *testing.T) {
	for i := range 30 {
		s, err := New(Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Authenticator: &oneToken{},
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.Serve(ctx); err != nil {
			t.Fatalf("run %d: Serve with a context done at once = %v, want nil", i, err)
		}
	}
}

// TestGatewayCallsNameTheirPeer: the access log's peer of a REST call says that it came through
// the gateway; a gRPC call's is the client's address, over TLS as in plaintext.
func TestGatewayCallsNameTheirPeer(t *testing.T) {
	ca := pkitest.NewCA(t, "config service CA")
	leaf := ca.Server(t, []string{"projector.internal"})
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert}
	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{
		{"ok/plaintext", nil},
		{"ok/TLS", &tls.Config{Certificates: []tls.Certificate{cert}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := startServer(t, func(c *Config) { c.TLS = tc.tls })
			if r := env.do(t, "GET", "/v1/tenants/acme", testToken, ""); r.status != http.StatusOK {
				t.Fatalf("GET /v1/tenants/acme = %d %s", r.status, r.body)
			}
			if _, err := guestlistv1.NewTenantServiceClient(env.conn).GetTenant(withToken(ctxT(t), testToken), &guestlistv1.GetTenantRequest{TenantId: "acme"}); err != nil {
				t.Fatalf("GetTenant: %v", err)
			}
			var peers []string
			for _, line := range strings.Split(env.logs.String(), "\n") {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "rpc" || rec["method"] != "/guestlist.v1.TenantService/GetTenant" {
					continue
				}
				p, _ := rec["peer"].(string)
				peers = append(peers, p)
			}
			if len(peers) != 2 || peers[0] != "rest-gateway" || !strings.HasPrefix(peers[1], "127.0.0.1:") {
				t.Fatalf("peers of a REST and a gRPC GetTenant = %q, want rest-gateway and 127.0.0.1:port", peers)
			}
		})
	}
}

// TestListenerTLSPerClientConfig: TLS 1.2 or later holds on both listeners also when the TLS
// configuration comes from Config.TLS's or Config.HTTPTLS's GetConfigForClient, whose per-client
// configuration may allow older versions: a client offering TLS 1.1 at most fails the handshake,
// one offering TLS 1.2 gets the certificate of the per-client configuration.
func TestListenerTLSPerClientConfig(t *testing.T) {
	ca := pkitest.NewCA(t, "per-client CA")
	leaf := ca.Server(t, []string{"api.internal"})
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert}
	perClient := func() *tls.Config {
		return &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS10, CipherSuites: []uint16{
				tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, // the second for TLS 1.1
			}}, nil
		}}
	}
	env := startServer(t, func(c *Config) {
		c.TLS = perClient()
		c.HTTPTLS = perClient()
	})
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	port := func(a net.Addr) string {
		_, p, _ := net.SplitHostPort(a.String())
		return "127.0.0.1:" + p
	}
	for _, tc := range []struct {
		name    string
		addr    string
		alpn    string
		maxVers uint16
		wantErr string
	}{
		{name: "ok/HTTP listener, TLS 1.2", addr: port(env.srv.HTTPAddr()), alpn: "http/1.1", maxVers: tls.VersionTLS12},
		{name: "ok/gRPC listener, TLS 1.2", addr: port(env.srv.GRPCAddr()), alpn: "h2", maxVers: tls.VersionTLS12},
		{name: "fail/HTTP listener, TLS 1.1", addr: port(env.srv.HTTPAddr()), alpn: "http/1.1", maxVers: tls.VersionTLS11, wantErr: "protocol version"},
		{name: "fail/gRPC listener, TLS 1.1", addr: port(env.srv.GRPCAddr()), alpn: "h2", maxVers: tls.VersionTLS11, wantErr: "protocol version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &net.Dialer{Timeout: 3 * time.Second}
			c, err := tls.DialWithDialer(d, "tcp", tc.addr, &tls.Config{RootCAs: roots, ServerName: "api.internal",
				NextProtos: []string{tc.alpn}, MinVersion: tls.VersionTLS10, MaxVersion: tc.maxVers})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake at TLS 1.2: %v", err)
				}
				defer c.Close()
				if st := c.ConnectionState(); st.Version != tls.VersionTLS12 || !st.PeerCertificates[0].Equal(leaf.Cert) {
					t.Fatalf("handshake: version %x, certificate %s", st.Version, st.PeerCertificates[0].Subject)
				}
				return
			}
			if err == nil {
				v := c.ConnectionState().Version
				c.Close()
				t.Fatalf("a client offering TLS 1.1 at most completed the handshake (version %x)", v)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("handshake at TLS 1.1: %v, want %q", err, tc.wantErr)
			}
		})
	}
}
