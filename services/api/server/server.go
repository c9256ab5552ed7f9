// Package server runs guestlist's API: one gRPC server (with server reflection, grpc.health.v1,
// OpenTelemetry instrumentation and the interceptors that recover panics, log every call,
// authenticate bearer tokens and validate requests with protovalidate) and, on a second listener,
// the REST gateway that calls that same gRPC server over an in-memory connection, so that REST and
// gRPC clients get the very same checks (HandleServerStreamNDJSON binds a server stream to REST as
// NDJSON, one bare message a line). The HTTP listener also serves /openapi.json, /healthz,
// /readyz, the Prometheus metrics at /metrics (Config.Metrics; unauthenticated, like /healthz)
// and any extra handlers.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"buf.build/go/protovalidate"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/metric"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/stats"

	"guestlist.dev/services/auth"
)

// Limits and timeouts of the API listeners.
const (
	// MaxRecvMsgSize is the largest gRPC request the server accepts (4 MiB: a batch of 1,000
	// hostnames with their settings fits many times over).
	MaxRecvMsgSize = 4 << 20
	// MaxHTTPBodySize is the largest REST request body the gateway reads: no more than
	// MaxRecvMsgSize, as the request message it decodes to must reach the gRPC server, and the
	// API's request messages take more room in JSON than in protobuf's encoding.
	MaxHTTPBodySize = MaxRecvMsgSize
	// DefaultShutdownTimeout is how long Serve waits for in-flight calls when Config.ShutdownTimeout
	// is zero.
	DefaultShutdownTimeout = 10 * time.Second

	// largeBodySize and maxLargeBodies: at most maxLargeBodies REST requests whose body is
	// larger than largeBodySize (or of unknown length) are decoded and served at once (each may
	// take tens of times its body in memory until its call ends); see limitDecoding.
	largeBodySize  = 64 << 10
	maxLargeBodies = 4

	// maxGatewayRecvMsgSize bounds the responses the gateway reads from the gRPC server.
	maxGatewayRecvMsgSize = 64 << 20
	// readyTimeout bounds one call of Config.Ready from /readyz.
	readyTimeout = 5 * time.Second
)

// Service is one gRPC service of the API together with its REST gateway bindings.
type Service struct {
	// Name is the full gRPC service name, e.g. guestlistv1.TenantService_ServiceDesc.ServiceName.
	// Its grpc.health.v1 status follows the server's.
	Name string
	// RegisterGRPC registers the service's implementation, e.g.
	// func(r grpc.ServiceRegistrar) { guestlistv1.RegisterTenantServiceServer(r, impl) }.
	RegisterGRPC func(grpc.ServiceRegistrar)
	// RegisterGateway registers the service's REST bindings on the gateway mux, calling the gRPC
	// server through conn, e.g. guestlistv1.RegisterTenantServiceHandler. Nil for a gRPC-only
	// service.
	RegisterGateway func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error
}

