//go:build unix && !linux

package enforce

import "syscall"

// recvPeek is recv(2) of len(buf) ≥ 1 bytes with MSG_PEEK|MSG_DONTWAIT on the socket fd: what is
// readable stays readable. It returns the bytes seen (0 at the peer's FIN) or the error.
func recvPeek(fd int, buf []byte) (int, error) {
	n, _, err := syscall.Recvfrom(fd, buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return n, err
}
