package projector

import (
	"context"
	"hash/maphash"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// TestSnapshotSharesLists: the configurations of a snapshot read share the lists of CAs and
// revocations and the policies stored with the same bytes, only those, and each still says what
// the read model holds for it.
func TestSnapshotSharesLists(t *testing.T) {
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	p := openProjector(t, dir, store)
	defer p.Close()
	write := tenantWriter(t, store, "acme")
	ca := func(id string, b byte) *eventsv1.CertificateAuthorityAdded {
		return &eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: id, CertificateDer: []byte{0x30, b, b, b}}
	}
	host := func(name, policy string, cas ...string) *eventsv1.HostnameCreated {
		return &eventsv1.HostnameCreated{Hostname: name, OriginUrl: "http://origin:8080", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, PolicyId: policy,
			Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: cas}}
	}
	rule := []*eventsv1.PolicyRule{{Name: "ou", Action: eventsv1.Action_ACTION_ALLOW, Expression: "cert.verified"}}
	last := write(&eventsv1.TenantCreated{TenantId: "acme"}, ca("a", 1), ca("b", 2),
		&eventsv1.PolicyCreated{PolicyId: "p", Rules: rule}, &eventsv1.PolicyCreated{PolicyId: "q", Rules: rule},
		host("one.example.com", "p", "a"), host("two.example.com", "p", "a"), host("three.example.com", "q", "a", "b"), host("four.example.com", "", "b"),
		&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "a", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "1"}},
		&eventsv1.RevocationAdded{RevocationId: "r2", CertificateAuthorityId: "b", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "2"}})
	catchUp(t, context.Background(), p, last)

	_, configs, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]*configv1.HostnameConfig{}
	for _, c := range configs {
		by[c.GetHostname()] = c
		// Each says what the read model holds, read on its own.
		if _, want, err := p.Lookup(c.GetHostname()); err != nil || !proto.Equal(c, want) {
			t.Errorf("%s: %v\n got %v\nwant %v", c.GetHostname(), err, c, want)
		}
	}
	same := func(a, b any) bool { return a == b }
	one, two, three, four := by["one.example.com"], by["two.example.com"], by["three.example.com"], by["four.example.com"]
	for _, tc := range []struct {
		name string
		got  bool
		want bool
	}{
		{"ok/the same CAs", same(&one.CertificateAuthorities[0], &two.CertificateAuthorities[0]), true},
		{"ok/the same revocations", same(&one.Revocations[0], &two.Revocations[0]), true},
		{"ok/the same policy", same(one.Policy, two.Policy), true},
		{"fail/one CA more", same(&one.CertificateAuthorities[0], &three.CertificateAuthorities[0]), false},
		{"fail/another CA", same(&four.CertificateAuthorities[0], &three.CertificateAuthorities[1]), false},
		{"fail/revocations of one CA more", same(&one.Revocations[0], &three.Revocations[0]), false},
		{"fail/the same rules under another policy id", same(one.Policy, three.Policy), false},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: shared %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

// TestListSharerEncodings: listSharer shares lists whose entries are encoded with the same bytes,
// unknown fields included, wherever other fields stand between them, and nothing else: the same
// list with an unknown field is not shared.
func TestListSharerEncodings(t *testing.T) {
	enc := func(c *configv1.HostnameConfig) []byte {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	base := func() *configv1.HostnameConfig {
		return &configv1.HostnameConfig{Hostname: "h.example.com", Revocations: []*configv1.Revocation{
			{CertificateAuthorityId: "a", RevocationId: "r1", SerialNumber: "1"},
			{CertificateAuthorityId: "a", RevocationId: "r2", SerialNumber: "2"},
		}}
	}
	withUnknown := base()
	withUnknown.Revocations[1].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	// The revocations' entries apart, with another field between them: the same list.
	apart := protowire.AppendTag(nil, fieldRevocation, protowire.BytesType)
	r1, _ := proto.Marshal(base().Revocations[0])
	apart = protowire.AppendBytes(apart, r1)
	apart = protowire.AppendTag(apart, hostnameFields.ByName("hostname").Number(), protowire.BytesType)
	apart = protowire.AppendString(apart, "h.example.com")
	apart = protowire.AppendTag(apart, fieldRevocation, protowire.BytesType)
	r2, _ := proto.Marshal(base().Revocations[1])
	apart = protowire.AppendBytes(apart, r2)

	s := newListSharer()
	decode := func(raw []byte) *configv1.HostnameConfig {
		c := &configv1.HostnameConfig{}
		if err := proto.Unmarshal(raw, c); err != nil {
			t.Fatal(err)
		}
		want := proto.Clone(c)
		s.share(raw, c)
		if !proto.Equal(c, want) {
			t.Fatalf("share changed the configuration:\n got %v\nwant %v", c, want)
		}
		return c
	}
	first, second := decode(enc(base())), decode(enc(base()))
	unknown, other := decode(enc(withUnknown)), decode(apart)
	if &first.Revocations[0] != &second.Revocations[0] {
		t.Error("ok/the same bytes: not shared")
	}
	if &unknown.Revocations[0] == &first.Revocations[0] {
		t.Error("fail/an unknown field: shared")
	}
	if len(unknown.Revocations[1].ProtoReflect().GetUnknown()) == 0 {
		t.Error("fail/an unknown field: lost")
	}
	// The same entries, with another field between them: the list's bytes are the same.
	if &other.Revocations[0] != &first.Revocations[0] {
		t.Error("ok/the same entries apart: not shared")
	}
}

// TestListSharerRecords: a configuration decoded from records that are not one plain run of its
// lists (a policy given twice, which decoding merges; entries of a list given in another order or
// with records of another wire type among them) shares only with a configuration of the same
// records, and each still says what it alone decodes to.
func TestListSharerRecords(t *testing.T) {
	field := func(b []byte, num protowire.Number, m proto.Message) []byte {
		v, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
	}
	p := func(id string, rules ...string) *configv1.Policy {
		out := &configv1.Policy{PolicyId: id}
		for _, r := range rules {
			out.Rules = append(out.Rules, &configv1.Rule{Name: r, Action: configv1.Action_ACTION_ALLOW, Expression: "true"})
		}
		return out
	}
	r := func(id string) *configv1.Revocation {
		return &configv1.Revocation{CertificateAuthorityId: "a", RevocationId: id, SerialNumber: "1"}
	}
	policies := func(ps ...*configv1.Policy) []byte {
		b := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "h.example.com")
		for _, x := range ps {
			b = field(b, fieldPolicy, x)
		}
		return b
	}
	revocations := func(rs ...*configv1.Revocation) []byte {
		b := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "h.example.com")
		for _, x := range rs {
			b = field(b, fieldRevocation, x)
		}
		return b
	}
	// A record of field revocations with another wire type: unknown to the decoder.
	varint := protowire.AppendVarint(protowire.AppendTag(nil, fieldRevocation, protowire.VarintType), 7)

	s := newListSharer()
	decode := func(raw []byte) *configv1.HostnameConfig {
		c, alone := &configv1.HostnameConfig{}, &configv1.HostnameConfig{}
		if err := proto.Unmarshal(raw, c); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(raw, alone); err != nil {
			t.Fatal(err)
		}
		s.share(raw, c)
		if !proto.Equal(c, alone) {
			t.Errorf("the configuration says what another does:\n got %v\nwant %v", c, alone)
		}
		return c
	}
	// The policy twice: merged into one (the second's id, the rules of both).
	merged := decode(policies(p("p", "x"), p("q", "y")))
	if got := merged.GetPolicy(); got.GetPolicyId() != "q" || len(got.GetRules()) != 2 {
		t.Fatalf("the policy given twice decodes to %v", got)
	}
	firstOnly, lastOnly := decode(policies(p("p", "x"))), decode(policies(p("q", "y")))
	again := decode(policies(p("p", "x"), p("q", "y")))
	if firstOnly.Policy == merged.Policy || lastOnly.Policy == merged.Policy {
		t.Error("fail/a policy given twice: shared with one given once")
	}
	if again.Policy != merged.Policy {
		t.Error("ok/the same policy records: not shared")
	}
	// Revocations: the same entries in another order, one entry other, a record of another type.
	base := decode(revocations(r("r1"), r("r2")))
	swapped := decode(revocations(r("r2"), r("r1")))
	firstOther := decode(revocations(r("rx"), r("r2")))
	// One record holding both entries' bytes: one revocation (decoding merges them), not two.
	r1, _ := proto.Marshal(r("r1"))
	r2, _ := proto.Marshal(r("r2"))
	glued := protowire.AppendBytes(protowire.AppendTag(protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "h.example.com"), fieldRevocation, protowire.BytesType), append(r1, r2...))
	one := decode(glued)
	for name, c := range map[string]*configv1.HostnameConfig{"another order": swapped, "another first entry": firstOther, "one record of both entries' bytes": one} {
		if &c.Revocations[0] == &base.Revocations[0] {
			t.Errorf("fail/%s: shared", name)
		}
	}
	// A record of another wire type among the entries: each says what it says (decode checks),
	// the record kept as an unknown field.
	typed := decode(append(revocations(r("r1")), append(varint, revocations(r("r2"))...)...))
	if len(typed.ProtoReflect().GetUnknown()) == 0 {
		t.Error("fail/a record of another wire type: lost")
	}
}

