package enforce

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/servercert"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestOriginEgress: a tenant names its hostname's origin, so an origin inside the operator's
// network (here: loopback, as the control plane's or the event store's HTTP port would be) must
// not be reachable through the edge unless the operator allows it (Config.Egress). Every way to
// the origin is tried: the HTTP/1.1 fast path, a request with a body (ReverseProxy), HTTP/2; the
// origin by address, by a name that resolves to loopback, and by an IPv4-mapped IPv6 address.
func TestOriginEgress(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	origin := &countingListener{Listener: ln}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = echo.ServeListener(ctx, origin) }()
	t.Cleanup(func() { cancel(); <-served })
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	origins := map[string]string{
		"byaddress.example.com": "http://127.0.0.1:" + port,
		"byname.example.com":    "http://localhost:" + port,
		"mapped.example.com":    "http://[::ffff:127.0.0.1]:" + port,
	}
	store := configset.NewStore()
	var hosts []*configv1.HostnameConfig
	for name, u := range origins {
		h := host(name, "acme", ca)
		h.OriginUrl, h.Version = u, 1
		hosts = append(hosts, h)
	}
	if err := store.Apply(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: hosts}); err != nil {
		t.Fatal(err)
	}
	edgeCA, err := servercert.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T, policy *egress.Policy, listen ...string) (*env, *syncBuffer) {
		addr := "127.0.0.1:0"
		if len(listen) > 0 {
			addr = listen[0]
		}
		logs := &syncBuffer{}
		srv, err := New(Config{Addr: addr, Configs: store, Certificates: edgeCA.GetCertificate,
			Log: decisionlog.New(&syncBuffer{}), Logger: slog.New(slog.NewTextHandler(logs, nil)), Egress: policy})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		_, port, _ := net.SplitHostPort(srv.Addr().String())
		return &env{t: t, addr: net.JoinHostPort("127.0.0.1", port), edgeCA: edgeCA}, logs
	}
	type request struct {
		name    string
		method  string
		body    string
		chunked bool // the body's length unknown: Transfer-Encoding: chunked on HTTP/1.1
		opts    []clientOpts
	}
	requests := []request{ // between them, the fast path, the lean proxy and ReverseProxy
		{name: "HTTP/1.1 GET", method: "GET"},
		{name: "HTTP/1.1 POST with a body", method: "POST", body: "amount=10"},
		{name: "HTTP/1.1 POST chunked", method: "POST", body: "amount=10", chunked: true},
		{name: "HTTP/2 GET", method: "GET", opts: []clientOpts{withH2()}},
		{name: "HTTP/2 POST with a body", method: "POST", body: "amount=10", opts: []clientOpts{withH2()}},
	}
	send := func(t *testing.T, e *env, hostname string, r request) *result {
		t.Helper()
		c := e.client(append([]clientOpts{withCert(ca.Client(t, "device"))}, r.opts...)...)
		var body io.Reader = http.NoBody
		switch {
		case r.chunked:
			body = io.MultiReader(strings.NewReader(r.body))
		case r.body != "":
			body = strings.NewReader(r.body)
		}
		req, err := http.NewRequest(r.method, "https://"+hostname+"/pay", body)
		if err != nil {
			t.Fatal(err)
		}
		res, err := e.do(c, req)
		if err != nil {
			t.Fatalf("%s %s: %v", r.method, hostname, err)
		}
		return res
	}

	t.Run("fail/default policy refuses loopback origins", func(t *testing.T) {
		e, logs := start(t, nil)
		for hostname := range origins {
			for _, r := range requests {
				if res := send(t, e, hostname, r); res.status != http.StatusBadGateway {
					t.Errorf("%s to %s (origin %s): status %d, want 502", r.name, hostname, origins[hostname], res.status)
				}
			}
		}
		if n := origin.n.Load(); n != 0 {
			t.Fatalf("the origin accepted %d connections; want none", n)
		}
		if out := logs.String(); !strings.Contains(out, "127.0.0.1 is in 127.0.0.0/8 (loopback)") {
			t.Errorf("the log does not name the refused address:\n%s", out)
		}
	})
	t.Run("fail/an origin at the edge's own address", func(t *testing.T) {
		e, logs := start(t, egress.Loopback())
		for i, scheme := range []string{"http", "https"} {
			loop := host("loop.example.com", "acme", ca)
			loop.Mode = configv1.MtlsMode_MTLS_MODE_OFF // an ENFORCE hostname would stop the loop at its first turn
			loop.OriginUrl, loop.Version = scheme+"://"+e.addr, uint64(2+i)
			if err := store.Apply(&configv1.WatchResponse{Position: uint64(2 + i), Upserts: []*configv1.HostnameConfig{loop}}); err != nil {
				t.Fatal(err)
			}
			for _, r := range requests {
				if res := send(t, e, "loop.example.com", r); res.status != http.StatusBadGateway {
					t.Errorf("%s to a hostname whose origin is %s: status %d, want 502", r.name, loop.OriginUrl, res.status)
				}
			}
		}
		if out := logs.String(); !strings.Contains(out, "is denied") {
			t.Errorf("the log does not say the edge's own address is denied:\n%s", out)
		}
	})
	t.Run("fail/an origin at the edge's own port elsewhere on loopback, the edge listening on all addresses", func(t *testing.T) {
		e, logs := start(t, egress.Loopback(), "0.0.0.0:0")
		_, port, _ := net.SplitHostPort(e.addr)
		loop := host("loop2.example.com", "acme", ca)
		loop.Mode = configv1.MtlsMode_MTLS_MODE_OFF
		loop.OriginUrl, loop.Version = "http://127.0.0.2:"+port, 9
		if err := store.Apply(&configv1.WatchResponse{Position: 9, Upserts: []*configv1.HostnameConfig{loop}}); err != nil {
			t.Fatal(err)
		}
		if res := send(t, e, "loop2.example.com", requests[0]); res.status != http.StatusBadGateway {
			t.Errorf("GET to a hostname whose origin is %s: status %d, want 502", loop.OriginUrl, res.status)
		}
		if out := logs.String(); !strings.Contains(out, "is denied") {
			t.Errorf("the log does not say the edge's own address is denied:\n%s", out)
		}
	})
	t.Run("ok/loopback allowed", func(t *testing.T) {
		e, _ := start(t, egress.Loopback())
		for hostname := range origins {
			for _, r := range requests {
				res := send(t, e, hostname, r)
				if res.status != http.StatusOK || res.echo == nil || res.echo.Method != r.method {
					t.Errorf("%s to %s (origin %s): status %d, echo %+v; want 200 from the origin", r.name, hostname, origins[hostname], res.status, res.echo)
				}
			}
		}
		if origin.n.Load() == 0 {
			t.Fatal("the origin accepted no connection")
		}
	})
}
