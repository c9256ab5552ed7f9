package configset

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

var (
	caOnce sync.Once
	caDER  []byte
)

func testCA(t testing.TB) []byte {
	caOnce.Do(func() { caDER = pkitest.NewCA(t, "Acme Device CA").Cert.Raw })
	return caDER
}

func cfg(t testing.TB, name string, version uint64) *configv1.HostnameConfig {
	return &configv1.HostnameConfig{
		Hostname: name, TenantId: "acme", Active: true, OriginUrl: "http://127.0.0.1:8081",
		Mode:                   configv1.MtlsMode_MTLS_MODE_ENFORCE,
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "root", CertificateDer: testCA(t)}},
		Policy:                 &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{{Name: "verified", Action: configv1.Action_ACTION_ALLOW, Expression: "cert.verified"}}},
		Version:                version,
	}
}

// unpreparable returns a configuration of name that cannot be prepared: its policy's
// expression does not compile.
func unpreparable(t testing.TB, name string, version uint64) *configv1.HostnameConfig {
	c := cfg(t, name, version)
	c.Policy.Rules[0].Expression = "cret.verified"
	return c
}

func snapshot(pos uint64, cfgs ...*configv1.HostnameConfig) *configv1.WatchResponse {
	return &configv1.WatchResponse{Position: pos, Snapshot: true, Upserts: cfgs}
}

func delta(pos uint64, removals []string, cfgs ...*configv1.HostnameConfig) *configv1.WatchResponse {
	return &configv1.WatchResponse{Position: pos, Upserts: cfgs, Removals: removals}
}

// contents returns the set as hostname -> version.
func contents(s *Set) map[string]uint64 {
	out := map[string]uint64{}
	for name, h := range s.All() {
		if h.Name() != name {
			panic("name mismatch")
		}
		out[name] = h.Config.GetVersion()
	}
	return out
}

func check(t *testing.T, s *Set, pos uint64, want map[string]uint64) {
	t.Helper()
	if s.Position() != pos {
		t.Errorf("Position = %d, want %d", s.Position(), pos)
	}
	if s.Len() != len(want) {
		t.Errorf("Len = %d, want %d", s.Len(), len(want))
	}
	if got := contents(s); !maps.Equal(got, want) {
		t.Errorf("contents = %v, want %v", got, want)
	}
	for name, v := range want {
		h, ok := s.Lookup(name)
		if !ok || h.Config.GetVersion() != v || h.Name() != name {
			t.Errorf("Lookup(%q) = %v, %v", name, h, ok)
		}
	}
	if h, ok := s.Lookup("absent.example.com"); ok || h != nil {
		t.Errorf("Lookup(absent) = %v, %v", h, ok)
	}
}

func TestSnapshotThenDeltas(t *testing.T) {
	st := NewStore()
	s0 := st.Load()
	if s0.Len() != 0 || s0.Position() != 0 || s0.Complete() {
		t.Fatalf("new store: %d %d %v", s0.Len(), s0.Position(), s0.Complete())
	}
	if _, ok := s0.Lookup("a.example.com"); ok {
		t.Fatal("found in an empty set")
	}
	if err := st.Apply(snapshot(10, cfg(t, "a.example.com", 3), cfg(t, "b.example.com", 10))); err != nil {
		t.Fatal(err)
	}
	s1 := st.Load()
	check(t, s1, 10, map[string]uint64{"a.example.com": 3, "b.example.com": 10})
	if !s1.Complete() {
		t.Error("not complete after a snapshot")
	}
	// Change a, add c, remove b.
	if err := st.Apply(delta(12, []string{"b.example.com"}, cfg(t, "a.example.com", 11), cfg(t, "c.example.com", 12))); err != nil {
		t.Fatal(err)
	}
	s2 := st.Load()
	check(t, s2, 12, map[string]uint64{"a.example.com": 11, "c.example.com": 12})
	// The previous set is unchanged.
	check(t, s1, 10, map[string]uint64{"a.example.com": 3, "b.example.com": 10})
	// Removing what is not there, and a change at the same position, are fine.
	if err := st.Apply(delta(12, []string{"zzz.example.com"})); err != nil {
		t.Fatal(err)
	}
	check(t, st.Load(), 12, map[string]uint64{"a.example.com": 11, "c.example.com": 12})
	// A snapshot replaces everything.
	if err := st.Apply(snapshot(20, cfg(t, "d.example.com", 20))); err != nil {
		t.Fatal(err)
	}
	check(t, st.Load(), 20, map[string]uint64{"d.example.com": 20})
	check(t, s2, 12, map[string]uint64{"a.example.com": 11, "c.example.com": 12})
	// An empty snapshot empties the set.
	if err := st.Apply(snapshot(21)); err != nil {
		t.Fatal(err)
	}
	check(t, st.Load(), 21, map[string]uint64{})
}

