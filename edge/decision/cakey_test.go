package decision

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// caWithKey returns a CA certificate named cn for the public key pub, signed by another (P-256)
// key: nobody needs pub's private key to upload such a certificate, so the tests make keys of any
// size from random moduli.
func caWithKey(t testing.TB, cn string, pub any) *x509.Certificate {
	t.Helper()
	return pkitest.CAForKey(t, cn, pub)
}

var (
	rsa2048Once sync.Once
	rsa2048Key  *rsa.PrivateKey
)

// realRSA2048 returns an RSA-2048 private key, made once per test binary.
func realRSA2048(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	rsa2048Once.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsa2048Key = k
	})
	return rsa2048Key
}

func ecdsaPub(t testing.TB, c elliptic.Curve) *ecdsa.PublicKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &k.PublicKey
}

func ed25519Pub(t testing.TB) ed25519.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// caKeyCases are CA certificates with the keys CheckCAKey accepts (ok/...) and refuses (fail/...,
// with a text the refusal contains).
func caKeyCases(t testing.TB) []struct {
	name string
	cert *x509.Certificate
	err  string
} {
	return []struct {
		name string
		cert *x509.Certificate
		err  string
	}{
		{name: "ok/RSA-2048", cert: caWithKey(t, "RSA 2048", &realRSA2048(t).PublicKey)},
		{name: "ok/RSA-3072", cert: caWithKey(t, "RSA 3072", pkitest.RandomRSA(t, 3072, 65537))},
		{name: "ok/RSA-4096", cert: caWithKey(t, "RSA 4096", pkitest.RandomRSA(t, 4096, 65537))},
		{name: "ok/P-256", cert: caWithKey(t, "P-256", ecdsaPub(t, elliptic.P256()))},
		{name: "ok/P-384", cert: caWithKey(t, "P-384", ecdsaPub(t, elliptic.P384()))},
		{name: "ok/Ed25519", cert: caWithKey(t, "Ed25519", ed25519Pub(t))},

		{name: "fail/RSA-1024", cert: caWithKey(t, "RSA 1024", pkitest.RandomRSA(t, 1024, 65537)), err: "the CA's key is RSA of 1024 bits"},
		{name: "fail/RSA-2047", cert: caWithKey(t, "RSA 2047", pkitest.RandomRSA(t, 2047, 65537)), err: "the CA's key is RSA of 2047 bits"},
		{name: "fail/RSA-4097", cert: caWithKey(t, "RSA 4097", pkitest.RandomRSA(t, 4097, 65537)), err: "the CA's key is RSA of 4097 bits"},
		{name: "fail/RSA-8192", cert: caWithKey(t, "RSA 8192", pkitest.RandomRSA(t, 8192, 65537)), err: "the CA's key is RSA of 8192 bits"},
		{name: "fail/RSA-16384", cert: caWithKey(t, "RSA 16384", pkitest.RandomRSA(t, 16384, 65537)), err: "the CA's key is RSA of 16384 bits"},
		{name: "fail/RSA-262144 with exponent 2^31-1", cert: caWithKey(t, "RSA 262144", pkitest.RandomRSA(t, 262144, 1<<31-1)), err: "the CA's key is RSA of 262144 bits"},
		{name: "fail/exponent 3", cert: caWithKey(t, "RSA e=3", pkitest.RandomRSA(t, 2048, 3)), err: "the CA's key is RSA with public exponent 3;"},
		{name: "fail/exponent 2^31-1", cert: caWithKey(t, "RSA e=2^31-1", pkitest.RandomRSA(t, 2048, 1<<31-1)), err: "the CA's key is RSA with public exponent 2147483647;"},
		{name: "fail/P-521", cert: caWithKey(t, "P-521", ecdsaPub(t, elliptic.P521())), err: "the CA's key is ECDSA on P-521, which is refused because checking a P-521 signature costs the edge about 40 times as much as a P-256 one"},
		{name: "fail/P-224", cert: caWithKey(t, "P-224", ecdsaPub(t, elliptic.P224())), err: "the CA's key is ECDSA on P-224;"},
		{name: "fail/unknown algorithm", cert: &x509.Certificate{PublicKeyAlgorithm: x509.UnknownPublicKeyAlgorithm}, err: "the CA's key is of algorithm"},
		{name: "fail/no certificate", err: "no certificate"},
	}
}

