//go:build linux

package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"runtime"
	"sync"
	"time"
)

// The certificates of a run are made for the run: ECDSA P-256 roots for the clients (the CAs the
// hostnames trust) and client leaves issued directly by them. The server certificates come from
// the edge's own servercert CA (see prepareWorkdir).

// issuer is a certificate authority with its key.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// randomSerial returns a positive 127-bit serial number.
func randomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("random serial: %w", err)
	}
	b[0] = b[0]&0x7f | 0x01
	return new(big.Int).SetBytes(b), nil
}

// newRootCA returns a self-signed ECDSA P-256 root named cn, valid from an hour ago for a year.
func newRootCA(cn string) (*issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA %q: generate key: %w", cn, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("CA %q: %w", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"guestlist bench"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("CA %q: create certificate: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("CA %q: parse certificate: %w", cn, err)
	}
	return &issuer{cert: cert, key: key}, nil
}

// clientLeaf issues a client-authentication certificate named cn for key, valid from an hour ago
// for a month, and returns it as a tls.Certificate (chain: the leaf alone).
func (ca *issuer) clientLeaf(cn string, key *ecdsa.PrivateKey) (tls.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("client %q: %w", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: []string{"devices"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("client %q: create certificate: %w", cn, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// newRootCAs makes n roots on all CPUs.
func newRootCAs(n int, prefix string) ([]*issuer, error) {
	cas := make([]*issuer, n)
	err := parallel(n, func(i int) error {
		ca, err := newRootCA(fmt.Sprintf("%s %04d", prefix, i))
		cas[i] = ca
		return err
	})
	return cas, err
}

// leafPool issues perCA client leaves under each of cas (all for one key: what the server checks
// per handshake does not depend on the keys being distinct, and signing is cheaper than
// generating keys), on all CPUs. pool[k] are the leaves of cas[k].
func leafPool(cas []*issuer, perCA int) ([][]tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	pool := make([][]tls.Certificate, len(cas))
	for k := range pool {
		pool[k] = make([]tls.Certificate, perCA)
	}
	err = parallel(len(cas)*perCA, func(i int) error {
		k, j := i%len(cas), i/len(cas)
		c, err := cas[k].clientLeaf(fmt.Sprintf("device-%04d-%05d", k, j), key)
		pool[k][j] = c
		return err
	})
	return pool, err
}

// parallel calls fn(0..n-1) on GOMAXPROCS goroutines and returns the first error.
func parallel(n int, fn func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		next int
		errs []error
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := len(errs) > 0
				mu.Unlock()
				if i >= n || stop {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// writePEM writes DER blocks of the given type to path (mode 0600).
func writePEM(path, typ string, ders ...[]byte) error {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeKey writes key to path in PKCS #8 PEM form (mode 0600).
func writeKey(path string, key any) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key for %s: %w", path, err)
	}
	return writePEM(path, "PRIVATE KEY", der)
}

// readCertificates reads every CERTIFICATE block of a PEM file, as DER.
func readCertificates(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	var ders [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			ders = append(ders, b.Bytes)
		}
	}
	if len(ders) == 0 {
		return nil, fmt.Errorf("read certificates: no CERTIFICATE block in %s", path)
	}
	return ders, nil
}
