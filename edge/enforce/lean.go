package enforce

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"guestlist.dev/edge/egress"
)

// The lean proxy forwards requests without a body (GET, HEAD, DELETE, ... the bulk of API
// traffic) over its own pool of HTTP/1.1 connections per origin, writing the request straight to
// the connection and copying the response back, with none of http.Transport's per-request
// goroutine hand-offs or httputil.ReverseProxy's request cloning. Requests with a body, Expect,
// or an Upgrade go through httputil.ReverseProxy (see origin.ServeHTTP), whose handling of
// concurrent request and response bodies, 100-continue and protocol switches is proven.
//
// What it guarantees, like ReverseProxy: hop-by-hop headers (Connection and the headers it lists,
// Keep-Alive, Proxy-*, TE except "trailers", Trailer, Transfer-Encoding, Upgrade) are not
// forwarded in either direction; response bodies stream (flushed after every read when the length
// is unknown); trailers are forwarded; an origin failure before the response header is a 502, and
// after it aborts the client's request (http.ErrAbortHandler) so that a truncated body is never
// taken for a complete one; a request canceled by the client aborts the origin exchange. A pooled
// connection that the origin closed meanwhile is detected when no response byte arrives, and the
// request is retried once on a new connection if it is idempotent (GET, HEAD, OPTIONS, TRACE).

const (
	leanMaxIdle     = 1024             // idle connections kept per origin
	leanIdleTimeout = 90 * time.Second // idle connections older than this are closed
	leanDialTimeout = 5 * time.Second
	leanBufSize     = 32 << 10
)

var errOriginClosed = errors.New("enforce: the origin closed the connection before answering")

// errNotQuiet: a pooled connection whose quiet check was left to its first read or write
// (deferQuiet) was found not quiet. Nothing was written on it; the caller takes another.
var errNotQuiet = errors.New("enforce: the idle origin connection was not quiet")

// leanPool is the connection pool of one origin.
type leanPool struct {
	addr   string      // host:port
	tls    *tls.Config // nil for http origins
	prefix string      // the origin URL's escaped path ("" or "/..." )
	query  string      // the origin URL's raw query
	egress *egress.Policy
	idle   chan *leanConn
}

type leanConn struct {
	conn      net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	q         quietState

	// rec is the TCP connection under conn when conn is a *tls.Conn (https origins), nil for
	// plain-TCP ones: quiet looks through crypto/tls's buffers too (tlsQuiet).
	rec *recordConn
}

func newLeanPool(target *url.URL, policy *egress.Policy) *leanPool {
	p := &leanPool{
		addr:   target.Host,
		query:  target.RawQuery,
		egress: policy,
		idle:   make(chan *leanConn, leanMaxIdle),
	}
	if target.Port() == "" {
		port := "80"
		if target.Scheme == "https" {
			port = "443"
		}
		p.addr = net.JoinHostPort(target.Hostname(), port)
	}
	if target.Scheme == "https" {
		p.tls = &tls.Config{ServerName: target.Hostname(), NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	}
	if ep := target.EscapedPath(); ep != "/" {
		p.prefix = ep
	}
	return p
}

// get returns an idle connection (reused = true) or a new one. An idle connection is checked
// with quiet, or, with leaveQuiet and when the connection can (plain TCP), by its first read or
// write (see sendConn), which then fail with errNotQuiet. An https origin's is always checked by
// quiet, which also looks at what crypto/tls holds (tlsQuiet).
func (p *leanPool) get(ctx context.Context, leaveQuiet bool) (c *leanConn, reused bool, err error) {
	for {
		select {
		case c := <-p.idle:
			if time.Since(c.idleSince) < leanIdleTimeout && c.br.Buffered() == 0 && (leaveQuiet && deferQuiet(c.conn) || c.quiet()) {
				return c, true, nil
			}
			c.conn.Close()
			continue
		default:
		}
		break
	}
	c, err = p.dial(ctx)
	return c, false, err
}

func (p *leanPool) dial(ctx context.Context) (*leanConn, error) {
	d := net.Dialer{Timeout: leanDialTimeout, KeepAlive: 30 * time.Second, ControlContext: p.egress.Control}
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	var rec *recordConn
	if p.tls != nil {
		rec = &recordConn{Conn: conn}
		tc := tls.Client(rec, p.tls)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", p.addr, err)
		}
		conn = tc
	} else {
		conn = newSendConn(conn)
	}
	return &leanConn{conn: conn, br: bufio.NewReaderSize(conn, leanBufSize), bw: bufio.NewWriterSize(conn, leanBufSize), rec: rec}, nil
}

