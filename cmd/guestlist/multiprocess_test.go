package main

import (
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/pkitest"
)

// buildBinary builds cmd/guestlist into a temporary directory and returns its path.
func buildBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "guestlist")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is one guestlist process of the multi-process test; it can be killed and started again
// with the same arguments. Its output, over every start, is kept for the failure report.
type proc struct {
	t    *testing.T
	name string
	bin  string
	args []string
	out  *lockedBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func newProc(t *testing.T, bin, name string, args ...string) *proc {
	p := &proc{t: t, name: name, bin: bin, args: args, out: &lockedBuffer{}}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", name, tail(p.out.String(), 6000))
		}
	})
	return p
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// processEnv is the environment of the processes: the test's, without GUESTLIST_* and OTEL_*
// variables, so that only the flags configure them.
func processEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GUESTLIST_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// start starts the process.
func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "\n=== start %s %s\n", p.name, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = processEnv()
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		fmt.Fprintf(p.out, "=== %s exited: %s\n", p.name, cmd.ProcessState)
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

// kill ends the process with SIGKILL (no shutdown of any kind) and waits for it.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// term sends SIGTERM and returns the exit code once the process has exited.
func (p *proc) term() int {
	p.t.Helper()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		p.t.Fatalf("%s is not running", p.name)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("SIGTERM %s: %v", p.name, err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		p.t.Fatalf("%s did not exit within 30 s of SIGTERM", p.name)
	}
	return cmd.ProcessState.ExitCode()
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// waitHTTP polls url until it answers want, failing the test after 20 s.
func waitHTTP(t *testing.T, what, url string, want int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(25 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s never answered %d", what, url, want)
		}
	}
}

// converge polls check until it is true, failing after 20 s: processes restart and reconnect
// with back-off, so convergence here is slower than in one process.
func converge(t *testing.T, what string, check func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !check(); time.Sleep(25 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never converged: %s", what)
		}
	}
}

// revisionRE finds the configuration revision in the echo origin's answer.
var revisionRE = regexp.MustCompile(`"X-Guestlist-Config-Revision":\s*\[\s*"(\d+)"`)

// servedRevision returns the configuration revision with which edge n decided a request, or 0.
func servedRevision(n *devNode, host string, client *pkitest.Leaf) uint64 {
	code, body := n.get(host, "/", client)
	if code != 200 {
		return 0
	}
	m := revisionRE.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v
}

// savedPosition returns the position of the configuration an edge saved in dataDir (0 if none).
func savedPosition(dataDir string) uint64 {
	st := configset.NewStore()
	if err := st.LoadFile(filepath.Join(dataDir, edgeStateFile)); err != nil || !st.Load().Complete() {
		return 0
	}
	return st.Load().Position()
}

// writer keeps creating hostnames (mode OFF, one new name per attempt) through the REST API and
// records those the API acknowledged, while processes are killed and restarted.
type writer struct {
	api    *devNode
	tenant string
	origin string

	mu       sync.Mutex
	acked    []string
	attempts int
	stop     chan struct{}
	done     chan struct{}
}

func startWriter(api *devNode, tenant, origin string) *writer {
	w := &writer{api: api, tenant: tenant, origin: origin, stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			name := fmt.Sprintf("w%d.%s.example", i, tenant)
			body := fmt.Sprintf(`{"hostname":%q,"originUrl":%q,"mtls":{"mode":"MTLS_MODE_OFF"}}`, name, origin)
			req, _ := http.NewRequest("POST", api.api+"/v1/tenants/"+tenant+"/hostnames", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+api.token)
			resp, err := client.Do(req)
			w.mu.Lock()
			w.attempts++
			if err == nil && resp.StatusCode == 200 {
				w.acked = append(w.acked, name)
			}
			w.mu.Unlock()
			if err == nil {
				resp.Body.Close()
			}
		}
	}()
	return w
}

// ackedCount returns how many creates were acknowledged so far.
func (w *writer) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// finish stops the writer and returns the acknowledged hostnames and the number of attempts.
func (w *writer) finish() ([]string, int) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.acked...), w.attempts
}

