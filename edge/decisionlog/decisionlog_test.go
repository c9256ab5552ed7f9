package decisionlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func sample() *Entry {
	return &Entry{
		Time:           time.Date(2026, 11, 30, 12, 0, 0, 123456000, time.FixedZone("x", 3600)),
		EdgeID:         "edge-1",
		DecisionID:     NewID(time.Now()),
		TenantID:       "acme",
		Hostname:       "pay.example.com",
		ConfigRevision: 42,
		Mode:           "enforce",
		Verdict:        "deny",
		Reason:         "cert_revoked",
		Rule:           "",
		Cert: Cert{
			Presented: true, FingerprintSHA256: "ab", SerialNumber: "1f",
			Subject: `CN=dev "1"\,O=x`, Issuer: "CN=Acme\u2028CA\x01",
			NotAfter: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		},
		Request: Request{Method: "GET", Path: "/v1/pay%20x"},
	}
}

func TestFields(t *testing.T) {
	line := AppendEntry(nil, sample())
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"cert", "config_revision", "decision_id", "edge_id", "hostname", "mode", "reason", "request", "rule", "tenant_id", "time", "verdict"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}
	cert := m["cert"].(map[string]any)
	var ck []string
	for k := range cert {
		ck = append(ck, k)
	}
	slices.Sort(ck)
	wantCert := []string{"fingerprint_sha256", "issuer", "not_after", "presented", "serial_number", "subject", "verified"}
	if !slices.Equal(ck, wantCert) {
		t.Errorf("cert keys %v, want %v", ck, wantCert)
	}
	if m["time"] != "2026-11-30T11:00:00.123456Z" {
		t.Errorf("time %v", m["time"])
	}
	if m["config_revision"] != 42.0 {
		t.Errorf("config_revision %v", m["config_revision"])
	}
	if cert["subject"] != `CN=dev "1"\,O=x` || cert["issuer"] != "CN=Acme\u2028CA\x01" {
		t.Errorf("strings did not round-trip: %v %v", cert["subject"], cert["issuer"])
	}
	if cert["not_after"] != "2027-01-01T00:00:00Z" {
		t.Errorf("not_after %v", cert["not_after"])
	}
	e := sample()
	e.Cert = Cert{}
	line = AppendEntry(nil, e)
	if !bytes.Contains(line, []byte(`"not_after":null`)) {
		t.Errorf("zero not_after not null: %s", line)
	}
	if bytes.ContainsAny(line, "\n") {
		t.Error("newline in line")
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a", "\"\\", "\x00\x1f\x7f", "\u2028\u2029", "\xff\xfe", "é€𝄞", "<>&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q -> %s: %v", s, b, err)
		}
		want := strings.ToValidUTF8(s, "\ufffd")
		// encoding/json replaces each invalid byte; ToValidUTF8 replaces runs: compare via json.
		ref, _ := json.Marshal(s)
		var refS string
		_ = json.Unmarshal(ref, &refS)
		if got != refS {
			t.Fatalf("%q: got %q, encoding/json %q (%q)", s, got, refS, want)
		}
	})
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestConcurrentWritesAreWholeLines(t *testing.T) {
	var out syncBuf
	l := New(&out)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				e := sample()
				e.Rule = strings.Repeat("r", (g*i)%300)
				if err := l.Write(e); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	sc.Buffer(nil, 1<<20)
	n := 0
	ids := map[string]bool{}
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		ids[m["decision_id"].(string)] = true
		n++
	}
	if n != 16000 {
		t.Errorf("%d lines, want 16000", n)
	}
	if l.Lines() != 16000 {
		t.Errorf("Lines() = %d", l.Lines())
	}
	if err := l.Write(sample()); !errors.Is(err, ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestFlushAndTicker(t *testing.T) {
	var out syncBuf
	l := New(&out)
	defer l.Close()
	if err := l.Write(sample()); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Fatal("Flush did not write the line")
	}
	_ = l.Write(sample())
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "\n") != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the writer did not write within FlushInterval")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type failing struct{}

func (failing) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteErrorReported(t *testing.T) {
	l := New(failing{})
	_ = l.Write(sample())
	if err := l.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Flush: %v", err)
	}
	if l.Err() == nil {
		t.Error("Err nil")
	}
	if err := l.Close(); err == nil {
		t.Error("Close: nil")
	}
}

type slow struct {
	syncBuf
	release chan struct{}
}

func (s *slow) Write(p []byte) (int, error) {
	<-s.release
	return s.syncBuf.Write(p)
}

