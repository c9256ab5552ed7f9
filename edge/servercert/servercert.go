// Package servercert provides the server certificates the edge presents: a local edge CA kept in
// a directory, which issues a leaf certificate for each hostname on demand.
//
// This is the development setup (`guestlist dev`): clients trust the CA certificate
// (`<dir>/edge-ca.pem`, e.g. `curl --cacert .guestlist/edge/edge-ca.pem`) and the edge serves every
// configured hostname without any certificate management. The CA is an ECDSA P-256 root created on
// first start and reused afterwards; its key (`edge-ca.key`, PKCS #8 PEM) is written with mode 0600.
//
// Leaves are ECDSA P-256, valid for [DefaultLeafLifetime] (backdated by an hour for clock skew),
// cached in memory (bounded, see [WithCacheSize]) and issued again once less than a third of their
// lifetime remains. Reading the cache does not lock, so handshakes do not contend on it.
package servercert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"guestlist.dev/edge/dnsname"

	"guestlist.dev/edge/privatefile"
)

// File names inside the CA directory.
const (
	// CertFile is the CA certificate (PEM), the file clients trust.
	CertFile = "edge-ca.pem"
	// KeyFile is the CA private key (PKCS #8 PEM, mode 0600).
	KeyFile = "edge-ca.key"
)

const (
	// DefaultLeafLifetime is how long an issued leaf certificate is valid.
	DefaultLeafLifetime = 7 * 24 * time.Hour
	// DefaultCacheSize bounds the number of leaf certificates kept in memory.
	DefaultCacheSize = 10000
	// caLifetime is the validity of a newly created CA.
	caLifetime = 10 * 365 * 24 * time.Hour
	// backdate is subtracted from NotBefore to tolerate clients whose clocks are behind.
	backdate = time.Hour
)

// Option adjusts a [CA].
type Option func(*CA)

// WithLeafLifetime sets the validity of issued leaves (at least a minute).
func WithLeafLifetime(d time.Duration) Option {
	return func(ca *CA) { ca.leafLifetime = max(d, time.Minute) }
}

// WithCacheSize bounds the number of cached leaves (at least 1). When the bound is exceeded, the
// least recently used quarter of the cache is dropped.
func WithCacheSize(n int) Option {
	return func(ca *CA) { ca.cacheSize = max(n, 1) }
}

// WithClock sets the clock used for validity periods and renewal (tests).
func WithClock(now func() time.Time) Option {
	return func(ca *CA) { ca.now = now }
}

// CA is the edge's certificate authority. Its methods are safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	dir     string

	leafLifetime time.Duration
	cacheSize    int
	now          func() time.Time

	cache sync.Map // hostname -> *leafEntry
	count atomic.Int64
	clock atomic.Int64 // logical clock for least-recently-used eviction

	// mu guards inflight and serialises changes to the cache (a new entry, eviction). Leaves
	// are issued outside it, so that issuing for one hostname does not wait for another's.
	mu       sync.Mutex
	inflight map[string]*issuance // hostname -> the issuance under way

	// issueHook, when set (tests), runs before a leaf is issued, outside mu; an error it
	// returns is the issuance's.
	issueHook func(hostname string) error
}

// issuance is a leaf being issued; the callers asking for the same hostname meanwhile wait for
// it (done is closed when cert and err are set).
type issuance struct {
	done    chan struct{}
	cert    *tls.Certificate
	err     error
	waiters int // callers waiting for it, guarded by CA.mu
}

type leafEntry struct {
	cert    *tls.Certificate
	renewAt time.Time // after this, issue a new leaf
	used    atomic.Int64
}

