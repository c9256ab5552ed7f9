package decision

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/policy"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// CertificateError is the error of a client certificate that did not verify: Reason is one of the
// certificate_* reasons, Err the underlying error (from crypto/x509, whose wording may change
// between Go releases; the reason does not).
type CertificateError struct {
	// Reason is the stable reason, e.g. [ReasonCertificateExpired].
	Reason string
	// Err says more, for logs.
	Err error
}

// Error implements error.
func (e *CertificateError) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *CertificateError) Unwrap() error { return e.Err }

// Verification is the outcome of verifying a client's certificates for one [Hostname] at one
// moment, made by [Hostname.VerifyClient]. It is immutable and holds everything the requests of a
// connection need ([Hostname.DecideVerified] then only evaluates the policy), and it knows for
// which moments the outcome stays the same ([Verification.Holds]).
type Verification struct {
	h        *Hostname
	peer     []*x509.Certificate
	verified bool
	reason   string
	err      error
	cert     Cert
	input    policy.CertInput
	chain    []*x509.Certificate
	// The outcome holds at every moment (no certificate, mode OFF, unknown hostname), or for
	// from <= t < until, where an unset bound is open.
	always            bool
	hasFrom, hasUntil bool
	from, until       time.Time
}

// VerifyClient verifies the certificates a client sent (peer, leaf first; nil or empty for none)
// for h at the moment now. The edge calls it once per connection and keeps the result for the
// connection's requests ([Hostname.DecideVerified]).
func (h *Hostname) VerifyClient(peer []*x509.Certificate, now time.Time) *Verification {
	return h.verify(peer, now)
}

// Verify is the certificate part of [Decide] alone, for the TLS handshake of a hostname with
// reject_in_handshake: it returns the verified chain (leaf first) and reason
// [ReasonCertificateVerified] with a nil error, or a nil chain, the failure reason and a
// *[CertificateError]. In mode OFF no certificate is asked for and it returns nil,
// [ReasonMTLSOff], nil. On a nil Hostname it returns [ReasonHostnameUnknown] and an error. It
// does not look at whether the hostname is active (the edge fails the handshake of an inactive
// hostname before).
func (h *Hostname) Verify(peer []*x509.Certificate, now time.Time) (chain []*x509.Certificate, reason string, err error) {
	v := h.verify(peer, now)
	return v.chain, v.reason, v.err
}

// Verified reports whether the certificate verified.
func (v *Verification) Verified() bool { return v.verified }

// Reason returns [ReasonCertificateVerified] or why the certificate did not verify (a
// certificate_* reason, or [ReasonMTLSOff] or [ReasonHostnameUnknown]).
func (v *Verification) Reason() string { return v.reason }

// Err returns nil when the certificate verified (or the mode is OFF), else a *[CertificateError]
// (or an error for an unknown hostname).
func (v *Verification) Err() error { return v.err }

// Cert returns what the decision log and the origin headers report about the certificate.
func (v *Verification) Cert() Cert { return v.cert }

// Chain returns the verified chain, leaf first; nil when the certificate did not verify. It must
// not be modified.
func (v *Verification) Chain() []*x509.Certificate { return v.chain }

// Holds reports whether verifying the same certificates for h at the moment now would give the
// same outcome: v was made for h, and no certificate involved (the client's, the hostname's CAs)
// starts or ends its validity between v's moment and now.
func (v *Verification) Holds(h *Hostname, now time.Time) bool {
	if v == nil || v.h != h {
		return false
	}
	if v.always {
		return true
	}
	now = nonZero(now)
	return (!v.hasFrom || !now.Before(v.from)) && (!v.hasUntil || now.Before(v.until))
}

// nonZero returns t, or one nanosecond after the zero time for the zero time: crypto/x509 takes a
// zero time for the current time, which a pure function must not read. (Certificate validity is
// given in whole seconds, so this changes no outcome.)
func nonZero(t time.Time) time.Time {
	if t.IsZero() {
		return t.Add(time.Nanosecond)
	}
	return t
}

