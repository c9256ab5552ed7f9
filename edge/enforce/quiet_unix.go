//go:build unix

package enforce

import (
	"crypto/tls"
	"syscall"
)

// quiet reports whether nothing arrived on an idle connection: an origin that sent bytes (or closed)
// while the connection sat in the pool would otherwise hand them to the next request as its
// response, which may be another client's. It is one non-blocking MSG_PEEK on the socket (a read
// with a deadline would not do: Go checks an expired deadline before reading).
func (c *leanConn) quiet() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	conn := c.conn
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	quiet := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// n == 0 without an error is the origin's FIN; n > 0 is a stray byte.
		quiet = n < 0 && (rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && quiet
}
