package server

import (
	"context"
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"guestlist.dev/services/api/apistatus"
)

// The REST gateway copies path and query parameters into the request message as they come, bytes
// that are not UTF-8 included, and protobuf cannot encode such a string: the gateway's call to the
// gRPC server failed with INTERNAL ("grpc: error while marshaling"), a 500 naming no field. The
// gateway connection's interceptors check the message first and refuse it with the API's usual
// INVALID_ARGUMENT naming the field (gRPC clients that send such strings get the same answer from
// the server's requestCodec).

// utf8Unary refuses a gateway call whose request holds a string that is not UTF-8.
func utf8Unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if err := checkUTF8(req); err != nil {
		return err
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// utf8Stream checks every message a gateway stream sends, as utf8Unary does.
func utf8Stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return utf8ClientStream{cs}, nil
}

type utf8ClientStream struct{ grpc.ClientStream }

// SendMsg sends m unless it holds a string that is not UTF-8.
func (s utf8ClientStream) SendMsg(m any) error {
	if err := checkUTF8(m); err != nil {
		return err
	}
	return s.ClientStream.SendMsg(m)
}

// checkUTF8 returns INVALID_ARGUMENT naming the first string field of m (its path in proto names,
// as protovalidate's violations give it) that is not valid UTF-8; nil when there is none.
func checkUTF8(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return nil
	}
	if field := invalidUTF8(msg.ProtoReflect(), ""); field != "" {
		return apistatus.InvalidArgument(apistatus.Violation{Field: field, Reason: "not valid UTF-8 (percent-encode UTF-8 text only)"})
	}
	return nil
}

// invalidUTF8 returns the path, after prefix, of the first string in m that is not valid UTF-8, or
// "" when every string is.
func invalidUTF8(m protoreflect.Message, prefix string) string {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		path := prefix + string(fd.Name())
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for j := range l.Len() {
				if bad := invalidValue(fd, l.Get(j), fmt.Sprintf("%s[%d]", path, j)); bad != "" {
					return bad
				}
			}
		case fd.IsMap():
			var bad string
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				key := k.Value()
				if s, ok := key.Interface().(string); ok && !utf8.ValidString(s) {
					bad = path
					return false
				}
				bad = invalidValue(fd.MapValue(), mv, path+"["+strconv.Quote(key.String())+"]")
				return bad == ""
			})
			if bad != "" {
				return bad
			}
		default:
			if bad := invalidValue(fd, v, path); bad != "" {
				return bad
			}
		}
	}
	return ""
}

// invalidValue is invalidUTF8 for one value of field fd (an element, for a list or a map).
func invalidValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string) string {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if !utf8.ValidString(v.String()) {
			return path
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return invalidUTF8(v.Message(), path+".")
	}
	return ""
}
