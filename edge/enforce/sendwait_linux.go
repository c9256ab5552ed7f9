//go:build linux

package enforce

import (
	"io"
	"net"
	"os"
	"syscall"
)

// sendConn is a plain-TCP origin connection that can write a request inside the read that waits
// for its response, saving the read that would find nothing.
//
// Go's net package reads before it waits: a Read after a write tries read(2) first, which finds
// the origin's answer not there yet (EAGAIN), and only then parks until the poller reports the
// socket readable. A RawConn read callback runs after the runtime has cleared the socket's
// readiness and before it waits. Writing the request there makes the wait safe to do first: the
// answer can only arrive after the request, so its arrival is an edge the poller reports to this
// wait, and the callback reads once, when there is something to read.
//
// That reasoning holds only for bytes that follow the request, which is why this is done on the
// origin side only (a client may pipeline its next request before our answer; its bytes could be
// in the socket with their edge already consumed). Bytes an origin sent before the request are
// what quiet refuses when the connection leaves the pool; ones that slip in between quiet and the
// request are read together with the answer when it arrives, as without this.
type sendConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The request to write before the next read waits, set by sendOnRead.
	out []byte

	// The callback's state for one Read: cb is made once so that a Read allocates nothing.
	p    []byte
	n    int
	err  error
	sent bool
	cb   func(fd uintptr) bool

	reads int // read(2) calls made by step, for tests
}

// newSendConn returns conn wrapped for sendOnRead, or conn itself when it is not a TCP
// connection with a RawConn.
func newSendConn(conn net.Conn) net.Conn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return conn
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return conn
	}
	c := &sendConn{TCPConn: tc, rc: rc}
	c.cb = c.step
	return c
}

// sendOnRead arranges for b to be written by conn's next Read, before it waits for the answer.
// It reports false, doing nothing, when conn cannot do that; then the caller writes b itself. b
// must stay unchanged until that Read returns.
func sendOnRead(conn net.Conn, b []byte) bool {
	c, ok := conn.(*sendConn)
	if !ok || len(b) == 0 {
		return false
	}
	c.out = b
	return true
}

// Read writes the request set by sendOnRead, if any, then waits for the answer and reads it. An
// error while writing is returned as the Read's error (the caller sees a connection the origin
// closed or reset, as it would on the read).
func (c *sendConn) Read(p []byte) (int, error) {
	if len(c.out) == 0 || len(p) == 0 {
		return c.TCPConn.Read(p)
	}
	c.p, c.n, c.err, c.sent = p, 0, nil, false
	err := c.rc.Read(c.cb)
	c.out, c.p = nil, nil
	if err != nil {
		// The wait failed (deadline, close). If that was before the request went out, it never
		// will: the exchange fails with this error and the connection is closed.
		return 0, err
	}
	return c.n, c.err
}

// step is the RawConn callback: write the request once, then read until something came.
func (c *sendConn) step(fd uintptr) bool {
	if !c.sent {
		c.sent = true
		if err := c.writeOut(int(fd)); err != nil {
			c.err = err
			return true
		}
		return false // nothing to read yet: wait for the answer
	}
	for {
		c.reads++
		n, err := syscall.Read(int(fd), c.p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			c.err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", err)}
		case n == 0:
			c.err = io.EOF
		default:
			c.n = n
		}
		return true
	}
}

// writeOut writes c.out: directly while the socket takes it, the rest (a full send buffer)
// through the connection's blocking Write, which honours the write deadline.
func (c *sendConn) writeOut(fd int) error {
	b := c.out
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			_, err := c.TCPConn.Write(b)
			return err
		case err != nil:
			return &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", err)}
		}
		b = b[n:]
	}
	return nil
}