func TestBackpressureDoesNotLose(t *testing.T) {
	s := &slow{release: make(chan struct{})}
	l := New(s)
	big := sample()
	big.Rule = strings.Repeat("x", 60<<10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 300 { // about 18 MiB, beyond maxPending
			if err := l.Write(big); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-done:
		t.Fatal("writes did not block although the destination is stuck")
	case <-time.After(300 * time.Millisecond):
	}
	close(s.release)
	<-done
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(s.String(), "\n"); n != 300 {
		t.Errorf("%d lines, want 300", n)
	}
}

func TestOpenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	for range 2 {
		l, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		_ = l.Write(sample())
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if strings.Count(string(data), "\n") != 2 {
		t.Errorf("not appended: %q", data)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Error("Open of a missing directory succeeded")
	}
}

// TestOpenRefusesSymlink: OpenNoFollow refuses a decision log path that is a symbolic link, whether it leads
// out of the directory (an existing file, or one that does not exist yet) or to another file in
// it, and nothing is written or created through it.
func TestOpenRefusesSymlink(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	victim := filepath.Join(elsewhere, "victim")
	if err := os.WriteFile(victim, []byte("victim\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sibling := filepath.Join(dir, "other.jsonl")
	if err := os.WriteFile(sibling, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{victim, filepath.Join(elsewhere, "created"), sibling, "other.jsonl"} {
		path := filepath.Join(dir, "decisions.jsonl")
		_ = os.Remove(path)
		if err := os.Symlink(target, path); err != nil {
			t.Skipf("symbolic links: %v", err)
		}
		l, err := OpenNoFollow(path)
		if err == nil {
			_ = l.Write(sample())
			_ = l.Close()
			t.Errorf("a symbolic link to %s was opened", target)
		} else if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("link to %s: error %q does not name the path and say it is a symbolic link", target, err)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "victim\n" {
		t.Errorf("the link's target was written: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(elsewhere, "created")); err == nil {
		t.Error("the link's missing target was created")
	}
	if b, _ := os.ReadFile(sibling); len(b) != 0 {
		t.Errorf("the link's target in the directory was written: %q", b)
	}
}

// TestOpenRelative: a path without a directory is opened in the working directory.
func TestOpenRelative(t *testing.T) {
	t.Chdir(t.TempDir())
	l, err := Open("decisions.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Write(sample())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile("decisions.jsonl"); strings.Count(string(b), "\n") != 1 {
		t.Errorf("decisions.jsonl holds %q", b)
	}
}

func TestNilLog(t *testing.T) {
	var l *Log
	if err := l.Write(sample()); err != nil {
		t.Error(err)
	}
	if l.Flush() != nil || l.Close() != nil || l.Err() != nil || l.Lines() != 0 {
		t.Error("nil log")
	}
}

func TestIDs(t *testing.T) {
	now := time.Now()
	prev := ""
	seen := map[string]bool{}
	for i := range 10000 {
		id := NewID(now.Add(time.Duration(i/100) * time.Millisecond))
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("bad id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate %s", id)
		}
		seen[id] = true
		if id <= prev {
			t.Fatalf("%s not after %s", id, prev)
		}
		prev = id
	}
	a, b := NewID(now), NewID(now.Add(time.Millisecond))
	if a[:12] == b[:12] || a > b {
		t.Error("time prefix")
	}
}

func TestEntryRoundTripMatchesReflect(t *testing.T) {
	type cert struct {
		Presented         bool    `json:"presented"`
		Verified          bool    `json:"verified"`
		FingerprintSHA256 string  `json:"fingerprint_sha256"`
		SerialNumber      string  `json:"serial_number"`
		Subject           string  `json:"subject"`
		Issuer            string  `json:"issuer"`
		NotAfter          *string `json:"not_after"`
	}
	type line struct {
		Time           string `json:"time"`
		EdgeID         string `json:"edge_id"`
		DecisionID     string `json:"decision_id"`
		TenantID       string `json:"tenant_id"`
		Hostname       string `json:"hostname"`
		ConfigRevision uint64 `json:"config_revision"`
		Mode           string `json:"mode"`
		Verdict        string `json:"verdict"`
		Reason         string `json:"reason"`
		Rule           string `json:"rule"`
		Cert           cert   `json:"cert"`
		Request        struct {
			Method string `json:"method"`
			Path   string `json:"path"`
		} `json:"request"`
	}
	e := sample()
	e.ConfigRevision = 1<<64 - 1
	var got line
	dec := json.NewDecoder(bytes.NewReader(AppendEntry(nil, e)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	na := "2027-01-01T00:00:00Z"
	want := line{Time: "2026-11-30T11:00:00.123456Z", EdgeID: e.EdgeID, DecisionID: e.DecisionID, TenantID: "acme",
		Hostname: "pay.example.com", ConfigRevision: 1<<64 - 1, Mode: "enforce", Verdict: "deny", Reason: "cert_revoked",
		Cert: cert{Presented: true, FingerprintSHA256: "ab", SerialNumber: "1f", Subject: e.Cert.Subject, Issuer: e.Cert.Issuer, NotAfter: &na}}
	want.Request.Method, want.Request.Path = "GET", "/v1/pay%20x"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func BenchmarkWrite(b *testing.B) {
	l := New(discard{})
	defer l.Close()
	e := sample()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = l.Write(e)
		}
	})
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	now := time.Now()
	for b.Loop() {
		_ = NewID(now)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestOpenFollowsSymlink: Open, for a path the operator chose, follows a symbolic link
// (--decision-log /dev/stdout in a container).
func TestOpenFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target.jsonl")
	link := filepath.Join(dir, "decisions.jsonl")
	if err := os.Symlink(target, link); err != nil {
		t.Skipf("symbolic links: %v", err)
	}
	l, err := Open(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Write(sample()); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); len(b) == 0 {
		t.Error("nothing was written through the link")
	}
}
