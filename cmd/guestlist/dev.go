package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/enforce"
	"guestlist.dev/projections/distribute"
	"guestlist.dev/services/api/server"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/telemetry"
)

// devConfig is the resolved configuration of "guestlist dev".
type devConfig struct {
	// DataDir holds the event store, read models, keys, the admin token and the decision log. It
	// exists (mode 0700) by the time runControlPlane is called.
	DataDir string
	// Listen addresses; "127.0.0.1:0" picks a free port on loopback (":0" listens on every interface).
	GRPCAddr, HTTPAddr, EdgeAddr, OriginAddr string
	// AdminToken is the platform operator's bearer token, and TokenSource where it came from.
	AdminToken  string
	TokenSource tokenSource
	// DecisionLog is the path of the edge's decision log, or "-" for standard output.
	DecisionLog string
	// OriginAllow is what origins may be at besides public addresses (--origin-allow); nil means
	// dev's default, loopback (egress.Loopback), where the demo echo origin and a developer's own
	// services run.
	OriginAllow *egress.Policy
	// OriginDeny is what origins must not be at, even public or allowed addresses (--origin-deny).
	OriginDeny []egress.Entry
	// BodyIdleTimeout is how long a request body may go without bytes (--body-idle-timeout); 0
	// means no limit.
	BodyIdleTimeout time.Duration
	// Version is the binary's version.
	Version string
	// Logger and TracerProvider are set up from --log-level, --log-format and the OTEL_* variables.
	Logger         *slog.Logger
	TracerProvider trace.TracerProvider
	// Stdout receives the startup banner.
	Stdout io.Writer
	// Metrics serves /metrics on the HTTP listener; nil serves nothing there.
	Metrics http.Handler
	// GRPCTLS, when set, makes the gRPC listener serve TLS only (--grpc-tls-cert of the api and
	// projector roles); nil serves plaintext.
	GRPCTLS *tls.Config
	// HTTPTLS, when set, makes the HTTP listener (REST gateway, /openapi.json, /healthz, /readyz,
	// /metrics) serve HTTPS only (--http-tls-cert); nil serves plaintext HTTP.
	HTTPTLS *tls.Config
	// Role names the process in the banner: "dev" when empty; "api" and "projector" for the
	// distributed roles, which serve through serveAPI with the fields they use.
	Role string
}

// originAllow returns what the dev edge's origins may be at besides public addresses.
func (c devConfig) originAllow() *egress.Policy {
	p := c.OriginAllow
	if p == nil {
		p = egress.Loopback()
	}
	return p.WithDeny(c.OriginDeny...)
}

// runControlPlane runs everything "guestlist dev" serves until ctx is done. It is a variable so that
// tests can stand in for it.
var runControlPlane = serveControlPlane

// controlPlane is what "guestlist dev" serves beside the API server: the control plane's services
// and the roles that run next to them.
type controlPlane struct {
	// Authenticator checks the API's bearer tokens (the admin token among them).
	Authenticator auth.Authenticator
	// Services are the gRPC services and REST bindings of guestlist.v1 (and the edges' ConfigService).
	Services []server.Service
	// Ready reports whether every role can serve (nil = always ready).
	Ready func(context.Context) error
	// Roles run beside the API until ctx is done; grpcAddr is the API's gRPC address (where the
	// in-process edge watches its configuration).
	Roles []func(ctx context.Context, grpcAddr net.Addr) error
	// Banner lines describe the roles for the startup banner.
	Banner []bannerLine
	// Close releases everything opened (nil = nothing to release).
	Close func() error
	// edgeConfigs is the in-process edge's configuration set (for tests and benchmarks).
	edgeConfigs *configset.Store
	// distribute is the ConfigService served, if any (for tests).
	distribute *distribute.Server
}

// bannerLine is one "name  value" line of the startup banner.
type bannerLine struct{ name, value string }

// serveControlPlane opens everything "guestlist dev" runs and serves it until ctx is done.
func serveControlPlane(ctx context.Context, cfg devConfig) error {
	return openAndServe(ctx, cfg, func(ctx context.Context) (*controlPlane, error) { return openDev(ctx, cfg) })
}

// openAndServe opens a process's parts with open, serves them with serveAPI on cfg until ctx is
// done, and closes them on the way out (after serveAPI has drained the API and stopped the roles).
func openAndServe(ctx context.Context, cfg devConfig, open func(context.Context) (*controlPlane, error)) error {
	cp, err := open(ctx)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	if cp.Close != nil {
		defer func() {
			if err := cp.Close(); err != nil {
				cfg.Logger.Error("close", "error", err)
			}
		}()
	}
	return serveAPI(ctx, cfg, cp)
}