func (h *Hostname) verify(peer []*x509.Certificate, now time.Time) *Verification {
	now = nonZero(now)
	v := &Verification{h: h, peer: peer, always: true}
	switch {
	case h == nil:
		v.reason, v.err = ReasonHostnameUnknown, errors.New("decision: unknown hostname")
		return v
	case h.mode == configv1.MtlsMode_MTLS_MODE_OFF:
		v.reason = ReasonMTLSOff
		return v
	case len(peer) == 0 || peer[0] == nil:
		v.reason, v.err = ReasonCertificateMissing, &CertificateError{Reason: ReasonCertificateMissing, Err: errors.New("the client sent no certificate")}
		return v
	}
	leaf := peer[0]
	fail := func(reason string, err error) *Verification {
		v.reason, v.err = reason, &CertificateError{Reason: reason, Err: err}
		v.cert = Cert{Presented: true, Error: reason, FingerprintSHA256: certid.FingerprintSHA256(leaf.Raw)}
		// The policy sees no identity from a certificate that did not verify.
		v.input = policy.CertInput{Presented: true, Error: reason}
		return v
	}
	if len(peer) > MaxPeerCertificates {
		return fail(ReasonCertificateUntrusted, fmt.Errorf("the client sent %d certificates; at most %d are accepted", len(peer), MaxPeerCertificates))
	}
	sent := make([]*x509.Certificate, 0, len(peer)-1)
	for _, c := range peer[1:] {
		// crypto/x509 refuses to verify with an intermediate that was not parsed from DER.
		if c != nil && len(c.Raw) > 0 {
			sent = append(sent, c)
		}
	}
	// Only the intermediates the hostname's CAs certify go further: neither crypto/x509 nor
	// classify ever checks a signature with a key the client chose. Which are kept does not depend
	// on the moment, so the window below holds for them.
	rs := h.trust.parsed() // one set of parsed CAs for the whole verification
	intermediates, _ := certifiedIntermediates(rs.certs, leaf, sent)
	// The estimate below depends on the moment (validity), as crypto/x509 does.
	v.always = false
	v.window(leaf, intermediates, rs.certs, now)
	switch work, chains := pathWork(leaf, intermediates, rs.certs, now); {
	case work > maxPathWork:
		return fail(ReasonCertificateUntrusted, fmt.Errorf("the certificates sent would make verifying the chain check signatures costing about %d P-256 checks; at most %d are accepted", work, maxPathWork))
	case chains > maxChains:
		return fail(ReasonCertificateUntrusted, fmt.Errorf("the certificates sent make more than %d chains to the hostname's CAs; at most %d are accepted", maxChains, maxChains))
	}
	chains, reason, err := h.trust.verify(rs, leaf, intermediates, now)
	if err != nil {
		v := fail(reason, err)
		if reason == ReasonCertificateRevoked {
			// The chain verified, so the certificate is the CA's: the decision log names it,
			// for an auditor to match the revocation. The policy and the origin still see no
			// identity of a certificate that did not verify.
			v.cert.SerialNumber, v.cert.Subject, v.cert.Issuer, v.cert.NotAfter = certid.SerialNumber(leaf.SerialNumber), leaf.Subject.String(), leaf.Issuer.String(), leaf.NotAfter
		}
		return v
	}
	v.verified, v.reason, v.chain = true, ReasonCertificateVerified, chains[0]
	v.input = policy.NewCertInput(leaf)
	v.input.Verified = true
	v.cert = Cert{
		Presented:         true,
		Verified:          true,
		FingerprintSHA256: v.input.FingerprintSHA256,
		SerialNumber:      v.input.SerialNumber,
		Subject:           leaf.Subject.String(),
		Issuer:            leaf.Issuer.String(),
		NotAfter:          leaf.NotAfter,
	}
	return v
}

