package trust

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

type certOpts struct {
	cn        string
	isCA      bool
	noBasic   bool
	keyUsage  x509.KeyUsage
	notBefore time.Time
	notAfter  time.Time
}

// makeCert returns a self-signed ECDSA P-256 certificate in PEM and its private key in PEM.
func makeCert(t testing.TB, o certOpts) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = now.Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = now.Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{CommonName: o.cn, Organization: []string{"Acme"}},
		NotBefore:             o.notBefore,
		NotAfter:              o.notAfter,
		IsCA:                  o.isCA,
		BasicConstraintsValid: !o.noBasic,
		KeyUsage:              o.keyUsage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

// keyCert returns, in PEM, a CA certificate named cn (valid now) for the public key pub, signed by
// another (P-256) key: an upload needs no private key, so tests make keys of any size from random
// moduli.
func keyCert(t testing.TB, cn string, pub any) string {
	t.Helper()
	return pkitest.PEM(pkitest.CAForKey(t, cn, pub, func(c *x509.Certificate) {
		c.SerialNumber, c.Subject.Organization = big.NewInt(7), []string{"Acme"}
		c.NotBefore, c.NotAfter = now.Add(-time.Hour), now.Add(365*24*time.Hour)
	}))
}

func ecdsaPub(t testing.TB, c elliptic.Curve) *ecdsa.PublicKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &k.PublicKey
}

