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
	if err := checkText("tenant.display_name", req.GetTenant().GetDisplayName()); err != nil {
		return nil, err
	}
	var digest []byte
	if req.GetRequestId() != "" {
		digest = tenantDigest(req.GetTenant().GetDisplayName())
	}
	s := ts.s
	res, err := s.execute(ctx, req.GetTenantId(), metadata(ctx, p, req.GetRequestId()), func(st *fold.Tenant) (decision, error) {
		if st.Exists {
			if _, ok, err := replayOf(st, req.GetRequestId(), fold.KindTenant, "tenant", "", "", digest); err != nil || ok {
				return decision{result: func(st *fold.Tenant) (any, error) { return renderTenant(st), nil }}, err
			}
			return decision{}, apistatus.AlreadyExists("tenant", st.ID)
		}
		return decision{
			events: []protoMessage{&eventsv1.TenantCreated{TenantId: req.GetTenantId(), DisplayName: req.GetTenant().GetDisplayName(), RequestDigest: digest}},
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
	after, err := decodePageToken("tenants", req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if err := ts.s.directory.sync(ctx); err != nil {
		return nil, err
	}
	ids, next := ts.s.directory.page(after, pageSize(req.GetPageSize()))
	out := &guestlistv1.ListTenantsResponse{}
	if next {
		out.NextPageToken = encodePageToken("tenants", ids[len(ids)-1])
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

// replayOf looks requestID up in st for a create of a resource of kind whose request has the
// request digest digest (see digest.go). It returns the resource of kind that the request id
// created, when this create repeats that request: nothing new is then written, and the caller
// answers with that resource. A request id that was used for a different request is
// INVALID_ARGUMENT naming request_id, since the caller is not repeating that request and a silent
// answer with the first resource would tell it that its create happened: a request id that created
// another resource (wantID, the client-chosen id, differs; "" when the server chooses the id; or
// parent, the CA of a revocation, differs), or whose creating event recorded another digest, or
// that created a resource of another kind. An event without a digest (written by a version before
// request digests) is answered as before: with its resource, when the ids allow it.
//
// Request ids are per tenant: st is the history of the tenant the caller may write to, so the
// answer says nothing about other tenants' request ids.
func replayOf(st *fold.Tenant, requestID string, kind fold.Kind, what, parent, wantID string, digest []byte) (fold.Ref, bool, error) {
	refs, err := replayRefs(st, requestID, kind, digest, func(ref fold.Ref) error {
		if wantID == "" || ref.ID == wantID && ref.Parent == parent {
			return nil
		}
		return apistatus.InvalidArgument(apistatus.Violation{Field: "request_id", Reason: fmt.Sprintf("already used to create %s %q; a request id names one request: use another one for another %s", what, ref.ID, what)})
	})
	if err != nil || len(refs) == 0 {
		return fold.Ref{}, false, err
	}
	return refs[0], true, nil
}

// replayRefs is replayOf for creates of several resources (a batch of hostnames): the resources of
// kind that requestID created, in order, when this create (of request digest digest) repeats that
// request; nil when the request id created nothing. checkIDs, when not nil, checks the first of
// them before the digest is compared (for a more precise error).
func replayRefs(st *fold.Tenant, requestID string, kind fold.Kind, digest []byte, checkIDs func(fold.Ref) error) ([]fold.Ref, error) {
	if requestID == "" {
		return nil, nil
	}
	all := st.RequestRefs(requestID)
	var refs []fold.Ref
	for _, r := range all {
		if r.Kind == kind {
			refs = append(refs, r)
		}
	}
	if len(refs) == 0 {
		for _, r := range all {
			if r.Digest != "" {
				return nil, errOtherRequest
			}
		}
		return nil, nil
	}
	if checkIDs != nil {
		if err := checkIDs(refs[0]); err != nil {
			return nil, err
		}
	}
	for _, r := range refs {
		if r.Digest != "" && r.Digest != string(digest) {
			return nil, errOtherRequest
		}
	}
	return refs, nil
}

// errOtherRequest refuses a create whose request id was used for a different request. It says
// nothing about that request: the caller may only learn that it differs.
var errOtherRequest = apistatus.InvalidArgument(apistatus.Violation{Field: "request_id", Reason: "already used for a different request (another method, resource id or content); a request id names one request: repeat it only with the same request, or use a new request id for a new one"})

// requireTenant fails with NOT_FOUND when the tenant does not exist. Only callers allowed to act on
// the tenant reach it, so the answer reveals nothing to others.
func requireTenant(st *fold.Tenant) error {
	if !st.Exists {
		return apistatus.NotFound("tenant", st.ID)
	}
	return nil
}
