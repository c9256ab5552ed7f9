package enforce

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
)

// TestVerifyCacheUntrustedChainsRetainNothing: an unauthenticated client sending a different
// self-signed chain, padded toward crypto/tls's 256 KiB certificate-message limit, on each
// connection (no HTTP request needed with reject_in_handshake) makes the verification cache keep
// nothing, and a real client's cached verification stays.
func TestVerifyCacheUntrustedChainsRetainNothing(t *testing.T) {
	for _, reject := range []bool{true, false} {
		name := "403"
		if reject {
			name = "reject_in_handshake"
		}
		t.Run(name, func(t *testing.T) {
			ca := pkitest.NewCA(t, "Root")
			h := host(hostA, "acme", ca)
			h.RejectInHandshake = reject
			e := newEnv(t, h)
			cfg := func(cert *tls.Certificate) *tls.Config {
				return &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool(),
					GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }}
			}
			device := ca.Client(t, "device")
			if err := dialTLS(t, e.addr, cfg(&tls.Certificate{Certificate: [][]byte{device.Cert.Raw}, PrivateKey: device.Key})); err != nil {
				t.Fatalf("the real client: %v", err)
			}
			cache := &e.srv.verified
			realPeer := []*x509.Certificate{device.Cert}
			vReal := cache.cachedFor(realPeer)
			n0, b0 := cache.stats()
			if vReal == nil || n0 != 1 {
				t.Fatalf("the real client's verification is not cached (%d entries)", n0)
			}

			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			pad := make([]byte, 240<<10)
			for i := range 40 {
				tmpl := &x509.Certificate{
					SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: "junk"},
					NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
					ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: pad}},
				}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
				if err != nil {
					t.Fatal(err)
				}
				if err := dialTLS(t, e.addr, cfg(&tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key})); err == nil {
					t.Fatalf("connection %d with an untrusted chain: allowed", i)
				}
			}
			if n, b := cache.stats(); n != n0 || b != b0 {
				t.Errorf("after 40 untrusted padded chains: %d entries, %d bytes retained; %d entries, %d bytes before", n, b, n0, b0)
			}
			if cache.cachedFor(realPeer) != vReal {
				t.Error("the real client's verification was evicted")
			}
		})
	}
}