func TestParseCA(t *testing.T) {
	ca, caKey := makeCert(t, certOpts{cn: "Acme Root", isCA: true, keyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign})
	caNoKU, _ := makeCert(t, certOpts{cn: "No KU", isCA: true})
	ca2, _ := makeCert(t, certOpts{cn: "Other Root", isCA: true, keyUsage: x509.KeyUsageCertSign})
	leaf, _ := makeCert(t, certOpts{cn: "leaf", keyUsage: x509.KeyUsageDigitalSignature})
	noBasic, _ := makeCert(t, certOpts{cn: "v1-like", noBasic: true, keyUsage: x509.KeyUsageCertSign})
	noCertSign, _ := makeCert(t, certOpts{cn: "no certSign", isCA: true, keyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign})
	expired, _ := makeCert(t, certOpts{cn: "expired", isCA: true, keyUsage: x509.KeyUsageCertSign,
		notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-time.Hour)})
	notYet, _ := makeCert(t, certOpts{cn: "future", isCA: true, keyUsage: x509.KeyUsageCertSign,
		notBefore: now.Add(time.Hour), notAfter: now.Add(48 * time.Hour)})
	badDER := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER at all")}))
	pubKey := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}))
	withHeaders := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}))
	block, _ := pem.Decode([]byte(ca))
	derBody := strings.Join(strings.Split(strings.TrimSpace(ca), "\n")[1:], "\n")
	derBody = strings.TrimSuffix(derBody, "-----END CERTIFICATE-----")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edKey, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// About the largest RSA key that fits the upload limit, with the largest exponent crypto/x509
	// parses: an independent review's edge spent 1 to 4 s of CPU on each handshake of a client
	// sending a junk signature to a hostname trusting 16 such CAs of one name.
	hugeRSA := keyCert(t, "Huge RSA", pkitest.RandomRSA(t, 262144, 1<<31-1))
	if len(hugeRSA) > MaxPEMSize {
		t.Fatalf("the RSA-262144 certificate takes %d bytes of PEM", len(hugeRSA))
	}

	tests := []struct {
		name     string
		pem      string
		wantKind error
		wantText string
	}{
		{name: "ok/ca", pem: ca},
		{name: "ok/ca-without-key-usage", pem: caNoKU},
		{name: "ok/trailing-whitespace", pem: ca + "\n\n  \t\n"},
		{name: "ok/leading-whitespace", pem: "\n  " + ca},
		{name: "ok/crlf", pem: strings.ReplaceAll(ca, "\n", "\r\n")},
		{name: "ok/no-final-newline", pem: strings.TrimRight(ca, "\n")},
		{name: "ok/RSA-2048", pem: keyCert(t, "RSA 2048", &rsaKey.PublicKey)},
		{name: "ok/RSA-4096", pem: keyCert(t, "RSA 4096", pkitest.RandomRSA(t, 4096, 65537))},
		{name: "ok/RSA-4096", pem: keyCert(t, "RSA 4096", pkitest.RandomRSA(t, 4096, 65537))},
		{name: "ok/P-256", pem: keyCert(t, "P-256", ecdsaPub(t, elliptic.P256()))},
		{name: "ok/P-384", pem: keyCert(t, "P-384", ecdsaPub(t, elliptic.P384()))},
		{name: "ok/Ed25519", pem: keyCert(t, "Ed25519", edKey)},

		{name: "fail/empty", pem: "", wantKind: ErrNotPEM, wantText: "empty"},
		{name: "fail/blank", pem: " \n\t", wantKind: ErrNotPEM, wantText: "empty"},
		{name: "fail/garbage", pem: "hello world", wantKind: ErrNotPEM, wantText: "not PEM"},
		{name: "fail/der-base64-without-armor", pem: derBody, wantKind: ErrNotPEM, wantText: "not PEM"},
		{name: "fail/truncated", pem: ca[:len(ca)/2], wantKind: ErrNotPEM, wantText: "malformed"},
		{name: "fail/bad-base64", pem: strings.Replace(ca, "\n", "\n!!!!", 2), wantKind: ErrNotPEM, wantText: "malformed"},
		{name: "fail/text-before", pem: "subject=CN=Acme\n" + ca, wantKind: ErrNotPEM, wantText: "text before"},
		{name: "fail/text-after", pem: ca + "bye\n", wantKind: ErrNotPEM, wantText: "text after"},
		{name: "fail/two-certificates", pem: ca + ca2, wantKind: ErrMultipleCertificates, wantText: "more than one certificate"},
		{name: "fail/same-certificate-twice", pem: ca + ca, wantKind: ErrMultipleCertificates},
		{name: "fail/certificate-and-key", pem: ca + caKey, wantKind: ErrPrivateKey, wantText: "private key"},
		{name: "fail/key-and-certificate", pem: caKey + ca, wantKind: ErrPrivateKey},
		{name: "fail/key-alone", pem: caKey, wantKind: ErrPrivateKey},
		{name: "fail/malformed-key", pem: ca + "-----BEGIN EC PRIVATE KEY-----\nzzzz\n", wantKind: ErrPrivateKey},
		{name: "fail/other-block", pem: pubKey, wantKind: ErrNotCertificate, wantText: `"PUBLIC KEY"`},
		{name: "fail/second-block-other", pem: ca + pubKey, wantKind: ErrNotPEM, wantText: "second block"},
		{name: "fail/headers", pem: withHeaders, wantKind: ErrNotPEM, wantText: "headers"},
		{name: "fail/too-large", pem: ca + strings.Repeat(" ", MaxPEMSize), wantKind: ErrTooLarge, wantText: "64 KiB"},
		{name: "fail/unparsable-der", pem: badDER, wantKind: ErrUnparsable, wantText: "cannot be parsed"},
		{name: "fail/trailing-der", pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: append(block.Bytes, 0)})), wantKind: ErrUnparsable},
		{name: "fail/leaf", pem: leaf, wantKind: ErrNotCA, wantText: "CA=false"},
		{name: "fail/no-basic-constraints", pem: noBasic, wantKind: ErrNotCA, wantText: "no basic constraints"},
		{name: "fail/no-cert-sign", pem: noCertSign, wantKind: ErrNoCertSign, wantText: "keyCertSign"},
		{name: "fail/RSA-1024", pem: keyCert(t, "RSA 1024", pkitest.RandomRSA(t, 1024, 65537)), wantKind: ErrUnsupportedKey, wantText: "the certificate's key is not accepted: the CA's key is RSA of 1024 bits; a CA's key must be RSA of 2048 to 4096 bits with public exponent 65537, ECDSA on P-256 or P-384, or Ed25519"},
		{name: "fail/RSA-8192", pem: keyCert(t, "RSA 8192", pkitest.RandomRSA(t, 8192, 65537)), wantKind: ErrUnsupportedKey, wantText: "RSA of 8192 bits"},
		{name: "fail/RSA-16384", pem: keyCert(t, "RSA 16384", pkitest.RandomRSA(t, 16384, 65537)), wantKind: ErrUnsupportedKey, wantText: "RSA of 16384 bits"},
		{name: "fail/RSA-262144-exponent-2^31-1", pem: hugeRSA, wantKind: ErrUnsupportedKey, wantText: "RSA of 262144 bits"},
		{name: "fail/exponent-3", pem: keyCert(t, "RSA e=3", pkitest.RandomRSA(t, 2048, 3)), wantKind: ErrUnsupportedKey, wantText: "RSA with public exponent 3;"},
		{name: "fail/exponent-2^31-1", pem: keyCert(t, "RSA e=2^31-1", pkitest.RandomRSA(t, 2048, 1<<31-1)), wantKind: ErrUnsupportedKey, wantText: "RSA with public exponent 2147483647;"},
		{name: "fail/P-521", pem: keyCert(t, "P-521", ecdsaPub(t, elliptic.P521())), wantKind: ErrUnsupportedKey, wantText: "ECDSA on P-521, which is refused because checking a P-521 signature costs the edge about 40 times as much as a P-256 one"},
		{name: "fail/P-224", pem: keyCert(t, "P-224", ecdsaPub(t, elliptic.P224())), wantKind: ErrUnsupportedKey, wantText: "ECDSA on P-224;"},
		{name: "fail/expired", pem: expired, wantKind: ErrExpired, wantText: "expired at"},
		{name: "fail/not-yet-valid", pem: notYet, wantKind: ErrNotYetValid, wantText: "not valid yet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := ParseCA(tt.pem, now)
			if strings.HasPrefix(tt.name, "ok/") {
				if err != nil {
					t.Fatalf("ParseCA error: %v", err)
				}
				if cert == nil || !cert.IsCA {
					t.Fatalf("ParseCA returned %v", cert)
				}
				return
			}
			if err == nil || cert != nil {
				t.Fatalf("ParseCA = %v, %v; want an error", cert, err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" {
				t.Fatalf("error %v is not a *trust.Error", err)
			}
			if !errors.Is(err, tt.wantKind) {
				t.Fatalf("error %q is not %v", err, tt.wantKind)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %q does not contain %q", err, tt.wantText)
			}
			// Never echo key material.
			for _, line := range strings.Split(caKey, "\n") {
				if len(line) > 8 && !strings.HasPrefix(line, "-----") && strings.Contains(err.Error(), line) {
					t.Fatalf("error %q repeats key material", err)
				}
			}
		})
	}
}

