//go:build linux

package enforce

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestRawTCPConn runs a rawTCPConn's Read and Write against a real loopback peer, with the raw
// system calls (the default) and with the runtime's (GUESTLIST_EDGE_SYSCALLS=runtime).
func TestRawTCPConn(t *testing.T) {
	for _, raw := range []bool{true, false} {
		name := "raw"
		if !raw {
			name = "runtime"
		}
		t.Run(name, func(t *testing.T) {
			saved := rawIO
			rawIO = raw
			t.Cleanup(func() { rawIO = saved })
			testRawTCPConn(t)
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
	if _, ok := c.(*rawTCPConn); ok != rawIO {
		t.Fatalf("newClientConn returned %T with rawIO %v", c, rawIO)
	}
	return peer, c
}

func testRawTCPConn(t *testing.T) {
	t.Run("ok/both directions, sizes around maxRawIO and over the socket buffer", func(t *testing.T) {
		peer, c := rawPair(t)
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
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past its deadline = %v; want os.ErrDeadlineExceeded", err)
		}
		_, err = c.Read(make([]byte, 8))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read with its deadline past = %v; want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("fail/write deadline: a Write blocked on a full socket ends", func(t *testing.T) {
		_, c := rawPair(t) // the peer never reads
		_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := c.Write(make([]byte, 64<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write into a full socket = %d, %v; want os.ErrDeadlineExceeded", n, err)
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
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed connection = %v; want net.ErrClosed", err)
		}
	})
}

// TestRecvPeek: the quiet check's peek sees bytes and the FIN without consuming them, and
// finds nothing on a quiet socket.
func TestRecvPeek(t *testing.T) {
	for _, raw := range []bool{true, false} {
		saved := rawIO
		rawIO = raw
		func() {
			defer func() { rawIO = saved }()
			peer, c := tcpPair(t)
			defer peer.Close()
			defer c.Close()
			fd := rawFD(t, c)
			buf := make([]byte, 1)
			if n, err := recvPeek(fd, buf); err != syscall.EAGAIN {
				t.Fatalf("rawIO %v: quiet socket: recvPeek = %d, %v; want EAGAIN", raw, n, err)
			}
			_, _ = peer.Write([]byte("ab"))
			waitReadable(t, fd)
			for range 2 { // a peek does not consume
				if n, err := recvPeek(fd, buf); n != 1 || err != nil || buf[0] != 'a' {
					t.Fatalf("rawIO %v: recvPeek = %d %q, %v; want 1 'a'", raw, n, buf[:max(n, 0)], err)
				}
			}
			got := make([]byte, 2)
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "ab" {
				t.Fatalf("rawIO %v: read after peeks = %q, %v", raw, got, err)
			}
			peer.Close()
			waitReadable(t, fd)
			if n, err := recvPeek(fd, buf); n != 0 || err != nil {
				t.Fatalf("rawIO %v: after the peer's FIN: recvPeek = %d, %v; want 0, nil", raw, n, err)
			}
		}()
	}
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
