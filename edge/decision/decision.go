// Package decision is the edge's verdict on one request to one hostname: the client certificate
// checked against the hostname's CAs and revocations, then the hostname's policy. The edge calls
// [Decide] (or its per-connection form, [Hostname.VerifyClient] and [Hostname.DecideVerified]) for
// every request, and the audit calls the same function to re-derive a logged decision from a
// replayed configuration. It is therefore a pure function of its arguments: no I/O, no clock (the
// moment of the request is an argument), no global state, and the same inputs always give the same
// [Decision].
//
// # Rules
//
//  1. No hostname: deny, [ReasonHostnameUnknown]. An inactive hostname: deny,
//     [ReasonHostnameInactive] (in every mode; the edge should already have failed the handshake).
//  2. Mode OFF: allow, [ReasonMTLSOff]. No certificate is looked at.
//  3. Otherwise the client's leaf certificate (peer[0]) is verified with [x509.Certificate.Verify]
//     against the hostname's CAs only (as roots), with those of the other certificates the client
//     sent that the hostname's CAs certify as intermediates (see Intermediates below), at the
//     moment of the request, for client authentication; then against the hostname's revocations.
//     The outcome is [ReasonCertificateVerified] or one of the certificate_* failure reasons.
//  4. Without a policy: a verified certificate is allowed ([ReasonCertificateVerified]); anything
//     else is denied with the certificate's failure reason.
//  5. With a policy: its rules are tried in order, and the first whose expression is true decides
//     ([ReasonRuleAllow] or [ReasonRuleDeny], with Rule set to its name). No rule true: deny,
//     [ReasonNoRuleMatched]. A rule whose evaluation fails: deny, [ReasonPolicyError], with Rule set
//     to its name.
//  6. Mode REPORT: a deny of rules 3 to 5 becomes [ReportDeny]; the reason stays.
//
// In the TLS handshake, [DecideHandshake]: with mode ENFORCE and reject_in_handshake, a missing
// or failing certificate fails the handshake (deny with rule 3's reason, no policy); otherwise the
// handshake completes and the requests are decided as above.
//
// The policy always runs, also for a missing or unverified certificate, so that a rule like
// `!cert.presented && request.path == "/healthz"` can allow. But it sees the certificate's
// identity only when the certificate verified: for a missing or unverified certificate, cert.presented,
// cert.verified (false) and cert.error are set and every identity field (subject, issuer, SANs,
// serial number, fingerprint, validity) is empty. A self-signed certificate claiming OU=ops
// therefore gains nothing from a rule on the OU.
//
// # The hostname's CAs
//
// The edge checks a CA's key against the signature of every certificate that names the CA as its
// issuer, sent by any client, so the CAs' keys bound what a forged certificate costs it. A CA's
// key must be RSA of 2048 to 4096 bits with public exponent 65537, ECDSA on P-256 or P-384, or
// Ed25519 ([CheckCAKey]; P-521 is refused, a check of its signatures costing about 40 times a
// P-256 one). The control plane refuses the upload of any other, and [Prepare] refuses a
// configuration that holds one (from events older than the rule): the edge then refuses the
// hostname.
//
// A hostname trusts at most [MaxCAsPerSubject] (3) CA certificates with one subject name: a
// certificate naming that subject as its issuer is checked against each of them, and a renewal
// needs only two at once. The control plane refuses a hostname that references more, and
// [Prepare] a configuration that holds more (one certificate under two ids counts once).
//
// # Intermediates
//
// A client sends at most [MaxPeerCertificates] certificates, its leaf and up to 9 intermediates;
// a longer chain is [ReasonCertificateUntrusted] without being looked at. The intermediates are
// filtered before crypto/x509 sees them. Only those on a path of names from the leaf's issuer are
// candidates (crypto/x509 would look at no others); byte copies, self-issued copies of a
// hostname's CA or of an earlier candidate (one subject and key, another SAN, say), and
// certificates whose key costs more to check with than 48 P-256 checks (RSA above 12,288 bits, or
// above 8192 with another exponent than 65537: no CA uses one) are dropped unchecked. A single candidate with a key as cheap to check as a P-256 one, the usual chain, is
// kept when one of the hostname's CAs may have issued it by their names, and its signature is left
// to crypto/x509, which checks it once. Otherwise one is kept only when one of the hostname's CAs,
// or an intermediate already kept, signed it: parents are tried only when their subject is the
// intermediate's issuer name and, when both are present, their subject key id is its authority
// key id; rounds over the intermediates not kept repeat until a round keeps none, each pair is
// checked once, and the checks stop once the failed ones have cost 48 P-256 checks (a P-384 key's
// check counts 9, a P-521's 40, an RSA-4096's 6); at most 3 of one subject are kept, the first
// certified in the order sent; the intermediates not kept are dropped. Validity plays no part in
// it (an intermediate that expired is kept, so that its chain is [ReasonCertificateExpired]).
// Verification and the classification of its failure (expired, not yet valid, untrusted) see only
// the kept intermediates.
//
// So no signature is checked with a key that the client chose and no trusted CA certified, except
// the leaf's with a single cheap intermediate's key, once; crypto/x509 builds no paths through
// the client's own certificates, and the failed checks a client can cause are bounded by the
// budget and a few checks against the hostname's CAs (at most 3 of one name, with the keys
// [CheckCAKey] accepts). Intermediates a tenant certified with its CA's key are kept, and
// crypto/x509 would explore the paths among them with the keys it chose: before it does, what it
// would check is estimated (each certificate against every kept intermediate and CA of its
// issuer's name not already on the path, as crypto/x509's alreadyInChain sees it, once per path
// reaching it, weighed by key; where several certificates have the issuer's name, the path goes on
// only through those whose signature and validity hold, checked once each, as crypto/x509 would
// go on), and a chain whose estimate exceeds 192 P-256 checks (3 certificates of one name with P-521 keys above
// the leaf and their CA; a chain of 9 P-384 intermediates), or whose certificates make more than 8
// chains to the hostname's CAs (crypto/x509 checks each one's name constraints), is
// [ReasonCertificateUntrusted]. What the whole verification costs is a few times that: the
// filter's successful checks come before the estimate, and the classification of a failure walks
// the paths again.
//
// The prices, for chains crypto/x509 alone would accept: a chain that links an intermediate to its
// issuer only against their key ids (an authority key id that is not the issuer's subject key id)
// is untrusted; a bundle with more than 3 certificates of one subject whose first 3 certified
// cannot make the chain (expired, say) fails, as may one whose failed checks exhaust the budget
// before its good certificate is checked (several same-subject CAs and intermediates without an
// authority key id); so is a bundle whose paths would cost more than that estimate allows.
//
// # Key usage
//
// The leaf must allow client authentication by its extended key usage (checked by crypto/x509
// along the chain) and, when it has a keyUsage extension, that extension must include
// digitalSignature or keyAgreement; otherwise [ReasonCertificateWrongKeyUsage]. A leaf without a
// keyUsage extension is not restricted by it.
//
// # Revocations
//
// A revocation is filed under one of the hostname's CAs; under a CA id the hostname does not trust
// it is ignored. Revocations are looked at only for a certificate that verified, against every
// chain it verified through: it is revoked if any of them is.
//
// By serial number: a serial revoked under CA X revokes every certificate of the chain (the leaf
// or a CA) that X or a CA below X issued with that serial. Serials are unique only among the
// certificates one CA issued, and a revocation names only X and the serial, so it cannot say
// whether it means a device or a compromised issuing CA; a tenant can file only under a CA it
// uploaded, often its root alone, while its clients send the intermediates. The check fails
// closed and takes both:
//
//   - Every certificate of the chain is checked against the serials revoked under every CA above
//     it: the CAs of the certificates after it, and, among the hostname's CAs, those that signed
//     one of these CAs (for the chain's last certificate, the one that signed that certificate),
//     then theirs, and so on. So a chain that ends at a trusted intermediate is checked against
//     the revocations under the trusted root that issued it, and an issuing CA two levels below
//     the root is revoked by its serial filed under the root.
//   - No certificate is checked against the revocations under its own CA: a root's own serial
//     revoked under the root revokes nothing, and an intermediate's serial revoked under the
//     intermediate revokes only a leaf of the intermediate with that serial.
//
// The price: a leaf whose serial equals that of a CA between it and X (CAs that number from 1),
// revoked under X, also revokes that CA and all of its leaves. The 403's reason and the log name
// the revoked certificate. Where that can happen, upload the issuing CA and file its leaves'
// revocations under it, or revoke the leaf by fingerprint.
//
// X is matched by its subject and public key, not by one certificate: a revocation filed under a
// certificate of X applies through every certificate of X, trusted or sent by the client (a root
// renewed with the same key, also once the old certificate expired; an intermediate
// cross-certified by two roots). A CA is above another only as far as the chain and the hostname's
// CAs show it: a serial revoked under root R1 does not reach the leaves of an intermediate
// cross-certified by R1 and R2 when the client sends only its R2 certificate and the hostname's
// CAs hold no certificate of it signed by R1 (or by one of the hostname's CAs below R1); add a
// certificate of the intermediate to the hostname's CAs and file the revocation under it, or
// revoke the leaf by fingerprint. [Prepare] finds which of the hostname's CAs signed which with a
// bounded number of signature checks; a hostname whose CAs need more (far more CAs than the API
// allows a hostname) is refused.
//
// By fingerprint: it revokes a chain that contains the certificate (leaf, intermediate or root)
// with that SHA-256 fingerprint, filed under any of the hostname's CAs. It names one certificate
// exactly: another certificate of the same CA is not revoked by it.
package decision

