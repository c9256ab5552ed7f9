//go:build linux

package enforce

import (
	"fmt"
	"io"
	"net"
	"syscall"
)

// sendConn is a plain-TCP origin connection that can write a request inside the read that waits
// for its response, saving the read that would find nothing.
//
// Go's net package reads before it waits: a Read after a write tries read(2) first, which finds
// the origin's answer not there yet (EAGAIN), and only then parks until the poller reports the
// socket readable. A RawConn read callback runs after the runtime has cleared the socket's
// readiness and before it waits. Writing the request there makes the wait safe to do first only
// for what arrives after that clearing: an edge the poller reported before it (bytes, or the FIN
// of an origin that closed its idle connection) is gone, and a wait for an answer that such an
// origin never sends (a half-close, a relay that propagates one) would not end.
//
// So the socket is checked in the same callback, after the clearing and before the write: the
// pool's quiet check of a reused connection is left to it (deferQuiet), one MSG_PEEK as before.
// A connection found not quiet fails with errNotQuiet, nothing written, and the caller takes
// another, as the pool would have. Whatever arrives after the check is an edge the wait sees.
// A new connection has no such check and its request is written the ordinary way; so is the
// client side's (a pipelining client's bytes could be in the socket with their edge consumed).
type sendConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// rw reads and writes outside sendOnRead's Read: the rawTCPConn (rawio_linux.go), or the
	// TCPConn itself when rawIO is off.
	rw net.Conn

	// The request to write before the next read waits, set by sendOnRead.
	out []byte

	// pending: the pool handed the connection out without its quiet check (deferQuiet). The
	// next Read or Write makes it first; sendOnRead's Read makes it in its callback.
	pending bool
	peekBuf [1]byte
	quietOK bool
	qcb     func(fd uintptr) bool

	// The callback's state for one Read: cb is made once so that a Read allocates nothing.
	p    []byte
	n    int
	err  error
	sent bool
	cb   func(fd uintptr) bool

	reads int // readNow calls made by step, for tests
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
	c := &sendConn{TCPConn: tc, rc: rc, rw: tc}
	if raw := newRawTCPConn(tc); raw != nil {
		c.rw = raw
	}
	c.cb = c.step
	c.qcb = func(fd uintptr) bool {
		c.quietOK = peekQuiet(int(fd), c.peekBuf[:])
		return true
	}
	return c
}

// deferQuiet leaves the quiet check of a pooled connection to its next Read or Write (see
// sendConn); it reports false, doing nothing, when conn cannot do that.
func deferQuiet(conn net.Conn) bool {
	c, ok := conn.(*sendConn)
	if !ok {
		return false
	}
	c.pending = true
	return true
}

// checkQuiet makes the pending quiet check outside a sendOnRead Read.
func (c *sendConn) checkQuiet() error {
	c.pending, c.quietOK = false, false
	if err := c.rc.Read(c.qcb); err != nil || !c.quietOK {
		return errNotQuiet
	}
	return nil
}

// Write writes b, after the pending quiet check.
func (c *sendConn) Write(b []byte) (int, error) {
	if c.pending {
		if err := c.checkQuiet(); err != nil {
			return 0, err
		}
	}
	return c.rw.Write(b)
}

// ReadFrom is Write's path for io.Copy (a bufio.Writer with an empty buffer hands its source to
// it): the pending quiet check first.
func (c *sendConn) ReadFrom(r io.Reader) (int64, error) {
	if c.pending {
		if err := c.checkQuiet(); err != nil {
			return 0, err
		}
	}
	return c.TCPConn.ReadFrom(r)
}

// WriteTo is Read's path for io.Copy (a bufio.Reader hands its destination to it once its
// buffer is drained): the pending quiet check first; a request set by sendOnRead goes through
// Read, which writes it.
func (c *sendConn) WriteTo(w io.Writer) (int64, error) {
	if len(c.out) > 0 {
		return io.Copy(w, readerOnly{c})
	}
	if c.pending {
		if err := c.checkQuiet(); err != nil {
			return 0, err
		}
	}
	return c.TCPConn.WriteTo(w)
}

// readerOnly hides every method of r but Read (io.Copy would otherwise call WriteTo again).
type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

// sendOnRead arranges for b to be written by conn's next Read, before it waits for the answer.
// It reports false, doing nothing, when conn cannot do that (not a sendConn, or no quiet check
// left to the Read: a new connection); then the caller writes b itself. b must stay unchanged
// until that Read returns.
func sendOnRead(conn net.Conn, b []byte) bool {
	c, ok := conn.(*sendConn)
	if !ok || !c.pending || len(b) == 0 {
		return false
	}
	c.out = b
	return true
}

// Read checks the socket and writes the request set by sendOnRead, if any, then waits for the
// answer and reads it. A socket found not quiet is errNotQuiet, nothing written. An error while
// writing is returned as the Read's error (the caller sees a connection the origin closed or
// reset, as it would on the read).
func (c *sendConn) Read(p []byte) (int, error) {
	if len(c.out) == 0 || len(p) == 0 {
		if c.pending {
			if err := c.checkQuiet(); err != nil {
				return 0, err
			}
		}
		return c.rw.Read(p)
	}
	c.p, c.n, c.err, c.sent = p, 0, nil, false
	c.pending = false
	err := c.rc.Read(c.cb)
	c.out, c.p = nil, nil
	if err != nil {
		if !c.sent {
			// The callback never ran (a deadline already past, a poller error): nothing went
			// out, and the connection failed its quiet check as it would have in the pool.
			return 0, fmt.Errorf("%w (%w)", errNotQuiet, err)
		}
		// The wait failed (deadline, close) after the request went out.
		return 0, err
	}
	return c.n, c.err
}

// step is the RawConn callback: check the socket and write the request once, then read until
// something came.
func (c *sendConn) step(fd uintptr) bool {
	if !c.sent {
		c.sent = true
		// After the runtime cleared the readiness: whatever arrives from here on is an edge the
		// wait sees; what arrived before is found now. (The write follows at once: bytes an
		// origin sends in between wake the wait and are read, as without this.)
		if !peekQuiet(int(fd), c.peekBuf[:]) {
			c.err = errNotQuiet
			return true
		}
		if err := c.writeOut(int(fd)); err != nil {
			c.err = err
			return true
		}
		return false // nothing to read yet: wait for the answer
	}
	c.reads++
	n, ok, err := readNow(c.TCPConn, int(fd), c.p)
	if !ok {
		return false
	}
	c.n, c.err = n, err
	return true
}

// writeOut writes c.out: directly while the socket takes it, the rest (a full send buffer)
// through the connection's blocking Write, which honours the write deadline.
func (c *sendConn) writeOut(fd int) error {
	n, full, err := writeNow(c.TCPConn, fd, c.out)
	if err != nil || !full {
		return err
	}
	_, err = c.rw.Write(c.out[n:])
	return err
}
