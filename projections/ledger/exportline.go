package ledger

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
)

// An export line is read by a strict JSON reader (see "Export format"): the verifier must read
// exactly what every other JSON reader (jq, Python, JavaScript) reads, or a line could show them
// one event and have the verifier check another. So a line is refused unless it is one JSON
// object (RFC 8259: no trailing commas or text, no control characters in strings, valid UTF-8,
// no lone surrogate escapes) whose keys, at every level the verifier reads (the line, "result",
// the event, and the Any of its data), are exactly the known names, in their exact case, each at
// most once; whose values have the type protojson gives them (no null); and whose base64 data,
// times and numbers are in their canonical form (the one form that gives their value).

// lineParser reads one export line.
type lineParser struct {
	b []byte
	i int
}

// errorf returns an error of the line's JSON at the current byte.
func (p *lineParser) errorf(format string, a ...any) error {
	return fmt.Errorf("%s (at byte %d)", fmt.Sprintf(format, a...), min(p.i, len(p.b))+1)
}

// ws skips JSON whitespace (space, tab, line feed, carriage return: nothing else).
func (p *lineParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// peek returns the next byte after whitespace (0 at the end).
func (p *lineParser) peek() byte {
	p.ws()
	if p.i < len(p.b) {
		return p.b[p.i]
	}
	return 0
}

// strClass marks the bytes a string cannot hold as they are: '"' and '\\' end or escape, control
// characters must be escaped, and bytes from 0x80 start UTF-8 sequences that must be valid.
var strClass = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c < 0x20 || c == '"' || c == '\\' || c >= 0x80
	}
	return t
}()

// str reads a JSON string. Its value aliases the line unless the string has escapes.
func (p *lineParser) str() ([]byte, error) {
	if p.peek() != '"' {
		return nil, p.errorf("want a string")
	}
	p.i++
	start := p.i
	var out []byte // the value so far, once an escape was met
	for {
		for p.i < len(p.b) && !strClass[p.b[p.i]] {
			p.i++
		}
		if p.i >= len(p.b) {
			return nil, p.errorf("unterminated string")
		}
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			if out == nil {
				return p.b[start : p.i-1], nil
			}
			return append(out, p.b[start:p.i-1]...), nil
		case c < 0x20:
			return nil, p.errorf("control character %#02x in a string (JSON wants it escaped)", c)
		case c >= 0x80:
			r, n := utf8.DecodeRune(p.b[p.i:])
			if r == utf8.RuneError && n <= 1 {
				return nil, p.errorf("invalid UTF-8 in a string")
			}
			p.i += n
		default: // '\\'
			if out == nil {
				out = make([]byte, 0, p.i-start+16)
			}
			out = append(out, p.b[start:p.i]...)
			var err error
			if out, err = p.escape(out); err != nil {
				return nil, err
			}
			start = p.i
		}
	}
}

// escape reads the escape at p.i (a backslash) and appends its character to out.
func (p *lineParser) escape(out []byte) ([]byte, error) {
	if p.i+1 >= len(p.b) {
		return nil, p.errorf("unterminated string")
	}
	c := p.b[p.i+1]
	p.i += 2
	switch c {
	case '"', '\\', '/':
		return append(out, c), nil
	case 'b':
		return append(out, '\b'), nil
	case 'f':
		return append(out, '\f'), nil
	case 'n':
		return append(out, '\n'), nil
	case 'r':
		return append(out, '\r'), nil
	case 't':
		return append(out, '\t'), nil
	case 'u':
		r, ok := p.hex4()
		if !ok {
			return nil, p.errorf(`invalid \u escape`)
		}
		if utf16.IsSurrogate(r) {
			// Only a high surrogate followed by an escaped low one is a character; readers
			// differ on anything else (some replace it, some keep it, some refuse the line).
			var r2 rune = -1
			if r < 0xDC00 && p.i+1 < len(p.b) && p.b[p.i] == '\\' && p.b[p.i+1] == 'u' {
				p.i += 2
				if r2, ok = p.hex4(); !ok {
					return nil, p.errorf(`invalid \u escape`)
				}
			}
			if r = utf16.DecodeRune(r, r2); r == utf8.RuneError {
				return nil, p.errorf(`a \u escape of a lone surrogate`)
			}
		}
		return utf8.AppendRune(out, r), nil
	}
	return nil, p.errorf("invalid escape \\%c", c)
}

