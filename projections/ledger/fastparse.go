package ledger

import (
	"bytes"
	"encoding/base64"
	"strconv"
	"time"
)

// parseEventFast parses an event line in the form WriteExport writes ({"event":{...}} with string
// values free of escapes) without reflection. It returns false when the line is in any other
// form; parseLine then uses encoding/json.
func parseEventFast(b []byte, tenant string, e *entry) bool {
	const prefix = `{"event":{`
	if tenant == "" || !bytes.HasPrefix(b, []byte(prefix)) || !bytes.HasSuffix(b, []byte("}}")) || bytes.IndexByte(b, '\\') >= 0 {
		return false
	}
	b = b[len(prefix) : len(b)-2]
	var typ, tm, actor, reqID, data, hash []byte
	var pos, rev uint64
	var havePos, haveRev bool
	for len(b) > 0 {
		if b[0] != '"' {
			return false
		}
		end := bytes.IndexByte(b[1:], '"')
		if end < 0 || len(b) < end+3 || b[end+2] != ':' {
			return false
		}
		key := b[1 : end+1]
		b = b[end+3:]
		var val []byte
		if len(b) > 0 && b[0] == '"' {
			end := bytes.IndexByte(b[1:], '"')
			if end < 0 {
				return false
			}
			val, b = b[1:end+1], b[end+2:]
		} else {
			end := bytes.IndexByte(b, ',')
			if end < 0 {
				end = len(b)
			}
			val, b = b[:end], b[end:]
		}
		if len(b) > 0 {
			if b[0] != ',' {
				return false
			}
			b = b[1:]
		}
		var err error
		switch string(key) {
		case "position":
			pos, err = strconv.ParseUint(string(val), 10, 64)
			havePos = true
		case "revision":
			rev, err = strconv.ParseUint(string(val), 10, 64)
			haveRev = true
		case "type":
			typ = val
		case "time":
			tm = val
		case "actor":
			actor = val
		case "requestId":
			reqID = val
		case "data":
			data = val
		case "hash":
			hash = val
		default:
			return false
		}
		if err != nil {
			return false
		}
	}
	if !havePos || !haveRev || tm == nil || len(hash) != 64 {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, string(tm))
	if err != nil {
		return false
	}
	if _, err := hexDecode(e.hash[:], string(hash)); err != nil {
		return false
	}
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(data)))
	n, err := base64.StdEncoding.Decode(raw, data)
	if err != nil {
		return false
	}
	e.kind, e.pos, e.rev, e.hasHash = 'e', pos, rev, true
	e.canonical = appendCanonical(nil, tenant, rev, pos, string(typ), t.UnixNano(), string(actor), string(reqID), raw[:n])
	e.leaf = LeafHash(e.canonical)
	return true
}
