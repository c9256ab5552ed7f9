package enforce

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"time"

	"guestlist.dev/edge/decision"
)

// The origin side of the fast path: the request goes to a pooled connection of the lean proxy
// (same pool, same hygiene: quiet check of idle connections, one retry of an idempotent bodyless
// request on a stale one), the response head is parsed in place and written to the client with
// hop-by-hop headers removed, and the body is copied (Content-Length), re-chunked (chunked, with
// its trailers; or read to the close), flushing whenever the origin has nothing more buffered so
// that bodies stream.

// h1MaxResponseFields bounds the header lines of an origin's response head.
const h1MaxResponseFields = 256

// errClientGone: the client closed its connection during the exchange.
var errClientGone = errors.New("enforce: the client went away")

// h1Response is a parsed origin response head; its slices point into the origin connection's
// read buffer.
type h1Response struct {
	code          int
	reason        []byte
	http10        bool
	contentLength int64
	hasLength     bool
	chunked       bool
	close         bool
	hasDate       bool
	fields        []hdrField
	headLen       int
}

// maxInformational is how many 1xx responses the edge skips before it gives up on an origin's
// answer, as net/http's client does.
const maxInformational = 5

// forward sends the request in c.req to the origin of pool p and streams the answer back.
func (c *h1Conn) forward(p *leanPool, d *decision.Decision, id string, rev uint64, method string) h1Next {
	for attempt := 0; ; attempt++ {
		var oc *leanConn
		var reused bool
		var err error
		if attempt == 0 {
			// A bodyless request leaves the quiet check to the read that writes it
			// (sendwait_linux.go): it fails with errNotQuiet before anything is sent.
			oc, reused, err = p.get(context.Background(), c.bodyLeft == 0)
		} else {
			oc, err = p.dial(context.Background())
		}
		if err != nil {
			c.s.logger.Warn("forwarding to the origin failed", "origin", p.addr, "hostname", c.name, "error", fmt.Errorf("connect: %w", err))
			return c.answer(http.StatusBadGateway, badGatewayBody, "", c.req.close)
		}
		next, retry, err := c.exchange(p, oc, d, id, rev, method)
		if err == nil {
			return next
		}
		if c.clientGone.Load() || errors.Is(err, errClientGone) {
			c.s.logger.Debug("client went away while forwarding", "origin", p.addr, "error", err)
			return h1Close
		}
		if errors.Is(err, errNotQuiet) {
			// A pooled connection the origin wrote on or closed while idle; nothing was sent
			// on it, whatever the method: take another, as the pool does.
			attempt = -1
			continue
		}
		if retry && reused && attempt == 0 && idempotent(method) && c.req.contentLength == 0 {
			continue
		}
		// Connected, but the exchange failed: the origin closed or reset the connection, or its
		// response was refused (malformed, or framed in a way net/http would not read).
		c.s.logger.Warn("forwarding to the origin failed", "origin", p.addr, "hostname", c.name, "error", err)
		return c.answer(http.StatusBadGateway, badGatewayBody, "", c.req.close || c.bodyLeft > 0)
	}
}

// appendTarget appends the origin-form target for pool p: the origin URL's path joined with the
// request's path, and the queries joined, as lean.go's requestTarget does.
func (c *h1Conn) appendTarget(b []byte, p *leanPool) []byte {
	req := &c.req
	path := req.path
	if p.prefix == "" {
		b = append(b, path...)
	} else {
		pre := p.prefix
		switch {
		case pre[len(pre)-1] == '/' && path[0] == '/':
			b = append(append(b, pre...), path[1:]...)
		default:
			b = append(append(b, pre...), path...)
		}
	}
	switch {
	case p.query != "" && len(req.query) > 0:
		b = append(b, '?')
		b = append(b, p.query...)
		b = append(b, '&')
		b = append(b, req.query...)
	case p.query != "":
		b = append(b, '?')
		b = append(b, p.query...)
	case req.hasQuery:
		b = append(b, '?')
		b = append(b, req.query...)
	}
	return b
}

