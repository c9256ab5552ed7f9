package fold

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// history builds events with consecutive revisions from messages.
func history(msgs ...proto.Message) []Event {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	out := make([]Event, len(msgs))
	for i, m := range msgs {
		data, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		out[i] = Event{Type: TypeOf(m), Data: data, Revision: uint64(i), Position: uint64(100 + i), Time: t0.Add(time.Duration(i) * time.Second), RequestID: "req-" + string(rune('a'+i))}
	}
	return out
}

// Request digests of two of sample's creates (any 32 bytes do for the fold).
var (
	digestB = bytes.Repeat([]byte{0xb}, 32)
	digestF = bytes.Repeat([]byte{0xf}, 32)
)

func sample() []Event {
	return history(
		&eventsv1.TenantCreated{TenantId: "acme", DisplayName: "Acme"},
		&eventsv1.TokenCreated{TokenId: "t1", Role: eventsv1.Role_ROLE_TENANT_ADMIN, SecretSha256: []byte{1}, RequestDigest: digestB},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: []byte{2}, FingerprintSha256: "ff"},
		&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "a"}},
		&eventsv1.PolicyCreated{PolicyId: "p1", Rules: []*eventsv1.PolicyRule{{Name: "all", Action: eventsv1.Action_ACTION_ALLOW, Expression: "true"}}},
		&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://o", Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca1"}}, PolicyId: "p1", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, RequestDigest: digestF},
		&eventsv1.HostnameUpdated{Hostname: "pay.example.com", OriginUrl: "http://o2", Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_REPORT, CertificateAuthorityIds: []string{"ca1"}}, State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE},
		&eventsv1.PolicyUpdated{PolicyId: "p1", DisplayName: "renamed", Rules: []*eventsv1.PolicyRule{{Name: "none", Action: eventsv1.Action_ACTION_DENY, Expression: "true"}}},
	)
}

func foldAll(t *testing.T, evs []Event) *Tenant {
	t.Helper()
	st := NewTenant("acme")
	for _, ev := range evs {
		if err := Apply(st, ev); err != nil {
			t.Fatalf("Apply(%s): %v", ev.Type, err)
		}
	}
	return st
}

func TestApply(t *testing.T) {
	st := foldAll(t, sample())
	if !st.Exists || st.Revision != 7 || st.Position != 107 {
		t.Fatalf("header = exists %v revision %d position %d", st.Exists, st.Revision, st.Position)
	}
	h := st.Hostnames["pay.example.com"]
	if h == nil || h.OriginURL != "http://o2" || h.Mode != eventsv1.MtlsMode_MTLS_MODE_REPORT || h.PolicyID != "" || h.Revision != 6 {
		t.Fatalf("hostname = %+v", h)
	}
	if !h.CreateTime.Before(h.UpdateTime) {
		t.Errorf("create time %v should precede update time %v", h.CreateTime, h.UpdateTime)
	}
	if p := st.Policies["p1"]; p.DisplayName != "renamed" || p.Rules[0].Name != "none" || p.Revision != 7 {
		t.Errorf("policy = %+v", p)
	}
	if r := st.RequestRefs("req-f"); len(r) != 1 || r[0] != (Ref{Kind: KindHostname, ID: "pay.example.com", Digest: string(digestF)}) {
		t.Errorf("requests[req-f] = %v", r)
	}
	if r := st.RequestRefs("req-b"); len(r) != 1 || r[0] != (Ref{Kind: KindToken, ID: "t1", Digest: string(digestB)}) {
		t.Errorf("requests[req-b] = %v", r)
	}
	// Events without a request digest (older versions) leave it empty.
	if r := st.RequestRefs("req-c"); len(r) != 1 || r[0] != (Ref{Kind: KindCertificateAuthority, ID: "ca1"}) {
		t.Errorf("requests[req-c] = %v", r)
	}
	// Removing a CA removes its revocations.
	more := history(append(messagesOf(sample()), &eventsv1.HostnameDeleted{Hostname: "pay.example.com"}, &eventsv1.CertificateAuthorityRemoved{CertificateAuthorityId: "ca1"})...)
	st = foldAll(t, more)
	if len(st.CAs) != 0 || len(st.Revocations) != 0 || len(st.Hostnames) != 0 {
		t.Errorf("after removal: %d CAs, %d revocations, %d hostnames", len(st.CAs), len(st.Revocations), len(st.Hostnames))
	}
}

func messagesOf(evs []Event) []proto.Message {
	var out []proto.Message
	for _, ev := range evs {
		mt, err := protoregistryFind(ev.Type)
		if err != nil {
			panic(err)
		}
		m := mt.New().Interface()
		if err := proto.Unmarshal(ev.Data, m); err != nil {
			panic(err)
		}
		out = append(out, m)
	}
	return out
}

func TestApplyRefusesInconsistentHistories(t *testing.T) {
	evs := sample()
	tests := map[string][]Event{
		"fail/first event not TenantCreated": history(&eventsv1.TokenCreated{TokenId: "x"}),
		"fail/revision gap":                  {evs[0], {Type: evs[1].Type, Data: evs[1].Data, Revision: 5}},
		"fail/tenant id of another stream":   history(&eventsv1.TenantCreated{TenantId: "other"}),
		"fail/update of unknown hostname":    history(&eventsv1.TenantCreated{TenantId: "acme"}, &eventsv1.HostnameUpdated{Hostname: "x.example"}),
		"fail/revocation under unknown CA":   history(&eventsv1.TenantCreated{TenantId: "acme"}, &eventsv1.RevocationAdded{RevocationId: "r", CertificateAuthorityId: "nope"}),
		"fail/duplicate CA":                  history(&eventsv1.TenantCreated{TenantId: "acme"}, &eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "c"}, &eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "c"}),
		"fail/unknown event type":            {evs[0], {Type: "guestlist.events.v1.Martian", Revision: 1}},
		"fail/undecodable payload":           {evs[0], {Type: TypeTokenCreated, Data: []byte{0xff, 0xff}, Revision: 1}},
	}
	for name, evs := range tests {
		t.Run(name, func(t *testing.T) {
			st := NewTenant("acme")
			var err error
			for _, ev := range evs {
				if err = Apply(st, ev); err != nil {
					break
				}
			}
			if err == nil {
				t.Fatal("Apply accepted an inconsistent history")
			}
			if !errors.Is(err, ErrInconsistent) && !errors.Is(err, ErrUnknownEventType) && name != "fail/undecodable payload" {
				t.Errorf("error %v is neither ErrInconsistent nor ErrUnknownEventType", err)
			}
		})
	}
}

// TestRollbackRestoresState: whatever is applied after Begin, Rollback returns to the state before.
func TestRollbackRestoresState(t *testing.T) {
	evs := sample()
	for split := 1; split < len(evs); split++ {
		st := foldAll(t, evs[:split])
		before := foldAll(t, evs[:split])
		st.Begin()
		for _, ev := range evs[split:] {
			if err := Apply(st, ev); err != nil {
				t.Fatal(err)
			}
		}
		st.Rollback()
		if !reflect.DeepEqual(st, before) {
			t.Fatalf("split %d: state after rollback differs from state before Begin", split)
		}
		// And the same events applied again give the full fold.
		for _, ev := range evs[split:] {
			if err := Apply(st, ev); err != nil {
				t.Fatal(err)
			}
		}
		if want := foldAll(t, evs); !reflect.DeepEqual(st, want) {
			t.Fatalf("split %d: re-applied state differs from a fold from scratch", split)
		}
	}
}
