package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore/boltstore"
)

// captureRole replaces *hook (runAPIRole, runProjectorRole or runEdgeRole) for one test; the
// returned pointer holds the configuration of the last call, and called counts the calls.
func captureRole[C any](t *testing.T, hook *func(context.Context, C) error) (got *C, called *int) {
	t.Helper()
	got, called = new(C), new(int)
	prev := *hook
	*hook = func(_ context.Context, cfg C) error {
		*got = cfg
		*called++
		return nil
	}
	t.Cleanup(func() { *hook = prev })
	return got, called
}

// runFlagCase runs "guestlist command args..." (with env) as subtest name, with the role's run
// function replaced by a capture. A fail/ case must exit with exitUsage without running the role,
// naming mention on stderr; an ok/ case must run the role once with a configuration that check
// accepts ("" when fine).
func runFlagCase[C any](t *testing.T, command string, hook *func(context.Context, C) error, name string, env map[string]string, args []string, mention string, check func(C) string) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		got, called := captureRole(t, hook)
		code, _, stderr := runCmd(t, env, append([]string{command}, args...)...)
		if strings.HasPrefix(name, "fail/") {
			if code != exitUsage || *called != 0 || !strings.Contains(stderr, mention) {
				t.Errorf("exit %d, ran %d times, stderr does not name %q:\n%s", code, *called, mention, stderr)
			}
			return
		}
		if code != exitOK || *called != 1 {
			t.Fatalf("exit %d, ran %d times:\n%s", code, *called, stderr)
		}
		if msg := check(*got); msg != "" {
			t.Errorf("%s: %+v", msg, *got)
		}
	})
}

func TestAPIFlags(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	const edgeTok = "edge-token-0123456789"
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(apiConfig) string // "" when fine
		mention string                 // for fail/ cases: what stderr must name
	}{
		{
			name: "ok/defaults with --projector",
			args: []string{"--data-dir", dir, "--projector", "--edge-token", edgeTok},
			check: func(c apiConfig) string {
				switch {
				case c.Store != "bolt://"+filepath.Join(dir, "events.db"):
					return "store default is not bolt://<data-dir>/events.db"
				case c.GRPCAddr != "127.0.0.1:50051" || c.HTTPAddr != "127.0.0.1:8080":
					return "addresses are not the contract's defaults"
				case c.CheckpointKeyDir != filepath.Join(dir, "checkpoint-key"):
					return "checkpoint key dir default is not <data-dir>/checkpoint-key"
				case !c.Projector || c.EdgeToken != edgeTok || c.Role != "api":
					return "projector, edge token or role not set"
				case c.TokenSource != tokenGenerated || !tokenRE.MatchString(c.AdminToken):
					return "admin token not generated into the data dir"
				case c.Metrics == nil || c.Logger == nil || c.TracerProvider == nil:
					return "metrics, logger or tracing missing"
				}
				return ""
			},
		},
		{
			name: "ok/environment",
			env: map[string]string{
				"GUESTLIST_DATA_DIR": dir, "GUESTLIST_PROJECTOR": "true", "GUESTLIST_EDGE_TOKEN": edgeTok,
				"GUESTLIST_STORE": "bolt:///tmp/x.db", "GUESTLIST_CHECKPOINT_KEY_DIR": "/tmp/shared-key", "GUESTLIST_GRPC_ADDR": ":0",
			},
			check: func(c apiConfig) string {
				if c.Store != "bolt:///tmp/x.db" || c.CheckpointKeyDir != "/tmp/shared-key" || !c.Projector || c.GRPCAddr != ":0" {
					return "environment variables were not applied"
				}
				return ""
			},
		},
		{
			name: "ok/esdb without projector",
			args: []string{"--data-dir", dir, "--store", "esdb://localhost:2113?tls=false"},
			check: func(c apiConfig) string {
				if c.Projector || c.EdgeToken != "" {
					return "projector on without --projector"
				}
				return ""
			},
		},
		{name: "fail/bolt without projector", args: []string{"--data-dir", dir}, mention: "--projector"},
		{name: "fail/projector without edge token", args: []string{"--data-dir", dir, "--projector"}, mention: "--edge-token"},
		{name: "fail/unknown store scheme", args: []string{"--data-dir", dir, "--store", "postgres://x", "--projector", "--edge-token", edgeTok}, mention: "--store"},
		{name: "fail/bad edge token", args: []string{"--data-dir", dir, "--projector", "--edge-token", "has space"}, mention: "edge-token"},
		{name: "fail/empty data dir", args: []string{"--data-dir", "", "--projector", "--edge-token", edgeTok}, mention: "--data-dir"},
	}
	for _, tc := range cases {
		runFlagCase(t, "api", &runAPIRole, tc.name, tc.env, tc.args, tc.mention, tc.check)
	}
}

