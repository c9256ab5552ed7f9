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

// TestHostnameConfigCANamedTwice: a hostname that names a CA twice (the API refuses it; a history
// may still hold it) gets each of the CA's revocations once, and the CA's other hostnames are
// found once for a revocation under it; deleting the hostname leaves nothing of it in the indexes.
func TestHostnameConfigCANamedTwice(t *testing.T) {
	evs := history(
		&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: []byte{2}},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca2", CertificateDer: []byte{3}},
		&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "a"}},
		&eventsv1.RevocationAdded{RevocationId: "r0", CertificateAuthorityId: "ca2", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "b"}},
		&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://o", Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca2", "ca1", "ca2"}}, State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE},
	)
	st := foldAll(t, evs)
	for _, index := range []bool{false, true} {
		indexed := st.Clone()
		if index {
			indexed.Index()
		}
		var got []string
		for _, r := range HostnameConfig(indexed, "pay.example.com", 1).GetRevocations() {
			got = append(got, r.GetCertificateAuthorityId()+"/"+r.GetRevocationId())
		}
		if want := []string{"ca1/r1", "ca2/r0"}; !slices.Equal(got, want) {
			t.Fatalf("index %v: revocations %v, want %v", index, got, want)
		}
	}
	more := history(append(messagesOf(evs), &eventsv1.RevocationAdded{RevocationId: "r2", CertificateAuthorityId: "ca2", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "c"}}, &eventsv1.HostnameDeleted{Hostname: "pay.example.com"})...)
	for _, index := range []bool{false, true} {
		if index {
			st.Index()
		}
		if got := AffectedHostnames(st, more[len(evs)]); !slices.Equal(got, []string{"pay.example.com"}) {
			t.Fatalf("index %v: AffectedHostnames %v", index, got)
		}
	}
	for _, ev := range more[len(evs):] {
		if err := Apply(st, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := CheckIndexes(st); err != nil || st.hostsByCA == nil || len(st.hostsByCA) != 0 || len(st.hostsByPolicy) != 0 {
		t.Fatalf("after the deletion: %v, hostnames by CA %v, by policy %v", err, st.hostsByCA, st.hostsByPolicy)
	}
}