// Config configures a Server.
type Config struct {
	// GRPCAddr and HTTPAddr are the TCP addresses to listen on for gRPC and for HTTP (REST gateway,
	// /openapi.json, /healthz, /readyz and ExtraHTTP). A port of 0 picks a free port; see
	// Server.GRPCAddr and Server.HTTPAddr.
	GRPCAddr, HTTPAddr string
	// TLS, when set, makes the gRPC listener serve TLS only, with this configuration (its
	// Certificates or GetCertificate; gRPC requires TLS 1.2 or later and h2, which the server
	// sets). Nil serves plaintext gRPC. The REST gateway reaches the gRPC server in memory either
	// way, so it needs no certificate that names this process.
	TLS *tls.Config
	// HTTPTLS, when set, makes the HTTP listener serve HTTPS only, with this configuration (its
	// Certificates, GetCertificate or GetConfigForClient; TLS 1.2 or later is enforced, and h2 is
	// offered besides HTTP/1.1). A plaintext request there gets net/http's 400 answer ("client
	// sent an HTTP request to an HTTPS server"). Nil serves plaintext HTTP.
	HTTPTLS *tls.Config
	// Authenticator turns the bearer token of every call (except grpc.health.v1 and server
	// reflection) into the auth.Principal that handlers find with auth.FromContext. Required.
	Authenticator auth.Authenticator
	// Services are the API's gRPC services and their gateway bindings.
	Services []Service
	// Ready reports whether the process can serve; nil error means ready. /readyz answers 200 when it
	// returns nil and 503 with the error otherwise. Nil means always ready.
	Ready func(ctx context.Context) error
	// Logger receives access logs and errors; nil means slog.Default().
	Logger *slog.Logger
	// TracerProvider creates the gRPC and HTTP server spans; nil means the global provider.
	TracerProvider trace.TracerProvider
	// MeterProvider records the gRPC server's RPC metrics (otelgrpc: rpc.server.call.duration by
	// service, method and status code; REST calls count too, as the gateway calls the gRPC
	// server) and the REST gateway's HTTP metrics (otelhttp: http.server.request.duration and the
	// body sizes by method, status code and route). Only the methods the server registers are
	// measured, so that calls to made-up method names cannot grow the metrics, and the HTTP
	// metrics do without server.address and server.port, which come from the client's Host
	// header. Nil means the global provider.
	MeterProvider metric.MeterProvider
	// Metrics, when set, is served at GET /metrics on the HTTP listener (e.g. telemetry.Metrics'
	// Handler). Like /healthz it needs no token: it exposes operational counters only, whose
	// labels carry no token, secret, tenant id or hostname.
	Metrics http.Handler
	// ExtraHTTP maps further patterns (http.ServeMux syntax, e.g. "/metrics" or "GET /metrics") to
	// handlers on the HTTP listener. They must not collide with the built-in paths.
	ExtraHTTP map[string]http.Handler
	// ShutdownTimeout bounds the graceful part of Serve's shutdown, after which remaining calls are
	// cut off; zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
}

// Server is the running API: a gRPC listener and an HTTP listener. Create it with New, run it with
// Serve.
type Server struct {
	log       *slog.Logger
	authn     auth.Authenticator
	validator protovalidate.Validator
	ready     func(context.Context) error
	services  []string
	shutdownT time.Duration

	grpcLis, httpLis net.Listener
	gatewayLis       *gatewayListener
	grpc             *grpc.Server
	health           *health.Server
	conn             *grpc.ClientConn
	http             *http.Server
	httpTLS          bool // http serves HTTPS only (Config.HTTPTLS)

	// drainCtx is done once shutdown begins (drain cancels it): streaming calls end.
	drainCtx  context.Context
	drain     context.CancelFunc
	serving   atomic.Bool // true while Serve is running and not shutting down
	started   atomic.Bool
	closeOnce sync.Once
}

