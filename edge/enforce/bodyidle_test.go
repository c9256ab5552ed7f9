package enforce

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// bodyIdle is the edge's BodyIdleTimeout in these tests.
const bodyIdle = 300 * time.Millisecond

// bodyIdleEnv is an edge (one hostname, mode OFF) with BodyIdleTimeout bodyIdle, forwarding to
// originURL (the echo origin when empty).
func bodyIdleEnv(t *testing.T, originURL string) *env {
	t.Helper()
	h := host(hostA, "acme")
	h.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	h.OriginUrl = originURL
	return newEnvWith(t, func(srv *Server) { srv.bodyIdle = bodyIdle }, h)
}

// steadyBody returns sendSlowly steps that send n bytes, one every bodyIdle/3.
func steadyBody(n int) []any {
	var steps []any
	for range n {
		steps = append(steps, bodyIdle/3, "x")
	}
	return steps
}

// TestBodyIdleTimeoutHTTP1: a request body that stops coming for BodyIdleTimeout ends the request,
// on the fast path (the connection is closed: the head already went to the origin) and on
// net/http's (a body handed over: 408); one that keeps coming, a byte every third of it, goes
// through whole however long it takes in total. For the first request of a connection and a later
// one.
func TestBodyIdleTimeoutHTTP1(t *testing.T) {
	for _, path := range bodyDeadlinePaths {
		for _, later := range []bool{false, true} {
			name := fmt.Sprintf("%s/later=%v", path.name, later)
			open := func(t *testing.T) (conn *tls.Conn, br *bufio.Reader, send func(steps ...any) (int, int64, error)) {
				e := bodyIdleEnv(t, "")
				tc := rawTLS(t, e, hostA, nil)
				br = bufio.NewReader(tc)
				if later {
					timeoutGet(t, tc, br)
				}
				return tc, br, func(steps ...any) (int, int64, error) { return sendSlowly(t, tc, br, steps...) }
			}
			t.Run("ok/"+name+"/steady for 3 x BodyIdleTimeout", func(t *testing.T) {
				_, _, send := open(t)
				slow := steadyBody(9)
				head, _ := post(path.length - 2 + 9)
				status, n, err := send(append([]any{head + strings.Repeat("a", path.length-2)}, slow...)...)
				if err != nil || status != http.StatusOK || n != int64(path.length-2+9) {
					t.Fatalf("status %d, %d of %d bytes at the origin, %v", status, n, path.length-2+9, err)
				}
			})
			t.Run("fail/"+name+"/a pause of 3 x BodyIdleTimeout", func(t *testing.T) {
				conn, br, _ := open(t)
				head, start := post(path.length)
				begin := time.Now()
				if _, err := io.WriteString(conn, head+start); err != nil {
					t.Fatal(err)
				}
				_ = conn.SetReadDeadline(begin.Add(3 * bodyIdle))
				resp, err := http.ReadResponse(br, nil)
				elapsed := time.Since(begin)
				switch {
				case isTimeoutErr(err):
					t.Fatalf("the edge still waited for the body after 3 x BodyIdleTimeout")
				case path.name == "fast path" && err == nil:
					t.Fatalf("status %d; want the connection closed", resp.StatusCode)
				case path.name == "net/http" && err != nil:
					t.Fatalf("%v; want a 408", err)
				case path.name == "net/http":
					b, _ := io.ReadAll(resp.Body)
					if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "request_timeout") {
						t.Fatalf("status %d, %s; want 408 request_timeout", resp.StatusCode, b)
					}
				}
				if elapsed < bodyIdle {
					t.Fatalf("ended after %v, before BodyIdleTimeout (%v)", elapsed, bodyIdle)
				}
				t.Logf("ended after %v: %v", elapsed, err)
			})
			// After the body, the connection is the client's again: the body's deadline does
			// not cut the wait for its next request (IdleTimeout, 2 minutes, governs).
			t.Run("ok/"+name+"/idle for 3 x BodyIdleTimeout after a body", func(t *testing.T) {
				conn, br, send := open(t)
				head, start := post(path.length)
				status, n, err := send(head+start, "cd")
				if err != nil || status != http.StatusOK || n != int64(path.length) {
					t.Fatalf("status %d, %d of %d bytes at the origin, %v", status, n, path.length, err)
				}
				time.Sleep(3 * bodyIdle)
				timeoutGet(t, conn, br)
			})
		}
	}
}

// TestBodyIdleTimeoutSlowOrigin: an origin that answers 3 x BodyIdleTimeout after it read the
// whole body is waited for, on either path: the deadline is the body's, not the request's.
func TestBodyIdleTimeoutSlowOrigin(t *testing.T) {
	origin := slowBodyOrigin(t, 3*bodyIdle)
	for _, path := range bodyDeadlinePaths {
		t.Run("ok/"+path.name, func(t *testing.T) {
			e := bodyIdleEnv(t, origin)
			conn := rawTLS(t, e, hostA, nil)
			br := bufio.NewReader(conn)
			head, start := post(path.length)
			status, n, err := sendSlowly(t, conn, br, head+start, "cd")
			if err != nil || status != http.StatusOK || n != int64(path.length) {
				t.Fatalf("status %d, %d of %d bytes at the origin, %v", status, n, path.length, err)
			}
			timeoutGet(t, conn, br)
		})
	}
}

