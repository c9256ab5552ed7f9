package enforce

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// recordingOrigin is an HTTP/1.1 origin that records every request it reads (method, target,
// body) and answers 200 "ok": after 300 ms for a path starting with /slow, and not at all (it
// closes the connection) for a path starting with /drop.
type recordingOrigin struct {
	url  string
	mu   sync.Mutex
	seen []string
	hdrs []http.Header
}

func newRecordingOrigin(t *testing.T) *recordingOrigin {
	t.Helper()
	o := &recordingOrigin{}
	o.url = rawOrigin(t, func(conn net.Conn, _ int) {
		defer conn.Close()
		br := bufio.NewReader(conn)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if r.Header.Get("Expect") == "100-continue" {
				io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n")
			}
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			o.mu.Lock()
			e := r.Method + " " + r.RequestURI
			if len(body) > 0 {
				e += " " + string(body)
			}
			o.seen = append(o.seen, e)
			o.hdrs = append(o.hdrs, r.Header)
			o.mu.Unlock()
			switch {
			case strings.HasPrefix(r.URL.Path, "/slow"):
				time.Sleep(300 * time.Millisecond)
			case strings.HasPrefix(r.URL.Path, "/drop"):
				return
			}
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	return o
}

func (o *recordingOrigin) requests() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.seen)
}

// rawTLS opens an HTTP/1.1 TLS connection to the edge for hostname name with the client
// certificate leaf (nil: none).
func rawTLS(t *testing.T, e *env, name string, leaf *pkitest.Leaf) *tls.Conn {
	t.Helper()
	cfg := &tls.Config{ServerName: name, RootCAs: e.edgeCA.Pool(), NextProtos: []string{"http/1.1"}}
	if leaf != nil {
		withCert(leaf)(cfg, nil)
	}
	conn, err := tls.Dial("tcp", e.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn
}

// readStatuses reads responses from br until EOF or n final responses were read, skipping
// 1xx responses, and returns the status codes.
func readStatuses(br *bufio.Reader, n int) ([]int, error) {
	var got []int
	for len(got) < n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return got, nil
			}
			var ne net.Error
			if errors.As(err, &ne) {
				return got, nil // reset after a refusal
			}
			return got, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 200 {
			got = append(got, resp.StatusCode)
		}
	}
	return got, nil
}

