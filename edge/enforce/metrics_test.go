package enforce

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// withMeter restarts e's server with a meter provider read by the returned reader.
func withMeter(t *testing.T, e *env) *sdkmetric.ManualReader {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	srv, err := New(Config{Addr: "127.0.0.1:0", Configs: e.store, Certificates: e.edgeCA.GetCertificate, Log: e.log, EdgeID: "edge-test",
		Logger: testLogger(t), MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)), Egress: egress.Loopback()})
	if err != nil {
		t.Fatal(err)
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
	})
	return reader
}

// counts maps "name|k=v|k=v" (attributes in order) to each series' value.
func counts(t *testing.T, r sdkmetric.Reader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok {
				for _, dp := range h.DataPoints {
					k := m.Name
					for _, kv := range dp.Attributes.ToSlice() {
						k += "|" + string(kv.Key) + "=" + kv.Value.Emit()
					}
					out[k] += int64(dp.Count)
				}
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				k := m.Name
				for _, kv := range dp.Attributes.ToSlice() {
					k += "|" + string(kv.Key) + "=" + kv.Value.Emit()
				}
				out[k] += dp.Value
			}
		}
	}
	return out
}

func TestMetricsDecisionsAndHandshakes(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	leaf := ca.Client(t, "device-1")
	pay := host("pay.example.com", "acme", ca)
	strict := host("strict.example.com", "acme", ca)
	strict.RejectInHandshake = true
	off := host("off.example.com", "acme")
	off.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	inactive := host("inactive.example.com", "acme", ca)
	inactive.Active = false
	e := newEnv(t, pay, strict, off, inactive)
	reader := withMeter(t, e)

	// Requests: allowed with the certificate (twice), denied without, allowed with mTLS off.
	withC := e.client(withCert(leaf))
	expectStatus(t, e.get(withC, "https://pay.example.com/a"), 200)
	expectStatus(t, e.get(withC, "https://pay.example.com/b"), 200)
	expectStatus(t, e.get(e.client(), "https://pay.example.com/c"), 403)
	expectStatus(t, e.get(e.client(), "https://off.example.com/"), 200)
	// HTTP/2 (net/http's path): allowed, then misdirected (Host names another hostname).
	h2 := e.client(withCert(leaf), withH2())
	expectStatus(t, e.get(h2, "https://pay.example.com/h2"), 200)
	req, err := http.NewRequest(http.MethodGet, "https://pay.example.com/h2", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "off.example.com"
	expectStatus(t, mustDo(t, e, h2, req), http.StatusMisdirectedRequest)
	// HTTP/1.1 (the fast path): misdirected.
	req, err = http.NewRequest(http.MethodGet, "https://pay.example.com/h1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "off.example.com"
	expectStatus(t, mustDo(t, e, withC, req), http.StatusMisdirectedRequest)

	// Handshakes that fail.
	handshake := func(serverName string, withCert bool) error {
		cfg := &tls.Config{RootCAs: e.edgeCA.Pool(), ServerName: serverName, InsecureSkipVerify: serverName == ""}
		if withCert {
			withCertCfg(cfg, leaf)
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3: the server's verdict on the client certificate arrives after the client's
		// handshake; a read surfaces it.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err
	}
	for _, tc := range []struct {
		name       string
		serverName string
		cert       bool
	}{
		{"fail/unknown SNI", "other.example.com", false},
		{"fail/unknown SNI again", "nope.example.com", false},
		{"fail/no SNI", "", false},
		{"fail/inactive hostname", "inactive.example.com", false},
		{"fail/no certificate on a reject_in_handshake hostname", "strict.example.com", false},
	} {
		if err := handshake(tc.serverName, tc.cert); err == nil {
			t.Errorf("%s: the handshake succeeded", tc.name)
		}
	}

	// Plain HTTP to the TLS port: classified where the edge's handshakes fail.
	raw, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = raw.Write([]byte("GET / HTTP/1.1\r\nHost: pay.example.com\r\n\r\n"))
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = raw.Read(make([]byte, 512))
	raw.Close()

	want := map[string]int64{
		"guestlist.edge.decisions|mode=enforce|reason=certificate_verified|stage=request|verdict=allow": 3,
		"guestlist.edge.request.duration|code=2xx":                                                      4,
		"guestlist.edge.request.duration|code=4xx":                                                      3,
		"guestlist.edge.decisions|mode=enforce|reason=certificate_missing|stage=request|verdict=deny":   1,
		"guestlist.edge.decisions|mode=off|reason=mtls_off|stage=request|verdict=allow":                 1,
		"guestlist.edge.decisions|mode=enforce|reason=certificate_missing|stage=handshake|verdict=deny": 1,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseUnknownHostname:                      2,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseNoSNI:                                1,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseInactiveHostname:                     1,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseClientCertificateRejected:            1,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseNotTLS:                               1,
		// Causes not seen are reported as 0, so that alerts work before the first failure.
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseClientAlert:                  0,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseClientClosed:                 0,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseServerCertificateUnavailable: 0,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseTimeout:                      0,
		"guestlist.edge.handshake.failures|cause=" + HandshakeCauseProtocol:                     0,
	}
	var got map[string]int64
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = counts(t, reader)
		same := len(got) == len(want)
		for k, v := range want {
			same = same && got[k] == v
		}
		if same {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics:\n got %v\nwant %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustDo(t *testing.T, e *env, c *http.Client, req *http.Request) *result {
	t.Helper()
	r, err := e.do(c, req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func withCertCfg(c *tls.Config, l *pkitest.Leaf) {
	cert := tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
}

// TestHandshakeCause classifies the errors of real failed handshakes.
func TestHandshakeCause(t *testing.T) {
	ca := pkitest.NewCA(t, "Root")
	srvLeaf := ca.Server(t, []string{"a.example.com"})
	serverCfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvLeaf.Cert.Raw}, PrivateKey: srvLeaf.Key}}, MinVersion: tls.VersionTLS13}
	// serverErr runs a server handshake on loopback against what client does on its side.
	serverErr := func(client func(net.Conn)) error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			client(c)
		}()
		conn, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		return tls.Server(conn, serverCfg).Handshake()
	}
	tests := []struct {
		name   string
		client func(net.Conn)
		want   int
	}{
		{"ok/plain HTTP is not TLS", func(c net.Conn) { _, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }, causeNotTLS},
		{"ok/closed before the ClientHello", func(net.Conn) {}, causeClientClosed},
		{"ok/client rejects the server certificate", func(c net.Conn) {
			_ = tls.Client(c, &tls.Config{ServerName: "a.example.com", MinVersion: tls.VersionTLS13}).Handshake() // unknown CA: alert
		}, causeClientAlert},
		{"ok/no common version", func(c net.Conn) {
			_ = tls.Client(c, &tls.Config{ServerName: "a.example.com", MaxVersion: tls.VersionTLS12}).Handshake()
		}, causeProtocol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := serverErr(tc.client)
			if err == nil {
				t.Fatal("the handshake succeeded")
			}
			if got := handshakeCause(err); got != tc.want {
				t.Errorf("handshakeCause(%v) = %d, want %d (%s)", err, got, tc.want, handshakeCauses[tc.want])
			}
		})
	}
	// The edge's own refusals are counted where they arise, not again.
	for _, err := range []error{errNoSNI, errUnknownHostname, errInactive, errClientCertRejected, errServerCertUnavailable} {
		if c := handshakeCause(errors.Join(errors.New("ctx"), err)); c != -1 {
			t.Errorf("handshakeCause(%v) = %d, want -1", err, c)
		}
	}
	var timeout net.Error = &net.OpError{Op: "read", Err: errTimeout{}}
	if c := handshakeCause(timeout); c != causeTimeout {
		t.Errorf("timeout: %d", c)
	}
}

type errTimeout struct{}

func (errTimeout) Error() string   { return "i/o timeout" }
func (errTimeout) Timeout() bool   { return true }
func (errTimeout) Temporary() bool { return true }

// BenchmarkDecisionMetrics is the cost the metrics add to every request: one atomic increment of
// the series' counter (the SDK reads the counters when it collects).
func BenchmarkDecisionMetrics(b *testing.B) {
	m, err := newMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())))
	if err != nil {
		b.Fatal(err)
	}
	d := decision.Decision{Verdict: decision.Allow, Reason: decision.ReasonRuleAllow}
	b.ReportAllocs()
	for b.Loop() {
		m.decided(configv1.MtlsMode_MTLS_MODE_ENFORCE, &d, false)
	}
}