// TestBodyIdleTimeoutHTTP2: the same over HTTP/2, where the deadline is the stream's.
func TestBodyIdleTimeoutHTTP2(t *testing.T) {
	send := func(t *testing.T, e *env, pause time.Duration) (*result, error) {
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write([]byte("ab"))
			for _, step := range steadyBody(6) {
				switch step := step.(type) {
				case time.Duration:
					time.Sleep(step)
				case string:
					_, _ = pw.Write([]byte(step))
				}
			}
			time.Sleep(pause)
			_, _ = pw.Write([]byte("cd"))
			_ = pw.Close()
		}()
		req, _ := http.NewRequest(http.MethodPost, "https://"+hostA+"/", pr)
		return e.do(e.client(withH2()), req)
	}
	t.Run("ok/steady for 2 x BodyIdleTimeout", func(t *testing.T) {
		e := bodyIdleEnv(t, "")
		res, err := send(t, e, 0)
		if err != nil || res.status != http.StatusOK || res.proto != "HTTP/2.0" {
			t.Fatalf("%+v, %v", res, err)
		}
		if got := res.echo.BodyBytes; got != 10 {
			t.Fatalf("the origin got %d bytes, want 10", got)
		}
	})
	t.Run("fail/a pause of 3 x BodyIdleTimeout", func(t *testing.T) {
		e := bodyIdleEnv(t, "")
		res, err := send(t, e, 3*bodyIdle)
		if err == nil && res.status != http.StatusRequestTimeout {
			t.Fatalf("status %d, %s; want 408 or the stream reset", res.status, res.body)
		}
		if err == nil {
			t.Logf("status %d: %s", res.status, res.body)
		} else {
			t.Logf("%v", err)
		}
	})
}

// slowBodyOrigin is an origin that reads the request body, waits delay, and answers with the
// body's length as the echo origin does.
func slowBodyOrigin(t *testing.T, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		time.Sleep(delay)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"body_bytes":`+strconv.FormatInt(n, 10)+`}`)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// slowConsumerOrigin waits delay before it starts reading the request body (an origin that does
// some work first, or is simply busy), then reads all of it and answers with its length.
func slowConsumerOrigin(t *testing.T, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			t.Logf("origin: reading the body: %v after %d bytes", err, n)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"body_bytes":`+strconv.FormatInt(n, 10)+`}`)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestBodyIdleTimeoutSlowConsumingOrigin: the client sends its whole body as fast as the edge takes
// it; the origin only starts reading it after 3 x BodyIdleTimeout. The client never pauses, so
// the upload must go through, on HTTP/1.1 (net/http's path) and on HTTP/2 alike. On HTTP/2 the
// stream's deadline, set once and pushed forward by reads, was a timer that fired while the
// origin held the body back: the body was cut and the client got a 502 (independent review).
func TestBodyIdleTimeoutSlowConsumingOrigin(t *testing.T) {
	const size = 32 << 20 // more than the kernel's loopback buffers and HTTP/2's window hold
	origin := slowConsumerOrigin(t, 3*bodyIdle)
	for _, h2 := range []bool{false, true} {
		name := "HTTP/1.1"
		if h2 {
			name = "HTTP/2"
		}
		t.Run(name, func(t *testing.T) {
			e := bodyIdleEnv(t, origin)
			var opts []clientOpts
			if h2 {
				opts = append(opts, withH2())
			}
			req, _ := http.NewRequest(http.MethodPost, "https://"+hostA+"/", bytes.NewReader(make([]byte, size)))
			res, err := e.do(e.client(opts...), req)
			if err != nil {
				t.Fatalf("%v", err)
			}
			if res.status != http.StatusOK || res.proto != map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2] {
				t.Fatalf("%s: status %d, %s; want 200 with the whole body at the origin", res.proto, res.status, res.body)
			}
			if !bytes.Contains(res.body, []byte(`"body_bytes":`+strconv.Itoa(size))) {
				t.Fatalf("the origin answered %s; want %d bytes", res.body, size)
			}
		})
	}
}

// TestBodyIdleTimeoutOwnAnswer: on the fast path, a request the edge answers itself (a
// 403 deny here: mode ENFORCE, no certificate) has its body read and dropped before the answer.
// A body that keeps coming (a byte every third of BodyIdleTimeout, 3 x BodyIdleTimeout in all)
// must get the 403 with its reason and decision id, as the same body gets through when
// forwarded (TestBodyIdleTimeoutHTTP1 ok/fast path/steady ...). The deadline set for the body
// by bodyDeadline was never pushed forward while discardBody read it: the connection was closed
// without the 403 (independent review).
func TestBodyIdleTimeoutOwnAnswer(t *testing.T) {
	e := newEnvWith(t, func(srv *Server) { srv.bodyIdle = bodyIdle }, host(hostA, "acme"))
	conn := rawTLS(t, e, hostA, nil)
	br := bufio.NewReader(conn)
	head, _ := post(2 + 9) // a body of 11 bytes: "ab", then 9 bytes, one every bodyIdle/3
	status, _, err := sendSlowly(t, conn, br, append([]any{head + "ab"}, steadyBody(9)...)...)
	if err != nil || status != 403 {
		t.Fatalf("status %d, %v; want the 403 (deny, client_certificate_missing)", status, err)
	}
	if lines := e.logLines(); len(lines) != 1 || !strings.Contains(lines[0]["reason"].(string), "missing") {
		t.Fatalf("decision log %v", lines)
	}
}
