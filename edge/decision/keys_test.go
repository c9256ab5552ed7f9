package decision

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestCacheKeysCoverEveryField: the keys under which a Cache shares trusts, lists of CAs and
// compiled policies (trustKey, casKey, programKey) change with every field of the messages they
// are built from (a CA, a revocation, a rule), so that a field the proto adds is either keyed or
// makes this test fail. A field left out would let the Cache give a hostname the trust or policy
// prepared from another configuration that differs in it, and ShareLists would replace the
// hostname's list with that configuration's, changing what its Config says (on which configset
// decides whether a prepared entry can be kept for a configuration that repeats it).
func TestCacheKeysCoverEveryField(t *testing.T) {
	base := func() *configv1.HostnameConfig {
		return &configv1.HostnameConfig{
			CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "a", CertificateDer: []byte{1}}},
			Revocations:            []*configv1.Revocation{{CertificateAuthorityId: "a", RevocationId: "r", SerialNumber: "1", FingerprintSha256: "f"}},
			Policy:                 &configv1.Policy{Rules: []*configv1.Rule{{Name: "n", Action: configv1.Action_ACTION_ALLOW, Expression: "e"}}},
		}
	}
	keys := func(c *configv1.HostnameConfig) [3][32]byte {
		return [3][32]byte{trustKey(c), casKey(c.GetCertificateAuthorities()), programKey(c.GetPolicy())}
	}
	// change sets field f of m to a value other than base's.
	change := func(t *testing.T, m protoreflect.Message, f protoreflect.FieldDescriptor) {
		var v protoreflect.Value
		switch f.Kind() {
		case protoreflect.StringKind:
			v = protoreflect.ValueOfString(m.Get(f).String() + "x")
		case protoreflect.BytesKind:
			v = protoreflect.ValueOfBytes(append(append([]byte(nil), m.Get(f).Bytes()...), 2))
		case protoreflect.EnumKind:
			v = protoreflect.ValueOfEnum(m.Get(f).Enum() + 1)
		case protoreflect.BoolKind:
			v = protoreflect.ValueOfBool(!m.Get(f).Bool())
		case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
			v = protoreflect.ValueOfInt32(int32(m.Get(f).Int()) + 1)
		case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
			v = protoreflect.ValueOfInt64(m.Get(f).Int() + 1)
		case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
			v = protoreflect.ValueOfUint32(uint32(m.Get(f).Uint()) + 1)
		case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
			v = protoreflect.ValueOfUint64(m.Get(f).Uint() + 1)
		default:
			t.Fatalf("%s is a %v: give this test a way to change it, and the keys a way to see it", f.FullName(), f.Kind())
		}
		if f.IsList() || f.IsMap() {
			t.Fatalf("%s is a list or map: give this test a way to change it, and the keys a way to see it", f.FullName())
		}
		m.Set(f, v)
	}
	for _, tc := range []struct {
		msg string
		get func(c *configv1.HostnameConfig) proto.Message
	}{
		{"ca", func(c *configv1.HostnameConfig) proto.Message { return c.CertificateAuthorities[0] }},
		{"revocation", func(c *configv1.HostnameConfig) proto.Message { return c.Revocations[0] }},
		{"rule", func(c *configv1.HostnameConfig) proto.Message { return c.Policy.Rules[0] }},
	} {
		fields := tc.get(base()).ProtoReflect().Descriptor().Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			c := base()
			change(t, tc.get(c).ProtoReflect(), f)
			if keys(c) == keys(base()) {
				t.Errorf("%s: changing %s changes no key of the Cache", tc.msg, f.FullName())
			}
		}
	}
}
