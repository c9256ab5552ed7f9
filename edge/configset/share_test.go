package configset

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/decision"
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

// TestPrepareParts: the parts of a response prepared as they arrive share their lists with the
// parts before them at once (so a large snapshot is never held whole and unshared), and
// ApplyPrepared of the joined response uses what was prepared, only for the configurations it
// was prepared from.
func TestPrepareParts(t *testing.T) {
	other := pkitest.NewCA(t, "Other Device CA").Cert.Raw
	// parts returns a snapshot of 600 hostnames in 3 parts, each decoded on its own as the Watch
	// stream delivers them; every third hostname trusts the other CA, one cannot be prepared.
	parts := func() []*configv1.WatchResponse {
		var out []*configv1.WatchResponse
		for p := range 3 {
			part := &configv1.WatchResponse{Position: 900, Snapshot: true, More: p < 2}
			for i := p * 200; i < (p+1)*200; i++ {
				c := cfg(t, fmt.Sprintf("h%04d.example.com", i), uint64(i+1))
				if i%3 == 0 {
					c.CertificateAuthorities[0] = &configv1.TrustedCertificateAuthority{CertificateAuthorityId: "other", CertificateDer: other}
				}
				if i == 301 {
					c = unpreparable(t, c.Hostname, c.Version)
				}
				part.Upserts = append(part.Upserts, c)
			}
			b, err := proto.Marshal(part)
			if err != nil {
				t.Fatal(err)
			}
			decoded := &configv1.WatchResponse{}
			if err := proto.Unmarshal(b, decoded); err != nil {
				t.Fatal(err)
			}
			out = append(out, decoded)
		}
		return out
	}

	t.Run("ok/shared at once, used by ApplyPrepared", func(t *testing.T) {
		st := NewStore()
		ps := parts()
		want, err := Merge(proto.Clone(ps[0]).(*configv1.WatchResponse), proto.Clone(ps[1]).(*configv1.WatchResponse), proto.Clone(ps[2]).(*configv1.WatchResponse))
		if err != nil {
			t.Fatal(err)
		}
		first := ps[0].Upserts[1].CertificateAuthorities // h0001: the test CA
		var prepared []*decision.Hostname
		for p, part := range ps {
			prepared = append(prepared, st.Prepare(part.Upserts)...)
			// Before the next part arrives, this one's lists are the first part's.
			for _, u := range part.Upserts {
				if u.CertificateAuthorities[0].CertificateAuthorityId == "root" && u.GetHostname() != "h0301.example.com" && &u.CertificateAuthorities[0] != &first[0] {
					t.Fatalf("part %d: %s does not share the first part's CA list", p, u.GetHostname())
				}
			}
		}
		if prepared[301] != nil {
			t.Fatal("the unpreparable upsert was prepared")
		}
		full, err := Merge(ps...)
		if err != nil {
			t.Fatal(err)
		}
		err = st.ApplyPrepared(full, prepared)
		var refused *RefusedError
		if !errors.As(err, &refused) || len(refused.Refused) != 1 || refused.Refused[0].Index != 301 {
			t.Fatalf("ApplyPrepared: %v, want h0301 refused", err)
		}
		s := st.Load()
		for i, u := range want.Upserts {
			h, ok := s.Lookup(u.GetHostname())
			if i == 301 {
				if ok {
					t.Error("h0301 is in the set")
				}
				continue
			}
			if !ok || !proto.Equal(h.Config, u) {
				t.Fatalf("%s: %v", u.GetHostname(), ok)
			}
			if h != prepared[i] {
				t.Fatalf("%s: prepared again", u.GetHostname())
			}
		}
	})

	t.Run("ok/PartPreparer keeps the order of parts and upserts", func(t *testing.T) {
		st := NewStore()
		ps := parts()
		prep := st.NewPartPreparer()
		for _, part := range ps {
			prep.Add(part.Upserts)
		}
		prepared := prep.Wait()
		full, err := Merge(ps...)
		if err != nil {
			t.Fatal(err)
		}
		if len(prepared) != len(full.Upserts) {
			t.Fatalf("%d prepared for %d upserts", len(prepared), len(full.Upserts))
		}
		for i, h := range prepared {
			if i == 301 {
				if h != nil {
					t.Fatal("the unpreparable upsert was prepared")
				}
				continue
			}
			if h == nil || h.Config != full.Upserts[i] {
				t.Fatalf("prepared[%d] is not upsert %d (%s) prepared", i, i, full.Upserts[i].GetHostname())
			}
		}
		var refused *RefusedError
		if err := st.ApplyPrepared(full, prepared); !errors.As(err, &refused) || len(refused.Refused) != 1 {
			t.Fatalf("ApplyPrepared: %v, want h0301 refused", err)
		}
		if h, ok := st.Load().Lookup("h0599.example.com"); !ok || h != prepared[599] {
			t.Fatal("h0599: prepared again")
		}
	})

	t.Run("ok/PartPreparer given up", func(t *testing.T) {
		st := NewStore()
		if got := st.NewPartPreparer().Wait(); len(got) != 0 {
			t.Fatalf("nothing added, %d prepared", len(got))
		}
		prep := st.NewPartPreparer()
		prep.Add(parts()[0].Upserts)
		if got := prep.Wait(); len(got) != 200 {
			t.Fatalf("one part of 200 added, %d prepared", len(got))
		}
		if st.Load().Len() != 0 {
			t.Fatal("preparing changed the set")
		}
	})

	t.Run("fail/prepared for other configurations", func(t *testing.T) {
		st := NewStore()
		var elsewhere []*decision.Hostname
		for _, part := range parts() {
			elsewhere = append(elsewhere, st.Prepare(part.Upserts)...)
		}
		ps := parts()
		full, err := Merge(ps...)
		if err != nil {
			t.Fatal(err)
		}
		want := proto.Clone(full).(*configv1.WatchResponse)
		var refused *RefusedError
		if err := st.ApplyPrepared(full, elsewhere[:400]); !errors.As(err, &refused) {
			t.Fatal(err)
		}
		for i, u := range want.Upserts {
			h, ok := st.Load().Lookup(u.GetHostname())
			if i == 301 {
				continue
			}
			if !ok || !proto.Equal(h.Config, u) || h.Config != full.Upserts[i] || h == elsewhere[i] {
				t.Fatalf("%s: not prepared from its own configuration", u.GetHostname())
			}
		}
	})
}

