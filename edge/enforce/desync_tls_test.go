package enforce

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// strayPoison is what a misbehaving origin sends beyond a response's framing: content that looks
// like a response (an attacker may have stored it on the origin).
const strayPoison = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"

// strayCase makes an origin's answer to a request for /poison: the bytes to write on the TCP
// connection in one write, and the remainder of a record to write before the next answer.
type strayCase struct {
	name   string
	method string
	tls    func(o *holdConn) (out, rest []byte)
	plain  string // the same answer from a plain-http origin; "" when it has no such form
}

var strayCases = []strayCase{
	{
		name: "body on HEAD", method: http.MethodHead,
		tls: func(o *holdConn) ([]byte, []byte) {
			return o.records(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(strayPoison)), strayPoison), nil
		},
		plain: fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(strayPoison), strayPoison),
	},
	{
		name: "body on 204", method: http.MethodGet,
		tls: func(o *holdConn) ([]byte, []byte) {
			return o.records("HTTP/1.1 204 No Content\r\n\r\n", strayPoison), nil
		},
		plain: "HTTP/1.1 204 No Content\r\n\r\n" + strayPoison,
	},
	{
		name: "Content-Length too short", method: http.MethodGet,
		tls: func(o *holdConn) ([]byte, []byte) {
			return o.records("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", strayPoison), nil
		},
		plain: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + strayPoison,
	},
	{
		// The stray record is cut in two: its first half comes with the answer (crypto/tls holds
		// it, a partial record), its second half with the next answer on the connection.
		name: "partial record", method: http.MethodGet,
		tls: func(o *holdConn) ([]byte, []byte) {
			out := o.records("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			poison := o.records(strayPoison)
			return append(out, poison[:len(poison)/2]...), poison[len(poison)/2:]
		},
	},
}

// holdConn is a TLS origin's TCP connection: records collects what crypto/tls writes (one Write
// per record), so that the test decides how the records leave (several in one TCP write, or one
// cut in two).
type holdConn struct {
	net.Conn
	tc   *tls.Conn
	hold bool
	held []byte
}

func (c *holdConn) Write(p []byte) (int, error) {
	if c.hold {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// records writes each part as a TLS record and returns the records' bytes, unsent.
func (c *holdConn) records(parts ...string) []byte {
	c.hold = true
	for _, p := range parts {
		if _, err := io.WriteString(c.tc, p); err != nil {
			panic(err)
		}
	}
	c.hold = false
	out := c.held
	c.held = nil
	return out
}

// strayOrigin starts an origin (https with tlsVersion, or plain http when tlsVersion is 0) that
// answers /poison as sc says and any other path with "response to PATH for SUBJECT". It returns
// its URL, its CA (https) and the count of connections it accepted.
func strayOrigin(t *testing.T, sc strayCase, tlsVersion uint16) (string, *pkitest.CA, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var cfg *tls.Config
	var ca *pkitest.CA
	if tlsVersion != 0 {
		ca = pkitest.NewCA(t, "Origin CA")
		leaf := ca.Server(t, []string{"localhost"}, func(c *x509.Certificate) {
			c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		})
		cfg = &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}},
			MinVersion:   tlsVersion, MaxVersion: tlsVersion,
		}
	}
	var accepted atomic.Int32
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, raw)
			mu.Unlock()
			wg.Go(func() { serveStray(raw, cfg, sc) })
		}
	})
	scheme := "http://"
	if cfg != nil {
		scheme = "https://"
	}
	return scheme + ln.Addr().String(), ca, &accepted
}

func serveStray(raw net.Conn, cfg *tls.Config, sc strayCase) {
	defer raw.Close()
	hc := &holdConn{Conn: raw}
	var conn net.Conn = raw
	if cfg != nil {
		hc.tc = tls.Server(hc, cfg)
		conn = hc.tc
	}
	br := bufio.NewReader(conn)
	var rest []byte
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		out := rest
		rest = nil
		var answer []byte
		switch {
		case r.URL.Path == "/poison" && cfg != nil:
			answer, rest = sc.tls(hc)
		case r.URL.Path == "/poison":
			answer = []byte(sc.plain)
		default:
			body := "response to " + r.URL.Path + " for " + r.Header.Get("X-Client-Cert-Subject")
			head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
			if cfg != nil {
				answer = hc.records(head + body)
			} else {
				answer = []byte(head + body)
			}
		}
		// One write on the TCP connection: the records arrive together, in one read of the edge.
		if _, err := raw.Write(append(out, answer...)); err != nil {
			return
		}
	}
}

// strayEnv is an edge with hostA (OFF, the attacker's) and hostB (ENFORCE, the victims') both
// forwarding to origin, trusting originCA for it when it is https.
func strayEnv(t *testing.T, origin string, originCA *pkitest.CA) (*env, *pkitest.CA) {
	custCA := pkitest.NewCA(t, "Customer B Root")
	a := host(hostA, "saas")
	a.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	a.OriginUrl = origin
	b := host(hostB, "saas", custCA)
	b.OriginUrl = origin
	e := newEnv(t, a, b)
	if originCA != nil {
		// Only in tests: trust the origin's CA (a real origin's certificate is publicly trusted).
		pool := x509.NewCertPool()
		pool.AddCert(originCA.Cert)
		e.srv.origin(origin).lean.tls.RootCAs = pool
	}
	return e, custCA
}

