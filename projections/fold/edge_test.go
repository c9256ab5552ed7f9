package fold

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// TestAffectedHostnamesCoversEveryChange: after each event, every hostname whose edge configuration
// changed was named by AffectedHostnames before the event was applied.
func TestAffectedHostnamesCoversEveryChange(t *testing.T) {
	evs := history(append(messagesOf(sample()),
		&eventsv1.HostnameCreated{Hostname: "b.example.com", OriginUrl: "http://o", Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca1"}}, PolicyId: "p1", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE},
		&eventsv1.RevocationAdded{RevocationId: "r2", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_FingerprintSha256{FingerprintSha256: "ab"}},
		&eventsv1.PolicyUpdated{PolicyId: "p1", Rules: []*eventsv1.PolicyRule{{Name: "x", Action: eventsv1.Action_ACTION_ALLOW, Expression: "false"}}},
		&eventsv1.RevocationRemoved{RevocationId: "r1", CertificateAuthorityId: "ca1"},
		&eventsv1.HostnameDeleted{Hostname: "b.example.com"},
		&eventsv1.HostnameDeleted{Hostname: "pay.example.com"},
		&eventsv1.PolicyDeleted{PolicyId: "p1"},
		&eventsv1.CertificateAuthorityRemoved{CertificateAuthorityId: "ca1"},
	)...)
	st := NewTenant("acme")
	for i, ev := range evs {
		names := map[string]bool{}
		for n := range st.Hostnames {
			names[n] = true
		}
		before := map[string]proto.Message{}
		for n := range names {
			before[n] = HostnameConfig(st, n, 0)
		}
		affected := AffectedHostnames(st, ev)
		if err := Apply(st, ev); err != nil {
			t.Fatal(err)
		}
		for n := range st.Hostnames {
			names[n] = true
		}
		for n := range names {
			after := HostnameConfig(st, n, 0)
			b, had := before[n]
			changed := !had || (after == nil) || !proto.Equal(b, after)
			if changed && !slices.Contains(affected, n) {
				t.Errorf("event %d (%s) changed %s but AffectedHostnames said %v", i, ev.Type, n, affected)
			}
		}
	}
	if len(st.Hostnames) != 0 {
		t.Fatalf("history should end with no hostnames")
	}
}
