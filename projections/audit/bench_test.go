package audit

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/pkitest"
	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
	"guestlist.dev/services/eventstore/storetest"
)

// explainBench stores the events history(ca) returns, for a CA it makes, as acme's history in a
// bolt store in b's temporary directory, and returns an AuditService over it and a request
// explaining a GET / to pay.acme.example with a certificate of that CA.
func explainBench(b *testing.B, history func(ca *pkitest.CA) []proto.Message) (*Service, *guestlistv1.ExplainRequest) {
	b.Helper()
	store, err := boltstore.Open(b.TempDir() + "/events.db")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	ca := pkitest.NewCA(b, "devices")
	leaf := ca.Client(b, "leaf")
	ms := history(ca)
	for i := 0; i < len(ms); i += 500 {
		var evs []eventstore.EventData
		for _, m := range ms[i:min(i+500, len(ms))] {
			data, _ := proto.Marshal(m)
			evs = append(evs, eventstore.EventData{ID: storetest.NewEventID(), Type: fold.TypeOf(m), Data: data})
		}
		if _, err := store.Append(context.Background(), fold.TenantStream("acme"), eventstore.Any(), evs...); err != nil {
			b.Fatal(err)
		}
	}
	return New(store), &guestlistv1.ExplainRequest{TenantId: "acme", Hostname: "pay.acme.example", ClientCertificateChainPem: pkitest.PEM(leaf.Cert), Method: "GET", Path: "/"}
}

// BenchmarkExplain10kEvents replays a tenant with 10,000 events (a CA, a hostname updated over
// and over) for each explanation: the cost of replaying from scratch on every call.
func BenchmarkExplain10kEvents(b *testing.B) {
	svc, req := explainBench(b, func(ca *pkitest.CA) []proto.Message {
		ms := []proto.Message{
			&eventsv1.TenantCreated{TenantId: "acme"},
			&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "devices", CertificateDer: ca.Cert.Raw, FingerprintSha256: "00"},
		}
		for i := range 9998 {
			m := &eventsv1.HostnameUpdated{Hostname: "pay.acme.example", OriginUrl: fmt.Sprintf("http://o%d", i), State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
				Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"devices"}}}
			if i == 0 {
				ms = append(ms, &eventsv1.HostnameCreated{Hostname: m.Hostname, OriginUrl: m.OriginUrl, State: m.State, Mtls: m.Mtls})
				continue
			}
			ms = append(ms, m)
		}
		return ms
	})
	b.ResetTimer()
	for b.Loop() {
		resp, err := svc.Explain(admin, req)
		if err != nil || resp.GetVerdict() != "allow" {
			b.Fatal(resp, err)
		}
	}
}

// BenchmarkExplainExpensivePolicy explains, over and over, one request on a hostname whose policy
// is at the compile-time worst case (edge/policy's BenchmarkCompileManyPatterns: 45 rules of about
// 110 distinct calls of matches() each, after a first rule that decides): what an auditor
// explaining many decision log lines of that hostname pays per line. Without the cache of prepared
// configurations, every call compiled the policy. The first explanation (which prepares the
// configuration, with or without the cache) is not timed.
//
//	go test -run XXX -bench ExplainExpensivePolicy -benchtime 5x guestlist.dev/projections/audit
func BenchmarkExplainExpensivePolicy(b *testing.B) {
	rules := []*eventsv1.PolicyRule{{Name: "devices", Action: eventsv1.Action_ACTION_ALLOW, Expression: "cert.verified"}}
	for r := range 45 {
		var parts []string
		for i := 0; ; i++ {
			part := fmt.Sprintf("''.matches('(?:a|b)*a(?:a|b){8}%c%c%c')", 'A'+i%26, 'A'+i/26, 'a'+r%26)
			if len(strings.Join(append(parts, part), "||")) > 4096 {
				break
			}
			parts = append(parts, part)
		}
		rules = append(rules, &eventsv1.PolicyRule{Name: fmt.Sprintf("r%d", r), Action: eventsv1.Action_ACTION_ALLOW, Expression: strings.Join(parts, "||")})
	}
	svc, req := explainBench(b, func(ca *pkitest.CA) []proto.Message {
		return []proto.Message{
			&eventsv1.TenantCreated{TenantId: "acme"},
			&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "devices", CertificateDer: ca.Cert.Raw, FingerprintSha256: "00"},
			&eventsv1.PolicyCreated{PolicyId: "p", Rules: rules},
			&eventsv1.HostnameCreated{Hostname: "pay.acme.example", OriginUrl: "http://o", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, PolicyId: "p",
				Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"devices"}}},
		}
	})
	if _, err := svc.Explain(admin, req); err != nil { // the first explanation, not timed
		b.Fatal(err)
	}
	for b.Loop() {
		resp, err := svc.Explain(admin, req)
		if err != nil || resp.GetVerdict() != "allow" || resp.GetRule() != "devices" {
			b.Fatal(resp, err)
		}
	}
}
