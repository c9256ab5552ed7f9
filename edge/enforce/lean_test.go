package enforce

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// originFunc starts an HTTP origin with handler h and returns its URL.
func originFunc(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// leanEnv is an env with one OFF hostname forwarding to origin.
func leanEnv(t *testing.T, origin string) (*env, *http.Client) {
	h := host(hostA, "acme")
	h.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	h.OriginUrl = origin
	e := newEnv(t, h)
	return e, e.client()
}

func TestLeanHopByHopHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	origin := originFunc(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		w.Header().Set("Connection", "X-Origin-Private")
		w.Header().Set("X-Origin-Private", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Origin-Public", "ok")
		_, _ = io.WriteString(w, "hello")
	})
	e, c := leanEnv(t, origin)
	req, _ := http.NewRequest("GET", "https://"+hostA+"/", nil)
	req.Header.Set("Connection", "X-Private, keep-alive")
	req.Header.Set("X-Private", "1")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic eA==")
	req.Header.Set("Te", "trailers, deflate")
	req.Header.Set("X-Public", "1")
	r, err := e.do(c, req)
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, r, 200)
	h := <-got
	for _, k := range []string{"X-Private", "Keep-Alive", "Proxy-Authorization", "Connection"} {
		if v, ok := h[k]; ok {
			t.Errorf("origin got %s: %v", k, v)
		}
	}
	if h.Get("Te") != "trailers" || h.Get("X-Public") != "1" {
		t.Errorf("origin headers %v", h)
	}
	if r.header.Get("X-Origin-Private") != "" || r.header.Get("Keep-Alive") != "" || r.header.Get("X-Origin-Public") != "ok" {
		t.Errorf("client got %v", r.header)
	}
	if string(r.body) != "hello" {
		t.Errorf("body %q", r.body)
	}
}

func TestLeanStreamingAndTrailers(t *testing.T) {
	for _, proto := range []string{"http1", "h2"} {
		t.Run(proto, func(t *testing.T) { testLeanStreamingAndTrailers(t, proto == "h2") })
	}
}

func testLeanStreamingAndTrailers(t *testing.T, h2 bool) {
	release := make(chan struct{})
	origin := originFunc(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "second\n")
		w.Header().Set("X-Checksum", "abc")
	})
	e, c := leanEnv(t, origin)
	if h2 {
		c = e.client(withH2())
	}
	resp, err := c.Get("https://" + hostA + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if h2 != (resp.ProtoMajor == 2) {
		t.Fatalf("protocol %s", resp.Proto)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q, %v (the body did not stream)", line, err)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
	if resp.Trailer.Get("X-Checksum") != "abc" {
		t.Errorf("trailer %v", resp.Trailer)
	}
}

func TestLeanHead(t *testing.T) {
	origin := originFunc(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1234")
		if r.Method != "HEAD" {
			_, _ = w.Write(make([]byte, 1234))
		}
	})
	e, c := leanEnv(t, origin)
	for range 3 {
		req, _ := http.NewRequest("HEAD", "https://"+hostA+"/", nil)
		r, err := e.do(c, req)
		if err != nil {
			t.Fatal(err)
		}
		expectStatus(t, r, 200)
		if r.header.Get("Content-Length") != "1234" || len(r.body) != 0 {
			t.Errorf("HEAD: %v %d bytes", r.header, len(r.body))
		}
	}
	r := e.get(c, "https://"+hostA+"/")
	if len(r.body) != 1234 {
		t.Errorf("GET after HEAD: %d bytes", len(r.body))
	}
}

// rawOrigin serves each connection with serve.
func rawOrigin(t *testing.T, serve func(conn net.Conn, n int)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(conn, int(n.Add(1)))
		}
	}()
	return "http://" + ln.Addr().String()
}

func readRequest(conn net.Conn) (*http.Request, error) {
	return http.ReadRequest(bufio.NewReader(conn))
}

func TestLeanRetriesStalePooledConnection(t *testing.T) {
	origin := rawOrigin(t, func(conn net.Conn, n int) {
		defer conn.Close()
		if _, err := readRequest(conn); err != nil {
			return
		}
		// Answer as if keeping the connection, then close it (an idle timeout on the origin).
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d", n%10)
		time.Sleep(50 * time.Millisecond)
	})
	e, c := leanEnv(t, origin)
	r := e.get(c, "https://"+hostA+"/")
	expectStatus(t, r, 200)
	time.Sleep(150 * time.Millisecond) // the origin closed the pooled connection
	r = e.get(c, "https://"+hostA+"/")
	expectStatus(t, r, 200)
	// Not idempotent: it cannot be retried, but the pool sees the origin's close before using the
	// connection (quiet), so it goes out on a new one.
	time.Sleep(150 * time.Millisecond)
	req, _ := http.NewRequest("DELETE", "https://"+hostA+"/", nil)
	r, err := e.do(c, req)
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, r, 200)
}