// New validates cfg, builds the servers and starts listening on both addresses, so that GRPCAddr
// and HTTPAddr report the real ports right away. Nothing is served until Serve is called; call
// Close instead to release the listeners of a Server that will not be served.
func New(cfg Config) (*Server, error) {
	if cfg.Authenticator == nil {
		return nil, errors.New("server: Config.Authenticator is required")
	}
	if cfg.GRPCAddr == "" || cfg.HTTPAddr == "" {
		return nil, errors.New("server: Config.GRPCAddr and Config.HTTPAddr are required (use \":0\" for any free port)")
	}
	names := make([]string, 0, len(cfg.Services))
	seen := map[string]bool{}
	for i, svc := range cfg.Services {
		switch {
		case svc.Name == "":
			return nil, fmt.Errorf("server: Services[%d] has no Name", i)
		case svc.RegisterGRPC == nil:
			return nil, fmt.Errorf("server: service %s has no RegisterGRPC", svc.Name)
		case seen[svc.Name]:
			return nil, fmt.Errorf("server: service %s is listed twice", svc.Name)
		}
		seen[svc.Name] = true
		names = append(names, svc.Name)
	}

	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("server: create protovalidate validator: %w", err)
	}
	s := &Server{
		log:        cfg.Logger,
		authn:      cfg.Authenticator,
		validator:  validator,
		ready:      cfg.Ready,
		services:   names,
		shutdownT:  cfg.ShutdownTimeout,
		gatewayLis: newGatewayListener(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.drainCtx, s.drain = context.WithCancel(context.Background())
	if s.shutdownT <= 0 {
		s.shutdownT = DefaultShutdownTimeout
	}

	var otelOpts []otelgrpc.Option
	if cfg.TracerProvider != nil {
		otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(cfg.TracerProvider))
	}
	// The server measures its registered methods only (known is filled in once they are
	// registered, before anything is served). The gateway's in-memory client records no metrics:
	// the server's cover its calls.
	known := map[string]bool{}
	serverOpts := append(slices.Clip(otelOpts), otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool {
		return known[info.FullMethodName]
	}))
	if cfg.MeterProvider != nil {
		serverOpts = append(serverOpts, otelgrpc.WithMeterProvider(cfg.MeterProvider))
	}
	otelOpts = append(otelOpts, otelgrpc.WithMeterProvider(noopmetric.NewMeterProvider()))

	grpcOpts := []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler(serverOpts...)),
		grpc.ChainUnaryInterceptor(s.recoverUnary, s.logUnary, s.authUnary, s.validateUnary),
		grpc.ChainStreamInterceptor(s.recoverStream, s.logStream, s.authStream, s.validateStream, s.drainStream),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.ForceServerCodecV2(newRequestCodec()),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    time.Minute,
			Timeout: 20 * time.Second,
		}),
	}
	if cfg.TLS != nil {
		tc, err := serverTLS(cfg.TLS, "Config.TLS")
		if err != nil {
			return nil, err
		}
		grpcOpts = append(grpcOpts, grpc.Creds(gatewayCreds{tls: credentials.NewTLS(tc)}))
	}
	var httpTLS *tls.Config
	if cfg.HTTPTLS != nil {
		if httpTLS, err = serverTLS(cfg.HTTPTLS, "Config.HTTPTLS"); err != nil {
			return nil, err
		}
	}
	s.grpc = grpc.NewServer(grpcOpts...)
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	for _, name := range names {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	for _, svc := range cfg.Services {
		svc.RegisterGRPC(s.grpc)
	}
	info := s.grpc.GetServiceInfo()
	for _, name := range names {
		if _, ok := info[name]; !ok {
			return nil, fmt.Errorf("server: service %s: RegisterGRPC did not register a service of that name", name)
		}
	}
	for svc, si := range info {
		for _, m := range si.Methods {
			known["/"+svc+"/"+m.Name] = true
		}
	}

	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("server: listen for gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	if s.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		_ = s.grpcLis.Close()
		return nil, fmt.Errorf("server: listen for HTTP on %s: %w", cfg.HTTPAddr, err)
	}

	s.conn, err = grpc.NewClient("passthrough:///rest-gateway",
		grpc.WithContextDialer(s.gatewayLis.dial),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)),
		grpc.WithUnaryInterceptor(utf8Unary),
		grpc.WithStreamInterceptor(utf8Stream),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxGatewayRecvMsgSize),
			grpc.MaxCallSendMsgSize(MaxRecvMsgSize),
		),
	)
	if err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("server: create the gateway's in-memory gRPC client: %w", err)
	}

	handler, err := s.httpHandler(cfg)
	if err != nil {
		s.closeListeners()
		_ = s.conn.Close()
		return nil, err
	}
	s.httpTLS = httpTLS != nil
	s.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		// No WriteTimeout: long responses (history exports) may legitimately take longer; idle
		// and slow-reading clients are bounded by the read timeouts and IdleTimeout.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		TLSConfig:      httpTLS,
	}
	// Streams end as soon as the HTTP shutdown begins: a REST request forwarding a stream (a
	// history export) then ends with its error line at once, instead of holding the shutdown up
	// until its timeout and being cut off without one.
	s.http.RegisterOnShutdown(s.drain)
	return s, nil
}