// LoadOrCreateCA loads the CA from dir (CertFile and KeyFile), or creates dir (mode 0700) and a
// new CA in it when neither file exists. Exactly one of the two files existing, files that do not
// parse, a key that does not match the certificate, or an expired CA are errors; nothing is
// overwritten.
//
// On Unix, dir must belong to the process's user and its group and others must not be able to
// write to it, and KeyFile must be a regular file (not a symbolic link: it is opened with
// O_NOFOLLOW) of the process's user that its group and others may not access (mode 0600): anyone
// else who could put a key there would have the edge present certificates of their own CA.
// Elsewhere only a symbolic link KeyFile is refused.
func LoadOrCreateCA(dir string, opts ...Option) (*CA, error) {
	ca := &CA{dir: dir, leafLifetime: DefaultLeafLifetime, cacheSize: DefaultCacheSize, now: time.Now, inflight: make(map[string]*issuance)}
	for _, o := range opts {
		o(ca)
	}
	if err := privatefile.CheckDir(dir, "CA directory"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("servercert: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := privatefile.ReadFile(keyPath, "CA key")
	switch {
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		if err := ca.create(certPath, keyPath); err != nil {
			return nil, err
		}
		return ca, nil
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist): // a refused key first: it says more
		return nil, fmt.Errorf("servercert: read CA key: %w", keyErr)
	case certErr != nil:
		return nil, fmt.Errorf("servercert: read CA certificate: %w", certErr)
	case keyErr != nil:
		return nil, fmt.Errorf("servercert: read CA key: %w", keyErr)
	}
	if err := ca.load(certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("servercert: load CA from %s: %w", dir, err)
	}
	return ca, nil
}

func (ca *CA) create(certPath, keyPath string) error {
	if err := os.MkdirAll(ca.dir, 0o700); err != nil {
		return fmt.Errorf("servercert: create CA directory: %w", err)
	}
	if err := privatefile.CheckDir(ca.dir, "CA directory"); err != nil {
		return fmt.Errorf("servercert: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("servercert: generate CA key: %w", err)
	}
	now := ca.now()
	skid := subjectKeyID(&key.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "guestlist edge CA " + now.UTC().Format("2006-01-02 15:04:05"), Organization: []string{"guestlist development"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("servercert: create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("servercert: marshal CA key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	// The key goes first: a certificate without its key would make the next start fail.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("servercert: write CA key: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return fmt.Errorf("servercert: write CA certificate: %w", err)
	}
	return ca.load(certPEM, keyPEM)
}

func (ca *CA) load(certPEM, keyPEM []byte) error {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return errors.New("the certificate file holds no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("parse certificate: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return errors.New("the key file holds no PEM block")
	}
	var parsed any
	switch kb.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(kb.Bytes)
	default:
		return fmt.Errorf("the key file holds a %q PEM block, want PRIVATE KEY", kb.Type)
	}
	if err != nil {
		return fmt.Errorf("parse key: %w", err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return fmt.Errorf("the key is a %T, want an ECDSA key", parsed)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return errors.New("the key does not match the certificate")
	}
	if !cert.IsCA {
		return errors.New("the certificate is not a CA")
	}
	if now := ca.now(); now.After(cert.NotAfter) {
		return fmt.Errorf("the CA expired at %s; remove %s and %s to create a new one (clients must then trust the new %s)",
			cert.NotAfter.UTC().Format(time.RFC3339), CertFile, KeyFile, CertFile)
	}
	ca.cert, ca.key = cert, key
	ca.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return nil
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertificatePEM returns the CA certificate in PEM form (what clients trust).
func (ca *CA) CertificatePEM() []byte { return bytes.Clone(ca.certPEM) }

// CertificatePath returns the path of the CA certificate file.
func (ca *CA) CertificatePath() string { return filepath.Join(ca.dir, CertFile) }

// Pool returns a new certificate pool holding the CA certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// GetCertificate returns a leaf certificate for hostname, which must be a normalised hostname
// (see dnsname.Normalize). Leaves are cached; a leaf is issued when none is cached or the cached
// one is within the last third of its lifetime. Leaves for different hostnames are issued in
// parallel; callers asking for a hostname whose leaf is being issued wait for that one. The
// result must not be modified.
func (ca *CA) GetCertificate(hostname string) (*tls.Certificate, error) {
	now := ca.now()
	if v, ok := ca.cache.Load(hostname); ok {
		e := v.(*leafEntry)
		if now.Before(e.renewAt) {
			e.used.Store(ca.clock.Add(1))
			return e.cert, nil
		}
	}
	return ca.issueLeaf(hostname, now)
}

func (ca *CA) issueLeaf(hostname string, now time.Time) (*tls.Certificate, error) {
	if !dnsname.IsNormalized(hostname) {
		return nil, fmt.Errorf("servercert: %q is not a normalised hostname", hostname)
	}
	ca.mu.Lock()
	if v, ok := ca.cache.Load(hostname); ok && now.Before(v.(*leafEntry).renewAt) {
		ca.mu.Unlock() // issued by a concurrent caller meanwhile
		return v.(*leafEntry).cert, nil
	}
	if in := ca.inflight[hostname]; in != nil {
		in.waiters++
		ca.mu.Unlock()
		<-in.done
		return in.cert, in.err
	}
	in := &issuance{done: make(chan struct{})}
	ca.inflight[hostname] = in
	ca.mu.Unlock()

	e, err := ca.newLeaf(hostname, now)

	ca.mu.Lock()
	delete(ca.inflight, hostname)
	if err == nil {
		in.cert = e.cert
		e.used.Store(ca.clock.Add(1))
		if _, renewed := ca.cache.Swap(hostname, e); !renewed && ca.count.Add(1) > int64(ca.cacheSize) {
			ca.evictLocked(hostname)
		}
	}
	in.err = err
	ca.mu.Unlock()
	close(in.done)
	return in.cert, in.err
}

// newLeaf issues a leaf for hostname, valid from now.
func (ca *CA) newLeaf(hostname string, now time.Time) (*leafEntry, error) {
	if ca.issueHook != nil {
		if err := ca.issueHook(hostname); err != nil {
			return nil, err
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("servercert: generate key for %s: %w", hostname, err)
	}
	notAfter := now.Add(ca.leafLifetime)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:   randomSerial(),
		Subject:        pkix.Name{CommonName: hostname},
		DNSNames:       []string{hostname},
		NotBefore:      now.Add(-backdate),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		AuthorityKeyId: ca.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("servercert: issue certificate for %s: %w", hostname, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("servercert: parse certificate for %s: %w", hostname, err)
	}
	return &leafEntry{
		cert:    &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		renewAt: now.Add(notAfter.Sub(now) * 2 / 3),
	}, nil
}

// evictLocked drops the least recently used quarter of the cache (at least one entry), never
// keep. The caller holds ca.mu.
func (ca *CA) evictLocked(keep string) {
	type aged struct {
		name string
		used int64
	}
	var all []aged
	ca.cache.Range(func(k, v any) bool {
		if k.(string) != keep {
			all = append(all, aged{k.(string), v.(*leafEntry).used.Load()})
		}
		return true
	})
	slices.SortFunc(all, func(a, b aged) int { return int(a.used - b.used) })
	n := max(len(all)/4, 1)
	for _, a := range all[:min(n, len(all))] {
		ca.cache.Delete(a.name)
		ca.count.Add(-1)
	}
}

// Cached reports how many leaves are cached.
func (ca *CA) Cached() int { return int(ca.count.Load()) }

func randomSerial() *big.Int {
	// 128 random bits, positive, non-zero in practice.
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] &= 0x7f
	b[0] |= 0x01
	return new(big.Int).SetBytes(b)
}

func subjectKeyID(pub *ecdsa.PublicKey) []byte {
	raw, err := pub.Bytes()
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(raw)
	return sum[:20]
}

// writeFileAtomic writes data to a temporary file in the same directory, syncs it and renames it
// to path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