// window sets the moments around now during which every certificate involved keeps the validity
// it has at now (crypto/x509: valid from NotBefore to NotAfter, both included). Within them,
// verification, which depends on the moment only through these validities, gives the same
// outcome.
func (v *Verification) window(leaf *x509.Certificate, intermediates, roots []*x509.Certificate, now time.Time) {
	lower := func(t time.Time) { // a change at t, at or before now
		if !v.hasFrom || t.After(v.from) {
			v.hasFrom, v.from = true, t
		}
	}
	upper := func(t time.Time) { // a change at t, after now
		if !v.hasUntil || t.Before(v.until) {
			v.hasUntil, v.until = true, t
		}
	}
	add := func(c *x509.Certificate) {
		// Valid from NotBefore on.
		if now.Before(c.NotBefore) {
			upper(c.NotBefore)
		} else {
			lower(c.NotBefore)
		}
		// Invalid from NotAfter + 1ns on.
		end := c.NotAfter.Add(time.Nanosecond)
		if now.Before(end) {
			upper(end)
		} else {
			lower(end)
		}
	}
	add(leaf)
	for _, c := range intermediates {
		add(c)
	}
	for _, c := range roots {
		add(c)
	}
}

// intermediateBudget bounds what the failed signature checks certifiedIntermediates makes for one
// verification may cost, in P-256 checks (keyCost): 9 intermediates (MaxPeerCertificates) each
// naming a subject that 3 of the hostname's P-256 CAs share (MaxCAsPerSubject) take 27; with
// costlier CA keys, fewer. Successful checks are not counted: there is at most one per kept
// intermediate, and each needs a signature by a key a trusted CA certified.
const intermediateBudget = 48

// maxKeptPerSubject bounds the kept intermediates of one subject name, as MaxCAsPerSubject bounds
// the hostname's CAs: crypto/x509 checks a certificate naming that subject as its issuer against
// each of them, so a tenant certifying many decoys of one name could make every client's junk
// leaf cost that many checks.
const maxKeptPerSubject = 3

// keyCost is what checking a signature with key pub costs, in P-256 checks (measured here: P-256
// 103 µs, P-384 861 µs, P-521 3.6 ms; RSA-2048 55 µs, RSA-4096 555 µs, RSA-8192 2.1 ms, about 2.5
// times that with an exponent of 2^31-1).
func keyCost(pub any) int {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return 1
		case elliptic.P384():
			return 9
		}
		return 40
	case ed25519.PublicKey:
		return 1
	case *rsa.PublicKey:
		var c int
		switch bits := k.N.BitLen(); {
		case bits <= 2048:
			c = 1
		case bits <= 3072:
			c = 3
		case bits <= 4096:
			c = 6
		default:
			// Grows with the square of the size, without bound: Go checks signatures with
			// keys of any size, and a tenant can certify one it holds no private key for.
			n := (bits + 2047) / 2048
			c = min(n*n*4/3, 1<<20)
		}
		if k.E != CARSAExponent {
			c *= 3
		}
		return c
	}
	return 40
}

