//go:build !unix

package enforce

// quietState is empty on this platform.
type quietState struct{}

// quiet cannot look at the socket on this platform; pooled connections are trusted, but for what
// crypto/tls holds of an https origin's (tlsQuiet).
func (c *leanConn) quiet() bool {
	return c.br.Buffered() == 0 && (c.rec == nil || c.tlsQuiet())
}
