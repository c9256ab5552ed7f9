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
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/enforce"
	"guestlist.dev/services/telemetry"
)

// edgeConfig is the resolved configuration of "guestlist edge".
type edgeConfig struct {
	// DataDir holds the last applied configuration and, by default, the decision log and the
	// edge CA.
	DataDir string
	// EdgeID names the edge.
	EdgeID string
	// EdgeAddr is the HTTPS address, HTTPAddr the address of /healthz, /readyz and /metrics.
	EdgeAddr, HTTPAddr string
	// HTTPTLS, when set, makes the HTTPAddr listener serve HTTPS only (--http-tls-cert); nil
	// serves plaintext HTTP.
	HTTPTLS *tls.Config
	// CADir is the edge CA directory; DecisionLog the decision log ("-" for standard output).
	CADir, DecisionLog string
	// ConfigAddrs are the ConfigService addresses; EdgeToken the bearer token presented to them.
	ConfigAddrs []string
	EdgeToken   string
	// ConfigTLS is the TLS client configuration of the ConfigService connections (--config-ca,
	// --config-server-name); nil connects in plaintext (--config-plaintext, or loopback addresses).
	ConfigTLS *tls.Config
	// OriginAllow is what origins may be at besides public addresses (--origin-allow), and what
	// they must not be at (--origin-deny); nil allows public addresses only.
	OriginAllow *egress.Policy
	// ShutdownTimeout bounds the draining of open requests on SIGINT/SIGTERM; 0 means the
	// enforce package's default.
	ShutdownTimeout time.Duration
	// BodyIdleTimeout is how long a request body may go without bytes (--body-idle-timeout); 0
	// means no limit.
	BodyIdleTimeout time.Duration
	// Metrics serves /metrics; nil serves 404 there.
	Metrics http.Handler
	// TracerProvider makes the spans of the edge's configuration updates, which continue the
	// trace of the change; nil means the global provider.
	TracerProvider trace.TracerProvider
	Version        string
	Logger         *slog.Logger
	Stdout         io.Writer
}

// runEdgeRole runs "guestlist edge" until ctx is done. It is a variable so that tests can stand in
// for it.
var runEdgeRole = serveEdgeRole

const edgeSynopsis = `Runs one edge node: it watches its configuration from the ConfigService (--config-addr, one
or more addresses, tried in turn when a stream breaks), keeps the last one in --data-dir so that it
serves even when no ConfigService answers, and enforces mutual TLS on --edge-addr. SIGINT or
SIGTERM shuts down gracefully: the edge stops accepting, lets open requests finish, and flushes
the decision log.`