func TestPreparedHostnamesDecide(t *testing.T) {
	st := NewStore()
	c := cfg(t, "pay.example.com", 1)
	c.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	if err := st.Apply(snapshot(1, c, cfg(t, "api.example.com", 1))); err != nil {
		t.Fatal(err)
	}
	h, _ := st.Load().Lookup("pay.example.com")
	if d := decision.Decide(h, nil, nil, time.Now()); d.Reason != decision.ReasonMTLSOff {
		t.Fatalf("Decide = %+v", d)
	}
}

func TestRefused(t *testing.T) {
	tests := []struct {
		name string
		resp *configv1.WatchResponse
		want string
	}{
		{"fail/nil", nil, "no response"},
		{"fail/position backwards", snapshot(9, cfg(t, "x.example.com", 1)), "position goes backwards"},
		{"fail/part", &configv1.WatchResponse{Position: 11, Snapshot: true, More: true}, "more = true"},
		{"fail/removals in snapshot", &configv1.WatchResponse{Position: 11, Snapshot: true, Removals: []string{"a.example.com"}}, "snapshot with 1 removals"},
		{"fail/upserted twice in a change", delta(11, nil, cfg(t, "x.example.com", 11), cfg(t, "x.example.com", 11)), `upserts[0] and upserts[1] are both "x.example.com"`},
		{"fail/upserted twice in a snapshot", snapshot(11, cfg(t, "x.example.com", 11), cfg(t, "x.example.com", 11)), `"x.example.com" is upserted twice`},
		{"fail/upserted and removed", delta(11, []string{"x.example.com"}, cfg(t, "x.example.com", 11)), "both upserted"},
		{"fail/version beyond position", delta(11, nil, cfg(t, "x.example.com", 12)), "version 12"},
		{"fail/nil upsert", delta(11, nil, nil), "upserts[0] is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore()
			if err := st.Apply(snapshot(10, cfg(t, "a.example.com", 3))); err != nil {
				t.Fatal(err)
			}
			before := st.Load()
			err := st.Apply(tc.resp)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Apply error = %v, want one containing %q", err, tc.want)
			}
			if st.Load() != before {
				t.Fatal("the set changed")
			}
			check(t, st.Load(), 10, map[string]uint64{"a.example.com": 3})
		})
	}
	t.Run("fail/change before snapshot", func(t *testing.T) {
		st := NewStore()
		err := st.Apply(delta(5, nil, cfg(t, "a.example.com", 3)))
		if err == nil || !strings.Contains(err.Error(), "no snapshot") {
			t.Fatalf("Apply = %v", err)
		}
		if st.Load().Len() != 0 {
			t.Fatal("changed")
		}
	})
}

