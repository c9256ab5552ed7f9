package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"guestlist.dev/projections/distribute"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/storeurl"
	"guestlist.dev/services/telemetry"
)

// Banner names of the distributed roles.
const (
	configServiceHint = "ConfigService" // the projector's gRPC address
	httpHint          = "HTTP"          // a role's HTTP listener (health, readiness, metrics)
	storeHint         = "event store"   // the --store value (without credentials)
	configFromHint    = "config from"   // the ConfigService addresses an edge watches
)

// roleFlags are the flags every distributed role has: --data-dir, --http-addr (with
// --http-tls-cert and --http-tls-key), --log-level and --log-format.
type roleFlags struct {
	dataDir  *string
	httpAddr *addrFlag
	httpTLS  keyPairFlags
	level    *levelFlag
	format   *choiceFlag
	// instance, when set before setUp, is the process's service.instance.id in its metrics and
	// traces, so that processes of one service (edges) stay apart where their telemetry meets.
	instance string
}

// addRoleFlags defines the common flags on fs; httpDefault is the role's --http-addr default and
// httpUsage says what it serves.
func addRoleFlags(fs *flag.FlagSet, httpDefault, httpUsage string) *roleFlags {
	f := &roleFlags{
		httpAddr: &addrFlag{httpDefault},
		level:    &levelFlag{slog.LevelInfo},
		format:   &choiceFlag{value: "text", choices: []string{"text", "json"}},
	}
	f.dataDir = fs.String("data-dir", "./.guestlist", "data directory")
	fs.Var(f.httpAddr, "http-addr", httpUsage+"; :0 picks a free port")
	f.httpTLS = addHTTPTLSFlags(fs)
	fs.Var(f.level, "log-level", "log level: debug, info, warn or error")
	fs.Var(f.format, "log-format", "log format: text or json")
	return f
}

// roleEnv is what a role's process has set up once its flags are valid.
type roleEnv struct {
	logger *slog.Logger
	tp     trace.TracerProvider
	// metrics serves /metrics (telemetry.SetupMetrics).
	metrics http.Handler
	ver     string
	// done undoes the set-up (restores the default logger, flushes tracing).
	done func()
}

// setUp creates the data directory (refusing one that is not private: see ensurePrivateDir) and
// installs the logger, the metrics and tracing for the process named service. On failure it logs
// why and returns ok = false.
func (f *roleFlags) setUp(ctx context.Context, service string, stderr io.Writer) (env roleEnv, ok bool) {
	logger := telemetry.NewLogger(stderr, f.level.level, f.format.value == "json")
	prev := slog.Default()
	slog.SetDefault(logger)
	var undo []func(context.Context) error
	env = roleEnv{logger: logger, ver: currentVersion()}
	env.done = func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](sctx); err != nil {
				logger.Warn("shut down telemetry", "error", err)
			}
		}
		slog.SetDefault(prev)
	}
	resolved, err := ensurePrivateDir(*f.dataDir, "data directory")
	if err != nil {
		logger.Error("data directory", "dir", *f.dataDir, "error", err)
		env.done()
		return env, false
	}
	*f.dataDir = resolved
	m, err := telemetry.SetupMetrics(ctx, service, env.ver, telemetry.Instance(f.instance)...)
	if err != nil {
		logger.Error("set up metrics", "error", err)
		env.done()
		return env, false
	}
	env.metrics = m.Handler
	undo = append(undo, m.Shutdown)
	tp, shutdown, err := telemetry.Setup(ctx, service, env.ver, telemetry.Instance(f.instance)...)
	if err != nil {
		logger.Error("set up tracing", "error", err)
		env.done()
		return env, false
	}
	env.tp = tp
	undo = append(undo, shutdown)
	return env, true
}

// loadHTTPTLS returns the key pair of --http-tls-cert and --http-tls-key, nil when neither is
// set (plaintext HTTP).
func (f *roleFlags) loadHTTPTLS() (*keyPairFiles, error) { return f.httpTLS.load() }

// checkDataDir refuses an empty --data-dir.
func (f *roleFlags) checkDataDir() error {
	if *f.dataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	return nil
}

// apiConfig is the resolved configuration of "guestlist api".
type apiConfig struct {
	// devConfig holds what the API serves with: data dir, addresses, admin token, logger, tracing,
	// banner. Its Role is "api".
	devConfig
	// Store is the --store value.
	Store string
	// CheckpointKeyDir holds the key that signs checkpoints.
	CheckpointKeyDir string
	// Projector runs the projector in this process and serves the ConfigService on GRPCAddr.
	Projector bool
	// EdgeToken is the edges' bearer token for the ConfigService (with Projector).
	EdgeToken string
}

