package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/enforce"
	"guestlist.dev/edge/privatefile"
	"guestlist.dev/edge/servercert"
	"guestlist.dev/edge/watch"
	"guestlist.dev/projections/audit"
	"guestlist.dev/projections/distribute"
	"guestlist.dev/projections/ledger"
	"guestlist.dev/projections/projector"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	"guestlist.dev/services/api/server"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/controlplane"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
	"guestlist.dev/services/eventstore/instrument"
	"guestlist.dev/services/eventstore/storeurl"
)

// Files in the data directory.
const (
	eventsFile      = "events.db"       // the embedded event store
	projectionsFile = "projections.db"  // the projector's read model and checkpoint
	edgeStateFile   = "edge-config.pb"  // the edge's last applied configuration
	edgeCADir       = "edge"            // the edge CA (edge-ca.pem, edge-ca.key)
	decisionsFile   = "decisions.jsonl" // the decision log
	ledgerFile      = "ledger.db"       // the tenants' hash chains, Merkle logs and signed checkpoints
	ledgerKeyDir    = "checkpoint-key"  // the key that signs checkpoints
	devEdgeID       = "dev-edge"        // the in-process edge's name
	originHint      = "echo origin"     // banner name of the demo origin
	edgeHint        = "edge (HTTPS)"    // banner name of the edge
	edgeCAHint      = "edge CA"         // banner name of the edge CA file
	decisionLogHint = "decision log"    // banner name of the decision log
	edgeTokenPrefix = "gle_"            // edge bearer tokens
	edgeTokenBytes  = 32                // random bytes of a generated edge token
)

// roleLockTimeout is how long a role waits for another process to release a bbolt file (the
// event store, the read model) before it gives up and says who holds it.
const roleLockTimeout = time.Second

// parts collects what the role builders (addControlPlane, addProjector, addEdge, addOrigin) open:
// the API services they serve, their readiness checks, the goroutines they run and what must be
// closed afterwards. "guestlist dev" adds every role to one parts; the distributed roles add one
// each.
type parts struct {
	services []server.Service
	ready    []func(context.Context) error
	// runs run until ctx is done; grpcAddr is the process's API gRPC address (nil in a process
	// without one, such as the edge role).
	runs    []func(ctx context.Context, grpcAddr net.Addr) error
	banner  []bannerLine
	closers []func() error
}

// onClose registers f to run when the parts are closed; later registrations run first, so a
// resource is closed before what it depends on (the event store, opened first, closes last).
func (p *parts) onClose(f func() error) { p.closers = append(p.closers, f) }

// close closes everything opened, in reverse order.
func (p *parts) close() error {
	var errs []error
	for i := len(p.closers) - 1; i >= 0; i-- {
		errs = append(errs, p.closers[i]())
	}
	p.closers = nil
	return errors.Join(errs...)
}

// checkReady reports the first readiness check that fails.
func (p *parts) checkReady(ctx context.Context) error {
	for _, r := range p.ready {
		if err := r(ctx); err != nil {
			return err
		}
	}
	return nil
}

// run runs every goroutine of p until ctx is done. The first to fail cancels the others; run waits
// for all of them and returns that first error.
func (p *parts) run(ctx context.Context, grpcAddr net.Addr) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, r := range p.runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r(ctx, grpcAddr); err != nil && ctx.Err() == nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// openStore opens the event store that a --store value names, measured and traced
// (services/eventstore/instrument). A bbolt file that another process
// holds fails after roleLockTimeout with an error that says so and what to do instead.
func openStore(ctx context.Context, value string) (eventstore.Store, error) {
	st, err := storeurl.Open(ctx, value, boltstore.WithLockTimeout(roleLockTimeout))
	if err != nil {
		if errors.Is(err, boltstore.ErrLocked) {
			return nil, fmt.Errorf("open the event store %s: %w; a bolt:// store can be used by one process only: "+
				"stop the process that holds it, run the projector inside the API process (guestlist api --projector), "+
				"or use an esdb:// store, which several processes can share", redactStore(value), err)
		}
		return nil, fmt.Errorf("open the event store %s: %w", redactStore(value), err)
	}
	// Append latency and spans, on the global providers that telemetry.Setup and SetupMetrics
	// installed.
	wrapped, err := instrument.Wrap(st)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("instrument the event store: %w", err), st.Close())
	}
	return wrapped, nil
}

