package command

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
)

// TestAuthenticateMapsOnlyKnownRoles: a token whose stored role is neither ROLE_TENANT_ADMIN nor
// ROLE_AUDITOR (none, or one a newer version wrote) authenticates nobody, rather than a tenant
// admin; the API refuses such roles, so the tokens are written to the store directly.
func TestAuthenticateMapsOnlyKnownRoles(t *testing.T) {
	s, store := newService(t, 0)
	createTenants(t, s, "acme")
	// The platform's stream begins as the API begins it.
	if _, err := store.Append(context.Background(), platformStream, eventstore.NoStream(), encodeAll(platformPrelude(&fold.Tenant{}), eventstore.Metadata{})...); err != nil {
		t.Fatal(err)
	}
	secret := strings.Repeat("ab", 32)
	sum := sha256.Sum256([]byte(secret))
	for _, tc := range []struct {
		name     string
		tenant   string
		role     eventsv1.Role
		want     auth.Role
		wantCode codes.Code
	}{
		{"ok/tenant admin", "acme", eventsv1.Role_ROLE_TENANT_ADMIN, auth.RoleTenantAdmin, codes.OK},
		{"ok/auditor", "acme", eventsv1.Role_ROLE_AUDITOR, auth.RoleAuditor, codes.OK},
		{"ok/platform auditor", "-", eventsv1.Role_ROLE_AUDITOR, auth.RoleAuditor, codes.OK},
		{"fail/no role", "acme", eventsv1.Role_ROLE_UNSPECIFIED, auth.RoleNone, codes.Unauthenticated},
		{"fail/unknown role", "acme", eventsv1.Role(7), auth.RoleNone, codes.Unauthenticated},
		{"fail/platform tenant admin", "-", eventsv1.Role_ROLE_TENANT_ADMIN, auth.RoleNone, codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tokenID := strings.NewReplacer("/", "-", " ", "-").Replace(tc.name)
			stream := fold.TenantStream(tc.tenant)
			if tc.tenant == platformAPIID {
				stream = platformStream
			}
			if _, err := store.Append(context.Background(), stream, eventstore.Any(),
				encodeAll([]proto.Message{&eventsv1.TokenCreated{TokenId: tokenID, DisplayName: "t", Role: tc.role, SecretSha256: sum[:]}}, eventstore.Metadata{})...); err != nil {
				t.Fatal(err)
			}
			p, err := s.Authenticate(context.Background(), tenantTokenPrefix+tc.tenant+"."+tokenID+"."+secret)
			if status.Code(err) != tc.wantCode {
				t.Fatalf("Authenticate: %v (principal %+v); want %v", err, p, tc.wantCode)
			}
			if err == nil && (p.Role != tc.want || p.TokenID != tokenID) {
				t.Fatalf("principal %+v; want role %v, token %q", p, tc.want, tokenID)
			}
		})
	}
}