// runAPIRole runs "guestlist api" until ctx is done. It is a variable so that tests can stand in
// for it.
var runAPIRole = serveAPIRole

const apiSynopsis = `Runs the control plane API (gRPC and REST), the audit service and its ledger, on the event
store named by --store. With --projector, also runs the projector and serves the edges'
ConfigService on --grpc-addr; a bolt:// store requires it, because only one process can hold a
bbolt file. SIGINT or SIGTERM shuts down gracefully.`

// runAPI is "guestlist api".
func runAPI(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("api", apiSynopsis, stderr)
	rf := addRoleFlags(fs, "127.0.0.1:8080", "REST gateway, /openapi.json, /healthz, /readyz and /metrics address")
	store := fs.String("store", "", "event store: bolt://PATH or esdb://... (default bolt://<data-dir>/events.db)")
	grpcAddr := &addrFlag{"127.0.0.1:50051"}
	fs.Var(grpcAddr, "grpc-addr", "gRPC API address (with server reflection and grpc.health.v1; the ConfigService too with --projector)")
	token := &tokenFlag{}
	fs.Var(token, "admin-token", "admin bearer token (default: generated on first start and kept in <data-dir>/admin.token)")
	keyDir := fs.String("checkpoint-key-dir", "", "directory of the key that signs checkpoints; API processes of one store share it (default <data-dir>/checkpoint-key)")
	withProjector := fs.Bool("projector", false, "also run the projector and serve the edges' ConfigService on --grpc-addr (required with a bolt:// store)")
	edgeToken := &tokenFlag{}
	fs.Var(edgeToken, "edge-token", "bearer token that edges present to the ConfigService (required with --projector)")
	tlsFlags := addGRPCTLSFlags(fs, "the gRPC API (and the ConfigService with --projector)")
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	grpcTLS, err := tlsFlags.load()
	if err != nil {
		return flagError(fs, err, stderr)
	}
	httpTLS, err := rf.loadHTTPTLS()
	if err != nil {
		return flagError(fs, err, stderr)
	}
	if err := rf.checkDataDir(); err != nil {
		return flagError(fs, err, stderr)
	}
	// The defaults in the data directory are set again once setUp has resolved its path (see
	// ensurePrivateDir); these are for checking the flags.
	defaultStore, defaultKeyDir := *store == "", *keyDir == ""
	if defaultStore {
		*store = "bolt://" + filepath.Join(*rf.dataDir, eventsFile)
	}
	parsed, err := storeurl.Parse(*store)
	if err != nil {
		return flagError(fs, fmt.Errorf("--store: %w", err), stderr)
	}
	if parsed.Kind == storeurl.Bolt && !*withProjector {
		return flagError(fs, fmt.Errorf("--store %s is a bolt:// store, which one process only can hold, so no separate projector could follow it: add --projector (and --edge-token), or use an esdb:// store", *store), stderr)
	}
	if *withProjector && edgeToken.token == "" {
		return flagError(fs, errors.New("--edge-token is required with --projector: it is the bearer token edges present to the ConfigService"), stderr)
	}
	if *withProjector {
		if err := refusePlaceholder("edge-token", edgeToken.token); err != nil {
			return flagError(fs, err, stderr)
		}
	}

	renv, ok := rf.setUp(ctx, "guestlist-api", stderr)
	if !ok {
		return exitError
	}
	defer renv.done()
	if defaultStore {
		*store = "bolt://" + filepath.Join(*rf.dataDir, eventsFile)
	}
	if defaultKeyDir {
		*keyDir = filepath.Join(*rf.dataDir, ledgerKeyDir)
	}
	logger := renv.logger
	if !*withProjector && edgeToken.token != "" {
		logger.Warn("--edge-token is ignored without --projector: this process serves no ConfigService")
		edgeToken.token = ""
	}
	if *withProjector {
		warnShortToken(logger, "edge-token", edgeToken.token, "the ConfigService")
	}
	tok, src, err := adminToken(*rf.dataDir, token.token)
	if err != nil {
		logger.Error("admin token", "error", err)
		return exitError
	}
	if src == tokenFromFlag {
		warnShortToken(logger, "admin-token", tok, "the API")
	}
	cfg := apiConfig{
		devConfig: devConfig{
			DataDir: *rf.dataDir, GRPCAddr: grpcAddr.addr, HTTPAddr: rf.httpAddr.addr,
			AdminToken: tok, TokenSource: src, Version: renv.ver, Logger: logger, TracerProvider: renv.tp,
			Metrics: renv.metrics, Stdout: stdout, Role: "api", GRPCTLS: grpcTLS.serverTLS(logger),
			HTTPTLS: httpTLS.serverTLS(logger),
		},
		Store: *store, CheckpointKeyDir: *keyDir, Projector: *withProjector, EdgeToken: edgeToken.token,
	}
	if err := runAPIRole(ctx, cfg); err != nil {
		logger.Error("guestlist api stopped", "error", err)
		return exitError
	}
	logger.Info("guestlist api stopped")
	return exitOK
}

