// Package audit implements guestlist.v1.AuditService over the event store: a tenant's history,
// its configuration as it stood at any position or time, and the decision the edge would have
// made for a request then. It replays history with the same two pure functions the rest of
// guestlist uses (projections/fold for the configuration, edge/decision for the verdict), so an
// explanation at a decision log line's config_revision re-derives that line's verdict, reason and
// rule. It writes nothing. It keeps folded states to replay from and, for Explain, prepared
// configurations (policies compiled), each tenant's its own ([WithPreparedConfigs]); what it keeps
// changes no answer.
//
// The hash chain, Verify, ExportEvents, GetCheckpointKey and the Merkle proofs (GetConsistencyProof,
// GetInclusionProof) come from package projections/ledger, given with [WithLedger]; without it they
// answer UNIMPLEMENTED and AuditEvent.hash is empty. [VerifyConsistencyProof] and
// [VerifyInclusionProof] check those proofs on the client with the checkpoint key alone.
package audit

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/dnsname"
	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/foldview"
	"guestlist.dev/projections/ledger"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
)

const (
	defaultPageSize = 100
	maxPageSize     = 1000
	readBatch       = 1000 // events per ReadStream call when folding
	// A page token names the tenant whose history it continues and the revision of the last event
	// of the page before: "e2:" + tenant + "\n" + revision, base64url. A token of another
	// tenant's history is refused, as the command lists refuse a token of another list, so that it
	// does not continue this history from that tenant's revision. "e1:" + revision, the tokens of
	// earlier versions, which named no tenant, are still accepted.
	pageTokenPrefix       = "e2:"
	legacyPageTokenPrefix = "e1:"
)

// Service is the AuditService. It is safe for concurrent use.
type Service struct {
	guestlistv1.UnimplementedAuditServiceServer

	store  eventstore.Store
	now    func() time.Time
	ledger *ledger.Ledger
	signer *ledger.Signer
	cache  *stateCache

	// prepare is decision.Prepare (tests count its calls); prepared caches its results for
	// Explain (nil: none), within preparedCount entries and preparedBytes.
	prepare       func(*configv1.HostnameConfig) (*decision.Hostname, error)
	prepared      *preparedCache
	preparedCount int
	preparedBytes int64
}

// Option configures a Service.
type Option func(*Service)