// TestListSharerCollision: a list whose encoding has the hash of another's (a maphash collision)
// is not given the other's messages: find confirms the bytes.
func TestListSharerCollision(t *testing.T) {
	c := &configv1.HostnameConfig{Hostname: "h.example.com", Revocations: []*configv1.Revocation{{CertificateAuthorityId: "a", RevocationId: "r1", SerialNumber: "1"}}}
	raw, err := proto.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	s := newListSharer()
	var enc []byte // the revocations' records: all of raw after the hostname's
	for b := raw; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if num == fieldRevocation {
			enc = append(enc, b[:n+m]...)
		}
		b = b[n+m:]
	}
	other := &configv1.Revocation{CertificateAuthorityId: "b", RevocationId: "other", SerialNumber: "2"}
	k := listKey{fieldRevocation, maphash.Bytes(s.seed, enc)}
	s.lists[k] = []*sharedList{{raw: []byte("not the same bytes"), revs: []*configv1.Revocation{other}}}
	got := &configv1.HostnameConfig{}
	if err := proto.Unmarshal(raw, got); err != nil {
		t.Fatal(err)
	}
	s.share(raw, got)
	if !proto.Equal(got, c) {
		t.Errorf("fail/a hash collision: the configuration says\n%v\nwant %v", got, c)
	}
}

