package server

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The gateway's JSON decoder (protojson) names only the last field of a value it refuses, and says
// where it is as a line and column of the body. jsonPathAt turns that position back into the path
// of the field in the body, as the client wrote it: "mtls.mode", "rules[2].action",
// "requests[3].hostname.originUrl"; requestPath, into the path in the request that every
// violation gives: "hostname.mtls.mode", "policy.rules[2].action",
// "requests[3].hostname.origin_url".

// offsetAt returns the byte offset in b of line and column as protojson counts them (both from 1;
// the column in runes), or -1 when b has no such position. It takes time linear in b.
func offsetAt(b []byte, line, column int) int {
	if line < 1 || column < 1 {
		return -1
	}
	i := 0
	for l := 1; l < line; l++ {
		j := bytes.IndexByte(b[i:], '\n') // not string(b[i:]): a copy of the rest for each line
		if j < 0 {
			return -1
		}
		i += j + 1
	}
	for c := 1; c < column; c++ {
		if i >= len(b) || b[i] == '\n' {
			return -1
		}
		_, size := utf8.DecodeRune(b[i:])
		i += size
	}
	return i
}

// jsonPathAt returns the path, in the names the JSON text b uses, of the object member whose name
// or whose value starts at byte off of b, or of the array element that starts there: members are
// joined by dots, elements are given as [index]. It returns "" when nothing of b but its whole
// value starts at off, or when b is not valid JSON before off. It never reads past the value
// that starts at off, and goes no deeper than maxPathDepth.
func jsonPathAt(b []byte, off int) string {
	return joinPath(jsonPathSegments(b, off))
}

// jsonPathSegments is jsonPathAt's path as segments: ".name" for a member, "[index]" for an
// element; nil when jsonPathAt gives "".
func jsonPathSegments(b []byte, off int) []string {
	w := pathWalker{b: b, target: off}
	w.value(0)
	return w.found
}

// joinPath joins segments into a path: "mtls.mode", "rules[2].action".
func joinPath(segments []string) string {
	return strings.TrimPrefix(strings.Join(segments, ""), ".")
}

// maxPathDepth bounds the nesting jsonPathAt follows (encoding/json, which reads the body first,
// refuses more than 10,000 levels).
const maxPathDepth = 10_001

// maxPathName bounds what the path repeats of one member name, in bytes (a name is cut between
// runes).
const maxPathName = 64

// pathWalker walks a JSON text to the member or element at target, keeping the path to it.
type pathWalker struct {
	b      []byte
	i      int // the next byte to read
	target int
	path   []string // ".name" or "[index]" for each level entered
	found  []string
	done   bool // found, or stopped (not JSON, or past target)
}

// value reads the value at w.i, at the given depth.
func (w *pathWalker) value(depth int) {
	w.space()
	switch {
	case w.done:
		return
	case w.i >= len(w.b) || w.i > w.target || depth > maxPathDepth:
		w.done = true
		return
	case w.i == w.target:
		w.hit()
		return
	}
	switch w.b[w.i] {
	case '{':
		w.i++
		if w.space(); w.at('}') {
			w.i++
			return
		}
		for !w.done {
			w.space()
			start := w.i
			name, ok := w.str(true)
			if !ok {
				w.done = true
				return
			}
			if len(name) > maxPathName {
				// Cut between runes: the answer must be UTF-8 (protobuf cannot encode it otherwise).
				cut := maxPathName
				for !utf8.RuneStart(name[cut]) {
					cut--
				}
				name = name[:cut] + "..."
			}
			w.path = append(w.path, "."+name)
			if start == w.target {
				w.hit()
				return
			}
			if w.space(); !w.at(':') {
				w.done = true
				return
			}
			w.i++
			if w.value(depth + 1); w.done {
				return
			}
			w.path = w.path[:len(w.path)-1]
			if !w.next('}') {
				return
			}
		}
	case '[':
		w.i++
		if w.space(); w.at(']') {
			w.i++
			return
		}
		for k := 0; !w.done; k++ {
			w.path = append(w.path, "["+strconv.Itoa(k)+"]")
			if w.value(depth + 1); w.done {
				return
			}
			w.path = w.path[:len(w.path)-1]
			if !w.next(']') {
				return
			}
		}
	case '"':
		if _, ok := w.str(false); !ok {
			w.done = true
		}
	default: // a number, true, false or null
		for w.i < len(w.b) && !strings.ContainsRune(",:]} \t\r\n", rune(w.b[w.i])) {
			w.i++
		}
	}
}

