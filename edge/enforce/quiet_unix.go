//go:build unix

package enforce

import (
	"syscall"
)

// quietState is what quiet keeps per connection, so that the check allocates nothing: the
// socket's RawConn and the callback, made once.
type quietState struct {
	rc     syscall.RawConn
	peek   func(fd uintptr) bool
	quiet  bool
	inited bool
	buf    [1]byte
}

// quiet reports whether nothing arrived on an idle connection: an origin that sent bytes (or closed)
// while the connection sat in the pool would otherwise hand them to the next request as its
// response, which may be another client's. For a plain-TCP connection it is one non-blocking
// MSG_PEEK on the socket (a read with a deadline would not do: Go checks an expired deadline
// before reading). For an https origin, crypto/tls may hold such bytes, read ahead from the
// socket with the response's last record: tlsQuiet looks there first.
func (c *leanConn) quiet() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	if c.rec != nil && !c.tlsQuiet() {
		return false
	}
	q := &c.q
	if !q.inited {
		q.inited = true
		var conn any = c.conn
		if c.rec != nil {
			conn = c.rec.Conn
		}
		if sc, ok := conn.(interface {
			SyscallConn() (syscall.RawConn, error)
		}); ok {
			q.rc, _ = sc.SyscallConn()
		}
		q.peek = func(fd uintptr) bool {
			q.quiet = peekQuiet(int(fd), q.buf[:])
			return true
		}
	}
	if q.rc == nil {
		return true
	}
	q.quiet = false
	err := q.rc.Read(q.peek)
	return err == nil && q.quiet
}

// peekQuiet reports whether nothing is readable on fd: no byte, no FIN, no error. It is one
// non-blocking MSG_PEEK (n == 0 without an error would be the origin's FIN; n > 0 a stray byte).
func peekQuiet(fd int, buf []byte) bool {
	for {
		_, err := recvPeek(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		return err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
	}
}
