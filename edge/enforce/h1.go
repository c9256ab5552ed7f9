package enforce

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/dnsname"
)

// The fast HTTP/1.1 path. Connections that negotiated http/1.1 (or no ALPN protocol) are served
// here rather than by net/http: one goroutine per connection, a reused read and write buffer,
// requests parsed in place (h1parse.go) into a reused structure, decided on the current
// configuration like ServeHTTP (a change applies to the next request of an open connection),
// written to a pooled origin connection of the lean proxy (lean.go) with the headers that do not
// change during a connection prepared once, and the response streamed back with one write to the
// client for a small response. There is no background read per request: a client that goes away
// while the origin is slow is noticed by a read started only when the origin has not answered
// within h1WatchDelay.
//
// A request outside the parser's subset, or with a body longer than h1MaxBody, is not refused
// here: the connection, with every byte read of that request, is handed over to net/http for the
// rest of its life (handoff), where ServeHTTP serves it as before. So every request the edge
// accepts is one net/http accepts, and what the fast path does not do itself (chunked and large
// bodies, Expect: 100-continue, Upgrade, HTTP/1.0, absolute-form targets, CONNECT) works as it
// always did.

const (
	h1ReadBuf  = 8 << 10  // the connection's read buffer: the largest request head of the fast path
	h1WriteBuf = 8 << 10  // the connection's write buffer
	h1MaxBody  = 64 << 10 // the largest request body the fast path forwards
	// h1WatchDelay is how long an origin may take before the connection starts watching for the
	// client going away (so that the origin exchange is aborted, as net/http's background read
	// cancels the request context).
	h1WatchDelay = 50 * time.Millisecond
	// h1DeadlineSlack: the idle read deadline is pushed forward only when it was set longer ago
	// than this, so that most requests set no deadline.
	h1DeadlineSlack = time.Second
)

// aLongTimeAgo is a deadline in the past, to interrupt a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// Connection states, for graceful shutdown.
const (
	h1Active int32 = iota
	h1Idle
	h1Closed
)

// h1Conn is one client connection on the fast path.
type h1Conn struct {
	s    *Server
	tc   *tls.Conn
	br   *bufio.Reader // reads through c (the watcher's byte first)
	bw   *bufio.Writer
	cs   *connState
	peer []*x509.Certificate
	name string // the normalised SNI hostname
	// fwd is "Host: <name>\r\n" and the X-Forwarded-* lines, the same for every request.
	fwd []byte

	req      h1Request
	resp     h1Response
	dreq     decision.Request
	bodyLeft int64 // bytes of the request body not read yet
	status   int   // the status answered to the request in hand (0: none yet), for the metrics
	sent     int64 // bytes written to the client connection (clientWriter)
	lastPost bool  // the previous request was a POST (net/http then skips up to 4 CR/LF bytes)
	// head: the request in hand is a HEAD (kept apart from req.method, whose bytes in the read
	// buffer are overwritten by the body once the head is consumed).
	head    bool
	parses  int // parseRequest calls for the last head (tests)
	scratch []byte

	deadlineSet time.Time // when the idle read deadline was last pushed forward
	// The request body's deadlines: bodyLimit is ReadTimeout's (zero: none), bodySet when the
	// body's idle deadline (BodyIdleTimeout) was last pushed forward.
	bodyLimit, bodySet time.Time
	dateSec            int64
	date               []byte
	// served: a request head was read (the first one's deadline is ReadHeaderTimeout's).
	served bool

	state atomic.Int32

	// The watcher (see watch).
	watchTimer *time.Timer
	watchMu    sync.Mutex
	watchStop  bool // the exchange ended: the watcher must not start reading
	watchRead  bool // the watcher is in (or about to start) its read
	watchDone  chan struct{}
	pending    [1]byte
	hasPending bool
	clientGone atomic.Bool
	inflight   atomic.Pointer[leanConn] // the origin connection of the exchange in flight
}

// clientWriter is the client's TLS connection under c.bw. It counts the bytes sent (c.sent), so
// that an exchange can tell whether any of a response reached the client.
type clientWriter struct{ c *h1Conn }

