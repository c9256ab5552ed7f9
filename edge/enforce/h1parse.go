package enforce

import (
	"bytes"
)

// The fast HTTP/1.1 path (h1.go) parses requests itself, and only a strict subset of HTTP/1.1:
// whatever falls outside it is not refused here but handed over, with the bytes already read, to
// net/http for the rest of the connection's life (see h1.go), which then accepts or refuses it
// as it always did. The subset is therefore chosen so that every request it accepts is one that
// net/http's server accepts too and reads the same way (method, target, Host, headers, body
// framing); FuzzParseRequestAgreesWithNetHTTP checks this. The subset:
//
//   - request line: a token method, one space, an origin-form target ("/" then only unreserved,
//     sub-delims, ":", "@", "/", "?" and valid %XX), one space, exactly "HTTP/1.1", CRLF;
//   - header lines: a token name, ":", a value of HTAB, SP, visible ASCII and obs-text (no CTL, no
//     DEL), CRLF; no obs-fold, no bare CR or LF anywhere; at most h1MaxHeaders lines; the whole
//     block within the connection's read buffer;
//   - exactly one Host, of letters, digits, '.', '-' and an optional ":port";
//   - at most one Content-Length, 1 to 18 digits; no Transfer-Encoding, Expect or Upgrade header.
//
// Some requests are refused outright (parseReject: 400 and the connection closed) rather than
// handed over, because they are the raw material of request smuggling and net/http would accept
// some of them: Content-Length together with Transfer-Encoding (net/http lets chunked win),
// several differing Content-Lengths, obs-fold (net/http joins the lines), a CR not followed by
// LF, NUL or another control character in the request line or a header, a missing or repeated
// Host. Everything else outside the subset (HTTP/1.0, absolute-form and asterisk-form targets,
// chunked bodies, 100-continue, protocol upgrades, bare LF line ends, odd spacing, an invalid
// Content-Length, identical repeated Content-Lengths, CONNECT) goes to net/http.

// h1MaxHeaders bounds the header lines of a request on the fast path.
const h1MaxHeaders = 100

// parseResult says what parseRequest made of the buffered bytes.
type parseResult int

const (
	parseOK       parseResult = iota // a complete request head in the subset
	parseNeedMore                    // so far in the subset, the head is not complete
	parseHandoff                     // outside the subset: net/http decides
	// parseReject: a request the edge refuses itself (400, connection closed), also where
	// net/http would be lenient: Content-Length with Transfer-Encoding, differing
	// Content-Lengths, obs-fold, control characters (CR, NUL, ...) in the head, a missing or
	// repeated Host.
	parseReject
)

// hdrField is one header line of a request or response, as slices of the read buffer.
type hdrField struct {
	name, value []byte
	// drop: not forwarded (hop-by-hop, listed in Connection, set by the edge, or framing).
	drop bool
}

// h1Request is a parsed request head; its slices point into the connection's read buffer and
// are valid until the request is consumed.
type h1Request struct {
	method   []byte
	target   []byte // origin-form, as sent
	path     []byte // target up to '?'
	query    []byte // after '?', without it
	hasQuery bool   // the target has a '?' (possibly with an empty query)
	host     []byte
	// contentLength is the body's length (0 without Content-Length).
	contentLength int64
	hasLength     bool
	// close: the client sent Connection: close.
	close bool
	// teTrailers: the client sent TE with "trailers", forwarded as "Te: trailers".
	teTrailers bool
	// pragmaNoCache: net/http adds Cache-Control: no-cache for Pragma: no-cache without
	// Cache-Control (fixPragmaCacheControl); the fast path forwards the same.
	pragmaNoCache bool
	fields        []hdrField
	// headLen is the length of the request head, final CRLF included.
	headLen int
}

// tcharTable marks RFC 9110 token characters.
var tcharTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// targetTable marks the bytes the fast path accepts in a request target, besides '%' (which
// must start a valid %XX): unreserved, sub-delims, ':', '@', '/', '?'.
var targetTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._~!$&'()*+,;=:@/?" {
		t[c] = true
	}
	return t
}()