// WithNow sets the clock used when a request names no time (default time.Now).
func WithNow(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// WithCachedStates sets how many folded tenant states the service keeps to start replays from
// (default 64); 0 replays every call from the tenant's first event.
func WithCachedStates(n int) Option {
	return func(s *Service) {
		s.cache = nil
		if n > 0 {
			s.cache = &stateCache{cap: n}
		}
	}
}

// WithPreparedConfigs bounds the hostname configurations that Explain keeps prepared (their CAs
// parsed and their policy compiled by decision.Prepare), so that explaining many decisions made
// on one configuration compiles its policy once: at most entries of them, of at most maxBytes
// estimated size in all (decision.Hostname.SizeEstimate), the least recently used dropped first
// (default 64 entries and 128 MiB). A configuration larger than maxBytes is prepared on every
// call. Either bound 0 prepares on every call. Entries are per tenant and per configuration: a
// tenant's explanation never uses another tenant's, and what is kept changes no verdict.
//
// The bounds are for all tenants together, shared fairly: a tenant alone may fill them, and
// beyond a bound the entry dropped is the least recently used one of the tenant holding the most
// (entries, or estimated bytes). A tenant explaining many configurations thus evicts its own
// entries, not those of a tenant holding fewer (or fewer bytes) than it does.
func WithPreparedConfigs(entries int, maxBytes int64) Option {
	return func(s *Service) { s.preparedCount, s.preparedBytes = entries, maxBytes }
}

// withPrepare replaces decision.Prepare (tests count the calls).
func withPrepare(prepare func(*configv1.HostnameConfig) (*decision.Hostname, error)) Option {
	return func(s *Service) { s.prepare = prepare }
}

// WithLedger gives the service the tenants' hash chains and signed checkpoints: l follows the same
// store (its Run is the caller's to start), and signer is the key that signs l's checkpoints.
// Without it, hashes are empty and Verify, ExportEvents and GetCheckpointKey are UNIMPLEMENTED.
func WithLedger(l *ledger.Ledger, signer *ledger.Signer) Option {
	return func(s *Service) { s.ledger, s.signer = l, signer }
}

// New returns the AuditService on store.
func New(store eventstore.Store, opts ...Option) *Service {
	s := &Service{store: store, now: time.Now, cache: &stateCache{cap: defaultCacheStates},
		prepare: decision.Prepare, preparedCount: defaultPreparedEntries, preparedBytes: defaultPreparedBytes}
	for _, o := range opts {
		o(s)
	}
	s.prepared = newPreparedCache(s.preparedCount, s.preparedBytes, s.prepare)
	return s
}

var _ guestlistv1.AuditServiceServer = (*Service)(nil)

// ListEvents returns a page of the tenant's history after from_position, oldest first.
func (s *Service) ListEvents(ctx context.Context, req *guestlistv1.ListEventsRequest) (*guestlistv1.ListEventsResponse, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	stream := fold.TenantStream(req.GetTenantId())
	size := int(req.GetPageSize())
	if size <= 0 {
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	var from uint64 // the first revision to return
	if tok := req.GetPageToken(); tok != "" {
		rev, err := decodePageToken(req.GetTenantId(), tok)
		if err != nil {
			return nil, err
		}
		from = rev + 1
	} else if req.GetFromPosition() > 0 {
		rev, err := s.firstRevisionAfter(ctx, stream, req.GetFromPosition())
		if err != nil {
			return nil, s.storeError(err, req.GetTenantId())
		}
		from = rev
	}
	evs, err := s.store.ReadStream(ctx, stream, eventstore.Forwards, from, size+1)
	if err != nil {
		return nil, s.storeError(err, req.GetTenantId())
	}
	out := &guestlistv1.ListEventsResponse{}
	for i, ev := range evs {
		if i == size {
			out.NextPageToken = encodePageToken(req.GetTenantId(), evs[i-1].Revision)
			break
		}
		ae, err := auditEvent(ev)
		if err != nil {
			return nil, err
		}
		if s.ledger != nil {
			if h, err := s.ledger.ChainHash(req.GetTenantId(), ev.Revision); err == nil {
				ae.Hash = ledger.HashHex(h)
			}
		}
		out.Events = append(out.Events, ae)
	}
	return out, nil
}

// firstRevisionAfter returns the revision of the first event of stream whose position is after
// pos (the stream's length when there is none), by binary search over revisions.
func (s *Service) firstRevisionAfter(ctx context.Context, stream string, pos uint64) (uint64, error) {
	last, err := s.store.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, 1)
	if err != nil {
		return 0, fmt.Errorf("audit: read the end of %s: %w", stream, err)
	}
	if len(last) == 0 {
		return 0, nil
	}
	lo, hi := uint64(0), last[0].Revision+1 // the answer is in [lo, hi]
	for lo < hi {
		mid := lo + (hi-lo)/2
		evs, err := s.store.ReadStream(ctx, stream, eventstore.Forwards, mid, 1)
		if err != nil {
			return 0, fmt.Errorf("audit: read %s at revision %d: %w", stream, mid, err)
		}
		if len(evs) == 0 || uint64(evs[0].Position) > pos {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}

// auditEvent renders a stored event, its payload decoded into the guestlist.events.v1 message
// named by its type.
func auditEvent(ev eventstore.RecordedEvent) (*guestlistv1.AuditEvent, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(ev.Type))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "audit: event at position %d has unknown type %q", ev.Position, ev.Type)
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(ev.Data, m); err != nil {
		return nil, status.Errorf(codes.Internal, "audit: decode the event at position %d (%s): %v", ev.Position, ev.Type, err)
	}
	data, err := anypb.New(m)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "audit: wrap the event at position %d: %v", ev.Position, err)
	}
	return &guestlistv1.AuditEvent{
		Position:  uint64(ev.Position),
		Revision:  ev.Revision,
		Type:      ev.Type,
		Time:      timestamppb.New(ev.Time),
		Actor:     ev.Metadata.Actor,
		RequestId: ev.Metadata.RequestID,
		Data:      data,
	}, nil
}

