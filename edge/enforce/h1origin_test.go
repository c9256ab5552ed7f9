package enforce

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
)

// TestFastPathOriginResponseFraming: the fast path reads an origin's response as net/http's
// client (the other path) reads it, over real TCP from the origin and real TLS to the client. A
// response net/http reads is forwarded whole and its origin connection reused; one net/http
// refuses is refused: a 502 when none of it had reached the client yet (it came in one write),
// else the client's connection is closed mid-body; the origin connection is closed either way,
// so that whatever the origin meant to follow is never read as the next client's response.
func TestFastPathOriginResponseFraming(t *testing.T) {
	const chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	cases := []struct {
		name    string
		resp    string // the origin's answer, written at once
		then    string // written 100 ms later, if not empty
		status  int
		body    string
		trailer http.Header
		// truncated: the client gets the head, then its connection is closed mid-body.
		truncated bool
	}{
		// Repeated Content-Lengths: net/http accepts them only when they are the same string.
		{name: "ok/repeated content-length", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length:  5\t\r\n\r\nhello", status: 200, body: "hello"},
		{name: "fail/repeated content-length written differently", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\nhello", status: 502},
		// Chunk-size lines: net/http trims trailing SP and HTAB, then cuts off the extensions.
		{name: "ok/whitespace after the chunk size", resp: chunked + "5 \r\nhello\r\n0\t\r\n\r\n", status: 200, body: "hello"},
		{name: "ok/whitespace after an extension", resp: chunked + "5;ext=1 \t\r\nhello\r\n0\r\n\r\n", status: 200, body: "hello"},
		{name: "ok/extension of any bytes", resp: chunked + "5;\x01\x7f\xff\"\r\nhello\r\n0\r\n\r\n", status: 200, body: "hello"},
		{name: "ok/sixteen hex digits", resp: chunked + "0000000000000005\r\nhello\r\n0\r\n\r\n", status: 200, body: "hello"},
		{name: "ok/long chunk-size line", resp: chunked + "5;" + strings.Repeat("e", maxChunkLineLength-3) + "\r\nhello\r\n0\r\n\r\n", status: 200, body: "hello"},
		{name: "fail/whitespace before an extension", resp: chunked + "5 ;ext\r\nhello\r\n0\r\n\r\n", status: 502},
		{name: "fail/whitespace before the chunk size", resp: chunked + " 5\r\nhello\r\n0\r\n\r\n", status: 502},
		{name: "fail/seventeen hex digits", resp: chunked + "00000000000000005\r\nhello\r\n0\r\n\r\n", status: 502},
		{name: "fail/chunk-size line too long", resp: chunked + "5;" + strings.Repeat("e", maxChunkLineLength-2) + "\r\nhello\r\n0\r\n\r\n", status: 502},
		{name: "fail/chunk-size lines mostly extensions", resp: chunked + strings.Repeat("1;"+strings.Repeat("e", 4000)+"\r\nx\r\n", 5) + "0\r\n\r\n", status: 502},
		{name: "fail/CR inside a chunk-size line", resp: chunked + "5\r;x\r\nhello\r\n0\r\n\r\n", status: 502},
		{name: "fail/chunk data longer than its size", resp: chunked + "3\r\nhello\r\n0\r\n\r\n", status: 502},
		// Trailer: net/http refuses a chunked response whose Trailer names a framing header.
		{name: "ok/trailer", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
			status: 200, body: "hello", trailer: http.Header{"X-Sum": {"1"}}},
		{name: "ok/trailer naming content-length without chunking", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTrailer: Content-Length\r\n\r\nhello", status: 200, body: "hello"},
		{name: "ok/trailer naming content_length", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Content_Length\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status: 200, body: "hello"},
		{name: "fail/trailer naming content-length", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, content-length\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 41\r\n\r\n", status: 502},
		{name: "fail/trailer naming transfer-encoding", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nTrailer: Transfer-Encoding \r\n\r\n5\r\nhello\r\n0\r\n\r\n", status: 502},
		{name: "fail/trailer naming trailer", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: ,TRAILER,\r\n\r\n5\r\nhello\r\n0\r\n\r\n", status: 502},
		{name: "fail/no content with a trailer naming content-length", resp: "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n", status: 502},
		// Trailers: a MIME header, as net/http reads it, within the read buffer.
		{name: "ok/folded trailer", resp: chunked + "5\r\nhello\r\n0\r\nX-A: 1\r\n folded\r\n\r\n", status: 200, body: "hello", trailer: http.Header{"X-A": {"1 folded"}}},
		{name: "ok/trailer lines ending in LF", resp: chunked + "5\r\nhello\r\n0\r\nX-A: 1\nx-b:  2 \r\n\r\n", status: 200, body: "hello", trailer: http.Header{"X-A": {"1"}, "X-B": {"2"}}},
		{name: "ok/many trailer lines", resp: chunked + "5\r\nhello\r\n0\r\n" + strings.Repeat("X-N: 1\r\n", 300) + "\r\n", status: 200, body: "hello",
			trailer: http.Header{"X-N": slices.Repeat([]string{"1"}, 300)}},
		{name: "ok/framing trailers left out", resp: chunked + "5\r\nhello\r\n0\r\nContent-Length: 41\r\nHost: x\r\nConnection: close\r\nX-A: 1\r\n\r\n", status: 200, body: "hello", trailer: http.Header{"X-A": {"1"}}},
		{name: "fail/trailer section beyond the read buffer", resp: chunked + "5\r\nhello\r\n0\r\n" + strings.Repeat("X-Big: "+strings.Repeat("b", 1000)+"\r\n", leanBufSize/1000+1) + "\r\n",
			status: 200, truncated: true},
		{name: "fail/trailer without a colon", resp: chunked + "5\r\nhello\r\n0\r\nX-A 1\r\n\r\n", status: 502},
		{name: "fail/trailer section starting with a space", resp: chunked + "5\r\nhello\r\n0\r\n X-A: 1\r\n\r\n", status: 502},
		{name: "fail/bad chunk-size line after the head went out", resp: chunked + "5\r\nhello\r\n", then: "5 ;ext\r\nworld\r\n0\r\n\r\n", status: 200, truncated: true},
	}

	// What each origin connection (rawOrigin's count) served, and whether the edge closed it.
	type originConn struct {
		paths  []string
		closed bool
	}
	var mu sync.Mutex
	conns := map[int]*originConn{}
	servedBy := map[string]int{} // request path: its origin connection
	originURL := rawOrigin(t, func(conn net.Conn, n int) {
		defer conn.Close()
		oc := &originConn{}
		mu.Lock()
		conns[n] = oc
		mu.Unlock()
		br := bufio.NewReader(conn)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				mu.Lock()
				oc.closed = true
				mu.Unlock()
				return
			}
			mu.Lock()
			oc.paths = append(oc.paths, r.URL.Path)
			servedBy[r.URL.Path] = n
			mu.Unlock()
			if i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/case/")); err == nil {
				if _, err := io.WriteString(conn, cases[i].resp); err != nil {
					return
				}
				if cases[i].then != "" {
					time.Sleep(100 * time.Millisecond)
					if _, err := io.WriteString(conn, cases[i].then); err != nil {
						return
					}
				}
				continue
			}
			if _, err := fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(r.URL.Path), r.URL.Path); err != nil {
				return
			}
		}
	})
	ca := pkitest.NewCA(t, "Acme Root")
	leaf := ca.Client(t, "device")
	h := host(hostA, "acme", ca)
	h.OriginUrl = originURL
	e := newEnv(t, h)

	get := func(t *testing.T, conn net.Conn, br *bufio.Reader, path string) (*http.Response, []byte, error) {
		t.Helper()
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: "+hostA+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		return resp, body, err
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := rawTLS(t, e, hostA, leaf)
			br := bufio.NewReader(conn)
			casePath, nextPath := fmt.Sprintf("/case/%d", i), fmt.Sprintf("/next/%d", i)
			resp, body, err := get(t, conn, br, casePath)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if tc.truncated {
				if err == nil {
					t.Fatalf("the client read a whole body %q; want the connection closed mid-body", body)
				}
				// The client connection is gone; the next request comes on another.
				conn = rawTLS(t, e, hostA, leaf)
				br = bufio.NewReader(conn)
			} else if err != nil {
				t.Fatalf("body: %v", err)
			}
			if tc.status == 200 && !tc.truncated {
				if string(body) != tc.body {
					t.Errorf("body %q, want %q", body, tc.body)
				}
				for k, v := range resp.Trailer {
					if v == nil {
						delete(resp.Trailer, k) // announced, not sent
					}
				}
				if !equalHeader(resp.Trailer, tc.trailer) && (len(resp.Trailer) > 0 || len(tc.trailer) > 0) {
					t.Errorf("trailers %q, want %q", resp.Trailer, tc.trailer)
				}
			}
			// The origin connection of the case: closed by the edge when the response was refused,
			// else reused by a next request (the pool hands out its idle connections in turn, and
			// one may have been given back just after the client got its response).
			mu.Lock()
			oc := conns[servedBy[casePath]]
			mu.Unlock()
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the origin connection was neither closed nor reused")
				}
				if tc.status == 200 && !tc.truncated {
					resp, body, err = get(t, conn, br, nextPath)
					if err != nil || resp.StatusCode != 200 || string(body) != nextPath {
						t.Fatalf("next request: %d %q %v", resp.StatusCode, body, err)
					}
				}
				mu.Lock()
				closed, reused := oc.closed, slices.Contains(oc.paths, nextPath)
				mu.Unlock()
				if closed || reused {
					if want := tc.status == 200 && !tc.truncated; reused != want {
						t.Errorf("origin connection reused: %v, want %v", reused, want)
					}
					break
				}
			}
			// The client connection goes on (after a 502 too).
			resp, body, err = get(t, conn, br, nextPath)
			if err != nil || resp.StatusCode != 200 || string(body) != nextPath {
				t.Fatalf("next request: %d %q %v", resp.StatusCode, body, err)
			}
			if n := e.srv.handoffs.Load(); n != 0 {
				t.Errorf("%d hand-overs to net/http", n)
			}
		})
	}
}
