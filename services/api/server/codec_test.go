package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// rawCodec sends []byte messages as they are: what a client in another language, or an attacker,
// can put on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// wire builds protobuf bytes: field numbers with strings (string values) or nested messages
// ([]byte values, already encoded).
func wire(fields ...any) []byte {
	var b []byte
	for i := 0; i+1 < len(fields); i += 2 {
		num := protowire.Number(fields[i].(int))
		b = protowire.AppendTag(b, num, protowire.BytesType)
		switch v := fields[i+1].(type) {
		case string:
			b = protowire.AppendString(b, v)
		case []byte:
			b = protowire.AppendBytes(b, v)
		}
	}
	return b
}

// fieldNumber is the number of the field named name in m's type.
func fieldNumber(m proto.Message, name string) int {
	return int(m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name)).Number())
}

// TestInvalidUTF8OverGRPC: a gRPC request whose string is not UTF-8 gets INVALID_ARGUMENT naming
// the field, as the same request over REST does, instead of grpc-go's INTERNAL; only after
// authentication, and with nothing of it served.
func TestInvalidUTF8OverGRPC(t *testing.T) {
	env := startServer(t, nil)
	get := &guestlistv1.GetTenantRequest{}
	create := &guestlistv1.CreateTenantRequest{}
	tenant := &guestlistv1.Tenant{}
	bad := "acme\xff\xfe"
	cases := []struct {
		name   string
		method string
		token  string
		body   []byte
		code   codes.Code
		field  string
	}{
		{name: "fail/top-level field", method: "GetTenant", token: testToken, body: wire(fieldNumber(get, "tenant_id"), bad), code: codes.InvalidArgument, field: "tenant_id"},
		{name: "fail/nested field", method: "CreateTenant", token: testToken,
			body: wire(fieldNumber(create, "tenant_id"), "acme", fieldNumber(create, "tenant"), wire(fieldNumber(tenant, "display_name"), bad)),
			code: codes.InvalidArgument, field: "tenant.display_name"},
		{name: "fail/unauthenticated first", method: "GetTenant", token: "wrong", body: wire(fieldNumber(get, "tenant_id"), bad), code: codes.Unauthenticated},
		{name: "fail/the mark sent by the client", method: "GetTenant", token: testToken,
			body: wire(fieldNumber(get, "tenant_id"), "acme", int(invalidUTF8Mark), strings.Repeat("x", 4096)), code: codes.InvalidArgument, field: strings.Repeat("x", maxMarkedPath)},
		{name: "fail/malformed is still refused", method: "GetTenant", token: testToken, body: []byte{0x0a, 0x05, 'a'}, code: codes.Internal},
		{name: "ok/valid UTF-8", method: "CreateTenant", token: testToken,
			body: wire(fieldNumber(create, "tenant_id"), "acme", fieldNumber(create, "tenant"), wire(fieldNumber(tenant, "display_name"), "Acmé Zürich")), code: codes.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var reply []byte
			err := env.conn.Invoke(withToken(ctxT(t), tc.token), "/guestlist.v1.TenantService/"+tc.method, &tc.body, &reply, grpc.ForceCodecV2(rawCodec{}))
			if status.Code(err) != tc.code {
				t.Fatalf("%s = %v, want %v", tc.method, err, tc.code)
			}
			if tc.field == "" {
				return
			}
			vs := badRequestOf(t, err).GetFieldViolations()
			if len(vs) != 1 || vs[0].GetField() != tc.field || !strings.Contains(vs[0].GetDescription(), "UTF-8") {
				t.Errorf("violations %v, want one naming %s", vs, tc.field)
			}
		})
	}
	// A stream's messages are checked too.
	t.Run("fail/stream", func(t *testing.T) {
		stream, err := env.conn.NewStream(withToken(ctxT(t), testToken), &grpc.StreamDesc{ServerStreams: true}, watchMethod, grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		body := wire(fieldNumber(get, "tenant_id"), bad)
		if err := stream.SendMsg(&body); err != nil {
			t.Fatal(err)
		}
		_ = stream.CloseSend()
		var reply []byte
		err = stream.RecvMsg(&reply)
		if status.Code(err) != codes.InvalidArgument || badRequestOf(t, err).GetFieldViolations()[0].GetField() != "tenant_id" {
			t.Fatalf("RecvMsg = %v, want INVALID_ARGUMENT naming tenant_id", err)
		}
	})
}

