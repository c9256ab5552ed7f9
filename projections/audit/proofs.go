package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/ledger"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
)

// maxSizesNamed bounds how many checkpoint sizes a FAILED_PRECONDITION names (the newest ones).
const maxSizesNamed = 20

// exactEvent renders a stored event as ExportEvents sends it: its payload a
// google.protobuf.BytesValue of the bytes exactly as stored, and the chain hash hash.
func exactEvent(ev eventstore.RecordedEvent, hash [32]byte) (*guestlistv1.AuditEvent, error) {
	data, err := anypb.New(wrapperspb.Bytes(ev.Data))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "audit: wrap the event at position %d: %v", ev.Position, err)
	}
	return &guestlistv1.AuditEvent{
		Position: uint64(ev.Position), Revision: ev.Revision, Type: ev.Type, Time: timestamppb.New(ev.Time),
		Actor: ev.Metadata.Actor, RequestId: ev.Metadata.RequestID, Data: data, Hash: ledger.HashHex(hash),
	}, nil
}

// RecordedEvent returns the stored event an AuditEvent with exact bytes stands for (as
// ExportEvents and GetInclusionProof send it: its data a google.protobuf.BytesValue), so that
// ledger.Canonical recomputes its leaf. An event whose data is the decoded message is refused: its
// bytes are not exact.
func RecordedEvent(ae *guestlistv1.AuditEvent) (eventstore.RecordedEvent, error) {
	if ae == nil {
		return eventstore.RecordedEvent{}, errors.New("no event")
	}
	var b wrapperspb.BytesValue
	if ae.GetData() == nil || !ae.GetData().MessageIs(&b) {
		return eventstore.RecordedEvent{}, fmt.Errorf("event at revision %d: data is %q, not the exact bytes (google.protobuf.BytesValue)", ae.GetRevision(), ae.GetData().GetTypeUrl())
	}
	if err := ae.GetData().UnmarshalTo(&b); err != nil {
		return eventstore.RecordedEvent{}, fmt.Errorf("event at revision %d: data: %w", ae.GetRevision(), err)
	}
	if err := ae.GetTime().CheckValid(); err != nil {
		return eventstore.RecordedEvent{}, fmt.Errorf("event at revision %d: time: %w", ae.GetRevision(), err)
	}
	if err := ledger.CheckTime(ae.GetTime().AsTime()); err != nil {
		// Its canonical bytes would hold another time (2^64 ns away) than the one shown.
		return eventstore.RecordedEvent{}, fmt.Errorf("event at revision %d: time: %w", ae.GetRevision(), err)
	}
	return eventstore.RecordedEvent{
		Position: eventstore.Position(ae.GetPosition()), Revision: ae.GetRevision(), Type: ae.GetType(),
		Time: ae.GetTime().AsTime(), Data: b.GetValue(),
		Metadata: eventstore.Metadata{Actor: ae.GetActor(), RequestID: ae.GetRequestId()},
	}, nil
}

// signedAt returns the tenant's signed checkpoint of size size (0: the latest). A size without a
// signed checkpoint is FAILED_PRECONDITION naming the sizes that have one.
func (s *Service) signedAt(tenant string, size uint64, field string) (ledger.SignedCheckpoint, ledger.Checkpoint, error) {
	signed, err := s.ledger.Checkpoints(tenant)
	if err != nil && !errors.Is(err, ledger.ErrNotFound) {
		return "", ledger.Checkpoint{}, status.Errorf(codes.Unavailable, "audit: checkpoints of %q: %v", tenant, err)
	}
	if len(signed) == 0 {
		return "", ledger.Checkpoint{}, status.Errorf(codes.FailedPrecondition, "audit: tenant %q has no signed checkpoint yet; retry in a moment", tenant)
	}
	sizes := make([]string, 0, len(signed))
	for i, sc := range signed { // oldest first; usually the latest is asked for
		if size == 0 && i < len(signed)-1 {
			continue
		}
		cp, err := ledger.ParseCheckpoint(sc)
		if err != nil {
			return "", ledger.Checkpoint{}, status.Errorf(codes.Internal, "audit: checkpoint of %q: %v", tenant, err)
		}
		if size == 0 || cp.Size == size {
			return sc, cp, nil
		}
		sizes = append(sizes, strconv.FormatUint(cp.Size, 10))
	}
	named := strings.Join(sizes, ", ")
	if len(sizes) > maxSizesNamed {
		named = "..., " + strings.Join(sizes[len(sizes)-maxSizesNamed:], ", ")
	}
	return "", ledger.Checkpoint{}, status.Errorf(codes.FailedPrecondition,
		"audit: %s %d of tenant %q has no signed checkpoint; the sizes signed are %s (or 0: the latest)", field, size, tenant, named)
}