func TestParseCABoundaries(t *testing.T) {
	ca, _ := makeCert(t, certOpts{cn: "Edge", isCA: true, keyUsage: x509.KeyUsageCertSign,
		notBefore: now, notAfter: now.Add(time.Hour)})
	cert, err := ParseCA(ca, now)
	if err != nil || cert == nil {
		t.Fatalf("valid from exactly now: %v", err)
	}
	c, _ := ParseCA(ca, now.Add(time.Hour))
	if c == nil {
		t.Fatal("valid until exactly NotAfter")
	}
	if _, err := ParseCA(ca, now.Add(time.Hour+time.Second)); !errors.Is(err, ErrExpired) {
		t.Fatalf("one second after NotAfter: %v", err)
	}
	padded := ca + strings.Repeat("\n", MaxPEMSize-len(ca))
	if _, err := ParseCA(padded, now); err != nil {
		t.Fatalf("exactly %d bytes: %v", MaxPEMSize, err)
	}
	if _, err := ParseCA(padded+"\n", now); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("one byte over: %v", err)
	}
}

func TestDescribe(t *testing.T) {
	ca, _ := makeCert(t, certOpts{cn: "Acme Root", isCA: true, keyUsage: x509.KeyUsageCertSign})
	cert, err := ParseCA(ca, now)
	if err != nil {
		t.Fatal(err)
	}
	subject, fp := Describe(cert)
	if subject != "CN=Acme Root,O=Acme" {
		t.Fatalf("subject = %q", subject)
	}
	if fp != certid.FingerprintSHA256(cert.Raw) || len(fp) != 64 {
		t.Fatalf("fingerprint = %q", fp)
	}
}

func FuzzParseCA(f *testing.F) {
	ca, key := makeCert(f, certOpts{cn: "Acme Root", isCA: true, keyUsage: x509.KeyUsageCertSign})
	leaf, _ := makeCert(f, certOpts{cn: "leaf"})
	for _, s := range []string{ca, ca + "\n", ca + ca, ca + key, leaf, "", "garbage", "-----BEGIN CERTIFICATE-----\n", ca[:100]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		cert, err := ParseCA(in, now)
		if err != nil {
			if cert != nil {
				t.Fatalf("ParseCA returned a certificate together with %v", err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" || e.Kind == nil {
				t.Fatalf("error %v is not a *trust.Error with reason and kind", err)
			}
			return
		}
		if cert == nil {
			t.Fatal("ParseCA returned neither certificate nor error")
		}
		if !cert.IsCA || !cert.BasicConstraintsValid {
			t.Fatal("ParseCA returned a certificate that is not a CA")
		}
		if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
			t.Fatal("ParseCA returned a CA that may not sign certificates")
		}
		if err := decision.CheckCAKey(cert); err != nil {
			t.Fatalf("ParseCA returned a CA whose key the edge refuses: %v", err)
		}
		if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
			t.Fatal("ParseCA returned a certificate outside its validity")
		}
	})
}