func TestProjectorFlags(t *testing.T) {
	dir := t.TempDir()
	const edgeTok = "edge-token-0123456789"
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		mention string
	}{
		{name: "ok/defaults", args: []string{"--data-dir", dir, "--store", "esdb://db:2113", "--edge-token", edgeTok}},
		{name: "ok/environment", env: map[string]string{"GUESTLIST_STORE": "esdb://db:2113", "GUESTLIST_EDGE_TOKEN": edgeTok, "GUESTLIST_DATA_DIR": dir}},
		{name: "fail/no store", args: []string{"--data-dir", dir, "--edge-token", edgeTok}, mention: "--store"},
		{name: "fail/no edge token", args: []string{"--data-dir", dir, "--store", "esdb://db:2113"}, mention: "--edge-token"},
		{name: "fail/bad store", args: []string{"--data-dir", dir, "--store", "bolt://", "--edge-token", edgeTok}, mention: "--store"},
		{name: "fail/bad grpc addr", args: []string{"--data-dir", dir, "--store", "esdb://db:2113", "--edge-token", edgeTok, "--grpc-addr", "nope"}, mention: "grpc-addr"},
	}
	for _, tc := range cases {
		runFlagCase(t, "projector", &runProjectorRole, tc.name, tc.env, tc.args, tc.mention, func(got projectorConfig) string {
			if got.Store != "esdb://db:2113" || got.EdgeToken != edgeTok || got.GRPCAddr != "127.0.0.1:50052" || got.HTTPAddr != "127.0.0.1:8082" ||
				got.AdminToken != "" || got.Role != "projector" || got.DataDir != dir {
				return "config"
			}
			return ""
		})
	}
}