// controlPlaneOptions configure addControlPlane.
type controlPlaneOptions struct {
	// DataDir holds the ledger.
	DataDir string
	// CheckpointKeyDir holds the key that signs checkpoints (created when missing).
	CheckpointKeyDir string
	// AdminToken is the platform operator's token; EdgeToken the edges' (empty: edges may not
	// watch through this control plane's authenticator).
	AdminToken, EdgeToken string
	Logger                *slog.Logger
}

// addControlPlane adds the control plane on store: the guestlist.v1 services (commands and audit)
// and the ledger that follows the store and signs checkpoints. It returns the authenticator of the
// API's bearer tokens.
func (p *parts) addControlPlane(ctx context.Context, store eventstore.Store, o controlPlaneOptions) (auth.Authenticator, error) {
	signer, err := loadCheckpointKey(o.CheckpointKeyDir)
	if err != nil {
		return nil, err
	}
	led, err := ledger.Open(filepath.Join(o.DataDir, ledgerFile), store, signer)
	if err != nil {
		return nil, fmt.Errorf("open the ledger: %w", err)
	}
	p.onClose(led.Close)
	cp, err := controlplane.New(controlplane.Config{
		Store: store, AdminToken: o.AdminToken, EdgeToken: o.EdgeToken, Logger: o.Logger,
		AuditOptions: []audit.Option{audit.WithLedger(led, signer)},
	})
	if err != nil {
		return nil, err
	}
	if err := cp.Ready(ctx); err != nil {
		return nil, err
	}
	p.services = append(p.services, cp.Services()...)
	p.ready = append(p.ready, cp.Ready)
	p.runs = append(p.runs, func(ctx context.Context, _ net.Addr) error { return led.Run(ctx) })
	return cp.Authenticator(), nil
}