// TestReplacesHistory: a snapshot behind the set's position is taken only when it replaces the
// history (the event store no longer has the set's); the set then holds the snapshot's history
// token. A change never moves the set back, nor replaces the history; parts must agree.
func TestReplacesHistory(t *testing.T) {
	st := NewStore()
	first := snapshot(10, cfg(t, "a.example.com", 3), cfg(t, "b.example.com", 9))
	first.HistoryToken = []byte("old history at 10")
	if err := st.Apply(first); err != nil {
		t.Fatal(err)
	}
	if got := string(st.Load().HistoryToken()); got != "old history at 10" {
		t.Fatalf("history token %q", got)
	}
	back := snapshot(5, cfg(t, "a.example.com", 4))
	back.HistoryToken = []byte("new history at 5")
	if err := st.Apply(back); err == nil || !strings.Contains(err.Error(), "backwards") {
		t.Fatalf("Apply(a snapshot behind, not replacing the history) = %v", err)
	}
	change := delta(11, nil, cfg(t, "c.example.com", 11))
	change.ReplacesHistory = true
	if err := st.Apply(change); err == nil || !strings.Contains(err.Error(), "replaces_history") {
		t.Fatalf("Apply(a change replacing the history) = %v", err)
	}
	check(t, st.Load(), 10, map[string]uint64{"a.example.com": 3, "b.example.com": 9})
	back.ReplacesHistory = true
	if err := st.Apply(back); err != nil {
		t.Fatal(err)
	}
	check(t, st.Load(), 5, map[string]uint64{"a.example.com": 4})
	if got := string(st.Load().HistoryToken()); got != "new history at 5" {
		t.Errorf("history token %q, want the replacing snapshot's", got)
	}
	for name, parts := range map[string][]*configv1.WatchResponse{
		"replaces_history": {{Position: 5, Snapshot: true, ReplacesHistory: true, More: true}, {Position: 5, Snapshot: true}},
		"history token":    {{Position: 5, Snapshot: true, HistoryToken: []byte("a"), More: true}, {Position: 5, Snapshot: true, HistoryToken: []byte("b")}},
	} {
		if _, err := Merge(parts...); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Merge(parts disagreeing on %s) = %v", name, err)
		}
	}
}