// appendFields appends the header lines of fields that are not dropped, names canonical.
func appendFields(b []byte, fields []hdrField) []byte {
	for i := range fields {
		f := &fields[i]
		if f.drop {
			continue
		}
		b = appendCanonicalKey(b, f.name)
		b = append(b, ": "...)
		b = append(b, f.value...)
		b = append(b, "\r\n"...)
	}
	return b
}

// appendRequestHead appends the request head for the origin.
func (c *h1Conn) appendRequestHead(b []byte, p *leanPool, d *decision.Decision, id string, rev uint64, method string) []byte {
	req := &c.req
	b = append(b, req.method...)
	b = append(b, ' ')
	b = c.appendTarget(b, p)
	b = append(b, " HTTP/1.1\r\n"...)
	b = append(b, c.fwd...) // Host, X-Forwarded-*
	b = appendFields(b, req.fields)
	if req.teTrailers {
		b = append(b, "Te: trailers\r\n"...)
	}
	if req.pragmaNoCache {
		b = append(b, "Cache-Control: no-cache\r\n"...)
	}
	b = appendDecisionHeaders(b, c.cs, d, id, rev)
	switch {
	case req.contentLength > 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.contentLength, 10)
		b = append(b, "\r\n"...)
	case method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch:
		b = append(b, "Content-Length: 0\r\n"...)
	}
	return append(b, "\r\n"...)
}

// appendDecisionHeaders appends the headers setDecisionHeaders sets, as header lines.
func appendDecisionHeaders(b []byte, cs *connState, d *decision.Decision, id string, rev uint64) []byte {
	if d.Verdict == decision.ReportDeny {
		b = append(b, "X-Guestlist-Decision: report_deny\r\n"...)
	} else {
		b = append(b, "X-Guestlist-Decision: allow\r\n"...)
	}
	b = append(b, "X-Guestlist-Decision-Id: "...)
	b = append(b, id...)
	b = append(b, "\r\nX-Guestlist-Config-Revision: "...)
	b = strconv.AppendUint(b, rev, 10)
	b = append(b, "\r\nX-Client-Cert-Present: "...)
	b = strconv.AppendBool(b, d.Cert.Presented)
	b = append(b, "\r\nX-Client-Cert-Verified: "...)
	b = strconv.AppendBool(b, d.Cert.Verified)
	b = append(b, "\r\n"...)
	if d.Cert.Error != "" {
		b = append(b, "X-Client-Cert-Error: "...)
		b = append(b, d.Cert.Error...)
		b = append(b, "\r\n"...)
	}
	if !d.Cert.Verified || len(d.Chain) == 0 {
		return b
	}
	return append(b, certHeadersFor(cs, d).block...)
}