// Two edges' metrics meet in the collector of docker-compose.yml, under one service name: the
// edge id, as service.instance.id, keeps their series apart.
func TestEdgeMetricsNameTheEdge(t *testing.T) {
	var targetInfo string
	prev := runEdgeRole
	t.Cleanup(func() { runEdgeRole = prev })
	runEdgeRole = func(_ context.Context, cfg edgeConfig) error {
		rec := httptest.NewRecorder()
		cfg.Metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		for _, l := range strings.Split(rec.Body.String(), "\n") {
			if strings.HasPrefix(l, "target_info{") {
				targetInfo = l
			}
		}
		return nil
	}
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	code, _, stderr := runCmd(t, nil, "edge", "--data-dir", t.TempDir(), "--config-addr", "p1:50052", "--config-plaintext",
		"--edge-token", "edge-token-0123456789", "--edge-id", "edge-2")
	if code != exitOK {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	for _, want := range []string{`service_name="guestlist-edge"`, `service_instance_id="edge-2"`} {
		if !strings.Contains(targetInfo, want) {
			t.Errorf("target_info lacks %s: %q", want, targetInfo)
		}
	}
}

func TestEdgeFlags(t *testing.T) {
	dir := t.TempDir()
	const edgeTok = "edge-token-0123456789"
	host, _ := os.Hostname()
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(edgeConfig) string
		mention string
	}{
		{
			name: "ok/defaults",
			args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok},
			check: func(c edgeConfig) string {
				switch {
				case c.EdgeAddr != "127.0.0.1:8443" || c.HTTPAddr != "127.0.0.1:8444":
					return "addresses are not the contract's defaults"
				case c.CADir != filepath.Join(dir, "edge") || c.DecisionLog != filepath.Join(dir, "decisions.jsonl"):
					return "edge CA dir or decision log default wrong"
				case c.EdgeID != host || host == "":
					return "edge id is not the host name"
				case len(c.ConfigAddrs) != 1 || c.ConfigAddrs[0] != "p1:50052" || c.EdgeToken != edgeTok:
					return "config addresses or token wrong"
				case c.Metrics == nil:
					return "no /metrics handler"
				case c.OriginAllow.String() != "":
					return "origins are allowed beyond public addresses by default: " + c.OriginAllow.String()
				}
				return ""
			},
		},
		{
			name: "ok/origin networks allowed",
			env:  map[string]string{"GUESTLIST_ORIGIN_ALLOW": "10.1.0.0/16, fd00::/8", "GUESTLIST_ORIGIN_DENY": "203.0.113.7:443,10.1.2.0/24"},
			args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok},
			check: func(c edgeConfig) string {
				if got := c.OriginAllow.String(); got != "10.1.0.0/16,fd00::/8" {
					return "GUESTLIST_ORIGIN_ALLOW not applied: " + got
				}
				if got := egress.Allow(c.OriginAllow.Denied()...).String(); got != "203.0.113.7/32:443,10.1.2.0/24" {
					return "GUESTLIST_ORIGIN_DENY not applied: " + got
				}
				return ""
			},
		},
		{
			name: "ok/body idle timeout",
			args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok, "--body-idle-timeout", "15s"},
			check: func(c edgeConfig) string {
				if c.BodyIdleTimeout != 15*time.Second {
					return fmt.Sprintf("--body-idle-timeout not applied: %v", c.BodyIdleTimeout)
				}
				return ""
			},
		},
		{name: "fail/negative body idle timeout", args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok, "--body-idle-timeout", "-1s"}, mention: "--body-idle-timeout"},
		{name: "fail/edge id with a newline", args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok, "--edge-id", "edge-1\nforged"}, mention: "--edge-id"},
		{name: "fail/origin deny not a prefix", args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok, "--origin-deny", "lb.internal"}, mention: "origin-deny"},
		{name: "fail/origin allow not a prefix", args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok, "--origin-allow", "10.0.0.0/8,origin.internal"}, mention: `origin-allow: egress: entry 2, "origin.internal"`},
		{
			name: "ok/several config addresses from the environment",
			env: map[string]string{
				"GUESTLIST_CONFIG_ADDR": "p1:50052, p2:50052,", "GUESTLIST_CONFIG_PLAINTEXT": "true", "GUESTLIST_EDGE_TOKEN": edgeTok, "GUESTLIST_EDGE_ID": "edge-7",
				"GUESTLIST_EDGE_CA_DIR": "/shared/ca", "GUESTLIST_DECISION_LOG": "-", "GUESTLIST_DATA_DIR": dir,
			},
			check: func(c edgeConfig) string {
				if strings.Join(c.ConfigAddrs, "|") != "p1:50052|p2:50052" || c.EdgeID != "edge-7" || c.CADir != "/shared/ca" || c.DecisionLog != "-" {
					return "environment variables were not applied"
				}
				// The configuration update spans continue the change's trace.
				if c.TracerProvider == nil {
					return "no tracer provider for the configuration update spans"
				}
				return ""
			},
		},
		{name: "fail/no config addr", args: []string{"--data-dir", dir, "--edge-token", edgeTok}, mention: "--config-addr"},
		{name: "fail/config addr without port", args: []string{"--data-dir", dir, "--edge-token", edgeTok, "--config-addr", "p1"}, mention: "config-addr"},
		{name: "fail/config addr port 0", args: []string{"--data-dir", dir, "--edge-token", edgeTok, "--config-addr", "p1:0"}, mention: "config-addr"},
		{name: "fail/config addr without host", args: []string{"--data-dir", dir, "--edge-token", edgeTok, "--config-addr", ":50052"}, mention: "config-addr"},
		{name: "fail/no edge token", args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext"}, mention: "--edge-token"},
		{name: "fail/bad edge addr", env: map[string]string{"GUESTLIST_EDGE_ADDR": "nope"}, args: []string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok}, mention: "GUESTLIST_EDGE_ADDR"},
	}
	for _, tc := range cases {
		runFlagCase(t, "edge", &runEdgeRole, tc.name, tc.env, tc.args, tc.mention, tc.check)
	}
}

