//go:build unix

package enforce

import (
	"crypto/tls"
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
// response, which may be another client's. It is one non-blocking MSG_PEEK on the socket (a read
// with a deadline would not do: Go checks an expired deadline before reading).
func (c *leanConn) quiet() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	q := &c.q
	if !q.inited {
		q.inited = true
		conn := c.conn
		if tc, ok := conn.(*tls.Conn); ok {
			conn = tc.NetConn()
		}
		if sc, ok := conn.(interface {
			SyscallConn() (syscall.RawConn, error)
		}); ok {
			q.rc, _ = sc.SyscallConn()
		}
		q.peek = func(fd uintptr) bool {
			n, _, rerr := syscall.Recvfrom(int(fd), q.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			// n == 0 without an error is the origin's FIN; n > 0 is a stray byte.
			q.quiet = n < 0 && (rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK)
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