// proofError maps an error of the ledger's proof computation to a status.
func (s *Service) proofError(err error, tenant string) error {
	if errors.Is(err, eventstore.ErrStreamNotFound) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return s.storeError(err, tenant)
	}
	return status.Errorf(codes.Internal, "audit: proof for %q: %v", tenant, err)
}

// GetConsistencyProof returns the proof that the tenant's log at the signed checkpoint of to_size
// (0: the latest) extends its log at from_size, with that checkpoint. A to_size without a signed
// checkpoint is FAILED_PRECONDITION naming the sizes signed (never the nearest larger one: the
// caller gets exactly the size it asked for); so is a from_size beyond the latest checkpoint.
func (s *Service) GetConsistencyProof(ctx context.Context, req *guestlistv1.GetConsistencyProofRequest) (*guestlistv1.ConsistencyProof, error) {
	tenant := req.GetTenantId()
	if err := s.proofPrelude(ctx, tenant); err != nil {
		return nil, err
	}
	sc, cp, err := s.signedAt(tenant, req.GetToSize(), "to_size")
	if err != nil {
		return nil, err
	}
	if req.GetFromSize() > cp.Size {
		return nil, status.Errorf(codes.FailedPrecondition, "audit: from_size %d is beyond the signed checkpoint of tenant %q at size %d", req.GetFromSize(), tenant, cp.Size)
	}
	p, err := s.ledger.ConsistencyProof(ctx, tenant, req.GetFromSize(), cp.Size)
	if err != nil {
		return nil, s.proofError(err, tenant)
	}
	return &guestlistv1.ConsistencyProof{FromSize: req.GetFromSize(), ToSize: cp.Size, Hashes: p, Checkpoint: string(sc)}, nil
}

// GetInclusionProof returns the tenant's event at revision, with its exact bytes, and the proof
// that it is in the tenant's log at the signed checkpoint of size (0: the latest), with that
// checkpoint. A size without a signed checkpoint is FAILED_PRECONDITION naming the sizes signed; so
// is a revision the checkpoint does not cover.
func (s *Service) GetInclusionProof(ctx context.Context, req *guestlistv1.GetInclusionProofRequest) (*guestlistv1.InclusionProof, error) {
	tenant := req.GetTenantId()
	if err := s.proofPrelude(ctx, tenant); err != nil {
		return nil, err
	}
	sc, cp, err := s.signedAt(tenant, req.GetSize(), "size")
	if err != nil {
		return nil, err
	}
	if req.GetRevision() >= cp.Size {
		return nil, status.Errorf(codes.FailedPrecondition, "audit: revision %d is not covered by the signed checkpoint of tenant %q at size %d", req.GetRevision(), tenant, cp.Size)
	}
	evs, err := s.store.ReadStream(ctx, fold.TenantStream(tenant), eventstore.Forwards, req.GetRevision(), 1)
	if err != nil {
		return nil, s.storeError(err, tenant)
	}
	if len(evs) != 1 || evs[0].Revision != req.GetRevision() {
		return nil, status.Errorf(codes.Internal, "audit: tenant %q has no event at revision %d, which its checkpoint covers", tenant, req.GetRevision())
	}
	hash, err := s.ledger.ChainHash(tenant, req.GetRevision())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "audit: chain hash of %q at revision %d: %v", tenant, req.GetRevision(), err)
	}
	ae, err := exactEvent(evs[0], hash)
	if err != nil {
		return nil, err
	}
	p, err := s.ledger.InclusionProof(ctx, tenant, req.GetRevision(), cp.Size)
	if err != nil {
		return nil, s.proofError(err, tenant)
	}
	return &guestlistv1.InclusionProof{Revision: req.GetRevision(), Size: cp.Size, Hashes: p, Checkpoint: string(sc), Event: ae}, nil
}