// serveAPIRole opens and serves "guestlist api" until ctx is done, then shuts down: the API stops
// accepting and drains its calls, the projector and the ledger stop, and the store closes last.
func serveAPIRole(ctx context.Context, cfg apiConfig) error {
	return openAndServe(ctx, cfg.devConfig, func(ctx context.Context) (*controlPlane, error) { return openAPI(ctx, cfg) })
}

// openAPI opens what "guestlist api" serves: the event store, the control plane and its ledger
// and, with cfg.Projector, the projector and its ConfigService.
func openAPI(ctx context.Context, cfg apiConfig) (_ *controlPlane, err error) {
	p := &parts{}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close())
		}
	}()
	store, err := openStore(ctx, cfg.Store)
	if err != nil {
		return nil, err
	}
	p.onClose(store.Close)
	return p.apiOn(ctx, store, cfg)
}

// apiOn adds what "guestlist api" serves on store to p.
func (p *parts) apiOn(ctx context.Context, store eventstore.Store, cfg apiConfig) (*controlPlane, error) {
	edgeToken := ""
	if cfg.Projector {
		edgeToken = cfg.EdgeToken
	}
	authn, err := p.addControlPlane(ctx, store, controlPlaneOptions{
		DataDir: cfg.DataDir, CheckpointKeyDir: cfg.CheckpointKeyDir, AdminToken: cfg.AdminToken, EdgeToken: edgeToken, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	p.banner = append(p.banner, bannerLine{storeHint, redactStore(cfg.Store)})
	var dist *distribute.Server
	if cfg.Projector {
		if dist, err = p.addProjector(store, cfg.DataDir, cfg.Logger, authorizeEdge); err != nil {
			return nil, err
		}
		p.banner = append(p.banner, bannerLine{"projector", "in this process; edges watch config.v1.ConfigService on the gRPC address"})
	}
	return p.controlPlane(authn, nil, dist), nil
}

// projectorConfig is the resolved configuration of "guestlist projector".
type projectorConfig struct {
	// devConfig holds what the ConfigService serves with (data dir, addresses, logger, tracing,
	// banner); its AdminToken is empty and its Role "projector".
	devConfig
	// Store is the --store value.
	Store string
	// EdgeToken is the one bearer token the ConfigService accepts.
	EdgeToken string
}

// runProjectorRole runs "guestlist projector" until ctx is done. It is a variable so that tests can
// stand in for it.
var runProjectorRole = serveProjectorRole

const projectorSynopsis = `Follows the event store named by --store, keeps the edges' read model in
<data-dir>/projections.db and serves it to edges (config.v1.ConfigService on --grpc-addr; edges
authenticate with --edge-token). Several projectors may run at once, each with its own data
directory: positions are the store's, so an edge may resume on any of them. SIGINT or SIGTERM
shuts down gracefully.`

// runProjector is "guestlist projector".
func runProjector(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("projector", projectorSynopsis, stderr)
	rf := addRoleFlags(fs, "127.0.0.1:8082", "/healthz, /readyz and /metrics address")
	store := fs.String("store", "", "event store: esdb://... (or bolt://PATH, if no other process holds the file); required")
	grpcAddr := &addrFlag{"127.0.0.1:50052"}
	fs.Var(grpcAddr, "grpc-addr", "ConfigService gRPC address (with grpc.health.v1)")
	edgeToken := &tokenFlag{}
	fs.Var(edgeToken, "edge-token", "bearer token that edges present to the ConfigService; required")
	tlsFlags := addGRPCTLSFlags(fs, "the ConfigService")
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	grpcTLS, err := tlsFlags.load()
	if err != nil {
		return flagError(fs, err, stderr)
	}
	httpTLS, err := rf.loadHTTPTLS()
	if err != nil {
		return flagError(fs, err, stderr)
	}
	if err := rf.checkDataDir(); err != nil {
		return flagError(fs, err, stderr)
	}
	if *store == "" {
		return flagError(fs, errors.New("--store is required: the event store to follow (esdb://... or bolt://PATH)"), stderr)
	}
	if _, err := storeurl.Parse(*store); err != nil {
		return flagError(fs, fmt.Errorf("--store: %w", err), stderr)
	}
	if edgeToken.token == "" {
		return flagError(fs, errors.New("--edge-token is required: the bearer token edges present to the ConfigService"), stderr)
	}
	if err := refusePlaceholder("edge-token", edgeToken.token); err != nil {
		return flagError(fs, err, stderr)
	}
	renv, ok := rf.setUp(ctx, "guestlist-projector", stderr)
	if !ok {
		return exitError
	}
	defer renv.done()
	warnShortToken(renv.logger, "edge-token", edgeToken.token, "the ConfigService")
	cfg := projectorConfig{
		devConfig: devConfig{
			DataDir: *rf.dataDir, GRPCAddr: grpcAddr.addr, HTTPAddr: rf.httpAddr.addr, Version: renv.ver,
			Logger: renv.logger, TracerProvider: renv.tp, Metrics: renv.metrics, Stdout: stdout, Role: "projector",
			GRPCTLS: grpcTLS.serverTLS(renv.logger), HTTPTLS: httpTLS.serverTLS(renv.logger),
		},
		Store: *store, EdgeToken: edgeToken.token,
	}
	if err := runProjectorRole(ctx, cfg); err != nil {
		renv.logger.Error("guestlist projector stopped", "error", err)
		return exitError
	}
	renv.logger.Info("guestlist projector stopped")
	return exitOK
}

// serveProjectorRole opens and serves "guestlist projector" until ctx is done, then shuts down:
// the ConfigService stops accepting and ends its streams, the projector stops, the store closes.
func serveProjectorRole(ctx context.Context, cfg projectorConfig) error {
	return openAndServe(ctx, cfg.devConfig, func(ctx context.Context) (*controlPlane, error) { return openProjector(ctx, cfg) })
}

// openProjector opens what "guestlist projector" serves: the event store, the projector and the
// ConfigService, behind an authenticator that knows only the edge token.
func openProjector(ctx context.Context, cfg projectorConfig) (_ *controlPlane, err error) {
	p := &parts{}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close())
		}
	}()
	if _, err := newEdgeTokenAuth(cfg.EdgeToken); err != nil {
		return nil, err
	}
	store, err := openStore(ctx, cfg.Store)
	if err != nil {
		return nil, err
	}
	p.onClose(store.Close)
	return p.projectorOn(store, cfg)
}

