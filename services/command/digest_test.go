package command

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"testing"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// TestRequestDigestEncoding pins version 1 of the request digest: the bytes, written out here by
// hand as docs/storage.md describes them, and their SHA-256. Digests are stored in events and
// compared by later versions, so this value must never change; a new encoding is a new version.
func TestRequestDigestEncoding(t *testing.T) {
	var enc []byte
	field := func(s string) {
		enc = binary.BigEndian.AppendUint32(enc, uint32(len(s)))
		enc = append(enc, s...)
	}
	enc = append(enc, "guestlist-request"...)
	enc = append(enc, 1)
	field("guestlist.v1.PolicyService.CreatePolicy")
	for _, kv := range [][2]string{
		{"policy_id", "payments"},
		// display_name is empty: left out.
		{"policy.rules", "2"},
		{"policy.rules[0].name", "no-admin"},
		{"policy.rules[0].action", "2"},
		{"policy.rules[0].expression", `request.path.startsWith("/admin")`},
		{"policy.rules[1].name", "payments"},
		{"policy.rules[1].action", "1"},
		{"policy.rules[1].expression", `"payments" in cert.subject.organizational_unit`},
	} {
		field(kv[0])
		field(kv[1])
	}
	want := sha256.Sum256(enc)
	got := policyDigest("payments", "", []*eventsv1.PolicyRule{
		{Name: "no-admin", Action: eventsv1.Action_ACTION_DENY, Expression: `request.path.startsWith("/admin")`},
		{Name: "payments", Action: eventsv1.Action_ACTION_ALLOW, Expression: `"payments" in cert.subject.organizational_unit`},
	})
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("policyDigest = %x, want %x (the documented encoding)", got, want)
	}
	const pinned = "761496ecc33e30b15b17d8f0f9fd78f14b1828828555e8568a78469e8d1c2f2c"
	if hex.EncodeToString(got) != pinned {
		t.Fatalf("policyDigest = %x, pinned %s: version 1 changed", got, pinned)
	}
}

func hostnameSpecs(t *testing.T, batch bool, hs ...*guestlistv1.Hostname) []hostnameSpec {
	t.Helper()
	var out []hostnameSpec
	for i, h := range hs {
		prefix := "hostname"
		if batch {
			prefix = fmt.Sprintf("requests[%d].hostname", i)
		}
		spec, v := specFor(prefix, h)
		if len(v) > 0 {
			t.Fatalf("specFor: %v", v)
		}
		out = append(out, spec)
	}
	return out
}

func hn(name, origin string, mode guestlistv1.MtlsMode, cas ...string) *guestlistv1.Hostname {
	return &guestlistv1.Hostname{Hostname: name, OriginUrl: origin, Mtls: &guestlistv1.MtlsSettings{Mode: mode, CertificateAuthorityIds: cas}}
}

