package command

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
)

// TenantServer implements guestlist.v1.TenantService.
type TenantServer struct {
	guestlistv1.UnimplementedTenantServiceServer
	s *Service
}

// Tenants returns the TenantService implementation.
func (s *Service) Tenants() *TenantServer { return &TenantServer{s: s} }

// CreateTenant implements guestlistv1.TenantServiceServer.
func (ts *TenantServer) CreateTenant(ctx context.Context, req *guestlistv1.CreateTenantRequest) (*guestlistv1.Tenant, error) {
	p, err := auth.AuthorizeAdmin(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetTenantId() == "" {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "tenant_id", Reason: "required"})
	}
	s := ts.s
	res, err := s.execute(ctx, req.GetTenantId(), metadata(ctx, p, req.GetRequestId()), func(st *fold.Tenant) (decision, error) {
		if st.Exists {
			if replayed(st, req.GetRequestId(), fold.KindTenant) {
				return decision{result: func(st *fold.Tenant) (any, error) { return renderTenant(st), nil }}, nil
			}
			return decision{}, apistatus.AlreadyExists("tenant", st.ID)
		}
		return decision{
			events: []protoMessage{&eventsv1.TenantCreated{TenantId: req.GetTenantId(), DisplayName: req.GetTenant().GetDisplayName()}},
			result: func(st *fold.Tenant) (any, error) { return renderTenant(st), nil },
		}, nil
	})
	if err != nil {
		return nil, err
	}
	s.directory.add(req.GetTenantId())
	return res.(*guestlistv1.Tenant), nil
}

// GetTenant implements guestlistv1.TenantServiceServer.
func (ts *TenantServer) GetTenant(ctx context.Context, req *guestlistv1.GetTenantRequest) (*guestlistv1.Tenant, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	var out *guestlistv1.Tenant
	err := ts.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if !st.Exists {
			return apistatus.NotFound("tenant", req.GetTenantId())
		}
		out = renderTenant(st)
		return nil
	})
	return out, err
}

// ListTenants implements guestlistv1.TenantServiceServer. Only the platform operator and
// all-tenant auditors may list tenants.
func (ts *TenantServer) ListTenants(ctx context.Context, req *guestlistv1.ListTenantsRequest) (*guestlistv1.ListTenantsResponse, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	}
	if p.Role != auth.RoleAdmin && (p.Role != auth.RoleAuditor || p.TenantID != "") {
		return nil, status.Error(codes.PermissionDenied, "permission denied")
	}
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if err := ts.s.directory.sync(ctx); err != nil {
		return nil, err
	}
	ids, next := ts.s.directory.page(after, pageSize(req.GetPageSize()))
	out := &guestlistv1.ListTenantsResponse{}
	if next {
		out.NextPageToken = encodePageToken(ids[len(ids)-1])
	}
	for _, id := range ids {
		err := ts.s.read(ctx, id, func(st *fold.Tenant) error {
			if st.Exists {
				out.Tenants = append(out.Tenants, renderTenant(st))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// replayed reports whether requestID already created a resource of kind in st.
func replayed(st *fold.Tenant, requestID string, kind fold.Kind) bool {
	if requestID == "" {
		return false
	}
	for _, r := range st.RequestRefs(requestID) {
		if r.Kind == kind {
			return true
		}
	}
	return false
}

// replayedRef returns the resource of kind that requestID created, if any.
func replayedRef(st *fold.Tenant, requestID string, kind fold.Kind) (fold.Ref, bool) {
	if requestID == "" {
		return fold.Ref{}, false
	}
	for _, r := range st.RequestRefs(requestID) {
		if r.Kind == kind {
			return r, true
		}
	}
	return fold.Ref{}, false
}

// replayOf is replayedRef for a create whose client chose the resource's id (wantID; "" when the
// server chooses) under parent (the CA of a revocation; "" otherwise): a request id that created
// another resource is INVALID_ARGUMENT rather than a silent answer with that resource, since the
// caller is not repeating that request.
func replayOf(st *fold.Tenant, requestID string, kind fold.Kind, what, parent, wantID string) (fold.Ref, bool, error) {
	ref, ok := replayedRef(st, requestID, kind)
	if !ok || wantID == "" || ref.ID == wantID && ref.Parent == parent {
		return ref, ok, nil
	}
	return fold.Ref{}, false, apistatus.InvalidArgument(apistatus.Violation{Field: "request_id", Reason: fmt.Sprintf("already used to create %s %q; a request id names one request: use another one for another %s", what, ref.ID, what)})
}

// requireTenant fails with NOT_FOUND when the tenant does not exist. Only callers allowed to act on
// the tenant reach it, so the answer reveals nothing to others.
func requireTenant(st *fold.Tenant) error {
	if !st.Exists {
		return apistatus.NotFound("tenant", st.ID)
	}
	return nil
}
