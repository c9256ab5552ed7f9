package fold

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// replayHistory returns n events of one tenant: a tenant, a CA and a policy, then hostnames created,
// updated and deleted, revocations added and removed, and policy updates, in a realistic mix.
func replayHistory(b *testing.B, n int) []Event {
	b.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	evs := make([]Event, 0, n)
	add := func(m proto.Message) {
		data, err := proto.Marshal(m)
		if err != nil {
			b.Fatal(err)
		}
		i := len(evs)
		evs = append(evs, Event{Type: TypeOf(m), Data: data, Revision: uint64(i), Position: uint64(i + 1), Time: t0.Add(time.Duration(i) * time.Millisecond), Actor: "token:acme/t1", RequestID: fmt.Sprint("r", i)})
	}
	add(&eventsv1.TenantCreated{TenantId: "acme", DisplayName: "Acme"})
	add(&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "devices", CertificateDer: make([]byte, 600), FingerprintSha256: "ab"})
	add(&eventsv1.PolicyCreated{PolicyId: "p", Rules: []*eventsv1.PolicyRule{{Name: "ops", Action: eventsv1.Action_ACTION_ALLOW, Expression: `"ops" in cert.subject.organizational_unit`}}})
	mtls := &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"devices"}}
	for i := 0; len(evs) < n; i++ {
		name := fmt.Sprintf("h%d.acme.example", i)
		switch i % 10 {
		case 7:
			add(&eventsv1.RevocationAdded{RevocationId: fmt.Sprint("rev-", i), CertificateAuthorityId: "devices", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: fmt.Sprintf("%x", i)}, Reason: "lost"})
		case 8:
			add(&eventsv1.PolicyUpdated{PolicyId: "p", Rules: []*eventsv1.PolicyRule{{Name: "ops", Action: eventsv1.Action_ACTION_ALLOW, Expression: fmt.Sprintf(`request.path != "/%d"`, i)}}})
		case 9:
			add(&eventsv1.HostnameUpdated{Hostname: fmt.Sprintf("h%d.acme.example", i-3), OriginUrl: "https://origin.example/v2", Mtls: mtls, PolicyId: "p", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE})
		default:
			add(&eventsv1.HostnameCreated{Hostname: name, OriginUrl: "https://origin.example", Mtls: mtls, PolicyId: "p", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE})
		}
	}
	return evs
}

// BenchmarkReplay1M folds one tenant's history of 1,000,000 events from scratch and reports events
// per second. Goal: at least 500,000 events/s.
//
//	go test -run XXX -bench Replay1M -benchtime 3x guestlist.dev/projections/fold
func BenchmarkReplay1M(b *testing.B) {
	evs := replayHistory(b, 1_000_000)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		st := NewTenant("acme")
		for _, ev := range evs {
			if err := Apply(st, ev); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*len(evs))/time.Since(start).Seconds(), "events/s")
}
