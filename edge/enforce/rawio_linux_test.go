//go:build linux

package enforce

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestRawTCPConn runs a rawTCPConn's Read and Write against a real loopback peer, with the raw
// system calls (the default) and with the runtime's (GUESTLIST_EDGE_SYSCALLS=runtime).
func TestRawTCPConn(t *testing.T) { inSyscallModes(t, testRawTCPConn) }

// inSyscallModes runs test twice: as "raw" with the raw system calls (the default) and as
// "runtime" with the runtime's (GUESTLIST_EDGE_SYSCALLS=runtime). It sets the package's rawIO,
// so it must not run in parallel with other tests.
func inSyscallModes(t *testing.T, test func(t *testing.T)) {
	for _, raw := range []bool{true, false} {
		name := "raw"
		if !raw {
			name = "runtime"
		}
		t.Run(name, func(t *testing.T) {
			saved := rawIO.Load()
			rawIO.Store(raw)
			t.Cleanup(func() { rawIO.Store(saved) })
			test(t)
		})
	}
}

// rawPair returns a loopback pair whose accepted end is a rawTCPConn, as the edge wraps a
// client's connection.
func rawPair(t *testing.T) (peer net.Conn, c net.Conn) {
	t.Helper()
	peer, accepted := tcpPair(t)
	t.Cleanup(func() { peer.Close(); accepted.Close() })
	c = newClientConn(accepted)
	if _, ok := c.(*rawTCPConn); ok != rawIO.Load() {
		t.Fatalf("newClientConn returned %T with rawIO %v", c, rawIO.Load())
	}
	return peer, c
}