func TestLeanTruncatedBodyAbortsClient(t *testing.T) {
	origin := rawOrigin(t, func(conn net.Conn, _ int) {
		defer conn.Close()
		if _, err := readRequest(conn); err != nil {
			return
		}
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
	})
	e, c := leanEnv(t, origin)
	_ = e
	resp, err := c.Get("https://" + hostA + "/")
	if err != nil {
		return // aborted before the header reached the client
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("a truncated body was delivered as complete")
	}
}

func TestLeanClientCancelAbortsOrigin(t *testing.T) {
	canceled := make(chan struct{})
	origin := originFunc(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(canceled)
	})
	e, c := leanEnv(t, origin)
	_ = e
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+hostA+"/", nil)
	if _, err := c.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the origin request was not aborted")
	}
}

func TestLeanBodylessPostAndQuery(t *testing.T) {
	got := make(chan *http.Request, 1)
	origin := originFunc(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r
	})
	e, c := leanEnv(t, origin+"/p?a=1")
	req, _ := http.NewRequest("POST", "https://"+hostA+"/x%20y/?b=2", nil)
	r, err := e.do(c, req)
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, r, 200)
	o := <-got
	if o.ContentLength != 0 || o.RequestURI != "/p/x%20y/?a=1&b=2" || o.Host != hostA {
		t.Errorf("origin got %s %s host %s length %d", o.Method, o.RequestURI, o.Host, o.ContentLength)
	}
}

func TestLeanMTLSHeadersWithFallbackBody(t *testing.T) {
	// A request with a body goes through ReverseProxy; both paths set the same headers.
	ca := pkitest.NewCA(t, "Acme Root")
	e := newEnv(t, host(hostA, "acme", ca))
	c := e.client(withCert(ca.Client(t, "device")))
	get := e.get(c, "https://"+hostA+"/")
	req, _ := http.NewRequest("PUT", "https://"+hostA+"/", strings.NewReader("body"))
	put, err := e.do(c, req)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range decisionHeaders {
		if k == hDecisionID {
			continue
		}
		if a, b := get.originHeader(k), put.originHeader(k); a != b {
			t.Errorf("%s: GET %q, PUT %q", k, a, b)
		}
	}
	for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if a, b := get.originHeader(k), put.originHeader(k); a != b || a == "" {
			t.Errorf("%s: GET %q, PUT %q", k, a, b)
		}
	}
}

func TestLeanEligible(t *testing.T) {
	mk := func(method string, body io.Reader, major int, cl int64, hdr ...string) *http.Request {
		r := httptest.NewRequest(method, "https://a.example.com/", body)
		r.ProtoMajor = major
		r.ContentLength = cl
		if body == nil && major == 2 {
			r.Body = io.NopCloser(strings.NewReader("")) // HTTP/2 requests always have a Body
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return r
	}
	for _, tc := range []struct {
		name string
		r    *http.Request
		want bool
	}{
		{"GET", mk("GET", nil, 1, 0), true},
		{"GET h2", mk("GET", nil, 2, 0), true},
		{"POST body", mk("POST", strings.NewReader("x"), 1, 1), false},
		{"h2 body unknown length", mk("POST", nil, 2, -1), false},
		{"chunked", mk("POST", strings.NewReader("x"), 1, -1), false},
		{"upgrade", mk("GET", nil, 1, 0, "Upgrade", "websocket", "Connection", "Upgrade"), false},
		{"expect", mk("GET", nil, 1, 0, "Expect", "100-continue"), false},
		{"CONNECT", mk("CONNECT", nil, 1, 0), false},
	} {
		if got := leanEligible(tc.r); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestUpgradeGoesThroughReverseProxy(t *testing.T) {
	origin := originFunc(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "test" || r.Header.Get("X-Guestlist-Decision") != "allow" {
			http.Error(w, "no upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo " + line)
		brw.Flush()
	})
	e, _ := leanEnv(t, origin)
	conn, err := tls.Dial("tcp", e.addr, &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+hostA+"\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	io.WriteString(conn, "ping\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo ping\n" {
		t.Fatalf("got %q, %v", line, err)
	}
}

// TestLeanPoolDropsConnectionsWithStrayBytes: an origin that sends an unsolicited response on an
// idle keep-alive connection must not have it delivered to the next request.
func TestLeanPoolDropsConnectionsWithStrayBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					time.Sleep(20 * time.Millisecond)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
				}
			}()
		}
	}()
	ca := pkitest.NewCA(t, "Acme Root")
	h := host(hostA, "acme", ca)
	h.OriginUrl = "http://" + ln.Addr().String()
	e := newEnv(t, h)
	c := e.client(withCert(ca.Client(t, "device")))
	for i := range 3 {
		r := e.get(c, "https://"+hostA+"/x")
		expectStatus(t, r, 200)
		if string(r.body) != "ok" {
			t.Fatalf("request %d got %q", i, r.body)
		}
		time.Sleep(50 * time.Millisecond) // let the stray response arrive on the idle connection
	}
}
