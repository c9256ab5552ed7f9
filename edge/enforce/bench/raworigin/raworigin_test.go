package raworigin

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawPair returns the client end of a loopback connection whose server end Serve serves.
func rawPair(t *testing.T) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		Serve(conn, nil)
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestServe(t *testing.T) {
	get := "GET /x HTTP/1.1\r\nHost: a.example.com\r\nClient-Cert: :AAAA:\r\n\r\n"
	tests := []struct {
		name   string
		writes []string // written one after another
		codes  []int    // the answers expected, in order
		closed bool     // the raw origin closes the connection after them
	}{
		{"ok/one", []string{get}, []int{200}, false},
		{"ok/pipelined", []string{get + get + get}, []int{200, 200, 200}, false},
		{"ok/head split over writes", []string{get[:10], get[10:30], get[30:] + get}, []int{200, 200}, false},
		{"ok/content-length 0", []string{"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"}, []int{200}, false},
		{"fail/body", []string{"POST /x HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n\r\nhello"}, []int{400}, true},
		{"fail/chunked", []string{get + "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"}, []int{200, 400}, true},
		{"fail/head over 64 KiB", []string{"GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 70<<10)}, []int{400}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := rawPair(t)
			go func() {
				for _, w := range tt.writes {
					if _, err := io.WriteString(conn, w); err != nil {
						return
					}
				}
			}()
			br := bufio.NewReader(conn)
			for i, want := range tt.codes {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("answer %d: body: %v", i, err)
				}
				if resp.StatusCode != want {
					t.Fatalf("answer %d: status %d, want %d", i, resp.StatusCode, want)
				}
				if want == 200 && string(body) != "ok\n" {
					t.Fatalf("answer %d: body %q, want \"ok\\n\"", i, body)
				}
			}
			if tt.closed {
				// Closed: EOF, or a reset when request bytes were left unread. Not a timeout.
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := br.Read(make([]byte, 1))
				var ne net.Error
				if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
					t.Fatalf("after the 400: read %d bytes, %v; want the connection closed", n, err)
				}
			}
		})
	}
}

func TestServeOnHead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	heads := make(chan string, 2)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		Serve(conn, func(head []byte) { heads <- string(head) })
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a := "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
	b := "GET /b HTTP/1.1\r\nHost: b\r\nX-Client-Cert-Present: true\r\n\r\n"
	if _, err := io.WriteString(conn, a+b); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for i, want := range []string{a, b} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		resp.Body.Close()
		if got := <-heads; got != want {
			t.Fatalf("head %d: %q, want %q", i, got, want)
		}
	}
}
