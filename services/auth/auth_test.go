package auth

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestAuthorize(t *testing.T) {
	admin := Principal{Role: RoleAdmin}
	acmeAdmin := Principal{Role: RoleTenantAdmin, TenantID: "acme", TokenID: "t1"}
	acmeAuditor := Principal{Role: RoleAuditor, TenantID: "acme", TokenID: "t2"}
	globalAuditor := Principal{Role: RoleAuditor}
	edge := Principal{Role: RoleEdge}
	none := Principal{}
	type check func(context.Context) (Principal, error)
	read := func(ctx context.Context) (Principal, error) { return AuthorizeRead(ctx, "acme") }
	write := func(ctx context.Context) (Principal, error) { return AuthorizeWrite(ctx, "acme") }
	tests := []struct {
		name string
		p    *Principal
		fn   check
		want codes.Code
	}{
		{"ok/admin reads", &admin, read, codes.OK},
		{"ok/admin writes", &admin, write, codes.OK},
		{"ok/tenant admin reads own", &acmeAdmin, read, codes.OK},
		{"ok/tenant admin writes own", &acmeAdmin, write, codes.OK},
		{"ok/auditor reads own", &acmeAuditor, read, codes.OK},
		{"ok/global auditor reads", &globalAuditor, read, codes.OK},
		{"ok/edge watches", &edge, AuthorizeEdge, codes.OK},
		{"fail/auditor writes", &acmeAuditor, write, codes.PermissionDenied},
		{"fail/global auditor writes", &globalAuditor, write, codes.PermissionDenied},
		{"fail/tenant admin reads another tenant", &acmeAdmin, func(ctx context.Context) (Principal, error) { return AuthorizeRead(ctx, "globex") }, codes.PermissionDenied},
		{"fail/tenant admin writes another tenant", &acmeAdmin, func(ctx context.Context) (Principal, error) { return AuthorizeWrite(ctx, "globex") }, codes.PermissionDenied},
		{"fail/tenant admin with empty tenant id reads", &Principal{Role: RoleTenantAdmin}, read, codes.PermissionDenied},
		{"fail/tenant admin is not admin", &acmeAdmin, AuthorizeAdmin, codes.PermissionDenied},
		{"fail/edge reads a tenant", &edge, read, codes.PermissionDenied},
		{"fail/edge writes", &edge, write, codes.PermissionDenied},
		{"fail/tenant watches edge config", &acmeAdmin, AuthorizeEdge, codes.PermissionDenied},
		{"fail/zero principal reads", &none, read, codes.PermissionDenied},
		{"fail/no principal", nil, read, codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.p != nil {
				ctx = NewContext(ctx, *tt.p)
			}
			_, err := tt.fn(ctx)
			if got := status.Code(err); got != tt.want {
				t.Errorf("code %v, want %v (%v)", got, tt.want, err)
			}
		})
	}
}
