package enforce

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// The edge accepts connections itself and does the TLS handshake; then HTTP/2 connections go to
// net/http's server (through handoffListener), and HTTP/1.1 connections to the fast path
// (h1.go), which hands a connection over to net/http too when it meets a request it leaves to
// net/http.

// acceptLoop accepts connections until the listener is closed.
func (s *Server) acceptLoop() error {
	var delay time.Duration
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.logger.Warn("accept failed; retrying", "error", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go s.serveConn(conn)
	}
}

// serveConn does the TLS handshake of one connection and serves it.
func (s *Server) serveConn(conn net.Conn) {
	conn = newClientConn(conn)
	tc := tls.Server(conn, s.baseTLS)
	_ = conn.SetDeadline(time.Now().Add(s.http.ReadHeaderTimeout))
	note := new(handshakeNote)
	if err := tc.HandshakeContext(context.WithValue(s.baseCtx, handshakeNoteKey{}, note)); err != nil {
		if note.refused != nil {
			// Counted where it was refused; err is crypto/tls's report of the missing certificate.
			s.logger.Debug("TLS handshake refused", "remote_addr", conn.RemoteAddr().String(), "error", note.refused)
			conn.Close()
			return
		}
		s.metrics.handshakeError(err)
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
			re.Conn.Close()
			return
		}
		s.logger.Debug("TLS handshake failed", "remote_addr", conn.RemoteAddr().String(), "error", err)
		conn.Close()
		return
	}
	if note.refused != nil { // cannot happen (refuseTLS has no certificate, no tickets): fail closed
		s.logger.Error("TLS handshake completed for a refused server name", "remote_addr", conn.RemoteAddr().String(), "error", note.refused)
		tc.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	if st.NegotiatedProtocol == "h2" || !s.fast {
		if !s.handoff.push(tc) {
			tc.Close()
		}
		return
	}
	s.serveH1(tc, &st)
}

func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// handoffListener is the listener net/http's server serves: it yields the connections the edge
// passes to it.
type handoffListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

var _ net.Listener = (*handoffListener)(nil)

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// Accept returns the next connection passed to the listener.
func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close makes Accept fail; connections passed afterwards are refused.
func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr returns the edge's address.
func (l *handoffListener) Addr() net.Addr { return l.addr }

// push passes c to net/http's server; false when the listener is closed.
func (l *handoffListener) push(c net.Conn) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

// handoffConn is a fast-path connection handed over to net/http: the bytes the fast path read
// and did not consume are read again first. It is not a *tls.Conn, but net/http sets
// Request.TLS from its ConnectionState method; ConnContext gives its requests the connection's
// state (verification cache).
type handoffConn struct {
	*tls.Conn
	pending *bytes.Reader
	cs      *connState
}

// Read reads the replayed bytes, then from the TLS connection.
func (c *handoffConn) Read(p []byte) (int, error) {
	if c.pending != nil {
		if n, _ := c.pending.Read(p); n > 0 {
			return n, nil
		}
		c.pending = nil
	}
	return c.Conn.Read(p)
}

// handOver passes the fast-path connection c, from its current request on, to net/http. It
// reports whether net/http took it (if not, the caller closes it).
func (s *Server) handOver(c *h1Conn) bool {
	b, _ := c.br.Peek(c.br.Buffered())
	pending := append([]byte(nil), b...)
	if c.hasPending {
		// The watcher read this byte after the buffered ones (a read of the buffer since would
		// have taken it first).
		pending = append(pending, c.pending[0])
	}
	hc := &handoffConn{Conn: c.tc, cs: c.cs}
	if len(pending) > 0 {
		hc.pending = bytes.NewReader(pending)
	}
	_ = c.tc.SetReadDeadline(time.Time{})
	s.handoffs.Add(1)
	return s.handoff.push(hc)
}

// track registers (add) or unregisters a fast-path connection. It returns false when the server
// is shutting down.
func (s *Server) track(c *h1Conn, add bool) bool {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	if !add {
		delete(s.conns, c)
		return true
	}
	if s.inShutdown.Load() {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*h1Conn]struct{})
	}
	s.conns[c] = struct{}{}
	return true
}

// shutdownFast closes the idle fast-path connections until none is left, or closes them all when
// ctx ends first.
func (s *Server) shutdownFast(ctx context.Context) error {
	s.inShutdown.Store(true)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		s.connsMu.Lock()
		for c := range s.conns {
			if c.state.CompareAndSwap(h1Idle, h1Closed) {
				c.tc.Close()
			}
		}
		n := len(s.conns)
		s.connsMu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			s.closeFast()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// closeFast closes every fast-path connection.
func (s *Server) closeFast() {
	s.inShutdown.Store(true)
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	for c := range s.conns {
		c.state.Store(h1Closed)
		c.tc.Close()
	}
}