// FuzzListSharer: whatever two stored configurations hold, each says after listSharer what it
// decodes to on its own, unknown fields included.
func FuzzListSharer(f *testing.F) {
	seed := func(c *configv1.HostnameConfig) []byte {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	a := seed(&configv1.HostnameConfig{Hostname: "a.example.com",
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "ca", CertificateDer: []byte{0x30, 1}}},
		Revocations:            []*configv1.Revocation{{CertificateAuthorityId: "ca", RevocationId: "r", SerialNumber: "1"}},
		Policy:                 &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{{Name: "r", Expression: "true"}}}})
	f.Add(a, a)
	f.Add(a, append(append([]byte{}, a...), a...))
	f.Add(a, []byte{})
	f.Fuzz(func(t *testing.T, x, y []byte) {
		s := newListSharer()
		var got []*configv1.HostnameConfig
		var want []proto.Message
		for _, raw := range [][]byte{x, y, x} {
			c := &configv1.HostnameConfig{}
			if proto.Unmarshal(raw, c) != nil {
				return
			}
			want = append(want, proto.Clone(c))
			s.share(raw, c)
			got = append(got, c)
		}
		for i := range got {
			if !proto.Equal(got[i], want[i]) {
				t.Fatalf("configuration %d changed:\n got %v\nwant %v", i, got[i], want[i])
			}
			if u, w := got[i].ProtoReflect().GetUnknown(), want[i].ProtoReflect().GetUnknown(); string(u) != string(w) {
				t.Fatalf("configuration %d: unknown fields %x, want %x", i, u, w)
			}
		}
	})
}