// certifiedIntermediates returns those of sent (the intermediates a client sent with leaf, in its
// order) that the hostname's CAs (roots) certify, in the order sent, and the number of signature
// checks made. Only intermediates on a path of names from leaf's issuer are candidates (crypto/x509 looks
// at no others); copies of a certificate (the same bytes), and self-issued certificates with the
// subject and key of a hostname's CA or of an earlier candidate (the same CA again, with another
// SAN, say), are dropped without a check: they add no chain, only paths for crypto/x509 to
// explore. Two certificates of one CA from different issuers, or renewed by one issuer, both
// stay: each may be the one that verifies.
//
// A single candidate, the usual chain, is kept when one of the roots may have issued it by their
// names, and its signature is left to crypto/x509, which checks it once; unless its key costs more
// than a P-256 one to check with (crypto/x509 would check the leaf with it, and classify again):
// then it is kept only when one of the roots signed it. Of two or more, one is kept when one of
// the roots, or an intermediate already kept, signed it (child.CheckSignatureFrom(parent)),
// trying as parents only certificates whose subject is the child's issuer name and, when both
// have one, whose subject key id is the child's authority key id; rounds over the rest repeat
// until one keeps nothing new. Each (child, parent) pair is checked once; a failed check costs
// keyCost of the parent's key, and once the failures have cost intermediateBudget the checks stop
// (the last may go past it, so that a costly certified parent is still checked once): the
// intermediates not kept by then are dropped. At most maxKeptPerSubject of one subject are kept,
// the first certified in the order sent. Validity is not looked at (classify needs the expired
// intermediates of a chain), so the outcome does not depend on the moment.
//
// A key the client chose is thus never used to check a signature of another intermediate unless a
// trusted CA certified it (9 self-signed intermediates of one name and key but different SANs
// made crypto/x509 check about 100 signatures, 264 ms of CPU with P-521 keys, for every
// connection), and what the client's certificates can make the edge check is bounded by the
// budget. What a tenant holding its CA's key can make it check is not bounded by this filter: the
// intermediates it certifies are kept; pathWork bounds what crypto/x509 would then explore.
//
// roots are the hostname's CAs, parsed (trust.parsed), which the caller uses for the whole
// verification.
func certifiedIntermediates(roots []*x509.Certificate, leaf *x509.Certificate, sent []*x509.Certificate) (kept []*x509.Certificate, checks int) {
	if len(sent) == 0 {
		return nil, 0
	}
	candidates := make([]*x509.Certificate, 0, len(sent))
	for _, c := range sent {
		selfIssued := bytes.Equal(c.RawSubject, c.RawIssuer)
		again := func(o *x509.Certificate) bool { return o.Equal(c) || selfIssued && sameCA(o, c) }
		if slices.ContainsFunc(candidates, again) || slices.ContainsFunc(roots, again) {
			continue
		}
		if keyCost(c.PublicKey) > intermediateBudget {
			// No CA uses such a key (RSA above 12,288 bits, or above 8192 with another exponent
			// than 65537): kept, it would be checked with by crypto/x509 and by the
			// classification of a failure, which no bound prices (review of a83f9c8).
			continue
		}
		candidates = append(candidates, c)
	}
	// Only those on a path of names from the leaf's issuer.
	onPath := make([]bool, len(candidates))
	names := [][]byte{leaf.RawIssuer}
	for grew := true; grew; {
		grew = false
		for i, c := range candidates {
			if !onPath[i] && slices.ContainsFunc(names, func(n []byte) bool { return bytes.Equal(n, c.RawSubject) }) {
				onPath[i], grew = true, true
				names = append(names, c.RawIssuer)
			}
		}
	}
	reachable := candidates[:0]
	for i, c := range candidates {
		if onPath[i] {
			reachable = append(reachable, c)
		}
	}
	candidates = reachable
	if len(candidates) == 1 && keyCost(candidates[0].PublicKey) <= 1 {
		// One intermediate with a cheap key, the usual chain: crypto/x509 checks its signature
		// once against its issuer among the hostname's CAs (at most MaxCAsPerSubject of one name)
		// and builds no path among the client's certificates, so there is nothing to amplify;
		// checking it here as well would double what the most common chain costs.
		for _, r := range roots {
			if maySign(r) && issuedBy(candidates[0], r) {
				return candidates, 0
			}
		}
		return nil, 0
	}
	// parents: the certificates whose keys are certified, roots first, then the intermediates
	// in the order kept; tried[i]: candidates[i] was checked against parents[:tried[i]].
	parents := make([]*x509.Certificate, 0, len(roots)+len(candidates))
	for _, r := range roots {
		if maySign(r) {
			parents = append(parents, r)
		}
	}
	isKept := make([]bool, len(candidates))
	tried := make([]int, len(candidates))
	spent := 0
	keptOf := func(c *x509.Certificate) (n int) {
		for i, o := range candidates {
			if isKept[i] && bytes.Equal(o.RawSubject, c.RawSubject) {
				n++
			}
		}
		return n
	}
rounds:
	for progress := true; progress; {
		progress = false
		for i, c := range candidates {
			for !isKept[i] && tried[i] < len(parents) && keptOf(c) < maxKeptPerSubject {
				p := parents[tried[i]]
				if !issuedBy(c, p) || keyCost(p.PublicKey) > intermediateBudget {
					// A parent whose key costs more than the whole budget (a hostname's CA
					// would not: CheckCAKey) is never checked.
					tried[i]++
					continue
				}
				if spent >= intermediateBudget {
					break rounds
				}
				cost := keyCost(p.PublicKey)
				tried[i]++
				checks++
				if c.CheckSignatureFrom(p) != nil {
					spent += cost
					continue
				}
				isKept[i], progress = true, true
				if maySign(c) {
					parents = append(parents, c)
				}
			}
		}
	}
	for i, c := range candidates {
		if isKept[i] {
			kept = append(kept, c)
		}
	}
	return kept, checks
}