func testRawTCPConn(t *testing.T) {
	t.Run("ok/both directions, sizes around maxRawIO and over the socket buffer", func(t *testing.T) {
		peer, c := rawPair(t)
		// A lost byte fails the test instead of hanging it.
		_ = peer.SetDeadline(time.Now().Add(20 * time.Second))
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		for _, size := range []int{1, 1500, maxRawIO, maxRawIO + 1, 8 << 20} {
			msg := make([]byte, size)
			_, _ = rand.Read(msg)
			// c -> peer: a Write larger than the socket buffers waits for room and completes.
			errc := make(chan error, 1)
			go func() {
				n, err := c.Write(msg)
				if err == nil && n != len(msg) {
					err = io.ErrShortWrite
				}
				errc <- err
			}()
			got := make([]byte, size)
			if _, err := io.ReadFull(peer, got); err != nil {
				t.Fatalf("%d bytes: peer read: %v", size, err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("%d bytes: Write: %v", size, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("%d bytes: the peer read other bytes than were written", size)
			}
			// peer -> c, read with a buffer of the message's size.
			go func() { _, err := peer.Write(msg); errc <- err }()
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("%d bytes: Read: %v", size, err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("%d bytes: peer write: %v", size, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("%d bytes: Read returned other bytes than the peer wrote", size)
			}
		}
	})
	t.Run("ok/a Read waits for bytes that come later", func(t *testing.T) {
		peer, c := rawPair(t)
		go func() {
			time.Sleep(20 * time.Millisecond)
			_, _ = peer.Write([]byte("late"))
		}()
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "late" {
			t.Fatalf("Read = %q, %v; want \"late\"", buf[:n], err)
		}
	})
	t.Run("ok/a Read of nothing returns at once", func(t *testing.T) {
		_, c := rawPair(t)
		if n, err := c.Read(nil); n != 0 || err != nil {
			t.Fatalf("Read(nil) = %d, %v; want 0, nil", n, err)
		}
	})
	t.Run("fail/the peer closed: EOF", func(t *testing.T) {
		peer, c := rawPair(t)
		_, _ = peer.Write([]byte("last"))
		peer.Close()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "last" {
			t.Fatalf("ReadAll = %q, %v; want \"last\" then EOF", got, err)
		}
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
		}
	})
	t.Run("fail/the peer reset: a read error naming the call", func(t *testing.T) {
		peer, c := rawPair(t)
		_ = peer.(*net.TCPConn).SetLinger(0) // close sends RST
		peer.Close()
		_, err := c.Read(make([]byte, 8))
		var op *net.OpError
		if !errors.As(err, &op) || op.Op != "read" || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Read = %v; want a read *net.OpError with ECONNRESET", err)
		}
		// Writing to the reset connection fails too, and says so.
		_, err = c.Write([]byte("x"))
		if !errors.As(err, &op) || op.Op != "write" || !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Write after reset = %v; want a write *net.OpError with EPIPE", err)
		}
	})
	t.Run("fail/read deadline: a timeout, while waiting and when already past", func(t *testing.T) {
		_, c := rawPair(t)
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
		_, err := c.Read(make([]byte, 8))
		if !errors.Is(err, os.ErrDeadlineExceeded) || !isOp(err, "read") {
			t.Fatalf("Read past its deadline = %v; want a read *net.OpError with os.ErrDeadlineExceeded", err)
		}
		_, err = c.Read(make([]byte, 8))
		if !errors.Is(err, os.ErrDeadlineExceeded) || !isOp(err, "read") {
			t.Fatalf("Read with its deadline past = %v; want a read *net.OpError with os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("fail/write deadline: a Write blocked on a full socket ends", func(t *testing.T) {
		_, c := rawPair(t) // the peer never reads
		// The buffer is made before the deadline is set, and the deadline leaves time for the
		// first write to start even on a loaded machine (under -race, making 64 MiB alone took
		// more than 50 ms): a Write that starts past its deadline rightly writes nothing.
		buf := make([]byte, 64<<20)
		_ = c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Write(buf)
		if !errors.Is(err, os.ErrDeadlineExceeded) || !isOp(err, "write") {
			t.Fatalf("Write into a full socket = %d, %v; want a write *net.OpError with os.ErrDeadlineExceeded", n, err)
		}
		if n <= 0 || n >= 64<<20 {
			t.Fatalf("Write reported %d bytes written; want the part the socket took", n)
		}
	})
	t.Run("fail/closed: a waiting Read ends with net.ErrClosed", func(t *testing.T) {
		_, c := rawPair(t)
		go func() {
			time.Sleep(20 * time.Millisecond)
			c.Close()
		}()
		_, err := c.Read(make([]byte, 8))
		if !errors.Is(err, net.ErrClosed) || !isOp(err, "read") {
			t.Fatalf("Read on a closed connection = %v; want a read *net.OpError with net.ErrClosed", err)
		}
		_, err = c.Write([]byte("x"))
		if !errors.Is(err, net.ErrClosed) || !isOp(err, "write") {
			t.Fatalf("Write on a closed connection = %v; want a write *net.OpError with net.ErrClosed", err)
		}
	})
	t.Run("ok/concurrent Reads and concurrent Writes each get their own bytes", func(t *testing.T) {
		// net.Conn allows concurrent calls; a rawTCPConn keeps each call's state apart (with
		// -race, state shared between two calls is also reported as a race).
		peer, c := rawPair(t)
		const workers, chunk, rounds = 4, 1000, 200
		total := workers * chunk * rounds
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		_ = peer.SetDeadline(time.Now().Add(20 * time.Second))
		// Writes: each worker writes chunks of its own byte value; the peer counts the values.
		werrs := make(chan error, workers)
		for w := range workers {
			go func() {
				b := bytes.Repeat([]byte{byte('a' + w)}, chunk)
				for range rounds {
					if n, err := c.Write(b); err != nil || n != chunk {
						werrs <- fmt.Errorf("worker %d: Write = %d, %v", w, n, err)
						return
					}
				}
				werrs <- nil
			}()
		}
		got := make([]byte, total)
		if _, err := io.ReadFull(peer, got); err != nil {
			t.Fatalf("peer read: %v", err)
		}
		for range workers {
			if err := <-werrs; err != nil {
				t.Fatal(err)
			}
		}
		for w := range workers {
			if n := bytes.Count(got, []byte{byte('a' + w)}); n != chunk*rounds {
				t.Fatalf("the peer got %d bytes of worker %d; want %d", n, w, chunk*rounds)
			}
		}
		// Reads: the peer writes a pattern; concurrent Reads must together return each byte
		// exactly once.
		msg := make([]byte, total)
		for i := range msg {
			msg[i] = byte(i % 251)
		}
		go func() { _, _ = peer.Write(msg) }()
		var sum [251]atomic.Int64
		var read atomic.Int64
		rerrs := make(chan error, workers)
		for range workers {
			go func() {
				buf := make([]byte, 777)
				for read.Load() < int64(total) {
					n, err := c.Read(buf)
					if err != nil {
						if read.Load() >= int64(total) {
							break
						}
						rerrs <- err
						return
					}
					for _, b := range buf[:n] {
						sum[b].Add(1)
					}
					if read.Add(int64(n)) >= int64(total) {
						_ = c.SetReadDeadline(time.Now()) // wake the other readers
					}
				}
				rerrs <- nil
			}()
		}
		for range workers {
			if err := <-rerrs; err != nil {
				t.Fatalf("Read: %v", err)
			}
		}
		if n := read.Load(); n != int64(total) {
			t.Fatalf("the Reads returned %d bytes in all; want %d", n, total)
		}
		for v := range sum {
			want := int64(total / 251)
			if v < total%251 {
				want++
			}
			if got := sum[v].Load(); got != want {
				t.Fatalf("byte value %d was read %d times; want %d", v, got, want)
			}
		}
	})
	t.Run("fail/a socket switched to blocking mode: a Read still waits in the poller and times out", func(t *testing.T) {
		// os.File.Fd puts the socket's shared file description into blocking mode. A raw read
		// without MSG_DONTWAIT would then sleep in the kernel, holding its P, past any deadline.
		if !rawIO.Load() {
			t.Skip("a *net.TCPConn's deadlines stop working once its File's Fd was taken (os.File.Fd's documentation)")
		}
		peer, c := rawPair(t)
		f, err := c.(interface{ File() (*os.File, error) }).File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_ = f.Fd() // blocking mode from here on
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		done := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 8))
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read = %v; want os.ErrDeadlineExceeded", err)
			}
		case <-time.After(10 * time.Second):
			peer.Close() // let the stuck read(2) return
			t.Fatal("Read on an empty socket in blocking mode did not return within 10 s (its deadline was 50 ms)")
		}
		// And a write with room goes through as before.
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatalf("Write = %v", err)
		}
	})
}