// exchange sends the request on oc and streams the response to the client. It gives oc back to
// the pool or closes it. A non-nil error means nothing was written to the client; retry says
// that the origin closed the connection before sending any of a response (a stale pooled
// connection). A body the edge refuses (see copyChunked) before any byte of the response went
// out is such an error too, answered with a 502 by forward; after the response head went out, a
// failure closes the client connection (h1Close, nil), so that a truncated body is never taken
// for a complete one.
func (c *h1Conn) exchange(p *leanPool, oc *leanConn, d *decision.Decision, id string, rev uint64, method string) (next h1Next, retry bool, err error) {
	keep := false
	defer func() { c.release(p, oc, keep) }()

	c.scratch = c.appendRequestHead(c.scratch[:0], p, d, id, rev, method)
	// A bodyless request on a pooled connection is written by the read that waits for the
	// answer, after the quiet check get left to it (sendwait_linux.go): the Peek below, which
	// reads because the pooled connection's buffers are empty (get checked that); c.scratch is
	// not touched again until that read returned.
	deferred := c.bodyLeft == 0 && oc.bw.Buffered() == 0 && oc.br.Buffered() == 0 && sendOnRead(oc.conn, c.scratch)
	if !deferred {
		_, _ = oc.bw.Write(c.scratch)
	}
	if c.bodyLeft > 0 {
		c.consume()
		for c.bodyLeft > 0 {
			if c.br.Buffered() == 0 {
				c.bodyProgress()
				if _, err := c.br.Peek(1); err != nil {
					return h1Close, false, fmt.Errorf("%w: reading the request body: %v", errClientGone, err)
				}
			}
			n := min(int64(c.br.Buffered()), c.bodyLeft)
			b, _ := c.br.Peek(int(n))
			if _, err := oc.bw.Write(b); err != nil {
				return h1Close, false, fmt.Errorf("write request body: %w", err)
			}
			_, _ = c.br.Discard(int(n))
			c.bodyLeft -= n
		}
	}
	if err := oc.bw.Flush(); err != nil {
		return h1Close, isClosedConn(err) && c.req.contentLength == 0, fmt.Errorf("write request: %w", err)
	}
	c.armWatch(oc)

	resp := &c.resp
	isHead := method == http.MethodHead
	for informational := 0; ; informational++ {
		if informational > maxInformational {
			return h1Close, false, fmt.Errorf("the origin sent more than %d informational (1xx) responses", maxInformational)
		}
		if _, err := oc.br.Peek(1); err != nil {
			return h1Close, isClosedConn(err) || errors.Is(err, io.EOF), errOriginClosedOr(err)
		}
		if err := c.readResponseHead(oc.br, resp); err != nil {
			return h1Close, false, err
		}
		if resp.code >= 200 {
			c.status = resp.code
			break
		}
		if resp.code == http.StatusSwitchingProtocols {
			return h1Close, false, errors.New("the origin switched protocols without being asked to")
		}
		_, _ = oc.br.Discard(resp.headLen) // 1xx informational responses are not forwarded
	}
	if c.req.headLen > 0 {
		c.consume() // a bodyless request: its head was kept for a retry until now
	}

	noBody := isHead || resp.code == http.StatusNoContent || resp.code == http.StatusNotModified
	closeDelimited := !noBody && !resp.chunked && !resp.hasLength
	closeClient := c.req.close || c.s.inShutdown.Load()
	b := c.scratch[:0]
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(resp.code), 10)
	b = append(b, ' ')
	b = append(b, resp.reason...)
	b = append(b, "\r\n"...)
	b = appendFields(b, resp.fields)
	switch {
	case resp.chunked && !noBody, closeDelimited:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case resp.hasLength && resp.code != http.StatusNoContent:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, resp.contentLength, 10)
		b = append(b, "\r\n"...)
	}
	if !resp.hasDate {
		b = c.appendDate(b, time.Now())
	}
	if closeClient {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	c.scratch = b
	sent := c.sent
	_, _ = c.bw.Write(b)
	_, _ = oc.br.Discard(resp.headLen)

	var copyErr error
	switch {
	case noBody:
	case resp.chunked:
		copyErr = c.copyChunked(oc.br)
	case resp.hasLength:
		copyErr = c.copyLength(oc.br, resp.contentLength)
	default:
		copyErr = c.copyToClose(oc.br)
	}
	if copyErr != nil {
		if c.sent == sent && !errors.Is(copyErr, errClientGone) {
			// The body was refused before any of the response reached the client (it was all
			// in the origin's buffer): the client gets a 502 instead of a closed connection.
			c.bw.Reset(clientWriter{c})
			return h1Close, false, copyErr
		}
		c.s.logger.Debug("forwarding the response body failed", "origin", p.addr, "error", copyErr)
		return h1Close, false, nil
	}
	if err := c.bw.Flush(); err != nil {
		return h1Close, false, nil
	}
	// Bytes beyond the response that crypto/tls read ahead (https origins) or that are still on
	// the socket are not in oc.br: the pool's quiet check finds them when it hands oc out.
	keep = !resp.close && !resp.http10 && !closeDelimited && oc.br.Buffered() == 0
	return keepIf(!closeClient), false, nil
}

// release ends the exchange on oc: it gives oc back to the pool when keep (the exchange left it
// reusable) and the client was not found gone, else closes it. The watch is ended first, so that
// a verdict of the watcher that came after the exchange looked is seen too: the watcher then set
// a deadline in the past on oc, and pooled, oc would fail the next request sent on it (a 502 for
// any client of any hostname with this origin).
func (c *h1Conn) release(p *leanPool, oc *leanConn, keep bool) {
	c.disarmWatch()
	if keep && !c.clientGone.Load() {
		p.put(oc)
		return
	}
	oc.conn.Close()
}