func TestEdgeTokenAuth(t *testing.T) {
	const tok = "gle_0123456789abcdef"
	a, err := newEdgeTokenAuth(tok)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, bearer string
	}{
		{"ok/the edge token", tok},
		{"fail/empty", ""},
		{"fail/a prefix", tok[:len(tok)-1]},
		{"fail/longer", tok + "0"},
		{"fail/another case", strings.ToUpper(tok)},
		{"fail/an admin-looking token", "gla_" + strings.Repeat("ab", 32)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := a.Authenticate(context.Background(), tc.bearer)
			if strings.HasPrefix(tc.name, "ok/") {
				if err != nil || p.Role != auth.RoleEdge || p.TenantID != "" {
					t.Errorf("Authenticate = %+v, %v; want the edge role", p, err)
				}
				return
			}
			if status.Code(err) != codes.Unauthenticated || p.Role != auth.RoleNone {
				t.Errorf("Authenticate = %+v, %v; want UNAUTHENTICATED", p, err)
			}
		})
	}
	if _, err := newEdgeTokenAuth(""); err == nil {
		t.Error("an empty edge token was accepted")
	}
}

// TestStoreHeldByAnotherProcess: a bolt:// store that is open elsewhere (bbolt's lock is per open
// file, so a second open in this process is refused like one in another process) fails fast with
// an error that says so and what to do instead.
func TestStoreHeldByAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.db")
	held, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	start := time.Now()
	_, err = openProjector(context.Background(), projectorConfig{
		devConfig: devConfig{DataDir: dir, Logger: slog.New(slog.DiscardHandler)},
		Store:     "bolt://" + path, EdgeToken: "edge-token-0123456789",
	})
	if err == nil {
		t.Fatal("a held bolt:// store was opened")
	}
	for _, want := range []string{"locked by another process", "guestlist api --projector", "esdb://"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	if took := time.Since(start); took > roleLockTimeout+5*time.Second {
		t.Errorf("gave up after %v, want about %v", took, roleLockTimeout)
	}
	if _, err := os.Stat(filepath.Join(dir, projectionsFile)); err == nil {
		t.Error("the projector's read model was created although the store could not be opened")
	}
}

// cluster is a distributed topology in one test process: the control plane API (without a
// projector), two projectors and one edge, all on one bbolt store opened once.
type cluster struct {
	t          *testing.T
	api        *devNode // REST at api.api; the edge at api.edge
	ctx        context.Context
	store      *boltstore.Store
	projectors [2]*projectorNode
	edgeCfg    edgeConfig
	edgeStop   func() error
	edgeOut    *lockedBuffer
}

// projectorNode is one projector of a cluster.
type projectorNode struct {
	cfg  projectorConfig
	cp   *controlPlane
	stop func()
}

const clusterEdgeToken = "gle_cluster-edge-token-0123456789"

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitReady polls url until it answers 200.
func waitReady(t *testing.T, url string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered 200", url)
		}
	}
}