// hex4 reads the four hex digits of a \u escape.
func (p *lineParser) hex4() (rune, bool) {
	if p.i+4 > len(p.b) {
		return 0, false
	}
	var r rune
	for _, c := range p.b[p.i : p.i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	p.i += 4
	return r, true
}

// number reads a JSON number and returns its text.
func (p *lineParser) number() ([]byte, error) {
	p.ws()
	start := p.i
	digits := func() int {
		n := 0
		for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	if p.i < len(p.b) && p.b[p.i] == '-' {
		p.i++
	}
	if p.i < len(p.b) && p.b[p.i] == '0' {
		p.i++
	} else if digits() == 0 {
		return nil, p.errorf("want a value")
	}
	if p.i < len(p.b) && p.b[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return nil, p.errorf("invalid number")
		}
	}
	if p.i < len(p.b) && (p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		p.i++
		if p.i < len(p.b) && (p.b[p.i] == '+' || p.b[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return nil, p.errorf("invalid number")
		}
	}
	return p.b[start:p.i], nil
}

// maxJSONSafe is the largest integer every JSON reader reads exactly (JavaScript's numbers are
// doubles).
const maxJSONSafe = 1<<53 - 1

// uint reads a uint64: a string of decimal digits as protojson writes it, or a number up to
// maxJSONSafe; either without leading zeros.
func (p *lineParser) uint() (uint64, error) {
	var s []byte
	var err error
	quoted := p.peek() == '"'
	if quoted {
		s, err = p.str()
	} else {
		s, err = p.number()
	}
	if err != nil {
		return 0, err
	}
	v, perr := strconv.ParseUint(string(s), 10, 64)
	if perr != nil || (len(s) > 1 && s[0] == '0') {
		return 0, errors.New("want an unsigned integer in decimal without leading zeros")
	}
	if !quoted && v > maxJSONSafe {
		return 0, fmt.Errorf("%d as a JSON number: above 2^53-1, not every JSON reader reads it exactly (write it as a string)", v)
	}
	return v, nil
}

// skip reads any JSON value (the content of an "error" line, which the verifier only prints).
func (p *lineParser) skip(depth int) error {
	if depth > 1000 {
		return p.errorf("nested too deeply")
	}
	switch c := p.peek(); c {
	case '"':
		_, err := p.str()
		return err
	case '{', '[':
		p.i++
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		if p.peek() == end {
			p.i++
			return nil
		}
		for {
			if c == '{' {
				if _, err := p.str(); err != nil {
					return err
				}
				if p.peek() != ':' {
					return p.errorf("want ':'")
				}
				p.i++
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			switch p.peek() {
			case ',':
				p.i++
			case end:
				p.i++
				return nil
			default:
				return p.errorf("want ',' or '%c'", end)
			}
		}
	case 't', 'f', 'n':
		for _, lit := range []string{"true", "false", "null"} {
			if len(p.b)-p.i >= len(lit) && string(p.b[p.i:p.i+len(lit)]) == lit {
				p.i += len(lit)
				return nil
			}
		}
		return p.errorf("want a value")
	}
	_, err := p.number()
	return err
}

// object starts reading an object; member then reads its members' keys one by one.
func (p *lineParser) object(what string) error {
	if p.peek() != '{' {
		return p.errorf("%s: want a JSON object", what)
	}
	p.i++
	return nil
}

// member reads the next member's key and the colon after it; done is set at the object's end. n
// is how many members were read before.
func (p *lineParser) member(n int) (key []byte, done bool, err error) {
	switch c := p.peek(); {
	case c == '}': // (after a ',', the '}' is not a key: refused below)
		p.i++
		return nil, true, nil
	case n > 0:
		if c != ',' {
			return nil, false, p.errorf("want ',' or '}'")
		}
		p.i++
	}
	if p.peek() != '"' {
		return nil, false, p.errorf("want a key (a string)")
	}
	if key, err = p.str(); err != nil {
		return nil, false, err
	}
	if p.peek() != ':' {
		return nil, false, p.errorf("want ':' after key %s", quoteKey(key))
	}
	p.i++
	return key, false, nil
}

// quoteKey quotes a key for a message, shortened.
func quoteKey(k []byte) string {
	if len(k) > 40 {
		return strconv.Quote(string(k[:40])) + "..."
	}
	return strconv.Quote(string(k))
}

// Keys of export lines, as bits of a set (to refuse a key given twice).
const (
	kPosition uint32 = 1 << iota
	kRevision
	kType
	kTime
	kActor
	kRequestID
	kRequestIDOld
	kData
	kHash
	kTenant
	kTenantID
	kTenantIDOld
	kEvent
	kCheckpoint
	kResult
	kError

	eventKeys = kPosition | kRevision | kType | kTime | kActor | kRequestID | kRequestIDOld | kData | kHash
	itemKeys  = eventKeys | kTenantID | kTenantIDOld | kEvent | kCheckpoint // an ExportEventsResponse, or a bare event
	lineKeys  = itemKeys | kTenant | kResult | kError
)

func keyBit(k []byte) uint32 {
	switch string(k) {
	case "position":
		return kPosition
	case "revision":
		return kRevision
	case "type":
		return kType
	case "time":
		return kTime
	case "actor":
		return kActor
	case "requestId":
		return kRequestID
	case "request_id":
		return kRequestIDOld
	case "data":
		return kData
	case "hash":
		return kHash
	case "tenant":
		return kTenant
	case "tenantId":
		return kTenantID
	case "tenant_id":
		return kTenantIDOld
	case "event":
		return kEvent
	case "checkpoint":
		return kCheckpoint
	case "result":
		return kResult
	case "error":
		return kError
	}
	return 0
}

// rawEvent is an event as a line gives it.
type rawEvent struct {
	keys                     uint32
	pos, rev                 uint64
	typ, tm, actor, reqID    []byte
	data                     []byte
	hash                     [32]byte
	dataErr                  error // an expanded Any
	timeVal                  time.Time
	hasHash, hasData, hasReq bool
}

// eventField reads the value of an event's field.
func (p *lineParser) eventField(bit uint32, ev *rawEvent) error {
	var err error
	switch bit {
	case kPosition:
		ev.pos, err = p.uint()
	case kRevision:
		ev.rev, err = p.uint()
	case kType:
		ev.typ, err = p.str()
	case kActor:
		ev.actor, err = p.str()
	case kRequestID, kRequestIDOld:
		ev.reqID, err = p.str()
		ev.hasReq = true
	case kTime:
		if ev.tm, err = p.str(); err == nil {
			ev.timeVal, err = parseExportTime(ev.tm)
		}
	case kHash:
		var h []byte
		if h, err = p.str(); err == nil {
			if len(h) != 64 {
				return fmt.Errorf("%q is not 64 lower-case hex digits", h)
			}
			if _, err = hexDecode(ev.hash[:], string(h)); err != nil {
				return fmt.Errorf("%q is not 64 lower-case hex digits", h)
			}
			ev.hasHash = true
		}
	case kData:
		ev.hasData = true
		ev.data, err = p.data(ev)
	}
	return err
}

// bytesValueURL is the type URL of the Any of an event's data as ExportEvents sends it.
const bytesValueURL = "type.googleapis.com/google.protobuf.BytesValue"

// data reads an event's data: standard base64, or the protojson form of an Any holding the bytes
// as a google.protobuf.BytesValue ({"@type":"type.googleapis.com/google.protobuf.BytesValue",
// "value":"<base64>"}).
func (p *lineParser) data(ev *rawEvent) ([]byte, error) {
	if p.peek() == '"' {
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return decodeBase64(s)
	}
	if err := p.object("data"); err != nil {
		return nil, errors.New("want a base64 string or an Any")
	}
	var haveType, haveValue bool
	var value, typeURL []byte
	for n := 0; ; n++ {
		k, done, err := p.member(n)
		if err != nil {
			return nil, err
		}
		if done {
			break
		}
		switch string(k) {
		case "@type":
			if haveType {
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			haveType = true
			if typeURL, err = p.str(); err != nil {
				return nil, err
			}
		case "value":
			if haveValue {
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			haveValue = true
			if p.peek() != '"' {
				ev.dataErr = errors.New("an expanded Any: the exact bytes are not in the export")
				if err := p.skip(0); err != nil {
					return nil, err
				}
				continue
			}
			if value, err = p.str(); err != nil {
				return nil, err
			}
		default:
			// An Any expanded into its message's fields: its bytes are not in the line. The
			// rest is read only to check that it is JSON.
			ev.dataErr = fmt.Errorf("an expanded Any (key %s): the exact bytes are not in the export", quoteKey(k))
			if err := p.skip(0); err != nil {
				return nil, err
			}
		}
	}
	if ev.dataErr != nil {
		return nil, nil
	}
	if !haveType || !haveValue {
		return nil, errors.New(`an Any without "@type" and "value"`)
	}
	if string(typeURL) != bytesValueURL {
		// Its "value" is then another message's JSON (a StringValue's text, say), which protojson
		// and audit.RecordedEvent do not read as the event's bytes.
		return nil, fmt.Errorf("an Any of %s, not %s (the event's exact bytes)", quoteKey(typeURL), bytesValueURL)
	}
	return decodeBase64(value)
}

// decodeBase64 decodes standard base64 (padded) in its canonical form only: no line breaks, no
// bits set in the padding.
func decodeBase64(s []byte) ([]byte, error) {
	out := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Strict().Decode(out, s)
	if err != nil || base64.StdEncoding.EncodedLen(n) != len(s) {
		return nil, errors.New("not standard base64 in canonical form")
	}
	return out[:n], nil
}

// parseExportTime parses an event's time: RFC 3339 in UTC ("Z"), as WriteExport writes it
// (time.RFC3339Nano: no trailing zeros in the fraction) or as protojson writes a Timestamp (0, 3,
// 6 or 9 digits of fraction), within the range of the canonical encoding (CheckTime).
func parseExportTime(s []byte) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, string(s))
	if err != nil {
		return time.Time{}, err
	}
	var buf [40]byte
	if string(t.UTC().AppendFormat(buf[:0], time.RFC3339Nano)) != string(s) &&
		string(appendProtoTime(buf[:0], t.UTC())) != string(s) {
		return time.Time{}, fmt.Errorf("%q is not in the form an export gives times (UTC, \"Z\", no extra digits)", s)
	}
	if err := CheckTime(t); err != nil {
		return time.Time{}, err
	}
	return t, nil
}

// appendProtoTime appends t (UTC) as protojson writes a google.protobuf.Timestamp.
func appendProtoTime(dst []byte, t time.Time) []byte {
	dst = t.AppendFormat(dst, "2006-01-02T15:04:05")
	ns := t.Nanosecond()
	digits := 9
	switch {
	case ns == 0:
		digits = 0
	case ns%1e6 == 0:
		digits, ns = 3, ns/1e6
	case ns%1e3 == 0:
		digits, ns = 6, ns/1e3
	}
	if digits > 0 {
		dst = append(dst, '.')
		var f [9]byte
		for i := digits - 1; i >= 0; i-- {
			f[i] = byte('0' + ns%10)
			ns /= 10
		}
		dst = append(dst, f[:digits]...)
	}
	return append(dst, 'Z')
}

// lineItem is what an object holding an item (a line, or its "result") gives.
type lineItem struct {
	keys       uint32
	tenant     []byte // tenant, tenantId or tenant_id
	checkpoint []byte
	event      *rawEvent // "event", or the bare event in ev
	ev         rawEvent
	result     *lineItem
	errRaw     []byte
}

// items is how many items it holds: one for a well-formed line.
func (it *lineItem) items() int {
	n := 0
	for _, k := range []uint32{kTenant, kTenantID, kTenantIDOld, kEvent, kCheckpoint, kResult} {
		if it.keys&k != 0 {
			n++
		}
	}
	if it.keys&eventKeys != 0 {
		n++
	}
	return n
}

// readItem reads an object whose keys may be those of allowed; what prefixes its messages.
func (p *lineParser) readItem(it *lineItem, allowed uint32, what string) error {
	name := "the line"
	if what != "" {
		name = strings.TrimSuffix(what, ": ")
	}
	if err := p.object(name); err != nil {
		return err
	}
	for n := 0; ; n++ {
		k, done, err := p.member(n)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		bit := keyBit(k)
		if bit&allowed == 0 {
			return fmt.Errorf("%sunknown key %s", what, quoteKey(k))
		}
		if it.keys&bit != 0 {
			return fmt.Errorf("%sduplicate key %s", what, quoteKey(k))
		}
		it.keys |= bit
		switch bit {
		case kTenant, kTenantID, kTenantIDOld:
			it.tenant, err = p.str()
		case kCheckpoint:
			it.checkpoint, err = p.str()
		case kError:
			start := p.i
			err = p.skip(0)
			it.errRaw = p.b[start:p.i]
		case kResult:
			it.result = &lineItem{}
			err = p.readItem(it.result, itemKeys, `"result": `)
		case kEvent:
			it.event = &rawEvent{}
			err = p.readEvent(it.event)
		default:
			if err = p.eventField(bit, &it.ev); err != nil {
				err = fmt.Errorf("%s%s: %w", what, k, err)
			}
		}
		if err != nil {
			return err
		}
	}
}

// readEvent reads an "event" object.
func (p *lineParser) readEvent(ev *rawEvent) error {
	if err := p.object(`"event"`); err != nil {
		return err
	}
	for n := 0; ; n++ {
		k, done, err := p.member(n)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		bit := keyBit(k)
		if bit&eventKeys == 0 {
			return fmt.Errorf(`"event": unknown key %s`, quoteKey(k))
		}
		if ev.keys&bit != 0 {
			return fmt.Errorf(`"event": duplicate key %s`, quoteKey(k))
		}
		ev.keys |= bit
		if err := p.eventField(bit, ev); err != nil {
			return fmt.Errorf(`"event": %s: %w`, k, err)
		}
	}
}

// streamError is the problem of a line {"error":...}: the REST export ends with one when the
// export failed after it had sent lines (its value a google.rpc.Status in protojson), so the lines
// before it are a part of the history only. raw is the line's "error" value.
func streamError(raw []byte) error {
	const incomplete = "the export stream ended with an error, so the export is incomplete (export it again)"
	var st struct {
		Code    *int32 `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || st.Code == nil {
		return fmt.Errorf("%s: %s", incomplete, shorten(raw, 200))
	}
	return fmt.Errorf("%s: %s (code %d): %s", incomplete, codes.Code(*st.Code), *st.Code, shorten([]byte(st.Message), 500))
}

// shorten returns b as a string of at most n bytes (and "..."), for a message.
func shorten(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return strings.ToValidUTF8(string(b[:n]), "") + "..."
}

// parseLine parses one export line. tenant is needed for the canonical bytes of events.
func parseLine(b []byte, tenant string, e *entry) {
	p := lineParser{b: b}
	if p.peek() == 0 && p.i == len(b) {
		return // an empty line
	}
	var l lineItem
	if err := p.readItem(&l, lineKeys, ""); err != nil {
		e.err = err
		return
	}
	if p.peek() != 0 || p.i != len(b) {
		e.err = p.errorf("text after the JSON object")
		return
	}
	if l.keys&kError != 0 {
		e.err = streamError(l.errRaw)
		return
	}
	it := &l
	n := l.items()
	if l.result != nil {
		it = l.result
		n += it.items() - 1
	}
	if n > 1 {
		e.err = errors.New("more than one item (tenant, event, checkpoint) on one line")
		return
	}
	var ev *rawEvent
	switch {
	case it.keys&(kTenant|kTenantID|kTenantIDOld) != 0:
		e.kind, e.tenant = 't', string(it.tenant)
		return
	case it.keys&kCheckpoint != 0:
		e.kind, e.cp = 'c', SignedCheckpoint(it.checkpoint)
		return
	case it.event != nil:
		ev = it.event
	case it.keys&eventKeys != 0:
		ev = &it.ev
		ev.keys = it.keys & eventKeys
	default:
		e.err = errors.New("neither an event nor a checkpoint")
		return
	}
	e.kind, e.pos, e.rev = 'e', ev.pos, ev.rev
	switch {
	case tenant == "":
		e.err = errors.New("the tenant is not known (no tenant line or checkpoint first)")
	case ev.keys&kTime == 0:
		e.err = fmt.Errorf("event at position %d: no time", e.pos)
	case ev.keys&kRequestID != 0 && ev.keys&kRequestIDOld != 0:
		e.err = fmt.Errorf("event at position %d: both requestId and request_id", e.pos)
	case ev.dataErr != nil:
		e.err = fmt.Errorf("event at position %d: data: %v", e.pos, ev.dataErr)
	}
	if e.err != nil {
		return
	}
	e.hash, e.hasHash = ev.hash, ev.hasHash
	e.canonical = appendCanonical(nil, tenant, e.rev, e.pos, string(ev.typ), ev.timeVal.UnixNano(), string(ev.actor), string(ev.reqID), ev.data)
	e.leaf = LeafHash(e.canonical)
}

// blank reports whether a line holds only JSON whitespace.
func blank(b []byte) bool {
	p := lineParser{b: b}
	p.ws()
	return p.i == len(b)
}
