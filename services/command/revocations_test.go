package command

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/edge/pkitest"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// TestListRevocationsOfOneCA: ListRevocations gives the revocations filed under the CA asked for,
// all of them over its pages, in id order, and none of the tenant's other CAs or of another
// tenant's CA of the same id.
func TestListRevocationsOfOneCA(t *testing.T) {
	s, _ := newService(t, 0)
	createTenants(t, s, "acme", "globex")
	for _, tenant := range []string{"acme", "globex"} {
		for _, ca := range []string{"devices", "partners"} {
			pemCA := pkitest.PEM(pkitest.NewCA(t, tenant+" "+ca).Cert)
			if _, err := s.CertificateAuthorities().CreateCertificateAuthority(admin, &guestlistv1.CreateCertificateAuthorityRequest{TenantId: tenant, CertificateAuthorityId: ca, CertificateAuthority: &guestlistv1.CertificateAuthority{CertificatePem: pemCA}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var want []string
	add := func(tenant, ca string, i int) string {
		id := fmt.Sprintf("%s-%s-%03d", tenant[:1], ca[:1], i)
		if _, err := s.Revocations().CreateRevocation(admin, &guestlistv1.CreateRevocationRequest{TenantId: tenant, CertificateAuthorityId: ca, RevocationId: id,
			Revocation: &guestlistv1.Revocation{Target: &guestlistv1.Revocation_SerialNumber{SerialNumber: fmt.Sprintf("%x", i+1)}}}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	for i := range 25 {
		want = append(want, add("acme", "devices", i))
		add("acme", "partners", i)
		add("globex", "devices", i)
	}
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		resp, err := s.Revocations().ListRevocations(admin, &guestlistv1.ListRevocationsRequest{TenantId: "acme", CertificateAuthorityId: "devices", PageSize: 10, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetRevocations() {
			got = append(got, r.GetRevocationId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
		if pages > 5 {
			t.Fatal("more pages than revocations")
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	_, err := s.Revocations().ListRevocations(admin, &guestlistv1.ListRevocationsRequest{TenantId: "acme", CertificateAuthorityId: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("unknown CA: %v, want NotFound", err)
	}
}