// checkNoDesync has an attacker make the origin send stray bytes on a pooled connection, then two
// clients of another hostname with the same origin make requests: each must get its own answer.
func checkNoDesync(t *testing.T, origin string, originCA *pkitest.CA, sc strayCase, opts ...clientOpts) {
	e, custCA := strayEnv(t, origin, originCA)
	req, _ := http.NewRequest(sc.method, "https://"+hostA+"/poison", nil)
	r, err := e.do(e.client(opts...), req)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != http.StatusOK && r.status != http.StatusNoContent {
		t.Fatalf("attacker's request: status %d", r.status)
	}
	for _, name := range []string{"device-x", "device-y"} {
		c := e.client(append([]clientOpts{withCert(custCA.Client(t, name))}, opts...)...)
		r := e.get(c, "https://"+hostB+"/"+name)
		if want := "response to /" + name + " for CN=" + name; r.status != 200 || string(r.body) != want {
			t.Errorf("%s got %d %q, want its own answer %q", name, r.status, r.body, want)
		}
	}
}

var desyncClients = []struct {
	name string
	opts []clientOpts
}{
	{"h1", nil},                    // the HTTP/1.1 fast path (h1proxy.go)
	{"h2", []clientOpts{withH2()}}, // the lean proxy (lean.go)
}

// TestDesyncTLSOriginStrayBytes: an https origin that sends bytes beyond a response's framing, in
// records that arrive with the response's (crypto/tls reads them ahead: neither the bufio reader
// nor the socket holds them), must not have them read by the next request on the pooled
// connection, another client's, as its answer.
func TestDesyncTLSOriginStrayBytes(t *testing.T) {
	for _, sc := range strayCases {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			for _, cl := range desyncClients {
				t.Run(fmt.Sprintf("%s/%s/%s", sc.name, tls.VersionName(v), cl.name), func(t *testing.T) {
					origin, originCA, _ := strayOrigin(t, sc, v)
					checkNoDesync(t, origin, originCA, sc, cl.opts...)
				})
			}
		}
	}
}

// TestDesyncPlainOriginStrayBytes is the control for plain-http origins: the stray bytes are in the
// bufio reader or on the socket, where the pool's checks always saw them.
func TestDesyncPlainOriginStrayBytes(t *testing.T) {
	for _, sc := range strayCases {
		if sc.plain == "" {
			continue
		}
		for _, cl := range desyncClients {
			t.Run(sc.name+"/"+cl.name, func(t *testing.T) {
				origin, _, _ := strayOrigin(t, sc, 0)
				checkNoDesync(t, origin, nil, sc, cl.opts...)
			})
		}
	}
}

// TestDesyncTLSOriginCleanConnectionReused: the checks through crypto/tls leave a clean https
// origin connection pooled and usable (the read with a past deadline does not break it).
func TestDesyncTLSOriginCleanConnectionReused(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, cl := range desyncClients {
			t.Run(tls.VersionName(v)+"/"+cl.name, func(t *testing.T) {
				origin, originCA, accepted := strayOrigin(t, strayCases[0], v)
				e, custCA := strayEnv(t, origin, originCA)
				for i := range 5 {
					name := fmt.Sprintf("device-%d", i)
					c := e.client(append([]clientOpts{withCert(custCA.Client(t, name))}, cl.opts...)...)
					r := e.get(c, "https://"+hostB+"/"+name)
					if want := "response to /" + name + " for CN=" + name; r.status != 200 || string(r.body) != want {
						t.Fatalf("%s got %d %q, want %q", name, r.status, r.body, want)
					}
				}
				// One connection, reused; or two, when a TLS 1.3 session ticket the origin sends
				// after its handshake was still arriving in pieces at a check (a partial record:
				// the check cannot tell it from a stray answer and drops the connection, which is
				// safe). Five would mean the checks broke every connection.
				if n := accepted.Load(); n > 2 {
					t.Errorf("the origin accepted %d connections for 5 sequential requests, want 1 (2 at most)", n)
				}
			})
		}
	}
}

// TestDesyncRecordFraming: recordConn follows the TLS record framing however the reads cut the
// bytes: at a boundary exactly where a record ends.
func TestDesyncRecordFraming(t *testing.T) {
	var stream []byte
	ends := map[int]bool{0: true}
	for _, n := range []int{0, 1, 300, 16<<10 + 256} {
		stream = append(stream, 23, 3, 3, byte(n>>8), byte(n))
		stream = append(stream, make([]byte, n)...)
		ends[len(stream)] = true
	}
	for _, step := range []int{1, 2, 5, 7, 4096, len(stream)} {
		var c recordConn
		for i := 0; i < len(stream); i += step {
			end := min(i+step, len(stream))
			c.track(stream[i:end])
			if ends[end] != c.atBoundary() {
				t.Fatalf("step %d: after %d bytes atBoundary = %v", step, end, c.atBoundary())
			}
		}
	}
}
