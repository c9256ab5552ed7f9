package command

import (
	"context"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"

	"guestlist.dev/edge/certid"
	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/trust"
)

// CertificateAuthorityServer implements guestlist.v1.CertificateAuthorityService.
type CertificateAuthorityServer struct {
	guestlistv1.UnimplementedCertificateAuthorityServiceServer
	s *Service
}

// CertificateAuthorities returns the CertificateAuthorityService implementation.
func (s *Service) CertificateAuthorities() *CertificateAuthorityServer {
	return &CertificateAuthorityServer{s: s}
}

// CreateCertificateAuthority implements guestlistv1.CertificateAuthorityServiceServer.
func (cs *CertificateAuthorityServer) CreateCertificateAuthority(ctx context.Context, req *guestlistv1.CreateCertificateAuthorityRequest) (*guestlistv1.CertificateAuthority, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	if err := checkText("certificate_authority.display_name", req.GetCertificateAuthority().GetDisplayName()); err != nil {
		return nil, err
	}
	cert, err := trust.ParseCA(req.GetCertificateAuthority().GetCertificatePem(), cs.s.now())
	if err != nil {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "certificate_authority.certificate_pem", Reason: err.Error()})
	}
	id := req.GetCertificateAuthorityId()
	if id == "" {
		id = newID("ca-")
	}
	var digest []byte
	if req.GetRequestId() != "" {
		digest = caDigest(req.GetCertificateAuthorityId(), req.GetCertificateAuthority().GetDisplayName(), cert.Raw)
	}
	res, err := cs.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, req.GetRequestId()), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		if ref, ok, err := replayOf(st, req.GetRequestId(), fold.KindCertificateAuthority, "certificate authority", "", req.GetCertificateAuthorityId(), digest); err != nil || ok {
			return decision{result: caResult(ref.ID)}, err
		}
		if _, ok := st.CAs[id]; ok {
			return decision{}, apistatus.AlreadyExists("certificate authority", id)
		}
		return decision{
			events: []protoMessage{&eventsv1.CertificateAuthorityAdded{
				CertificateAuthorityId: id,
				DisplayName:            req.GetCertificateAuthority().GetDisplayName(),
				CertificateDer:         cert.Raw,
				FingerprintSha256:      certid.FingerprintSHA256(cert.Raw),
				RequestDigest:          digest,
			}},
			result: caResult(id),
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*guestlistv1.CertificateAuthority), nil
}

func caResult(id string) func(*fold.Tenant) (any, error) {
	return func(st *fold.Tenant) (any, error) {
		ca, ok := st.CAs[id]
		if !ok {
			return nil, apistatus.NotFound("certificate authority", id)
		}
		return renderCA(ca), nil
	}
}

// GetCertificateAuthority implements guestlistv1.CertificateAuthorityServiceServer.
func (cs *CertificateAuthorityServer) GetCertificateAuthority(ctx context.Context, req *guestlistv1.GetCertificateAuthorityRequest) (*guestlistv1.CertificateAuthority, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	var out *guestlistv1.CertificateAuthority
	err := cs.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		r, err := caResult(req.GetCertificateAuthorityId())(st)
		if err == nil {
			out = r.(*guestlistv1.CertificateAuthority)
		}
		return err
	})
	return out, err
}

// ListCertificateAuthorities implements guestlistv1.CertificateAuthorityServiceServer.
func (cs *CertificateAuthorityServer) ListCertificateAuthorities(ctx context.Context, req *guestlistv1.ListCertificateAuthoritiesRequest) (*guestlistv1.ListCertificateAuthoritiesResponse, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	out := &guestlistv1.ListCertificateAuthoritiesResponse{}
	err := cs.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		keys, next, err := page(st.CAs, "certificateAuthorities/"+req.GetTenantId(), req.GetPageToken(), req.GetPageSize())
		for _, k := range keys {
			out.CertificateAuthorities = append(out.CertificateAuthorities, renderCA(st.CAs[k]))
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

// DeleteCertificateAuthority implements guestlistv1.CertificateAuthorityServiceServer.
func (cs *CertificateAuthorityServer) DeleteCertificateAuthority(ctx context.Context, req *guestlistv1.DeleteCertificateAuthorityRequest) (*emptypb.Empty, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	id := req.GetCertificateAuthorityId()
	_, err = cs.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, ""), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		ca, ok := st.CAs[id]
		if !ok {
			return decision{}, apistatus.NotFound("certificate authority", id)
		}
		if err := checkEtag("certificate authority", id, req.GetEtag(), ca.Revision); err != nil {
			return decision{}, err
		}
		for _, h := range sortedHostnames(st) {
			if slices.Contains(h.CertificateAuthorityIDs, id) {
				return decision{}, apistatus.FailedPrecondition("certificate_authority_id", "certificate authority is trusted by hostname "+h.Name+"; remove it from the hostname first")
			}
		}
		return decision{events: []protoMessage{&eventsv1.CertificateAuthorityRemoved{CertificateAuthorityId: id}}, result: emptyResult}, nil
	})
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// checkEtag fails with ABORTED when the client's etag is set and is not the current one.
func checkEtag(kind, id, given string, rev uint64) error {
	if given != "" && given != etag(rev) {
		return apistatus.Aborted(kind, id, "etag "+given+" is stale; the current etag is "+etag(rev))
	}
	return nil
}

func sortedHostnames(st *fold.Tenant) []*fold.Hostname {
	out := make([]*fold.Hostname, 0, len(st.Hostnames))
	for _, h := range st.Hostnames {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b *fold.Hostname) int { return strings.Compare(a.Name, b.Name) })
	return out
}