// readResponseHead parses the response head at the start of br into resp, reading more as
// needed. A head outside what the edge accepts from an origin is an error (a 502).
func (c *h1Conn) readResponseHead(br *bufio.Reader, resp *h1Response) error {
	for {
		b, _ := br.Peek(br.Buffered())
		switch parseResponse(b, resp, len(b) == br.Size()) {
		case parseOK:
			return nil
		case parseHandoff:
			return errors.New("read response: malformed response head")
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return fmt.Errorf("read response: %w", err)
		}
	}
}

// responseLine returns the line at the start of b, ending in LF or CRLF (origins may end lines
// with a bare LF, as net/http's client accepts).
func responseLine(b []byte, full bool) (line, rest []byte, res parseResult) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if full {
			return nil, nil, parseHandoff
		}
		return nil, nil, parseNeedMore
	}
	line = b[:i]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, b[i+1:], parseOK
}

// parseResponse parses an origin's response head. parseHandoff here means malformed.
func parseResponse(b []byte, resp *h1Response, full bool) parseResult {
	fields := resp.fields[:0]
	*resp = h1Response{fields: fields, contentLength: -1}
	line, rest, res := responseLine(b, full)
	if res != parseOK {
		return res
	}
	switch {
	case bytes.HasPrefix(line, []byte("HTTP/1.1 ")):
	case bytes.HasPrefix(line, []byte("HTTP/1.0 ")):
		resp.http10 = true
	default:
		return parseHandoff
	}
	line = line[len("HTTP/1.1 "):]
	if len(line) < 3 || (len(line) > 3 && line[3] != ' ') {
		return parseHandoff
	}
	code := 0
	for _, ch := range line[:3] {
		if ch < '0' || ch > '9' {
			return parseHandoff
		}
		code = code*10 + int(ch-'0')
	}
	if code < 100 {
		return parseHandoff
	}
	resp.code = code
	if len(line) > 4 {
		resp.reason = line[4:]
		for _, ch := range resp.reason {
			if !valueTable[ch] {
				return parseHandoff
			}
		}
	}
	off := len(b) - len(rest)
	te := 0
	var length []byte // the first Content-Length value
	for {
		line, rest, res = responseLine(b[off:], full)
		if res != parseOK {
			return res
		}
		off = len(b) - len(rest)
		if len(line) == 0 {
			break
		}
		if len(resp.fields) == h1MaxResponseFields {
			return parseHandoff
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return parseHandoff
		}
		name := line[:colon]
		for _, ch := range name {
			if !tcharTable[ch] {
				return parseHandoff
			}
		}
		value := line[colon+1:]
		for _, ch := range value {
			if !valueTable[ch] {
				return parseHandoff
			}
		}
		value = trimOWS(value)
		f := hdrField{name: name, value: value, drop: isHopByHop(name)}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			// net/http's client accepts repeated Content-Lengths only when they are the same
			// string ("5" and "05" are not).
			if resp.hasLength {
				if !bytes.Equal(value, length) {
					return parseHandoff
				}
				f.drop = true
				break
			}
			n, ok := parseLength(value)
			if !ok {
				return parseHandoff
			}
			resp.contentLength, resp.hasLength, length = n, true, value
			f.drop = true
		case asciiEqualFold(name, "Transfer-Encoding"):
			te++
			// HTTP/1.0 has no Transfer-Encoding: its framing is faulty (RFC 9112, 6.1), and
			// net/http's client (the other path) ignores it and reads the body to the close.
			if te > 1 || resp.http10 || !asciiEqualFold(value, "chunked") {
				return parseHandoff
			}
			resp.chunked = true
		case asciiEqualFold(name, "Connection"):
			if hasToken(value, "close") {
				resp.close = true
			}
		case asciiEqualFold(name, "Date"):
			resp.hasDate = true
		}
		resp.fields = append(resp.fields, f)
	}
	if resp.chunked && resp.hasLength {
		return parseHandoff // both framings: a smuggling attempt or a broken origin
	}
	if resp.chunked {
		// Trailer announces the trailers of a chunked body, which are forwarded. net/http's client
		// refuses a chunked response whose Trailer names a framing header (fixTrailer), also on
		// a response without a body (HEAD, 1xx, 204, 304); without chunking it ignores Trailer.
		for i := range resp.fields {
			f := &resp.fields[i]
			if !asciiEqualFold(f.name, "Trailer") {
				continue
			}
			for tok := range tokens(f.value) {
				if asciiEqualFold(tok, "Content-Length") || asciiEqualFold(tok, "Transfer-Encoding") || asciiEqualFold(tok, "Trailer") {
					return parseHandoff
				}
			}
			f.drop = false
		}
	}
	for i := range resp.fields {
		f := &resp.fields[i]
		if !asciiEqualFold(f.name, "Connection") {
			continue
		}
		for tok := range tokens(f.value) {
			for j := range resp.fields {
				if asciiEqualFold(resp.fields[j].name, tok) {
					resp.fields[j].drop = true
				}
			}
		}
	}
	resp.headLen = off
	return parseOK
}

