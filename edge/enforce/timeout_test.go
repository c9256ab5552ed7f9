package enforce

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// timeoutRHT is the ReadHeaderTimeout of the edge in these tests (IdleTimeout stays 2 minutes).
const timeoutRHT = 500 * time.Millisecond

// timeoutEnv is newEnv's edge (one hostname, mode OFF: no certificate needed) with
// ReadHeaderTimeout rht, set before it serves (connections read it without synchronisation).
func timeoutEnv(t *testing.T, rht time.Duration) *env {
	t.Helper()
	h := host(hostA, "acme")
	h.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	return newEnvWith(t, func(srv *Server) { srv.http.ReadHeaderTimeout = rht }, h)
}

// closedWithin reads from conn until the edge closes it and reports how long that took, failing
// when a response arrives or the edge keeps the connection beyond limit.
func closedWithin(t *testing.T, conn *tls.Conn, limit time.Duration, start time.Time) time.Duration {
	t.Helper()
	_ = conn.SetReadDeadline(start.Add(limit))
	b, err := io.ReadAll(conn)
	elapsed := time.Since(start)
	switch {
	case isTimeoutErr(err):
		t.Fatalf("the connection was still open after %v", limit)
	case len(b) > 0:
		t.Fatalf("the edge answered %q", b)
	}
	return elapsed
}

func timeoutGet(t *testing.T, conn *tls.Conn, br *bufio.Reader) {
	t.Helper()
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+hostA+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// dribble writes s a byte every interval until it is written or a write fails.
func dribble(conn *tls.Conn, s string, interval time.Duration) {
	for i := range len(s) {
		if _, err := io.WriteString(conn, s[i:i+1]); err != nil {
			return
		}
		time.Sleep(interval)
	}
}

// TestTimeoutFirstRequestHead: on the fast path, as with net/http, the connection's first request
// head must be complete within ReadHeaderTimeout of the handshake's end (it waited IdleTimeout,
// 2 minutes, for its first byte); between requests a connection may be idle for IdleTimeout, and
// a later head must be complete within ReadHeaderTimeout of its first bytes. A head sent a byte
// at a time does not push either deadline forward.
func TestTimeoutFirstRequestHead(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: " + hostA + "\r\nX-Slow: " + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + "\r\n\r\n"
	t.Run("fail/silent after the handshake", func(t *testing.T) {
		e := timeoutEnv(t, timeoutRHT)
		conn := rawTLS(t, e, hostA, nil)
		start := time.Now()
		if d := closedWithin(t, conn, 5*time.Second, start); d < timeoutRHT*8/10 {
			t.Errorf("closed after %v, before ReadHeaderTimeout %v", d, timeoutRHT)
		}
	})
	t.Run("fail/first head a byte at a time", func(t *testing.T) {
		e := timeoutEnv(t, timeoutRHT)
		conn := rawTLS(t, e, hostA, nil)
		start := time.Now()
		go dribble(conn, head, 50*time.Millisecond) // 3 s for the whole head
		closedWithin(t, conn, 5*time.Second/2, start)
	})
	t.Run("fail/first head begun late, then a byte at a time", func(t *testing.T) {
		const rht = time.Second
		e := timeoutEnv(t, rht)
		conn := rawTLS(t, e, hostA, nil)
		start := time.Now()
		go func() {
			time.Sleep(rht * 9 / 10)
			dribble(conn, head, 50*time.Millisecond) // 3 s for the whole head
		}()
		// Not ReadHeaderTimeout from the first byte (1.9 s after the handshake).
		if d := closedWithin(t, conn, 5*time.Second/2, start); d >= rht*3/2 {
			t.Errorf("closed after %v, want ReadHeaderTimeout %v after the handshake", d, rht)
		}
	})
	t.Run("ok/first request after a pause shorter than ReadHeaderTimeout", func(t *testing.T) {
		e := timeoutEnv(t, timeoutRHT)
		conn := rawTLS(t, e, hostA, nil)
		time.Sleep(timeoutRHT / 3)
		timeoutGet(t, conn, bufio.NewReader(conn))
	})
	t.Run("ok/idle between requests longer than ReadHeaderTimeout", func(t *testing.T) {
		e := timeoutEnv(t, timeoutRHT)
		conn := rawTLS(t, e, hostA, nil)
		br := bufio.NewReader(conn)
		timeoutGet(t, conn, br)
		time.Sleep(3 * timeoutRHT)
		timeoutGet(t, conn, br)
		time.Sleep(3 * timeoutRHT)
		timeoutGet(t, conn, br)
	})
	t.Run("ok/first request body slower than ReadHeaderTimeout", func(t *testing.T) {
		// The head came in one piece; its body is read with net/http's deadline (none here), not ReadHeaderTimeout.
		e := timeoutEnv(t, timeoutRHT)
		conn := rawTLS(t, e, hostA, nil)
		if _, err := io.WriteString(conn, "POST / HTTP/1.1\r\nHost: "+hostA+"\r\nContent-Length: 4\r\n\r\nab"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * timeoutRHT)
		if _, err := io.WriteString(conn, "cd"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("fail/second head a byte at a time", func(t *testing.T) {
		e := timeoutEnv(t, timeoutRHT)
		conn := rawTLS(t, e, hostA, nil)
		br := bufio.NewReader(conn)
		timeoutGet(t, conn, br)
		time.Sleep(2 * timeoutRHT)
		start := time.Now()
		go dribble(conn, head, 50*time.Millisecond)
		_ = conn.SetReadDeadline(start.Add(5 * time.Second / 2))
		b, err := io.ReadAll(br)
		if isTimeoutErr(err) || len(b) > 0 {
			t.Fatalf("after %v: read %q, %v; want the connection closed", time.Since(start), b, err)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			t.Logf("closed: %v", err)
		}
	})
}
