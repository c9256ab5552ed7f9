// Package auth defines who is calling the API (Principal), how a bearer token becomes a Principal
// (Authenticator), and what each principal may do (the Authorize helpers). Failures are gRPC
// statuses: UNAUTHENTICATED for a missing or unknown token, PERMISSION_DENIED for a valid token
// acting outside its tenant or role. A PERMISSION_DENIED answer never depends on whether the other
// tenant's resource exists.
package auth

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Role is what a principal may do.
type Role uint8

const (
	// RoleNone is the zero Role; it may do nothing.
	RoleNone Role = iota
	// RoleAdmin is the platform operator: everything, every tenant.
	RoleAdmin
	// RoleTenantAdmin reads and writes one tenant.
	RoleTenantAdmin
	// RoleAuditor reads one tenant (or every tenant when TenantID is empty).
	RoleAuditor
	// RoleEdge is an edge node: it may watch the edge configuration and nothing else.
	RoleEdge
)

// String implements fmt.Stringer.
func (r Role) String() string {
	switch r {
	case RoleAdmin:
		return "admin"
	case RoleTenantAdmin:
		return "tenant-admin"
	case RoleAuditor:
		return "auditor"
	case RoleEdge:
		return "edge"
	default:
		return "none"
	}
}

// Principal is an authenticated caller.
type Principal struct {
	// Role is what the caller may do.
	Role Role
	// TenantID is the tenant the caller is bound to; empty for the admin (and all-tenant auditors).
	TenantID string
	// TokenID identifies the token used; empty for the admin token.
	TokenID string
}

// Actor is the name recorded in event metadata for changes made by p.
func (p Principal) Actor() string {
	switch p.Role {
	case RoleAdmin:
		return "admin"
	case RoleEdge:
		return "edge"
	}
	return "token:" + p.TenantID + "/" + p.TokenID
}

// Authenticator turns a bearer token into a Principal. It returns an error with code
// UNAUTHENTICATED for unknown, malformed or revoked tokens.
type Authenticator interface {
	Authenticate(ctx context.Context, bearerToken string) (Principal, error)
}

type principalKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal in ctx, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// errDenied is the one answer for every authorization failure, so that it reveals nothing about
// other tenants' resources.
var errDenied = status.Error(codes.PermissionDenied, "permission denied")

// errUnauthenticated is returned when no principal is in the context.
var errUnauthenticated = status.Error(codes.Unauthenticated, "missing or invalid bearer token")

// AuthorizeAdmin allows only the platform operator.
func AuthorizeAdmin(ctx context.Context) (Principal, error) {
	p, ok := FromContext(ctx)
	if !ok {
		return Principal{}, errUnauthenticated
	}
	if p.Role != RoleAdmin {
		return p, errDenied
	}
	return p, nil
}

// AuthorizeRead allows principals that may read tenantID: the admin, the tenant's own tokens, and
// all-tenant auditors.
func AuthorizeRead(ctx context.Context, tenantID string) (Principal, error) {
	p, ok := FromContext(ctx)
	if !ok {
		return Principal{}, errUnauthenticated
	}
	switch p.Role {
	case RoleAdmin:
		return p, nil
	case RoleTenantAdmin, RoleAuditor:
		if p.TenantID == tenantID || (p.Role == RoleAuditor && p.TenantID == "") {
			return p, nil
		}
	}
	return p, errDenied
}

// AuthorizeWrite allows principals that may change tenantID: the admin and the tenant's admins.
func AuthorizeWrite(ctx context.Context, tenantID string) (Principal, error) {
	p, ok := FromContext(ctx)
	if !ok {
		return Principal{}, errUnauthenticated
	}
	switch p.Role {
	case RoleAdmin:
		return p, nil
	case RoleTenantAdmin:
		if p.TenantID == tenantID {
			return p, nil
		}
	}
	return p, errDenied
}

// AuthorizeEdge allows edge nodes (and the platform operator) to watch the edge configuration.
func AuthorizeEdge(ctx context.Context) (Principal, error) {
	p, ok := FromContext(ctx)
	if !ok {
		return Principal{}, errUnauthenticated
	}
	if p.Role != RoleEdge && p.Role != RoleAdmin {
		return p, errDenied
	}
	return p, nil
}
