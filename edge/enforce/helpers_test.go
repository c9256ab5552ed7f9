package enforce

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/servercert"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// env is an edge on loopback with an echo origin, a configuration store driven through
// configset.Store.Apply, and a decision log in memory.
type env struct {
	t         testing.TB
	store     *configset.Store
	srv       *Server
	addr      string
	edgeCA    *servercert.CA
	originURL string
	logOut    *syncBuffer
	log       *decisionlog.Log
	pos       uint64
	hosts     map[string]*configv1.HostnameConfig
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func startOrigin(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = echo.ServeListener(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + ln.Addr().String()
}

func newEnv(t testing.TB, hosts ...*configv1.HostnameConfig) *env {
	t.Helper()
	return newEnvWith(t, nil, hosts...)
}

// newEnvWith is newEnv, calling configure (when not nil) on the server before it serves: the
// place to change what connections read without synchronisation (e.g. http.ReadHeaderTimeout).
func newEnvWith(t testing.TB, configure func(*Server), hosts ...*configv1.HostnameConfig) *env {
	t.Helper()
	ca, err := servercert.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: configset.NewStore(), edgeCA: ca, originURL: startOrigin(t), logOut: &syncBuffer{}, hosts: map[string]*configv1.HostnameConfig{}}
	e.log = decisionlog.New(e.logOut)
	e.snapshot(hosts...)
	srv, err := New(Config{
		Addr:         "127.0.0.1:0",
		Configs:      e.store,
		Certificates: ca.GetCertificate,
		Log:          e.log,
		EdgeID:       "edge-test",
		Logger:       testLogger(t),
		Egress:       egress.Loopback(), // the tests' origins are on loopback
	})
	if err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		configure(srv)
	}
	e.srv, e.addr = srv, srv.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		_ = e.log.Close()
	})
	return e
}

// host returns an ENFORCE configuration of name for tenant, trusting cas, forwarding to the echo
// origin (set by snapshot/upsert when empty).
func host(name, tenant string, cas ...*pkitest.CA) *configv1.HostnameConfig {
	h := &configv1.HostnameConfig{
		Hostname: name,
		TenantId: tenant,
		Active:   true,
		Mode:     configv1.MtlsMode_MTLS_MODE_ENFORCE,
	}
	for i, ca := range cas {
		h.CertificateAuthorities = append(h.CertificateAuthorities, &configv1.TrustedCertificateAuthority{
			CertificateAuthorityId: tenant + "-ca-" + string(rune('a'+i)),
			CertificateDer:         ca.Cert.Raw,
		})
	}
	return h
}

func (e *env) fill(hs []*configv1.HostnameConfig) {
	e.pos++
	for _, h := range hs {
		if h.OriginUrl == "" {
			h.OriginUrl = e.originURL
		}
		h.Version = e.pos
		e.hosts[h.Hostname] = h
	}
}

// snapshot applies a snapshot of hosts.
func (e *env) snapshot(hs ...*configv1.HostnameConfig) {
	e.t.Helper()
	e.fill(hs)
	if err := e.store.Apply(&configv1.WatchResponse{Position: e.pos, Snapshot: true, Upserts: hs}); err != nil {
		e.t.Fatal(err)
	}
}

// change applies a change upserting hs and removing removals.
func (e *env) change(hs []*configv1.HostnameConfig, removals ...string) {
	e.t.Helper()
	e.fill(hs)
	if err := e.store.Apply(&configv1.WatchResponse{Position: e.pos, Upserts: hs, Removals: removals}); err != nil {
		e.t.Fatal(err)
	}
}

// clientOpts adjusts a client's TLS configuration.
type clientOpts func(*tls.Config, *http.Transport)

func withCert(l *pkitest.Leaf, chain ...*x509.Certificate) clientOpts {
	return func(c *tls.Config, _ *http.Transport) {
		cert := tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
		for _, ch := range chain {
			cert.Certificate = append(cert.Certificate, ch.Raw)
		}
		// Always send it, also when the server's CertificateRequest names other CAs.
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
}

func withH2() clientOpts {
	return func(_ *tls.Config, tr *http.Transport) { tr.ForceAttemptHTTP2 = true }
}

// client returns an HTTP client that connects to the edge whatever the URL's host, trusting the
// edge CA, with keep-alive.
func (e *env) client(opts ...clientOpts) *http.Client {
	tc := &tls.Config{RootCAs: e.edgeCA.Pool(), MinVersion: tls.VersionTLS12}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, e.addr)
		},
		TLSClientConfig:   tc,
		ForceAttemptHTTP2: false,
	}
	for _, o := range opts {
		o(tc, tr)
	}
	if !tr.ForceAttemptHTTP2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// result is a response from the edge.
type result struct {
	status int
	header http.Header
	body   []byte
	echo   *echo.Response // when the origin answered
	reused bool
	proto  string
}

func (e *env) do(c *http.Client, req *http.Request) (*result, error) {
	var reused bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	}))
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	r := &result{status: resp.StatusCode, header: resp.Header, body: body, reused: reused, proto: resp.Proto}
	if resp.StatusCode == 200 {
		var er echo.Response
		if err := json.Unmarshal(body, &er); err == nil && er.Method != "" {
			r.echo = &er
		}
	}
	return r, nil
}

func (e *env) get(c *http.Client, url string, hdr ...string) *result {
	e.t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	r, err := e.do(c, req)
	if err != nil {
		e.t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

// logLines flushes the decision log and returns its lines, parsed.
func (e *env) logLines() []map[string]any {
	e.t.Helper()
	if err := e.log.Flush(); err != nil {
		e.t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(e.logOut.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			e.t.Fatalf("decision log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func (r *result) decision() (verdict, reason string) {
	var b struct {
		Reason     string `json:"reason"`
		DecisionID string `json:"decision_id"`
	}
	_ = json.Unmarshal(r.body, &b)
	if r.echo != nil {
		return r.echo.Headers["X-Guestlist-Decision"][0], ""
	}
	return "", b.Reason
}

func (r *result) originHeader(k string) string {
	if r.echo == nil {
		return ""
	}
	return strings.Join(r.echo.Headers[http.CanonicalHeaderKey(k)], ",")
}

func expectStatus(t *testing.T, r *result, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// tcpPair returns both ends of a TCP connection on loopback: the dialed one and the accepted one.
func tcpPair(t testing.TB) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	dialed, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	accepted, ok := <-ch
	if !ok {
		dialed.Close()
		t.Fatal("accept failed")
	}
	return dialed, accepted
}