// TestFastPathSmuggling sends raw requests over real TLS and checks what the client gets and
// what reaches the origin: requests in the fast path's subset are served on it, requests outside
// it are served or refused by net/http as before, and the smuggling classics are refused before
// anything reaches the origin.
func TestFastPathSmuggling(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	leaf := ca.Client(t, "device")
	origin := newRecordingOrigin(t)
	h := host(hostA, "acme", ca)
	h.OriginUrl = origin.url
	e := newEnv(t, h)

	const hostLine = "Host: " + hostA + "\r\n"
	smuggled := "GET /admin HTTP/1.1\r\n" + hostLine + "\r\n"
	filler := strings.Repeat("X-Filler: 1\r\n", h1MaxHeaders)
	cases := []struct {
		name     string
		raw      string
		then     string // sent 150 ms after raw (when the edge watches the client during a slow origin exchange)
		statuses []int
		origin   []string
		closed   bool // the edge closes the connection after the answers
		handoff  bool // served by net/http after a hand-over
	}{
		{name: "ok/get", raw: "GET /x?q=1 HTTP/1.1\r\n" + hostLine + "\r\n", statuses: []int{200}, origin: []string{"GET /x?q=1"}},
		{name: "ok/pipelined", raw: "GET /1 HTTP/1.1\r\n" + hostLine + "\r\nGET /2 HTTP/1.1\r\n" + hostLine + "\r\n",
			statuses: []int{200, 200}, origin: []string{"GET /1", "GET /2"}},
		{name: "ok/post body then get", raw: "POST /p HTTP/1.1\r\n" + hostLine + "Content-Length: 5\r\n\r\nhelloGET /g HTTP/1.1\r\n" + hostLine + "\r\n",
			statuses: []int{200, 200}, origin: []string{"POST /p hello", "GET /g"}},
		{name: "ok/body that looks like a request stays a body",
			raw:      "POST /p HTTP/1.1\r\n" + hostLine + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(smuggled)) + smuggled,
			statuses: []int{200}, origin: []string{"POST /p " + smuggled}},
		{name: "ok/chunked body handed over", raw: "POST /c HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\n" + hostLine + "\r\n",
			statuses: []int{200, 200}, origin: []string{"POST /c hello", "GET /after"}, handoff: true},
		{name: "ok/identical content lengths handed over", raw: "POST /p HTTP/1.1\r\n" + hostLine + "Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
			statuses: []int{200}, origin: []string{"POST /p hi"}, handoff: true},
		{name: "ok/expect 100-continue handed over", raw: "PUT /e HTTP/1.1\r\n" + hostLine + "Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
			statuses: []int{200}, origin: []string{"PUT /e abc"}, handoff: true},
		{name: "ok/http 1.0 handed over, closed", raw: "GET /old HTTP/1.0\r\n" + hostLine + "\r\n" + smuggled,
			statuses: []int{200}, origin: []string{"GET /old"}, closed: true, handoff: true},
		{name: "ok/connection close ends the connection", raw: "GET /1 HTTP/1.1\r\n" + hostLine + "Connection: close\r\n\r\n" + smuggled,
			statuses: []int{200}, origin: []string{"GET /1"}, closed: true},
		{name: "ok/absolute form handed over", raw: "GET https://" + hostA + "/abs HTTP/1.1\r\n" + hostLine + "\r\n",
			statuses: []int{200}, origin: []string{"GET /abs"}, handoff: true},
		{name: "ok/bare LF handed over", raw: "GET /lf HTTP/1.1\n" + "Host: " + hostA + "\n\n", statuses: []int{200}, origin: []string{"GET /lf"}, handoff: true},
		{name: "ok/large body handed over", raw: "POST /big HTTP/1.1\r\n" + hostLine + fmt.Sprintf("Content-Length: %d\r\n\r\n", h1MaxBody+1) + strings.Repeat("b", h1MaxBody+1),
			statuses: []int{200}, origin: []string{"POST /big " + strings.Repeat("b", h1MaxBody+1)}, handoff: true},

		{name: "ok/pipelined hand-over after a slow origin keeps the byte order",
			raw:      "GET /slow HTTP/1.1\r\n" + hostLine + "\r\nPOST /c HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: chunked\r\n\r\n",
			then:     "5\r\nhello\r\n0\r\n\r\n",
			statuses: []int{200, 200}, origin: []string{"GET /slow", "POST /c hello"}, handoff: true},
		{name: "ok/origin failure after a body that starts with HEAD is answered with its body",
			raw:      "POST /drop HTTP/1.1\r\n" + hostLine + "Content-Length: 8\r\n\r\n",
			then:     "HEADbodyGET /next HTTP/1.1\r\n" + hostLine + "\r\n",
			statuses: []int{502, 200}, origin: []string{"POST /drop HEADbody", "GET /next"}},

		{name: "fail/content-length with transfer-encoding after many headers", raw: "POST / HTTP/1.1\r\n" + hostLine + filler + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
			statuses: []int{400}, closed: true},
		{name: "fail/repeated host after many headers", raw: "GET / HTTP/1.1\r\n" + hostLine + filler + "Host: " + hostB + "\r\n\r\n", statuses: []int{400}, closed: true},
		{name: "fail/differing content lengths after many headers", raw: "POST / HTTP/1.1\r\n" + hostLine + "Content-Length: 0\r\n" + filler + "Content-Length: 41\r\n\r\n" + smuggled,
			statuses: []int{400}, closed: true},
		{name: "fail/content-length with transfer-encoding", raw: "POST / HTTP/1.1\r\n" + hostLine + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
			statuses: []int{400}, closed: true},
		{name: "fail/transfer-encoding with content-length", raw: "POST / HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggled,
			statuses: []int{400}, closed: true},
		{name: "fail/differing content lengths", raw: "POST / HTTP/1.1\r\n" + hostLine + "Content-Length: 0\r\nContent-Length: 41\r\n\r\n" + smuggled,
			statuses: []int{400}, closed: true},
		{name: "fail/obs-fold", raw: "GET / HTTP/1.1\r\n" + hostLine + "X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n", statuses: []int{400}, closed: true},
		{name: "fail/bare CR", raw: "GET / HTTP/1.1\r\n" + hostLine + "X-A: 1\rContent-Length: 41\r\n\r\n" + smuggled, statuses: []int{400}, closed: true},
		{name: "fail/NUL in a value", raw: "GET / HTTP/1.1\r\n" + hostLine + "X-A: a\x00b\r\n\r\n", statuses: []int{400}, closed: true},
		{name: "fail/NUL in the target", raw: "GET /a\x00b HTTP/1.1\r\n" + hostLine + "\r\n", statuses: []int{400}, closed: true},
		{name: "fail/missing host", raw: "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", statuses: []int{400}, closed: true},
		{name: "fail/repeated host", raw: "GET / HTTP/1.1\r\n" + hostLine + "Host: " + hostB + "\r\n\r\n", statuses: []int{400}, closed: true},
		{name: "fail/host of another hostname", raw: "GET / HTTP/1.1\r\nHost: " + hostB + "\r\n\r\nGET /next HTTP/1.1\r\n" + hostLine + "\r\n",
			statuses: []int{421, 200}, origin: []string{"GET /next"}},
		{name: "fail/absolute form naming another hostname", raw: "GET https://" + hostB + "/ HTTP/1.1\r\n" + hostLine + "\r\n",
			statuses: []int{421}, handoff: true},
		{name: "fail/space before colon", raw: "GET / HTTP/1.1\r\n" + hostLine + "Content-Length : 41\r\n\r\n" + smuggled, statuses: []int{400}, closed: true, handoff: true},
		{name: "fail/signed content length", raw: "POST / HTTP/1.1\r\n" + hostLine + "Content-Length: +41\r\n\r\n" + smuggled, statuses: []int{400}, closed: true, handoff: true},
		{name: "fail/unknown transfer coding", raw: "POST / HTTP/1.1\r\n" + hostLine + "Transfer-Encoding: xchunked\r\n\r\n" + smuggled, statuses: []int{501}, closed: true, handoff: true},
		{name: "fail/double space in request line", raw: "GET  / HTTP/1.1\r\n" + hostLine + "\r\n", statuses: []int{400}, closed: true, handoff: true},
		{name: "fail/header block over the limit", raw: "GET / HTTP/1.1\r\n" + hostLine + "X-Big: " + strings.Repeat("a", 80<<10) + "\r\n\r\n", statuses: []int{431}, closed: true, handoff: true},
		{name: "fail/connect", raw: "CONNECT " + hostA + ":443 HTTP/1.1\r\n" + hostLine + "\r\n", statuses: []int{405}, handoff: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(origin.requests())
			handoffs := e.srv.handoffs.Load()
			conn := rawTLS(t, e, hostA, leaf)
			if _, err := io.WriteString(conn, tc.raw); err != nil {
				t.Fatal(err)
			}
			if tc.then != "" {
				time.Sleep(150 * time.Millisecond)
				if _, err := io.WriteString(conn, tc.then); err != nil {
					t.Fatal(err)
				}
			}
			br := bufio.NewReader(conn)
			got, err := readStatuses(br, len(tc.statuses))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.statuses) {
				t.Fatalf("statuses %v, want %v", got, tc.statuses)
			}
			if tc.closed {
				_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				if n, err := br.Read(make([]byte, 1)); n > 0 || (err != nil && isTimeoutErr(err)) {
					t.Errorf("the connection stayed open (%d bytes, %v)", n, err)
				}
			}
			if seen := origin.requests()[before:]; !slices.Equal(seen, tc.origin) {
				t.Errorf("origin got %q, want %q", seen, tc.origin)
			}
			if handedOver := e.srv.handoffs.Load() > handoffs; handedOver != tc.handoff {
				t.Errorf("handed over to net/http: %v, want %v", handedOver, tc.handoff)
			}
		})
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestFastPathKeepAliveAndDecisions: the requests of an HTTP/1.1 keep-alive connection are served
// on the fast path (no hand-over), each decided on the current configuration and logged, and the
// origin gets the forwarded headers once each.
func TestFastPathKeepAliveAndDecisions(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	leaf := ca.Client(t, "device")
	origin := newRecordingOrigin(t)
	h := host(hostA, "acme", ca)
	h.OriginUrl = origin.url
	e := newEnv(t, h)
	conn := rawTLS(t, e, hostA, leaf)
	br := bufio.NewReader(conn)
	get := func(path string, extra ...string) int {
		t.Helper()
		req := "GET " + path + " HTTP/1.1\r\nHost: " + hostA + "\r\n" + strings.Join(extra, "") + "\r\n"
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		got, err := readStatuses(br, 1)
		if err != nil || len(got) != 1 {
			t.Fatalf("GET %s: %v %v", path, got, err)
		}
		return got[0]
	}
	for i := range 5 {
		if st := get(fmt.Sprintf("/%d", i), "X-Client-Cert-Verified: forged\r\n", "Connection: X-Drop\r\n", "X-Drop: 1\r\n", "X-Keep: 1\r\n"); st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	// A configuration change applies to the next request on the open connection.
	other := pkitest.NewCA(t, "Other Root")
	replaced := host(hostA, "acme", other)
	replaced.OriginUrl = origin.url
	e.change([]*configv1.HostnameConfig{replaced})
	if st := get("/after-change"); st != 403 {
		t.Fatalf("after the CA was replaced: status %d, want 403", st)
	}
	if n := e.srv.handoffs.Load(); n != 0 {
		t.Errorf("%d hand-overs to net/http", n)
	}
	seen := origin.requests()
	if len(seen) != 5 {
		t.Fatalf("origin got %q", seen)
	}
	origin.mu.Lock()
	hdr := origin.hdrs[4]
	origin.mu.Unlock()
	if v := hdr.Values("X-Client-Cert-Verified"); len(v) != 1 || v[0] != "true" {
		t.Errorf("X-Client-Cert-Verified %q", v)
	}
	if hdr.Get("X-Drop") != "" || hdr.Get("X-Keep") != "1" || hdr.Get("Connection") != "" {
		t.Errorf("origin headers %v", hdr)
	}
	for _, k := range []string{"X-Guestlist-Decision", "X-Guestlist-Decision-Id", "X-Guestlist-Config-Revision", "X-Client-Cert-Subject", "Client-Cert", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v := hdr.Values(k); len(v) != 1 || v[0] == "" {
			t.Errorf("%s: %q", k, v)
		}
	}
	lines := e.logLines()
	if len(lines) != 6 || lines[5]["verdict"] != "deny" || lines[5]["config_revision"] != float64(e.pos) {
		t.Errorf("decision log %v", lines)
	}
}

// FuzzParseRequestAgreesWithNetHTTP: for arbitrary bytes, the fast path's parser accepts a
// request head only if net/http's server accepts it (http.ReadRequest plus the server's checks
// of Host, header names and values), and then reads it the same way: method, target, Host, the
// headers forwarded to the origin, and the body's framing.
func FuzzParseRequestAgreesWithNetHTTP(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
		"POST /p?q=1 HTTP/1.1\r\nHost: a.example.com:443\r\nContent-Length: 5\r\n\r\nhello",
		"GET /x%2Fy HTTP/1.1\r\nHost: a\r\nConnection: close, X-A\r\nX-A: 1\r\nTe: trailers\r\nPragma: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nX_Client_Cert: x\r\nKeep-Alive: 1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
		"GET /? HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\nCache-Control: max-age=0\r\n\r\n",
		"GET /a??b HTTP/1.1\r\nhost: A.\r\ncontent-length: 0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req h1Request
		if parseRequest(b, &req, false) != parseOK {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("fast path accepted what net/http refuses (%v): %q", err, b)
		}
		// http.ReadRequest moves Host out of the header; the server checks the header lines.
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
		_, _ = tp.ReadLine()
		mh, _ := tp.ReadMIMEHeader()
		if hosts := mh["Host"]; len(hosts) != 1 || !httpguts.ValidHostHeader(hosts[0]) {
			t.Fatalf("net/http's server refuses the Host %q: %q", hosts, b)
		}
		for k, vv := range r.Header {
			if !httpguts.ValidHeaderFieldName(k) {
				t.Fatalf("net/http's server refuses header name %q: %q", k, b)
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("net/http's server refuses header value %q: %q", v, b)
				}
			}
		}
		if r.Method != string(req.method) || r.RequestURI != string(req.target) || r.Host != string(req.host) {
			t.Fatalf("method/target/host %q %q %q, net/http %q %q %q", req.method, req.target, req.host, r.Method, r.RequestURI, r.Host)
		}
		if len(r.TransferEncoding) != 0 || r.ContentLength != req.contentLength || r.Close != req.close || r.ProtoMajor != 1 || r.ProtoMinor != 1 {
			t.Fatalf("framing: TE %v length %d/%d close %v/%v", r.TransferEncoding, r.ContentLength, req.contentLength, r.Close, req.close)
		}
		// The target and the policy path, as the lean proxy and ServeHTTP derive them.
		var lp leanPool
		want, ok := lp.requestTarget(r)
		c := &h1Conn{req: req}
		if got := string(c.appendTarget(nil, &lp)); !ok || got != want {
			t.Fatalf("origin target %q, net/http's %q (%v)", got, want, ok)
		}
		p, err := url.PathUnescape(string(req.path))
		if err != nil || p != r.URL.Path {
			t.Fatalf("path %q (%v), net/http's %q", p, err, r.URL.Path)
		}
		// The forwarded headers, as writeRequest forwards net/http's after scrubHeaders.
		var mine, theirs []string
		for _, f := range req.fields {
			if !f.drop {
				mine = append(mine, string(appendCanonicalKey(nil, f.name))+": "+string(f.value))
			}
		}
		if req.teTrailers {
			mine = append(mine, "Te: trailers")
		}
		if req.pragmaNoCache {
			mine = append(mine, "Cache-Control: no-cache")
		}
		scrubHeaders(r.Header)
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		r.RemoteAddr = ""
		r.Host = "h"
		if err := writeRequest(bw, r, "/"); err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out.String(), "\r\n")[1:] {
			if line == "" || strings.HasPrefix(line, "Host: ") || strings.HasPrefix(line, "X-Forwarded-") || strings.HasPrefix(line, "Content-Length: ") {
				continue
			}
			theirs = append(theirs, line)
		}
		slices.Sort(mine)
		slices.Sort(theirs)
		if !slices.Equal(mine, theirs) {
			t.Fatalf("forwarded headers\n%q\nnet/http and the lean proxy:\n%q", mine, theirs)
		}
		// The head ends where net/http's body begins.
		body, err := io.ReadAll(r.Body)
		if err == nil && int64(len(body)) == req.contentLength && !bytes.Equal(body, b[req.headLen:req.headLen+len(body)]) {
			t.Fatalf("body %q, net/http's %q", b[req.headLen:], body)
		}
	})
}

