// Package command is the write side of the control plane: each command validates its input, loads
// the tenant's current state (the events folded by package fold), decides, and appends the
// resulting events to the tenant's stream with an expected revision.
//
// Commands on one tenant are decided in batches by one goroutine at a time ("flat combining"):
// whoever finds the tenant idle decides every waiting command on provisional state, appends all of
// their events in one append (one fsync), then folds the stored events back into the state. A
// failed or raced append is rolled back and the batch is decided again on the fresh state, so the
// invariants hold even with several control-plane processes on one store.
package command

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
)

// Config configures a Service.
type Config struct {
	// Store is the event store. Required.
	Store eventstore.Store
	// Logger receives the service's logs; nil means slog.Default().
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now. Used for certificate validity checks.
	Now func() time.Time
	// AdminTokenSHA256 is the SHA-256 of the platform operator's bearer token.
	AdminTokenSHA256 [32]byte
	// EdgeTokenSHA256 is the SHA-256 of the edge nodes' bearer token; zero means no edge token.
	EdgeTokenSHA256 [32]byte
	// ReservationGrace is how old another tenant's reservation of a hostname must be, with the
	// hostname absent from that tenant, before it is treated as abandoned (a crash between
	// reservation and creation). Zero means two minutes.
	ReservationGrace time.Duration
}

// Service implements the guestlist.v1 resource services on an event store.
type Service struct {
	store  eventstore.Store
	log    *slog.Logger
	now    func() time.Time
	admin  [32]byte
	edge   [32]byte
	grace  time.Duration
	mu     sync.Mutex
	tenant map[string]*tenantEntry

	directory *directory
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("command: Config.Store is required")
	}
	s := &Service{store: cfg.Store, log: cfg.Logger, now: cfg.Now, admin: cfg.AdminTokenSHA256, edge: cfg.EdgeTokenSHA256, grace: cfg.ReservationGrace, tenant: map[string]*tenantEntry{}, directory: &directory{store: cfg.Store}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.grace == 0 {
		s.grace = 2 * time.Minute
	}
	return s, nil
}

// tenantEntry holds one tenant's state and its queue of commands.
type tenantEntry struct {
	id     string
	stream string // fold.TenantStream(id), or platformStream for the platform

	// mu guards state. Writers (the batch runner, catch-up) hold it exclusively.
	mu    sync.RWMutex
	state *fold.Tenant

	qmu     sync.Mutex
	pending []*op
	running bool
}

func (s *Service) entry(tenantID string) *tenantEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.tenant[tenantID]
	if e == nil {
		e = &tenantEntry{id: tenantID, stream: streamOf(tenantID)}
		s.tenant[tenantID] = e
	}
	return e
}

// forget drops an idle entry of a tenant that does not exist. A later command makes a new one;
// two entries of one tenant could only race each other through expected revisions, which is safe.
func (s *Service) forget(e *tenantEntry) {
	e.qmu.Lock()
	idle := !e.running && len(e.pending) == 0
	e.qmu.Unlock()
	if !idle {
		return
	}
	s.mu.Lock()
	if s.tenant[e.id] == e {
		delete(s.tenant, e.id)
	}
	s.mu.Unlock()
}

// decision is what a command decided: events to append, and how to render its result once they
// are stored.
type decision struct {
	events []protoMessage
	result func(st *fold.Tenant) (any, error)
}

// op is one command waiting in a tenant's queue.
type op struct {
	ctx    context.Context
	md     eventstore.Metadata
	decide func(st *fold.Tenant) (decision, error)
	done   chan struct{}
	result any
	err    error
}

