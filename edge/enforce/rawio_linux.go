//go:build linux

package enforce

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Socket I/O on the request path without the runtime's system-call bookkeeping.
//
// syscall.Read and syscall.Write tell the runtime that a system call is under way
// (entersyscall). When one lasts longer than a tick of the runtime's monitor thread (sysmon:
// 20 µs, doubling while it finds nothing to do), sysmon hands the goroutine's P to another
// thread, so that the P's other goroutines are not held up by a call that may block. The edge's
// sockets never block (the net package makes them non-blocking; a call that would block returns
// EAGAIN), but a loopback send does the receiver's TCP work inline, and on a shared vCPU the
// thread can be descheduled in the middle of a call. Under keep-alive load that made sysmon
// hand Ps over (each hand-off wakes a thread with a futex) and keep itself at its shortest
// interval, thousands of wake-ups a second, for calls that were never going to block.
//
// rawRead, rawWrite and recvPeek make the call with syscall.RawSyscall: the goroutine keeps its
// P through the call, as through any other short computation. They are recv(2) and send(2)
// with MSG_DONTWAIT, so that no call waits for the socket whatever its mode, and they copy at
// most maxRawIO bytes a call with RawSyscall; a larger buffer keeps the runtime's bookkeeping
// (the copy itself could take long). A call can still sleep briefly in the kernel (a page
// fault on the buffer, the socket's lock), holding the P for that time.
//
// GUESTLIST_EDGE_SYSCALLS=runtime in the edge's environment turns this off: every call then
// goes through syscall.Read, syscall.Write and syscall.Recvfrom as before (for comparison, and
// as a way back without a rebuild).

// maxRawIO is the most bytes a RawSyscall read or write is given.
const maxRawIO = 64 << 10

// rawIO is false when GUESTLIST_EDGE_SYSCALLS=runtime. It is atomic so that tests can switch
// it while servers of earlier tests still wind down.
var rawIO atomic.Bool

func init() { rawIO.Store(os.Getenv("GUESTLIST_EDGE_SYSCALLS") != "runtime") }

// rawRead reads from the socket fd without waiting: recv(2) with MSG_DONTWAIT, which returns
// EAGAIN when nothing is readable even if the socket was switched to blocking mode (a File
// taken of the connection does that), so that a RawSyscall never sleeps on an empty socket.
func rawRead(fd int, p []byte) (int, error) {
	if !rawIO.Load() || len(p) == 0 || len(p) > maxRawIO {
		return syscall.Read(fd, p)
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return -1, e
	}
	raceWritten(p, int(n))
	return int(n), nil
}

// rawWrite writes to the socket fd without waiting: send(2) with MSG_DONTWAIT (EAGAIN when the
// socket has no room, whatever its mode) and MSG_NOSIGNAL (a peer that reset the connection is
// EPIPE, without a SIGPIPE for the runtime to field).
func rawWrite(fd int, p []byte) (int, error) {
	if !rawIO.Load() || len(p) == 0 || len(p) > maxRawIO {
		return syscall.Write(fd, p)
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return -1, e
	}
	raceRead(p, int(n))
	return int(n), nil
}

// recvPeek is recv(2) of len(buf) ≥ 1 bytes with MSG_PEEK|MSG_DONTWAIT on the socket fd: what is
// readable stays readable. It returns the bytes seen (0 at the peer's FIN) or the error.
func recvPeek(fd int, buf []byte) (int, error) {
	if !rawIO.Load() {
		n, _, err := syscall.Recvfrom(fd, buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return n, err
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return -1, e
	}
	raceWritten(buf, int(n))
	return int(n), nil
}

// rawTCPConn is a TCP connection whose Read and Write go through its RawConn with rawRead and
// rawWrite: the same wait in the runtime's poller when the socket has nothing (or no room), the
// same deadlines, without the runtime's bookkeeping around each call. Everything else
// (deadlines, Close, addresses) is the *net.TCPConn's.
//
// A Read and a Write may run at once (the state of each is its own); concurrent Reads (Writes)
// take turns, as on a *net.TCPConn.
type rawTCPConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// Read's state; rcb is made once so that a Read allocates nothing. rmu and wmu keep the
	// state of concurrent Reads (Writes) apart, as net.Conn allows them.
	rmu  sync.Mutex
	rp   []byte
	rn   int
	rerr error
	rcb  func(fd uintptr) bool

	// Write's state.
	wmu  sync.Mutex
	wp   []byte
	wn   int
	werr error
	wcb  func(fd uintptr) bool
}