func TestInvalidUTF8Field(t *testing.T) {
	h := &guestlistv1.Hostname{}
	mtls := &guestlistv1.MtlsSettings{}
	ids := fieldNumber(mtls, "certificate_authority_ids")
	bad := "\xc3\x28"
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"ok/valid", wire(fieldNumber(h, "hostname"), "pay.example.com", fieldNumber(h, "mtls"), wire(ids, "a", ids, "b")), ""},
		{"fail/top level", wire(fieldNumber(h, "hostname"), bad), "hostname"},
		{"fail/second of a list", wire(fieldNumber(h, "hostname"), "pay.example.com", fieldNumber(h, "mtls"), wire(ids, "a", ids, bad)), "mtls.certificate_authority_ids[1]"},
		{"ok/unknown field", wire(999, bad), ""},
		{"ok/truncated", append(wire(fieldNumber(h, "hostname"), "x"), 0x0a, 0x09, 'a'), ""},
		// protobuf stops at the malformed message first: not a bad string (found by FuzzRequestCodec).
		{"ok/malformed nested message before a bad string", wire(fieldNumber(h, "mtls"), "000", fieldNumber(h, "hostname"), bad), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := invalidUTF8Field(tc.b, h.ProtoReflect().Descriptor()); got != tc.want {
				t.Errorf("invalidUTF8Field = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestInvalidUTF8FieldPackedLists: protobuf decodes every value of a packed list, so a malformed
// one before a bad string is what it stops at. Our API has no packed list; descriptorpb's
// SourceCodeInfo.Location has one (path, repeated int32) and a string (leading_comments).
func TestInvalidUTF8FieldPackedLists(t *testing.T) {
	loc := &descriptorpb.SourceCodeInfo_Location{}
	path, comments := fieldNumber(loc, "path"), fieldNumber(loc, "leading_comments")
	packed := protowire.AppendVarint(protowire.AppendVarint(nil, 1), 300)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"fail/a whole packed list, then a bad string", wire(path, packed, comments, "\xff"), "leading_comments"},
		{"ok/a cut packed list, then a bad string", wire(path, packed[:len(packed)-1], comments, "\xff"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := proto.Unmarshal(tc.b, &descriptorpb.SourceCodeInfo_Location{})
			if got := invalidUTF8Field(tc.b, loc.ProtoReflect().Descriptor()); got != tc.want {
				t.Errorf("invalidUTF8Field = %q, want %q (protobuf: %v)", got, tc.want, err)
			}
		})
	}
}

// FuzzRequestCodec: the codec decodes exactly what protobuf decodes; what protobuf refuses it
// refuses too, or marks (when a string is not UTF-8), and a marked message holds nothing else.
func FuzzRequestCodec(f *testing.F) {
	h := &guestlistv1.Hostname{}
	mtls := &guestlistv1.MtlsSettings{}
	f.Add(wire(fieldNumber(h, "hostname"), "pay.example.com"))
	f.Add(wire(fieldNumber(h, "mtls"), wire(fieldNumber(mtls, "certificate_authority_ids"), "\xff")))
	f.Add(wire(fieldNumber(h, "origin_url"), "\xed\xa0\x80"))
	f.Add([]byte{0x0a, 0x05, 'a'})
	codec := newRequestCodec()
	f.Fuzz(func(t *testing.T, b []byte) {
		want := &guestlistv1.Hostname{}
		wantErr := proto.Unmarshal(b, want)
		got := &guestlistv1.Hostname{}
		err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got)
		switch {
		case wantErr == nil:
			if err != nil || !proto.Equal(got, want) {
				t.Fatalf("protobuf decodes %x, the codec gives %v, %v", b, got, err)
			}
		case err != nil:
			// Refused by both.
		default:
			mark := invalidUTF8Error(got)
			if mark == nil {
				t.Fatalf("protobuf refuses %x (%v); the codec accepted it without a mark: %v", b, wantErr, got)
			}
			rest := proto.Clone(got)
			rest.ProtoReflect().SetUnknown(nil)
			if !proto.Equal(rest, &guestlistv1.Hostname{}) {
				t.Fatalf("a marked message holds more than the mark: %v", got)
			}
			if !strings.Contains(wantErr.Error(), "UTF-8") {
				t.Fatalf("protobuf refuses %x for another reason (%v), the codec marked it: %v", b, wantErr, mark)
			}
		}
	})
}