// TestRequestDigestTellsRequestsApart: equal digests for requests the command stores alike
// ("ok/"), different ones for requests that differ in anything it stores ("fail/": a repeat with
// such a request id is refused).
func TestRequestDigestTellsRequestsApart(t *testing.T) {
	const off, enforce = guestlistv1.MtlsMode_MTLS_MODE_OFF, guestlistv1.MtlsMode_MTLS_MODE_ENFORCE
	single := func(h ...*guestlistv1.Hostname) []byte { return hostnamesDigest(false, hostnameSpecs(t, false, h...)) }
	batch := func(h ...*guestlistv1.Hostname) []byte { return hostnamesDigest(true, hostnameSpecs(t, true, h...)) }
	rule := func(name, expr string) []*eventsv1.PolicyRule {
		return []*eventsv1.PolicyRule{{Name: name, Action: eventsv1.Action_ACTION_ALLOW, Expression: expr}}
	}
	serial := func(s, reason string) *eventsv1.RevocationAdded {
		return &eventsv1.RevocationAdded{CertificateAuthorityId: "ca", Reason: reason, Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: s}}
	}
	tests := []struct {
		name string
		a, b []byte
	}{
		{"ok/hostname case and trailing dot", single(hn("Pay.Example.COM.", "http://o", off)), single(hn("pay.example.com", "http://o", off))},
		{"ok/no CAs and an empty list", single(hn("a.example", "http://o", off)), single(&guestlistv1.Hostname{Hostname: "a.example", OriginUrl: "http://o", Mtls: &guestlistv1.MtlsSettings{Mode: off, CertificateAuthorityIds: []string{}}})},
		{"ok/a batch's own tenant_id and request_id are not covered", batch(hn("a.example", "http://o", off)), batch(hn("a.example", "http://o", off))},
		{"fail/hostname", single(hn("a.example", "http://o", off)), single(hn("b.example", "http://o", off))},
		{"fail/origin", single(hn("a.example", "http://o", off)), single(hn("a.example", "http://p", off))},
		{"fail/mode", single(hn("a.example", "http://o", enforce, "x")), single(&guestlistv1.Hostname{Hostname: "a.example", OriginUrl: "http://o", Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_REPORT, CertificateAuthorityIds: []string{"x"}}})},
		{"fail/reject_in_handshake", single(hn("a.example", "http://o", enforce, "x")), single(&guestlistv1.Hostname{Hostname: "a.example", OriginUrl: "http://o", Mtls: &guestlistv1.MtlsSettings{Mode: enforce, CertificateAuthorityIds: []string{"x"}, RejectInHandshake: true}})},
		{"fail/policy_id", single(hn("a.example", "http://o", off)), single(&guestlistv1.Hostname{Hostname: "a.example", OriginUrl: "http://o", Mtls: &guestlistv1.MtlsSettings{Mode: off}, PolicyId: "p"})},
		{"fail/CA order", single(hn("a.example", "http://o", enforce, "x", "y")), single(hn("a.example", "http://o", enforce, "y", "x"))},
		{"fail/an empty CA id more", single(hn("a.example", "http://o", enforce, "x", "")), single(hn("a.example", "http://o", enforce, "x"))},
		{"fail/a single create and a batch of it", single(hn("a.example", "http://o", off)), batch(hn("a.example", "http://o", off))},
		{"fail/batch order", batch(hn("a.example", "http://o", off), hn("b.example", "http://o", off)), batch(hn("b.example", "http://o", off), hn("a.example", "http://o", off))},
		{"fail/a value moved to the next field", policyDigest("", "ab", rule("c", "true")), policyDigest("", "a", rule("bc", "true"))},
		{"fail/policy name and expression swapped", policyDigest("p", "", rule("true", "x")), policyDigest("p", "", rule("x", "true"))},
		{"fail/policy id chosen or not", policyDigest("p", "", rule("r", "true")), policyDigest("", "", rule("r", "true"))},
		{"fail/serial number or fingerprint", revocationDigest("", serial("ab", "")), revocationDigest("", &eventsv1.RevocationAdded{CertificateAuthorityId: "ca", Target: &eventsv1.RevocationAdded_FingerprintSha256{FingerprintSha256: "ab"}})},
		{"fail/revocation reason", revocationDigest("", serial("ab", "lost")), revocationDigest("", serial("ab", "stolen"))},
		{"fail/revocation id", revocationDigest("r1", serial("ab", "")), revocationDigest("r2", serial("ab", ""))},
		{"fail/CA certificate", caDigest("c", "d", []byte{1, 2}), caDigest("c", "d", []byte{1, 3})},
		{"fail/token role", tokenDigest("ci", eventsv1.Role_ROLE_AUDITOR), tokenDigest("ci", eventsv1.Role_ROLE_TENANT_ADMIN)},
		{"fail/the same fields, another method", tenantDigest("x"), tokenDigest("x", 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.a) != sha256.Size || len(tc.b) != sha256.Size {
				t.Fatalf("digests of %d and %d bytes", len(tc.a), len(tc.b))
			}
			if equal := bytes.Equal(tc.a, tc.b); equal != (tc.name[:3] == "ok/") {
				t.Errorf("digests equal: %v (%x, %x)", equal, tc.a, tc.b)
			}
		})
	}
}