func (w clientWriter) Write(p []byte) (int, error) {
	n, err := w.c.tc.Write(p)
	w.c.sent += int64(n)
	return n, err
}

// Read reads from the client: the byte the watcher read, if any, then the TLS connection.
func (c *h1Conn) Read(p []byte) (int, error) {
	if c.hasPending && len(p) > 0 {
		c.hasPending = false
		p[0] = c.pending[0]
		return 1, nil
	}
	return c.tc.Read(p)
}

var _ io.Reader = (*h1Conn)(nil)

// serveH1 serves a handshaken connection that negotiated HTTP/1.1 until it closes, fails, or is
// handed over to net/http.
func (s *Server) serveH1(tc *tls.Conn, st *tls.ConnectionState) {
	c := newH1Conn(s, tc, st.PeerCertificates)
	if !s.track(c, true) {
		tc.Close()
		return
	}
	handedOver := false
	defer func() {
		s.track(c, false)
		c.watchTimer.Stop()
		if !handedOver {
			c.tc.Close()
		}
	}()
	name, ok := dnsname.NormalizeSNI(st.ServerName)
	if !ok {
		// getConfigForClient refused such a handshake; nothing to serve.
		return
	}
	c.name = name
	c.fwd = append(c.fwd, "Host: "...)
	c.fwd = append(c.fwd, name...)
	c.fwd = append(c.fwd, "\r\n"...)
	if ip, _, err := net.SplitHostPort(tc.RemoteAddr().String()); err == nil {
		c.fwd = append(c.fwd, "X-Forwarded-For: "...)
		c.fwd = append(c.fwd, ip...)
		c.fwd = append(c.fwd, "\r\n"...)
	}
	c.fwd = append(c.fwd, "X-Forwarded-Host: "...)
	c.fwd = append(c.fwd, name...)
	c.fwd = append(c.fwd, "\r\nX-Forwarded-Proto: https\r\n"...)

	for {
		res := c.readHead()
		switch res {
		case parseNeedMore: // the client went away, or timed out
			return
		case parseHandoff:
			handedOver = s.handOver(c)
			return
		case parseReject:
			_, _ = c.bw.WriteString("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
			_ = c.bw.Flush()
			return
		}
		start := time.Now()
		c.status = 0
		next := c.serveRequest()
		if c.status != 0 {
			s.metrics.requestDone(c.status, time.Since(start))
		}
		switch next {
		case h1Close:
			return
		case h1Handoff:
			handedOver = s.handOver(c)
			return
		}
		if s.inShutdown.Load() {
			return
		}
	}
}

// newH1Conn returns the fast-path connection state of tc.
func newH1Conn(s *Server, tc *tls.Conn, peer []*x509.Certificate) *h1Conn {
	c := &h1Conn{s: s, tc: tc, cs: new(connState), peer: peer, watchDone: make(chan struct{}, 1)}
	c.br = bufio.NewReaderSize(c, h1ReadBuf)
	c.bw = bufio.NewWriterSize(clientWriter{c}, h1WriteBuf)
	c.watchTimer = time.AfterFunc(time.Hour, c.watch)
	c.watchTimer.Stop()
	return c
}

// readHead waits for the next request head, with net/http's deadlines (each absolute, never
// pushed forward by the bytes that arrive): the connection's first head must be complete within
// ReadHeaderTimeout of its start (serveH1 reads it right after the handshake); before a later
// one, the connection may be idle for IdleTimeout, and a head that then does not come in one
// piece must be complete within ReadHeaderTimeout of the read that found it incomplete. parseOK
// means c.req holds it; parseNeedMore that the connection is done (closed by the client, timed
// out, shut down).
//
// Once a head with a body not in the buffer yet is read, the body's deadline is BodyIdleTimeout
// from each read of it (bodyDeadline).
func (c *h1Conn) readHead() parseResult {
	now := time.Now()
	first := !c.served
	switch {
	case first:
		_ = c.tc.SetReadDeadline(now.Add(c.s.http.ReadHeaderTimeout))
		c.deadlineSet = time.Time{}
	case now.Sub(c.deadlineSet) > h1DeadlineSlack:
		_ = c.tc.SetReadDeadline(now.Add(c.s.http.IdleTimeout))
		c.deadlineSet = now
	}
	start := now // the head's start, for ReadTimeout (net/http's: when its first bytes are in)
	if c.br.Buffered() == 0 {
		c.state.Store(h1Idle)
		if c.s.inShutdown.Load() {
			return parseNeedMore
		}
		if _, err := c.br.Peek(1); err != nil {
			return parseNeedMore
		}
		if !first && c.s.http.ReadTimeout > 0 {
			start = time.Now()
		}
		if !c.state.CompareAndSwap(h1Idle, h1Active) {
			return parseNeedMore // closed by a shutdown
		}
	} else {
		c.state.Store(h1Active)
	}
	if c.lastPost {
		// net/http skips up to 4 CR or LF bytes that some clients send after a POST body.
		c.lastPost = false
		peek, _ := c.br.Peek(min(4, c.br.Buffered()))
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		_, _ = c.br.Discard(n)
		if c.br.Buffered() == 0 {
			return c.readHead()
		}
	}
	tightened := first // the first head's deadline is ReadHeaderTimeout's already
	c.parses = 0
	b, _ := c.br.Peek(c.br.Buffered())
	for {
		c.parses++
		res := parseRequest(b, &c.req, len(b) == c.br.Size())
		if res != parseNeedMore {
			if res == parseOK {
				c.served = true
				if c.req.contentLength > int64(c.br.Buffered()-c.req.headLen) {
					c.bodyDeadline(start)
				}
			}
			return res
		}
		if !tightened {
			// The head did not come in one piece: from here on, ReadHeaderTimeout.
			tightened = true
			_ = c.tc.SetReadDeadline(time.Now().Add(c.s.http.ReadHeaderTimeout))
			c.deadlineSet = time.Time{}
		}
		// Read on until the head may be complete (a line end followed by an empty line) or the
		// buffer is full, and only then parse it again: parsing it at every read would cost time
		// quadratic in its length for a client that sends it a byte per TLS record. (A head that
		// parseRequest could refuse or hand over earlier is refused or handed over then.)
		for {
			from := max(len(b)-2, 0)
			if _, err := c.br.Peek(len(b) + 1); err != nil {
				if errors.Is(err, bufio.ErrBufferFull) {
					return parseHandoff
				}
				return parseNeedMore
			}
			b, _ = c.br.Peek(c.br.Buffered())
			if len(b) == c.br.Size() || mayEndHead(b[from:]) {
				break
			}
		}
	}
}

// bodyDeadline sets the read deadline of the body of the request whose head was just read (begun
// at start): BodyIdleTimeout from now, pushed forward as the body arrives (bodyProgress), and
// never past ReadTimeout after the head's start, as net/http does once it has read a head (the
// edge's ReadTimeout is 0: none). The deadline of the head (ReadHeaderTimeout, when it did not
// come in one piece; IdleTimeout from the wait before it, otherwise) does not go on to its body:
// it cut an upload that took longer than these (e.g. after a head sent in two TLS records,
// ReadHeaderTimeout after its start).
//
// So a body may take any time in total as long as it keeps coming; a client that sends it
// slowly (less than a byte per BodyIdleTimeout) or not at all loses the connection. The bodies
// the fast path hands over to net/http (longer than h1MaxBody, chunked) get the same through
// idleBody. The next readHead sets the idle deadline again.
func (c *h1Conn) bodyDeadline(start time.Time) {
	c.bodyLimit = time.Time{}
	if rt := c.s.http.ReadTimeout; rt > 0 {
		c.bodyLimit = start.Add(rt)
	}
	c.bodySet = time.Time{}
	c.deadlineSet = time.Time{}
	if c.s.bodyIdle == 0 {
		_ = c.tc.SetReadDeadline(c.bodyLimit)
		return
	}
	c.bodyProgress()
}

// bodyProgress pushes the body's idle deadline forward before a read of the body, when it was
// set more than deadlineSlack(BodyIdleTimeout) ago (so most reads set none).
func (c *h1Conn) bodyProgress() {
	if c.s.bodyIdle == 0 {
		return
	}
	now := time.Now()
	if now.Sub(c.bodySet) <= deadlineSlack(c.s.bodyIdle) {
		return
	}
	d := now.Add(c.s.bodyIdle)
	if !c.bodyLimit.IsZero() && c.bodyLimit.Before(d) {
		d = c.bodyLimit
	}
	_ = c.tc.SetReadDeadline(d)
	c.bodySet = now
}

// deadlineSlack is how long ago an idle deadline of d may have been set for a read to leave it as
// it is: h1DeadlineSlack, or a quarter of d when that is shorter (the read then still gets at
// least three quarters of d).
func deadlineSlack(d time.Duration) time.Duration {
	return min(h1DeadlineSlack, d/4)
}

// mayEndHead reports whether b holds a line end followed by an empty line ("\n\r\n" or "\n\n").
func mayEndHead(b []byte) bool {
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 || i+1 == len(b) {
			return false
		}
		b = b[i+1:]
		if b[0] == '\n' || b[0] == '\r' && len(b) > 1 && b[1] == '\n' {
			return true
		}
	}
}