// maxPathWork bounds pathWork: 3 certificates of one name with P-521 keys above the leaf (120)
// and their CA, or a chain of 9 P-384 intermediates; a tenant holding its CA's key cannot make
// crypto/x509 explore more than that (about 20 ms of CPU here).
const maxPathWork = 192

// maxChains bounds the chains pathWork finds: crypto/x509 checks the name constraints and policies
// of every chain it builds, up to 250,000 comparisons each, so a tenant's copies multiplying the
// chains multiply that too (18 chains through a CA with 4,000 permitted subtrees, for a leaf with
// 6,000 names, cost a review's edge 70-97 ms). Renewals and rollovers give 2 or 3; a bridge a few.
const maxChains = 8

// pathWork estimates what crypto/x509's path building will cost with these certificates at the
// moment now, in P-256 checks (keyCost), and how many chains it will find: from the leaf, each
// certificate's signature is checked against every kept intermediate and CA whose subject is its
// issuer name and that is not already on the path (crypto/x509's alreadyInChain, quirk included),
// once for each path reaching it, with no limit of depth but the work's, and a path reaching a CA
// is a chain. Where a single certificate has the
// issuer's name, the path goes on through it unchecked (an estimate above crypto/x509's, never
// below). Where several have it (copies, renewals, rollovers), the path goes on through those that
// crypto/x509 would go on through: each is checked here, once per certificate and key (a signature
// may verify under more than one ECDSA key, and a tenant can certify the second), and must be
// within its validity at now. Intermediates a tenant certified in trees of copies (3 levels of 3
// P-521 certificates cost a review's edge 0.17-0.21 s for each client sending them) reach far more
// than a chain does. It stops once either bound is passed.
func pathWork(leaf *x509.Certificate, kept, roots []*x509.Certificate, now time.Time) (work, chains int) {
	type node struct {
		c    *x509.Certificate
		path []*x509.Certificate // the leaf and the certificates above it so far, c last
	}
	type pair struct {
		child *x509.Certificate
		key   string
	}
	var verified map[pair]bool // only where several candidates share a name: not for a plain chain
	goesOn := func(child, parent *x509.Certificate) bool {
		// A parent that may not sign fails crypto/x509's check before any key is used: it must
		// not stand in the cache for the CAs with its key (a non-CA copy of the leaf's issuer,
		// sent first, hid the tree above the real ones; review of e4e072c).
		if now.Before(parent.NotBefore) || now.After(parent.NotAfter) || !maySign(parent) {
			return false
		}
		k := pair{child, string(parent.RawSubjectPublicKeyInfo)}
		ok, seen := verified[k]
		if !seen {
			ok = child.CheckSignatureFrom(parent) == nil
			if verified == nil {
				verified = make(map[pair]bool)
			}
			verified[k] = ok
		}
		return ok
	}
	isRoot := func(c *x509.Certificate) bool { return slices.Contains(roots, c) }
	frontier := []node{{c: leaf, path: []*x509.Certificate{leaf}}}
	// No depth limit: crypto/x509 has none but its check count, and every step adds to the work,
	// which ends the walk once past maxPathWork.
	for len(frontier) > 0 {
		var next []node
		for _, n := range frontier {
			var candidates []*x509.Certificate
			for _, pool := range [2][]*x509.Certificate{roots, kept} {
				for _, p := range pool {
					if bytes.Equal(p.RawSubject, n.c.RawIssuer) && !alreadyInChain(p, n.path) {
						candidates = append(candidates, p)
					}
				}
			}
			for _, p := range candidates {
				if work += keyCost(p.PublicKey); work > maxPathWork {
					return work, chains // before goesOn checks it
				}
				if len(candidates) > 1 && !goesOn(n.c, p) {
					continue
				}
				if isRoot(p) {
					chains++
				} else {
					next = append(next, node{c: p, path: append(slices.Clip(n.path), p)})
				}
			}
			if work > maxPathWork || chains > maxChains {
				return work, chains
			}
		}
		frontier = next
	}
	return work, chains
}