// projectorOn adds what "guestlist projector" serves on store to p.
func (p *parts) projectorOn(store eventstore.Store, cfg projectorConfig) (*controlPlane, error) {
	authn, err := newEdgeTokenAuth(cfg.EdgeToken)
	if err != nil {
		return nil, err
	}
	p.ready = append(p.ready, func(ctx context.Context) error {
		if _, err := store.LastPosition(ctx); err != nil {
			return fmt.Errorf("event store: %w", err)
		}
		return nil
	})
	dist, err := p.addProjector(store, cfg.DataDir, cfg.Logger, authorizeEdge)
	if err != nil {
		return nil, err
	}
	p.banner = append(p.banner, bannerLine{storeHint, redactStore(cfg.Store)})
	return p.controlPlane(authn, nil, dist), nil
}

// redactStore is a --store value fit for a banner, a log or an error: without the password of an
// esdb:// connection string. It does not rely on net/url, which refuses some connection strings
// the EventStoreDB client accepts (several hosts, a malformed port), so that a value that fails
// to parse or to connect never repeats the password either.
func redactStore(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	hostEnd := len(rest)
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		hostEnd = i
	}
	at := strings.LastIndexByte(rest[:hostEnd], '@')
	if at < 0 {
		return s
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return s
	}
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}

// addrListFlag is a comma-separated list of host:port addresses to connect to.
type addrListFlag struct{ addrs []string }

func (a *addrListFlag) String() string { return strings.Join(a.addrs, ",") }

func (a *addrListFlag) Set(s string) error {
	var addrs []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		host, port, err := net.SplitHostPort(part)
		if err != nil || host == "" {
			return fmt.Errorf("%q: want host:port (e.g. 127.0.0.1:50051), several separated by commas", part)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("%q: port %q is not a number from 1 to 65535", part, port)
		}
		addrs = append(addrs, part)
	}
	if len(addrs) == 0 {
		return errors.New("no address; want host:port, several separated by commas")
	}
	a.addrs = addrs
	return nil
}
