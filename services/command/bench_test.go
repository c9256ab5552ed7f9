package command

import (
	"fmt"
	"testing"

	"guestlist.dev/edge/pkitest"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// BenchmarkCustomerEndpoint adds one customer endpoint per iteration to one tenant through the
// command service on a real bbolt store: its root CA, a hostname trusting it in ENFORCE mode, and a
// revocation under it. The time per endpoint should not grow with the tenant: compare
// -benchtime 1000x with 10000x.
//
//	go test -run XXX -bench CustomerEndpoint -benchtime 10000x guestlist.dev/services/command
func BenchmarkCustomerEndpoint(b *testing.B) {
	s, _ := newService(b, 0)
	createTenants(b, s, "big")
	const distinct = 64 // CA certificates made up front, each uploaded under many ids
	pems := make([]string, distinct)
	for i := range pems {
		pems[i] = pkitest.PEM(pkitest.NewCA(b, fmt.Sprintf("Customer %d Root", i)).Cert)
	}
	b.ResetTimer()
	for i := range b.N {
		ca := fmt.Sprintf("ca-%d", i)
		if _, err := s.CertificateAuthorities().CreateCertificateAuthority(admin, &guestlistv1.CreateCertificateAuthorityRequest{TenantId: "big", CertificateAuthorityId: ca, CertificateAuthority: &guestlistv1.CertificateAuthority{CertificatePem: pems[i%distinct]}}); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Hostnames().CreateHostname(admin, &guestlistv1.CreateHostnameRequest{TenantId: "big", Hostname: &guestlistv1.Hostname{
			Hostname: fmt.Sprintf("pay.customer%d.example.com", i), OriginUrl: "http://o.example",
			Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{ca}},
		}}); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Revocations().CreateRevocation(admin, &guestlistv1.CreateRevocationRequest{TenantId: "big", CertificateAuthorityId: ca,
			Revocation: &guestlistv1.Revocation{Target: &guestlistv1.Revocation_SerialNumber{SerialNumber: fmt.Sprintf("%x", i+1)}}}); err != nil {
			b.Fatal(err)
		}
	}
}