// copyLength copies n body bytes from the origin to the client, flushing before waiting for
// the origin.
func (c *h1Conn) copyLength(br *bufio.Reader, n int64) error {
	for n > 0 {
		if br.Buffered() == 0 {
			if err := c.waitOrigin(); err != nil {
				return err
			}
			if _, err := br.Peek(1); err != nil {
				return fmt.Errorf("read response body: %w", noEOF(err))
			}
		}
		k := min(int64(br.Buffered()), n)
		b, _ := br.Peek(int(k))
		if _, err := c.bw.Write(b); err != nil {
			return fmt.Errorf("%w: %v", errClientGone, err)
		}
		_, _ = br.Discard(int(k))
		n -= k
	}
	return nil
}

// copyToClose copies the origin's body up to its close, chunked to the client.
func (c *h1Conn) copyToClose(br *bufio.Reader) error {
	for {
		if br.Buffered() == 0 {
			if err := c.waitOrigin(); err != nil {
				return err
			}
			if _, err := br.Peek(1); err != nil {
				if errors.Is(err, io.EOF) {
					_, err := c.bw.WriteString("0\r\n\r\n")
					return err
				}
				return fmt.Errorf("read response body: %w", err)
			}
		}
		n := br.Buffered()
		b, _ := br.Peek(n)
		c.writeChunk(b)
		_, _ = br.Discard(n)
	}
}

func (c *h1Conn) writeChunk(b []byte) {
	var hex [16]byte
	_, _ = c.bw.Write(strconv.AppendInt(hex[:0], int64(len(b)), 16))
	_, _ = c.bw.WriteString("\r\n")
	_, _ = c.bw.Write(b)
	_, _ = c.bw.WriteString("\r\n")
}

// The chunked framing of an origin's response body is read exactly as net/http's client reads
// it (net/http/internal's chunkedReader, which the other path's ReverseProxy uses), so that the
// two paths accept the same bodies and end them at the same byte of the origin connection:
//
//   - a chunk-size line ends in CRLF, with no other CR in it, and is shorter than
//     maxChunkLineLength bytes;
//   - trailing SP and HTAB are trimmed from it, then everything from the first ';' (the
//     extensions, whatever their bytes) is cut off, and what is left must be 1 to 16 hex digits:
//     so "5 \r\n" and "5;ext \r\n" are accepted, "5 ;ext\r\n" and " 5\r\n" are refused;
//   - the chunk data is followed by exactly CRLF;
//   - chunk-size lines may carry at most chunkExcessLimit bytes of overhead beyond 16 bytes a
//     chunk plus twice the chunk's data (net/http's guard against a sender that sends mostly
//     extensions); the last chunk is not held to it, as in net/http.
//   - the trailer section is read as net/http reads it (see copyTrailers).
//
// A body outside this is refused: the client gets a 502 when nothing of the response had been
// sent to it yet (see exchange), else its connection is closed mid-body; the origin connection
// is closed either way.

// maxChunkLineLength: a chunk-size line of this many bytes or more (CRLF aside) is refused, as
// net/http's readChunkLine refuses it.
const maxChunkLineLength = 4096

// chunkExcessLimit is net/http's bound on the excess overhead of chunk-size lines.
const chunkExcessLimit = 16 << 10

