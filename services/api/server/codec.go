package server

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"guestlist.dev/services/api/apistatus"
)

// A gRPC request whose string field holds bytes that are not UTF-8 cannot be decoded (proto3
// strings are UTF-8), and grpc-go turns any decoding error into INTERNAL, which names no field
// and reads as the server's fault (and pages whoever watches the INTERNAL rate). requestCodec
// decodes requests as protobuf does; when decoding fails only because of such a string, it
// leaves the message empty but for a mark naming the field, and validate refuses the call with
// the API's usual INVALID_ARGUMENT naming it. A message with the mark is never served: the mark is
// checked before any other validation, for every method.

// invalidUTF8Mark is the field number of the mark: the largest valid one, which no message of
// ours uses. Its value is the path of the field that is not UTF-8.
const invalidUTF8Mark protowire.Number = protowire.MaxValidNumber

// maxMarkedPath bounds the path a mark gives in the error.
const maxMarkedPath = 512

// maxUTF8SearchDepth bounds the nesting requestCodec looks into for the field to name.
const maxUTF8SearchDepth = 64

// requestCodec is the server's codec: grpc-go's protobuf codec, with the decoding of requests
// that hold a string that is not UTF-8 described above.
type requestCodec struct{ base encoding.CodecV2 }

var _ encoding.CodecV2 = requestCodec{}

func newRequestCodec() requestCodec {
	return requestCodec{base: encoding.GetCodecV2(protocodec.Name)}
}

// Name is the protobuf codec's name.
func (c requestCodec) Name() string { return protocodec.Name }

// Marshal encodes v as the protobuf codec does.
func (c requestCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

// Unmarshal decodes data into v as the protobuf codec does. When that fails and data holds a
// string field that is not UTF-8 (at a known field of v's message type), it resets v, marks it
// with the field's path and returns nil; any other failure is returned as it is.
func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	msg, ok := v.(proto.Message)
	if !ok {
		return err
	}
	field := invalidUTF8Field(data.Materialize(), msg.ProtoReflect().Descriptor())
	if field == "" {
		return err
	}
	proto.Reset(msg)
	mark := protowire.AppendTag(nil, invalidUTF8Mark, protowire.BytesType)
	mark = protowire.AppendString(mark, field)
	msg.ProtoReflect().SetUnknown(mark)
	return nil
}

// invalidUTF8Field returns the path (in proto names with list indexes, as protovalidate gives
// them) of the first string field in b, a message of type md, whose value is not UTF-8: the error
// protobuf's decoding stops at. It returns "" when there is none, or when b is malformed before it
// (protobuf then stops at that, which is not a bad string). It reads the wire format in order, as
// protobuf does, checking what protobuf checks on the way: tags, lengths, groups, nested
// messages, packed lists.
func invalidUTF8Field(b []byte, md protoreflect.MessageDescriptor) string {
	path, _ := walkUTF8(b, md, "", 0)
	return path
}

// walkUTF8 is invalidUTF8Field below prefix at depth; ok is false when b is malformed before any
// bad string.
func walkUTF8(b []byte, md protoreflect.MessageDescriptor, prefix string, depth int) (path string, ok bool) {
	if depth > maxUTF8SearchDepth {
		return "", false
	}
	var seen map[protowire.Number]int // occurrences of list fields so far
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || !num.IsValid() { // protobuf refuses numbers above MaxValidNumber; ConsumeTag does not
			return "", false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return "", false
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			continue
		}
		path := prefix + string(fd.Name())
		if fd.IsList() {
			if seen == nil {
				seen = map[protowire.Number]int{}
			}
			path = fmt.Sprintf("%s[%d]", path, seen[num])
			seen[num]++
		}
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(v) {
				return path, true
			}
		case protoreflect.MessageKind:
			if bad, ok := walkUTF8(v, fd.Message(), path+".", depth+1); bad != "" || !ok {
				return bad, ok
			}
		case protoreflect.BytesKind:
		case protoreflect.GroupKind:
			// A group sent length-delimited is an unknown field to protobuf.
		default:
			// A packed list of scalars: protobuf decodes every value.
			if fd.IsList() && !validPacked(v, fd.Kind()) {
				return "", false
			}
		}
	}
	return "", true
}

// validPacked reports whether b is a whole number of packed values of kind k.
func validPacked(b []byte, k protoreflect.Kind) bool {
	var typ protowire.Type
	switch k {
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		typ = protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		typ = protowire.Fixed64Type
	default:
		typ = protowire.VarintType
	}
	for len(b) > 0 {
		n := protowire.ConsumeFieldValue(1, typ, b)
		if n < 0 {
			return false
		}
		b = b[n:]
	}
	return true
}

// invalidUTF8Error returns INVALID_ARGUMENT naming the field when m carries requestCodec's mark;
// nil otherwise.
func invalidUTF8Error(m proto.Message) error {
	unknown := m.ProtoReflect().GetUnknown()
	for len(unknown) > 0 {
		num, typ, n := protowire.ConsumeTag(unknown)
		if n < 0 {
			return nil
		}
		unknown = unknown[n:]
		if num == invalidUTF8Mark && typ == protowire.BytesType {
			field, _ := protowire.ConsumeString(unknown)
			if len(field) > maxMarkedPath { // a client may send the mark itself
				field = field[:maxMarkedPath]
			}
			field = strings.ToValidUTF8(field, "?")
			return apistatus.InvalidArgument(apistatus.Violation{Field: field, Reason: "not valid UTF-8 (protobuf strings are UTF-8 text)"})
		}
		if n = protowire.ConsumeFieldValue(num, typ, unknown); n < 0 {
			return nil
		}
		unknown = unknown[n:]
	}
	return nil
}
