package configset

import (
	"fmt"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestCertificatesShared: hostnames of the same CAs hold one copy of the certificates, whether
// their configurations came decoded from the wire (Apply) or from the state file (LoadFile), and
// the configurations still say what they said.
func TestCertificatesShared(t *testing.T) {
	other := pkitest.NewCA(t, "Other Device CA").Cert.Raw
	var ups []*configv1.HostnameConfig
	for i := range 600 { // more than prepareChunk: prepared on several goroutines
		c := cfg(t, fmt.Sprintf("h%04d.example.com", i), uint64(i+1))
		if i%3 == 0 {
			c.CertificateAuthorities[0] = &configv1.TrustedCertificateAuthority{CertificateAuthorityId: "other", CertificateDer: other}
		}
		ups = append(ups, c)
	}
	// As an edge gets it: decoded, every configuration with its own copy of every byte.
	b, err := proto.Marshal(snapshot(900, ups...))
	if err != nil {
		t.Fatal(err)
	}
	resp := &configv1.WatchResponse{}
	if err := proto.Unmarshal(b, resp); err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(resp).(*configv1.WatchResponse)

	// lists returns the distinct CA lists (by their first element's address) of the set's
	// configurations, checking each against want.
	lists := func(s *Set) int {
		seen := map[*configv1.TrustedCertificateAuthority]bool{}
		for i, u := range want.GetUpserts() {
			h, ok := s.Lookup(u.GetHostname())
			if !ok {
				t.Fatalf("upserts[%d] %s missing", i, u.GetHostname())
			}
			if !proto.Equal(h.Config, u) {
				t.Fatalf("%s: configuration changed:\n got %v\nwant %v", u.GetHostname(), h.Config, u)
			}
			seen[h.Config.GetCertificateAuthorities()[0]] = true
		}
		return len(seen)
	}

	st := NewStore()
	if err := st.Apply(resp); err != nil {
		t.Fatal(err)
	}
	if n := lists(st.Load()); n != 2 {
		t.Errorf("after Apply: %d copies of the CA lists, want 2", n)
	}
	path := filepath.Join(t.TempDir(), "edge-config.binpb")
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	loaded := NewStore()
	if err := loaded.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if n := lists(loaded.Load()); n != 2 {
		t.Errorf("after LoadFile: %d copies of the CA lists, want 2", n)
	}
}

// TestApplySharedMessages: Apply may be given upserts that share messages (a policy, a list of
// CAs), as a caller building a response in memory does; making their configurations share the
// lists the store already holds must not race with the preparation of the others (go test -race),
// nor change what they say.
func TestApplySharedMessages(t *testing.T) {
	st := NewStore()
	// The store's lists of these CAs and rules come from this configuration's messages.
	if err := st.Apply(snapshot(1, cfg(t, "first.example.com", 1))); err != nil {
		t.Fatal(err)
	}
	base := cfg(t, "x.example.com", 2) // equal content, other messages, shared by every upsert
	var ups []*configv1.HostnameConfig
	for i := range 600 { // more than prepareChunk: prepared on several goroutines
		ups = append(ups, &configv1.HostnameConfig{
			Hostname: fmt.Sprintf("h%04d.example.com", i), TenantId: base.TenantId, Active: true,
			OriginUrl: base.OriginUrl, Mode: base.Mode, CertificateAuthorities: base.CertificateAuthorities,
			Policy: base.Policy, Version: 2,
		})
	}
	want := proto.Clone(base.Policy)
	if err := st.Apply(delta(2, nil, ups...)); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(base.Policy, want) {
		t.Errorf("the shared policy changed:\n got %v\nwant %v", base.Policy, want)
	}
	for _, u := range ups {
		h, ok := st.Load().Lookup(u.GetHostname())
		if !ok || !proto.Equal(h.Config.GetPolicy(), want) {
			t.Fatalf("%s: %v", u.GetHostname(), h)
		}
	}
}