// copyChunked decodes the origin's chunked body and writes it chunked to the client, with the
// trailers.
func (c *h1Conn) copyChunked(br *bufio.Reader) error {
	var excess int64
	for {
		line, err := c.readChunkLine(br)
		if err != nil {
			return err
		}
		excess += int64(len(line)) + 2 // the line and the CRLF after the chunk data
		size, err := parseChunkSize(line)
		if err != nil {
			return fmt.Errorf("read response body: %w", err)
		}
		excess -= 16 + 2*int64(size) // as net/http computes it, overflow included
		excess = max(excess, 0)
		if size == 0 {
			break
		}
		if excess > chunkExcessLimit {
			return errors.New("read response body: chunked encoding contains too much non-data")
		}
		if size > math.MaxInt64 {
			// net/http would read on until the origin's data ran out: the body cannot end.
			return fmt.Errorf("read response body: chunk size %#x beyond any body", size)
		}
		var hex [16]byte
		_, _ = c.bw.Write(strconv.AppendUint(hex[:0], size, 16))
		_, _ = c.bw.WriteString("\r\n")
		if err := c.copyLength(br, int64(size)); err != nil {
			return err
		}
		_, _ = c.bw.WriteString("\r\n")
		if err := c.readChunkEnd(br); err != nil {
			return err
		}
	}
	_, _ = c.bw.WriteString("0\r\n")
	if err := c.copyTrailers(br); err != nil {
		return err
	}
	if _, err := c.bw.WriteString("\r\n"); err != nil {
		return fmt.Errorf("%w: %v", errClientGone, err)
	}
	return nil
}

// copyTrailers reads the trailer section of a chunked body as net/http's client reads it
// (body.readTrailer), and writes the trailers to the client but for the hop-by-hop ones,
// Content-Length and Host. The section is a lone CRLF, or lines that a CRLF CRLF ends within the
// read buffer's size from their start, read as a MIME header (textproto: lines may end in a bare
// LF, obs-fold is joined with a space).
func (c *h1Conn) copyTrailers(br *bufio.Reader) error {
	if br.Buffered() < 2 {
		if err := c.waitOrigin(); err != nil {
			return err
		}
	}
	b, err := br.Peek(2)
	switch {
	case len(b) == 2 && b[0] == '\r' && b[1] == '\n':
		_, _ = br.Discard(2)
		return nil
	case len(b) < 2:
		return errors.New("read response body: unexpected EOF reading trailer")
	case err != nil:
		return fmt.Errorf("read response body: %w", err)
	}
	// Where net/http's seeUpcomingDoubleCRLF looks for the end of the section; each byte is looked
	// at once, whatever the origin's pace.
	for scanned := 0; ; {
		b, _ := br.Peek(br.Buffered())
		if bytes.Contains(b[max(scanned-3, 0):], []byte("\r\n\r\n")) {
			break
		}
		scanned = len(b)
		if len(b) >= br.Size() {
			return errors.New("read response body: trailer section longer than the read buffer")
		}
		if err := c.waitOrigin(); err != nil {
			return err
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return fmt.Errorf("read response body: reading trailer: %w", noEOF(err))
		}
	}
	hdr, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil {
		return fmt.Errorf("read response body: reading trailer: %w", noEOF(err))
	}
	for _, k := range slices.Sorted(maps.Keys(hdr)) {
		if hopHeaders[k] || k == "Content-Length" || k == "Host" {
			continue
		}
		for _, v := range hdr[k] {
			b := append(c.scratch[:0], k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
			c.scratch = b
			_, _ = c.bw.Write(b)
		}
	}
	return nil
}

// waitOrigin flushes what the client is owed before the edge waits for the origin, so that
// bodies stream. A failure is the client's (errClientGone).
func (c *h1Conn) waitOrigin() error {
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("%w: %v", errClientGone, err)
	}
	return nil
}