// tenantExists answers NOT_FOUND for a tenant without history.
// proofPrelude is what both proof calls check first: the caller may read the tenant, this server
// has a ledger, and the tenant has a history.
func (s *Service) proofPrelude(ctx context.Context, tenant string) error {
	if _, err := auth.AuthorizeRead(ctx, tenant); err != nil {
		return err
	}
	if s.ledger == nil {
		return errNoLedger
	}
	return s.tenantExists(ctx, tenant)
}

func (s *Service) tenantExists(ctx context.Context, tenant string) error {
	if _, err := s.store.ReadStream(ctx, fold.TenantStream(tenant), eventstore.Forwards, 0, 1); err != nil {
		return s.storeError(err, tenant)
	}
	return nil
}

// VerifyConsistencyProof checks, with the checkpoint key pub alone, that p proves the log of the
// auditor's old signed checkpoint extended by the newer one p carries: both signatures, the same
// tenant, the sizes, and the RFC 6962 proof (ledger.VerifyConsistency). It returns the newer
// checkpoint.
func VerifyConsistencyProof(pub ed25519.PublicKey, old ledger.SignedCheckpoint, p *guestlistv1.ConsistencyProof) (ledger.Checkpoint, error) {
	older, err := ledger.VerifyCheckpoint(pub, old)
	if err != nil {
		return ledger.Checkpoint{}, fmt.Errorf("the old checkpoint: %w", err)
	}
	newer, err := ledger.VerifyCheckpoint(pub, ledger.SignedCheckpoint(p.GetCheckpoint()))
	if err != nil {
		return ledger.Checkpoint{}, fmt.Errorf("the new checkpoint: %w", err)
	}
	if newer.Tenant != older.Tenant {
		return ledger.Checkpoint{}, fmt.Errorf("%w: the new checkpoint is of tenant %q, the old of %q", ledger.ErrProof, newer.Tenant, older.Tenant)
	}
	if p.GetFromSize() != older.Size || p.GetToSize() != newer.Size {
		return ledger.Checkpoint{}, fmt.Errorf("%w: the proof is from size %d to %d, the checkpoints are of sizes %d and %d", ledger.ErrProof, p.GetFromSize(), p.GetToSize(), older.Size, newer.Size)
	}
	if err := ledger.VerifyConsistency(older, newer, p.GetHashes()); err != nil {
		return ledger.Checkpoint{}, err
	}
	return newer, nil
}

// VerifyInclusionProof checks, with the checkpoint key pub alone, that p proves its event to be the
// leaf at p.revision of tenant's log at the signed checkpoint p carries: the signature, the tenant,
// the sizes, the leaf recomputed from the event's exact bytes (ledger.Canonical) and the RFC 6962
// proof (ledger.VerifyInclusion). It returns the checkpoint.
func VerifyInclusionProof(pub ed25519.PublicKey, tenant string, p *guestlistv1.InclusionProof) (ledger.Checkpoint, error) {
	cp, err := ledger.VerifyCheckpoint(pub, ledger.SignedCheckpoint(p.GetCheckpoint()))
	if err != nil {
		return ledger.Checkpoint{}, fmt.Errorf("the checkpoint: %w", err)
	}
	if cp.Tenant != tenant {
		return ledger.Checkpoint{}, fmt.Errorf("%w: the checkpoint is of tenant %q, not %q", ledger.ErrProof, cp.Tenant, tenant)
	}
	if p.GetSize() != cp.Size || p.GetEvent().GetRevision() != p.GetRevision() {
		return ledger.Checkpoint{}, fmt.Errorf("%w: proof of revision %d at size %d, event at revision %d, checkpoint of size %d", ledger.ErrProof, p.GetRevision(), p.GetSize(), p.GetEvent().GetRevision(), cp.Size)
	}
	ev, err := RecordedEvent(p.GetEvent())
	if err != nil {
		return ledger.Checkpoint{}, fmt.Errorf("%w: %v", ledger.ErrProof, err)
	}
	if err := ledger.VerifyInclusion(cp, ledger.Canonical(tenant, ev), p.GetRevision(), p.GetHashes()); err != nil {
		return ledger.Checkpoint{}, err
	}
	return cp, nil
}