// isOp reports whether err is a *net.OpError (itself, not wrapped: net/http's
// isCommonNetReadError asserts the type) of the operation op, as a *net.TCPConn returns.
func isOp(err error, op string) bool {
	oe, ok := err.(*net.OpError)
	return ok && oe.Op == op
}

// TestRecvPeek: the quiet check's peek sees bytes and the FIN without consuming them, and
// finds nothing on a quiet socket.
func TestRecvPeek(t *testing.T) {
	inSyscallModes(t, func(t *testing.T) {
		peer, c := tcpPair(t)
		defer peer.Close()
		defer c.Close()
		fd := rawFD(t, c)
		buf := make([]byte, 1)
		if n, err := recvPeek(fd, buf); err != syscall.EAGAIN {
			t.Fatalf("quiet socket: recvPeek = %d, %v; want EAGAIN", n, err)
		}
		_, _ = peer.Write([]byte("ab"))
		waitReadable(t, fd)
		for range 2 { // a peek does not consume
			if n, err := recvPeek(fd, buf); n != 1 || err != nil || buf[0] != 'a' {
				t.Fatalf("recvPeek = %d %q, %v; want 1 'a'", n, buf[:max(n, 0)], err)
			}
		}
		got := make([]byte, 2)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "ab" {
			t.Fatalf("read after peeks = %q, %v", got, err)
		}
		peer.Close()
		waitReadable(t, fd)
		if n, err := recvPeek(fd, buf); n != 0 || err != nil {
			t.Fatalf("after the peer's FIN: recvPeek = %d, %v; want 0, nil", n, err)
		}
	})
}

// rawFD returns the file descriptor of a TCP connection (valid while conn is open).
func rawFD(t *testing.T, conn net.Conn) int {
	t.Helper()
	rc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// waitReadable waits (ppoll(2), up to 10 s) until fd is readable.
func waitReadable(t *testing.T, fd int) {
	t.Helper()
	type pollFd struct {
		fd             int32
		events, revent int16
	}
	p := pollFd{fd: int32(fd), events: 0x1} // POLLIN
	for {
		ts := syscall.Timespec{Sec: 10}
		_, _, e := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&p)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 || p.revent == 0 {
			t.Fatalf("fd %d not readable within 10 s: %v", fd, e)
		}
		return
	}
}

