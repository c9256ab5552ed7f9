//go:build !linux

package enforce

import "net"

// newSendConn returns conn: writing a request inside the read that waits for its answer is done
// on Linux only (see sendwait_linux.go).
func newSendConn(conn net.Conn) net.Conn { return conn }

// sendOnRead reports false: the caller writes the request itself.
func sendOnRead(net.Conn, []byte) bool { return false }

// deferQuiet reports false: the pool makes the quiet check itself.
func deferQuiet(net.Conn) bool { return false }
