package command

import (
	"context"
	"maps"

	"google.golang.org/protobuf/types/known/emptypb"

	"guestlist.dev/edge/certid"
	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
)

// RevocationServer implements guestlist.v1.RevocationService.
type RevocationServer struct {
	guestlistv1.UnimplementedRevocationServiceServer
	s *Service
}

// Revocations returns the RevocationService implementation.
func (s *Service) Revocations() *RevocationServer { return &RevocationServer{s: s} }

// CreateRevocation implements guestlistv1.RevocationServiceServer.
func (rs *RevocationServer) CreateRevocation(ctx context.Context, req *guestlistv1.CreateRevocationRequest) (*guestlistv1.Revocation, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	ev := &eventsv1.RevocationAdded{CertificateAuthorityId: req.GetCertificateAuthorityId(), Reason: req.GetRevocation().GetReason()}
	switch t := req.GetRevocation().GetTarget().(type) {
	case *guestlistv1.Revocation_SerialNumber:
		s, err := certid.NormalizeSerial(t.SerialNumber)
		if err != nil {
			return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "revocation.serial_number", Reason: err.Error()})
		}
		ev.Target = &eventsv1.RevocationAdded_SerialNumber{SerialNumber: s}
	case *guestlistv1.Revocation_FingerprintSha256:
		f, err := certid.NormalizeFingerprint(t.FingerprintSha256)
		if err != nil {
			return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "revocation.fingerprint_sha256", Reason: err.Error()})
		}
		ev.Target = &eventsv1.RevocationAdded_FingerprintSha256{FingerprintSha256: f}
	default:
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "revocation.target", Reason: "exactly one of serial_number or fingerprint_sha256 is required"})
	}
	if err := checkText("revocation.reason", ev.GetReason()); err != nil {
		return nil, err
	}
	if req.GetRequestId() != "" {
		ev.RequestDigest = revocationDigest(req.GetRevocationId(), ev)
	}
	ev.RevocationId = req.GetRevocationId()
	if ev.RevocationId == "" {
		ev.RevocationId = newID("rev-")
	}
	ca := req.GetCertificateAuthorityId()
	res, err := rs.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, req.GetRequestId()), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		if ref, ok, err := replayOf(st, req.GetRequestId(), fold.KindRevocation, "revocation", ca, req.GetRevocationId(), ev.GetRequestDigest()); err != nil || ok {
			return decision{result: revocationResult(ref.Parent, ref.ID)}, err
		}
		if _, ok := st.CAs[ca]; !ok {
			return decision{}, apistatus.NotFound("certificate authority", ca)
		}
		if _, ok := st.Revocations[fold.RevocationKey{CA: ca, ID: ev.RevocationId}]; ok {
			return decision{}, apistatus.AlreadyExists("revocation", ev.RevocationId)
		}
		return decision{events: []protoMessage{ev}, result: revocationResult(ca, ev.RevocationId)}, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*guestlistv1.Revocation), nil
}

func revocationResult(ca, id string) func(*fold.Tenant) (any, error) {
	return func(st *fold.Tenant) (any, error) {
		r, ok := st.Revocations[fold.RevocationKey{CA: ca, ID: id}]
		if !ok {
			return nil, apistatus.NotFound("revocation", id)
		}
		return renderRevocation(r), nil
	}
}

// ListRevocations implements guestlistv1.RevocationServiceServer.
func (rs *RevocationServer) ListRevocations(ctx context.Context, req *guestlistv1.ListRevocationsRequest) (*guestlistv1.ListRevocationsResponse, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	out := &guestlistv1.ListRevocationsResponse{}
	err := rs.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		ca := req.GetCertificateAuthorityId()
		if _, ok := st.CAs[ca]; !ok {
			return apistatus.NotFound("certificate authority", ca)
		}
		byID := maps.Collect(st.RevocationsUnder(ca))
		keys, next, err := page(byID, "revocations/"+req.GetTenantId()+"/"+ca, req.GetPageToken(), req.GetPageSize())
		for _, k := range keys {
			out.Revocations = append(out.Revocations, renderRevocation(byID[k]))
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

// DeleteRevocation implements guestlistv1.RevocationServiceServer.
func (rs *RevocationServer) DeleteRevocation(ctx context.Context, req *guestlistv1.DeleteRevocationRequest) (*emptypb.Empty, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	k := fold.RevocationKey{CA: req.GetCertificateAuthorityId(), ID: req.GetRevocationId()}
	_, err = rs.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, ""), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		if _, ok := st.Revocations[k]; !ok {
			return decision{}, apistatus.NotFound("revocation", k.ID)
		}
		return decision{events: []protoMessage{&eventsv1.RevocationRemoved{RevocationId: k.ID, CertificateAuthorityId: k.CA}}, result: emptyResult}, nil
	})
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
