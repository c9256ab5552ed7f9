package policy

import (
	"crypto/x509"
	"net/http"
	"time"

	"guestlist.dev/edge/certid"
)

// Input is what a policy decides on: the client certificate and the HTTP request. It holds plain Go
// values; [Program.Evaluate] exposes them to CEL without copying them into maps.
type Input struct {
	// Cert is the CEL variable `cert`.
	Cert CertInput
	// Request is the CEL variable `request`.
	Request RequestInput
}

// CertInput is the CEL variable `cert`. When no certificate was presented every field is its zero
// value (empty strings and lists, timestamps of 0001-01-01T00:00:00Z).
type CertInput struct {
	// Presented is `cert.presented`: the client sent a certificate.
	Presented bool
	// Verified is `cert.verified`: the certificate chains to one of the hostname's CAs, is valid
	// now, may be used for client authentication and is not revoked.
	Verified bool
	// Error is `cert.error`: why verification failed; empty when verified or not presented.
	Error string
	// Subject is `cert.subject`.
	Subject SubjectInput
	// Issuer is `cert.issuer`.
	Issuer IssuerInput
	// SerialNumber is `cert.serial_number`, in the form of certid.SerialNumber.
	SerialNumber string
	// FingerprintSHA256 is `cert.fingerprint_sha256`, in the form of certid.FingerprintSHA256.
	FingerprintSHA256 string
	// DNSNames is `cert.dns_names`: the DNS subject alternative names.
	DNSNames []string
	// EmailAddresses is `cert.email_addresses`: the email subject alternative names.
	EmailAddresses []string
	// URIs is `cert.uris`: the URI subject alternative names.
	URIs []string
	// NotBefore is `cert.not_before`.
	NotBefore time.Time
	// NotAfter is `cert.not_after`.
	NotAfter time.Time
}

// SubjectInput is `cert.subject`.
type SubjectInput struct {
	// CommonName is `cert.subject.common_name`.
	CommonName string
	// OrganizationalUnit is `cert.subject.organizational_unit`.
	OrganizationalUnit []string
	// Organization is `cert.subject.organization`.
	Organization []string
}

// IssuerInput is `cert.issuer`.
type IssuerInput struct {
	// CommonName is `cert.issuer.common_name`.
	CommonName string
}

// RequestInput is the CEL variable `request`.
type RequestInput struct {
	// Host is `request.host`: the normalised hostname the request was made to.
	Host string
	// Method is `request.method`, e.g. "GET".
	Method string
	// Path is `request.path`: the percent-decoded URL path without the query, as the edge gives it
	// (decision.PolicyPath: ";params" and repeated slashes dropped).
	Path string
	// Headers is `request.headers`, a map(string, string) in CEL. It is used as net/http delivers
	// it (canonical keys) without copying: CEL sees lower-case keys, and several values of one
	// header joined by ", ". Keys written with upper-case letters in CEL never match.
	Headers http.Header
	// HeadersUnknown says that the request's headers are not known, as when the audit replays a
	// decision log line, which does not record them. Headers is then ignored, and a rule whose
	// outcome depends on request.headers fails with an *[EvalError] wrapping [ErrHeadersUnknown]
	// instead of giving a verdict the edge might not have given. Reading request.headers gives an
	// error value, so a rule whose outcome does not depend on it (`cert.verified ||
	// request.headers[...] == ...` with a verified certificate) still evaluates as at the edge;
	// has(request.headers) makes the rule's outcome unknown whatever it gives.
	HeadersUnknown bool
}

// NewCertInput fills a CertInput from a parsed client certificate: Presented is true, and
// Verified and Error are left for the caller, who knows the verification outcome. Call it once per
// TLS connection, not per request: it allocates (URIs are formatted).
func NewCertInput(c *x509.Certificate) CertInput {
	in := CertInput{
		Presented: true,
		Subject: SubjectInput{
			CommonName:         c.Subject.CommonName,
			OrganizationalUnit: c.Subject.OrganizationalUnit,
			Organization:       c.Subject.Organization,
		},
		Issuer:            IssuerInput{CommonName: c.Issuer.CommonName},
		SerialNumber:      certid.SerialNumber(c.SerialNumber),
		FingerprintSHA256: certid.FingerprintSHA256(c.Raw),
		DNSNames:          c.DNSNames,
		EmailAddresses:    c.EmailAddresses,
		NotBefore:         c.NotBefore,
		NotAfter:          c.NotAfter,
	}
	if len(c.URIs) > 0 {
		in.URIs = make([]string, len(c.URIs))
		for i, u := range c.URIs {
			in.URIs[i] = u.String()
		}
	}
	return in
}