func encodePageToken(tenant string, rev uint64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + tenant + "\n" + strconv.FormatUint(rev, 10)))
}

// decodePageToken returns the revision of the last event of the page before tok, a token
// encodePageToken made for tenant's history. A token that is not one, or that continues another
// tenant's history, is INVALID_ARGUMENT naming page_token.
func decodePageToken(tenant, tok string) (uint64, error) {
	bad := apistatus.InvalidArgument(apistatus.Violation{Field: "page_token", Reason: "not a page token returned by this API"})
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, bad
	}
	rest, legacy := strings.CutPrefix(string(b), legacyPageTokenPrefix)
	if !legacy {
		var ok bool
		if rest, ok = strings.CutPrefix(string(b), pageTokenPrefix); !ok {
			return 0, bad
		}
		from, r, ok := strings.Cut(rest, "\n")
		if !ok {
			return 0, bad
		}
		if from != tenant {
			return 0, apistatus.InvalidArgument(apistatus.Violation{Field: "page_token", Reason: "a page token of another tenant's history; list again without it"})
		}
		rest = r
	}
	rev, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return 0, bad
	}
	return rev, nil
}

// point is a place in a tenant's history: the events at or before a global position, or stored at
// or before a time.
type point struct {
	position uint64
	time     time.Time
	byTime   bool
}

// includes reports whether ev is at or before p. Positions and times grow along a stream, so
// the events p includes are a prefix of it.
func (p point) includes(ev eventstore.RecordedEvent) bool {
	if p.byTime {
		return !ev.Time.After(p.time)
	}
	return uint64(ev.Position) <= p.position
}

// stateAt folds the tenant's events up to p, starting from the nearest cached state at or before
// p. It returns NOT_FOUND when the tenant has no history at all; a point before the tenant's
// creation gives a state that does not exist. The state returned must not be modified.
func (s *Service) stateAt(ctx context.Context, tenantID string, p point) (*fold.Tenant, error) {
	stream := fold.TenantStream(tenantID)
	st, from := fold.NewTenant(tenantID), uint64(0)
	if base := s.cache.best(tenantID, p); base != nil {
		st, from = base.Clone(), base.Revision+1
	}
	folded := 0
	for {
		evs, err := s.store.ReadStream(ctx, stream, eventstore.Forwards, from, readBatch)
		if err != nil {
			return nil, s.storeError(err, tenantID)
		}
		done := len(evs) < readBatch
		for _, ev := range evs {
			if !p.includes(ev) {
				done = true
				break
			}
			fe := fold.Event{Type: ev.Type, Data: ev.Data, Revision: ev.Revision, Position: uint64(ev.Position), Time: ev.Time, Actor: ev.Metadata.Actor, RequestID: ev.Metadata.RequestID}
			if err := fold.Apply(st, fe); err != nil {
				return nil, status.Errorf(codes.Internal, "audit: replay tenant %q: %v", tenantID, err)
			}
			folded++
		}
		if done {
			break
		}
		from = evs[len(evs)-1].Revision + 1
	}
	if folded >= minFoldToCache {
		s.cache.add(st)
	}
	return st, nil
}

// pointOf returns the point an at_position / at_time oneof names; neither is now: the store's
// current position.
func (s *Service) pointOf(ctx context.Context, atPosition *uint64, atTime *timestamppb.Timestamp) (point, error) {
	switch {
	case atPosition != nil:
		return point{position: *atPosition}, nil
	case atTime != nil:
		if err := atTime.CheckValid(); err != nil {
			return point{}, apistatus.InvalidArgument(apistatus.Violation{Field: "at_time", Reason: err.Error()})
		}
		return point{time: atTime.AsTime(), byTime: true}, nil
	}
	last, err := s.store.LastPosition(ctx)
	if err != nil {
		return point{}, status.Errorf(codes.Unavailable, "audit: read the store's position: %v", err)
	}
	return point{position: uint64(last)}, nil
}