// next reads what follows a member or an element: a comma (it returns true: another follows) or
// end (false: the object or array ends). Anything else stops the walk.
func (w *pathWalker) next(end byte) bool {
	w.space()
	switch {
	case w.at(','):
		w.i++
		return true
	case w.at(end):
		w.i++
	default:
		w.done = true
	}
	return false
}

// hit records the current path as the one found.
func (w *pathWalker) hit() {
	w.found = slices.Clone(w.path)
	w.done = true
}

// at reports whether the next byte is c.
func (w *pathWalker) at(c byte) bool { return w.i < len(w.b) && w.b[w.i] == c }

// space skips JSON white space.
func (w *pathWalker) space() {
	for w.i < len(w.b) && (w.b[w.i] == ' ' || w.b[w.i] == '\t' || w.b[w.i] == '\r' || w.b[w.i] == '\n') {
		w.i++
	}
}

// str reads the string at w.i and, when decode is set, returns it decoded.
func (w *pathWalker) str(decode bool) (string, bool) {
	if !w.at('"') {
		return "", false
	}
	start := w.i
	for w.i++; w.i < len(w.b); w.i++ {
		switch w.b[w.i] {
		case '\\':
			w.i++
		case '"':
			w.i++
			if !decode {
				return "", true
			}
			var s string
			if err := json.Unmarshal(w.b[start:w.i], &s); err != nil {
				return "", false
			}
			return s, true
		}
	}
	return "", false
}

// requestPath turns segments, a path in the body as jsonPathSegments gives it (the names the
// client wrote, JSON or proto), into the path in the request message that
// apistatus.Violation.Field gives: proto names, after the body's field when the body is one field
// of the request ("hostname.mtls.mode"). input is the request message; into is the message the
// body was decoded into, input itself (body "*") or the message of one of its fields. From the
// first name that is not a field (an unknown one), a map key, or a field of no message, the path
// goes on as the client wrote it. It returns "" when into is neither input nor the message of
// exactly one of its fields.
func requestPath(segments []string, input protoreflect.MessageDescriptor, into protoreflect.FullName) string {
	var b strings.Builder
	md := input
	if input.FullName() != into {
		var body protoreflect.FieldDescriptor
		fields := input.Fields()
		for i := range fields.Len() {
			if f := fields.Get(i); f.Message() != nil && f.Message().FullName() == into && !f.IsList() && !f.IsMap() {
				if body != nil {
					return "" // two fields of that message: which one is the body is not known
				}
				body = f
			}
		}
		if body == nil {
			return ""
		}
		b.WriteString(string(body.Name()))
		md = body.Message()
	}
	for _, seg := range segments {
		if md == nil || !strings.HasPrefix(seg, ".") {
			if b.Len() == 0 {
				seg = strings.TrimPrefix(seg, ".")
			}
			b.WriteString(seg)
			continue
		}
		name := seg[1:]
		f := md.Fields().ByJSONName(name)
		if f == nil {
			f = md.Fields().ByTextName(name) // protojson takes the proto name too
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		if f == nil {
			b.WriteString(name)
			md = nil
			continue
		}
		b.WriteString(string(f.Name()))
		md = nil
		if !f.IsMap() {
			md = f.Message() // a list's elements: its "[index]" segments pass as they are
		}
	}
	return b.String()
}
