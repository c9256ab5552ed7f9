package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/enforce"
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
	"guestlist.dev/services/eventstore/boltstore"
)

// Files in the data directory.
const (
	eventsFile      = "events.db"       // the embedded event store
	projectionsFile = "projections.db"  // the projector's read model and checkpoint
	edgeStateFile   = "edge-config.pb"  // the edge's last applied configuration
	edgeCADir       = "edge"            // the dev edge CA (edge-ca.pem, edge-ca.key)
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

// openDev opens everything "guestlist dev" runs on cfg.DataDir: the event store, the control plane,
// the projector and its ConfigService, one edge (fed by that ConfigService over loopback gRPC, like a
// remote edge), and the demo echo origin.
func openDev(ctx context.Context, cfg devConfig) (_ *controlPlane, err error) {
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i]())
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, closeAll())
		}
	}()

	store, err := boltstore.Open(filepath.Join(cfg.DataDir, eventsFile))
	if err != nil {
		return nil, fmt.Errorf("open the event store: %w", err)
	}
	closers = append(closers, store.Close)

	edgeToken, err := newEdgeToken()
	if err != nil {
		return nil, err
	}
	signer, err := ledger.LoadOrCreateKey(filepath.Join(cfg.DataDir, ledgerKeyDir))
	if err != nil {
		return nil, fmt.Errorf("checkpoint key: %w", err)
	}
	led, err := ledger.Open(filepath.Join(cfg.DataDir, ledgerFile), store, signer)
	if err != nil {
		return nil, fmt.Errorf("open the ledger: %w", err)
	}
	closers = append(closers, led.Close)
	cp, err := controlplane.New(controlplane.Config{
		Store: store, AdminToken: cfg.AdminToken, EdgeToken: edgeToken, Logger: cfg.Logger,
		AuditOptions: []audit.Option{audit.WithLedger(led, signer)},
	})
	if err != nil {
		return nil, err
	}
	if err := cp.Ready(ctx); err != nil {
		return nil, err
	}

	proj, err := projector.Open(filepath.Join(cfg.DataDir, projectionsFile), store, projector.WithLogger(cfg.Logger.With("role", "projector")))
	if err != nil {
		return nil, fmt.Errorf("open the projector: %w", err)
	}
	closers = append(closers, proj.Close)
	dist := distribute.New(proj, distribute.WithLogger(cfg.Logger.With("role", "distribute")), distribute.WithAuthorize(func(ctx context.Context) error {
		_, err := auth.AuthorizeEdge(ctx)
		return err
	}))

	configs := configset.NewStore()
	statePath := filepath.Join(cfg.DataDir, edgeStateFile)
	if err := configs.LoadFile(statePath); err != nil {
		return nil, fmt.Errorf("load the edge's last configuration: %w", err)
	}
	ca, err := servercert.LoadOrCreateCA(filepath.Join(cfg.DataDir, edgeCADir))
	if err != nil {
		return nil, fmt.Errorf("edge CA: %w", err)
	}
	logPath := cfg.DecisionLog
	if logPath == "" {
		logPath = filepath.Join(cfg.DataDir, decisionsFile)
	}
	dlog, err := decisionlog.Open(logPath)
	if err != nil {
		return nil, fmt.Errorf("decision log: %w", err)
	}
	closers = append(closers, dlog.Close)
	edgeSrv, err := enforce.New(enforce.Config{
		Addr: cfg.EdgeAddr, Configs: configs, Certificates: ca.GetCertificate, Log: dlog, EdgeID: devEdgeID,
		Logger: cfg.Logger.With("role", "edge"),
	})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	originLn, err := net.Listen("tcp", cfg.OriginAddr)
	if err != nil {
		return nil, fmt.Errorf("echo origin: %w", err)
	}
	closers = append(closers, func() error {
		if err := originLn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	})

	ready := func(ctx context.Context) error {
		if err := cp.Ready(ctx); err != nil {
			return err
		}
		if !proj.Ready() {
			return errors.New("projector: catching up with the event store")
		}
		if !configs.Load().Complete() {
			return errors.New("edge: no configuration received yet")
		}
		return nil
	}
	services := append(cp.Services(), server.Service{
		Name:         configv1.ConfigService_ServiceDesc.ServiceName,
		RegisterGRPC: func(r grpc.ServiceRegistrar) { configv1.RegisterConfigServiceServer(r, dist) },
	})
	roles := []func(context.Context, net.Addr) error{
		func(ctx context.Context, _ net.Addr) error { return proj.Run(ctx) },
		func(ctx context.Context, _ net.Addr) error { return led.Run(ctx) },
		func(ctx context.Context, _ net.Addr) error { return edgeSrv.Serve(ctx) },
		func(ctx context.Context, _ net.Addr) error { return echo.ServeListener(ctx, originLn) },
		func(ctx context.Context, grpcAddr net.Addr) error {
			conn, err := grpc.NewClient(grpcAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return fmt.Errorf("edge: connect to the ConfigService: %w", err)
			}
			defer conn.Close()
			return watch.Run(ctx, conn, configs, watch.Options{EdgeID: devEdgeID, Token: edgeToken, StatePath: statePath, Logger: cfg.Logger.With("role", "edge-watch")})
		},
	}
	return &controlPlane{
		Authenticator: cp.Authenticator(),
		Services:      services,
		Ready:         ready,
		Roles:         roles,
		Banner: []bannerLine{
			{edgeHint, "https://" + edgeSrv.Addr().String()},
			{edgeCAHint, ca.CertificatePath() + "  (curl --cacert)"},
			{originHint, "http://" + originLn.Addr().String()},
			{decisionLogHint, logPath},
		},
		Close:       closeAll,
		edgeConfigs: configs,
	}, nil
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