// TestBadUpsertsLeftOut: an upsert that cannot be prepared does not hold up the rest of its
// response (other tenants' revocations, say); its hostname is left out of the set, also when the
// set had it, so that the edge refuses it rather than serve a configuration since replaced.
func TestBadUpsertsLeftOut(t *testing.T) {
	badCA := func(name string, v uint64) *configv1.HostnameConfig {
		c := cfg(t, name, v)
		c.CertificateAuthorities[0].CertificateDer = []byte{1, 2, 3}
		return c
	}
	tests := []struct {
		name    string
		resp    *configv1.WatchResponse
		want    map[string]uint64 // the set after, at the response's position
		refused []string          // in the error: `upserts[i] ("name"): cause`
	}{
		{"ok/bad policy in a change", delta(11, nil, cfg(t, "x.example.com", 11), unpreparable(t, "bad.example.com", 11)),
			map[string]uint64{"a.example.com": 3, "b.example.com": 4, "x.example.com": 11}, []string{`upserts[1] ("bad.example.com"): decision: hostname "bad.example.com": policy "p": rule "verified"`}},
		{"ok/bad update of a served hostname removes it", delta(11, []string{"b.example.com"}, badCA("a.example.com", 11)),
			map[string]uint64{}, []string{`upserts[0] ("a.example.com")`, "certificate_der does not parse"}},
		{"ok/bad upserts in a snapshot", snapshot(11, unpreparable(t, "a.example.com", 11), cfg(t, "x.example.com", 11), badCA("y.example.com", 11)),
			map[string]uint64{"x.example.com": 11}, []string{`upserts[0] ("a.example.com")`, `upserts[2] ("y.example.com")`}},
		{"ok/hostname not normalised", delta(11, nil, cfg(t, "X.example.com", 11)),
			map[string]uint64{"a.example.com": 3, "b.example.com": 4}, []string{`upserts[0] ("X.example.com")`, "not in normal form"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore()
			if err := st.Apply(snapshot(10, cfg(t, "a.example.com", 3), cfg(t, "b.example.com", 4))); err != nil {
				t.Fatal(err)
			}
			err := st.Apply(tc.resp)
			var refused *RefusedError
			if !errors.As(err, &refused) || refused.Position != 11 {
				t.Fatalf("Apply = %v, want a *RefusedError at position 11", err)
			}
			for _, w := range tc.refused {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			check(t, st.Load(), 11, tc.want)
		})
	}
}

// TestBadUpsertInLargeResponse checks that the parallel preparation reports every failing upsert,
// in order, and applies the others.
func TestBadUpsertInLargeResponse(t *testing.T) {
	st := NewStore()
	if err := st.Apply(snapshot(1, cfg(t, "keep.example.com", 1))); err != nil {
		t.Fatal(err)
	}
	var ups []*configv1.HostnameConfig
	for i := range 3000 {
		c := cfg(t, fmt.Sprintf("h%d.example.com", i), 2)
		if i == 1700 || i == 2900 || i == 3 {
			c.Mode = 0
		}
		ups = append(ups, c)
	}
	for range 3 {
		err := st.Apply(snapshot(2, ups...))
		var refused *RefusedError
		if !errors.As(err, &refused) || len(refused.Refused) != 3 ||
			refused.Refused[0].Index != 3 || refused.Refused[1].Index != 1700 || refused.Refused[2].Index != 2900 ||
			refused.Refused[1].Hostname != "h1700.example.com" {
			t.Fatalf("Apply = %v", err)
		}
		if _, ok := st.Load().Lookup("h1700.example.com"); ok || st.Load().Len() != 2997 || st.Load().Position() != 2 {
			t.Fatalf("set at %d with %d hostnames", st.Load().Position(), st.Load().Len())
		}
	}
	ups[1700].Mode, ups[2900].Mode, ups[3].Mode = configv1.MtlsMode_MTLS_MODE_REPORT, configv1.MtlsMode_MTLS_MODE_REPORT, configv1.MtlsMode_MTLS_MODE_REPORT
	if err := st.Apply(snapshot(2, ups...)); err != nil {
		t.Fatal(err)
	}
	if st.Load().Len() != 3000 {
		t.Fatalf("Len = %d", st.Load().Len())
	}
}

func TestMerge(t *testing.T) {
	a, b := cfg(t, "a.example.com", 1), cfg(t, "b.example.com", 1)
	parts := []*configv1.WatchResponse{
		{Position: 5, Snapshot: true, Upserts: []*configv1.HostnameConfig{a}, More: true},
		{Position: 5, Snapshot: true, More: true},
		{Position: 5, Snapshot: true, Upserts: []*configv1.HostnameConfig{b}},
	}
	m, err := Merge(parts...)
	if err != nil {
		t.Fatal(err)
	}
	if m.GetPosition() != 5 || !m.GetSnapshot() || m.GetMore() || len(m.GetUpserts()) != 2 {
		t.Fatalf("Merge = %v", m)
	}
	single := &configv1.WatchResponse{Position: 5}
	if m, err := Merge(single); err != nil || m != single {
		t.Fatalf("Merge(single) = %v, %v", m, err)
	}
	bad := [][]*configv1.WatchResponse{
		nil,
		{nil},
		{parts[0]},
		{parts[2], parts[0]},
		{parts[0], {Position: 6, Snapshot: true}},
		{parts[0], {Position: 5}},
		{parts[0], nil},
	}
	for i, ps := range bad {
		if _, err := Merge(ps...); err == nil {
			t.Errorf("Merge(bad[%d]) succeeded", i)
		}
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edge-config.binpb")
	st := NewStore()
	if err := st.Save(path); err == nil {
		t.Fatal("Save of an incomplete set succeeded")
	}
	// A missing file is no error and changes nothing.
	if err := st.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if st.Load().Len() != 0 || st.Load().Complete() {
		t.Fatal("LoadFile of a missing file changed the set")
	}
	var ups []*configv1.HostnameConfig
	want := map[string]uint64{}
	for i := range 2500 {
		c := cfg(t, fmt.Sprintf("h%04d.example.com", i), uint64(i+1))
		// Big enough that the file has several parts.
		c.OriginUrl = "http://origin.internal/" + strings.Repeat("x", 300)
		ups = append(ups, c)
		want[c.Hostname] = uint64(i + 1)
	}
	if err := st.Apply(snapshot(4000, ups...)); err != nil {
		t.Fatal(err)
	}
	change := delta(4001, []string{"h0000.example.com"})
	change.HistoryToken = []byte("token of 4001")
	if err := st.Apply(change); err != nil {
		t.Fatal(err)
	}
	delete(want, "h0000.example.com")
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the directory holds %d files, want 1 (no temporary file left)", len(entries))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode: %v, %v", fi, err)
	}
	st2 := NewStore()
	if err := st2.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	check(t, st2.Load(), 4001, want)
	if !st2.Load().Complete() {
		t.Error("loaded set not complete")
	}
	if got := string(st2.Load().HistoryToken()); got != "token of 4001" {
		t.Errorf("loaded history token %q, want the saved one", got)
	}
	for name := range want {
		a, _ := st.Load().Lookup(name)
		b, _ := st2.Load().Lookup(name)
		if !proto.Equal(a.Config, b.Config) {
			t.Fatalf("%s differs after the round trip", name)
		}
	}
	// Changes apply after loading.
	if err := st2.Apply(delta(4002, []string{"h0001.example.com"})); err != nil {
		t.Fatal(err)
	}
	// The file is several parts, ordered by hostname; saving again gives the same bytes.
	raw, _ := os.ReadFile(path)
	resp, _, _, err := readSet(bufioReader(raw), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(resp.Upserts); i++ {
		if resp.Upserts[i-1].Hostname >= resp.Upserts[i].Hostname {
			t.Fatal("not sorted")
		}
	}
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	if raw2, _ := os.ReadFile(path); string(raw2) != string(raw) {
		t.Error("saving the same set twice gives different files")
	}
	// A file behind the store's position is refused.
	if err := st2.LoadFile(path); err == nil || !strings.Contains(err.Error(), "backwards") {
		t.Errorf("LoadFile of an older file = %v", err)
	}
}

func TestLoadFileRefuses(t *testing.T) {
	st, dir, _, good := savedFile(t)
	// One bit of one hostname's mode flipped: ENFORCE (field 5 = 2, followed by field 7, the CAs)
	// becomes REPORT (3), which forwards every request; the file still parses.
	enforce, report := []byte{0x28, 0x02, 0x3a}, []byte{0x28, 0x03, 0x3a}
	if n := bytes.Count(good, enforce); n != 2 {
		t.Fatalf("the saved file holds the mode ENFORCE %d times, want 2", n)
	}
	flipped := bytes.Replace(good, enforce, report, 1)
	moreFile, _ := proto.Marshal(&configv1.WatchResponse{Position: 9, Snapshot: true, More: true})
	changeFile, _ := proto.Marshal(&configv1.WatchResponse{Position: 9})
	cases := map[string][]byte{
		"empty":          {},
		"garbage":        []byte("not a protobuf file at all"),
		"truncated":      good[:len(good)-3],
		"flipped bit":    flipped,
		"last part more": varint(moreFile),
		"not a snapshot": varint(changeFile),
	}
	for name, data := range cases {
		t.Run("fail/"+name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			st2 := NewStore()
			if err := st2.Apply(snapshot(1, cfg(t, "keep.example.com", 1))); err != nil {
				t.Fatal(err)
			}
			before := st2.Load()
			if err := st2.LoadFile(p); err == nil {
				t.Fatal("LoadFile succeeded")
			} else if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
			if st2.Load() != before {
				t.Fatal("the set changed")
			}
		})
	}
	if err := st.Save(filepath.Join(dir, "no-such-dir", "c")); err == nil {
		t.Error("Save into a missing directory succeeded")
	}
	p := filepath.Join(dir, "flipped bit")
	if err := NewStore().LoadFile(p); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("LoadFile of a damaged file = %v, want an error saying so", err)
	}
	// Data after the trailer that is not a change appended to this file (here, the file again:
	// its part is framed and checksummed as a change would be, but its checksum does not chain
	// from the trailer before it) is a tail left out, as a crash during an append leaves one.
	got, tail := loaded(t, writeTemp(t, dir, slices.Concat(good, good)))
	if tail == nil || tail.Offset != int64(len(good)) || tail.Changes != 0 || !strings.Contains(tail.Error(), "not of this file") {
		t.Fatalf("LoadFile of the file twice: tail %v, want one left out from byte %d", tail, len(good))
	}
	sameSet(t, st.Load(), got.Load())
}