// loadCheckpointKey loads the key that signs checkpoints from dir, or creates it there. dir must
// be private (ensurePrivateDir; created when missing), and an existing key a regular file of the
// process's user that others may not read (privatefile.Check): ledger.LoadOrCreateKey itself
// follows symbolic links and checks no mode, so a key planted by someone else would sign the
// tenants' checkpoints.
func loadCheckpointKey(dir string) (*ledger.Signer, error) {
	dir, err := ensurePrivateDir(dir, "checkpoint key directory")
	if err != nil {
		return nil, fmt.Errorf("checkpoint key: %w", err)
	}
	if err := privatefile.Check(filepath.Join(dir, ledger.PrivateKeyFile), "checkpoint key"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	signer, err := ledger.LoadOrCreateKey(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint key: %w", err)
	}
	return signer, nil
}

// sameDir reports whether the directories a and b are one, whatever the form of their paths
// (relative or absolute, through symbolic links); a path that cannot be resolved is compared as
// an absolute path.
func sameDir(a, b string) bool {
	resolve := func(p string) string {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
		return filepath.Clean(p)
	}
	return resolve(a) == resolve(b)
}

// addProjector adds the projector on store, with its read model in dataDir, and the ConfigService
// that streams it to edges; authorize decides who may watch (see distribute.WithAuthorize).
func (p *parts) addProjector(store eventstore.Store, dataDir string, logger *slog.Logger, authorize func(context.Context) error) (*distribute.Server, error) {
	proj, err := projector.Open(filepath.Join(dataDir, projectionsFile), store,
		projector.WithLogger(logger.With("role", "projector")), projector.WithLockTimeout(roleLockTimeout))
	if err != nil {
		return nil, fmt.Errorf("open the projector's read model: %w", err)
	}
	p.onClose(proj.Close)
	dist := distribute.New(proj, distribute.WithLogger(logger.With("role", "distribute")), distribute.WithAuthorize(authorize))
	p.services = append(p.services, server.Service{
		Name:         configv1.ConfigService_ServiceDesc.ServiceName,
		RegisterGRPC: func(r grpc.ServiceRegistrar) { configv1.RegisterConfigServiceServer(r, dist) },
	})
	p.ready = append(p.ready, func(context.Context) error {
		if !proj.Ready() {
			return errors.New("projector: catching up with the event store")
		}
		return nil
	})
	p.runs = append(p.runs, func(ctx context.Context, _ net.Addr) error { return proj.Run(ctx) })
	return dist, nil
}

// authorizeEdge lets edge principals (and the admin) watch the configuration.
func authorizeEdge(ctx context.Context) error {
	_, err := auth.AuthorizeEdge(ctx)
	return err
}

// edgeOptions configure addEdge.
type edgeOptions struct {
	// EdgeID names the edge (decision log, Watch hello).
	EdgeID string
	// Addr is the HTTPS listen address.
	Addr string
	// CADir holds the edge CA that issues the hostnames' server certificates (created when
	// missing; several edges may share it).
	CADir string
	// DecisionLog is the decision log's path, or "-" for standard output.
	DecisionLog string
	// StatePath is where the last applied configuration is kept.
	StatePath string
	// Token is the bearer token presented to the ConfigService.
	Token string
	// ConfigAddrs are the ConfigService addresses (host:port), tried in turn when a stream breaks.
	// Empty: the process's own API gRPC address (guestlist dev).
	ConfigAddrs []string
	// ConfigTLS, when set, is the TLS client configuration of the ConfigAddrs connections (their
	// roots; the server name is each address's host unless it sets one); nil connects in plaintext.
	ConfigTLS *tls.Config
	// ShutdownTimeout bounds the draining of open requests; 0 means enforce's default.
	ShutdownTimeout time.Duration
	// BodyIdleTimeout is how long a request body may go without bytes (enforce.Config's); 0
	// means no limit.
	BodyIdleTimeout time.Duration
	// Egress is what origins may be at besides public addresses; nil allows public ones only.
	Egress *egress.Policy
	Logger *slog.Logger
	// TracerProvider makes the configuration update spans; nil means the global provider.
	TracerProvider trace.TracerProvider
}

// bodyIdle maps a --body-idle-timeout (0: no limit) to enforce.Config.BodyIdleTimeout (0: the
// default, negative: no limit).
func bodyIdle(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// edgeParts is what addEdge opened, for the roles' banners and for tests.
type edgeParts struct {
	configs *configset.Store
	server  *enforce.Server
	ca      *servercert.CA
	logPath string
	// drained is closed when the HTTPS server has stopped: open requests finished or were cut off
	// at the shutdown timeout, and the decision log was flushed.
	drained chan struct{}
}

// configDialBackoff bounds gRPC's own reconnection delays to a ConfigService, so that an edge
// notices a restarted projector within seconds rather than gRPC's default of up to two minutes.
var configDialBackoff = backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second}

// addEdge adds one edge node: its configuration set (starting from the one it last saved), the
// HTTPS server that enforces it, its decision log, and the client that keeps the set up to date
// from the ConfigService.
func (p *parts) addEdge(o edgeOptions) (*edgeParts, error) {
	configs := configset.NewStore()
	// A damaged file leaves the set empty: fail closed (every hostname refused) until the
	// control plane answers, rather than not start.
	watch.LoadState(o.Logger, configs, o.StatePath)
	ca, err := loadEdgeCA(o.CADir)
	if err != nil {
		return nil, fmt.Errorf("edge CA: %w", err)
	}
	// In the data directory (the default), a symbolic link is refused: it would be a planted one.
	// A path the operator chose elsewhere (/dev/stdout, say) is opened as given.
	open := decisionlog.Open
	if sameDir(filepath.Dir(o.DecisionLog), filepath.Dir(o.StatePath)) {
		open = decisionlog.OpenNoFollow
	}
	dlog, err := open(o.DecisionLog)
	if err != nil {
		return nil, fmt.Errorf("decision log: %w", err)
	}
	p.onClose(dlog.Close)
	var conns []grpc.ClientConnInterface
	creds := insecure.NewCredentials()
	if o.ConfigTLS != nil {
		creds = credentials.NewTLS(o.ConfigTLS)
	}
	for _, addr := range o.ConfigAddrs {
		conn, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(creds),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: configDialBackoff, MinConnectTimeout: 5 * time.Second}))
		if err != nil {
			return nil, fmt.Errorf("edge: ConfigService %s: %w", addr, err)
		}
		p.onClose(conn.Close)
		conns = append(conns, conn)
	}
	srv, err := enforce.New(enforce.Config{
		Addr: o.Addr, Configs: configs, Certificates: ca.GetCertificate, Log: dlog, EdgeID: o.EdgeID,
		Logger: o.Logger.With("role", "edge"), ShutdownTimeout: o.ShutdownTimeout, Egress: o.Egress,
		BodyIdleTimeout: bodyIdle(o.BodyIdleTimeout),
	})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	p.onClose(func() error {
		if err := srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	})
	var lastWatchErr atomic.Pointer[error] // why the last configuration stream ended (nil: streaming)
	p.ready = append(p.ready, func(context.Context) error {
		if !configs.Load().Complete() {
			if e := lastWatchErr.Load(); e != nil {
				return fmt.Errorf("edge: no configuration received yet; the last attempt failed: %w", *e)
			}
			return errors.New("edge: no configuration received yet")
		}
		return nil
	})
	drained := make(chan struct{})
	watchOpts := watch.Options{EdgeID: o.EdgeID, Token: o.Token, StatePath: o.StatePath, Logger: o.Logger.With("role", "edge-watch"), TracerProvider: o.TracerProvider,
		OnStatus: func(err error) {
			if err == nil {
				lastWatchErr.Store(nil)
			} else {
				lastWatchErr.Store(&err)
			}
		}}
	p.runs = append(p.runs,
		func(ctx context.Context, _ net.Addr) error {
			defer close(drained)
			return srv.Serve(ctx)
		},
		func(ctx context.Context, grpcAddr net.Addr) error {
			if len(conns) > 0 {
				opts := watchOpts
				opts.Alternates = conns[1:]
				return watch.Run(ctx, conns[0], configs, opts)
			}
			if grpcAddr == nil {
				return errors.New("edge: no ConfigService address")
			}
			conn, err := grpc.NewClient(grpcAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return fmt.Errorf("edge: connect to the ConfigService: %w", err)
			}
			defer conn.Close()
			return watch.Run(ctx, conn, configs, watchOpts)
		})
	p.banner = append(p.banner,
		bannerLine{edgeHint, "https://" + srv.Addr().String()},
		bannerLine{edgeCAHint, ca.CertificatePath() + "  (curl --cacert)"})
	return &edgeParts{configs: configs, server: srv, ca: ca, logPath: o.DecisionLog, drained: drained}, nil
}