// TestSnapshotReusesEqualEntries: a snapshot keeps the prepared entry of every hostname whose
// configuration it repeats, equal (also through parts prepared as they arrive, and for a
// snapshot that replaces the history), and prepares the others; an entry whose configuration
// differs in anything, unknown fields included, is not reused.
func TestSnapshotReusesEqualEntries(t *testing.T) {
	for _, tc := range []struct {
		name    string
		parts   bool
		replace bool
	}{{"ok/apply", false, false}, {"ok/parts", true, false}, {"ok/history replaced", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore()
			var first []*configv1.HostnameConfig
			for i := range 600 {
				first = append(first, cfg(t, fmt.Sprintf("h%03d.example.com", i), 10))
			}
			if err := st.Apply(snapshot(10, first...)); err != nil {
				t.Fatal(err)
			}
			old := st.Load()
			var again []*configv1.HostnameConfig
			for i := range 600 {
				c := cfg(t, fmt.Sprintf("h%03d.example.com", i), 10) // equal, another message
				switch i {
				case 1:
					c.Mode = configv1.MtlsMode_MTLS_MODE_REPORT
				case 2:
					c.Version = 11
				case 3:
					c.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1))
				case 4:
					continue // gone
				}
				again = append(again, c)
			}
			again = append(again, cfg(t, "new.example.com", 11))
			resp := snapshot(12, again...)
			if tc.replace {
				resp.Position, resp.ReplacesHistory = 11, true
			}
			var err error
			if tc.parts {
				p := st.NewPartPreparer()
				p.Add(again[:300])
				p.Add(again[300:])
				ready := p.Wait()
				// A kept entry's upsert is now the entry's own, equal configuration, so that
				// ApplyPrepared takes the entry as the upsert's without comparing again.
				for i, c := range again {
					was, ok := old.Lookup(c.GetHostname())
					changed := map[string]bool{"h001.example.com": true, "h002.example.com": true, "h003.example.com": true}[c.GetHostname()]
					if kept := ok && !changed; kept && (c != was.Config || ready[i] != was) {
						t.Fatalf("upserts[%d] (%s): not replaced by the kept entry's configuration", i, c.GetHostname())
					}
				}
				err = st.ApplyPrepared(resp, ready)
			} else {
				err = st.Apply(resp)
			}
			if err != nil {
				t.Fatal(err)
			}
			now := st.Load()
			for i := range 600 {
				name := fmt.Sprintf("h%03d.example.com", i)
				was, _ := old.Lookup(name)
				is, ok := now.Lookup(name)
				switch {
				case i == 4:
					if ok {
						t.Fatalf("%s is still there", name)
					}
				case i >= 1 && i <= 3:
					if !ok || is == was {
						t.Fatalf("%s, changed, kept its old entry", name)
					}
				default:
					if is != was {
						t.Fatalf("%s, unchanged, was prepared again", name)
					}
				}
			}
			if h, _ := now.Lookup("h001.example.com"); h.Config.GetMode() != configv1.MtlsMode_MTLS_MODE_REPORT {
				t.Fatal("the changed mode is not the one the set holds")
			}
			if _, ok := now.Lookup("new.example.com"); !ok || now.Len() != 600 {
				t.Fatalf("%d hostnames", now.Len())
			}
		})
	}
}

// TestLoadFileIntoTheSameSet: loading a file of the set the store holds (several parts) keeps
// every entry; the preparer, which replaces kept upserts in the lists it is given, works on
// copies of the parts' lists while they are joined (run with -race).
func TestLoadFileIntoTheSameSet(t *testing.T) {
	st := NewStore()
	var ups []*configv1.HostnameConfig
	for i := range 2500 {
		c := cfg(t, fmt.Sprintf("h%04d.example.com", i), 5)
		c.OriginUrl = "http://origin.internal/" + strings.Repeat("x", 300) // several parts
		ups = append(ups, c)
	}
	if err := st.Apply(snapshot(5, ups...)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "c")
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	before := st.Load()
	if err := st.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	for name, h := range st.Load().All() {
		if was, _ := before.Lookup(name); was != h {
			t.Fatalf("%s was prepared again", name)
		}
	}
	if st.Load().Len() != 2500 {
		t.Fatalf("%d hostnames", st.Load().Len())
	}
}