// TestLoadFileWithoutTrailer: a file written before files had a checksum trailer (it ends with
// its last part) still loads; the same file with its trailer damaged does not.
func TestLoadFileWithoutTrailer(t *testing.T) {
	_, dir, _, good := savedFile(t)
	trailer := len(trailerMagic) + 4
	if !bytes.HasPrefix(good[len(good)-trailer:], []byte(trailerMagic)) {
		t.Fatal("the saved file does not end with the trailer")
	}
	damagedSum := bytes.Clone(good)
	damagedSum[len(damagedSum)-1] ^= 1
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"ok/without trailer", good[:len(good)-trailer], true},
		{"ok/with trailer", good, true},
		{"fail/damaged checksum", damagedSum, false},
		{"fail/magic only", good[:len(good)-4], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, "/", "-"))
			if err := os.WriteFile(p, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			st2 := NewStore()
			err := st2.LoadFile(p)
			if !tc.ok {
				if err == nil {
					t.Fatal("LoadFile succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			check(t, st2.Load(), 7, map[string]uint64{"a.example.com": 7, "b.example.com": 7})
		})
	}
}

func TestConcurrentLoadDuringApply(t *testing.T) {
	st := NewStore()
	if err := st.Apply(snapshot(1, cfg(t, "stable.example.com", 1))); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Go(func() {
			last := uint64(0)
			for i := 0; !stop.Load(); i++ {
				s := st.Load()
				if s.Position() < last {
					t.Errorf("reader %d: position went back from %d to %d", r, last, s.Position())
					return
				}
				last = s.Position()
				h, ok := s.Lookup("stable.example.com")
				if !ok || h.Name() != "stable.example.com" {
					t.Errorf("reader %d: stable hostname missing at position %d", r, s.Position())
					return
				}
				// Every set is consistent: hostnames named after the set's position are all there.
				if p := s.Position(); p > 1 {
					if _, ok := s.Lookup(fmt.Sprintf("p%d-0.example.com", p)); !ok {
						t.Errorf("reader %d: p%d-0 missing", r, p)
						return
					}
				}
				n := 0
				for range s.All() {
					n++
				}
				if n != s.Len() {
					t.Errorf("reader %d: All yields %d, Len %d", r, n, s.Len())
					return
				}
			}
		})
	}
	for p := uint64(2); p < 60; p++ {
		ups := []*configv1.HostnameConfig{cfg(t, fmt.Sprintf("p%d-0.example.com", p), p), cfg(t, fmt.Sprintf("p%d-1.example.com", p), p)}
		var rem []string
		if p > 3 {
			rem = []string{fmt.Sprintf("p%d-1.example.com", p-1)}
		}
		if err := st.Apply(delta(p, rem, ups...)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
}

// TestTrieModel applies random changes and compares with a map.
func TestTrieModel(t *testing.T) {
	st := NewStore()
	if err := st.Apply(snapshot(0)); err != nil {
		t.Fatal(err)
	}
	model := map[string]uint64{}
	rng := rand.New(rand.NewPCG(1, 2))
	var sets []*Set
	var models []map[string]uint64
	for pos := uint64(1); pos <= 200; pos++ {
		var ups []*configv1.HostnameConfig
		var rem []string
		touched := map[string]bool{}
		for range rng.IntN(40) {
			name := fmt.Sprintf("n%d.example.com", rng.IntN(400))
			if touched[name] {
				continue
			}
			touched[name] = true
			if rng.IntN(3) == 0 {
				rem = append(rem, name)
				delete(model, name)
			} else {
				ups = append(ups, cfg(t, name, pos))
				model[name] = pos
			}
		}
		if err := st.Apply(delta(pos, rem, ups...)); err != nil {
			t.Fatal(err)
		}
		sets = append(sets, st.Load())
		models = append(models, maps.Clone(model))
	}
	for i, s := range sets {
		check(t, s, uint64(i+1), models[i])
	}
}

// TestTrieCollisions forces equal hashes to exercise collision nodes.
func TestTrieCollisions(t *testing.T) {
	const same = 0xdeadbeef
	hashOf := func(name string) uint64 {
		if name == "e.example.com" {
			return same ^ 1<<63
		}
		return same
	}
	mk := func(name string, v uint64) *decision.Hostname {
		h, err := decision.Prepare(&configv1.HostnameConfig{Hostname: name + ".example.com", Mode: configv1.MtlsMode_MTLS_MODE_OFF, Version: v})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	tx := &txn{edit: 1, hashOf: hashOf}
	var root *node
	names := []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}
	for i, n := range names {
		var added bool
		root, added = tx.insert(root, 0, same, mk(strings.TrimSuffix(n, ".example.com"), uint64(i)))
		if !added {
			t.Fatal("not added")
		}
	}
	// An entry with another hash next to them.
	root, _ = tx.insert(root, 0, same^1<<63, mk("e", 9))
	tx2 := &txn{edit: 2, hashOf: hashOf}
	root2, added := tx2.insert(root, 0, same, mk("b", 7))
	if added {
		t.Fatal("replace reported as add")
	}
	if lookup(root, same, "b.example.com").Config.GetVersion() != 1 || lookup(root2, same, "b.example.com").Config.GetVersion() != 7 {
		t.Fatal("replace in a collision node")
	}
	if lookup(root2, same, "e.example.com") != nil || lookup(root2, same^1<<63, "e.example.com") == nil {
		t.Fatal("lookup by hash")
	}
	n := 0
	walk(root2, func(string, *decision.Hostname) bool { n++; return true })
	if n != 5 {
		t.Fatalf("walk yields %d entries", n)
	}
	for _, n := range names {
		var removed bool
		root2, removed = tx2.remove(root2, 0, same, n)
		if !removed {
			t.Fatalf("%s not removed", n)
		}
		if lookup(root2, same, n) != nil {
			t.Fatalf("%s still there", n)
		}
	}
	if _, removed := tx2.remove(root2, 0, same, "zz.example.com"); removed {
		t.Fatal("removed an absent name")
	}
	if lookup(root2, same^1<<63, "e.example.com") == nil || len(root2.slots) != 1 || root2.slots[0].sub != nil {
		t.Fatal("the lone entry did not move up to the root")
	}
	// The first version is intact.
	for _, n := range names {
		if lookup(root, same, n) == nil {
			t.Fatalf("%s lost from the old version", n)
		}
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

// varint frames one message as protodelim does.
func varint(msg []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(msg))), msg...)
}