func TestCheckCAKey(t *testing.T) {
	for _, tc := range caKeyCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCAKey(tc.cert)
			if strings.HasPrefix(tc.name, "ok/") {
				if err != nil {
					t.Fatalf("CheckCAKey: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("CheckCAKey error %v, want one containing %q", err, tc.err)
			}
			if tc.cert != nil && !strings.HasSuffix(err.Error(), acceptedCAKeys) {
				t.Errorf("CheckCAKey error %q does not say which keys are accepted", err)
			}
		})
	}
}

// TestPrepareRefusesCAKeys: a configuration holding a CA whose key CheckCAKey refuses (from events
// older than the rule) is refused in modes ENFORCE and REPORT, so that the edge refuses the
// hostname; in mode OFF, which looks at no certificate, the CAs are not looked at either.
func TestPrepareRefusesCAKeys(t *testing.T) {
	p := getPKI(t)
	for _, tc := range caKeyCases(t) {
		if tc.cert == nil || tc.cert.Raw == nil {
			continue
		}
		for _, mode := range []configv1.MtlsMode{configv1.MtlsMode_MTLS_MODE_ENFORCE, configv1.MtlsMode_MTLS_MODE_REPORT, configv1.MtlsMode_MTLS_MODE_OFF} {
			t.Run(tc.name+"/"+mode.String(), func(t *testing.T) {
				cfg := hostnameConfig(p)
				cfg.Mode = mode
				cfg.CertificateAuthorities = append(cfg.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: "ca", CertificateDer: tc.cert.Raw})
				h, err := Prepare(cfg)
				if strings.HasPrefix(tc.name, "ok/") || mode == configv1.MtlsMode_MTLS_MODE_OFF {
					// Mode OFF looks at no certificate: a CA uploaded before the rule, still
					// referenced by such a hostname, does not take it down (review).
					if err != nil || h == nil {
						t.Fatalf("Prepare: %v", err)
					}
					return
				}
				want := `decision: hostname "pay.example.com": certificate_authorities[1] ("ca"): ` + tc.err
				if err == nil || h != nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("Prepare = %v, %v; want an error containing %q", h, err, want)
				}
			})
		}
	}
}

// TestDecideThroughAcceptedCAKeys: client certificates issued by CAs of each accepted kind of key
// verify.
func TestDecideThroughAcceptedCAKeys(t *testing.T) {
	p := getPKI(t)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{{"RSA-2048", realRSA2048(t)}, {"P-384", p384}, {"Ed25519", edKey}} {
		t.Run("ok/"+tc.name, func(t *testing.T) {
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: tc.name + " Root"},
				NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
				IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, tc.key.Public(), tc.key)
			if err != nil {
				t.Fatal(err)
			}
			root, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			leafKey := ecdsaPub(t, elliptic.P256())
			lt := &x509.Certificate{
				SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "device"},
				NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}
			leafDER, err := x509.CreateCertificate(rand.Reader, lt, root, leafKey, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(leafDER)
			if err != nil {
				t.Fatal(err)
			}
			cfg := hostnameConfig(p)
			cfg.CertificateAuthorities = []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "root", CertificateDer: root.Raw}}
			h, err := Prepare(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if d := Decide(h, []*x509.Certificate{leaf}, get("/"), now); d.Verdict != Allow || d.Reason != ReasonCertificateVerified {
				t.Fatalf("Decide = %+v", d)
			}
		})
	}
}
