package decision

import (
	"fmt"
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestSizeEstimate: Hostname.SizeEstimate is at least the heap a prepared hostname keeps (with its
// configuration), for hostnames of 1 to 16 CAs, P-256 and RSA, with many revocations and with a
// policy, so that the audit's cache of prepared configurations stays within its bound.
func TestSizeEstimate(t *testing.T) {
	rules := []*configv1.Rule{{Name: "no-admin", Action: configv1.Action_ACTION_DENY, Expression: "request.path.startsWith('/admin')"}, {Name: "devices", Action: configv1.Action_ACTION_ALLOW, Expression: "cert.verified && cert.subject.organizational_unit.exists(u, u.matches('^dev(ice|elopment)s?$'))"}}
	// What is built once for all hostnames (the policy environment, cel-go's tables, the tables of
	// certificate parsing) is not theirs.
	if _, err := Prepare(&configv1.HostnameConfig{Hostname: "warm.example", Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE, Policy: &configv1.Policy{PolicyId: "p", Rules: rules},
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{{CertificateAuthorityId: "warm", CertificateDer: pkitest.NewCA(t, "warm").Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cas, revocations int
		rsa, policy      bool
	}{{1, 0, false, false}, {1, 0, false, true}, {16, 0, false, false}, {16, 1000, false, true}, {4, 0, true, false}} {
		cfg := &configv1.HostnameConfig{Hostname: "pay.example", TenantId: "acme", Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE, Active: true}
		for i := range tc.cas {
			var der []byte
			if tc.rsa {
				der = pkitest.CAForKey(t, fmt.Sprint("ca ", i), pkitest.RandomRSA(t, 4096, 65537)).Raw
			} else {
				der = pkitest.NewCA(t, fmt.Sprint("ca ", i)).Cert.Raw
			}
			cfg.CertificateAuthorities = append(cfg.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: fmt.Sprint("ca", i), CertificateDer: der})
		}
		for i := range tc.revocations {
			cfg.Revocations = append(cfg.Revocations, &configv1.Revocation{CertificateAuthorityId: "ca0", RevocationId: fmt.Sprint("r", i), SerialNumber: fmt.Sprintf("%x", 1_000_000+i)})
		}
		if tc.policy {
			cfg.Policy = &configv1.Policy{PolicyId: "p", Rules: rules}
		}
		const n = 20
		hs := make([]*Hostname, 0, n)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range n {
			h, err := Prepare(proto.CloneOf(cfg))
			if err != nil {
				t.Fatal(err)
			}
			hs = append(hs, h)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		held := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
		name := fmt.Sprintf("%d CAs (RSA %v), %d revocations, policy %v", tc.cas, tc.rsa, tc.revocations, tc.policy)
		t.Logf("%s: holds %d bytes, estimated %d", name, held, hs[0].SizeEstimate())
		if hs[0].SizeEstimate() < held {
			t.Errorf("%s: SizeEstimate %d bytes, but a prepared hostname holds %d", name, hs[0].SizeEstimate(), held)
		}
		runtime.KeepAlive(hs)
	}
}