// tlsPair returns both ends of a TLS connection on loopback for hostname hostA, the server's
// certificate from e's edge CA.
func tlsPair(t *testing.T, e *env) (server, client *tls.Conn) {
	t.Helper()
	cc, sc := tcpPair(t)
	server = tls.Server(sc, &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return e.edgeCA.GetCertificate(hostA)
	}})
	client = tls.Client(cc, &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool()})
	t.Cleanup(func() { server.Close(); client.Close() })
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	_ = client.SetDeadline(time.Now().Add(20 * time.Second))
	return server, client
}

// TestReadHeadDribbled: a request head sent a byte per TLS record is read and judged as one sent
// at once, and parsed a bounded number of times, not again at every byte (which would cost time
// quadratic in the head's length: a cheap way for a client to burn the edge's CPU).
func TestReadHeadDribbled(t *testing.T) {
	e := newEnv(t, host(hostA, "acme", pkitest.NewCA(t, "Acme Root")))
	lines := strings.Repeat("X-Aaaaaaaaaaaa: "+strings.Repeat("b", 40)+"\r\n", 90) // 5 KiB
	cases := []struct {
		name    string
		head    string
		perByte bool
		want    parseResult
	}{
		{name: "ok/one record", head: "GET / HTTP/1.1\r\nHost: " + hostA + "\r\n" + lines + "\r\n", want: parseOK},
		{name: "ok/a byte a record", head: "GET / HTTP/1.1\r\nHost: " + hostA + "\r\n" + lines + "\r\n", perByte: true, want: parseOK},
		{name: "ok/bare LF a byte a record, handed over", head: "GET / HTTP/1.1\nHost: " + hostA + "\n" + strings.Repeat("A: 1\n", 300) + "\n", perByte: true, want: parseHandoff},
		{name: "ok/over the buffer a byte a record, handed over", head: "GET / HTTP/1.1\r\nHost: " + hostA + "\r\n" + strings.Repeat("A: 1\r\n", h1ReadBuf/6+1) + "\r\n", perByte: true, want: parseHandoff},
		{name: "fail/bare CR a byte a record", head: "GET / HTTP/1.1\r\nHost: " + hostA + "\r\nX: a\rb\r\n" + lines + "\r\n", perByte: true, want: parseReject},
		{name: "fail/obs-fold a byte a record", head: "GET / HTTP/1.1\r\nHost: " + hostA + "\r\n" + lines + " folded\r\n\r\n", perByte: true, want: parseReject},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := tlsPair(t, e)
			c := newH1Conn(e.srv, server, nil)
			c.name = hostA
			go func() {
				if !tc.perByte {
					_, _ = io.WriteString(client, tc.head)
					return
				}
				for i := range len(tc.head) {
					if _, err := io.WriteString(client, tc.head[i:i+1]); err != nil {
						return
					}
				}
			}()
			if got := c.readHead(); got != tc.want {
				t.Fatalf("readHead: %v, want %v", got, tc.want)
			}
			if c.parses > 3 {
				t.Errorf("the head was parsed %d times", c.parses)
			}
		})
	}
}

