package enforce

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/servercert"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// The benchmarks compare the edge with a plain crypto/tls + net/http server that has one static
// configuration (the same server certificate, the client CA as ClientCAs with
// RequireAndVerifyClientCert) and proxies to the same trivial origin with a tuned
// httputil.ReverseProxy over the same transport. Client, servers and origin share the machine.
//
//	go test -run XXX -bench . -benchtime 5s guestlist.dev/edge/enforce

const benchHost = "bench.example.com"

type benchSetup struct {
	edgeAddr, plainAddr string
	client              tls.Certificate
	roots               *x509.CertPool
	rootPEM             []byte
	files               []string // client certificate, key and roots for the load generator
}

// trivialOrigin answers "ok".
func trivialOrigin(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain"}
		_, _ = io.WriteString(w, "ok\n")
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func setupBench(b *testing.B) *benchSetup {
	b.Helper()
	origin := trivialOrigin(b)
	clientCA := pkitest.NewCA(b, "Bench Root")
	leaf := clientCA.Client(b, "bench-device")
	edgeCA, err := servercert.LoadOrCreateCA(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}

	// The edge.
	store := configset.NewStore()
	h := &configv1.HostnameConfig{
		Hostname: benchHost, TenantId: "bench", Active: true, OriginUrl: origin, Version: 1,
		Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE,
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{
			{CertificateAuthorityId: "ca", CertificateDer: clientCA.Cert.Raw},
		},
	}
	if err := store.Apply(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{h}}); err != nil {
		b.Fatal(err)
	}
	dlog := decisionlog.New(io.Discard)
	edge, err := New(Config{Addr: "127.0.0.1:0", Configs: store, Certificates: edgeCA.GetCertificate, Log: dlog, EdgeID: "bench", Logger: testLogger(b), Egress: egress.Loopback()})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- edge.Serve(ctx) }()
	b.Cleanup(func() { cancel(); <-done; dlog.Close() })

	// The plain server: one static configuration, same certificates, tuned ReverseProxy.
	serverCert, err := edgeCA.GetCertificate(benchHost)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.Cert)
	target, _ := url.Parse(origin)
	var bufs bufferPool
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:  NewTransport(egress.Loopback()),
		BufferPool: &bufs,
	}
	plain := &http.Server{
		Handler: rp,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{*serverCert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go plain.ServeTLS(pln, "", "")
	b.Cleanup(func() { plain.Close() })

	return &benchSetup{
		edgeAddr:  edge.Addr().String(),
		plainAddr: pln.Addr().String(),
		client:    tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert},
		roots:     edgeCA.Pool(),
		rootPEM:   edgeCA.CertificatePEM(),
	}
}

func (s *benchSetup) tlsConfig() *tls.Config {
	return &tls.Config{
		ServerName:   benchHost,
		RootCAs:      s.roots,
		Certificates: []tls.Certificate{s.client},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"http/1.1"},
	}
}

var benchRequest = []byte("GET /ping HTTP/1.1\r\nHost: " + benchHost + "\r\nConnection: close\r\n\r\n")