// addOrigin adds the demo echo origin on addr.
func (p *parts) addOrigin(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("echo origin: %w", err)
	}
	p.onClose(func() error {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	})
	p.runs = append(p.runs, func(ctx context.Context, _ net.Addr) error { return echo.ServeListener(ctx, ln) })
	p.banner = append(p.banner, bannerLine{originHint, "http://" + ln.Addr().String()})
	return ln.Addr(), nil
}

// openDev opens everything "guestlist dev" runs on cfg.DataDir: the event store, the control plane,
// the projector and its ConfigService, one edge (fed by that ConfigService over loopback gRPC, like a
// remote edge), and the demo echo origin. It is the composition of the same builders as the
// distributed roles.
func openDev(ctx context.Context, cfg devConfig) (_ *controlPlane, err error) {
	p := &parts{}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close())
		}
	}()
	store, err := openStore(ctx, "bolt://"+filepath.Join(cfg.DataDir, eventsFile))
	if err != nil {
		return nil, err
	}
	p.onClose(store.Close)
	edgeToken, err := newEdgeToken()
	if err != nil {
		return nil, err
	}
	authn, err := p.addControlPlane(ctx, store, controlPlaneOptions{
		DataDir: cfg.DataDir, CheckpointKeyDir: filepath.Join(cfg.DataDir, ledgerKeyDir),
		AdminToken: cfg.AdminToken, EdgeToken: edgeToken, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	dist, err := p.addProjector(store, cfg.DataDir, cfg.Logger, authorizeEdge)
	if err != nil {
		return nil, err
	}
	logPath := cfg.DecisionLog
	if logPath == "" {
		logPath = filepath.Join(cfg.DataDir, decisionsFile)
	}
	edge, err := p.addEdge(edgeOptions{
		EdgeID: devEdgeID, Addr: cfg.EdgeAddr, CADir: filepath.Join(cfg.DataDir, edgeCADir), DecisionLog: logPath,
		StatePath: filepath.Join(cfg.DataDir, edgeStateFile), Token: edgeToken, Logger: cfg.Logger,
		Egress: cfg.originAllow(), BodyIdleTimeout: cfg.BodyIdleTimeout,
	})
	if err != nil {
		return nil, err
	}
	if _, err := p.addOrigin(cfg.OriginAddr); err != nil {
		return nil, err
	}
	p.banner = append(p.banner, bannerLine{decisionLogHint, logPath})
	return p.controlPlane(authn, edge.configs, dist), nil
}

// controlPlane is p as what serveAPI serves.
func (p *parts) controlPlane(authn auth.Authenticator, edgeConfigs *configset.Store, dist *distribute.Server) *controlPlane {
	return &controlPlane{
		Authenticator: authn,
		Services:      p.services,
		Ready:         p.checkReady,
		Roles:         p.runs,
		Banner:        p.banner,
		Close:         p.close,
		edgeConfigs:   edgeConfigs,
		distribute:    dist,
	}
}

// newEdgeToken returns a fresh bearer token for the in-process edge. It lives only as long as the
// process: nothing outside the process can watch the configuration with it.
func newEdgeToken() (string, error) {
	var b [edgeTokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate the edge token: %w", err)
	}
	return edgeTokenPrefix + hex.EncodeToString(b[:]), nil
}

// edgeTokenAuth is the projector role's authenticator: it knows one bearer token, --edge-token,
// which it accepts as the edge role; every other token is UNAUTHENTICATED. Tokens are compared
// by their SHA-256 in constant time, so neither the token nor its length leaks through timing.
type edgeTokenAuth struct{ sum [sha256.Size]byte }

var _ auth.Authenticator = (*edgeTokenAuth)(nil)

// newEdgeTokenAuth returns the authenticator of token, which must not be empty.
func newEdgeTokenAuth(token string) (*edgeTokenAuth, error) {
	if err := checkToken(token); err != nil {
		return nil, fmt.Errorf("edge token: %w", err)
	}
	return &edgeTokenAuth{sum: sha256.Sum256([]byte(token))}, nil
}

// Authenticate implements auth.Authenticator.
func (a *edgeTokenAuth) Authenticate(_ context.Context, bearer string) (auth.Principal, error) {
	sum := sha256.Sum256([]byte(bearer))
	if subtle.ConstantTimeCompare(sum[:], a.sum[:]) == 1 {
		return auth.Principal{Role: auth.RoleEdge}, nil
	}
	return auth.Principal{}, status.Error(codes.Unauthenticated, "missing or invalid bearer token")
}
