package server

import (
	"errors"
	"testing"

	"buf.build/go/protovalidate"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// TestViolationsNameRequiredOneofFields: a required oneof left empty is named by the fields a user
// can set, not by protovalidate's "exactly one field is required in oneof" (a new user's review:
// a revocation without serialNumber or fingerprintSha256). Other violations keep their messages.
func TestViolationsNameRequiredOneofFields(t *testing.T) {
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		req         *guestlistv1.CreateRevocationRequest
		field, want string
	}{
		{
			name:  "fail/neither serial nor fingerprint",
			req:   &guestlistv1.CreateRevocationRequest{TenantId: "acme", CertificateAuthorityId: "devices", Revocation: &guestlistv1.Revocation{}},
			field: "revocation.target", want: "one of serialNumber or fingerprintSha256 is required",
		},
		{
			name:  "fail/a serial that is not hex keeps its own message",
			req:   &guestlistv1.CreateRevocationRequest{TenantId: "acme", CertificateAuthorityId: "devices", Revocation: &guestlistv1.Revocation{Target: &guestlistv1.Revocation_SerialNumber{SerialNumber: "xyz"}}},
			field: "revocation.serial_number", want: "does not match regex pattern `^[0-9A-Fa-f:]{1,128}$`",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var verr *protovalidate.ValidationError
			if err := v.Validate(tc.req); !errors.As(err, &verr) {
				t.Fatalf("Validate = %v, want a ValidationError", err)
			}
			br := badRequestOf(t, violationsError(tc.req.ProtoReflect().Descriptor(), verr))
			if vs := br.GetFieldViolations(); len(vs) != 1 || vs[0].GetField() != tc.field || vs[0].GetDescription() != tc.want {
				t.Errorf("violations = %v, want %s: %s", vs, tc.field, tc.want)
			}
		})
	}
}
