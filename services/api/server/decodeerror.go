package server

import (
	"bytes"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"guestlist.dev/services/api/apistatus"
)

// The REST gateway reports a body or query it cannot decode as INVALID_ARGUMENT with the decoder's
// message only ("proto: (line 1:81): invalid value for enum field mode: \"ENFORCE\""). decodeError
// turns the messages it recognises into the API's usual answer: a google.rpc.BadRequest naming the
// field and the reason (for an enum, its values).
var (
	reProtoJSON  = regexp.MustCompile(`^proto:[\s\x{00a0}]*(syntax error[\s\x{00a0}]*)?\(line (\d+):(\d+)\):[\s\x{00a0}]*(.*)$`)
	reEnumValue  = regexp.MustCompile(`^invalid value for enum field (\w+): (.*)$`)
	reValue      = regexp.MustCompile(`^invalid value for (\w+) field (\w+): (.*)$`)
	reUnknown    = regexp.MustCompile(`^unknown field "?([^"]*)"?$`)
	reDuplicate  = regexp.MustCompile(`^duplicate field "?([^"]*)"?$`)
	reOneofSet   = regexp.MustCompile(`^error parsing "?([^",]*)"?, oneof ([\w.]+) is already set$`)
	reQueryField = regexp.MustCompile(`^parsing field "([\w.]+)": (.*)$`)
	reJSONSyntax = regexp.MustCompile(`^(invalid character|unexpected end of JSON input|unexpected EOF|syntax error)`)
)

// decodeError returns err with a BadRequest when err is an INVALID_ARGUMENT without details whose
// message is one the gateway's decoding gives; err itself otherwise. body is the request's body
// (nil if unknown): where the message gives a position, the position is counted from the body's
// start, and the violation names the field there by its path in the request, as every violation
// does (apistatus.Violation: proto names, "hostname.mtls.mode", "policy.rules[2].action"), or in
// the body when the request's message is not known; otherwise, by the field's name alone.
func decodeError(err error, body *bufferedBody) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument || len(st.Proto().GetDetails()) > 0 {
		return err
	}
	msg := st.Message()
	if msg == (&http.MaxBytesError{}).Error() {
		// The body went past MaxHTTPBodySize (limitBody's cap) while the gateway read it.
		return &runtime.HTTPStatusError{HTTPStatus: http.StatusRequestEntityTooLarge, Err: errBodyTooLarge}
	}
	where, path, syntax := "", "", false
	if m := reProtoJSON.FindStringSubmatch(msg); m != nil {
		// A syntax error of protojson's (text that encoding/json let through, such as a string
		// that is not UTF-8) says where in the body, not which field.
		var raw []byte
		if body != nil {
			raw = body.raw
		}
		var segments []string
		where, segments = position(raw, m[2], m[3])
		path = fieldPath(segments, body)
		syntax = m[1] != ""
		msg = m[4]
	}
	// field names the field of a violation: by its path in the body when known, else by name.
	field := func(name string) string {
		if path != "" {
			return path
		}
		return name
	}
	var v apistatus.Violation
	switch m := (struct{ enum, value, unknown, dup, oneof, query []string }{
		reEnumValue.FindStringSubmatch(msg), reValue.FindStringSubmatch(msg), reUnknown.FindStringSubmatch(msg),
		reDuplicate.FindStringSubmatch(msg), reOneofSet.FindStringSubmatch(msg), reQueryField.FindStringSubmatch(msg),
	}); {
	case m.enum != nil:
		v = apistatus.Violation{Field: field(m.enum[1]), Reason: fmt.Sprintf("%s is not a value of this field%s%s", m.enum[2], enumValues(m.enum[1]), where)}
	case m.value != nil:
		v = apistatus.Violation{Field: field(m.value[2]), Reason: fmt.Sprintf("%s is not a valid %s%s", m.value[3], m.value[1], where)}
	case m.unknown != nil:
		v = apistatus.Violation{Field: field(m.unknown[1]), Reason: "unknown field; field names are lowerCamelCase as in the API's JSON (e.g. originUrl)" + where}
	case m.dup != nil:
		v = apistatus.Violation{Field: field(m.dup[1]), Reason: "given twice" + where}
	case m.oneof != nil:
		v = apistatus.Violation{Field: field(m.oneof[1]), Reason: fmt.Sprintf("only one of %s may be given%s", oneofFields(m.oneof[2]), where)}
	case m.query != nil:
		reason := m.query[2]
		if strings.Contains(reason, "parsing time") {
			reason = "want an RFC 3339 time, e.g. 2026-11-30T12:00:00Z"
		}
		v = apistatus.Violation{Field: m.query[1], Reason: reason}
	case syntax || reJSONSyntax.MatchString(msg):
		v = apistatus.Violation{Field: "body", Reason: "not valid JSON: " + msg + where}
	default:
		return err
	}
	return apistatus.InvalidArgument(v)
}

