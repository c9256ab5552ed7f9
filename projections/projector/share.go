package projector

import (
	"bytes"
	"hash/maphash"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// The fields of a stored HostnameConfig whose values listSharer shares.
var (
	hostnameFields  = (&configv1.HostnameConfig{}).ProtoReflect().Descriptor().Fields()
	fieldCAs        = hostnameFields.ByName("certificate_authorities").Number()
	fieldRevocation = hostnameFields.ByName("revocations").Number()
	fieldPolicy     = hostnameFields.ByName("policy").Number()
)

// listSharer makes the configurations of one snapshot read share one copy of their lists of CAs,
// their lists of revocations and their policies where these are encoded with the same bytes: the
// hostnames of one tenant's CAs carry the same certificates and every revocation filed under them
// (see fold.HostnameConfig), which a read of many such hostnames would otherwise hold once each.
// Equal bytes decode to equal messages (unknown fields included), so a configuration says what it
// said; equal content encoded otherwise is only not shared. The zero value is not usable; see
// newListSharer.
type listSharer struct {
	seed    maphash.Seed
	lists   map[listKey][]*sharedList
	scratch [3][]byte // the current configuration's encoded CAs, revocations and policy
}

// listKey identifies a list by its field and the hash of its encoding.
type listKey struct {
	field protowire.Number
	hash  uint64
}

// sharedList is the first configuration's value of a field with an encoding.
type sharedList struct {
	raw    []byte // the encoding (a copy)
	cas    []*configv1.TrustedCertificateAuthority
	revs   []*configv1.Revocation
	policy *configv1.Policy
}

func newListSharer() *listSharer {
	return &listSharer{seed: maphash.MakeSeed(), lists: make(map[listKey][]*sharedList)}
}

// share gives c, decoded from raw, the lists of an earlier configuration encoded with the same
// bytes, or records c's for the configurations after it. A raw that does not parse (c decoded
// from it, so it does) shares nothing.
func (s *listSharer) share(raw []byte, c *configv1.HostnameConfig) {
	for i := range s.scratch {
		s.scratch[i] = s.scratch[i][:0]
	}
	for b := raw; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return
		}
		switch num {
		case fieldCAs:
			s.scratch[0] = append(s.scratch[0], b[:n+m]...)
		case fieldRevocation:
			s.scratch[1] = append(s.scratch[1], b[:n+m]...)
		case fieldPolicy:
			s.scratch[2] = append(s.scratch[2], b[:n+m]...)
		}
		b = b[n+m:]
	}
	if enc := s.scratch[0]; len(enc) > 0 {
		if l := s.find(fieldCAs, enc, func() *sharedList { return &sharedList{cas: slices.Clip(c.CertificateAuthorities)} }); l != nil {
			c.CertificateAuthorities = l.cas
		}
	}
	if enc := s.scratch[1]; len(enc) > 0 {
		if l := s.find(fieldRevocation, enc, func() *sharedList { return &sharedList{revs: slices.Clip(c.Revocations)} }); l != nil {
			c.Revocations = l.revs
		}
	}
	if enc := s.scratch[2]; len(enc) > 0 {
		if l := s.find(fieldPolicy, enc, func() *sharedList { return &sharedList{policy: c.Policy} }); l != nil {
			c.Policy = l.policy
		}
	}
}

// find returns the shared list of field encoded as enc, or records the one first() returns (a
// copy of enc with it) and returns nil.
func (s *listSharer) find(field protowire.Number, enc []byte, first func() *sharedList) *sharedList {
	k := listKey{field, maphash.Bytes(s.seed, enc)}
	for _, l := range s.lists[k] {
		if bytes.Equal(l.raw, enc) {
			return l
		}
	}
	l := first()
	l.raw = bytes.Clone(enc)
	s.lists[k] = append(s.lists[k], l)
	return nil
}