// TestMultiProcess runs the distributed topology from the built binary on loopback: "guestlist api
// --projector" on a bolt:// store, "guestlist origin" and two "guestlist edge" processes with their
// own data directories and a shared edge CA. It changes the configuration over REST, checks it
// with real mTLS handshakes through both edges, and kills (SIGKILL) and restarts the API, edge 1
// and edge 2 in turn while making changes: after each step every edge converges to the latest
// acknowledged change, an edge restarted while the API is down serves its saved configuration,
// and every change the API acknowledged is still there after the API restarts. Finally a request
// in flight on an edge completes when SIGTERM arrives, and every process exits 0 on SIGTERM.
func TestMultiProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it as four processes; skipped with -short")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	const edgeToken = "gle_multi-process-edge-token-0123456789"
	admin := "gla_" + strings.Repeat("9a", 32)
	grpcAddr, apiHTTP, originAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	caDir := filepath.Join(dir, "edge-ca")

	api := newProc(t, bin, "api", "api", "--data-dir", filepath.Join(dir, "api"), "--store", "bolt://"+filepath.Join(dir, "api", "events.db"),
		"--projector", "--edge-token", edgeToken, "--admin-token", admin, "--grpc-addr", grpcAddr, "--http-addr", apiHTTP)
	origin := newProc(t, bin, "origin", "origin", "--origin-addr", originAddr)
	type edgeProc struct {
		*proc
		node    *devNode
		dataDir string
		http    string
	}
	var edges [2]*edgeProc
	for i := range edges {
		dataDir := filepath.Join(dir, fmt.Sprintf("edge%d", i+1))
		e := &edgeProc{dataDir: dataDir, http: freeAddr(t), node: &devNode{t: t, api: "http://" + apiHTTP, token: admin, edge: freeAddr(t)}}
		e.proc = newProc(t, bin, fmt.Sprintf("edge%d", i+1), "edge", "--data-dir", dataDir, "--edge-id", fmt.Sprintf("edge-%d", i+1),
			"--config-addr", grpcAddr, "--edge-token", edgeToken, "--edge-addr", e.node.edge, "--http-addr", e.http, "--edge-ca-dir", caDir,
			"--origin-allow", "127.0.0.0/8") // the echo origin runs on this machine
		edges[i] = e
	}
	startEdge := func(e *edgeProc) {
		t.Helper()
		e.start()
		waitHTTP(t, e.name+" ready", "http://"+e.http+"/readyz", 200)
	}

	api.start()
	origin.start()
	waitHTTP(t, "api ready", "http://"+apiHTTP+"/readyz", 200)
	for _, e := range edges {
		startEdge(e)
	}
	pemBytes, err := os.ReadFile(filepath.Join(caDir, "edge-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	for _, e := range edges {
		e.node.edgeCA = pool
	}
	n := edges[0].node // the REST client

	// Configuration over REST: two tenants, their CAs, an ENFORCE hostname each.
	acmeCA, globexCA := pkitest.NewCA(t, "acme devices"), pkitest.NewCA(t, "globex devices")
	good, foreign := acmeCA.Client(t, "terminal-1"), globexCA.Client(t, "globex-terminal")
	for tenant, ca := range map[string]*pkitest.CA{"acme": acmeCA, "globex": globexCA} {
		if code, _ := n.rest("POST", "/v1/tenants?tenantId="+tenant, admin, map[string]any{"displayName": tenant}); code != 200 {
			t.Fatalf("create tenant %s", tenant)
		}
		if code, _ := n.rest("POST", "/v1/tenants/"+tenant+"/certificateAuthorities?certificateAuthorityId=devices", admin, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)}); code != 200 {
			t.Fatalf("create CA of %s", tenant)
		}
		if code, _ := n.rest("POST", "/v1/tenants/"+tenant+"/hostnames", admin, map[string]any{
			"hostname": "pay." + tenant + ".example", "originUrl": "http://" + originAddr,
			"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
		}); code != 200 {
			t.Fatalf("create hostname of %s", tenant)
		}
	}
	enforced := func(e *edgeProc, want int) func() bool {
		return func() bool { code, _ := e.node.get("pay.acme.example", "/", good); return code == want }
	}
	for _, e := range edges {
		converge(t, e.name+" serves pay.acme.example", enforced(e, 200))
		// The tenants were created in map order: globex's hostname may reach the edge after
		// acme's, and until it does its handshake fails (-1), not the 403 checked below.
		converge(t, e.name+" serves pay.globex.example", func() bool { code, _ := e.node.get("pay.globex.example", "/", foreign); return code == 200 })
		if code, _ := e.node.get("pay.acme.example", "/", nil); code != 403 {
			t.Errorf("%s, no certificate: %d, want 403", e.name, code)
		}
		if code, _ := e.node.get("pay.acme.example", "/", foreign); code != 403 {
			t.Errorf("%s, another tenant's certificate: %d, want 403", e.name, code)
		}
		if code, _ := e.node.get("pay.globex.example", "/", good); code != 403 {
			t.Errorf("%s, acme's certificate on globex's hostname: %d, want 403", e.name, code)
		}
		if code, _ := e.node.get("unknown.example", "/", good); code != -1 {
			t.Errorf("%s, unknown hostname: %d, want a failed handshake", e.name, code)
		}
	}

	// Step 1: the API is killed while a writer keeps creating hostnames.
	w := startWriter(n, "acme", "http://"+originAddr)
	converge(t, "the writer gets acknowledgments", func() bool { return w.ackedCount() >= 20 })
	api.kill()
	ackedAtKill := w.ackedCount()

	// While the API is down, edge 1 is killed and restarted: it serves the configuration it saved.
	// (It saves after applying; wait until the file holds what it serves, so the check is exact.)
	served := servedRevision(edges[0].node, "pay.acme.example", good)
	if served == 0 {
		t.Fatal("edge 1 does not serve pay.acme.example")
	}
	converge(t, "edge 1 saved what it serves", func() bool { return savedPosition(edges[0].dataDir) == served })
	edges[0].kill()
	startEdge(edges[0])
	if got := servedRevision(edges[0].node, "pay.acme.example", good); got != served {
		t.Errorf("edge 1 restarted without the API serves revision %d, want its saved %d", got, served)
	}
	if code, _ := edges[0].node.get("pay.acme.example", "/", foreign); code != 403 {
		t.Errorf("edge 1 restarted without the API, foreign certificate: %d, want 403", code)
	}

	// The API comes back on the same store; the writer goes on.
	api.start()
	waitHTTP(t, "api ready after restart", "http://"+apiHTTP+"/readyz", 200)
	converge(t, "the writer gets acknowledgments after the restart", func() bool { return w.ackedCount() >= ackedAtKill+20 })
	acked, attempts := w.finish()
	t.Logf("writer: %d of %d creates acknowledged (%d before the API was killed)", len(acked), attempts, ackedAtKill)
	for _, name := range acked {
		if code, _ := n.rest("GET", "/v1/tenants/acme/hostnames/"+name, admin, nil); code != 200 {
			t.Errorf("acknowledged hostname %s is gone after the API restart: %d", name, code)
		}
	}
	allServed := func(e *edgeProc) func() bool {
		return func() bool {
			for i := len(acked) - 1; i >= 0; i-- { // the latest first: it is the one most likely missing
				if code, _ := e.node.get(acked[i], "/", nil); code != 200 {
					return false
				}
			}
			return true
		}
	}
	for _, e := range edges {
		converge(t, e.name+" serves every acknowledged hostname", allServed(e))
	}

	// Step 2: edge 1 is killed; a revocation is made while it is down; it converges on restart.
	edges[0].kill()
	code, rev := n.rest("POST", "/v1/tenants/acme/certificateAuthorities/devices/revocations", admin, map[string]any{"serialNumber": good.Cert.SerialNumber.Text(16)})
	if code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	converge(t, "edge 2 enforces the revocation", enforced(edges[1], 403))
	startEdge(edges[0])
	converge(t, "edge 1 enforces the revocation made while it was down", enforced(edges[0], 403))

	// Step 3: edge 2 is killed; the revocation is lifted while it is down; it converges on restart.
	edges[1].kill()
	if code, _ := n.rest("DELETE", "/v1/tenants/acme/certificateAuthorities/devices/revocations/"+rev["revocationId"].(string), admin, nil); code != 200 {
		t.Fatalf("lift the revocation: %d", code)
	}
	converge(t, "edge 1 enforces the lifted revocation", enforced(edges[0], 200))
	startEdge(edges[1])
	converge(t, "edge 2 enforces the revocation lifted while it was down", enforced(edges[1], 200))
	for _, e := range edges {
		converge(t, e.name+" still serves every acknowledged hostname", allServed(e))
	}

	// Step 4: SIGTERM on edge 2 with a request in flight: it completes, and its decision is logged.
	slow := &slowOrigin{}
	slowURL := slow.start(t)
	if code, _ := n.rest("POST", "/v1/tenants/acme/hostnames", admin, map[string]any{
		"hostname": "slow.acme.example", "originUrl": slowURL,
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}},
	}); code != 200 {
		t.Fatal("create slow.acme.example")
	}
	converge(t, "edge 2 serves slow.acme.example", func() bool { code, _ := edges[1].node.get("slow.acme.example", "/", good); return code == 200 })
	slow.hold()
	type result struct {
		code int
		body string
	}
	inFlight := make(chan result, 1)
	go func() {
		code, body := edges[1].node.get("slow.acme.example", "/in-flight", good)
		inFlight <- result{code, body}
	}()
	slow.waitArrived(t)
	termCode := make(chan int, 1)
	go func() { termCode <- edges[1].term() }()
	converge(t, "edge 2 refuses new connections after SIGTERM", func() bool {
		conn, err := net.DialTimeout("tcp", edges[1].node.edge, time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	select {
	case r := <-inFlight:
		t.Fatalf("the request in flight ended before the origin answered: %d %s", r.code, r.body)
	default:
	}
	if edges[1].exited() {
		t.Fatal("edge 2 exited before its request in flight finished")
	}
	slow.release()
	if r := <-inFlight; r.code != 200 || !strings.Contains(r.body, "/in-flight") {
		t.Errorf("request in flight during SIGTERM: %d %s", r.code, r.body)
	}
	if code := <-termCode; code != 0 {
		t.Errorf("edge 2 exit code after SIGTERM: %d", code)
	}
	lines := readDecisions(t, filepath.Join(edges[1].dataDir, decisionsFile))
	if len(lines) == 0 || lines[len(lines)-1].Request.Path != "/in-flight" || lines[len(lines)-1].Hostname != "slow.acme.example" {
		t.Errorf("edge 2's decision log does not end with the request in flight: %d lines", len(lines))
	}

	// The roles' /metrics: the edge counts its decisions, requests and configuration; the API
	// its appends, its RPCs and its projector's lag.
	for url, wants := range map[string][]string{
		"http://" + edges[0].http + "/metrics": {`guestlist_edge_decisions_total{`, `guestlist_edge_request_duration_seconds_count{`,
			`guestlist_edge_config_revision`, `guestlist_edge_config_age_seconds`},
		"http://" + apiHTTP + "/metrics": {"go_goroutines", `guestlist_eventstore_append_duration_seconds_count{`,
			"guestlist_projector_lag_events", "guestlist_projector_lag_seconds", "rpc_server_"},
	} {
		resp, err := http.Get(url)
		if err != nil {
			t.Errorf("GET %s: %v", url, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range wants {
			if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
				t.Errorf("GET %s: %d, no %q", url, resp.StatusCode, want)
			}
		}
	}

	// Everything else stops gracefully on SIGTERM.
	for _, p := range []*proc{edges[0].proc, api, origin} {
		if code := p.term(); code != 0 {
			t.Errorf("%s exit code after SIGTERM: %d", p.name, code)
		}
	}
}