// newRawTCPConn returns tc's rawTCPConn, or nil when tc has no RawConn or rawIO is off.
func newRawTCPConn(tc *net.TCPConn) *rawTCPConn {
	if !rawIO.Load() {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	c := &rawTCPConn{TCPConn: tc, rc: rc}
	c.rcb = c.readStep
	c.wcb = c.writeStep
	return c
}

// newClientConn returns a client's accepted connection as the edge reads and writes it: a
// rawTCPConn for a TCP connection, conn itself otherwise.
func newClientConn(conn net.Conn) net.Conn {
	if tc, ok := conn.(*net.TCPConn); ok {
		if c := newRawTCPConn(tc); c != nil {
			return c
		}
	}
	return conn
}

// Read reads into p, waiting in the poller while nothing is readable.
func (c *rawTCPConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rp, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.rcb)
	c.rp = nil
	if err != nil {
		return 0, asTCPError(err, "read")
	}
	return c.rn, c.rerr
}

// readStep is Read's RawConn callback.
func (c *rawTCPConn) readStep(fd uintptr) bool {
	n, ok, err := readNow(c.TCPConn, int(fd), c.rp)
	if !ok {
		return false
	}
	c.rn, c.rerr = n, err
	return true
}

// Write writes all of p, waiting in the poller while the socket has no room.
func (c *rawTCPConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wp, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.wcb)
	c.wp = nil
	if err != nil {
		return c.wn, asTCPError(err, "write")
	}
	return c.wn, c.werr
}

// asTCPError returns an error of the RawConn's wait (a deadline, a close) as a *net.TCPConn's
// Read or Write returns it: a *net.OpError of op, not "raw-read" or "raw-write". net/http keys
// on that (isCommonNetReadError: a read error with Op "read" is a client gone away, not a bad
// request), and so do logs.
func asTCPError(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok && (oe.Op == "raw-read" || oe.Op == "raw-write") {
		oe.Op = op // the RawConn made it for this call
	}
	return err
}

// writeStep is Write's RawConn callback.
func (c *rawTCPConn) writeStep(fd uintptr) bool {
	n, full, err := writeNow(c.TCPConn, int(fd), c.wp)
	c.wn += n
	c.wp = c.wp[n:]
	if err != nil {
		c.werr = err
		return true
	}
	return !full
}

// readNow reads once from the socket fd into p (len(p) > 0), retrying EINTR. It reports ok false
// when nothing was readable: the caller waits and calls again. Otherwise n bytes were read, or
// err says why none were: io.EOF at the peer's FIN, or the call's error as conn's *net.OpError.
func readNow(conn net.Conn, fd int, p []byte) (n int, ok bool, err error) {
	for {
		n, err := rawRead(fd, p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, false, nil
		case err != nil:
			return 0, true, socketError(conn, "read", err)
		case n == 0:
			return 0, true, io.EOF
		}
		return n, true, nil
	}
}

// writeNow writes p to the socket fd until all of it is written or the socket has no room
// (full: the rest waits for room), retrying EINTR. It returns the bytes written, and the call's
// error as conn's *net.OpError if one failed.
func writeNow(conn net.Conn, fd int, p []byte) (n int, full bool, err error) {
	for n < len(p) {
		m, err := rawWrite(fd, p[n:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return n, true, nil
		case err != nil:
			return n, false, socketError(conn, "write", err)
		case m == 0: // as internal/poll: a write that took nothing and said nothing
			return n, false, socketError(conn, "write", io.ErrUnexpectedEOF)
		}
		n += m
	}
	return n, false, nil
}

// socketError is the error of a failed call on conn's socket, as the net package reports one.
func socketError(conn net.Conn, op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: conn.LocalAddr(), Addr: conn.RemoteAddr(), Err: os.NewSyscallError(op, err)}
}
