//go:build linux

package enforce

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// sendPair returns a sendConn dialed to a loopback listener and the server's side of it.
func sendPair(t *testing.T) (*sendConn, net.Conn) {
	t.Helper()
	conn, srv := tcpPair(t)
	sc, ok := newSendConn(conn).(*sendConn)
	if !ok {
		t.Fatal("newSendConn did not wrap a *net.TCPConn")
	}
	t.Cleanup(func() { sc.Close(); srv.Close() })
	return sc, srv
}

func TestSendOnRead(t *testing.T) {
	t.Run("ok/the request goes out, then one read gets the answer", func(t *testing.T) {
		c, srv := sendPair(t)
		req := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		got := make(chan []byte, 1)
		go func() {
			b := make([]byte, len(req))
			if _, err := io.ReadFull(srv, b); err != nil {
				got <- nil
				return
			}
			got <- b
			time.Sleep(20 * time.Millisecond) // the edge waits: a read-first would find nothing
			_, _ = srv.Write([]byte("HTTP/1.1 200 OK\r\n\r\n"))
		}()
		if sendOnRead(c, req) {
			t.Fatal("sendOnRead took a connection without a quiet check left to it (a new one)")
		}
		if !deferQuiet(c) || !sendOnRead(c, req) {
			t.Fatal("sendOnRead refused a pooled TCP connection")
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if string(buf[:n]) != "HTTP/1.1 200 OK\r\n\r\n" {
			t.Fatalf("Read = %q", buf[:n])
		}
		if b := <-got; !bytes.Equal(b, req) {
			t.Fatalf("the origin got %q, want %q", b, req)
		}
		if c.reads != 1 {
			t.Fatalf("read(2) was called %d times; want 1 (the wait comes first)", c.reads)
		}
		// The next Read, with nothing to send, is an ordinary one.
		go func() { _, _ = srv.Write([]byte("more")) }()
		n, err = c.Read(buf)
		if err != nil || string(buf[:n]) != "more" {
			t.Fatalf("second Read = %q, %v", buf[:n], err)
		}
		if c.reads != 1 {
			t.Fatalf("an ordinary Read went through the callback (%d reads)", c.reads)
		}
		if c.pending {
			t.Fatal("the quiet check stays pending after the Read")
		}
	})

	t.Run("ok/a request larger than the socket takes at once", func(t *testing.T) {
		c, srv := sendPair(t)
		req := bytes.Repeat([]byte("x"), 16<<20)
		done := make(chan error, 1)
		go func() {
			b := make([]byte, len(req))
			if _, err := io.ReadFull(srv, b); err != nil {
				done <- err
				return
			}
			if !bytes.Equal(b, req) {
				done <- errors.New("the origin got other bytes")
				return
			}
			_, err := srv.Write([]byte("ok"))
			done <- err
		}()
		deferQuiet(c)
		sendOnRead(c, req)
		buf := make([]byte, 8)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "ok" {
			t.Fatalf("Read = %q, %v", buf[:n], err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	// An origin that closed, half-closed (a relay propagating a close, a lingering close: no RST
	// for the request) or wrote while the connection was idle: its edge came before the runtime
	// cleared the readiness, so a wait after the write would never end. The check in the
	// callback finds it; nothing is written, and the caller takes another connection.
	notQuiet := []struct {
		name string
		do   func(srv net.Conn)
	}{
		{"closed", func(srv net.Conn) { srv.Close() }},
		{"half-closed", func(srv net.Conn) { _ = srv.(*net.TCPConn).CloseWrite() }},
		{"stray bytes", func(srv net.Conn) { _, _ = srv.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) }},
	}
	for _, tc := range notQuiet {
		t.Run("fail/origin "+tc.name+" while idle: errNotQuiet, nothing written, no wait", func(t *testing.T) {
			c, srv := sendPair(t)
			tc.do(srv)
			got := make(chan int, 1)
			go func() {
				n, _ := io.Copy(io.Discard, srv) // the origin reads on, never answers
				got <- int(n)
			}()
			time.Sleep(20 * time.Millisecond) // the poller reports the edge before the Read
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			deferQuiet(c)
			sendOnRead(c, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
			if _, err := c.Read(make([]byte, 64)); !errors.Is(err, errNotQuiet) {
				t.Fatalf("Read error = %v; want errNotQuiet", err)
			}
			c.Close()
			if n := <-got; n != 0 {
				t.Fatalf("the origin got %d bytes; want none", n)
			}
			if len(c.out) != 0 || c.pending {
				t.Fatal("the request or the check stays pending after the Read")
			}
		})
	}

	t.Run("fail/a pending check is made by a plain Write too", func(t *testing.T) {
		c, srv := sendPair(t)
		_ = srv.(*net.TCPConn).CloseWrite()
		time.Sleep(20 * time.Millisecond)
		deferQuiet(c)
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\n\r\n")); !errors.Is(err, errNotQuiet) {
			t.Fatalf("Write error = %v; want errNotQuiet", err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, _ := srv.Read(make([]byte, 64)); n != 0 {
			t.Fatalf("the origin read %d bytes; want none", n)
		}
		// Checked once: a quiet connection is then written as usual.
		c2, srv2 := sendPair(t)
		deferQuiet(c2)
		if _, err := c2.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if n, err := srv2.Read(make([]byte, 8)); n != 1 || err != nil {
			t.Fatalf("origin read %d, %v", n, err)
		}
	})

	t.Run("fail/io.Copy in either direction makes the pending check too", func(t *testing.T) {
		c, srv := sendPair(t)
		_ = srv.(*net.TCPConn).CloseWrite()
		time.Sleep(20 * time.Millisecond)
		deferQuiet(c)
		if _, err := io.Copy(c, readerOnly{strings.NewReader("GET / HTTP/1.1\r\n\r\n")}); !errors.Is(err, errNotQuiet) {
			t.Fatalf("io.Copy to the connection: %v; want errNotQuiet", err)
		}
		c2, srv2 := sendPair(t)
		_, _ = srv2.Write([]byte("stray"))
		time.Sleep(20 * time.Millisecond)
		deferQuiet(c2)
		if _, err := io.Copy(io.Discard, c2); !errors.Is(err, errNotQuiet) {
			t.Fatalf("io.Copy from the connection: %v; want errNotQuiet", err)
		}
		// A request set by sendOnRead goes out through WriteTo as through Read.
		c3, srv3 := sendPair(t)
		go func() {
			b := make([]byte, 3)
			if _, err := io.ReadFull(srv3, b); err == nil && string(b) == "GET" {
				_, _ = srv3.Write([]byte("answer"))
			}
			srv3.Close()
		}()
		deferQuiet(c3)
		sendOnRead(c3, []byte("GET"))
		var got bytes.Buffer
		if _, err := io.Copy(&got, c3); err != nil || got.String() != "answer" {
			t.Fatalf("io.Copy from the connection = %q, %v", got.String(), err)
		}
	})

	t.Run("fail/the origin closed after the check: EOF or reset, for the retry", func(t *testing.T) {
		c, srv := sendPair(t)
		go func() {
			_, _ = srv.Read(make([]byte, 64))
			srv.Close()
		}()
		deferQuiet(c)
		sendOnRead(c, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
		_, err := c.Read(make([]byte, 64))
		if err == nil || !isClosedConn(err) {
			t.Fatalf("Read error = %v; want one isClosedConn recognises", err)
		}
	})

	t.Run("fail/a deadline already past: nothing is written", func(t *testing.T) {
		c, srv := sendPair(t)
		_ = c.SetDeadline(aLongTimeAgo)
		deferQuiet(c)
		sendOnRead(c, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
		if _, err := c.Read(make([]byte, 64)); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, errNotQuiet) {
			t.Fatalf("Read error = %v; want the deadline, as errNotQuiet (nothing was sent)", err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, err := srv.Read(make([]byte, 64)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the origin read %d bytes (%v); want none", n, err)
		}
		if len(c.out) != 0 {
			t.Fatal("the request stays pending after the Read")
		}
	})

	t.Run("fail/a deadline set while waiting ends the wait", func(t *testing.T) {
		c, srv := sendPair(t)
		go func() {
			_, _ = srv.Read(make([]byte, 64)) // never answers
		}()
		time.AfterFunc(30*time.Millisecond, func() { _ = c.SetDeadline(aLongTimeAgo) })
		deferQuiet(c)
		sendOnRead(c, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
		start := time.Now()
		if _, err := c.Read(make([]byte, 64)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read error = %v; want the deadline", err)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the wait outlived its deadline")
		}
	})

	t.Run("fail/not a TCP connection", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if newSendConn(a) != a {
			t.Fatal("newSendConn wrapped a pipe")
		}
		if deferQuiet(a) || sendOnRead(a, []byte("x")) {
			t.Fatal("sendOnRead accepted a pipe")
		}
	})
}
