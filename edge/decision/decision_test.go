package decision

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/policy"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

type decideCase struct {
	name     string
	cfg      []func(*configv1.HostnameConfig)
	peer     []*x509.Certificate
	req      *Request
	at       time.Duration // added to now
	verdict  Verdict
	reason   string
	rule     string
	verified bool
	chainLen int
}

// storedRule is a rule priced within the limits before matches() was priced by what Go's regexp
// costs, and over them since.
const storedRule = `cert.subject.organizational_unit.exists(u, u.matches('dev(ice|elopment)s?$'))`

// TestStoredPolicyPrepares: storedRule is refused by policy.Compile (the control plane's check of
// a new policy) and prepared by Prepare (the edge and the audit, from the history).
func TestStoredPolicyPrepares(t *testing.T) {
	if _, err := policy.Compile([]policy.Rule{{Name: "devices-ou", Action: policy.Allow, Expression: storedRule}}); err == nil || !strings.Contains(err.Error(), "too expensive") {
		t.Fatalf("policy.Compile: %v; want it too expensive (else the stored-policy cases test nothing)", err)
	}
	p := getPKI(t)
	preparedWith(t, p, fns(withPolicy(rule("devices-ou", allow, storedRule))))
}

func decideCases(p *testPKI) []decideCase {
	healthRules := withPolicy(
		rule("health", allow, `!cert.presented && request.path == "/healthz"`),
		rule("verified", allow, `cert.verified`),
	)
	ouRules := withPolicy(
		rule("ops-admin", allow, `"ops" in cert.subject.organizational_unit && request.path.startsWith("/admin/")`),
		rule("no-admin", deny, `request.path.startsWith("/admin/")`),
		rule("blocked", deny, `cert.dns_names.exists(n, n.endsWith(".blocked.acme.example"))`),
		rule("devices", allow, `"devices" in cert.subject.organizational_unit`),
	)
	storedRules := withPolicy(rule("devices-ou", allow, storedRule))
	return []decideCase{
		{name: "ok/valid", peer: chain(p.leaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/root sent along", peer: chain(p.leaf, p.root), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/through intermediate sent by client", peer: chain(p.interLeaf, p.inter), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 3},
		{name: "ok/second CA", cfg: fns(withCA("other", p.other)), peer: chain(p.otherLeaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/mode off without certificate", cfg: fns(withMode(configv1.MtlsMode_MTLS_MODE_OFF)), verdict: Allow, reason: ReasonMTLSOff},
		{name: "ok/mode off ignores policy", cfg: fns(withMode(configv1.MtlsMode_MTLS_MODE_OFF), withPolicy(rule("never", deny, "true"))), peer: chain(p.forged), verdict: Allow, reason: ReasonMTLSOff},
		{name: "fail/none", verdict: Deny, reason: ReasonCertificateMissing},
		{name: "fail/nil leaf", peer: []*x509.Certificate{nil, p.inter.Cert}, verdict: Deny, reason: ReasonCertificateMissing},
		{name: "fail/another CA", peer: chain(p.otherLeaf), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/another CA expired", peer: chain(p.otherExpired), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/self-signed", peer: chain(p.forged), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/CA certificate of another CA", peer: []*x509.Certificate{p.other.Cert}, verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/expired", peer: chain(p.expired), verdict: Deny, reason: ReasonCertificateExpired},
		{name: "fail/expired later", peer: chain(p.leaf), at: 40 * 24 * time.Hour, verdict: Deny, reason: ReasonCertificateExpired},
		{name: "fail/not yet valid", peer: chain(p.notYet), verdict: Deny, reason: ReasonCertificateNotYetValid},
		{name: "fail/not yet valid earlier", peer: chain(p.leaf), at: -2 * time.Hour, verdict: Deny, reason: ReasonCertificateNotYetValid},
		{name: "fail/expired intermediate", peer: chain(p.expiredInterLeaf, p.expiredInter), verdict: Deny, reason: ReasonCertificateExpired},
		{name: "fail/wrong key usage", peer: chain(p.serverLeaf), verdict: Deny, reason: ReasonCertificateWrongKeyUsage},
		{name: "fail/key usage neither digitalSignature nor keyAgreement", peer: chain(p.badKeyUsage), verdict: Deny, reason: ReasonCertificateWrongKeyUsage},
		{name: "fail/key usage neither digitalSignature nor keyAgreement, the policy sees the reason", cfg: fns(withPolicy(rule("ku", allow, `!cert.verified && cert.error == "certificate_wrong_key_usage" && cert.subject.common_name == ""`))), peer: chain(p.badKeyUsage), verdict: Allow, reason: ReasonRuleAllow, rule: "ku"},
		{name: "ok/key usage keyAgreement", peer: chain(p.keyAgreement), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/no key usage extension", peer: chain(p.noKeyUsage), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "fail/intermediate missing", peer: chain(p.interLeaf), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/wrong intermediate", peer: chain(p.interLeaf, p.other), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/too many certificates", peer: chain(p.interLeaf, p.inter, p.inter, p.inter, p.inter, p.inter, p.inter, p.inter, p.inter, p.inter, p.inter), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/revoked by serial", cfg: fns(revokeSerial("root", p.leaf.Cert)), peer: chain(p.leaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/revoked by serial through intermediate", cfg: fns(revokeSerial("root", p.interLeaf.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/revoked by fingerprint", cfg: fns(revokeFingerprint("root", p.leaf.Cert)), peer: chain(p.leaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/intermediate revoked by fingerprint", cfg: fns(revokeFingerprint("root", p.inter.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/root revoked by fingerprint", cfg: fns(revokeFingerprint("root", p.root.Cert)), peer: chain(p.leaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/serial revoked under another CA id does not apply", cfg: fns(withCA("other", p.other), revokeSerial("other", p.leaf.Cert)), peer: chain(p.leaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "fail/fingerprint revoked under another trusted CA id applies", cfg: fns(withCA("other", p.other), revokeFingerprint("other", p.leaf.Cert)), peer: chain(p.leaf), verdict: Deny, reason: ReasonCertificateRevoked},
		// A hostname trusting the root and its intermediate: leaving the intermediate out (so that
		// the chain ends at the trusted intermediate) must not escape revocations filed under the root.
		{name: "fail/serial revoked under the root, intermediate also trusted and not sent", cfg: fns(withCA("inter", p.inter), revokeSerial("root", p.interLeaf.Cert)), peer: chain(p.interLeaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/serial revoked under the root, intermediate also trusted and sent", cfg: fns(withCA("inter", p.inter), revokeSerial("root", p.interLeaf.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/intermediate revoked under the root, intermediate also trusted and not sent", cfg: fns(withCA("inter", p.inter), revokeFingerprint("root", p.inter.Cert)), peer: chain(p.interLeaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/revocation of an untrusted CA ignored", cfg: fns(revokeSerial("other", p.leaf.Cert)), peer: chain(p.leaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		// CRL semantics: a serial revoked under a CA revokes the certificate of the chain with that
		// serial that the CA's hierarchy issued, an intermediate as well as the leaf.
		{name: "fail/intermediate revoked by serial under the root", cfg: fns(revokeSerial("root", p.inter.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/intermediate revoked by serial under the root, intermediate also trusted and not sent", cfg: fns(withCA("inter", p.inter), revokeSerial("root", p.inter.Cert)), peer: chain(p.interLeaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/intermediate revoked by serial under the root, intermediate also trusted and sent", cfg: fns(withCA("inter", p.inter), revokeSerial("root", p.inter.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/intermediate revoked by serial under the root, intermediate listed first", cfg: fns(func(c *configv1.HostnameConfig) { c.CertificateAuthorities = nil }, withCA("inter", p.inter), withCA("root", p.root), revokeSerial("root", p.inter.Cert)), peer: chain(p.interLeaf), verdict: Deny, reason: ReasonCertificateRevoked},
		// The intermediate's serial revoked under the intermediate is about a certificate the
		// intermediate issued: it revokes the leaf with that serial, not the intermediate itself.
		{name: "ok/serial of the intermediate revoked under the intermediate revokes neither it nor its other leaves", cfg: fns(withCA("inter", p.inter), revokeSerial("inter", p.inter.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/serial of the intermediate revoked under the intermediate, chain ending at it", cfg: fns(withCA("inter", p.inter), revokeSerial("inter", p.inter.Cert)), peer: chain(p.interLeaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "fail/serial of the intermediate revoked under the intermediate revokes its leaf with that serial", cfg: fns(withCA("inter", p.inter), revokeSerial("inter", p.inter.Cert)), peer: chain(p.twinLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/serial of the root revoked under the root revokes nothing", cfg: fns(revokeSerial("root", p.root.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 3},
		{name: "ok/serial of the root revoked under the root, root sent along", cfg: fns(revokeSerial("root", p.root.Cert)), peer: chain(p.leaf, p.root), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/serial of the intermediate revoked under another trusted root", cfg: fns(withCA("other", p.other), revokeSerial("other", p.inter.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 3},
		// A CA certificate of the chain is checked only against the serials revoked under its direct
		// issuer (the CA that numbered it); the leaf against those under every CA above it, as a
		// tenant may file a leaf's revocation under the only CA it uploaded, the root. So a leaf
		// whose serial equals its issuing CA's, revoked under a root two levels up, revokes that
		// leaf and not its issuing CA (serials are unique only per issuer; CAs often number from 1).
		{name: "fail/leaf with its issuing CA's serial, revoked under the root two levels up", cfg: fns(revokeSerial("root", p.deepTwin.Cert)), peer: chain(p.deepTwin, p.deepInter, p.policyCA), verdict: Deny, reason: ReasonCertificateRevoked},
		// A serial under the root cannot say whether it means deepTwin or deepInter (equal
		// serials): both are revoked, failing closed, with every leaf of deepInter.
		{name: "fail/another leaf of that issuing CA, revocation under the root two levels up, which revokes the CA", cfg: fns(revokeSerial("root", p.deepTwin.Cert)), peer: chain(p.deepLeaf, p.deepInter, p.policyCA), verdict: Deny, reason: ReasonCertificateRevoked},
		// A compromised issuing CA two levels below the only uploaded CA is revoked by its serial
		// filed there.
		{name: "fail/issuing CA revoked by serial under the root two levels up", cfg: fns(revokeSerial("root", p.deepInter.Cert)), peer: chain(p.deepLeaf, p.deepInter, p.policyCA), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/leaf with its issuing CA's serial, revoked under the root, middle CA also trusted", cfg: fns(withCA("policy", p.policyCA), revokeSerial("root", p.deepTwin.Cert)), peer: chain(p.deepTwin, p.deepInter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/another leaf of that issuing CA, revocation under the root, middle CA also trusted, which revokes the CA", cfg: fns(withCA("policy", p.policyCA), revokeSerial("root", p.deepTwin.Cert)), peer: chain(p.deepLeaf, p.deepInter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/another leaf of that issuing CA, the same serial filed under the issuing CA, middle CA also trusted", cfg: fns(withCA("policy", p.policyCA), withCA("deep", p.deepInter), revokeSerial("deep", p.deepTwin.Cert)), peer: chain(p.deepLeaf, p.deepInter), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "fail/issuing CA revoked by serial under its direct issuer, two levels down", cfg: fns(withCA("policy", p.policyCA), revokeSerial("policy", p.deepInter.Cert)), peer: chain(p.deepLeaf, p.deepInter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/middle CA revoked by serial under the root, client sends the whole chain", cfg: fns(revokeSerial("root", p.policyCA.Cert)), peer: chain(p.deepLeaf, p.deepInter, p.policyCA), verdict: Deny, reason: ReasonCertificateRevoked},
		// Two levels, the issuing CA issued by the root itself: the same revocation (the issuing
		// CA's serial under the root) is also, by CRL semantics, the revocation of the issuing CA by
		// the root, so it revokes all of its leaves. Nothing in a revocation tells the two apart;
		// file a leaf's revocation under its issuing CA (uploaded) or by fingerprint.
		{name: "fail/leaf with its issuing CA's serial, revoked under the root that issued that CA", cfg: fns(revokeSerial("root", p.twinLeaf.Cert)), peer: chain(p.twinLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/another leaf of that issuing CA, revocation under the root that issued that CA, which revokes the CA", cfg: fns(revokeSerial("root", p.twinLeaf.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/another leaf of that issuing CA, the same serial filed under the issuing CA", cfg: fns(withCA("inter", p.inter), revokeSerial("inter", p.twinLeaf.Cert)), peer: chain(p.interLeaf, p.inter), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "fail/leaf with its issuing CA's serial, filed under the issuing CA", cfg: fns(withCA("inter", p.inter), revokeSerial("inter", p.twinLeaf.Cert)), peer: chain(p.twinLeaf, p.inter), verdict: Deny, reason: ReasonCertificateRevoked},

		// Serial revocations are under a CA (subject and key), whichever of its certificates the
		// chain runs through. A cross-certified issuing CA: its certificate signed by crossR1 expires
		// first, the client sends the one signed by crossR2.
		{name: "fail/cross-certified CA, leaf serial revoked under its expired R1 certificate, client sends its R2 certificate", cfg: crossCfg(p, revokeSerial("inter-r1", p.crossLeaf.Cert)), peer: chain(p.crossLeaf, p.crossInterR2), at: afterCrossExpiry, verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/cross-certified CA, leaf serial revoked under R1, its R1 certificate expired, client sends its R2 certificate", cfg: crossCfg(p, revokeSerial("r1", p.crossLeaf.Cert)), peer: chain(p.crossLeaf, p.crossInterR2), at: afterCrossExpiry, verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/cross-certified CA, leaf serial revoked under R1, client sends its R2 certificate", cfg: crossCfg(p, revokeSerial("r1", p.crossLeaf.Cert)), peer: chain(p.crossLeaf, p.crossInterR2), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/cross-certified CA, client sends its R2 certificate", cfg: crossCfg(p), peer: chain(p.crossLeaf, p.crossInterR2), at: afterCrossExpiry, verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 3},
		{name: "ok/cross-certified CA, serial of its R1 certificate revoked under R1 does not revoke its R2 certificate", cfg: crossCfg(p, revokeSerial("r1", p.crossInterR1.Cert), func(c *configv1.HostnameConfig) { c.CertificateAuthorities = c.CertificateAuthorities[:2] }), peer: chain(p.crossLeaf, p.crossInterR2), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 3},
		{name: "ok/cross-certified CA trusted through both certificates, serial of its expired R1 certificate revoked under R1 does not revoke its R2 certificate", cfg: crossCfg(p, withCA("inter-r2", p.crossInterR2), revokeSerial("r1", p.crossInterR1.Cert)), peer: chain(p.crossLeaf), at: afterCrossExpiry, verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "fail/cross-certified CA trusted through both certificates, serial of its R2 certificate revoked under R2", cfg: crossCfg(p, withCA("inter-r2", p.crossInterR2), revokeSerial("r2", p.crossInterR2.Cert)), peer: chain(p.crossLeaf), at: afterCrossExpiry, verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/cross-certified CA, fingerprint of its R1 certificate does not revoke its R2 certificate", cfg: crossCfg(p, revokeFingerprint("r1", p.crossInterR1.Cert)), peer: chain(p.crossLeaf, p.crossInterR2), at: afterCrossExpiry, verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 3},
		// A root renewed with the same key: revocations filed under the old certificate still apply
		// once it has expired.
		{name: "fail/renewed root, leaf serial revoked under the old root, after the old root expired", cfg: renewedCfg(p, revokeSerial("old", p.renewedLeaf.Cert)), peer: chain(p.renewedLeaf), at: afterCrossExpiry, verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/renewed root, leaf serial revoked under the old root, before the old root expired", cfg: renewedCfg(p, revokeSerial("old", p.renewedLeaf.Cert)), peer: chain(p.renewedLeaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "fail/renewed root, leaf serial revoked under the new root, old root sent along", cfg: renewedCfg(p, revokeSerial("new", p.renewedLeaf.Cert)), peer: chain(p.renewedLeaf, p.renewedOld), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/renewed root, after the old root expired", cfg: renewedCfg(p), peer: chain(p.renewedLeaf), at: afterCrossExpiry, verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/renewed root, fingerprint of the old root does not revoke the new one", cfg: renewedCfg(p, revokeFingerprint("old", p.renewedOld.Cert)), peer: chain(p.renewedLeaf), at: afterCrossExpiry, verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/renewed root, serial of the old root revoked under itself revokes nothing", cfg: renewedCfg(p, revokeSerial("old", p.renewedOld.Cert), revokeSerial("new", p.renewedNew.Cert)), peer: chain(p.renewedLeaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "ok/renewed root, same serial under another CA", cfg: renewedCfg(p, withCA("root", p.root), revokeSerial("root", p.renewedLeaf.Cert)), peer: chain(p.renewedLeaf), at: afterCrossExpiry, verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},
		{name: "fail/revoked by serial with two CAs", cfg: fns(withCA("other", p.other), revokeSerial("root", p.leaf.Cert)), peer: chain(p.leaf), verdict: Deny, reason: ReasonCertificateRevoked},
		{name: "ok/same serial under another CA", cfg: fns(withCA("other", p.other), revokeSerial("root", p.leaf.Cert)), peer: chain(p.otherLeaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},

		// Policies.
		// A policy written when its rules were priced lower (an unanchored regex over a list of
		// the certificate, refused by policy.Compile today: TestStoredPolicyPrepares) keeps its
		// hostname serving, its rules evaluated with run-time cost tracking.
		{name: "ok/stored policy over today's cost limit allows", cfg: fns(storedRules), peer: chain(p.leaf), verdict: Allow, reason: ReasonRuleAllow, rule: "devices-ou", verified: true, chainLen: 2},
		{name: "fail/stored policy over today's cost limit, no rule matches", cfg: fns(storedRules), peer: chain(p.opsLeaf), verdict: Deny, reason: ReasonNoRuleMatched, verified: true, chainLen: 2},
		{name: "ok/policy allows by OU", cfg: fns(ouRules), peer: chain(p.opsLeaf), req: get("/admin/users"), verdict: Allow, reason: ReasonRuleAllow, rule: "ops-admin", verified: true, chainLen: 2},
		{name: "fail/policy denies by OU", cfg: fns(ouRules), peer: chain(p.leaf), req: get("/admin/users"), verdict: Deny, reason: ReasonRuleDeny, rule: "no-admin", verified: true, chainLen: 2},
		{name: "fail/policy denies by SAN DNS name", cfg: fns(ouRules), peer: chain(p.interLeaf, p.inter), req: get("/api"), verdict: Deny, reason: ReasonRuleDeny, rule: "blocked", verified: true, chainLen: 3},
		{name: "ok/policy allows by OU on other path", cfg: fns(ouRules), peer: chain(p.leaf), req: get("/api"), verdict: Allow, reason: ReasonRuleAllow, rule: "devices", verified: true, chainLen: 2},
		{name: "fail/no rule matched", cfg: fns(ouRules), peer: chain(p.opsLeaf), req: get("/api"), verdict: Deny, reason: ReasonNoRuleMatched, verified: true, chainLen: 2},
		{name: "ok/policy by path and header", cfg: fns(withPolicy(rule("prod", allow, `request.path == "/x" && request.headers[?"x-env"].orValue("") == "prod" && request.host == "pay.example.com" && request.method == "GET"`))), peer: chain(p.leaf), req: get("/x", "X-Env", "prod"), verdict: Allow, reason: ReasonRuleAllow, rule: "prod", verified: true, chainLen: 2},
		{name: "ok/policy sees identity of verified certificate", cfg: fns(withPolicy(rule("id", allow, `cert.subject.common_name == "device-1" && cert.issuer.common_name == "Acme Device CA" && cert.serial_number == "1001" && cert.fingerprint_sha256.size() == 64 && "spiffe://acme/device-1" in cert.uris && cert.not_after > cert.not_before && cert.error == ""`))), peer: chain(p.leaf), verdict: Allow, reason: ReasonRuleAllow, rule: "id", verified: true, chainLen: 2},
		{name: "fail/policy error", cfg: fns(withPolicy(rule("needs-header", allow, `request.headers["x-env"] == "prod"`), rule("all", allow, "true"))), peer: chain(p.leaf), req: get("/"), verdict: Deny, reason: ReasonPolicyError, rule: "needs-header", verified: true, chainLen: 2},
		{name: "fail/policy on unverified certificate", cfg: fns(ouRules), peer: chain(p.expired), req: get("/api"), verdict: Deny, reason: ReasonCertificateExpired},
		{name: "fail/forged OU on self-signed certificate", cfg: fns(withPolicy(rule("ops", allow, `"ops" in cert.subject.organizational_unit || cert.subject.common_name == "mallory"`))), peer: chain(p.forged), req: get("/admin/"), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/forged OU with another CA", cfg: fns(ouRules), peer: chain(p.otherLeaf), req: get("/admin/users"), verdict: Deny, reason: ReasonRuleDeny, rule: "no-admin"},
		{name: "fail/unverified sees no identity", cfg: fns(withPolicy(rule("empty", deny, `cert.presented && !cert.verified && cert.error == "certificate_untrusted" && cert.subject.common_name == "" && cert.fingerprint_sha256 == "" && cert.serial_number == "" && size(cert.subject.organizational_unit) == 0 && cert.not_after == timestamp("0001-01-01T00:00:00Z")`))), peer: chain(p.forged), verdict: Deny, reason: ReasonRuleDeny, rule: "empty"},
		{name: "ok/health rule without certificate", cfg: fns(healthRules), req: get("/healthz"), verdict: Allow, reason: ReasonRuleAllow, rule: "health"},
		{name: "fail/health rule needs no certificate", cfg: fns(healthRules), peer: chain(p.forged), req: get("/healthz"), verdict: Deny, reason: ReasonCertificateUntrusted},
		{name: "fail/health rule other path", cfg: fns(healthRules), req: get("/api"), verdict: Deny, reason: ReasonCertificateMissing},
		{name: "ok/health rule verified", cfg: fns(healthRules), peer: chain(p.leaf), req: get("/api"), verdict: Allow, reason: ReasonRuleAllow, rule: "verified", verified: true, chainLen: 2},
		{name: "ok/nil request", cfg: fns(healthRules), peer: chain(p.leaf), verdict: Allow, reason: ReasonRuleAllow, rule: "verified", verified: true, chainLen: 2},

		// REPORT mode.
		{name: "fail/report mode untrusted", cfg: fns(withMode(configv1.MtlsMode_MTLS_MODE_REPORT)), peer: chain(p.otherLeaf), verdict: ReportDeny, reason: ReasonCertificateUntrusted},
		{name: "fail/report mode missing", cfg: fns(withMode(configv1.MtlsMode_MTLS_MODE_REPORT)), verdict: ReportDeny, reason: ReasonCertificateMissing},
		{name: "fail/report mode rule deny", cfg: fns(withMode(configv1.MtlsMode_MTLS_MODE_REPORT), ouRules), peer: chain(p.leaf), req: get("/admin/"), verdict: ReportDeny, reason: ReasonRuleDeny, rule: "no-admin", verified: true, chainLen: 2},
		{name: "fail/report mode no rule", cfg: fns(withMode(configv1.MtlsMode_MTLS_MODE_REPORT), ouRules), peer: chain(p.opsLeaf), req: get("/"), verdict: ReportDeny, reason: ReasonNoRuleMatched, verified: true, chainLen: 2},
		{name: "ok/report mode allow", cfg: fns(withMode(configv1.MtlsMode_MTLS_MODE_REPORT)), peer: chain(p.leaf), verdict: Allow, reason: ReasonCertificateVerified, verified: true, chainLen: 2},

		// Hostname state.
		{name: "fail/inactive", cfg: fns(func(c *configv1.HostnameConfig) { c.Active = false }), peer: chain(p.leaf), verdict: Deny, reason: ReasonHostnameInactive},
		{name: "fail/inactive in report mode", cfg: fns(func(c *configv1.HostnameConfig) { c.Active = false }, withMode(configv1.MtlsMode_MTLS_MODE_REPORT)), peer: chain(p.leaf), verdict: Deny, reason: ReasonHostnameInactive},
		{name: "fail/no CAs", cfg: fns(func(c *configv1.HostnameConfig) { c.CertificateAuthorities = nil }), peer: chain(p.leaf), verdict: Deny, reason: ReasonCertificateUntrusted},
	}
}

func fns(f ...func(*configv1.HostnameConfig)) []func(*configv1.HostnameConfig) { return f }

// preparedWith prepares hostnameConfig(p) changed by each of fs.
func preparedWith(t *testing.T, p *testPKI, fs []func(*configv1.HostnameConfig)) *Hostname {
	t.Helper()
	cfg := hostnameConfig(p)
	for _, f := range fs {
		f(cfg)
	}
	h, err := Prepare(cfg)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	return h
}

// crossCfg trusts the roots of the cross-certification (ids "r1", "r2") and the issuing CA's
// certificate signed by crossR1 (id "inter-r1"), instead of root, then applies more.
func crossCfg(p *testPKI, more ...func(*configv1.HostnameConfig)) []func(*configv1.HostnameConfig) {
	return append(fns(func(c *configv1.HostnameConfig) { c.CertificateAuthorities = nil },
		withCA("r1", p.crossR1), withCA("r2", p.crossR2), withCA("inter-r1", p.crossInterR1)), more...)
}

// renewedCfg trusts both certificates of the renewed root (ids "old" and "new"), instead of root,
// then applies more.
func renewedCfg(p *testPKI, more ...func(*configv1.HostnameConfig)) []func(*configv1.HostnameConfig) {
	return append(fns(func(c *configv1.HostnameConfig) { c.CertificateAuthorities = nil },
		withCA("old", p.renewedOld), withCA("new", p.renewedNew)), more...)
}

func TestDecide(t *testing.T) {
	p := getPKI(t)
	now := time.Now()
	for _, tc := range decideCases(p) {
		t.Run(tc.name, func(t *testing.T) {
			h := preparedWith(t, p, tc.cfg)
			cfg := h.Config
			at := now.Add(tc.at)
			d := Decide(h, tc.peer, tc.req, at)
			if d.Verdict != tc.verdict || d.Reason != tc.reason || d.Rule != tc.rule {
				t.Fatalf("Decide = %s, %s, %q; want %s, %s, %q", d.Verdict, d.Reason, d.Rule, tc.verdict, tc.reason, tc.rule)
			}
			checkCert(t, d, tc.peer, tc.verified, cfg.GetMode() == configv1.MtlsMode_MTLS_MODE_OFF || !cfg.GetActive())
			if len(d.Chain) != tc.chainLen {
				t.Errorf("len(Chain) = %d, want %d", len(d.Chain), tc.chainLen)
			}
			if d.Chain != nil && (d.Chain[0] != tc.peer[0] || !slices.ContainsFunc(h.trust.roots(), d.Chain[len(d.Chain)-1].Equal)) {
				t.Errorf("Chain does not run from the leaf to one of the hostname's CAs")
			}
			// The per-connection path gives the same decision.
			v := h.VerifyClient(tc.peer, at)
			if d2 := h.DecideVerified(v, tc.req, at); !reflect.DeepEqual(d, d2) {
				t.Errorf("DecideVerified = %+v; Decide = %+v", d2, d)
			}
			// Verify agrees with the certificate part.
			chain, reason, err := h.Verify(tc.peer, at)
			switch {
			case !cfg.GetActive():
			case cfg.GetMode() == configv1.MtlsMode_MTLS_MODE_OFF:
				if chain != nil || reason != ReasonMTLSOff || err != nil {
					t.Errorf("Verify (mode OFF) = %v, %q, %v", chain, reason, err)
				}
			case tc.verified:
				if len(chain) != tc.chainLen || reason != ReasonCertificateVerified || err != nil {
					t.Errorf("Verify = %d certificates, %q, %v", len(chain), reason, err)
				}
			default:
				var ce *CertificateError
				if chain != nil || !errors.As(err, &ce) || ce.Reason != reason || !strings.HasPrefix(reason, "certificate_") {
					t.Errorf("Verify = %v, %q, %v", chain, reason, err)
				}
				if cfg.GetPolicy() == nil && cfg.GetActive() && reason != d.Reason {
					t.Errorf("Verify reason %q, Decide reason %q", reason, d.Reason)
				}
			}
		})
	}
}

func checkCert(t *testing.T, d Decision, peer []*x509.Certificate, verified, none bool) {
	t.Helper()
	c := d.Cert
	switch {
	case none || len(peer) == 0 || peer[0] == nil:
		if c != (Cert{}) {
			t.Errorf("Cert = %+v, want zero", c)
		}
	case verified:
		leaf := peer[0]
		want := Cert{Presented: true, Verified: true, FingerprintSHA256: certid.FingerprintSHA256(leaf.Raw), SerialNumber: certid.SerialNumber(leaf.SerialNumber), Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(), NotAfter: leaf.NotAfter}
		if c != want {
			t.Errorf("Cert = %+v, want %+v", c, want)
		}
	case c.Error == ReasonCertificateRevoked:
		// Its chain verified: the log names the revoked certificate (a new user's review).
		leaf := peer[0]
		want := Cert{Presented: true, Error: c.Error, FingerprintSHA256: certid.FingerprintSHA256(leaf.Raw), SerialNumber: certid.SerialNumber(leaf.SerialNumber), Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(), NotAfter: leaf.NotAfter}
		if c != want {
			t.Errorf("Cert = %+v, want %+v", c, want)
		}
	default:
		want := Cert{Presented: true, Error: c.Error, FingerprintSHA256: certid.FingerprintSHA256(peer[0].Raw)}
		if c != want || !strings.HasPrefix(c.Error, "certificate_") {
			t.Errorf("Cert = %+v, want no identity and an error", c)
		}
	}
}

func TestDecideNilHostname(t *testing.T) {
	p := getPKI(t)
	d := Decide(nil, chain(p.leaf), get("/"), time.Now())
	if d.Verdict != Deny || d.Reason != ReasonHostnameUnknown {
		t.Fatalf("Decide(nil) = %+v", d)
	}
	var h *Hostname
	if d := h.DecideVerified(nil, nil, time.Now()); d.Reason != ReasonHostnameUnknown {
		t.Fatalf("DecideVerified(nil) = %+v", d)
	}
	if _, reason, err := h.Verify(nil, time.Now()); reason != ReasonHostnameUnknown || err == nil {
		t.Fatalf("Verify(nil) = %q, %v", reason, err)
	}
}

func TestPrepareErrors(t *testing.T) {
	p := getPKI(t)
	tests := []struct {
		name string
		cfg  func(*configv1.HostnameConfig)
		want string
	}{
		{"fail/nil", nil, "no hostname configuration"},
		{"fail/hostname not normalised", func(c *configv1.HostnameConfig) { c.Hostname = "Pay.Example.com." }, "not in normal form"},
		{"fail/empty hostname", func(c *configv1.HostnameConfig) { c.Hostname = "" }, "not in normal form"},
		{"fail/mode unspecified", func(c *configv1.HostnameConfig) { c.Mode = configv1.MtlsMode_MTLS_MODE_UNSPECIFIED }, "mode"},
		{"fail/mode unknown", func(c *configv1.HostnameConfig) { c.Mode = 42 }, "mode"},
		{"fail/unparsable CA", func(c *configv1.HostnameConfig) { c.CertificateAuthorities[0].CertificateDer = []byte("garbage") }, `certificate_authorities[0] ("root"): certificate_der does not parse`},
		{"fail/CA without id", func(c *configv1.HostnameConfig) { c.CertificateAuthorities[0].CertificateAuthorityId = "" }, "no certificate_authority_id"},
		{"fail/CA id twice", func(c *configv1.HostnameConfig) { withCA("root", p.other)(c) }, `id "root" is given twice`},
		{"fail/revocation without serial or fingerprint", func(c *configv1.HostnameConfig) {
			c.Revocations = []*configv1.Revocation{{CertificateAuthorityId: "root", RevocationId: "r1"}}
		}, `revocations[0] ("r1"): neither`},
		{"fail/revocation bad serial", func(c *configv1.HostnameConfig) {
			c.Revocations = []*configv1.Revocation{{CertificateAuthorityId: "root", RevocationId: "r1", SerialNumber: "xyz"}}
		}, `revocations[0] ("r1"): serial_number`},
		{"fail/revocation bad fingerprint", func(c *configv1.HostnameConfig) {
			c.Revocations = []*configv1.Revocation{{CertificateAuthorityId: "root", RevocationId: "r1", FingerprintSha256: "abcd"}}
		}, `revocations[0] ("r1"): fingerprint_sha256`},
		{"fail/policy does not compile", withPolicy(rule("bad", allow, `cret.verified`)), `policy "p": rule "bad" (rules[0].expression): line 1, column 1: undeclared reference to 'cret'`},
		{"fail/policy without rules", withPolicy(), `policy "p": policy has no rules`},
		{"fail/rule action unspecified", withPolicy(rule("r", configv1.Action_ACTION_UNSPECIFIED, "true")), `rules[0] ("r"): action ACTION_UNSPECIFIED is not ALLOW or DENY`},
		{"fail/rule action out of range", withPolicy(rule("r", 257, "true")), `action 257 is not ALLOW or DENY`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg *configv1.HostnameConfig
			if tc.cfg != nil {
				cfg = hostnameConfig(p)
				tc.cfg(cfg)
			}
			h, err := Prepare(cfg)
			if err == nil || h != nil {
				t.Fatalf("Prepare = %v, %v; want an error", h, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Prepare error %q does not contain %q", err, tc.want)
			}
			if tc.cfg != nil && !strings.Contains(err.Error(), "pay.example.com") && !strings.Contains(err.Error(), "normal form") {
				t.Errorf("error %q does not name the hostname", err)
			}
		})
	}
	t.Run("ok/same CA twice", func(t *testing.T) {
		cfg := hostnameConfig(p)
		withCA("root", p.root)(cfg)
		if _, err := Prepare(cfg); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ok/accessors", func(t *testing.T) {
		cfg := hostnameConfig(p)
		h, err := Prepare(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if h.Name() != "pay.example.com" || !h.Active() || h.Mode() != configv1.MtlsMode_MTLS_MODE_ENFORCE || h.Config != cfg {
			t.Errorf("accessors: %q %v %v", h.Name(), h.Active(), h.Mode())
		}
		if !h.CertificateAuthority("root").Equal(p.root.Cert) || h.CertificateAuthority("nope") != nil || h.ClientCAs() == nil {
			t.Errorf("CertificateAuthority / ClientCAs")
		}
	})
}

// TestPrepareLinksCAsWithBoundedWork checks that linking a hostname's CAs by signature (for serial
// revocations) makes a bounded number of signature checks, counted by linkCAs, whatever the CAs:
// many CAs sharing a subject name with different keys once made Prepare quadratic (200 CAs: 39,800
// checks, seconds of every edge's configuration updates). Beyond the bound linkCAs fails. Prepare
// now refuses more than MaxCAsPerSubject CAs of one name before it links them.
func TestPrepareLinksCAsWithBoundedWork(t *testing.T) {
	p := getPKI(t)
	selfSigned := sameSubjectCAs(t, 200, true)
	unsigned := sameSubjectCAs(t, 200, false)
	const tooMany = `certificate_authorities: `
	tests := []struct {
		name       string
		cas        []*pkitest.CA
		maxChecks  int    // at most this many signature checks
		wantChecks int    // exactly this many, when not 0
		err        string // linkCAs's error contains it, when not empty
		prepareErr string // Prepare's error contains it, when not empty
	}{
		// ok: Prepare accepts them; fail: Prepare refuses them (more than 3 of one name), whether
		// or not linkCAs, which the test calls alone too, links them within its bound.
		//
		// Each is signed by its own key: one check each.
		{name: "ok/3 self-signed CAs sharing a subject", cas: selfSigned[:3], wantChecks: 3},
		{name: "fail/200 self-signed CAs sharing a subject (linked with 200 checks)", cas: selfSigned, wantChecks: 200, prepareErr: "200 CAs"},
		// None is signed by its own key or another's: every other CA is a candidate. 3 CAs, the
		// most Prepare accepts of one name, take 3 × 3 checks; 16, the most the API gives a
		// hostname, 16 × 16, within the bound.
		{name: "ok/3 CAs sharing a subject, none signed by its own key or another's", cas: unsigned[:3], wantChecks: 9},
		{name: "fail/16 CAs sharing a subject, none signed by its own key or another's (linked with 256 checks)", cas: unsigned[:16], wantChecks: maxLinkSignatureChecks, prepareErr: "16 CAs"},
		{name: "fail/17 CAs sharing a subject, none signed by its own key or another's", cas: unsigned[:17], wantChecks: maxLinkSignatureChecks, err: "takes more than 256 signature checks", prepareErr: "17 CAs"},
		{name: "fail/200 CAs sharing a subject, none signed by its own key or another's", cas: unsigned, wantChecks: maxLinkSignatureChecks, err: "takes more than 256 signature checks", prepareErr: "200 CAs"},
		{name: "fail/200 CAs sharing a subject, the same with the self-signed ones", cas: append(slices.Clip(selfSigned), unsigned...), maxChecks: maxLinkSignatureChecks, err: "takes more than 256 signature checks", prepareErr: "400 CAs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := &trust{}
			var roots []*x509.Certificate
			for _, ca := range tc.cas {
				roots = append(roots, ca.Cert)
			}
			err := tr.linkCAs(roots)
			switch {
			case tc.wantChecks != 0 && tr.linkChecks != tc.wantChecks:
				t.Errorf("linkCAs made %d signature checks, want %d", tr.linkChecks, tc.wantChecks)
			case tr.linkChecks > max(tc.maxChecks, tc.wantChecks):
				t.Errorf("linkCAs made %d signature checks, want at most %d", tr.linkChecks, max(tc.maxChecks, tc.wantChecks))
			}
			if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Errorf("linkCAs error %v, want one containing %q", err, tc.err)
			}
			h, err := Prepare(preparedConfig(p, withCAs(tc.cas)))
			wantPrepareErr := `hostname "pay.example.com": certificate_authorities: ` + tc.prepareErr + ` ("ca-0", "ca-1", "ca-2", "ca-3", "ca-4", "ca-5", "ca-6", "ca-7" and `
			switch {
			case tc.prepareErr == "" && err != nil:
				t.Fatalf("Prepare: %v", err)
			case tc.prepareErr == "" && h.trust.linkChecks != tr.linkChecks:
				t.Errorf("Prepare made %d signature checks, linkCAs alone %d", h.trust.linkChecks, tr.linkChecks)
			case tc.prepareErr != "" && (err == nil || !strings.Contains(err.Error(), wantPrepareErr) || !strings.Contains(err.Error(), `share the subject "CN=Same Name CA,O=guestlist tests"; a hostname may trust at most 3 CAs of one subject`)):
				t.Errorf("Prepare error %v, want one containing %q", err, wantPrepareErr)
			}
		})
	}

	// Among CAs of one name, the one that signed an intermediate is found (first, by its key id),
	// and a leaf's serial revoked under it applies when the chain ends at the trusted
	// intermediate.
	t.Run("ok/intermediate signed by one of 3 self-signed CAs sharing a subject is linked to it", func(t *testing.T) {
		issuer := selfSigned[2]
		inter := issuer.Intermediate(t, "Linked Issuing CA")
		revoked, good := inter.Client(t, "device-10"), inter.Client(t, "device-11")
		h := preparedWith(t, p, fns(withCAs(selfSigned[:3]), withCA("inter", inter), revokeSerial("ca-2", revoked.Cert)))
		if h.trust.linkChecks > 4 {
			t.Errorf("Prepare made %d signature checks, want at most 4", h.trust.linkChecks)
		}
		now := time.Now()
		if _, reason, err := h.Verify(chain(revoked), now); reason != ReasonCertificateRevoked || err == nil || !strings.Contains(err.Error(), `under CA "ca-2"`) {
			t.Errorf("revoked leaf: %s, %v", reason, err)
		}
		if _, reason, err := h.Verify(chain(good), now); reason != ReasonCertificateVerified || err != nil {
			t.Errorf("another leaf: %s, %v", reason, err)
		}
	})
}

// TestPrepareCAsPerSubject: at most MaxCAsPerSubject distinct CA certificates of one subject name
// per hostname, in every mode, revocations or not; one certificate given under two ids counts
// once, and a renewal (two certificates of one CA) fits.
func TestPrepareCAsPerSubject(t *testing.T) {
	p := getPKI(t)
	cas := sameSubjectCAs(t, 4, true)
	trustOnly := func(cas ...*pkitest.CA) func(*configv1.HostnameConfig) {
		return func(c *configv1.HostnameConfig) {
			c.CertificateAuthorities = c.CertificateAuthorities[:1] // root
			for i, ca := range cas {
				withCA(fmt.Sprintf("same-%d", i), ca)(c)
			}
		}
	}
	tests := []struct {
		name string
		cfg  []func(*configv1.HostnameConfig)
		err  string
	}{
		{name: "ok/3 CAs of one subject", cfg: fns(trustOnly(cas[:3]...))},
		{name: "ok/3 CAs of one subject and one certificate twice", cfg: fns(trustOnly(cas[0], cas[1], cas[2], cas[0]))},
		{name: "ok/renewed root and cross-certified intermediate, two certificates of each", cfg: renewedCfg(p, withCA("r1", p.crossR1), withCA("r2", p.crossR2), withCA("inter-r1", p.crossInterR1), withCA("inter-r2", p.crossInterR2))},
		{name: "fail/4 CAs of one subject", cfg: fns(trustOnly(cas...)), err: `certificate_authorities: 4 CAs ("same-0", "same-1", "same-2", "same-3") share the subject "CN=Same Name CA,O=guestlist tests"; a hostname may trust at most 3 CAs of one subject (2 cover a renewal; each more multiplies the signature checks that a forged client certificate costs the edge)`},
		{name: "fail/4 CAs of one subject with a revocation", cfg: fns(withCAs(cas)), err: `4 CAs ("ca-0", "ca-1", "ca-2", "ca-3") share the subject`},
		{name: "ok/4 CAs of one subject in mode OFF, which looks at none", cfg: fns(trustOnly(cas...), withMode(configv1.MtlsMode_MTLS_MODE_OFF))},
		{name: "fail/4 CAs of one subject in mode REPORT", cfg: fns(trustOnly(cas...), withMode(configv1.MtlsMode_MTLS_MODE_REPORT)), err: `4 CAs ("same-0", "same-1", "same-2", "same-3") share the subject`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := Prepare(preparedConfig(p, tc.cfg...))
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Prepare: %v", err)
				}
				return
			}
			if err == nil || h != nil || !strings.Contains(err.Error(), `decision: hostname "pay.example.com": `) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Prepare = %v, %v; want an error containing %q", h, err, tc.err)
			}
		})
	}
}

// preparedConfig returns hostnameConfig(p) changed by each of fs.
func preparedConfig(p *testPKI, fs ...func(*configv1.HostnameConfig)) *configv1.HostnameConfig {
	cfg := hostnameConfig(p)
	for _, f := range fs {
		f(cfg)
	}
	return cfg
}

// TestVerificationHolds checks that a per-connection verification is reused exactly while its
// outcome is unchanged, and that DecideVerified equals Decide at every moment.
func TestVerificationHolds(t *testing.T) {
	p := getPKI(t)
	cfg := hostnameConfig(p)
	withPolicy(rule("verified", allow, "cert.verified"))(cfg)
	h, err := Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	leaf := p.leaf.Cert
	peers := [][]*x509.Certificate{chain(p.leaf), chain(p.notYet), chain(p.expired), chain(p.interLeaf, p.inter), chain(p.expiredInterLeaf, p.expiredInter), nil, chain(p.forged)}
	moments := []time.Time{
		now, leaf.NotBefore.Add(-time.Nanosecond), leaf.NotBefore, leaf.NotAfter, leaf.NotAfter.Add(time.Nanosecond),
		p.notYet.Cert.NotBefore.Add(-time.Second), p.notYet.Cert.NotBefore, p.expired.Cert.NotAfter, p.expired.Cert.NotAfter.Add(time.Nanosecond),
		p.expiredInter.Cert.NotAfter, p.expiredInter.Cert.NotAfter.Add(time.Nanosecond), now.Add(-100 * 24 * time.Hour), now.Add(400 * 24 * time.Hour),
	}
	for _, peer := range peers {
		for _, t0 := range moments {
			v := h.VerifyClient(peer, t0)
			if !v.Holds(h, t0) {
				t.Errorf("verification at %v does not hold at its own moment", t0)
			}
			for _, t1 := range moments {
				want := Decide(h, peer, get("/"), t1)
				if got := h.DecideVerified(v, get("/"), t1); !reflect.DeepEqual(got, want) {
					t.Errorf("DecideVerified(verified at %v) at %v = %+v, Decide = %+v", t0, t1, got, want)
				}
				if v.Holds(h, t1) {
					if v2 := h.VerifyClient(peer, t1); v2.Reason() != v.Reason() || v2.Verified() != v.Verified() {
						t.Errorf("verification at %v holds at %v, but the outcome changed: %s -> %s", t0, t1, v.Reason(), v2.Reason())
					}
				}
			}
		}
	}
	v := h.VerifyClient(chain(p.leaf), now)
	if !v.Holds(h, leaf.NotAfter) || v.Holds(h, leaf.NotAfter.Add(time.Nanosecond)) || v.Holds(h, leaf.NotBefore.Add(-time.Nanosecond)) {
		t.Errorf("the verified leaf's verification should hold exactly within its validity")
	}
	h2, _ := Prepare(hostnameConfig(p))
	if v.Holds(h2, now) || v.Holds(nil, now) {
		t.Errorf("a verification holds only for its hostname")
	}
	if !v.Verified() || v.Err() != nil || v.Chain() == nil || !v.Cert().Verified {
		t.Errorf("accessors of a verified verification")
	}
}

func TestDeterministic(t *testing.T) {
	p := getPKI(t)
	cfg := hostnameConfig(p)
	withCA("other", p.other)(cfg)
	withPolicy(
		rule("ops", allow, `"ops" in cert.subject.organizational_unit`),
		rule("hdr", deny, `request.headers.exists(k, k.startsWith("x-"))`),
		rule("ok", allow, `cert.verified || request.path == "/healthz"`),
	)(cfg)
	now := time.Now()
	for _, tc := range decideCases(p) {
		h1, err := Prepare(cfg)
		if err != nil {
			t.Fatal(err)
		}
		h2, _ := Prepare(cfg)
		req := get("/x", "X-A", "1", "X-B", "2")
		d1 := Decide(h1, tc.peer, req, now)
		for i := 0; i < 3; i++ {
			if d := Decide(h2, tc.peer, req, now); !reflect.DeepEqual(d, d1) {
				t.Fatalf("%s: Decide differs between runs: %+v vs %+v", tc.name, d, d1)
			}
		}
	}
}

func TestNeverPanics(t *testing.T) {
	p := getPKI(t)
	cfg := hostnameConfig(p)
	withPolicy(rule("r", allow, `cert.verified && request.headers[?"a"].orValue("") == ""`))(cfg)
	h, err := Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	garbage := &x509.Certificate{Raw: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}
	peers := [][]*x509.Certificate{
		nil, {}, {nil}, {nil, nil}, {{}}, {garbage}, {garbage, garbage}, {p.leaf.Cert, nil}, {p.leaf.Cert, {}},
		{p.interLeaf.Cert, garbage, p.inter.Cert}, {p.leaf.Cert, garbage},
	}
	for i, peer := range peers {
		for _, req := range []*Request{nil, {}, get("/")} {
			d := Decide(h, peer, req, time.Now())
			if i < 4 && (d.Reason != ReasonCertificateMissing || d.Cert.Presented) {
				t.Errorf("peers[%d]: %+v", i, d)
			}
			if i >= 4 && i <= 6 && (d.Reason != ReasonCertificateUntrusted || d.Cert.Error != ReasonCertificateUntrusted) {
				t.Errorf("peers[%d]: %+v", i, d)
			}
			if i >= 7 && d.Verdict != Allow {
				t.Errorf("peers[%d]: %+v", i, d)
			}
		}
	}
	if d := Decide(h, chain(p.leaf), get("/"), time.Time{}); d.Verdict != Deny || d.Cert.Error != ReasonCertificateNotYetValid {
		t.Errorf("zero time: %+v", d)
	}
}

func TestCacheShares(t *testing.T) {
	p := getPKI(t)
	c := NewCache()
	cfg := hostnameConfig(p)
	withPolicy(rule("r", allow, "cert.verified"))(cfg)
	h1, err := c.Prepare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg2 := hostnameConfig(p)
	cfg2.Hostname = "api.example.com"
	withPolicy(rule("r", allow, "cert.verified"))(cfg2)
	h2, err := c.Prepare(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if h1.trust != h2.trust || h1.program != h2.program {
		t.Fatalf("equal content is not shared")
	}
	cfg3 := hostnameConfig(p)
	withPolicy(rule("r", allow, "!cert.verified"))(cfg3)
	revokeSerial("root", p.leaf.Cert)(cfg3)
	h3, err := c.Prepare(cfg3)
	if err != nil {
		t.Fatal(err)
	}
	if h3.trust == h1.trust || h3.program == h1.program {
		t.Fatalf("different content is shared")
	}
	if d := Decide(h3, chain(p.leaf), nil, time.Now()); d.Reason != ReasonRuleAllow || d.Cert.Error != ReasonCertificateRevoked {
		t.Fatalf("Decide with a cached trust = %+v", d)
	}
	// An error is not cached.
	bad := hostnameConfig(p)
	withPolicy(rule("r", allow, "nope"))(bad)
	for range 2 {
		if _, err := c.Prepare(bad); err == nil {
			t.Fatal("no error")
		}
	}
}

// TestCacheForgetsUnusedEntries: a sweep forgets the entries of a hostname nobody holds any more;
// a hostname of the same content is then prepared again.
func TestCacheForgetsUnusedEntries(t *testing.T) {
	p := getPKI(t)
	c := NewCache()
	cfg := hostnameConfig(p)
	withPolicy(rule("r", allow, "cert.verified"))(cfg)
	func() {
		h, err := c.Prepare(cfg)
		if err != nil || h == nil {
			t.Fatal(err)
		}
	}()
	size := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.trusts) + len(c.programs) + len(c.caLists)
	}
	deadline := time.Now().Add(5 * time.Second)
	for size() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("cache still holds %d entries after the hostname became unreachable", size())
		}
		runtime.GC()
		c.mu.Lock()
		c.sweep()
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	// A new hostname with the same content is prepared again.
	h, err := c.Prepare(cfg)
	if err != nil || size() != 3 {
		t.Fatalf("Prepare after eviction: %v, %d entries", err, size())
	}
	runtime.KeepAlive(h)
}

// TestCertificateErrorSaysWhat checks that the error of a certificate that did not verify names
// what happened: which certificate of the chain, which CA the revocation was filed under, which key
// usage.
func TestCertificateErrorSaysWhat(t *testing.T) {
	p := getPKI(t)
	tests := []struct {
		name string
		cfg  []func(*configv1.HostnameConfig)
		peer []*x509.Certificate
		at   time.Duration
		want string
	}{
		{"fail/key usage", nil, chain(p.badKeyUsage), 0, `certificate_wrong_key_usage: the certificate's key usage (contentCommitment, cRLSign) allows neither digitalSignature nor keyAgreement, so its key may not authenticate a TLS client`},
		{"fail/intermediate revoked by serial under the root", fns(withCA("inter", p.inter), revokeSerial("root", p.inter.Cert)), chain(p.interLeaf), 0,
			`certificate_revoked: certificate 1 of the chain ("Acme Issuing CA", serial number ` + certid.SerialNumber(p.inter.Cert.SerialNumber) + `, issuer "Acme Device CA") is revoked by serial number under CA "root"`},
		{"fail/leaf revoked by serial under the old certificate of a renewed root", renewedCfg(p, revokeSerial("old", p.renewedLeaf.Cert)), chain(p.renewedLeaf), afterCrossExpiry,
			`certificate_revoked: certificate 0 of the chain ("device-7", serial number 4001, issuer "Renewed CA") is revoked by serial number under CA "old"`},
		{"fail/leaf revoked by fingerprint", fns(revokeFingerprint("root", p.leaf.Cert)), chain(p.leaf), 0,
			`certificate_revoked: certificate 0 of the chain ("device-1", fingerprint ` + certid.FingerprintSHA256(p.leaf.Cert.Raw) + `) is revoked by fingerprint under CA "root"`},
	}
	now := time.Now()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := preparedWith(t, p, tc.cfg)
			_, _, err := h.Verify(tc.peer, now.Add(tc.at))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("Verify error:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// TestCacheSweepsAsItGrows: a Cache preparing ever new content, whose hostnames are dropped as it
// goes, holds at most about twice its live entries plus minSweep, without anything calling sweep;
// the entries of the hostnames still held are kept and still shared.
func TestCacheSweepsAsItGrows(t *testing.T) {
	p := getPKI(t)
	c := NewCache()
	var held []*Hostname
	for i := range 6 * minSweep {
		cfg := hostnameConfig(p)
		cfg.Revocations = []*configv1.Revocation{{CertificateAuthorityId: "root", RevocationId: "r", SerialNumber: fmt.Sprintf("%x", i+1)}}
		h, err := c.Prepare(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			held = append(held, h) // these stay; the others are dropped
		}
		if i%minSweep == 0 {
			runtime.GC()
		}
	}
	c.mu.Lock()
	trusts, caLists := len(c.trusts), len(c.caLists)
	c.mu.Unlock()
	// One list of CAs for all, one trust for each revocation; len(held) trusts live.
	if limit := 2*(len(held)+1) + minSweep; trusts > limit || caLists != 1 {
		t.Errorf("after %d hostnames, %d of them held: %d trusts (want at most %d) and %d lists of CAs (want 1)", 6*minSweep, len(held), trusts, limit, caLists)
	}
	for i, h := range held {
		again, err := c.Prepare(h.Config)
		if err != nil || again.trust != h.trust {
			t.Fatalf("held hostname %d: its trust is no longer the cache's (%v)", i, err)
		}
	}
}

// TestCacheSweepsInProportion: with many entries live, a Cache sweeps once per about as many
// entries recorded as it found live (so sweeping costs O(1) a record, not O(live) every minSweep
// records), and between sweeps holds at most about twice its live entries plus minSweep while
// the entries it records die. TestCacheSweepsAsItGrows never has more than minSweep entries live
// at a sweep, so it checks neither.
func TestCacheSweepsInProportion(t *testing.T) {
	c := NewCache()
	record := func(i int) *caList {
		key := sha256.Sum256(binary.AppendUvarint([]byte("sweep"), uint64(i)))
		v, err := lookup(c, c.caLists, key, func() (*caList, error) { return &caList{}, nil })
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const held, collectEvery = 4 * minSweep, 256
	keep := make([]*caList, 0, held)
	for i := range held {
		keep = append(keep, record(i))
	}
	runtime.GC()
	const dropped = 16 * held
	sweeps, most := 0, 0
	for i := range dropped {
		record(held + i)
		c.mu.Lock()
		if c.added == 0 {
			sweeps++
		}
		most = max(most, len(c.caLists))
		c.mu.Unlock()
		if i%collectEvery == collectEvery-1 {
			runtime.GC()
		}
	}
	runtime.KeepAlive(keep)
	// Every sweep found the held entries live, so came at least held records after the last.
	if limit := dropped/held + 1; sweeps > limit {
		t.Errorf("%d sweeps in %d records with %d entries live: want at most %d", sweeps, dropped, held, limit)
	}
	// Live at a sweep: the held entries and those recorded since the last collection.
	if limit := 2*(held+collectEvery) + minSweep; most > limit {
		t.Errorf("up to %d entries with %d live: want at most %d", most, held+collectEvery, limit)
	}
}