// valueTable marks the bytes of a header value: HTAB, SP, visible ASCII, obs-text.
var valueTable = func() (t [256]bool) {
	t['\t'] = true
	for c := 0x20; c < 0x7f; c++ {
		t[c] = true
	}
	for c := 0x80; c <= 0xff; c++ {
		t[c] = true
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// parseRequest parses the request head at the start of b into req (reusing its fields slice).
// full says that b is all the buffer can hold: a head that does not end within it is handed
// over.
func parseRequest(b []byte, req *h1Request, full bool) parseResult {
	fields := req.fields[:0]
	*req = h1Request{fields: fields}
	line, rest, res := nextLine(b, full)
	if res != parseOK {
		return res
	}
	if hasCTL(line) {
		return parseReject
	}
	handoff := !parseRequestLine(line, req)
	off := len(b) - len(rest)
	hosts, lengths, te := 0, 0, false
	var cacheControl bool
	for {
		line, rest, res = nextLine(b[off:], full)
		if res != parseOK {
			return res
		}
		off = len(b) - len(rest)
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return parseReject // obs-fold
		}
		colon := bytes.IndexByte(line, ':')
		name, value := line, []byte(nil)
		if colon >= 0 {
			name, value = line[:colon], line[colon+1:]
		}
		for _, c := range name {
			if c < 0x20 || c == 0x7f {
				return parseReject
			}
		}
		for _, c := range value {
			if !valueTable[c] {
				return parseReject // a control character (the parser saw no CR or LF here)
			}
		}
		if colon <= 0 {
			handoff = true // no name or no colon: net/http decides
			continue
		}
		// Past h1MaxHeaders lines, net/http decides too; but the lines are still looked at below,
		// so that smuggling material after many lines is refused as it is before them.
		over := len(req.fields) == h1MaxHeaders
		if over {
			handoff = true
		}
		for _, c := range name {
			if !tcharTable[c] {
				handoff = true // net/http refuses it
			}
		}
		value = trimOWS(value)
		f := hdrField{name: name, value: value}
		switch {
		case asciiEqualFold(name, "Host"):
			hosts++
			if !validFastHost(value) {
				handoff = true
			}
			req.host = value
			f.drop = true
		case asciiEqualFold(name, "Content-Length"):
			lengths++
			n, ok := parseLength(value)
			switch {
			case lengths > 1 && (!ok || n != req.contentLength):
				return parseReject // differing Content-Lengths
			case lengths > 1 || !ok:
				handoff = true // identical repeats, or a length net/http may refuse
			}
			req.contentLength, req.hasLength = n, true
			f.drop = true
		case asciiEqualFold(name, "Transfer-Encoding"):
			te = true
		case asciiEqualFold(name, "Expect"), asciiEqualFold(name, "Upgrade"):
			handoff = true
		case asciiEqualFold(name, "Connection"):
			if hasToken(value, "close") {
				req.close = true
			}
			f.drop = true
		case asciiEqualFold(name, "Te"):
			if hasToken(value, "trailers") {
				req.teTrailers = true
			}
			f.drop = true
		case asciiEqualFold(name, "Pragma"):
			// net/http looks at the first Pragma line only.
			if !seenField(req.fields, "Pragma") && string(value) == "no-cache" {
				req.pragmaNoCache = true
			}
		case asciiEqualFold(name, "Cache-Control"):
			cacheControl = true
		}
		if !f.drop && (isHopByHop(name) || isReservedBytes(name) || isForwardingBytes(name)) {
			f.drop = true
		}
		if !over {
			req.fields = append(req.fields, f)
		}
	}
	switch {
	case hosts > 1, hosts == 0 && !handoff, te && lengths > 0:
		return parseReject
	case handoff, te:
		return parseHandoff
	}
	if cacheControl {
		req.pragmaNoCache = false
	}
	// Headers the client listed in Connection are hop-by-hop too.
	for i := range req.fields {
		f := &req.fields[i]
		if !asciiEqualFold(f.name, "Connection") {
			continue
		}
		for tok := range tokens(f.value) {
			for j := range req.fields {
				if asciiEqualFold(req.fields[j].name, tok) {
					req.fields[j].drop = true
				}
			}
			if asciiEqualFold(tok, "Cache-Control") {
				req.pragmaNoCache = false // net/http adds it, then it is dropped as listed
			}
		}
	}
	req.headLen = off
	return parseOK
}

// hasCTL reports whether b holds a control character other than HTAB, or DEL.
func hasCTL(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return true
		}
	}
	return false
}

// seenField reports whether fields holds a field named name (ASCII case-insensitively).
func seenField(fields []hdrField, name string) bool {
	for i := range fields {
		if asciiEqualFold(fields[i].name, name) {
			return true
		}
	}
	return false
}

// nextLine returns the line at the start of b (without its line end) and what follows it. A CR
// not followed by LF is refused; a bare LF (which net/http accepts) is handed over; a line that
// does not end within b needs more bytes, or is handed over when b is all the buffer holds.
func nextLine(b []byte, full bool) (line, rest []byte, res parseResult) {
	i := bytes.IndexByte(b, '\n')
	end := b
	if i >= 0 {
		end = b[:i]
	}
	if j := bytes.IndexByte(end, '\r'); j >= 0 && j != i-1 && (i >= 0 || j != len(b)-1) {
		return nil, nil, parseReject // a bare CR
	}
	if i < 0 {
		if full {
			return nil, nil, parseHandoff
		}
		return nil, nil, parseNeedMore
	}
	if i == 0 || b[i-1] != '\r' {
		return nil, nil, parseHandoff // bare LF
	}
	return b[:i-1], b[i+1:], parseOK
}