// TestRawTCPConnHTTP serves HTTP/2 and HTTP/1.1 over TLS over rawTCPConns, as the edge does
// (serveConn wraps the accepted connection before tls.Server): concurrent streams whose bodies
// are larger than the socket buffers (a Read and a Write at once on one connection, Writes that
// wait for room), and the server's timeouts through the wrapper's deadlines.
func TestRawTCPConnHTTP(t *testing.T) { inSyscallModes(t, testRawTCPConnHTTP) }

// clientConnListener wraps each accepted connection with newClientConn, as serveConn does, and
// counts the rawTCPConns. Its send buffers are small, so that Writes often find no room and wait
// in the poller.
type clientConnListener struct {
	net.Listener
	raw atomic.Int32
}

func (l *clientConnListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(16 << 10) // the kernel doubles it: two TLS records
	}
	c = newClientConn(c)
	if _, ok := c.(*rawTCPConn); ok {
		l.raw.Add(1)
	}
	return c, nil
}

// rawHTTPServer starts a TLS server (HTTP/2 offered) on a clientConnListener; the handler echoes
// the request body.
func rawHTTPServer(t *testing.T, configure func(*http.Server)) (*httptest.Server, *clientConnListener) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	ln := &clientConnListener{Listener: srv.Listener}
	srv.Listener = ln
	srv.EnableHTTP2 = true
	if configure != nil {
		configure(srv.Config)
	}
	srv.StartTLS()
	t.Cleanup(func() {
		srv.CloseClientConnections() // a failed test may leave handlers waiting on their connection
		srv.Close()
	})
	return srv, ln
}

func testRawTCPConnHTTP(t *testing.T) {
	for _, proto := range []string{"h2", "http/1.1"} {
		t.Run("ok/"+proto+": concurrent requests, bodies over the socket buffers both ways", func(t *testing.T) {
			srv, ln := rawHTTPServer(t, nil)
			tr := srv.Client().Transport.(*http.Transport).Clone()
			tr.ForceAttemptHTTP2 = proto == "h2"
			if proto != "h2" {
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
			const streams, size = 8, 2 << 20
			errc := make(chan error, streams)
			for i := range streams {
				go func() {
					msg := make([]byte, size+i)
					_, _ = rand.Read(msg)
					resp, err := client.Post(srv.URL, "application/octet-stream", bytes.NewReader(msg))
					if err != nil {
						errc <- err
						return
					}
					defer resp.Body.Close()
					got, err := io.ReadAll(resp.Body)
					switch {
					case err != nil:
						errc <- err
					case resp.StatusCode != http.StatusOK || resp.Proto != map[string]string{"h2": "HTTP/2.0", "http/1.1": "HTTP/1.1"}[proto]:
						errc <- fmt.Errorf("%s %s", resp.Proto, resp.Status)
					case !bytes.Equal(got, msg):
						errc <- fmt.Errorf("%d bytes echoed as %d other bytes", len(msg), len(got))
					default:
						errc <- nil
					}
				}()
			}
			for range streams {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
			if got := ln.raw.Load() > 0; got != rawIO.Load() {
				t.Fatalf("connections served over a rawTCPConn: %v, want %v", got, rawIO.Load())
			}
		})
	}
	t.Run("fail/http/1.1: a client that stops in the middle of its head is cut off at ReadHeaderTimeout", func(t *testing.T) {
		srv, _ := rawHTTPServer(t, func(s *http.Server) {
			s.ReadHeaderTimeout = 100 * time.Millisecond
			s.ErrorLog = log.New(io.Discard, "", 0)
		})
		conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(conn)
		// The server closes without an answer (a timeout is a client gone away, not a bad request).
		if len(got) != 0 || err != nil && !isClosedConn(err) {
			t.Fatalf("after the timeout: read %q, %v; want the connection closed without an answer", got, err)
		}
	})
	t.Run("fail/h2: an idle connection is closed at IdleTimeout", func(t *testing.T) {
		srv, _ := rawHTTPServer(t, func(s *http.Server) { s.IdleTimeout = 100 * time.Millisecond })
		conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("ALPN %q", p)
		}
		if _, err := io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		_, err = io.Copy(io.Discard, conn) // SETTINGS, its ACK, then GOAWAY and the close
		if err != nil && !isClosedConn(err) {
			t.Fatalf("reading until the server closed: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the idle connection was closed after %v", d)
		}
	})
}
