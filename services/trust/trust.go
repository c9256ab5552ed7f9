// Package trust checks the certificate authorities that tenants upload.
//
// A CA upload is one PEM-encoded X.509 certificate that is a CA (basic constraints CA=true and,
// when the key usage extension is present, permission to sign certificates), whose key the edge
// accepts for a CA ([decision.CheckCAKey]), and that is valid at the time of the upload.
// [ParseCA] returns the certificate or an *[Error] whose Reason is safe to show to the uploader
// (it never repeats key material) and which wraps one of the Err* sentinels, so that the API layer
// can answer with a BadRequest field violation.
package trust

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/decision"
)

// MaxPEMSize is the largest accepted upload, in bytes.
const MaxPEMSize = 64 << 10

// The kinds of rejection. Every error that [ParseCA] returns is an *[Error] wrapping exactly one of
// these, so errors.Is(err, ErrExpired) and the like work.
var (
	// ErrTooLarge: the upload is larger than MaxPEMSize.
	ErrTooLarge = errors.New("too large")
	// ErrNotPEM: the upload is empty, not PEM, or malformed PEM, or has text around the block.
	ErrNotPEM = errors.New("not PEM")
	// ErrPrivateKey: the upload contains a private key.
	ErrPrivateKey = errors.New("contains a private key")
	// ErrNotCertificate: the PEM block is not of type CERTIFICATE.
	ErrNotCertificate = errors.New("not a certificate")
	// ErrMultipleCertificates: the upload holds more than one PEM block.
	ErrMultipleCertificates = errors.New("more than one certificate")
	// ErrUnparsable: the DER inside the PEM block is not an X.509 certificate Go can parse.
	ErrUnparsable = errors.New("unparsable certificate")
	// ErrNotCA: the certificate lacks basic constraints or has CA=false.
	ErrNotCA = errors.New("not a CA")
	// ErrNoCertSign: the key usage extension is present without keyCertSign.
	ErrNoCertSign = errors.New("may not sign certificates")
	// ErrUnsupportedKey: the CA's public key is not one the edge accepts for a CA
	// ([decision.CheckCAKey]: RSA of 2048 to 4096 bits with exponent 65537, ECDSA P-256 or
	// P-384, Ed25519).
	ErrUnsupportedKey = errors.New("unsupported public key")
	// ErrExpired: the certificate's NotAfter is in the past.
	ErrExpired = errors.New("expired")
	// ErrNotYetValid: the certificate's NotBefore is in the future.
	ErrNotYetValid = errors.New("not yet valid")
)

// Error is the error that [ParseCA] returns.
type Error struct {
	// Reason is a message for the uploader, e.g. "the certificate is not a CA (basic constraints
	// CA=false)". It never contains key material.
	Reason string
	// Kind is one of the Err* sentinels.
	Kind error
}

// Error implements error.
func (e *Error) Error() string { return e.Reason }

// Unwrap returns the Err* sentinel.
func (e *Error) Unwrap() error { return e.Kind }

func fail(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Reason: fmt.Sprintf(format, args...)}
}

// ParseCA parses and checks a CA certificate upload: exactly one PEM block of type CERTIFICATE,
// surrounded by nothing but whitespace, at most [MaxPEMSize] bytes, holding an X.509 CA certificate
// (basic constraints CA=true; keyCertSign if key usage is present) with a key that
// [decision.CheckCAKey] accepts, valid at now.
// On failure it returns a nil certificate and an *[Error].
func ParseCA(pemText string, now time.Time) (*x509.Certificate, error) {
	if len(pemText) > MaxPEMSize {
		return nil, fail(ErrTooLarge, "the PEM text is %d bytes; at most %d bytes (64 KiB) are accepted", len(pemText), MaxPEMSize)
	}
	// Look for keys before anything else, so that even a malformed key block is reported as a key
	// (and never quoted back as "garbage").
	if strings.Contains(pemText, "PRIVATE KEY") {
		return nil, fail(ErrPrivateKey, "the PEM text contains a private key; upload only the CA certificate, and treat the key as compromised if it was sent by mistake")
	}
	data := bytes.TrimLeft([]byte(pemText), " \t\r\n")
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fail(ErrNotPEM, "the PEM text is empty")
	}
	block, rest := pem.Decode(data)
	if block == nil {
		if bytes.Contains(data, []byte("-----BEGIN")) {
			return nil, fail(ErrNotPEM, "the PEM block is malformed (bad base64, or missing or mismatched BEGIN/END lines)")
		}
		return nil, fail(ErrNotPEM, "the text is not PEM; expected a block starting with %q", "-----BEGIN CERTIFICATE-----")
	}
	// pem.Decode skips anything before the first block; refuse it.
	if begin := bytes.Index(data, []byte("-----BEGIN")); begin < 0 || len(bytes.TrimSpace(data[:begin])) != 0 {
		return nil, fail(ErrNotPEM, "there is text before the PEM block; upload the PEM block alone")
	}
	if block.Type != "CERTIFICATE" {
		return nil, fail(ErrNotCertificate, "the PEM block is of type %q; want %q", shorten(block.Type), "CERTIFICATE")
	}
	if len(block.Headers) != 0 {
		return nil, fail(ErrNotPEM, "the PEM block has headers (such as Proc-Type); a certificate block has none")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		if next, _ := pem.Decode(rest); next != nil {
			if next.Type == "CERTIFICATE" {
				return nil, fail(ErrMultipleCertificates, "the PEM text holds more than one certificate; upload exactly one CA certificate per certificate authority")
			}
			return nil, fail(ErrNotPEM, "the PEM text holds a second block (of type %q); upload the CA certificate alone", shorten(next.Type))
		}
		return nil, fail(ErrNotPEM, "there is text after the PEM block; upload the PEM block alone")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fail(ErrUnparsable, "the certificate cannot be parsed: %v", err)
	}
	if !cert.BasicConstraintsValid {
		return nil, fail(ErrNotCA, "the certificate is not a CA: it has no basic constraints extension")
	}
	if !cert.IsCA {
		return nil, fail(ErrNotCA, "the certificate is not a CA: basic constraints say CA=false (is this a leaf certificate?)")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fail(ErrNoCertSign, "the certificate may not sign certificates: its key usage lacks keyCertSign")
	}
	if err := decision.CheckCAKey(cert); err != nil {
		return nil, fail(ErrUnsupportedKey, "the certificate's key is not accepted: %v", err)
	}
	if now.Before(cert.NotBefore) {
		return nil, fail(ErrNotYetValid, "the certificate is not valid yet: it becomes valid at %s", cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(cert.NotAfter) {
		return nil, fail(ErrExpired, "the certificate expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, nil
}

// Describe returns a certificate's subject (RFC 2253-like, as crypto/x509's pkix.Name.String
// writes it) and its SHA-256 fingerprint in the form of [certid.FingerprintSHA256].
func Describe(cert *x509.Certificate) (subject string, fingerprint string) {
	return cert.Subject.String(), certid.FingerprintSHA256(cert.Raw)
}

// shorten bounds text from the upload that an error repeats.
func shorten(s string) string {
	const max = 40
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