// runEdge is "guestlist edge".
func runEdge(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("edge", edgeSynopsis, stderr)
	rf := addRoleFlags(fs, "127.0.0.1:8444", "/healthz, /readyz (200 once a complete configuration is held) and /metrics address")
	configAddrs := &addrListFlag{}
	fs.Var(configAddrs, "config-addr", "ConfigService address(es), host:port, comma-separated; required")
	edgeToken := &tokenFlag{}
	fs.Var(edgeToken, "edge-token", "bearer token presented to the ConfigService; required")
	edgeID := fs.String("edge-id", "", "this edge's name in the decision log and on the ConfigService (default: the host name)")
	edgeAddr := &addrFlag{"127.0.0.1:8443"}
	fs.Var(edgeAddr, "edge-addr", "edge HTTPS address")
	caDir := fs.String("edge-ca-dir", "", "edge CA directory (edge-ca.pem, edge-ca.key; created when missing; edges may share one) (default <data-dir>/edge)")
	decisionLog := fs.String("decision-log", "", "decision log: a file path, or - for standard output (default <data-dir>/decisions.jsonl)")
	originAllow := &egressFlag{}
	fs.Var(originAllow, "origin-allow", originAllowUsage+" (default: none, public addresses only)")
	originDeny := &denyFlag{}
	fs.Var(originDeny, "origin-deny", originDenyUsage)
	bodyIdleTimeout := fs.Duration("body-idle-timeout", enforce.DefaultBodyIdleTimeout, bodyIdleUsage)
	configCA := fs.String("config-ca", "", "connect to the ConfigService over TLS, trusting the CA certificates of this PEM file (a system bundle such as /etc/ssl/certs/ca-certificates.crt for a public certificate)")
	configServerName := fs.String("config-server-name", "", "with --config-ca: the name the ConfigService's certificate must carry (default: the host of each --config-addr)")
	configPlaintext := fs.Bool("config-plaintext", false, "connect to a ConfigService that is not on a loopback address without TLS: the edge token and every tenant's configuration then cross the network unprotected")
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	if *bodyIdleTimeout < 0 {
		return flagError(fs, errors.New("--body-idle-timeout must not be negative (0: no limit)"), stderr)
	}
	if err := rf.checkDataDir(); err != nil {
		return flagError(fs, err, stderr)
	}
	if len(configAddrs.addrs) == 0 {
		return flagError(fs, errors.New("--config-addr is required: the ConfigService address(es), host:port, comma-separated"), stderr)
	}
	if edgeToken.token == "" {
		return flagError(fs, errors.New("--edge-token is required: the bearer token presented to the ConfigService"), stderr)
	}
	if err := refusePlaceholder("edge-token", edgeToken.token); err != nil {
		return flagError(fs, err, stderr)
	}
	configTLS, err := configTLSFromFlags(configAddrs.addrs, *configCA, *configServerName, *configPlaintext)
	if err != nil {
		return flagError(fs, err, stderr)
	}
	httpTLS, err := rf.loadHTTPTLS()
	if err != nil {
		return flagError(fs, err, stderr)
	}
	if len(*edgeID) > 256 || strings.IndexFunc(*edgeID, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
		return flagError(fs, errors.New("--edge-id: at most 256 printable ASCII characters (the ConfigService refuses others)"), stderr)
	}
	if *edgeID == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "edge"
		}
		*edgeID = h
	}
	// Tracing too: each configuration update is a span of the change's trace. The edge id tells
	// this edge's metrics and spans from the other edges'.
	rf.instance = *edgeID
	renv, ok := rf.setUp(ctx, "guestlist-edge", stderr)
	if !ok {
		return exitError
	}
	defer renv.done()
	warnShortToken(renv.logger, "edge-token", edgeToken.token, "the ConfigService")
	// In the data directory as setUp resolved it (see ensurePrivateDir).
	if *caDir == "" {
		*caDir = filepath.Join(*rf.dataDir, edgeCADir)
	}
	if *decisionLog == "" {
		*decisionLog = filepath.Join(*rf.dataDir, decisionsFile)
	}
	cfg := edgeConfig{
		DataDir: *rf.dataDir, EdgeID: *edgeID, EdgeAddr: edgeAddr.addr, HTTPAddr: rf.httpAddr.addr,
		CADir: *caDir, DecisionLog: *decisionLog, ConfigAddrs: configAddrs.addrs, EdgeToken: edgeToken.token, ConfigTLS: configTLS, OriginAllow: originAllow.policy.WithDeny(originDeny.entries...),
		Metrics: renv.metrics, TracerProvider: renv.tp, Version: renv.ver, Logger: renv.logger, Stdout: stdout,
		BodyIdleTimeout: *bodyIdleTimeout, HTTPTLS: httpTLS.serverTLS(renv.logger),
	}
	if err := runEdgeRole(ctx, cfg); err != nil {
		renv.logger.Error("guestlist edge stopped", "error", err)
		return exitError
	}
	renv.logger.Info("guestlist edge stopped")
	return exitOK
}

