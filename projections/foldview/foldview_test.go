package foldview

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

func TestSnapshot(t *testing.T) {
	st := fold.NewTenant("acme")
	if s := Snapshot(st); s.GetTenant() != nil || s.GetPosition() != 0 {
		t.Fatalf("snapshot before creation: %v", s)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, m := range []proto.Message{
		&eventsv1.TenantCreated{TenantId: "acme", DisplayName: "Acme"},
		&eventsv1.TokenCreated{TokenId: "tok", Role: eventsv1.Role_ROLE_AUDITOR, SecretSha256: []byte("secret-hash")},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca-b", CertificateDer: []byte("x"), FingerprintSha256: "ab"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca-a", CertificateDer: []byte("y"), FingerprintSha256: "cd"},
		&eventsv1.RevocationAdded{CertificateAuthorityId: "ca-b", RevocationId: "r1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "1f"}},
		&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://o", Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca-b"}}, State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE},
	} {
		data, _ := proto.Marshal(m)
		if err := fold.Apply(st, fold.Event{Type: fold.TypeOf(m), Data: data, Revision: uint64(i), Position: uint64(10 + i), Time: t0.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	s := Snapshot(st)
	if s.GetPosition() != 15 || !s.GetTime().AsTime().Equal(t0.Add(5*time.Second)) || s.GetTenant().GetDisplayName() != "Acme" {
		t.Errorf("header: %v", s)
	}
	if len(s.GetTokens()) != 1 || s.GetTokens()[0].GetSecret() != "" || s.GetTokens()[0].GetRole() != guestlistv1.Role_ROLE_AUDITOR {
		t.Errorf("tokens: %v", s.GetTokens())
	}
	if len(s.GetCertificateAuthorities()) != 2 || s.GetCertificateAuthorities()[0].GetCertificateAuthorityId() != "ca-a" {
		t.Errorf("CAs not sorted: %v", s.GetCertificateAuthorities())
	}
	if len(s.GetRevocations()) != 1 || s.GetRevocations()[0].GetCertificateAuthorityId() != "ca-b" || s.GetRevocations()[0].GetRevocation().GetSerialNumber() != "1f" {
		t.Errorf("revocations: %v", s.GetRevocations())
	}
	if len(s.GetHostnames()) != 1 || s.GetHostnames()[0].GetEtag() != "5" || s.GetHostnames()[0].GetState() != guestlistv1.Hostname_STATE_ACTIVE {
		t.Errorf("hostnames: %v", s.GetHostnames())
	}
}