// recordConn is the TCP connection under an https origin's *tls.Conn. It follows the TLS record
// framing of what crypto/tls reads from it, so that quiet can tell whether crypto/tls holds a
// partial record: bytes the origin sent beyond a response that the next request would otherwise
// read as the start of its answer. Only crypto/tls reads it, under its input lock.
type recordConn struct {
	net.Conn
	hdr  [5]byte // the record header read so far
	hn   int     // its length
	left int     // bytes of the current record's payload not read yet
}

// Read reads from the TCP connection and follows the record framing of what it read.
func (c *recordConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.track(p[:n])
	return n, err
}

// track follows the record framing over b, the next bytes read: 5-byte headers whose last two
// bytes are the payload's length (TLS 1.2 and 1.3 alike).
func (c *recordConn) track(b []byte) {
	for len(b) > 0 {
		if c.left > 0 {
			k := min(c.left, len(b))
			c.left -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hn:], b)
		c.hn += k
		b = b[k:]
		if c.hn == len(c.hdr) {
			c.hn, c.left = 0, int(c.hdr[3])<<8|int(c.hdr[4])
		}
	}
}

// atBoundary reports whether everything read so far ends with a complete record.
func (c *recordConn) atBoundary() bool { return c.hn == 0 && c.left == 0 }