// alreadyInChain is crypto/x509's test (Go 1.26, crypto/x509/verify.go) of a candidate parent
// against the certificates of a path, leaf first, copied with its quirk: the first certificate
// with the candidate's subject and key decides when exactly one of the two has a subject
// alternative name extension (not in the chain), and when neither has one or both have the same
// (in the chain); certificates with other names go on to the next. An estimate that took any
// match for "in the chain" skipped parents crypto/x509 follows round a loop (a tenant's copies
// with and without SANs: about 50 checks against 6 counted; review of db0f6fd).
func alreadyInChain(candidate *x509.Certificate, path []*x509.Certificate) bool {
	candidateSAN := sanExtension(candidate)
	for _, c := range path {
		if !sameCA(c, candidate) {
			continue
		}
		certSAN := sanExtension(c)
		switch {
		case candidateSAN == nil && certSAN == nil:
			return true
		case candidateSAN == nil || certSAN == nil:
			return false
		case bytes.Equal(candidateSAN, certSAN):
			return true
		}
	}
	return false
}

// sanExtension returns the value of c's subject alternative name extension, nil without one.
func sanExtension(c *x509.Certificate) []byte {
	for _, e := range c.Extensions {
		if e.Id.Equal(oidSubjectAltName) {
			return e.Value
		}
	}
	return nil
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// sameCA reports whether a and b are certificates of one CA: the same subject and key.
func sameCA(a, b *x509.Certificate) bool {
	return bytes.Equal(a.RawSubject, b.RawSubject) && bytes.Equal(a.RawSubjectPublicKeyInfo, b.RawSubjectPublicKeyInfo)
}

// issuedBy reports whether parent may have issued child by their names: parent's subject is
// child's issuer, and, when both are present, parent's subject key id is child's authority key
// id.
func issuedBy(child, parent *x509.Certificate) bool {
	return bytes.Equal(child.RawIssuer, parent.RawSubject) &&
		(len(child.AuthorityKeyId) == 0 || len(parent.SubjectKeyId) == 0 || bytes.Equal(child.AuthorityKeyId, parent.SubjectKeyId))
}

// maySign reports whether c may sign certificates as crypto/x509's CheckSignatureFrom requires of
// a parent before it checks a signature (a CA by its basic constraints, keyCertSign when it has a
// key usage, a known key algorithm): a certificate that may not is never tried as a parent.
func maySign(c *x509.Certificate) bool {
	if c.Version == 3 && !c.BasicConstraintsValid || c.BasicConstraintsValid && !c.IsCA {
		return false
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return false
	}
	return c.PublicKeyAlgorithm != x509.UnknownPublicKeyAlgorithm
}

// verify verifies leaf for client authentication at now against rs (t's CAs, parsed), with the
// given intermediates (those certifiedIntermediates kept), then against t's revocations. On
// failure it returns the reason and the error.
func (t *trust) verify(rs *rootSet, leaf *x509.Certificate, intermediates []*x509.Certificate, now time.Time) ([][]*x509.Certificate, string, error) {
	pool := x509.NewCertPool()
	for _, c := range intermediates {
		pool.AddCert(c)
	}
	opts := x509.VerifyOptions{
		Roots:         rs.rootPool(),
		Intermediates: pool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return nil, classify(rs.certs, leaf, intermediates, opts, err), err
	}
	if err := checkKeyUsage(leaf); err != nil {
		return nil, ReasonCertificateWrongKeyUsage, err
	}
	if err := t.revocation(chains); err != nil {
		return chains, ReasonCertificateRevoked, err
	}
	return chains, "", nil
}

// checkKeyUsage returns an error when leaf has a keyUsage extension that allows neither
// digitalSignature nor keyAgreement, the key usages with which a key can authenticate a TLS
// client. crypto/x509 checks only the extended key usage. A leaf without the extension (KeyUsage
// 0) is not restricted.
func checkKeyUsage(leaf *x509.Certificate) error {
	if leaf.KeyUsage == 0 || leaf.KeyUsage&(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyAgreement) != 0 {
		return nil
	}
	return fmt.Errorf("the certificate's key usage (%s) allows neither digitalSignature nor keyAgreement, so its key may not authenticate a TLS client", keyUsageNames(leaf.KeyUsage))
}

// keyUsageNames lists the bits of ku by their RFC 5280 names, in bit order, e.g. "contentCommitment, cRLSign".
func keyUsageNames(ku x509.KeyUsage) string {
	names := []string{"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment", "keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"}
	var out []string
	for i, name := range names {
		if ku&(1<<i) != 0 {
			out = append(out, name)
		}
	}
	if ku>>len(names) != 0 {
		out = append(out, fmt.Sprintf("unknown bits %#x", uint(ku>>len(names))<<len(names)))
	}
	return strings.Join(out, ", ")
}

// maxSignatureChecks bounds the signature checks classify makes, and so the work a client can
// cause with certificates of its making.
const maxSignatureChecks = 16

// classify turns a verification failure at opts.CurrentTime against roots (the hostname's CAs,
// parsed) into a reason. crypto/x509 does not tell a chain that fails because a certificate of it
// is out of its validity from no chain at all (it reports an unknown authority), and it checks the
// leaf's validity before anything else. So
// when a certificate involved is out of its validity now, classify looks for a chain from the leaf
// to one of the roots by names and signatures alone, ignoring validity (and key usage): when one
// exists and a certificate of it has expired, the reason is certificate_expired; when one is not
// valid yet, certificate_not_yet_valid. Otherwise the certificate is untrusted.
func classify(roots []*x509.Certificate, leaf *x509.Certificate, intermediates []*x509.Certificate, opts x509.VerifyOptions, err error) string {
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage {
		// Chains exist at now; none allows client authentication.
		return ReasonCertificateWrongKeyUsage
	}
	now := opts.CurrentTime
	outside := func(c *x509.Certificate) bool { return now.Before(c.NotBefore) || now.After(c.NotAfter) }
	if !outside(leaf) && !slices.ContainsFunc(intermediates, outside) && !slices.ContainsFunc(roots, outside) {
		return ReasonCertificateUntrusted
	}
	path := pathIgnoringTime(roots, leaf, intermediates)
	switch {
	case path == nil:
		return ReasonCertificateUntrusted
	case slices.ContainsFunc(path, func(c *x509.Certificate) bool { return now.After(c.NotAfter) }):
		return ReasonCertificateExpired
	case slices.ContainsFunc(path, func(c *x509.Certificate) bool { return now.Before(c.NotBefore) }):
		return ReasonCertificateNotYetValid
	}
	return ReasonCertificateUntrusted // a chain valid now failed for another reason
}

// pathIgnoringTime returns a chain from leaf through intermediates to one of roots in which
// each certificate names the next as its issuer and is signed by it, whatever their validity; or
// nil. The search is depth first, in the order the certificates were given, and makes at most
// maxSignatureChecks signature checks.
func pathIgnoringTime(roots []*x509.Certificate, leaf *x509.Certificate, intermediates []*x509.Certificate) []*x509.Certificate {
	budget := maxSignatureChecks
	signs := func(child, parent *x509.Certificate) bool {
		if budget == 0 || !bytes.Equal(child.RawIssuer, parent.RawSubject) {
			return false
		}
		budget--
		return child.CheckSignatureFrom(parent) == nil
	}
	var search func(path []*x509.Certificate) []*x509.Certificate
	search = func(path []*x509.Certificate) []*x509.Certificate {
		c := path[len(path)-1]
		if slices.ContainsFunc(roots, c.Equal) {
			return path
		}
		for _, root := range roots {
			if signs(c, root) {
				return append(path, root)
			}
		}
		if len(path) >= MaxPeerCertificates {
			return nil
		}
		for _, in := range intermediates {
			if !slices.ContainsFunc(path, in.Equal) && signs(c, in) {
				if p := search(append(path[:len(path):len(path)], in)); p != nil {
					return p
				}
			}
		}
		return nil
	}
	return search([]*x509.Certificate{leaf})
}

// revocation returns an error when a certificate of one of the verified chains is revoked.
//
// A serial number is unique only among the certificates one CA issued, and a revocation names only
// a CA (any certificate of it: same subject and key) and a serial: it cannot say whether it means
// a leaf or a CA below the one it is filed under. A tenant can file only under the CAs it uploaded
// (often the root alone, the client sending the intermediates), whether it revokes a device or a
// compromised issuing CA. So every certificate of the chain, the leaf and each CA, is checked
// against the serials revoked under every CA above it, failing closed: the CAs of the certificates
// after it in the chain and, through the hostname's CAs, the CAs above those (for the chain's last
// certificate, the hostname's CA that signed it, and above; for any other CA of the chain, the
// hostname's CAs that signed any certificate of that CA, and above). Without the hostname's CAs
// above the chain, a client could leave out an intermediate the hostname also trusts, end its
// chain there, and slip past a revocation filed under the root.
//
// The price: a leaf's serial revoked under the root also revokes a CA between them that has the
// same serial (CAs that number their certificates from 1), and with it every leaf of that CA. The
// error names the certificate, so it shows at once; file such a leaf's revocation under its
// issuing CA (upload it) or by fingerprint instead.
//
// No certificate is checked against its own CA's revocations: a CA's own serial under itself (a
// self-signed root's, or an intermediate's revoked under the intermediate for one of its leaves)
// does not revoke it.
//
// A fingerprint names one certificate exactly: revoked under any of the hostname's CAs, it is
// revoked wherever it appears in a chain.
func (t *trust) revocation(chains [][]*x509.Certificate) error {
	if len(t.serials) == 0 && len(t.fingerprints) == 0 {
		return nil
	}
	for _, chain := range chains {
		for i, c := range chain {
			if caID, ok := t.fingerprints[sha256.Sum256(c.Raw)]; ok {
				return fmt.Errorf("certificate %d of the chain (%q, fingerprint %s) is revoked by fingerprint under CA %q", i, c.Subject.CommonName, certid.FingerprintSHA256(c.Raw), caID)
			}
		}
		if len(t.serials) == 0 {
			continue
		}
		keys := make([]caKey, len(chain))
		for i, c := range chain {
			keys[i] = keyOf(c)
		}
		// From the chain's last certificate to its leaf, above holds the CAs above chain[i].
		above := t.issuers[string(chain[len(chain)-1].Raw)]
		for i := len(chain) - 1; i >= 0; i-- {
			if i < len(chain)-1 {
				above = append(append(above[:len(above):len(above)], keys[i+1]), t.above[keys[i+1]]...)
			}
			serial := certid.SerialNumber(chain[i].SerialNumber)
			for _, k := range above {
				if k == keys[i] {
					continue
				}
				if caID, ok := t.serials[k][serial]; ok {
					return fmt.Errorf("certificate %d of the chain (%q, serial number %s, issuer %q) is revoked by serial number under CA %q", i, chain[i].Subject.CommonName, serial, chain[i].Issuer.CommonName, caID)
				}
			}
		}
	}
	return nil
}
