package enforce

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// bodyDeadlineEnv is timeoutEnv's edge with ReadHeaderTimeout rht, IdleTimeout idle (0: the
// edge's) and ReadTimeout read (0: the edge's, none), set before it serves.
func bodyDeadlineEnv(t *testing.T, rht, idle, read time.Duration) *env {
	t.Helper()
	h := host(hostA, "acme")
	h.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	return newEnvWith(t, func(srv *Server) {
		srv.http.ReadHeaderTimeout = rht
		if idle > 0 {
			srv.http.IdleTimeout = idle
		}
		srv.http.ReadTimeout = read
	}, h)
}

// sendSlowly writes each string of steps to conn in its own TLS record, sleeping for each
// time.Duration, then reads the response: its status and the body length the echo origin
// received, or the error that ended the connection.
func sendSlowly(t *testing.T, conn *tls.Conn, br *bufio.Reader, steps ...any) (status int, received int64, err error) {
	t.Helper()
	for _, s := range steps {
		switch s := s.(type) {
		case string:
			if _, err := io.WriteString(conn, s); err != nil {
				return 0, 0, fmt.Errorf("write: %w", err)
			}
		case time.Duration:
			time.Sleep(s)
		default:
			t.Fatalf("step %T", s)
		}
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var echoed struct {
		BodyBytes int64 `json:"body_bytes"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&echoed); err != nil {
			return resp.StatusCode, 0, fmt.Errorf("the origin's answer: %w", err)
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, echoed.BodyBytes, nil
}

// bodyDeadlinePaths are the two ways an HTTP/1.1 body goes: read by the fast path (one no longer
// than h1MaxBody) or by net/http after a hand-over (a longer one). Each is a body length and what
// to send of it at once before the slow part ("ab" of "abcd").
var bodyDeadlinePaths = []struct {
	name   string
	length int
}{
	{"fast path", 4},
	{"net/http", h1MaxBody + 4},
}

// post returns a POST head with a body of n bytes and the body's first n-2 bytes.
func post(n int) (head, bodyStart string) {
	return "POST / HTTP/1.1\r\nHost: " + hostA + "\r\nContent-Length: " + fmt.Sprint(n) + "\r\n\r\n", strings.Repeat("a", n-2)
}

// TestBodyDeadlineAfterHeadInPieces: a request head that arrives in two TLS records (the request
// line first, as some clients write it) got ReadHeaderTimeout as its deadline, which was never
// lifted for its body: the body was cut ReadHeaderTimeout after the head began. As net/http (whose
// ReadTimeout is 0 at the edge), the body now has no deadline. For the first request of a
// connection and a later one.
func TestBodyDeadlineAfterHeadInPieces(t *testing.T) {
	for _, later := range []bool{false, true} {
		name := "first request"
		if later {
			name = "later request"
		}
		t.Run(name, func(t *testing.T) {
			e := bodyDeadlineEnv(t, timeoutRHT, 0, 0)
			conn := rawTLS(t, e, hostA, nil)
			br := bufio.NewReader(conn)
			if later {
				timeoutGet(t, conn, br)
			}
			head, _ := post(4)
			line, rest, _ := strings.Cut(head, "\r\n")
			status, n, err := sendSlowly(t, conn, br, line+"\r\n", 50*time.Millisecond, rest+"ab", 2*timeoutRHT, "cd")
			if err != nil || status != http.StatusOK || n != 4 {
				t.Fatalf("a body finished 2 x ReadHeaderTimeout after its head: status %d, %d bytes at the origin, %v", status, n, err)
			}
		})
	}
}

// TestBodyDeadlineNoneAsNetHTTP: with the edge's configuration (ReadTimeout 0), a request body
// has no read deadline on the fast path, as on net/http (a body too long for the fast path, handed
// over): neither a body streamed steadily for longer than IdleTimeout nor one that pauses for
// longer than IdleTimeout is cut (IdleTimeout from before the head went on to its body), after a
// head in one piece or in two, on the first request or a later one.
func TestBodyDeadlineNoneAsNetHTTP(t *testing.T) {
	const idle = 250 * time.Millisecond
	steady := []any{}
	for range 8 { // 2 x IdleTimeout, a byte every IdleTimeout/4
		steady = append(steady, idle/4, "x")
	}
	for _, path := range bodyDeadlinePaths {
		for _, later := range []bool{false, true} {
			for _, pieces := range []bool{false, true} {
				for _, slow := range []string{"steady", "pause"} {
					name := fmt.Sprintf("%s/later=%v/head in two pieces=%v/%s", path.name, later, pieces, slow)
					t.Run(name, func(t *testing.T) {
						e := bodyDeadlineEnv(t, timeoutRHT, idle, 0)
						conn := rawTLS(t, e, hostA, nil)
						br := bufio.NewReader(conn)
						if later {
							timeoutGet(t, conn, br)
						}
						// The body: path.length-2 bytes at once, then the slow part.
						slowPart := []any{3 * idle, "cd"}
						if slow == "steady" {
							slowPart = steady
						}
						want := path.length - 2
						for _, s := range slowPart {
							if s, ok := s.(string); ok {
								want += len(s)
							}
						}
						head, _ := post(want)
						start := strings.Repeat("a", path.length-2)
						var steps []any
						if pieces {
							line, rest, _ := strings.Cut(head, "\r\n")
							steps = append(steps, line+"\r\n", 50*time.Millisecond, rest+start)
						} else {
							steps = append(steps, head+start)
						}
						steps = append(steps, slowPart...)
						status, n, err := sendSlowly(t, conn, br, steps...)
						if err != nil || status != http.StatusOK || n != int64(want) {
							t.Fatalf("status %d, %d of %d bytes at the origin, %v", status, n, want, err)
						}
					})
				}
			}
		}
	}
}

// TestBodyDeadlineReadTimeout: were ReadTimeout set, a body would have to be complete within it
// of its head's start, as net/http does: one that is cut, one within it (after a pause longer
// than IdleTimeout and ReadHeaderTimeout) is not.
func TestBodyDeadlineReadTimeout(t *testing.T) {
	const (
		idle = 250 * time.Millisecond
		rt   = time.Second
	)
	for _, path := range bodyDeadlinePaths {
		for _, later := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/later=%v", path.name, later), func(t *testing.T) {
				e := bodyDeadlineEnv(t, timeoutRHT, idle, rt)
				conn := rawTLS(t, e, hostA, nil)
				br := bufio.NewReader(conn)
				if later {
					timeoutGet(t, conn, br)
				}
				head, start := post(path.length)
				status, n, err := sendSlowly(t, conn, br, head+start, 2*idle, "cd")
				if err != nil || status != http.StatusOK || n != int64(path.length) {
					t.Fatalf("a body finished within ReadTimeout: status %d, %d bytes at the origin, %v", status, n, err)
				}
				status, n, err = sendSlowly(t, conn, br, head+start, 2*rt, "cd")
				if err == nil && status == http.StatusOK {
					t.Fatalf("a body finished 2 x ReadTimeout after its head: status %d, %d bytes at the origin", status, n)
				}
				t.Logf("after ReadTimeout: status %d, %v", status, err)
			})
		}
	}
}