// tlsQuiet reports whether crypto/tls holds nothing of the origin's under an idle https origin
// connection (c.br is empty; the caller checked): crypto/tls reads ahead of the record it needs,
// so bytes the origin sent beyond a response's framing (a body on a HEAD, 204 or 304 answer, a
// wrong Content-Length) that came in the same TCP read sit in its buffer, where neither
// br.Buffered nor a MSG_PEEK of the socket sees them, and the next request on the connection (any
// client's) would read them as its answer.
//
// Complete records are found by reading through the connection with a read deadline in the past:
// crypto/tls decrypts the records it holds (handling post-handshake messages such as session
// tickets, which are not the origin's answer to anything) and returns their data, or reaches for
// the socket, where Go's poller fails the read at once with os.ErrDeadlineExceeded, before any
// system call. That timeout leaves the tls.Conn usable: crypto/tls (conn.go, readRecordOrCCS)
// makes a read error permanent only when it is not a net.Error with Temporary() true, and a
// deadline error is one; the bytes of a record read so far stay in its buffer and the next read
// goes on from them. The deadline is cleared before returning. A partial record in crypto/tls's
// buffer does not make that read return anything, so it is found by rec's framing: whatever was
// read from the socket must end with a complete record. Bytes still on the socket are the
// MSG_PEEK's (quiet_unix.go); bytes that arrive after the check are not seen, as for plain TCP.
func (c *leanConn) tlsQuiet() bool {
	if !c.rec.atBoundary() {
		return false
	}
	if err := c.conn.SetReadDeadline(aLongTimeAgo); err != nil {
		return false
	}
	_, err := c.br.Peek(1)
	if c.conn.SetReadDeadline(time.Time{}) != nil {
		return false
	}
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// put returns a connection to the pool, or closes it when the pool is full.
func (p *leanPool) put(c *leanConn) {
	c.idleSince = time.Now()
	select {
	case p.idle <- c:
	default:
		c.conn.Close()
	}
}

// sweep closes the idle connections older than the idle timeout.
func (p *leanPool) sweep() {
	for range len(p.idle) {
		select {
		case c := <-p.idle:
			if time.Since(c.idleSince) >= leanIdleTimeout {
				c.conn.Close()
				continue
			}
			select {
			case p.idle <- c:
			default:
				c.conn.Close()
			}
		default:
			return
		}
	}
}

// closeIdle closes every idle connection.
func (p *leanPool) closeIdle() {
	for {
		select {
		case c := <-p.idle:
			c.conn.Close()
		default:
			return
		}
	}
}

// leanEligible reports whether the lean proxy forwards r: no body, no Expect, no Upgrade. (An
// HTTP/2 request always has a Body; ContentLength is 0 when its stream ended with the headers.)
func leanEligible(r *http.Request) bool {
	if r.ContentLength != 0 || (r.Body != nil && r.Body != http.NoBody && r.ProtoMajor < 2) {
		return false
	}
	if r.Method == http.MethodConnect {
		return false
	}
	h := r.Header
	if _, ok := h["Expect"]; ok {
		return false
	}
	if _, ok := h["Upgrade"]; ok {
		return false
	}
	return true
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// serveLean forwards r (eligible, headers already decided) to the pool's origin.
func (s *Server) serveLean(p *leanPool, w http.ResponseWriter, r *http.Request) {
	target, ok := p.requestTarget(r)
	if !ok {
		w.Header()["Content-Type"] = jsonContentType
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"bad_request","message":"invalid request target"}` + "\n"))
		return
	}
	ctx := r.Context()
	for attempt := 0; ; attempt++ {
		var c *leanConn
		var reused bool
		var err error
		if attempt == 0 {
			c, reused, err = p.get(ctx, false)
		} else {
			c, err = p.dial(ctx)
		}
		if err != nil {
			s.originError(w, r, p.addr, fmt.Errorf("connect: %w", err))
			return
		}
		retry, err := s.exchange(p, c, w, r, target)
		if err == nil {
			return
		}
		if retry && reused && attempt == 0 && idempotent(r.Method) && ctx.Err() == nil {
			continue
		}
		s.originError(w, r, p.addr, err)
		return
	}
}

// exchange sends r on c and copies the response to w. It gives c back to the pool or closes it.
// A non-nil error means nothing was written to w yet; retry says that the origin closed the
// connection before sending any of a response (a stale pooled connection). After the response
// header was written, a failure panics with http.ErrAbortHandler.
func (s *Server) exchange(p *leanPool, c *leanConn, w http.ResponseWriter, r *http.Request, target string) (retry bool, err error) {
	ctx := r.Context()
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	keep := false
	defer func() {
		if !stop() || !keep {
			c.conn.Close()
			return
		}
		p.put(c)
	}()

	if err := writeRequest(c.bw, r, target); err != nil {
		return isClosedConn(err), fmt.Errorf("write request: %w", err)
	}
	if _, err := c.br.Peek(1); err != nil {
		return isClosedConn(err) || errors.Is(err, io.EOF), errOriginClosedOr(err)
	}
	var resp *http.Response
	for informational := 0; ; informational++ {
		resp, err = http.ReadResponse(c.br, r)
		if err != nil {
			return false, fmt.Errorf("read response: %w", err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx informational responses (103 Early Hints, ...) are not forwarded, and no more
		// than the fast path skips are waited through.
		if informational == maxInformational {
			return false, fmt.Errorf("the origin sent more than %d informational (1xx) responses", maxInformational)
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return false, errors.New("the origin switched protocols without being asked to")
	}

	hdr := w.Header()
	copyResponseHeader(hdr, resp.Header)
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		hdr["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)

	buf := s.bufs.Get()
	defer s.bufs.Put(buf)
	var copyErr error
	if resp.ContentLength == -1 && resp.Body != http.NoBody {
		copyErr = copyFlushing(w, resp.Body, buf)
	} else {
		_, copyErr = copyBuffer(w, resp.Body, buf)
	}
	if copyErr != nil {
		resp.Body.Close()
		s.logger.Debug("forwarding the response body failed", "origin", p.addr, "error", copyErr)
		panic(http.ErrAbortHandler)
	}
	if err := resp.Body.Close(); err != nil {
		panic(http.ErrAbortHandler)
	}
	for k, vv := range resp.Trailer {
		hdr[http.TrailerPrefix+k] = vv
	}
	// Bytes beyond the response that crypto/tls read ahead (https origins) or that are still on
	// the socket are not in c.br: the pool's quiet check finds them when it hands c out.
	keep = !resp.Close && c.br.Buffered() == 0
	return false, nil
}

func errOriginClosedOr(err error) error {
	if errors.Is(err, io.EOF) {
		return errOriginClosed
	}
	return fmt.Errorf("read response: %w", err)
}

// isClosedConn reports whether err says the peer closed or reset the connection.
func isClosedConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

func (s *Server) originError(w http.ResponseWriter, r *http.Request, origin string, err error) {
	if r.Context().Err() != nil {
		s.logger.Debug("request canceled while forwarding", "origin", origin, "error", err)
	} else {
		s.logger.Warn("forwarding to the origin failed", "origin", origin, "hostname", r.Host, "error", err)
	}
	badGateway(w)
}

// requestTarget returns the origin-form request target: the origin URL's path joined with the
// request's escaped path, and the queries joined. ok is false for a target with bytes that may
// not appear in a request line.
func (p *leanPool) requestTarget(r *http.Request) (string, bool) {
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	if p.prefix != "" {
		path = singleJoiningSlash(p.prefix, path)
	}
	q := r.URL.RawQuery
	switch {
	case p.query != "" && q != "":
		q = p.query + "&" + q
	case p.query != "":
		q = p.query
	}
	t := path
	if q != "" || r.URL.ForceQuery {
		t = path + "?" + q
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c == 0x7f {
			return "", false
		}
	}
	return t, true
}

func singleJoiningSlash(a, b string) string {
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

// hopHeaders are never forwarded (RFC 9110, 7.6.1), besides those named in Connection.
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// connectionTokens returns the header names listed in h's Connection headers, canonical.
func connectionTokens(h http.Header) []string {
	var out []string
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = textproto.TrimString(tok); tok != "" {
				out = append(out, http.CanonicalHeaderKey(tok))
			}
		}
	}
	return out
}

// writeRequest writes r's request line and headers (r is bodyless) to bw and flushes it.
func writeRequest(bw *bufio.Writer, r *http.Request, target string) error {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(target)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	listed := connectionTokens(r.Header)
	for k, vv := range r.Header {
		if hopHeaders[k] || (len(listed) > 0 && listedIn(listed, k) && !isDecisionHeader(k)) {
			if k == "Te" && teTrailers(vv) {
				bw.WriteString("Te: trailers\r\n")
			}
			continue
		}
		switch k {
		case "Host", "Content-Length", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded":
			continue
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				continue
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		bw.WriteString("X-Forwarded-For: ")
		bw.WriteString(ip)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-Host: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\nX-Forwarded-Proto: https\r\n")
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

func listedIn(listed []string, k string) bool {
	for _, l := range listed {
		if l == k {
			return true
		}
	}
	return false
}

func isDecisionHeader(k string) bool {
	for _, d := range decisionHeaders {
		if d == k {
			return true
		}
	}
	return false
}

func teTrailers(vv []string) bool {
	for _, v := range vv {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(tok), "trailers") {
				return true
			}
		}
	}
	return false
}

// copyResponseHeader copies the origin's response header to dst, without hop-by-hop headers.
func copyResponseHeader(dst, src http.Header) {
	listed := connectionTokens(src)
	for k, vv := range src {
		if hopHeaders[k] || (len(listed) > 0 && listedIn(listed, k)) {
			continue
		}
		dst[k] = vv
	}
}

// copyBuffer copies src to w with buf.
func copyBuffer(w io.Writer, src io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// copyFlushing copies src to w, flushing after every read (bodies of unknown length stream).
func copyFlushing(w http.ResponseWriter, src io.Reader, buf []byte) error {
	rc := http.NewResponseController(w)
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			if _, werr := w.Write(buf[:nr]); werr != nil {
				return werr
			}
			if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