// methodString returns m as a string, without allocating for the usual methods.
func methodString(m []byte) string {
	switch string(m) {
	case "GET":
		return http.MethodGet
	case "HEAD":
		return http.MethodHead
	case "POST":
		return http.MethodPost
	case "PUT":
		return http.MethodPut
	case "PATCH":
		return http.MethodPatch
	case "DELETE":
		return http.MethodDelete
	case "OPTIONS":
		return http.MethodOptions
	}
	return string(m)
}

// h1Next says how a connection goes on after a request.
type h1Next int

const (
	h1Keep    h1Next = iota // serve the next request
	h1Close                 // close the connection
	h1Handoff               // hand the connection, from this request on, over to net/http
)

func keepIf(ok bool) h1Next {
	if ok {
		return h1Keep
	}
	return h1Close
}

// serveRequest decides and answers the request in c.req (a parsed head, still in the read
// buffer).
func (c *h1Conn) serveRequest() h1Next {
	s, req := c.s, &c.req
	c.bodyLeft = req.contentLength
	if req.contentLength > h1MaxBody || string(req.method) == http.MethodConnect {
		return h1Handoff // net/http streams large bodies and refuses CONNECT
	}
	now := s.now()
	method := methodString(req.method)
	c.lastPost = method == http.MethodPost
	c.head = method == http.MethodHead

	if !hostMatchesBytes(req.host, c.name) {
		return c.answer(http.StatusMisdirectedRequest, misdirectedBody, "", req.close)
	}
	set := s.configs.Load()
	h, ok := set.Lookup(c.name)
	if !ok || !h.Active() {
		return c.answer(http.StatusMisdirectedRequest, misdirectedBody, "", true)
	}
	rev := set.Position()

	var decoded string
	if indexPercent(req.path) {
		p, err := url.PathUnescape(string(req.path))
		if err != nil {
			return h1Handoff // cannot happen for the subset; net/http decides
		}
		decoded = p
	} else {
		decoded = string(req.path)
	}
	// As ServeHTTP: refused (400, no decision) for a dot segment or a backslash, else the policy
	// sees the decoded path without ";params" and repeated slashes (see policyPath).
	p, reject := policyPath(decoded)
	if reject != nil {
		return c.answer(http.StatusBadRequest, reject, "", req.close)
	}
	// The decision does not use Host (it decides for the connection's hostname, which Host
	// matches); a policy gets the request's headers.
	dreq := &c.dreq
	*dreq = decision.Request{Host: c.name, Method: method, Path: p}
	if h.Config.GetPolicy() != nil {
		dreq.Host = string(req.host)
		dreq.Header = req.header()
	}
	d, id := s.decideRequest(now, h, rev, c.cs, c.peer, dreq)
	*dreq = decision.Request{}
	if d.Verdict == decision.Deny {
		return c.answer(http.StatusForbidden, forbiddenBody(d.Reason, id), id, req.close)
	}
	o := s.origin(h.Config.GetOriginUrl())
	if o.err != nil || o.lean == nil {
		return c.answer(http.StatusBadGateway, badGatewayBody, "", req.close)
	}
	return c.forward(o.lean, &d, id, rev, method)
}