// execute runs decide on the tenant's state, as part of a batch, and returns the rendered result.
func (s *Service) execute(ctx context.Context, tenantID string, md eventstore.Metadata, decide func(st *fold.Tenant) (decision, error)) (any, error) {
	e := s.entry(tenantID)
	o := &op{ctx: ctx, md: md, decide: decide, done: make(chan struct{})}
	e.qmu.Lock()
	e.pending = append(e.pending, o)
	lead := !e.running
	e.running = true
	e.qmu.Unlock()
	if lead {
		s.runBatches(e)
	}
	select {
	case <-o.done:
		return o.result, o.err
	case <-ctx.Done():
	}
	// Still waiting for a batch: take it out, so that it is certainly not applied.
	e.qmu.Lock()
	for i, p := range e.pending {
		if p == o {
			e.pending = append(e.pending[:i:i], e.pending[i+1:]...)
			e.qmu.Unlock()
			return nil, notStored{status.FromContextError(ctx.Err()).Err()}
		}
	}
	e.qmu.Unlock()
	select {
	case <-o.done:
		return o.result, o.err
	default:
		// In a batch being decided or stored: the command may still be applied; a retry with
		// the same request_id is safe.
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// notStored is the error of a command that was certainly not stored (its caller gave up before
// it was decided). It carries its gRPC status through (GRPCStatus).
type notStored struct{ err error }

func (n notStored) Error() string { return n.err.Error() }
func (n notStored) Unwrap() error { return n.err }

// GRPCStatus returns the status of the underlying error.
func (n notStored) GRPCStatus() *status.Status { return status.Convert(n.err) }

// certainlyNotStored reports whether err says its command was certainly not stored.
func certainlyNotStored(err error) bool {
	var n notStored
	return errors.As(err, &n)
}

func (s *Service) runBatches(e *tenantEntry) {
	for {
		e.qmu.Lock()
		batch := e.pending
		e.pending = nil
		if len(batch) == 0 {
			e.running = false
			e.qmu.Unlock()
			return
		}
		e.qmu.Unlock()
		s.runBatch(e, batch)
	}
}

const maxBatchAttempts = 8

// errTokenGone refuses a command whose caller's token was deleted before the command was decided:
// the answer a request with that token gets from then on.
var errTokenGone = status.Error(codes.Unauthenticated, "missing or invalid bearer token")

// tokenInForce reports whether the token that authenticated ctx's caller (if a token of a tenant
// did) is still one of tenant tenantID's tokens in st. The admin's principal names no token.
func tokenInForce(ctx context.Context, tenantID string, st *fold.Tenant) bool {
	p, ok := auth.FromContext(ctx)
	if !ok || p.TokenID == "" {
		return true
	}
	if p.TenantID != tenantID {
		return false
	}
	_, ok = st.Tokens[p.TokenID]
	return ok
}

// runBatch decides and appends one batch of commands.
func (s *Service) runBatch(e *tenantEntry, batch []*op) {
	finish := func(o *op, result any, err error) {
		o.result, o.err = result, err
		close(o.done)
	}
	// e.mu is held while deciding and folding, but not while the append waits for the disk: by then
	// the provisional changes are rolled back, so readers see the stored state meanwhile.
	e.mu.Lock()
	defer e.mu.Unlock()
	live := batch[:0:0]
	for _, o := range batch {
		if o.ctx.Err() != nil {
			finish(o, nil, notStored{status.FromContextError(o.ctx.Err()).Err()})
			continue
		}
		live = append(live, o)
	}
	ctx := context.WithoutCancel(batchContext(live))
	for attempt := 0; len(live) > 0; attempt++ {
		if err := s.catchUp(ctx, e); err != nil {
			for _, o := range live {
				finish(o, nil, err)
			}
			return
		}
		st := e.state
		base, existed := st.Revision, st.Exists
		st.Begin()
		var events []eventstore.EventData
		type decided struct {
			o      *op
			result func(*fold.Tenant) (any, error)
		}
		var ok []decided
		now := time.Now().UTC()
		var internal error
		for _, o := range live {
			if !tokenInForce(o.ctx, e.id, st) {
				// Authenticated before its token was deleted, decided after: a deleted token must
				// not write, and above all not create the successor it would keep working with.
				// The state is the stored one plus this batch's earlier commands, so a deletion
				// earlier in the batch counts.
				finish(o, nil, notStored{errTokenGone})
				continue
			}
			d, err := o.decide(st)
			if err != nil {
				finish(o, nil, err)
				continue
			}
			for _, ev := range encodeAll(d.events, o.md) {
				rev := st.Revision + 1
				if !st.Exists {
					rev = 0
				}
				if err := fold.Apply(st, fold.Event{Type: ev.Type, Data: ev.Data, Revision: rev, Time: now, Actor: o.md.Actor, RequestID: o.md.RequestID}); err != nil {
					internal = err
					break
				}
				events = append(events, ev)
			}
			if internal != nil {
				break
			}
			ok = append(ok, decided{o, d.result})
		}
		st.Rollback()
		if internal != nil {
			s.log.Error("command: deciding a batch failed", "tenant", e.id, "err", internal)
			for _, d := range ok {
				finish(d.o, nil, status.Error(codes.Internal, "internal error"))
			}
			for _, o := range live {
				select {
				case <-o.done:
				default:
					finish(o, nil, status.Error(codes.Internal, "internal error"))
				}
			}
			return
		}
		render := func() {
			for _, d := range ok {
				r, err := d.result(e.state)
				finish(d.o, r, err)
			}
		}
		if len(events) == 0 {
			render()
			return
		}
		expected := eventstore.Exact(base)
		if !existed {
			expected = eventstore.NoStream()
		}
		e.mu.Unlock()
		_, err := s.store.Append(ctx, e.stream, expected, events...)
		e.mu.Lock()
		if err == nil {
			if err := s.catchUp(ctx, e); err != nil {
				for _, d := range ok {
					finish(d.o, nil, err)
				}
				return
			}
			render()
			return
		}
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) && attempt < maxBatchAttempts {
			// Another writer got there first: decide again on its result.
			live = live[:0]
			for _, d := range ok {
				live = append(live, d.o)
			}
			continue
		}
		s.log.Error("command: append failed", "tenant", e.id, "events", len(events), "err", err)
		code := codes.Unavailable
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			code = codes.Aborted
		}
		for _, d := range ok {
			finish(d.o, nil, status.Errorf(code, "storing the change failed; retry with the same request_id: %v", err))
		}
		return
	}
}