// GetSnapshot returns the tenant's configuration as it stood at the position or time asked for.
func (s *Service) GetSnapshot(ctx context.Context, req *guestlistv1.GetSnapshotRequest) (*guestlistv1.Snapshot, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	var atPos *uint64
	if v, ok := req.GetAt().(*guestlistv1.GetSnapshotRequest_AtPosition); ok {
		atPos = &v.AtPosition
	}
	p, err := s.pointOf(ctx, atPos, req.GetAtTime())
	if err != nil {
		return nil, err
	}
	st, err := s.stateAt(ctx, req.GetTenantId(), p)
	if err != nil {
		return nil, err
	}
	return foldview.Snapshot(st), nil
}

// Explain replays the tenant's configuration to the point asked for and decides the request on
// it with edge/decision, as the edge did. The certificate is judged at at_time, else at
// request_time, else now. config_revision is at_position itself, or for at_time the position of
// the tenant's last event at or before it.
func (s *Service) Explain(ctx context.Context, req *guestlistv1.ExplainRequest) (*guestlistv1.ExplainResponse, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	name, err := dnsname.Normalize(req.GetHostname())
	if err != nil {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "hostname", Reason: err.Error()})
	}
	// An empty method is the TLS handshake (a refusal in the handshake is logged so).
	handshake := req.GetMethod() == ""
	if handshake && (req.GetPath() != "" || req.GetHeaders() != nil) {
		field := "path"
		if req.GetPath() == "" {
			field = "headers"
		}
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: field, Reason: "an empty method asks for the TLS handshake's decision, which has no path or headers; give the request's method"})
	}
	// The edge's normalisation: a logged path stays as it is, a raw one is seen as the edge's
	// policy would see it, and one the edge refuses is refused here too.
	path, err := decision.PolicyPath(req.GetPath())
	if err != nil {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "path", Reason: err.Error() + "; the edge answers such a request with 400 and decides nothing"})
	}
	header, err := requestHeader(req.GetHeaders())
	if err != nil {
		return nil, err
	}
	peer, err := ParseChain(req.GetClientCertificateChainPem())
	if err != nil {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "client_certificate_chain_pem", Reason: err.Error()})
	}
	var atPos *uint64
	if v, ok := req.GetAt().(*guestlistv1.ExplainRequest_AtPosition); ok {
		atPos = &v.AtPosition
	}
	p, err := s.pointOf(ctx, atPos, req.GetAtTime())
	if err != nil {
		return nil, err
	}
	when := s.now()
	switch {
	case p.byTime:
		when = p.time
	case req.GetRequestTime() != nil:
		if err := req.GetRequestTime().CheckValid(); err != nil {
			return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "request_time", Reason: err.Error()})
		}
		when = req.GetRequestTime().AsTime()
	}
	st, err := s.stateAt(ctx, req.GetTenantId(), p)
	if err != nil {
		return nil, err
	}
	rev := p.position
	if p.byTime {
		rev = st.Position // 0 before the tenant's first event
	}
	var h *decision.Hostname
	if cfg := fold.HostnameConfig(st, name, rev); cfg != nil {
		if h, err = s.prepareConfig(ctx, req.GetTenantId(), cfg); err != nil {
			if _, ok := status.FromError(err); ok {
				return nil, err // the context's, while waiting for another call to prepare cfg
			}
			return nil, status.Errorf(codes.FailedPrecondition, "audit: the configuration of %s at position %d does not prepare (an edge refuses it): %v", name, rev, err)
		}
	}
	var d decision.Decision
	if handshake {
		d = decision.DecideHandshake(h, peer, when)
	} else {
		d = decision.Decide(h, peer, &decision.Request{Host: name, Method: req.GetMethod(), Path: path, Header: header, HeaderUnknown: req.GetHeaders() == nil}, when)
	}
	if d.Reason == decision.ReasonRequestHeadersUnknown {
		return nil, status.Errorf(codes.FailedPrecondition, "audit: cannot re-derive this decision: rule %q of the policy of %s at position %d reads request.headers, which the decision log does not record; give the request's headers (headers) to explain it", d.Rule, name, rev)
	}
	return &guestlistv1.ExplainResponse{Verdict: string(d.Verdict), Reason: d.Reason, Rule: d.Rule, ConfigRevision: rev}, nil
}

