//go:build !linux

package enforce

import "net"

// newClientConn returns conn: the raw socket I/O of rawio_linux.go is done on Linux only.
func newClientConn(conn net.Conn) net.Conn { return conn }