// parseRequestLine parses "METHOD SP origin-form SP HTTP/1.1".
func parseRequestLine(line []byte, req *h1Request) bool {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return false
	}
	method := line[:sp]
	for _, c := range method {
		if !tcharTable[c] {
			return false
		}
	}
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return false
	}
	target, proto := rest[:sp], rest[sp+1:]
	if string(proto) != "HTTP/1.1" || target[0] != '/' {
		return false
	}
	// "//x" would be taken by url.ParseRequestURI as an authority; leave it to net/http.
	if len(target) > 1 && target[1] == '/' {
		return false
	}
	q := -1
	for i := 0; i < len(target); i++ {
		c := target[i]
		switch {
		case c == '%':
			if i+2 >= len(target) || !isHex(target[i+1]) || !isHex(target[i+2]) {
				return false
			}
			i += 2
		case !targetTable[c]:
			return false
		case c == '?' && q < 0:
			q = i
		}
	}
	req.method, req.target = method, target
	if q >= 0 {
		req.path, req.query, req.hasQuery = target[:q], target[q+1:], true
	} else {
		req.path = target
	}
	return true
}

// validFastHost reports whether h is a Host value of the subset: letters, digits, '.', '-' and
// an optional ":port" of digits.
func validFastHost(h []byte) bool {
	if len(h) == 0 {
		return false
	}
	for i, c := range h {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '-':
		case c == ':':
			for _, d := range h[i+1:] {
				if d < '0' || d > '9' {
					return false
				}
			}
			return i > 0
		default:
			return false
		}
	}
	return true
}

// parseLength parses a Content-Length value of 1 to 18 digits.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// trimOWS trims SP and HTAB at both ends.
func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// tokens yields the comma-separated elements of a header value, trimmed, non-empty.
func tokens(v []byte) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(v) > 0 {
			var tok []byte
			if i := bytes.IndexByte(v, ','); i >= 0 {
				tok, v = v[:i], v[i+1:]
			} else {
				tok, v = v, nil
			}
			if tok = trimOWS(tok); len(tok) > 0 && !yield(tok) {
				return
			}
		}
	}
}

// hasToken reports whether the comma-separated list v holds tok (ASCII case-insensitively).
func hasToken(v []byte, tok string) bool {
	for t := range tokens(v) {
		if asciiEqualFold(t, tok) {
			return true
		}
	}
	return false
}

// asciiEqualFold reports whether a and b are equal, ignoring ASCII case.
func asciiEqualFold[T ~string | ~[]byte](a []byte, b T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// isHopByHop reports whether the header name is one of hopHeaders as net/http would key it
// (canonical form: '_' is not '-' here).
func isHopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return asciiEqualFold(name, "Te")
	case 7:
		return asciiEqualFold(name, "Trailer") || asciiEqualFold(name, "Upgrade")
	case 10:
		return asciiEqualFold(name, "Connection") || asciiEqualFold(name, "Keep-Alive")
	case 16:
		return asciiEqualFold(name, "Proxy-Connection")
	case 17:
		return asciiEqualFold(name, "Transfer-Encoding")
	case 18:
		return asciiEqualFold(name, "Proxy-Authenticate")
	case 19:
		return asciiEqualFold(name, "Proxy-Authorization")
	}
	return false
}

// isReservedBytes is isReserved for a name in the read buffer.
func isReservedBytes(name []byte) bool {
	if len(name) < len(hClientCert) || len(name) > maxReservedNameLen {
		return false
	}
	var buf [maxReservedNameLen]byte
	return isReserved(string(append(buf[:0], name...)))
}

// isForwardingBytes is isForwarding for a name in the read buffer, without allocating.
func isForwardingBytes(name []byte) bool {
	norm := func(c byte) byte {
		switch {
		case 'A' <= c && c <= 'Z':
			return c + 'a' - 'A'
		case c == '_':
			return '-'
		}
		return c
	}
	eq := func(s string) bool {
		if len(name) < len(s) {
			return false
		}
		for i := 0; i < len(s); i++ {
			if norm(name[i]) != s[i] {
				return false
			}
		}
		return true
	}
	switch {
	case eq("x-forwarded-"):
		return true
	case len(name) == len("x-real-ip") && eq("x-real-ip"), len(name) == len("forwarded") && eq("forwarded"):
		return true
	}
	return false
}

// appendCanonicalKey appends name in net/http's canonical form (textproto.CanonicalMIMEHeaderKey
// of a valid token): upper case at the start and after '-', lower case elsewhere.
func appendCanonicalKey(dst, name []byte) []byte {
	upper := true
	for _, c := range name {
		switch {
		case upper && 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case !upper && 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		dst = append(dst, c)
		upper = c == '-'
	}
	return dst
}