// position turns protojson's line and column, counted in the value it decoded (the body without
// its leading white space), into " (body line L, column C)" counted in body, and the path in body
// of the member or element there (jsonPathAt). Without body, the position is protojson's and the
// path "".
func position(body []byte, line, column string) (where string, path []string) {
	where = fmt.Sprintf(" (body line %s, column %s)", line, column)
	l, err1 := strconv.Atoi(line)
	c, err2 := strconv.Atoi(column)
	if body == nil || err1 != nil || err2 != nil {
		return where, nil
	}
	value := bytes.TrimLeft(body, " \t\r\n")
	off := offsetAt(value, l, c)
	if off < 0 {
		return where, nil
	}
	off += len(body) - len(value)
	l = bytes.Count(body[:off], []byte("\n")) + 1
	c = utf8.RuneCount(body[bytes.LastIndexByte(body[:off], '\n')+1:off]) + 1
	return fmt.Sprintf(" (body line %d, column %d)", l, c), jsonPathSegments(body, off)
}

// fieldPath returns the path in the request of the field at segments, a path in body
// (requestPath), or the path in the body when the request's message or the message the body was
// decoded into is not known; "" without segments.
func fieldPath(segments []string, body *bufferedBody) string {
	if len(segments) == 0 {
		return ""
	}
	if body != nil {
		name := protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(body.method, "/"), "/", "."))
		if d, err := protoregistry.GlobalFiles.FindDescriptorByName(name); err == nil {
			if md, ok := d.(protoreflect.MethodDescriptor); ok {
				into := body.into
				if into == "" {
					into = patchBody(md.Input())
				}
				if p := requestPath(segments, md.Input(), into); into != "" && p != "" {
					return p
				}
			}
		}
	}
	return joinPath(segments)
}

// patchBody returns the full name of the message the gateway decodes a PATCH body into when the
// request has an update_mask (grpc-gateway's field mask feature: the body is the request's one
// other message field, "hostname" of UpdateHostnameRequest), "" otherwise. The gateway reads such
// a body through a copy (utilities.IOReaderFactory, to derive the mask from it), so the decoder
// never sees the bufferedBody and cannot record the message itself.
func patchBody(input protoreflect.MessageDescriptor) protoreflect.FullName {
	const fieldMask = "google.protobuf.FieldMask"
	var into protoreflect.FullName
	hasMask := false
	fields := input.Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.Message() == nil || f.IsList() || f.IsMap() {
			continue
		}
		if f.Message().FullName() == fieldMask {
			hasMask = true
			continue
		}
		if into != "" {
			return "" // two candidates: which one is the body is not known
		}
		into = f.Message().FullName()
	}
	if !hasMask {
		return ""
	}
	return into
}

// oneofFields names the fields of the oneof whose full name is name as the API's JSON spells them
// ("serialNumber and fingerprintSha256"), or the oneof's own name when it is not known.
func oneofFields(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return name
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name[:i]))
	md, ok := d.(protoreflect.MessageDescriptor)
	if err != nil || !ok {
		return name
	}
	o := md.Oneofs().ByName(protoreflect.Name(name[i+1:]))
	if o == nil || o.Fields().Len() == 0 {
		return name
	}
	return oneofFieldList(o, " and ")
}

// oneofFieldList lists the fields of o as the API's JSON spells them, the last two joined by conj
// ("serialNumber and fingerprintSha256", "serialNumber or fingerprintSha256").
func oneofFieldList(o protoreflect.OneofDescriptor, conj string) string {
	var names []string
	for j := range o.Fields().Len() {
		names = append(names, o.Fields().Get(j).JSONName())
	}
	if len(names) <= 1 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + conj + names[len(names)-1]
}

// enumValues lists, as ": one of A, B, C", the values of the guestlist.v1 enum of the fields whose
// JSON name is jsonName, when they all have the same enum; "" otherwise.
func enumValues(jsonName string) string {
	names := enumsByField()[jsonName]
	if len(names) == 0 {
		return ""
	}
	return ": one of " + strings.Join(names, ", ")
}

// enumsByField maps the JSON names of guestlist.v1's enum fields to their enum's value names (nil
// for a name that fields of different enums share).
var enumsByField = sync.OnceValue(func() map[string][]string {
	enums := map[string]protoreflect.EnumDescriptor{}
	ambiguous := map[string]bool{}
	protoregistry.GlobalFiles.RangeFilesByPackage("guestlist.v1", func(fd protoreflect.FileDescriptor) bool {
		var walk func(protoreflect.MessageDescriptors)
		walk = func(ms protoreflect.MessageDescriptors) {
			for i := range ms.Len() {
				md := ms.Get(i)
				fields := md.Fields()
				for j := range fields.Len() {
					f := fields.Get(j)
					if f.Kind() != protoreflect.EnumKind {
						continue
					}
					if e, ok := enums[f.JSONName()]; ok && e.FullName() != f.Enum().FullName() {
						ambiguous[f.JSONName()] = true
					}
					enums[f.JSONName()] = f.Enum()
				}
				walk(md.Messages())
			}
		}
		walk(fd.Messages())
		return true
	})
	out := map[string][]string{}
	for name, e := range enums {
		if ambiguous[name] {
			continue
		}
		var values []string
		for i := range e.Values().Len() {
			if v := e.Values().Get(i); v.Number() != 0 {
				values = append(values, string(v.Name()))
			}
		}
		sort.Strings(values)
		out[name] = values
	}
	return out
})