// serveEdgeRole runs one edge node until ctx is done, then shuts down gracefully: /readyz turns
// 503, the HTTPS server stops accepting and waits (up to its shutdown timeout) for open requests,
// the decision log is flushed, the configuration saved, the HTTP listener closes, and the decision
// log is closed.
func serveEdgeRole(ctx context.Context, cfg edgeConfig) (err error) {
	p := &parts{}
	defer func() {
		if cerr := p.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close: %w", cerr))
		}
	}()
	edge, err := p.addEdge(edgeOptions{
		EdgeID: cfg.EdgeID, Addr: cfg.EdgeAddr, CADir: cfg.CADir, DecisionLog: cfg.DecisionLog,
		StatePath: filepath.Join(cfg.DataDir, edgeStateFile), Token: cfg.EdgeToken, ConfigAddrs: cfg.ConfigAddrs, ConfigTLS: cfg.ConfigTLS,
		ShutdownTimeout: cfg.ShutdownTimeout, Logger: cfg.Logger, TracerProvider: cfg.TracerProvider, Egress: cfg.OriginAllow,
		BodyIdleTimeout: cfg.BodyIdleTimeout,
	})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	var draining atomic.Bool
	hs := &http.Server{
		Handler:           edgeHTTPHandler(p.checkReady, &draining, cfg.Metrics),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	// hs.Serve sets hs.TLSConfig even in plaintext (its HTTP/2 defaults): whether to serve TLS is
	// decided here, once.
	serveTLS := cfg.HTTPTLS != nil
	if serveTLS {
		hs.TLSConfig = cfg.HTTPTLS.Clone()
		hs.TLSConfig.MinVersion = max(hs.TLSConfig.MinVersion, tls.VersionTLS12)
	}
	p.runs = append(p.runs, func(ctx context.Context, _ net.Addr) error {
		errc := make(chan error, 1)
		go func() {
			if serveTLS {
				// The certificate comes from TLSConfig (GetCertificate), not from files named here.
				errc <- hs.ServeTLS(httpLn, "", "")
				return
			}
			errc <- hs.Serve(httpLn)
		}()
		select {
		case err := <-errc:
			return fmt.Errorf("serve HTTP on %s: %w", httpLn.Addr(), err)
		case <-ctx.Done():
		}
		// /readyz answers 503 while the HTTPS server drains, so that load balancers stop sending.
		draining.Store(true)
		<-edge.drained
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			_ = hs.Close()
		}
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve HTTP on %s: %w", httpLn.Addr(), err)
		}
		return nil
	})
	printEdgeBanner(cfg.Stdout, cfg, edge.server.Addr(), httpLn.Addr(), p.banner)
	cfg.Logger.Info("edge serving", "edge_id", cfg.EdgeID, "config_addrs", cfg.ConfigAddrs,
		"position", edge.configs.Load().Position(), "complete", edge.configs.Load().Complete())
	return p.run(ctx, nil)
}

// edgeHTTPHandler serves the edge's HTTP listener: /healthz (200 while the process runs), /readyz
// (200 once ready reports nil, 503 with the reason before that and while shutting down) and
// /metrics.
func edgeHTTPHandler(ready func(context.Context) error, draining *atomic.Bool, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: shutting down\n")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// printEdgeBanner writes the edge role's startup block, in one Write (see printBanner).
func printEdgeBanner(out io.Writer, cfg edgeConfig, edgeAddr, httpAddr net.Addr, lines []bannerLine) {
	w := new(bytes.Buffer)
	defer func() { _, _ = out.Write(w.Bytes()) }()
	fmt.Fprintf(w, "\nguestlist edge %s is running (edge id %s)\n", cfg.Version, cfg.EdgeID)
	for _, l := range lines {
		fmt.Fprintf(w, "  %-12s %s\n", l.name, l.value)
	}
	fmt.Fprintf(w, "  %-12s %s://%s  (/healthz, /readyz, /metrics)\n", httpHint, httpScheme(cfg.HTTPTLS), httpAddr)
	fmt.Fprintf(w, "  %-12s %s\n", configFromHint, strings.Join(cfg.ConfigAddrs, ", "))
	fmt.Fprintf(w, "  %-12s %s\n", decisionLogHint, cfg.DecisionLog)
	fmt.Fprintf(w, "  %-12s %s\n", "data dir", cfg.DataDir)
	fmt.Fprintf(w, "\nStop: Ctrl-C\n\n")
}

const originSynopsis = `Runs the demo echo origin alone: it answers every request with a JSON body listing the method,
path and headers it received. SIGINT or SIGTERM shuts down gracefully.`

// runOrigin is "guestlist origin".
func runOrigin(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("origin", originSynopsis, stderr)
	addr := &addrFlag{"127.0.0.1:8081"}
	fs.Var(addr, "origin-addr", "demo echo origin address; :0 picks a free port")
	level := &levelFlag{slog.LevelInfo}
	fs.Var(level, "log-level", "log level: debug, info, warn or error")
	format := &choiceFlag{value: "text", choices: []string{"text", "json"}}
	fs.Var(format, "log-format", "log format: text or json")
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	logger := telemetry.NewLogger(stderr, level.level, format.value == "json")
	ln, err := net.Listen("tcp", addr.addr)
	if err != nil {
		logger.Error("echo origin", "error", err)
		return exitError
	}
	fmt.Fprintf(stdout, "\nguestlist origin %s is running\n  %-12s http://%s\n\nStop: Ctrl-C\n\n", currentVersion(), originHint, ln.Addr())
	if err := echo.ServeListener(ctx, ln); err != nil {
		logger.Error("guestlist origin stopped", "error", err)
		return exitError
	}
	logger.Info("guestlist origin stopped")
	return exitOK
}
