package command

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"strconv"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// The request digest tells a repeat of a create from another create with the same request id. A
// create with a request id records it in the event that creates the resource (request_digest, see
// proto/guestlist/events/v1), and the fold keeps it with the request id (fold.Ref.Digest), so the
// comparison needs nothing but the tenant's history: it holds after restarts and across API
// processes.
//
// Version 1, the one defined here and in docs/storage.md ("Request ids"), is SHA-256 over:
//
//	magic    the 17 ASCII bytes "guestlist-request"
//	version  1 byte, digestVersion (1)
//	method   a field: the full name of the create's method ("guestlist.v1.PolicyService.CreatePolicy")
//	pairs    for each of the method's fields in the order listed by the functions below, unless its
//	         value is empty: a field with the field's path, then a field with its value
//
// where a field is a 4-byte big-endian length followed by that many bytes. Values are the
// normalised ones the command stores (a hostname in lower case without a trailing dot, a serial
// number in lower-case hex without leading zeros, a CA as its DER certificate); enum values are
// their numbers and counts in decimal ASCII, booleans "true". Empty values (an empty string or
// list, an enum's zero value, false) are left out, so a field added later changes no earlier
// request's digest while it is not set. A list is written as its length (path "rules"), then its
// elements (paths "rules[0].name", ...). The tenant is not covered (a request id is looked up in
// its tenant's history alone), nor is request_id itself. A change of what is covered or how gets a
// new version.
const (
	digestMagic   = "guestlist-request"
	digestVersion = 1
)

// requestDigest computes a request digest; its methods add the pairs of one request, in order.
type requestDigest struct{ h hash.Hash }

// newRequestDigest starts the request digest of a call of method (a full method name).
func newRequestDigest(method string) *requestDigest {
	d := &requestDigest{h: sha256.New()}
	d.h.Write([]byte(digestMagic))
	d.h.Write([]byte{digestVersion})
	d.field([]byte(method))
	return d
}

func (d *requestDigest) field(b []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	d.h.Write(n[:])
	d.h.Write(b)
}

func (d *requestDigest) pair(path string, value []byte) {
	if len(value) == 0 {
		return
	}
	d.field([]byte(path))
	d.field(value)
}

func (d *requestDigest) str(path, v string) { d.pair(path, []byte(v)) }

func (d *requestDigest) bytes(path string, v []byte) { d.pair(path, v) }

func (d *requestDigest) num(path string, v int64) {
	if v != 0 {
		d.str(path, strconv.FormatInt(v, 10))
	}
}

func (d *requestDigest) flag(path string, v bool) {
	if v {
		d.str(path, "true")
	}
}

func (d *requestDigest) strs(path string, v []string) {
	d.num(path, int64(len(v)))
	for i, s := range v {
		d.str(path+"["+strconv.Itoa(i)+"]", s)
	}
}

// sum returns the digest (32 bytes).
func (d *requestDigest) sum() []byte { return d.h.Sum(nil) }

// Full method names, as the request digest writes them.
const (
	methodCreateTenant               = "guestlist.v1.TenantService.CreateTenant"
	methodCreateToken                = "guestlist.v1.TokenService.CreateToken"
	methodCreateCertificateAuthority = "guestlist.v1.CertificateAuthorityService.CreateCertificateAuthority"
	methodCreateRevocation           = "guestlist.v1.RevocationService.CreateRevocation"
	methodCreatePolicy               = "guestlist.v1.PolicyService.CreatePolicy"
	methodCreateHostname             = "guestlist.v1.HostnameService.CreateHostname"
	methodBatchCreateHostnames       = "guestlist.v1.HostnameService.BatchCreateHostnames"
)

// tenantDigest covers tenant.display_name.
func tenantDigest(displayName string) []byte {
	d := newRequestDigest(methodCreateTenant)
	d.str("tenant.display_name", displayName)
	return d.sum()
}

// tokenDigest covers token.display_name and token.role (the token's id and secret are the
// server's).
func tokenDigest(displayName string, role eventsv1.Role) []byte {
	d := newRequestDigest(methodCreateToken)
	d.str("token.display_name", displayName)
	d.num("token.role", int64(role))
	return d.sum()
}

// caDigest covers certificate_authority_id as requested (empty when the server chooses),
// certificate_authority.display_name and the certificate, as the DER that certificate_pem holds
// (path "certificate_authority.certificate_der": another PEM text of the same certificate is the
// same request).
func caDigest(requestedID, displayName string, der []byte) []byte {
	d := newRequestDigest(methodCreateCertificateAuthority)
	d.str("certificate_authority_id", requestedID)
	d.str("certificate_authority.display_name", displayName)
	d.bytes("certificate_authority.certificate_der", der)
	return d.sum()
}

// revocationDigest covers certificate_authority_id, revocation_id as requested (empty when the
// server chooses), the normalised revocation.serial_number or revocation.fingerprint_sha256 of ev,
// and revocation.reason.
func revocationDigest(requestedID string, ev *eventsv1.RevocationAdded) []byte {
	d := newRequestDigest(methodCreateRevocation)
	d.str("certificate_authority_id", ev.GetCertificateAuthorityId())
	d.str("revocation_id", requestedID)
	d.str("revocation.serial_number", ev.GetSerialNumber())
	d.str("revocation.fingerprint_sha256", ev.GetFingerprintSha256())
	d.str("revocation.reason", ev.GetReason())
	return d.sum()
}

// policyDigest covers policy_id as requested (empty when the server chooses),
// policy.display_name and policy.rules (each rule's name, action and expression, in order).
func policyDigest(requestedID, displayName string, rules []*eventsv1.PolicyRule) []byte {
	d := newRequestDigest(methodCreatePolicy)
	d.str("policy_id", requestedID)
	d.str("policy.display_name", displayName)
	d.num("policy.rules", int64(len(rules)))
	for i, r := range rules {
		p := "policy.rules[" + strconv.Itoa(i) + "]"
		d.str(p+".name", r.GetName())
		d.num(p+".action", int64(r.GetAction()))
		d.str(p+".expression", r.GetExpression())
	}
	return d.sum()
}

// hostnamesDigest covers a CreateHostname (batch false: specs holds its one hostname, prefix
// "hostname") or a BatchCreateHostnames (prefixes "requests[i].hostname", after the count
// "requests"): for each hostname, its normalised name, origin_url, mtls.mode,
// mtls.certificate_authority_ids, mtls.reject_in_handshake and policy_id. The requests' own
// tenant_id and request_id inside a batch change nothing and are not covered.
func hostnamesDigest(batch bool, specs []hostnameSpec) []byte {
	method := methodCreateHostname
	if batch {
		method = methodBatchCreateHostnames
	}
	d := newRequestDigest(method)
	if batch {
		d.num("requests", int64(len(specs)))
	}
	for _, s := range specs {
		ev := s.ev
		d.str(s.prefix+".hostname", ev.GetHostname())
		d.str(s.prefix+".origin_url", ev.GetOriginUrl())
		d.num(s.prefix+".mtls.mode", int64(ev.GetMtls().GetMode()))
		d.strs(s.prefix+".mtls.certificate_authority_ids", ev.GetMtls().GetCertificateAuthorityIds())
		d.flag(s.prefix+".mtls.reject_in_handshake", ev.GetMtls().GetRejectInHandshake())
		d.str(s.prefix+".policy_id", ev.GetPolicyId())
	}
	return d.sum()
}