// readChunkLine reads a chunk-size line as net/http's readChunkLine does: it ends in CRLF, has
// no other CR, and is shorter than maxChunkLineLength. It returns the line without its CRLF.
func (c *h1Conn) readChunkLine(br *bufio.Reader) ([]byte, error) {
	if b, _ := br.Peek(br.Buffered()); bytes.IndexByte(b, '\n') < 0 {
		if err := c.waitOrigin(); err != nil {
			return nil, err
		}
	}
	line, err := br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, errors.New("read response body: chunk-size line too long")
	case err != nil:
		return nil, fmt.Errorf("read response body: %w", noEOF(err))
	}
	switch i := bytes.IndexByte(line, '\r'); {
	case i < 0:
		return nil, errors.New("read response body: chunk-size line ends with a bare LF")
	case i != len(line)-2:
		return nil, errors.New("read response body: CR inside a chunk-size line")
	}
	line = line[:len(line)-2]
	if len(line) >= maxChunkLineLength {
		return nil, errors.New("read response body: chunk-size line too long")
	}
	return line, nil
}

// readChunkEnd reads the CRLF after a chunk's data: exactly those two bytes, as net/http does.
func (c *h1Conn) readChunkEnd(br *bufio.Reader) error {
	if br.Buffered() < 2 {
		if err := c.waitOrigin(); err != nil {
			return err
		}
	}
	b, err := br.Peek(2)
	if err != nil {
		return fmt.Errorf("read response body: %w", noEOF(err))
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errors.New("read response body: chunk data not followed by CRLF")
	}
	_, _ = br.Discard(2)
	return nil
}

// parseChunkSize parses a chunk-size line (without its CRLF) as net/http does: trailing SP and
// HTAB trimmed, then the extensions cut off at the first ';' (their bytes are not looked at), and
// 1 to 16 hex digits left.
func parseChunkSize(line []byte) (uint64, error) {
	for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
		line = line[:len(line)-1]
	}
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	if len(line) == 0 {
		return 0, errors.New("empty chunk size")
	}
	if len(line) > 16 {
		return 0, errors.New("chunk size of more than 16 hex digits")
	}
	var n uint64
	for _, ch := range line {
		var v byte
		switch {
		case '0' <= ch && ch <= '9':
			v = ch - '0'
		case 'a' <= ch && ch <= 'f':
			v = ch - 'a' + 10
		case 'A' <= ch && ch <= 'F':
			v = ch - 'A' + 10
		default:
			return 0, fmt.Errorf("invalid byte %q in chunk size", ch)
		}
		n = n<<4 | uint64(v)
	}
	return n, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// armWatch starts the watch timer for an exchange on oc.
func (c *h1Conn) armWatch(oc *leanConn) {
	c.inflight.Store(oc)
	c.watchMu.Lock()
	c.watchStop = false
	c.watchMu.Unlock()
	c.watchTimer.Reset(h1WatchDelay)
}

// disarmWatch ends the watch of an exchange: the timer is stopped, or the watcher's read is
// interrupted and waited for, so that the connection is read by this goroutine only.
func (c *h1Conn) disarmWatch() {
	if c.inflight.Swap(nil) == nil {
		return // not armed
	}
	if c.watchTimer.Stop() {
		return
	}
	c.watchMu.Lock()
	c.watchStop = true
	if c.watchRead {
		_ = c.tc.SetReadDeadline(aLongTimeAgo)
	}
	c.watchMu.Unlock()
	<-c.watchDone
	c.deadlineSet = time.Time{} // readHead sets the read deadline again
}

// watch runs when the origin has not answered within h1WatchDelay: it reads from the client (one
// byte, kept for the next request) and, when the client closed or reset the connection, aborts
// the origin exchange.
func (c *h1Conn) watch() {
	defer func() { c.watchDone <- struct{}{} }()
	c.watchMu.Lock()
	if c.watchStop {
		c.watchMu.Unlock()
		return
	}
	_ = c.tc.SetReadDeadline(time.Time{}) // before watchRead: disarmWatch's deadline must win
	c.watchRead = true
	c.watchMu.Unlock()
	n, err := c.tc.Read(c.pending[:])
	c.watchMu.Lock()
	c.watchRead = false
	c.watchMu.Unlock()
	switch {
	case n > 0:
		c.hasPending = true
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		c.clientGone.Store(true)
		if oc := c.inflight.Load(); oc != nil {
			_ = oc.conn.SetDeadline(aLongTimeAgo)
		}
	}
}