// oneShot opens a connection (full TLS 1.3 handshake with a client certificate), sends one
// request, reads the response and closes.
func oneShot(addr string, cfg *tls.Config) error {
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(benchRequest); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// BenchmarkHandshake: full mTLS handshakes per second (new connection, TLS 1.3, ECDSA P-256
// certificates on both sides, one request each, no session resumption).
func BenchmarkHandshake(b *testing.B) {
	s := setupBench(b)
	for _, target := range []struct{ name, addr string }{{"Plain", s.plainAddr}, {"Edge", s.edgeAddr}} {
		b.Run(target.name, func(b *testing.B) {
			cfg := s.tlsConfig()
			if err := oneShot(target.addr, cfg); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := oneShot(target.addr, cfg); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// BenchmarkKeepAlive: requests per second over keep-alive connections (HTTP/1.1, 8 per CPU),
// through the edge or the plain proxy to the trivial origin.
func BenchmarkKeepAlive(b *testing.B) {
	s := setupBench(b)
	for _, target := range []struct{ name, addr string }{{"Plain", s.plainAddr}, {"Edge", s.edgeAddr}} {
		b.Run(target.name, func(b *testing.B) {
			addr := target.addr
			tr := &http.Transport{
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, addr)
				},
				TLSClientConfig:     s.tlsConfig(),
				MaxIdleConnsPerHost: 256,
				DisableCompression:  true,
				TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			get := func() error {
				resp, err := client.Get("https://" + benchHost + "/ping")
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
			if err := get(); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := get(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// rate runs fn on workers goroutines for d and returns completions per second.
func rate(b testing.TB, d time.Duration, workers int, fn func() error) float64 {
	deadline := time.Now().Add(d)
	counts := make(chan int, workers)
	start := time.Now()
	for range workers {
		go func() {
			n := 0
			for time.Now().Before(deadline) {
				if err := fn(); err != nil {
					b.Error(err)
					break
				}
				n++
			}
			counts <- n
		}()
	}
	total := 0
	for range workers {
		total += <-counts
	}
	return float64(total) / time.Since(start).Seconds()
}

// compare measures edge and plain in alternating rounds (so that load from other processes on
// the machine affects both alike) and reports both rates and their ratio.
func compare(b *testing.B, unit string, workers int, edge, plain func() error) {
	const rounds, slice = 10, 300 * time.Millisecond
	for b.Loop() {
		var e, p float64
		for range rounds {
			p += rate(b, slice, workers, plain) / rounds
			e += rate(b, slice, workers, edge) / rounds
		}
		b.ReportMetric(e, "edge-"+unit)
		b.ReportMetric(p, "plain-"+unit)
		b.ReportMetric(e/p, "edge/plain")
	}
}

// BenchmarkCompareHandshake is BenchmarkHandshake, edge and plain in alternating rounds.
func BenchmarkCompareHandshake(b *testing.B) {
	s := setupBench(b)
	cfg := s.tlsConfig()
	compare(b, "handshakes/s", 4,
		func() error { return oneShot(s.edgeAddr, cfg) },
		func() error { return oneShot(s.plainAddr, cfg) })
}

// BenchmarkCompareKeepAlive is BenchmarkKeepAlive, edge and plain in alternating rounds.
func BenchmarkCompareKeepAlive(b *testing.B) {
	s := setupBench(b)
	get := func(addr string) func() error {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
			TLSClientConfig:     s.tlsConfig(),
			MaxIdleConnsPerHost: 256,
			DisableCompression:  true,
			TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		}
		b.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Transport: tr}
		return func() error {
			resp, err := client.Get("https://" + benchHost + "/ping")
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
	}
	compare(b, "req/s", 16, get(s.edgeAddr), get(s.plainAddr))
}

// The ServerCPU benchmarks run the load generator in a child process (this test binary, see
// TestLoadClient), so that the CPU time this process spends per request is that of the server
// side alone (edge or plain server, and the origin both share): a machine-independent measure of
// efficiency, comparable with other servers measured the same way.

const loadClientEnv = "GUESTLIST_BENCH_LOAD_CLIENT"

// TestLoadClient is the child process of the ServerCPU benchmarks; it does nothing in a normal
// test run.
func TestLoadClient(t *testing.T) {
	if os.Getenv(loadClientEnv) == "" {
		t.Skip("only run as the load generator of the ServerCPU benchmarks")
	}
	get := func(k string) string { return os.Getenv("GUESTLIST_BENCH_" + k) }
	cert, err := tls.LoadX509KeyPair(get("CERT"), get("KEY"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(get("ROOTS"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	s := &benchSetup{client: cert, roots: roots}
	d, _ := time.ParseDuration(get("DURATION"))
	workers, _ := strconv.Atoi(get("WORKERS"))
	addr := get("ADDR")
	var fn func() error
	if get("MODE") == "handshake" {
		cfg := s.tlsConfig()
		fn = func() error { return oneShot(addr, cfg) }
	} else {
		fn = keepAliveGet(s, addr, t.Cleanup)
	}
	_ = fn() // warm up
	r := rate(t, d, workers, fn)
	fmt.Printf("RATE %f\n", r)
}

// keepAliveGet returns a function that GETs over keep-alive connections to addr.
func keepAliveGet(s *benchSetup, addr string, cleanup func(func())) func() error {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		TLSClientConfig:     s.tlsConfig(),
		MaxIdleConnsPerHost: 256,
		DisableCompression:  true,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	return func() error {
		resp, err := client.Get("https://" + benchHost + "/ping")
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
}

// external runs the load generator against addr for d and returns its rate and the CPU time
// this process spent per operation meanwhile.
func (s *benchSetup) external(b *testing.B, mode, addr string, d time.Duration, workers int) (rate float64, cpuPerOp time.Duration) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoadClient$", "-test.count=1")
	cmd.Env = append(os.Environ(), loadClientEnv+"=1",
		"GUESTLIST_BENCH_CERT="+s.files[0], "GUESTLIST_BENCH_KEY="+s.files[1], "GUESTLIST_BENCH_ROOTS="+s.files[2],
		"GUESTLIST_BENCH_DURATION="+d.String(), "GUESTLIST_BENCH_WORKERS="+strconv.Itoa(workers),
		"GUESTLIST_BENCH_ADDR="+addr, "GUESTLIST_BENCH_MODE="+mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	before := processCPU()
	out, _ := io.ReadAll(stdout)
	after := processCPU()
	if err := cmd.Wait(); err != nil {
		b.Fatalf("load generator: %v: %s", err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "RATE "); ok {
			rate, _ = strconv.ParseFloat(v, 64)
		}
	}
	if rate == 0 {
		b.Fatalf("load generator output: %s", out)
	}
	ops := rate * d.Seconds()
	return rate, time.Duration(float64(after-before) / ops)
}

// writeClientFiles writes the client certificate, key and the edge CA for the load generator.
func (s *benchSetup) writeClientFiles(b *testing.B) {
	dir := b.TempDir()
	key, err := x509.MarshalPKCS8PrivateKey(s.client.PrivateKey)
	if err != nil {
		b.Fatal(err)
	}
	files := map[string][]byte{
		"client.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.client.Certificate[0]}),
		"client.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}),
		"roots.pem":  s.rootPEM,
	}
	for _, name := range []string{"client.pem", "client.key", "roots.pem"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, files[name], 0o600); err != nil {
			b.Fatal(err)
		}
		s.files = append(s.files, p)
	}
}

func serverCPU(b *testing.B, mode, unit string, workers int) {
	s := setupBench(b)
	s.writeClientFiles(b)
	const rounds, slice = 4, time.Second
	for b.Loop() {
		var er, pr float64
		var ec, pc time.Duration
		for range rounds {
			r, c := s.external(b, mode, s.plainAddr, slice, workers)
			pr, pc = pr+r/rounds, pc+c/rounds
			r, c = s.external(b, mode, s.edgeAddr, slice, workers)
			er, ec = er+r/rounds, ec+c/rounds
		}
		b.ReportMetric(er, "edge-"+unit)
		b.ReportMetric(pr, "plain-"+unit)
		b.ReportMetric(float64(ec.Microseconds()), "edge-server-µs/op")
		b.ReportMetric(float64(pc.Microseconds()), "plain-server-µs/op")
		b.ReportMetric(float64(pc)/float64(ec), "edge-efficiency")
	}
}

// BenchmarkServerCPUHandshake: full mTLS handshakes from a separate process; CPU per handshake
// on the server side.
func BenchmarkServerCPUHandshake(b *testing.B) { serverCPU(b, "handshake", "handshakes/s", 4) }

// BenchmarkServerCPUKeepAlive: keep-alive requests from a separate process; CPU per request on
// the server side.
func BenchmarkServerCPUKeepAlive(b *testing.B) { serverCPU(b, "keepalive", "req/s", 16) }

// BenchmarkHostTLSConfigMiss: what a handshake pays when its hostname's TLS configuration is not
// in the edge's cache (at most maxHostTLS entries, cleared when full): building it.
func BenchmarkHostTLSConfigMiss(b *testing.B) {
	store := configset.NewStore()
	ca := pkitest.NewCA(b, "Bench Root")
	h := &configv1.HostnameConfig{
		Hostname: benchHost, TenantId: "bench", Active: true, OriginUrl: "http://127.0.0.1:1", Version: 1,
		Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE,
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{
			{CertificateAuthorityId: "ca", CertificateDer: ca.Cert.Raw},
		},
	}
	if err := store.Apply(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{h}}); err != nil {
		b.Fatal(err)
	}
	s, err := New(Config{Addr: "127.0.0.1:0", Configs: store, Certificates: func(string) (*tls.Certificate, error) { return nil, nil },
		Log: decisionlog.New(io.Discard), EdgeID: "bench", Logger: testLogger(b), Egress: egress.Loopback()})
	if err != nil {
		b.Fatal(err)
	}
	prepared, _ := store.Load().Lookup(benchHost)
	b.ReportAllocs()
	for b.Loop() {
		if cfg := s.newHostTLSConfig(benchHost, prepared); cfg == nil {
			b.Fatal("no configuration")
		}
	}
}