// TestExchangeReleaseAfterClientGone: an origin connection is not pooled when the watcher found
// the client gone, even when the exchange had found it reusable just before: the watcher has
// then set a deadline in the past on it, and the next request (any client's, any hostname's with
// the same origin) would fail on it with a 502.
func TestExchangeReleaseAfterClientGone(t *testing.T) {
	e := newEnv(t, host(hostA, "acme", pkitest.NewCA(t, "Acme Root")))
	server, client := tlsPair(t, e)
	c := newH1Conn(e.srv, server, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if conn, err := ln.Accept(); err == nil {
			defer conn.Close()
			_, _ = io.Copy(io.Discard, conn)
		}
	}()
	p := newLeanPool(&url.URL{Scheme: "http", Host: ln.Addr().String()}, egress.Loopback())
	oc, err := p.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c.armWatch(oc)
	client.Close() // the client goes away while the origin has not answered
	for deadline := time.Now().Add(5 * time.Second); !c.clientGone.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("the watcher did not notice the client going away")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The exchange had found oc reusable before the watcher's verdict.
	c.release(p, oc, true)
	if n := len(p.idle); n != 0 {
		t.Fatalf("%d connections pooled after the client went away", n)
	}
}

// TestOriginInformationalResponses: both proxy paths (the HTTP/1.1 fast path, and the other one,
// here for an HTTP/2 client) skip an origin's 1xx responses (they are not forwarded), but no more
// than maxInformational of them: an origin that keeps sending them gets the client a 502 instead
// of an answer that never comes.
func TestOriginInformationalResponses(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		want int
	}{
		{"ok/one early hints", 1, http.StatusOK},
		{"ok/as many as allowed", maxInformational, http.StatusOK},
		{"fail/one too many", maxInformational + 1, http.StatusBadGateway},
		{"fail/endless", 1000, http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := pkitest.NewCA(t, "Acme Root")
			leaf := ca.Client(t, "device")
			originURL := rawOrigin(t, func(conn net.Conn, _ int) {
				defer conn.Close()
				if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
					return
				}
				for range tc.n {
					if _, err := io.WriteString(conn, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"); err != nil {
						return
					}
				}
				io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			})
			h := host(hostA, "acme", ca)
			h.OriginUrl = originURL
			e := newEnv(t, h)
			conn := rawTLS(t, e, hostA, leaf)
			if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+hostA+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("HTTP/1.1: status %d, want %d (the client must not see 1xx responses either)", resp.StatusCode, tc.want)
			}
			r := e.get(e.client(withCert(leaf), withH2()), "https://"+hostA+"/")
			if r.proto != "HTTP/2.0" || r.status != tc.want {
				t.Fatalf("%s: status %d, want %d", r.proto, r.status, tc.want)
			}
		})
	}
}