// serverTLS checks a listener's TLS configuration (field names it in the error) and returns a
// copy requiring TLS 1.2 or later, also of the configurations its GetConfigForClient returns
// (which replace it for their handshakes, MinVersion included).
func serverTLS(c *tls.Config, field string) (*tls.Config, error) {
	tc := c.Clone()
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	if len(tc.Certificates) == 0 && tc.GetCertificate == nil && tc.GetConfigForClient == nil {
		return nil, fmt.Errorf("server: %s has no certificate (Certificates or GetCertificate)", field)
	}
	if perClient := tc.GetConfigForClient; perClient != nil {
		tc.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := perClient(hello)
			if err != nil || cc == nil || cc.MinVersion >= tls.VersionTLS12 {
				return cc, err
			}
			cc = cc.Clone()
			cc.MinVersion = tls.VersionTLS12
			return cc, nil
		}
	}
	return tc, nil
}

// GRPCAddr is the address the gRPC listener is bound to (with the real port when GRPCAddr was ":0").
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// HTTPAddr is the address the HTTP listener is bound to (with the real port when HTTPAddr was ":0").
func (s *Server) HTTPAddr() net.Addr { return s.httpLis.Addr() }

// Serve serves gRPC and HTTP until ctx is done, then shuts down gracefully: /readyz and
// grpc.health.v1 turn to not serving, the HTTP server stops accepting and waits for its requests,
// and the gRPC server drains in-flight calls (the contexts of streaming calls, such as
// grpc.health.v1 Watch, are cancelled so that they end); what is still running after
// Config.ShutdownTimeout is cut off. It returns nil after a shutdown caused by ctx, and an error if a listener failed.
// Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("server: Serve called more than once, or after Close")
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, name := range s.services {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.serving.Store(true)

	errc := make(chan error, 3)
	for _, lis := range []net.Listener{s.grpcLis, s.gatewayLis} {
		go func() {
			// ErrServerStopped: the shutdown below stopped the server before this goroutine
			// started serving (ctx was done at once); nothing failed.
			if err := s.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("server: serve gRPC on %s: %w", lis.Addr(), err)
				return
			}
			errc <- nil
		}()
	}
	go func() {
		serve := s.http.Serve
		if s.httpTLS {
			// The certificate comes from TLSConfig, not from files named here.
			serve = func(l net.Listener) error { return s.http.ServeTLS(l, "", "") }
		}
		if err := serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("server: serve HTTP on %s: %w", s.httpLis.Addr(), err)
			return
		}
		errc <- nil
	}()
	s.log.InfoContext(ctx, "serving gRPC and HTTP", "grpc_addr", s.GRPCAddr().String(), "http_addr", s.HTTPAddr().String(), "http_tls", s.httpTLS, "services", s.services)

	var errs []error
	pending := 3
	select {
	case <-ctx.Done():
	case err := <-errc:
		pending--
		errs = append(errs, err)
	}

	s.log.InfoContext(ctx, "API shutting down", "timeout", s.shutdownT)
	s.serving.Store(false)
	s.health.Shutdown()

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdownT)
	defer cancel()
	if err := s.http.Shutdown(sctx); err != nil {
		_ = s.http.Close()
		errs = append(errs, fmt.Errorf("server: shut down HTTP: %w", err))
	}
	if err := s.conn.Close(); err != nil {
		errs = append(errs, fmt.Errorf("server: close the gateway's in-memory connection: %w", err))
	}
	s.drain()
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-sctx.Done():
		s.log.WarnContext(ctx, "API graceful stop timed out; cutting off the remaining calls", "timeout", s.shutdownT)
		s.grpc.Stop()
		<-stopped
	}
	for ; pending > 0; pending-- {
		errs = append(errs, <-errc)
	}
	s.log.InfoContext(ctx, "API stopped")
	return errors.Join(errs...)
}

// Close releases the listeners and the in-memory gateway connection of a Server whose Serve was never
// called. After Serve has been called it does nothing: cancel Serve's context instead.
func (s *Server) Close() error {
	if !s.started.CompareAndSwap(false, true) {
		return nil
	}
	s.closeListeners()
	s.drain()
	s.grpc.Stop()
	if err := s.conn.Close(); err != nil {
		return fmt.Errorf("server: close the gateway's in-memory connection: %w", err)
	}
	return nil
}

func (s *Server) closeListeners() {
	s.closeOnce.Do(func() {
		_ = s.grpcLis.Close()
		_ = s.httpLis.Close()
		_ = s.gatewayLis.Close()
	})
}