// TestSaveReusesItsTemporaryFile: a crash during Save leaves its temporary file; the next Save
// replaces that same file, so that a crash loop leaves at most one, whatever the leftover's mode,
// and never writes through a symbolic link put in its place.
func TestSaveReusesItsTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edge-config.binpb")
	leftover := filepath.Join(dir, ".edge-config.binpb.tmp")
	if err := os.WriteFile(leftover, bytes.Repeat([]byte("partial"), 1000), 0o400); err != nil { // not writable
		t.Fatal(err)
	}
	// A leftover symbolic link is removed, not written through.
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "decisions.jsonl"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := NewStore()
	if err := st.Apply(snapshot(3, cfg(t, "a.example.com", 3))); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := st.Save(path); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := os.Symlink(target, leftover); err != nil {
				t.Fatal(err)
			}
		}
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "keep" {
		t.Errorf("the symbolic link's target was written through: %q, %v", b, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"decisions.jsonl", "edge-config.binpb"}) {
		t.Errorf("the directory holds %v, want the saved file and the other file only", names)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("saved file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	loaded := NewStore()
	if err := loaded.LoadFile(path); err != nil || loaded.Load().Position() != 3 {
		t.Fatalf("LoadFile = %v, position %d", err, loaded.Load().Position())
	}
}

// TestRefusedHostnamesKept: the set remembers which hostnames of its configuration it leaves out,
// through later changes and a restart from its file, so that the edge can ask for them again
// (watch: a snapshot) once it may be able to prepare them.
func TestRefusedHostnamesKept(t *testing.T) {
	st := NewStore()
	steps := []struct {
		resp *configv1.WatchResponse
		want []string
	}{
		{snapshot(2, cfg(t, "a.example.com", 2), unpreparable(t, "b.example.com", 2), unpreparable(t, "c.example.com", 2)), []string{"b.example.com", "c.example.com"}},
		{delta(3, nil, cfg(t, "d.example.com", 3)), []string{"b.example.com", "c.example.com"}},                           // untouched
		{delta(4, nil, unpreparable(t, "a.example.com", 4)), []string{"a.example.com", "b.example.com", "c.example.com"}}, // served, now refused
		{delta(5, []string{"c.example.com"}, cfg(t, "b.example.com", 5)), []string{"a.example.com"}},                      // fixed, removed
	}
	for i, step := range steps {
		err := st.Apply(step.resp)
		var refused *RefusedError
		if err != nil && !errors.As(err, &refused) {
			t.Fatalf("step %d: Apply = %v", i, err)
		}
		if got := st.Load().Refused(); !slices.Equal(got, step.want) {
			t.Fatalf("step %d: Refused = %v, want %v", i, got, step.want)
		}
	}
	path := filepath.Join(t.TempDir(), "edge-config.binpb")
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	again := NewStore()
	if err := again.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if got := again.Load().Refused(); !slices.Equal(got, []string{"a.example.com"}) || again.Load().Position() != 5 {
		t.Fatalf("after LoadFile: position %d, Refused = %v", again.Load().Position(), got)
	}
	check(t, again.Load(), 5, map[string]uint64{"b.example.com": 5, "d.example.com": 3})
	// A snapshot starts the list afresh.
	if err := again.Apply(snapshot(6, cfg(t, "a.example.com", 6))); err != nil {
		t.Fatal(err)
	}
	if got := again.Load().Refused(); got != nil {
		t.Fatalf("after a snapshot: Refused = %v", got)
	}
}

// TestSnapshotDuplicateWithARefusedCopy: a hostname twice in a snapshot is refused as a whole
// also when one of the two, or both, cannot be prepared (the other would be served, while the ack says the
// hostname was left out).
func TestSnapshotDuplicateWithARefusedCopy(t *testing.T) {
	bad := unpreparable(t, "x.example.com", 5)
	for _, order := range [][]*configv1.HostnameConfig{{bad, cfg(t, "x.example.com", 4)}, {cfg(t, "x.example.com", 4), bad}, {bad, bad}} {
		st := NewStore()
		if err := st.Apply(snapshot(1, cfg(t, "a.example.com", 1))); err != nil {
			t.Fatal(err)
		}
		err := st.Apply(snapshot(5, order...))
		var refused *RefusedError
		if err == nil || errors.As(err, &refused) || !strings.Contains(err.Error(), "upserted twice") {
			t.Fatalf("Apply = %v, want the whole snapshot refused", err)
		}
		check(t, st.Load(), 1, map[string]uint64{"a.example.com": 1})
	}
}

// TestLoadFileLeavesOutWhatItCannotPrepare: a file written by a newer edge may hold a
// configuration this version cannot prepare (after a rollback); the rest is loaded, and the
// hostname is refused and remembered, so that the edge asks for it again (watch: want_snapshot)
// instead of failing to start.
func TestLoadFileLeavesOutWhatItCannotPrepare(t *testing.T) {
	bad := cfg(t, "c.example.com", 1)
	bad.CertificateAuthorities[0].CertificateDer = []byte("nope")
	file, _ := proto.Marshal(&configv1.WatchResponse{Position: 9, Snapshot: true, Upserts: []*configv1.HostnameConfig{cfg(t, "a.example.com", 2), bad}, Removals: []string{"d.example.com"}})
	p := filepath.Join(t.TempDir(), "edge-config.pb")
	if err := os.WriteFile(p, varint(file), 0o600); err != nil {
		t.Fatal(err)
	}
	st := NewStore()
	err := st.LoadFile(p)
	var refused *RefusedError
	if !errors.As(err, &refused) || len(refused.Refused) != 1 || refused.Refused[0].Hostname != "c.example.com" {
		t.Fatalf("LoadFile = %v, want a *RefusedError naming c.example.com", err)
	}
	check(t, st.Load(), 9, map[string]uint64{"a.example.com": 2})
	if got := st.Load().Refused(); !slices.Equal(got, []string{"c.example.com", "d.example.com"}) {
		t.Fatalf("Refused = %v, want the one left out now and the one the file had left out", got)
	}
}

// savedFile saves a set of two hostnames at position 7 to a file in a new directory, and returns
// the store, the directory, the file's path and its bytes.
func savedFile(t *testing.T) (st *Store, dir, path string, good []byte) {
	t.Helper()
	dir = t.TempDir()
	st = NewStore()
	if err := st.Apply(snapshot(7, cfg(t, "a.example.com", 7), cfg(t, "b.example.com", 7))); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "c")
	if err := st.Save(path); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return st, dir, path, good
}
