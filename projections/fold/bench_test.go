package fold

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// appender returns a function that appends m to *evs as the next event of tenant acme's stream,
// a millisecond after the one before.
func appender(b *testing.B, evs *[]Event) func(m proto.Message) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return func(m proto.Message) {
		data, err := proto.Marshal(m)
		if err != nil {
			b.Fatal(err)
		}
		i := len(*evs)
		*evs = append(*evs, Event{Type: TypeOf(m), Data: data, Revision: uint64(i), Position: uint64(i + 1), Time: t0.Add(time.Duration(i) * time.Millisecond), Actor: "token:acme/t1", RequestID: fmt.Sprint("r", i)})
	}
}

// replayHistory returns n events of one tenant: a tenant, a CA and a policy, then hostnames created,
// updated and deleted, revocations added and removed, and policy updates, in a realistic mix.
func replayHistory(b *testing.B, n int) []Event {
	b.Helper()
	evs := make([]Event, 0, n)
	add := appender(b, &evs)
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

// endpointsHistory returns one tenant's history of n customer endpoints, each a hostname with a
// root CA of its own (the product's usual shape), with a revocation filed after each endpoint under
// an earlier endpoint's CA and, every tenth endpoint, a policy update that its hostnames use.
func endpointsHistory(b *testing.B, n int) []Event {
	b.Helper()
	var evs []Event
	add := appender(b, &evs)
	add(&eventsv1.TenantCreated{TenantId: "acme", DisplayName: "Acme"})
	for p := range 10 {
		add(&eventsv1.PolicyCreated{PolicyId: fmt.Sprint("p", p), Rules: []*eventsv1.PolicyRule{{Name: "ops", Action: eventsv1.Action_ACTION_ALLOW, Expression: `"ops" in cert.subject.organizational_unit`}}})
	}
	for i := range n {
		ca := fmt.Sprint("ca-", i)
		add(&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: ca, CertificateDer: make([]byte, 600), FingerprintSha256: fmt.Sprintf("%064x", i)})
		add(&eventsv1.HostnameCreated{Hostname: fmt.Sprintf("pay.customer%d.example", i), OriginUrl: "https://origin.example", PolicyId: fmt.Sprint("p", i%10), State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
			Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{ca}}})
		add(&eventsv1.RevocationAdded{RevocationId: fmt.Sprint("rev-", i), CertificateAuthorityId: fmt.Sprint("ca-", i*7919%(i+1)), Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: fmt.Sprintf("%x", i+1)}, Reason: "lost"})
		if i%10 == 9 {
			add(&eventsv1.PolicyUpdated{PolicyId: fmt.Sprint("p", i%10), Rules: []*eventsv1.PolicyRule{{Name: "ops", Action: eventsv1.Action_ACTION_ALLOW, Expression: fmt.Sprintf(`request.path != "/%d"`, i)}}})
		}
	}
	return evs
}

// BenchmarkProjectEndpoints folds a tenant of 20,000 customer endpoints (endpointsHistory) the way
// the projector does: with the indexes (Index), for each event the hostnames it
// affects (AffectedHostnames, before the event), then the event, then the edge configuration of
// each affected hostname (HostnameConfig).
// It reports the time per event.
//
//	go test -run XXX -bench ProjectEndpoints -benchtime 3x guestlist.dev/projections/fold
func BenchmarkProjectEndpoints(b *testing.B) {
	evs := endpointsHistory(b, 20_000)
	configs := 0
	b.ResetTimer()
	for range b.N {
		st := NewTenant("acme")
		st.Index() // as the projector does
		for _, ev := range evs {
			names := AffectedHostnames(st, ev)
			if err := Apply(st, ev); err != nil {
				b.Fatal(err)
			}
			for _, n := range names {
				if HostnameConfig(st, n, ev.Position) != nil {
					configs++
				}
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(evs)), "ns/event")
	b.ReportMetric(float64(configs)/float64(b.N), "configs/op")
}

// BenchmarkCloneEndpoints copies a tenant of 20,000 customer endpoints (endpointsHistory), as the
// audit does to fold a cached state further.
func BenchmarkCloneEndpoints(b *testing.B) {
	st := NewTenant("acme")
	for _, ev := range endpointsHistory(b, 20_000) {
		if err := Apply(st, ev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = st.Clone()
	}
}