// serveInBackground runs serve until the returned stop is called; stop returns serve's error.
func serveInBackground(t *testing.T, serve func(ctx context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Error("did not stop within 30 s")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// startCluster starts an API, two projectors and an edge watching both, on one bolt store, and
// waits until the edge is ready. Each option may change a projector's configuration (called
// once for each) and the edge's before they start.
func startCluster(t *testing.T, opts ...func(*projectorConfig, *edgeConfig)) *cluster {
	t.Helper()
	dir := t.TempDir()
	logger := slog.New(slog.DiscardHandler)
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, store: store}
	t.Cleanup(func() { store.Close() }) // registered first: runs after every role stopped

	// The control plane, without a projector.
	admin := "gla_" + strings.Repeat("cc", 32)
	apiCfg := apiConfig{devConfig: devConfig{
		DataDir: filepath.Join(dir, "api"), GRPCAddr: "127.0.0.1:0", HTTPAddr: freeAddr(t), AdminToken: admin,
		TokenSource: tokenFromFlag, Logger: logger, Stdout: io.Discard, Role: "api",
	}, Store: "bolt://(shared)", CheckpointKeyDir: filepath.Join(dir, "api", "key")}
	if err := os.MkdirAll(apiCfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ap := &parts{}
	cp, err := ap.apiOn(context.Background(), store, apiCfg)
	if err != nil {
		t.Fatal(err)
	}
	stopAPI := serveInBackground(t, func(ctx context.Context) error { return serveAPI(ctx, apiCfg.devConfig, cp) })
	t.Cleanup(func() { _ = stopAPI(); _ = ap.close() })
	waitReady(t, "http://"+apiCfg.HTTPAddr+"/readyz")

	for i := range c.projectors {
		c.projectors[i] = &projectorNode{cfg: projectorConfig{devConfig: devConfig{
			DataDir: filepath.Join(dir, "projector", string(rune('1'+i))), GRPCAddr: freeAddr(t), HTTPAddr: freeAddr(t),
			Logger: logger, Stdout: io.Discard, Role: "projector",
		}, Store: "bolt://(shared)", EdgeToken: clusterEdgeToken}}
		for _, o := range opts {
			o(&c.projectors[i].cfg, nil)
		}
		c.startProjector(i)
	}

	edgeDir := filepath.Join(dir, "edge")
	c.edgeCfg = edgeConfig{
		DataDir: edgeDir, EdgeID: "edge-under-test", EdgeAddr: freeAddr(t), HTTPAddr: freeAddr(t),
		CADir: filepath.Join(edgeDir, "ca"), DecisionLog: filepath.Join(edgeDir, "decisions.jsonl"),
		ConfigAddrs: []string{c.projectors[0].cfg.GRPCAddr, c.projectors[1].cfg.GRPCAddr}, EdgeToken: clusterEdgeToken,
		OriginAllow: egress.Loopback(), Logger: logger,
	}
	for _, o := range opts {
		o(nil, &c.edgeCfg)
	}
	if err := os.MkdirAll(edgeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	c.edgeOut = &lockedBuffer{}
	c.edgeCfg.Stdout = c.edgeOut
	cfg := c.edgeCfg
	c.edgeStop = serveInBackground(t, func(ctx context.Context) error { return serveEdgeRole(ctx, cfg) })
	waitReady(t, "http://"+c.edgeCfg.HTTPAddr+"/readyz")

	pemBytes, err := os.ReadFile(filepath.Join(c.edgeCfg.CADir, "edge-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	c.api = &devNode{t: t, api: "http://" + apiCfg.HTTPAddr, edge: c.edgeCfg.EdgeAddr, edgeCA: pool, token: admin}
	return c
}

// startProjector starts projector i on the shared store, on its own data dir and addresses.
func (c *cluster) startProjector(i int) {
	c.t.Helper()
	pn := c.projectors[i]
	if err := os.MkdirAll(pn.cfg.DataDir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	p := &parts{}
	cp, err := p.projectorOn(c.store, pn.cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	stop := serveInBackground(c.t, func(ctx context.Context) error { return serveAPI(ctx, pn.cfg.devConfig, cp) })
	pn.cp = cp
	pn.stop = func() {
		if err := stop(); err != nil {
			c.t.Errorf("projector %d: %v", i+1, err)
		}
		if err := p.close(); err != nil {
			c.t.Errorf("projector %d: close: %v", i+1, err)
		}
	}
	c.t.Cleanup(pn.stop)
	waitReady(c.t, "http://"+pn.cfg.HTTPAddr+"/readyz")
}

// watchedBy reports whether projector i streams configuration to the cluster's edge.
func (c *cluster) watchedBy(i int) bool {
	for _, w := range c.projectors[i].cp.distribute.Watchers() {
		if w.EdgeID == c.edgeCfg.EdgeID {
			return true
		}
	}
	return false
}

// setUpTenant creates tenant acme with CA "devices" and hostname pay.acme.example (ENFORCE) whose
// origin is origin, and returns a client certificate of that CA.
func (c *cluster) setUpTenant(origin string) *pkitest.Leaf {
	c.t.Helper()
	n := c.api
	ca := pkitest.NewCA(c.t, "acme devices")
	if code, _ := n.rest("POST", "/v1/tenants?tenantId=acme", n.token, map[string]any{"displayName": "Acme"}); code != 200 {
		c.t.Fatal("create tenant")
	}
	if code, _ := n.rest("POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", n.token, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)}); code != 200 {
		c.t.Fatal("create CA")
	}
	if code, _ := n.rest("POST", "/v1/tenants/acme/hostnames", n.token, map[string]any{
		"hostname": "pay.acme.example", "originUrl": origin, "mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	}); code != 200 {
		c.t.Fatal("create hostname")
	}
	return ca.Client(c.t, "terminal-1")
}

// TestEdgeFailsOverBetweenProjectors: an edge with two ConfigService addresses keeps converging when
// the projector it watches stops, by resuming on the other one, and back.
func TestEdgeFailsOverBetweenProjectors(t *testing.T) {
	c := startCluster(t)
	origin := &slowOrigin{}
	originURL := origin.start(t)
	good := c.setUpTenant(originURL)
	n := c.api
	eventually(t, "the edge serves pay.acme.example", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 200 })
	eventually(t, "the edge watches the first projector", func() bool { return c.watchedBy(0) && !c.watchedBy(1) })

	// The first projector goes away; a revocation reaches the edge through the second.
	c.projectors[0].stop()
	_, rev := n.rest("POST", "/v1/tenants/acme/certificateAuthorities/devices/revocations", n.token, map[string]any{"serialNumber": good.Cert.SerialNumber.Text(16)})
	eventually(t, "the revocation is enforced", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 403 })
	if !c.watchedBy(1) {
		t.Error("the edge does not watch the second projector")
	}

	// The first comes back and the second goes away: lifting the revocation arrives through the first.
	c.startProjector(0)
	c.projectors[1].stop()
	n.rest("DELETE", "/v1/tenants/acme/certificateAuthorities/devices/revocations/"+rev["revocationId"].(string), n.token, nil)
	eventually(t, "the lifted revocation is enforced", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 200 })
	if !c.watchedBy(0) {
		t.Error("the edge does not watch the first projector again")
	}
}

// TestEdgeRoleDrainsOnShutdown: when the edge role's context ends (SIGTERM), /readyz turns 503, new
// connections are refused, a request in flight completes, and its decision is in the decision log.
func TestEdgeRoleDrainsOnShutdown(t *testing.T) {
	c := startCluster(t)
	origin := &slowOrigin{}
	originURL := origin.start(t)
	good := c.setUpTenant(originURL + "/slow")
	n := c.api
	eventually(t, "the edge serves pay.acme.example", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 200 })

	origin.hold()
	type result struct {
		code int
		body string
	}
	inFlight := make(chan result, 1)
	go func() {
		code, body := n.get("pay.acme.example", "/in-flight", good)
		inFlight <- result{code, body}
	}()
	origin.waitArrived(t)
	stopped := make(chan error, 1)
	go func() { stopped <- c.edgeStop() }()

	eventually(t, "/readyz says the edge is shutting down", func() bool {
		resp, err := http.Get("http://" + c.edgeCfg.HTTPAddr + "/readyz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(b), "shutting down")
	})
	eventually(t, "new connections are refused", func() bool {
		conn, err := net.DialTimeout("tcp", c.edgeCfg.EdgeAddr, time.Second)
		if err == nil {
			conn.Close()
			return false
		}
		return true
	})
	select {
	case r := <-inFlight:
		t.Fatalf("the request in flight ended before the origin answered: %d %s", r.code, r.body)
	case err := <-stopped:
		t.Fatalf("the edge stopped before its request in flight finished: %v", err)
	default:
	}
	origin.release()
	r := <-inFlight
	if r.code != 200 || !strings.Contains(r.body, "/slow/in-flight") {
		t.Errorf("request in flight: %d %s", r.code, r.body)
	}
	if err := <-stopped; err != nil {
		t.Errorf("edge role: %v", err)
	}
	// Every decision is in the log once the edge has stopped (written out of its buffer on the way
	// out), the request in flight last.
	lines := readDecisions(t, c.edgeCfg.DecisionLog)
	if len(lines) < 2 || lines[len(lines)-1].Request.Path != "/in-flight" || lines[len(lines)-1].Verdict != "allow" || lines[0].Request.Path != "/" {
		t.Errorf("decision log after shutdown: %+v", lines)
	}
	// The configuration was saved: a restart serves it without any projector.
	set := configset.NewStore()
	if err := set.LoadFile(filepath.Join(c.edgeCfg.DataDir, edgeStateFile)); err != nil || !set.Load().Complete() {
		t.Errorf("saved configuration: %v (complete %v)", err, set.Load().Complete())
	}
}

// slowOrigin is an echo-like origin whose answers can be held back, to have requests in flight.
type slowOrigin struct {
	mu      sync.Mutex
	gate    chan struct{} // closed: answer at once
	arrived chan string
}

func (o *slowOrigin) start(t *testing.T) string {
	t.Helper()
	o.gate = make(chan struct{})
	close(o.gate)
	o.arrived = make(chan string, 100)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		gate := o.gate
		o.mu.Unlock()
		select {
		case o.arrived <- r.URL.Path:
		default:
		}
		<-gate
		_, _ = io.WriteString(w, "origin saw "+r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { o.release(); srv.Close() })
	return "http://" + ln.Addr().String()
}

// hold makes the origin keep its next answers until release; it forgets earlier arrivals.
func (o *slowOrigin) hold() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.gate = make(chan struct{})
	for len(o.arrived) > 0 {
		<-o.arrived
	}
}

// release lets every held answer go.
func (o *slowOrigin) release() {
	o.mu.Lock()
	defer o.mu.Unlock()
	select {
	case <-o.gate:
	default:
		close(o.gate)
	}
}

// waitArrived waits for a request to reach the origin.
func (o *slowOrigin) waitArrived(t *testing.T) {
	t.Helper()
	select {
	case <-o.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the origin")
	}
}

func TestRedactStore(t *testing.T) {
	tests := []struct{ in, want string }{
		{"esdb://admin:s3cret@db:2113?tls=false", "esdb://admin:xxxxx@db:2113?tls=false"},
		{"esdb://admin:s3cret@h1:2113,h2:2113,h3:2113?tls=false", "esdb://admin:xxxxx@h1:2113,h2:2113,h3:2113?tls=false"},
		{"kurrentdb+discover://ops:p@ss@cluster:2113", "kurrentdb+discover://ops:xxxxx@cluster:2113"},
		{"esdb://admin:s3cret@host:notaport", "esdb://admin:xxxxx@host:notaport"},
		{"esdb://db:2113?tls=false&tlsCAFile=/a@b/ca.pem", "esdb://db:2113?tls=false&tlsCAFile=/a@b/ca.pem"},
		{"esdb://certuser@db:2113", "esdb://certuser@db:2113"},
		{"bolt://data/events.db", "bolt://data/events.db"},
		{"data/events.db", "data/events.db"},
	}
	for _, tc := range tests {
		if got := redactStore(tc.in); got != tc.want {
			t.Errorf("redactStore(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// An unreachable server is an error that names the store, without its password.
func TestOpenStoreErrorHidesPassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := openStore(ctx, "esdb://admin:s3cret-pw@127.0.0.1:1?tls=false&maxDiscoverAttempts=1&discoveryInterval=10")
	if err == nil {
		st.Close()
		t.Fatal("opened a store on a port where nothing listens")
	}
	if strings.Contains(err.Error(), "s3cret-pw") || !strings.Contains(err.Error(), "esdb://admin:xxxxx@127.0.0.1:1") {
		t.Errorf("error = %v; want the store named without its password", err)
	}
}

// TestEdgeReadyzSaysWhyNotReady: an edge whose token the ConfigService refuses is not ready, and
// its /readyz says why (the refusal), rather than only that no configuration arrived.
func TestEdgeReadyzSaysWhyNotReady(t *testing.T) {
	c := startCluster(t)
	cfg := c.startAnotherEdge("edge-wrong-token", func(cfg *edgeConfig) { cfg.EdgeToken = "gle_" + strings.Repeat("00", 32) })
	body := waitNotReady(t, cfg, "Unauthenticated")
	if !strings.Contains(body, "no configuration received yet") {
		t.Errorf("/readyz body %q does not say that no configuration arrived", body)
	}
}

// startAnotherEdge starts one more edge, named id, like the cluster's but with its own data
// directory and addresses and what mutate changes, and returns its configuration.
func (c *cluster) startAnotherEdge(id string, mutate func(*edgeConfig)) edgeConfig {
	c.t.Helper()
	dir := c.t.TempDir()
	cfg := c.edgeCfg
	cfg.DataDir, cfg.EdgeID, cfg.EdgeAddr, cfg.HTTPAddr = dir, id, freeAddr(c.t), freeAddr(c.t)
	cfg.CADir, cfg.DecisionLog = filepath.Join(dir, "ca"), filepath.Join(dir, "decisions.jsonl")
	cfg.Stdout = io.Discard
	mutate(&cfg)
	_ = serveInBackground(c.t, func(ctx context.Context) error { return serveEdgeRole(ctx, cfg) })
	return cfg
}

// waitNotReady waits until the edge's /readyz answers 503 with a reason containing why, and
// returns the body.
func waitNotReady(t *testing.T, cfg edgeConfig, why string) string {
	t.Helper()
	var body string
	eventually(t, "/readyz of "+cfg.EdgeID+" says "+why, func() bool {
		resp, err := http.Get("http://" + cfg.HTTPAddr + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, why)
	})
	return body
}

// TestEdgeStartsFromADamagedStateFile: an edge whose saved configuration cannot be used (damaged,
// or written by a version it cannot read) starts without it, refusing every hostname, and gets
// its configuration from the control plane, rather than failing to start until someone deletes
// the file.
func TestEdgeStartsFromADamagedStateFile(t *testing.T) {
	c := startCluster(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, edgeStateFile), []byte("not a configuration"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := c.edgeCfg
	cfg.DataDir, cfg.EdgeID, cfg.EdgeAddr, cfg.HTTPAddr = dir, "edge-damaged-state", freeAddr(t), freeAddr(t)
	cfg.CADir, cfg.DecisionLog = filepath.Join(dir, "ca"), filepath.Join(dir, "decisions.jsonl")
	cfg.Stdout = io.Discard
	_ = serveInBackground(t, func(ctx context.Context) error { return serveEdgeRole(ctx, cfg) })
	eventually(t, "the edge to be ready with the control plane's configuration", func() bool {
		resp, err := http.Get("http://" + cfg.HTTPAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}