// serveAPI serves cp's API on cfg's gRPC and HTTP addresses and runs cp's roles until ctx is done,
// printing the startup banner once everything listens. The first role to fail stops everything.
func serveAPI(ctx context.Context, cfg devConfig, cp *controlPlane) error {
	var extraHTTP map[string]http.Handler
	if cfg.Metrics != nil {
		extraHTTP = map[string]http.Handler{"GET /metrics": cfg.Metrics}
	}
	srv, err := server.New(server.Config{
		GRPCAddr:       cfg.GRPCAddr,
		HTTPAddr:       cfg.HTTPAddr,
		Authenticator:  cp.Authenticator,
		Services:       cp.Services,
		Ready:          cp.Ready,
		Logger:         cfg.Logger,
		TracerProvider: cfg.TracerProvider,
		ExtraHTTP:      extraHTTP,
		TLS:            cfg.GRPCTLS,
		HTTPTLS:        cfg.HTTPTLS,
	})
	if err != nil {
		return fmt.Errorf("start the API: %w", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, role := range cp.Roles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := role(ctx, srv.GRPCAddr()); err != nil && ctx.Err() == nil {
				cancel(err)
			}
		}()
	}
	printBanner(cfg.Stdout, cfg, srv.GRPCAddr(), srv.HTTPAddr(), cp.Banner...)
	serveErr := srv.Serve(ctx)
	cancel(nil)
	wg.Wait()
	if serveErr != nil {
		return fmt.Errorf("serve the API: %w", serveErr)
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// printBanner writes the short startup block: where everything listens and the admin token (none
// when cfg.AdminToken is empty, as in the projector role). It is written in one Write, so that
// whoever reads out while it is written (a script waiting for an address) sees all of it or none.
func printBanner(out io.Writer, cfg devConfig, grpcAddr, httpAddr net.Addr, extra ...bannerLine) {
	w := new(bytes.Buffer)
	defer func() { _, _ = out.Write(w.Bytes()) }()
	api := httpScheme(cfg.HTTPTLS) + "://" + httpAddr.String()
	tokenFile := filepath.Join(cfg.DataDir, adminTokenFile)
	role := cfg.Role
	if role == "" {
		role = "dev"
	}
	fmt.Fprintf(w, "\nguestlist %s %s is running\n", role, cfg.Version)
	grpcTLS := ""
	if cfg.GRPCTLS != nil {
		grpcTLS = "TLS, "
	}
	if role == "projector" {
		fmt.Fprintf(w, "  %-12s %s  (%sgRPC config.v1.ConfigService for edges, grpc.health.v1)\n", configServiceHint, grpcAddr, grpcTLS)
		fmt.Fprintf(w, "  %-12s %s  (/healthz, /readyz, /metrics)\n", httpHint, api)
	} else {
		fmt.Fprintf(w, "  gRPC API     %s  (%sserver reflection, grpc.health.v1)\n", grpcAddr, grpcTLS)
		fmt.Fprintf(w, "  REST API     %s  (%s/openapi.json, /healthz, /readyz, /metrics)\n", api, api)
	}
	for _, l := range extra {
		fmt.Fprintf(w, "  %-12s %s\n", l.name, l.value)
	}
	fmt.Fprintf(w, "  data dir     %s\n", cfg.DataDir)
	if cfg.AdminToken == "" {
		fmt.Fprintf(w, "\nStop: Ctrl-C\n\n")
		return
	}
	switch cfg.TokenSource {
	case tokenGenerated:
		fmt.Fprintf(w, "  admin token  %s\n", cfg.AdminToken)
		fmt.Fprintf(w, "               (new: saved to %s; it is shown only this once)\n", tokenFile)
	case tokenFromFile:
		fmt.Fprintf(w, "  admin token  in %s\n", tokenFile)
	case tokenFromFlag:
		fmt.Fprintf(w, "  admin token  from --admin-token\n")
	}
	// Over HTTPS, curl needs the CA of --http-tls-cert unless it is a public one: the hint says so
	// rather than print a command that fails with "unable to get local issuer certificate".
	cacert, cacertNote := "", ""
	if cfg.HTTPTLS != nil {
		cacert = "--cacert CA.pem "
		cacertNote = "      (CA.pem: the CA that issued --http-tls-cert; leave --cacert out if it is a public CA)\n"
	}
	if cfg.TokenSource == tokenFromFlag {
		fmt.Fprintf(w, "\nTry:  curl %s-H \"Authorization: Bearer $GUESTLIST_ADMIN_TOKEN\" %s/v1/tenants\n", cacert, api)
		fmt.Fprintf(w, "      ($GUESTLIST_ADMIN_TOKEN: the token given with --admin-token or in that variable)\n")
	} else {
		fmt.Fprintf(w, "\nTry:  curl %s-H \"Authorization: Bearer $(cat %s)\" %s/v1/tenants\n", cacert, tokenFile, api)
	}
	fmt.Fprint(w, cacertNote)
	fmt.Fprintf(w, "Stop: Ctrl-C\n\n")
}

// httpScheme is the scheme of an HTTP listener served with the TLS configuration c: "https", or
// "http" when c is nil.
func httpScheme(c *tls.Config) string {
	if c != nil {
		return "https"
	}
	return "http"
}

const devSynopsis = `Runs everything in one process on the embedded event store: the API (gRPC and REST), the
projector, one edge node and a demo echo origin. Data lives in --data-dir; starting again with the
same directory keeps everything. Ctrl-C (SIGINT or SIGTERM) shuts down gracefully.`

// runDev is "guestlist dev".
func runDev(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("dev", devSynopsis, stderr)
	dataDir := fs.String("data-dir", "./.guestlist", "data directory: event store, read models, keys, admin token, decision log")
	grpcAddr := &addrFlag{"127.0.0.1:50051"}
	fs.Var(grpcAddr, "grpc-addr", "gRPC API address (with server reflection and grpc.health.v1); :0 picks a free port")
	httpAddr := &addrFlag{"127.0.0.1:8080"}
	fs.Var(httpAddr, "http-addr", "REST gateway, /openapi.json, /healthz, /readyz and /metrics address")
	edgeAddr := &addrFlag{"127.0.0.1:8443"}
	fs.Var(edgeAddr, "edge-addr", "edge HTTPS address")
	originAddr := &addrFlag{"127.0.0.1:8081"}
	fs.Var(originAddr, "origin-addr", "demo echo origin address")
	token := &tokenFlag{}
	fs.Var(token, "admin-token", "admin bearer token (default: generated on first start and kept in <data-dir>/admin.token)")
	level := &levelFlag{slog.LevelInfo}
	fs.Var(level, "log-level", "log level: debug, info, warn or error")
	format := &choiceFlag{value: "text", choices: []string{"text", "json"}}
	fs.Var(format, "log-format", "log format: text or json")
	decisionLog := fs.String("decision-log", "", "decision log: a file path, or - for standard output (default <data-dir>/decisions.jsonl)")
	originAllow := &egressFlag{egress.Loopback()}
	fs.Var(originAllow, "origin-allow", originAllowUsage+"; an empty value allows public addresses only")
	originDeny := &denyFlag{}
	fs.Var(originDeny, "origin-deny", originDenyUsage)
	bodyIdleTimeout := fs.Duration("body-idle-timeout", enforce.DefaultBodyIdleTimeout, bodyIdleUsage)
	httpTLSFlags := addHTTPTLSFlags(fs)
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	httpTLS, err := httpTLSFlags.load()
	if err != nil {
		return flagError(fs, err, stderr)
	}
	if *bodyIdleTimeout < 0 {
		return flagError(fs, errors.New("--body-idle-timeout must not be negative (0: no limit)"), stderr)
	}
	if *dataDir == "" {
		return flagError(fs, errors.New("--data-dir must not be empty"), stderr)
	}

	logger := telemetry.NewLogger(stderr, level.level, format.value == "json")
	prev := slog.Default()
	slog.SetDefault(logger)
	defer slog.SetDefault(prev)

	resolved, err := ensurePrivateDir(*dataDir, "data directory")
	if err != nil {
		logger.Error("data directory", "dir", *dataDir, "error", err)
		return exitError
	}
	*dataDir = resolved
	tok, src, err := adminToken(*dataDir, token.token)
	if err != nil {
		logger.Error("admin token", "error", err)
		return exitError
	}
	if src == tokenFromFlag {
		warnShortToken(logger, "admin-token", tok, "the API")
	}

	ver := currentVersion()
	tp, shutdownTracing, err := telemetry.Setup(ctx, "guestlist", ver)
	if err != nil {
		logger.Error("set up tracing", "error", err)
		return exitError
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdownTracing(sctx); err != nil {
			logger.Warn("shut down tracing", "error", err)
		}
	}()

	metrics, err := telemetry.SetupMetrics(ctx, "guestlist", ver)
	if err != nil {
		logger.Error("set up metrics", "error", err)
		return exitError
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := metrics.Shutdown(sctx); err != nil {
			logger.Warn("shut down metrics", "error", err)
		}
	}()

	cfg := devConfig{
		Metrics:         metrics.Handler,
		DataDir:         *dataDir,
		GRPCAddr:        grpcAddr.addr,
		HTTPAddr:        httpAddr.addr,
		EdgeAddr:        edgeAddr.addr,
		OriginAddr:      originAddr.addr,
		AdminToken:      tok,
		TokenSource:     src,
		DecisionLog:     *decisionLog,
		OriginAllow:     originAllow.policy,
		OriginDeny:      originDeny.entries,
		BodyIdleTimeout: *bodyIdleTimeout,
		Version:         ver,
		Logger:          logger,
		TracerProvider:  tp,
		Stdout:          stdout,
		HTTPTLS:         httpTLS.serverTLS(logger),
	}
	if cfg.DecisionLog == "" {
		cfg.DecisionLog = filepath.Join(cfg.DataDir, "decisions.jsonl")
	}

	if err := runControlPlane(ctx, cfg); err != nil {
		logger.Error("guestlist dev stopped", "error", err)
		return exitError
	}
	logger.Info("guestlist dev stopped")
	return exitOK
}