// prepareConfig is decision.Prepare(cfg), from the cache of prepared configurations when there is
// one. A status error is not Prepare's (the context's, or the cache's own).
func (s *Service) prepareConfig(ctx context.Context, tenant string, cfg *configv1.HostnameConfig) (*decision.Hostname, error) {
	if s.prepared == nil {
		return s.prepare(cfg)
	}
	return s.prepared.get(ctx, tenant, cfg)
}

// requestHeader turns Explain's headers into the http.Header the edge would have had (nil for
// none given): canonical keys, one value each.
func requestHeader(rh *guestlistv1.RequestHeaders) (http.Header, error) {
	if rh == nil {
		return nil, nil
	}
	h := make(http.Header, len(rh.GetValues()))
	for k, v := range rh.GetValues() {
		if strings.ContainsAny(v, "\r\n\x00") {
			return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "headers.values[" + strconv.Quote(k) + "]", Reason: "a header value cannot hold CR, LF or NUL"})
		}
		h[textproto.CanonicalMIMEHeaderKey(k)] = []string{v}
	}
	return h, nil
}

// ParseChain parses a PEM certificate chain, leaf first. Empty input is no certificate (nil);
// anything but CERTIFICATE blocks is an error.
func ParseChain(chainPEM string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(chainPEM)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(out)+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 && strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// errNoLedger answers the calls that need the hash chain when no ledger was given: a clear
// refusal, never a made-up result.
var errNoLedger = status.Error(codes.Unimplemented, "audit: the hash chain and signed checkpoints (projections/ledger) are not configured on this server")

// Verify checks the tenant's events in the store against the ledger's hash chain and its signed
// checkpoints (ledger.VerifyStore).
func (s *Service) Verify(ctx context.Context, req *guestlistv1.VerifyRequest) (*guestlistv1.VerifyResponse, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	if s.ledger == nil {
		return nil, errNoLedger
	}
	if _, err := s.store.ReadStream(ctx, fold.TenantStream(req.GetTenantId()), eventstore.Forwards, 0, 1); err != nil {
		return nil, s.storeError(err, req.GetTenantId())
	}
	r := ledger.VerifyStore(ctx, s.store, s.ledger, s.signer.PublicKey(), req.GetTenantId())
	return &guestlistv1.VerifyResponse{Valid: r.Valid, CheckedEvents: r.Checked, FirstBadPosition: r.FirstBadPosition, Problem: r.Problem}, nil
}

// ExportEvents streams the tenant's history for offline verification (ledger.VerifyExport), in the
// order of ledger.WriteExport: first the tenant's id, then every event in revision order, each of
// the ledger's signed checkpoints right after the event that completes its size. An event carries
// its payload as a google.protobuf.BytesValue holding the bytes exactly as stored (so the canonical
// encoding can be recomputed), and the chain hash the ledger recorded after it (for events the
// ledger has not recorded yet, the hash computed from the store).
//
// The export ends at the ledger's latest signed checkpoint, so that every event in it is covered by
// a signature (ledger.VerifyExport refuses events beyond the last checkpoint); events newer than that
// come with the next checkpoint, a moment later. Without any checkpoint yet, it fails with
// FAILED_PRECONDITION (NOT_FOUND for a tenant that does not exist). Over REST
// (GET /v1/tenants/{tenant}/events:export) each message is one bare line of NDJSON, and an error
// after the first line is a last line {"error":...} (see controlplane).
func (s *Service) ExportEvents(req *guestlistv1.ExportEventsRequest, stream grpc.ServerStreamingServer[guestlistv1.ExportEventsResponse]) error {
	ctx := stream.Context()
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return err
	}
	if s.ledger == nil {
		return errNoLedger
	}
	tenant := req.GetTenantId()
	type sized struct {
		size uint64
		s    ledger.SignedCheckpoint
	}
	signed, err := s.ledger.Checkpoints(tenant)
	if err != nil && !errors.Is(err, ledger.ErrNotFound) {
		return status.Errorf(codes.Unavailable, "audit: export: %v", err)
	}
	cps := make([]sized, 0, len(signed))
	var limit uint64 // events with a revision below limit are covered by a checkpoint
	for _, sc := range signed {
		cp, err := ledger.ParseCheckpoint(sc)
		if err != nil {
			return status.Errorf(codes.Internal, "audit: export: %v", err)
		}
		cps = append(cps, sized{cp.Size, sc})
		limit = max(limit, cp.Size)
	}
	if limit == 0 {
		// No checkpoint: a tenant that does not exist is NOT_FOUND, as for every other call.
		if _, err := s.store.ReadStream(ctx, fold.TenantStream(tenant), eventstore.Forwards, 0, 1); err != nil {
			return s.storeError(err, tenant)
		}
		return status.Errorf(codes.FailedPrecondition, "audit: export: tenant %q has no signed checkpoint yet; retry in a moment", tenant)
	}
	send := func(r *guestlistv1.ExportEventsResponse) error {
		if err := stream.Send(r); err != nil {
			return fmt.Errorf("audit: export: send: %w", err)
		}
		return nil
	}
	sendCheckpoints := func(upTo uint64) error {
		for len(cps) > 0 && cps[0].size <= upTo {
			if err := send(&guestlistv1.ExportEventsResponse{Item: &guestlistv1.ExportEventsResponse_Checkpoint{Checkpoint: string(cps[0].s)}}); err != nil {
				return err
			}
			cps = cps[1:]
		}
		return nil
	}
	var chain [32]byte
	for from := uint64(0); ; {
		evs, err := s.store.ReadStream(ctx, fold.TenantStream(tenant), eventstore.Forwards, from, readBatch)
		if err != nil {
			return s.storeError(err, tenant)
		}
		if from == 0 {
			if err := send(&guestlistv1.ExportEventsResponse{Item: &guestlistv1.ExportEventsResponse_TenantId{TenantId: tenant}}); err != nil {
				return err
			}
		}
		for _, ev := range evs {
			if ev.Revision >= limit {
				return sendCheckpoints(^uint64(0))
			}
			chain = ledger.Chain(chain, ledger.Canonical(tenant, ev))
			hash := chain
			if h, err := s.ledger.ChainHash(tenant, ev.Revision); err == nil {
				hash = h
			}
			ae, err := exactEvent(ev, hash)
			if err != nil {
				return err
			}
			if err := send(&guestlistv1.ExportEventsResponse{Item: &guestlistv1.ExportEventsResponse_Event{Event: ae}}); err != nil {
				return err
			}
			if err := sendCheckpoints(ev.Revision + 1); err != nil {
				return err
			}
		}
		if len(evs) < readBatch {
			// Checkpoints beyond the events (never expected, see above) go last, as in
			// ledger.WriteExport: the verifier reports them as events removed.
			return sendCheckpoints(^uint64(0))
		}
		from = evs[len(evs)-1].Revision + 1
	}
}

// GetCheckpointKey returns the public key that verifies the ledger's checkpoints. Any
// authenticated caller may have it.
func (s *Service) GetCheckpointKey(ctx context.Context, _ *guestlistv1.GetCheckpointKeyRequest) (*guestlistv1.CheckpointKey, error) {
	if _, ok := auth.FromContext(ctx); !ok {
		return nil, status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	}
	if s.signer == nil {
		return nil, errNoLedger
	}
	return &guestlistv1.CheckpointKey{PublicKeyPem: s.signer.PublicKeyPEM()}, nil
}

// storeError maps an event store error to a status: a tenant without history is NOT_FOUND (the
// caller is already authorized for it, so this reveals nothing), the rest UNAVAILABLE.
func (s *Service) storeError(err error, tenantID string) error {
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return apistatus.NotFound("tenant", tenantID)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return status.Errorf(codes.Unavailable, "audit: read tenant %q: %v", tenantID, err)
}