// TestFastPathPooledConnectionHalfClosed: an origin (or a relay in front of it) that half-closes
// an idle keep-alive connection and reads on without ever answering or resetting. The pool
// leaves its quiet check to the read that writes the next bodyless request (sendwait_linux.go):
// that check must find the close, write nothing on the connection, and send the request on a
// new one, whatever its method; it must not wait for an answer that never comes.
func TestFastPathPooledConnectionHalfClosed(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	var mu sync.Mutex
	var after []int // bytes each connection got after its half-close
	origin := rawOrigin(t, func(conn net.Conn, _ int) {
		defer conn.Close()
		br := bufio.NewReader(conn)
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"+r.Method[:2])
		time.Sleep(30 * time.Millisecond)
		_ = conn.(*net.TCPConn).CloseWrite()
		n, _ := io.Copy(io.Discard, br)
		mu.Lock()
		after = append(after, int(n))
		mu.Unlock()
	})
	h := host(hostA, "acme", ca)
	h.OriginUrl = origin
	e := newEnv(t, h)
	conn := rawTLS(t, e, hostA, ca.Client(t, "device"))
	br := bufio.NewReader(conn)
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: " + hostA + "\r\n\r\n",
		"DELETE /x HTTP/1.1\r\nHost: " + hostA + "\r\n\r\n",
		"POST /y HTTP/1.1\r\nHost: " + hostA + "\r\nContent-Length: 0\r\n\r\n",
		"GET /z HTTP/1.1\r\nHost: " + hostA + "\r\n\r\n",
	} {
		time.Sleep(100 * time.Millisecond) // the origin half-closed the pooled connection
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != req[:2] {
			t.Fatalf("%q: %d %q", req, resp.StatusCode, body)
		}
	}
	if n := e.srv.handoffs.Load(); n != 0 {
		t.Errorf("%d hand-overs to net/http", n)
	}
	// The edge closed the three connections it found half-closed (the fourth is pooled).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		k := len(after)
		mu.Unlock()
		if k >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections closed by the edge; want 3", k)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, n := range after {
		if n != 0 {
			t.Errorf("connection %d got %d bytes after the origin half-closed it", i, n)
		}
	}
}