// batchContext is the context of a batch's store calls: the first command's values (its trace),
// never cancelled, since a started append must finish for every command in the batch.
func batchContext(ops []*op) context.Context {
	if len(ops) == 0 {
		return context.Background()
	}
	return ops[0].ctx
}

// catchUp folds the tenant's stored events that the state has not seen yet. Callers hold e.mu.
func (s *Service) catchUp(ctx context.Context, e *tenantEntry) error {
	if e.state == nil {
		e.state = fold.NewTenant(e.id)
		e.state.Index() // a large tenant's revocations of one CA are listed page by page
	}
	const page = 4096
	for {
		from := uint64(0)
		if e.state.Exists {
			from = e.state.Revision + 1
		}
		evs, err := s.store.ReadStream(ctx, e.stream, eventstore.Forwards, from, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			s.log.Error("command: reading tenant stream failed", "tenant", e.id, "err", err)
			return status.Error(codes.Unavailable, "reading the tenant's history failed")
		}
		for _, ev := range evs {
			if err := fold.Apply(e.state, FoldEvent(ev)); err != nil {
				s.log.Error("command: folding tenant stream failed", "tenant", e.id, "err", err)
				e.state = nil
				return status.Error(codes.Internal, "the tenant's history cannot be folded")
			}
		}
		if len(evs) < page {
			return nil
		}
	}
}

// FoldEvent converts a stored event into the fold's input.
func FoldEvent(ev eventstore.RecordedEvent) fold.Event {
	return fold.Event{Type: ev.Type, Data: ev.Data, Revision: ev.Revision, Position: uint64(ev.Position), Time: ev.Time, Actor: ev.Metadata.Actor, RequestID: ev.Metadata.RequestID}
}

// read runs fn on the tenant's current state (caught up with the store) under a read lock.
func (s *Service) read(ctx context.Context, tenantID string, fn func(st *fold.Tenant) error) error {
	e := s.entry(tenantID)
	e.mu.Lock()
	err := s.catchUp(ctx, e)
	exists := e.state != nil && e.state.Exists
	e.mu.Unlock()
	if err != nil {
		return err
	}
	if !exists {
		// Keep no state for tenants that do not exist: made-up ids in requests must not grow memory.
		s.forget(e)
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	return fn(e.state)
}

// protoMessage is an event payload.
type protoMessage = proto.Message

// peek runs fn on the tenant's state as this process last saw it, without reading the store, for
// advisory checks that a command repeats on caught-up state when it is decided. It falls back to
// read when the tenant is not loaded.
func (s *Service) peek(ctx context.Context, tenantID string, fn func(st *fold.Tenant) error) error {
	e := s.entry(tenantID)
	e.mu.RLock()
	if e.state != nil && e.state.Exists {
		defer e.mu.RUnlock()
		return fn(e.state)
	}
	e.mu.RUnlock()
	return s.read(ctx, tenantID, fn)
}