import (
	"crypto/x509"
	"errors"
	"net/http"
	"sync"
	"time"

	"guestlist.dev/edge/policy"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// Verdict is the outcome of a decision, as written to the decision log.
type Verdict string

const (
	// Allow: the request is forwarded.
	Allow Verdict = "allow"
	// Deny: the request is refused (HTTP 403 in mode ENFORCE).
	Deny Verdict = "deny"
	// ReportDeny: mode REPORT would have denied; the request is forwarded anyway.
	ReportDeny Verdict = "report_deny"
)

// Reasons. They are stable: they are written to the decision log, sent to origins, shown to
// clients in 403 bodies, and compared by the audit. The certificate reasons are also what the
// policy sees as cert.error.
const (
	// ReasonHostnameUnknown: there is no configuration for the hostname (Decide got a nil
	// *Hostname). Deny.
	ReasonHostnameUnknown = "hostname_unknown"
	// ReasonHostnameInactive: the hostname is configured but not active. Deny, in every mode.
	ReasonHostnameInactive = "hostname_inactive"
	// ReasonMTLSOff: the hostname's mode is OFF. Allow.
	ReasonMTLSOff = "mtls_off"
	// ReasonCertificateVerified: no policy, and the client certificate verified. Allow.
	ReasonCertificateVerified = "certificate_verified"
	// ReasonCertificateMissing: the client sent no certificate.
	ReasonCertificateMissing = "certificate_missing"
	// ReasonCertificateUntrusted: the certificate does not chain to any of the hostname's CAs
	// (another CA, self-signed, an intermediate missing, too many certificates, or otherwise
	// invalid), whatever the time.
	ReasonCertificateUntrusted = "certificate_untrusted"
	// ReasonCertificateExpired: the certificate would chain to one of the hostname's CAs, but it
	// or a certificate of its chain has expired.
	ReasonCertificateExpired = "certificate_expired"
	// ReasonCertificateNotYetValid: the certificate would chain to one of the hostname's CAs, but
	// it or a certificate of its chain is not valid yet.
	ReasonCertificateNotYetValid = "certificate_not_yet_valid"
	// ReasonCertificateWrongKeyUsage: the certificate chains to one of the hostname's CAs and is
	// valid now, but its extended key usage (or its chain's) does not allow client authentication,
	// or it has a keyUsage extension with neither digitalSignature nor keyAgreement.
	ReasonCertificateWrongKeyUsage = "certificate_wrong_key_usage"
	// ReasonCertificateRevoked: the certificate verified, but it or a certificate of its chain is
	// revoked.
	ReasonCertificateRevoked = "certificate_revoked"
	// ReasonRuleAllow: a policy rule with action ALLOW matched. Decision.Rule names it.
	ReasonRuleAllow = "rule_allow"
	// ReasonRuleDeny: a policy rule with action DENY matched. Decision.Rule names it.
	ReasonRuleDeny = "rule_deny"
	// ReasonNoRuleMatched: the hostname has a policy, the certificate is verified, and none of the
	// rules matched. Deny. (With an unverified certificate, the certificate's reason is given.)
	ReasonNoRuleMatched = "no_rule_matched"
	// ReasonPolicyError: evaluating a rule failed (e.g. a header that was not sent was indexed).
	// Decision.Rule names the rule. Deny.
	ReasonPolicyError = "policy_error"

	// The audit's reasons, never the edge's:

	// ReasonHandshakeCompleted: [DecideHandshake] for a client whose handshake the edge completes
	// (the hostname does not reject in the handshake, or the certificate verified); its requests
	// are then decided one by one. Allow.
	ReasonHandshakeCompleted = "handshake_completed"
	// ReasonRequestHeadersUnknown: the request's headers are not known (Request.HeaderUnknown)
	// and the outcome of the policy's rule Decision.Rule depends on them, so the verdict cannot be
	// re-derived. Deny (report_deny in mode REPORT).
	ReasonRequestHeadersUnknown = "request_headers_unknown"
)

// MaxPeerCertificates is the largest number of certificates (leaf and intermediates) that a client
// may send; a longer chain is [ReasonCertificateUntrusted] without being looked at.
const MaxPeerCertificates = 10

// Request is what the decision uses of an HTTP request.
type Request struct {
	// Host is the request's host as received. The decision does not use it: the policy's
	// request.host is the hostname's configured, normalised name. The edge must have routed the
	// request to the hostname whose configuration it decides on (421 Misdirected Request
	// otherwise).
	Host string
	// Method is the HTTP method, e.g. "GET".
	Method string
	// Path is the request's path as PolicyPath makes it (percent-decoded, ";params" and repeated
	// slashes dropped), without the query.
	Path string
	// Header holds the request's headers as received from net/http (canonical keys); the policy
	// looks them up case-insensitively, under lower-case names.
	Header http.Header
	// HeaderUnknown says that the headers are not known, as for the audit re-deriving a decision
	// from the decision log, which does not record them: Header is ignored, and a decision that
	// depends on them is [ReasonRequestHeadersUnknown] (see policy.RequestInput.HeadersUnknown).
	// The edge always knows them.
	HeaderUnknown bool
}

// Cert is what the decision log and the headers sent to the origin report about the client
// certificate. The identity fields (SerialNumber, Subject, Issuer, NotAfter) are set only when the
// certificate verified, so that nothing a client makes up reaches the origin, or when its chain
// verified and it is revoked (the decision log then names the revoked certificate; the origin is
// sent identity headers only when Verified); FingerprintSHA256 is set whenever a certificate was
// presented (it identifies what was presented, and the client proved it holds the key).
type Cert struct {
	// Presented: the client sent a certificate.
	Presented bool
	// Verified: the certificate verified (chain, validity, key usage, revocation).
	Verified bool
	// Error is the failure reason (one of the certificate_* reasons) when a certificate was
	// presented and did not verify; "" otherwise.
	Error string
	// FingerprintSHA256 is the leaf's fingerprint (certid form), when presented.
	FingerprintSHA256 string
	// SerialNumber is the leaf's serial number (certid form), when verified.
	SerialNumber string
	// Subject is the leaf's subject (RFC 2253 form, as pkix.Name.String), when verified.
	Subject string
	// Issuer is the leaf's issuer (RFC 2253 form), when verified.
	Issuer string
	// NotAfter is the end of the leaf's validity, when verified.
	NotAfter time.Time
}

// Decision is the verdict on one request, with why.
type Decision struct {
	// Verdict is allow, deny or report_deny.
	Verdict Verdict
	// Reason is one of the Reason* constants.
	Reason string
	// Rule is the name of the policy rule that decided (reasons rule_allow, rule_deny and
	// policy_error); "" otherwise.
	Rule string
	// Cert describes the client certificate (zero when the mode is OFF or the hostname unknown or
	// inactive).
	Cert Cert
	// Chain is the verified chain, leaf first and root last; nil when the certificate did not
	// verify. It must not be modified.
	Chain []*x509.Certificate
}

// Decide gives the verdict on a request to hostname h (nil when the hostname is unknown), made by
// a client that sent the certificates peer (leaf first; none, nil or empty for no certificate) at
// the moment now. It never panics and is deterministic: the same arguments always give the same
// Decision. req may be nil (an empty request).
//
// Decide verifies the certificate chain every time, which costs far more than the rest. An edge
// verifies once per connection with [Hostname.VerifyClient] and decides each request with
// [Hostname.DecideVerified], which gives the same Decision.
func Decide(h *Hostname, peer []*x509.Certificate, req *Request, now time.Time) Decision {
	if d, done := h.decideWithoutCert(); done {
		return d
	}
	return h.decide(h.verify(peer, now), req)
}

// DecideVerified gives the verdict on a request made at the moment now on a connection whose
// client certificate v describes. It equals Decide(h, v's peer certificates, req, now): when v was
// verified for another Hostname, or its outcome does not hold at now (see
// [Verification.Holds]), the certificates are verified again (and the caller should keep the
// fresh Verification from [Hostname.VerifyClient] for the next requests). v may be nil for a
// client that sent no certificate.
func (h *Hostname) DecideVerified(v *Verification, req *Request, now time.Time) Decision {
	if d, done := h.decideWithoutCert(); done {
		return d
	}
	if v == nil {
		v = h.verify(nil, now)
	} else if !v.Holds(h, now) {
		v = h.verify(v.peer, now)
	}
	return h.decide(v, req)
}

// DecideHandshake gives the decision the edge makes in the TLS handshake of a client that sent
// the certificates peer (leaf first; none for no certificate) to hostname h at the moment now.
// With mode ENFORCE and reject_in_handshake, a certificate that is missing or does not verify
// fails the handshake: deny, with the certificate's reason and no rule (the policy is not
// evaluated). Otherwise the handshake completes and each request is decided by [Decide]:
// allow, [ReasonHandshakeCompleted]. An unknown or inactive hostname fails the handshake as in
// Decide (hostname_unknown, hostname_inactive).
//
// The edge logs a refusal in the handshake with an empty method and path; the audit re-derives
// such a line with DecideHandshake, never with Decide, which would evaluate the policy.
func DecideHandshake(h *Hostname, peer []*x509.Certificate, now time.Time) Decision {
	if d, done := h.handshakeWithoutCert(); done {
		return d
	}
	return h.decideHandshake(h.verify(peer, now))
}

// DecideHandshakeVerified is [DecideHandshake] for the client certificate v describes (as
// [Hostname.DecideVerified] is for [Decide]); v may be nil for a client that sent none.
func (h *Hostname) DecideHandshakeVerified(v *Verification, now time.Time) Decision {
	if d, done := h.handshakeWithoutCert(); done {
		return d
	}
	if v == nil {
		v = h.verify(nil, now)
	} else if !v.Holds(h, now) {
		v = h.verify(v.peer, now)
	}
	return h.decideHandshake(v)
}

// RejectsInHandshake reports whether the handshake of a client whose certificate is missing or
// does not verify fails (an active hostname in mode ENFORCE with reject_in_handshake): the only
// case where [DecideHandshake] looks at the certificate.
func (h *Hostname) RejectsInHandshake() bool {
	return h != nil && h.active && h.mode == configv1.MtlsMode_MTLS_MODE_ENFORCE && h.Config.GetRejectInHandshake()
}

func (h *Hostname) handshakeWithoutCert() (Decision, bool) {
	switch {
	case h == nil:
		return Decision{Verdict: Deny, Reason: ReasonHostnameUnknown}, true
	case !h.active:
		return Decision{Verdict: Deny, Reason: ReasonHostnameInactive}, true
	case !h.RejectsInHandshake():
		return Decision{Verdict: Allow, Reason: ReasonHandshakeCompleted}, true
	}
	return Decision{}, false
}

func (h *Hostname) decideHandshake(v *Verification) Decision {
	if v.verified {
		return Decision{Verdict: Allow, Reason: ReasonHandshakeCompleted, Cert: v.cert, Chain: v.chain}
	}
	return Decision{Verdict: Deny, Reason: v.reason, Cert: v.cert}
}

// decideWithoutCert returns the decisions that do not depend on the client: unknown and inactive
// hostnames, mode OFF.
func (h *Hostname) decideWithoutCert() (Decision, bool) {
	switch {
	case h == nil:
		return Decision{Verdict: Deny, Reason: ReasonHostnameUnknown}, true
	case !h.active:
		return Decision{Verdict: Deny, Reason: ReasonHostnameInactive}, true
	case h.mode == configv1.MtlsMode_MTLS_MODE_OFF:
		return Decision{Verdict: Allow, Reason: ReasonMTLSOff}, true
	}
	return Decision{}, false
}

// inputPool recycles the policy inputs of decide: scratch space, never shared between calls, so
// it carries nothing from one decision to the next.
var inputPool = sync.Pool{New: func() any { return new(policy.Input) }}

// decide applies the policy (or the no-policy rule) to a verification done for h.
func (h *Hostname) decide(v *Verification, req *Request) Decision {
	d := Decision{Cert: v.cert, Chain: v.chain}
	switch {
	case h.program == nil && v.verified:
		d.Verdict, d.Reason = Allow, ReasonCertificateVerified
	case h.program == nil:
		d.Verdict, d.Reason = Deny, v.reason
	default:
		in := inputPool.Get().(*policy.Input)
		*in = policy.Input{Cert: v.input, Request: policy.RequestInput{Host: h.name}}
		if req != nil {
			in.Request.Method, in.Request.Path, in.Request.Headers = req.Method, req.Path, req.Header
			in.Request.HeadersUnknown = req.HeaderUnknown
		}
		matched, i, action, err := h.program.Evaluate(in)
		*in = policy.Input{} // Evaluate retains nothing; drop the references before pooling
		inputPool.Put(in)
		switch {
		case errors.Is(err, policy.ErrHeadersUnknown):
			d.Verdict, d.Reason, d.Rule = Deny, ReasonRequestHeadersUnknown, h.program.Rule(i).Name
		case err != nil:
			d.Verdict, d.Reason, d.Rule = Deny, ReasonPolicyError, h.program.Rule(i).Name
		case !matched && !v.Verified():
			// Say why the certificate was not good enough rather than that no rule matched.
			d.Verdict, d.Reason = Deny, v.reason
		case !matched:
			d.Verdict, d.Reason = Deny, ReasonNoRuleMatched
		case action == policy.Allow:
			d.Verdict, d.Reason, d.Rule = Allow, ReasonRuleAllow, h.program.Rule(i).Name
		default:
			d.Verdict, d.Reason, d.Rule = Deny, ReasonRuleDeny, h.program.Rule(i).Name
		}
	}
	if d.Verdict == Deny && h.mode == configv1.MtlsMode_MTLS_MODE_REPORT {
		d.Verdict = ReportDeny
	}
	return d
}
