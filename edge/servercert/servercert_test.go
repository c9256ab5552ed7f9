package servercert

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
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
