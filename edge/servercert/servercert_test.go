package servercert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestCreateThenReuse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "edge")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	if !ca.Certificate().IsCA {
		t.Error("not a CA")
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Certificate().Equal(ca.Certificate()) {
		t.Error("second start created a new CA")
	}
	if string(again.CertificatePEM()) != string(ca.CertificatePEM()) {
		t.Error("PEM differs")
	}
	if ca.CertificatePath() != filepath.Join(dir, CertFile) {
		t.Error("CertificatePath")
	}
}

func TestBrokenDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Fatal(err)
	}
	// Key alone.
	if err := os.Remove(filepath.Join(dir, CertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Error("key without certificate accepted")
	}
	// Mismatched key.
	other := t.TempDir()
	if _, err := LoadOrCreateCA(other); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(other, CertFile))
	if err := os.WriteFile(filepath.Join(dir, CertFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Error("mismatched key accepted")
	}
	// Garbage.
	if err := os.WriteFile(filepath.Join(dir, CertFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Error("garbage accepted")
	}
}

func TestLeafVerifiesAndIsCached(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c1, err := ca.GetCertificate("pay.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Leaf.Verify(x509.VerifyOptions{DNSName: "pay.example.com", Roots: ca.Pool()}); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	if _, err := c1.Leaf.Verify(x509.VerifyOptions{DNSName: "other.example.com", Roots: ca.Pool()}); err == nil {
		t.Fatal("leaf verifies for another name")
	}
	c2, _ := ca.GetCertificate("pay.example.com")
	if c1 != c2 {
		t.Error("not cached")
	}
	if _, err := ca.GetCertificate("Pay.Example.com"); err == nil {
		t.Error("non-normalised hostname accepted")
	}
	// Usable by crypto/tls.
	cfg := &tls.Config{Certificates: []tls.Certificate{*c1}}
	if err := cfg.Certificates[0].Leaf.VerifyHostname("pay.example.com"); err != nil {
		t.Error(err)
	}
}

func TestRenewal(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ca, err := LoadOrCreateCA(t.TempDir(), WithClock(clock), WithLeafLifetime(3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := ca.GetCertificate("a.example.com")
	mu.Lock()
	now = now.Add(time.Hour + 59*time.Minute)
	mu.Unlock()
	if c, _ := ca.GetCertificate("a.example.com"); c != c1 {
		t.Error("renewed too early")
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	c2, _ := ca.GetCertificate("a.example.com")
	if c2 == c1 {
		t.Fatal("not renewed after two thirds of the lifetime")
	}
	if !c2.Leaf.NotAfter.After(c1.Leaf.NotAfter) {
		t.Error("renewed leaf does not last longer")
	}
	if ca.Cached() != 1 {
		t.Errorf("cached %d, want 1", ca.Cached())
	}
}

func TestCacheBound(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), WithCacheSize(8))
	if err != nil {
		t.Fatal(err)
	}
	hot, _ := ca.GetCertificate("hot.example.com")
	for i := range 40 {
		if _, err := ca.GetCertificate(string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example.com"); err != nil {
			t.Fatal(err)
		}
		if c, _ := ca.GetCertificate("hot.example.com"); c != hot {
			t.Fatal("recently used entry evicted")
		}
	}
	if n := ca.Cached(); n > 8 {
		t.Errorf("cached %d, bound 8", n)
	}
}

func TestConcurrentIssue(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	certs := make([]*tls.Certificate, 16)
	for i := range certs {
		wg.Go(func() {
			c, err := ca.GetCertificate("c.example.com")
			if err != nil {
				t.Error(err)
			}
			certs[i] = c
		})
	}
	wg.Wait()
	for _, c := range certs {
		if c != certs[0] {
			t.Fatal("concurrent callers got different leaves")
		}
	}
}

// TestIssuesInParallel: a leaf being issued for one hostname does not hold up another hostname's,
// callers asking for the hostname meanwhile wait for that issuance and get its leaf, and a failed
// issuance is reported to all of them, caches nothing, and is tried again by the next caller.
func TestIssuesInParallel(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan error)
	var issued sync.Map // hostname -> issuances started
	ca.issueHook = func(hostname string) error {
		n, _ := issued.LoadOrStore(hostname, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if hostname == "slow.example.com" {
			entered <- struct{}{}
			return <-release
		}
		return nil
	}
	type result struct {
		cert *tls.Certificate
		err  error
	}
	slow := func() chan result {
		ch := make(chan result, 1)
		go func() {
			c, err := ca.GetCertificate("slow.example.com")
			ch <- result{c, err}
		}()
		return ch
	}
	issues := func(hostname string) int32 {
		n, ok := issued.Load(hostname)
		if !ok {
			return 0
		}
		return n.(*atomic.Int32).Load()
	}
	// waiting waits until n callers wait for the issuance for slow.example.com.
	waiting := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
			ca.mu.Lock()
			in := ca.inflight["slow.example.com"]
			got := 0
			if in != nil {
				got = in.waiters
			}
			ca.mu.Unlock()
			if got == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d callers wait for slow.example.com's issuance, want %d", got, n)
			}
		}
	}
	// waitFor fails the test if ch has no result soon: the deadlock the old single lock would
	// have made, not a timing goal.
	waitFor := func(ch chan result) result {
		t.Helper()
		select {
		case r := <-ch:
			return r
		case <-time.After(30 * time.Second):
			t.Fatal("no result after 30 s")
			return result{}
		}
	}

	first := slow()
	<-entered // slow.example.com is being issued, and stays so until released
	second := slow()
	waiting(1)
	fast := make(chan result, 1)
	go func() {
		c, err := ca.GetCertificate("fast.example.com")
		fast <- result{c, err}
	}()
	if r := waitFor(fast); r.err != nil || r.cert == nil {
		t.Fatalf("fast.example.com while slow.example.com is issued: %v", r.err)
	}
	select {
	case r := <-second:
		t.Fatalf("a second caller for slow.example.com returned before its issuance ended: %+v", r)
	default:
	}

	// The issuance fails: both callers get its error, nothing is cached.
	boom := errors.New("injected failure")
	release <- boom
	for _, ch := range []chan result{first, second} {
		if r := waitFor(ch); !errors.Is(r.err, boom) || r.cert != nil {
			t.Errorf("a caller of the failed issuance: %v, %v", r.cert, r.err)
		}
	}
	if got := issues("slow.example.com"); got != 1 {
		t.Errorf("slow.example.com issued %d times for two callers, want 1", got)
	}
	if n := ca.Cached(); n != 1 {
		t.Errorf("cached %d leaves, want 1 (fast.example.com)", n)
	}

	// The next caller issues again; one waiting meanwhile gets the same leaf.
	third := slow()
	<-entered
	fourth := slow()
	waiting(1)
	release <- nil
	r3, r4 := waitFor(third), waitFor(fourth)
	if r3.err != nil || r4.err != nil || r3.cert == nil || r3.cert != r4.cert {
		t.Fatalf("after a retry: %v %v, the same leaf: %v", r3.err, r4.err, r3.cert == r4.cert)
	}
	if got := issues("slow.example.com"); got != 2 {
		t.Errorf("slow.example.com issued %d times, want 2", got)
	}
	if c, err := ca.GetCertificate("slow.example.com"); err != nil || c != r3.cert {
		t.Errorf("the issued leaf is not cached: %v", err)
	}
	if leaf := r3.cert.Leaf; leaf.VerifyHostname("slow.example.com") != nil {
		t.Errorf("leaf for %v", leaf.DNSNames)
	}
}