// header returns the request's headers as net/http would deliver them to a handler (canonical
// keys, Host removed, Pragma: no-cache completed with Cache-Control), for a policy that looks at
// request.headers.
func (r *h1Request) header() http.Header {
	h := make(http.Header, len(r.fields))
	var key []byte
	for i := range r.fields {
		f := &r.fields[i]
		if asciiEqualFold(f.name, "Host") {
			continue
		}
		key = appendCanonicalKey(key[:0], f.name)
		k := string(key)
		h[k] = append(h[k], string(f.value))
	}
	if r.pragmaNoCache {
		h["Cache-Control"] = []string{"no-cache"}
	}
	return h
}

func indexPercent(b []byte) bool {
	for _, c := range b {
		if c == '%' {
			return true
		}
	}
	return false
}

// hostMatchesBytes is hostMatches for a Host value in the read buffer (of the parser's subset).
func hostMatchesBytes(host []byte, name string) bool {
	if i := lastIndexByte(host, ':'); i >= 0 {
		host = host[:i] // the parser allowed only digits after it
	}
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	return asciiEqualFold(host, name)
}

func lastIndexByte(b []byte, c byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// consume drops the request head from the read buffer (the head's slices are invalid after the
// next read).
func (c *h1Conn) consume() {
	_, _ = c.br.Discard(c.req.headLen)
	c.req.headLen = 0
}

// discardBody consumes the request head and what is left of its body without forwarding them.
func (c *h1Conn) discardBody() bool {
	c.consume()
	for c.bodyLeft > 0 {
		if c.br.Buffered() == 0 {
			c.bodyProgress() // as when forwarding it: the body may take any time while it keeps coming
			if _, err := c.br.Peek(1); err != nil {
				c.bodyLeft = 0
				return false
			}
		}
		n := min(int64(c.br.Buffered()), c.bodyLeft)
		_, _ = c.br.Discard(int(n))
		c.bodyLeft -= n
	}
	return true
}

// The bodies of the edge's own answers.
var (
	misdirectedBody = []byte(`{"error":"misdirected_request","message":"this connection does not serve the requested hostname; open a new connection with that server name"}` + "\n")
	badGatewayBody  = []byte(`{"error":"bad_gateway","message":"the origin could not be reached"}` + "\n")
)

func forbiddenBody(reason, id string) []byte {
	b := make([]byte, 0, 128)
	b = append(b, `{"error":"forbidden","reason":`...)
	b = strconv.AppendQuote(b, reason)
	b = append(b, `,"decision_id":`...)
	b = strconv.AppendQuote(b, id)
	return append(b, "}\n"...)
}

// appendDate appends a Date header line for now, formatted once a second.
func (c *h1Conn) appendDate(b []byte, now time.Time) []byte {
	if sec := now.Unix(); sec != c.dateSec || c.date == nil {
		c.dateSec = sec
		c.date = now.UTC().AppendFormat(c.date[:0], http.TimeFormat)
	}
	b = append(b, "Date: "...)
	b = append(b, c.date...)
	return append(b, "\r\n"...)
}

func appendStatusLine(b []byte, code int) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	return append(b, http.StatusText(code)...)
}

// answer writes one of the edge's own JSON answers, consuming the request head and body.
func (c *h1Conn) answer(code int, body []byte, decisionID string, closeConn bool) h1Next {
	c.status = code
	closeConn = closeConn || c.s.inShutdown.Load() // the loop ends after this answer: say so
	isHead := c.head
	if !c.discardBody() {
		return h1Close
	}
	b := appendStatusLine(c.scratch[:0], code)
	b = append(b, "\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"...)
	if decisionID != "" {
		b = append(b, "X-Guestlist-Decision-Id: "...)
		b = append(b, decisionID...)
		b = append(b, "\r\n"...)
	}
	b = c.appendDate(b, time.Now())
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if closeConn {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	c.scratch = b
	_, _ = c.bw.Write(b)
	if !isHead {
		_, _ = c.bw.Write(body)
	}
	return keepIf(c.bw.Flush() == nil && !closeConn)
}
