package projector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/history"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	"guestlist.dev/services/eventstore"
)

// rebuildPage is how many events a lazy rebuild reads from a tenant's stream at a time.
const rebuildPage = 1000

// fatalError marks an error that resubscribing cannot cure: an event the fold refuses, a damaged
// read model, an event store behind the read model (ErrStoreBehind).
type fatalError struct{ err error }

// Error implements error.
func (e *fatalError) Error() string { return e.err.Error() }

// Unwrap returns the cause.
func (e *fatalError) Unwrap() error { return e.err }

// Run follows the event store from the checkpoint and applies its tenant events to the read
// model until ctx is done or Close is called (it then returns nil). When the subscription or the
// store fails, Run logs and resubscribes with backoff. It returns an error, after committing every
// event before it, for an event the fold refuses (an inconsistent history is not skipped: see
// fold.ErrInconsistent and fold.ErrUnknownEventType) and for a stored configuration that does not
// decode (a damaged read model). It returns an error wrapping ErrStoreBehind (found at the start:
// without becoming Ready) when the event store ends before the checkpoint (checked whenever Run
// subscribes and whenever it finds no further event) or delivers an event at or before it. It also returns when
// the event store is closed, and when the read model's file is closed.
func (p *Projector) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	if p.running {
		p.mu.Unlock()
		return ErrRunning
	}
	ctx, cancel := context.WithCancel(ctx)
	p.running, p.cancelRun, p.runDone = true, cancel, make(chan struct{})
	runDone := p.runDone
	p.mu.Unlock()
	defer func() {
		cancel()
		p.mu.Lock()
		p.running, p.cancelRun, p.runDone = false, nil, nil
		p.mu.Unlock()
		close(runDone)
	}()

	backoff := p.opts.backoffMin
	for {
		from := p.Position()
		err := p.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var fatal *fatalError
		switch {
		case errors.As(err, &fatal):
			p.log.Error("projector: stopped; resubscribing cannot cure this", "position", p.Position(), "err", err)
			return err
		case errors.Is(err, eventstore.ErrClosed):
			return fmt.Errorf("projector: event store closed: %w", err)
		case errors.Is(err, bolt.ErrDatabaseNotOpen):
			return fmt.Errorf("projector: read model closed: %w", err)
		}
		if p.Position() > from {
			backoff = p.opts.backoffMin
		}
		p.log.Warn("projector: subscription failed; resubscribing", "position", p.Position(), "retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, p.opts.backoffMax)
	}
}

type item struct {
	ev  eventstore.RecordedEvent
	err error
}

// follow subscribes from the checkpoint and applies events in batches until an error.
func (p *Projector) follow(ctx context.Context) error {
	from := p.Position()
	// Before anything else (a read after a position the store does not have may fail): a store
	// that ends before the checkpoint would deliver nothing up to it, and one that holds another
	// event there would deliver another history's events after it.
	if err := p.checkStoreReaches(ctx, from); err != nil {
		return err
	}
	if err := p.checkHistory(ctx); err != nil {
		return err
	}
	caughtUp, err := p.caughtUp(ctx, from)
	if err != nil {
		return err
	}
	p.setCaughtUp(caughtUp)
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	sub, err := p.store.Subscribe(subCtx, eventstore.Position(from), filter)
	if err != nil {
		return fmt.Errorf("projector: subscribe from %d: %w", from, err)
	}
	items := make(chan item, p.opts.maxBatchEvents+16)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			ev, err := sub.Next(subCtx)
			select {
			case items <- item{ev, err}:
			case <-subCtx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		_ = sub.Close()
		<-readerDone
	}()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !caughtUp && len(items) == 0 {
			// The last batch ended full or on its deadline: see whether that was all.
			if caughtUp, err = p.caughtUp(ctx, p.Position()); err != nil {
				return err
			}
			p.setCaughtUp(caughtUp)
		}
		var it item
		select {
		case it = <-items:
		case <-ctx.Done():
			return ctx.Err()
		}
		if it.err != nil {
			if !caughtUp {
				// Ready should not wait for the resubscription when everything is applied.
				if c, _ := p.caughtUp(ctx, p.Position()); c {
					p.setCaughtUp(true)
				}
			}
			return fmt.Errorf("projector: subscription: %w", it.err)
		}
		b := newBatch(time.Now())
		var stop error // ends follow once the batch is committed
		take := func(it item) bool {
			if it.err != nil {
				stop = fmt.Errorf("projector: subscription: %w", it.err)
				return false
			}
			if err := p.add(ctx, b, it.ev); err != nil {
				stop = err
				return false
			}
			return true
		}
		deadline := b.start.Add(p.opts.maxBatchDelay)
		if take(it) {
		collect:
			for b.n < p.opts.maxBatchEvents {
				select {
				case it = <-items:
					if !take(it) {
						break collect
					}
					if b.n%64 == 0 && time.Now().After(deadline) {
						break collect
					}
					continue
				default:
				}
				// Nothing is waiting: commit now if the store has nothing more for us (live), else
				// the subscription is still reading; wait for it until the deadline.
				if !caughtUp {
					if caughtUp, err = p.caughtUp(ctx, b.last); err != nil {
						stop = err
						break collect
					}
				}
				wait := time.Until(deadline)
				if caughtUp || wait <= 0 {
					break collect
				}
				timer.Reset(wait)
				select {
				case it = <-items:
					timer.Stop()
					if !take(it) {
						break collect
					}
				case <-timer.C:
					break collect
				case <-ctx.Done():
					timer.Stop()
					break collect
				}
			}
		}
		b.closeView() // before the commit's write transaction, which may have to remap the file
		if b.stale {
			// A tenant state holds an event that the batch does not record: committing would store
			// configurations derived from it under a checkpoint before it, and the resubscription
			// would fold it into that state again. Drop the batch and the states (they are rebuilt
			// from the store); the events are delivered again from the checkpoint.
			endSpans(b.spans, stop)
			clear(p.tenants)
			return stop
		}
		if !caughtUp && b.n > 0 && len(items) == 0 {
			// Whether this batch is all there is, so that Ready holds as soon as it commits.
			caughtUp, _ = p.caughtUp(ctx, b.last)
		}
		if b.n > 0 {
			if err := p.commit(b, caughtUp); err != nil {
				// The batch is applied to the tenant states but not stored: forget the states,
				// they are rebuilt from the store.
				clear(p.tenants)
				return err
			}
		}
		if stop != nil {
			return stop
		}
	}
}

// caughtUp reports whether the store holds no tenant event after position pos. When it holds none,
// it also checks that the store reaches pos (checkStoreReaches).
func (p *Projector) caughtUp(ctx context.Context, pos uint64) (bool, error) {
	evs, err := p.store.ReadAll(ctx, eventstore.Position(pos), 1, filter)
	if err != nil {
		return false, fmt.Errorf("projector: read events after %d: %w", pos, err)
	}
	if len(evs) > 0 {
		return false, nil
	}
	if err := p.checkStoreReaches(ctx, pos); err != nil {
		return false, err
	}
	return true, nil
}

// checkStoreReaches returns a fatal error wrapping ErrStoreBehind when the store's newest event is
// before pos, a position the read model has applied (or is applying).
func (p *Projector) checkStoreReaches(ctx context.Context, pos uint64) error {
	if pos == 0 {
		return nil
	}
	last, err := p.store.LastPosition(ctx)
	if err != nil {
		return fmt.Errorf("projector: read the event store's last position: %w", err)
	}
	if uint64(last) >= pos {
		return nil
	}
	err = fmt.Errorf("%w: the read model %s is at position %d, but the event store's last position is %d: "+
		"was the store restored from an older backup, emptied, or replaced by another one? "+
		"The projector stops rather than skip the store's events up to position %d. %s",
		ErrStoreBehind, p.path, pos, uint64(last), pos, p.storeBehindHint())
	return &fatalError{err}
}

// checkHistory returns a fatal error wrapping ErrHistoryDiverged when the store has passed the
// checkpoint's position but does not hold the checkpoint's event there. A read model that does not
// know the checkpoint's event (written before it was kept) is not checked.
func (p *Projector) checkHistory(ctx context.Context) error {
	p.mu.Lock()
	ref := p.ref
	p.mu.Unlock()
	if ref == (history.Ref{}) {
		return nil
	}
	res, err := history.Check(ctx, p.store, ref)
	switch {
	case err != nil:
		return fmt.Errorf("projector: check the event store's history at the checkpoint: %w", err)
	case res.Verdict != history.Diverged:
		return nil
	}
	return &fatalError{fmt.Errorf("%w: the read model %s was built up to the %s, but %s: "+
		"was the store restored from an older backup and written to since, or replaced by another one? "+
		"The projector stops rather than apply another history's events after position %d. %s",
		ErrHistoryDiverged, p.path, ref, res.Describe(), ref.Position, p.storeBehindHint())}
}

// storeBehindHint says what to do about ErrStoreBehind.
func (p *Projector) storeBehindHint() string {
	return fmt.Sprintf("Run guestlist on the event store this read model was built from (or a newer copy of it). "+
		"To go on with this store instead, stop guestlist and move %s aside (and the audit ledger, ledger.db, "+
		"should it stop likewise); the read model is then rebuilt from this store, and edges that hold a "+
		"configuration of the other history are moved to this one once the store has passed their position "+
		"(see \"Restoring a backup\" in docs/storage.md)", p.path)
}

// setCaughtUp records whether the projector is caught up; the first time it is, it is ready.
func (p *Projector) setCaughtUp(caughtUp bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.caughtUpLocked(caughtUp)
}

func (p *Projector) caughtUpLocked(caughtUp bool) {
	p.stats.CaughtUp = caughtUp
	if caughtUp && !p.stats.Ready {
		p.stats.Ready = true
		close(p.ready)
		p.log.Info("projector: caught up with the event store", "position", p.position)
	}
}

// batch is the work of one transaction.
type batch struct {
	start time.Time
	n     int
	last  uint64 // position of the last event
	// lastRef identifies the last event (the zero Ref if its id is not a UUID, which no store
	// accepts).
	lastRef history.Ref
	time    time.Time
	// dirty maps each hostname the batch's events affect to the state of the tenant that last
	// affected it and that event's position (the configuration's version).
	dirty map[string]dirty
	// spans are the apply spans of the batch's traced events, ended when the batch commits.
	spans []trace.Span
	// view reads the stored read model while the batch collects (edgeOwner); closeView ends it.
	view *bolt.Tx
	// stale is set when add failed after folding its event into the tenant's state: the states
	// are ahead of the batch, which must not be committed (see follow).
	stale bool
}

// closeView ends b's read transaction, if one is open.
func (b *batch) closeView() {
	if b.view != nil {
		_ = b.view.Rollback()
		b.view = nil
	}
}

type dirty struct {
	tenant  *fold.Tenant
	version uint64
}

func newBatch(start time.Time) *batch {
	return &batch{start: start, dirty: map[string]dirty{}}
}

// add folds ev into its tenant's state and records the hostnames it affects.
//
// Everything that can fail without the history being at fault (reading the stored read model) is
// done before fold.Apply changes the tenant's state, which the batch then must record: an error
// after it would leave the state ahead of what the batch commits and of the checkpoint. Should one
// happen all the same, add marks b stale and follow drops b and the states.
func (p *Projector) add(ctx context.Context, b *batch, ev eventstore.RecordedEvent) (err error) {
	tenantID, ok := strings.CutPrefix(ev.Stream, fold.TenantStreamPrefix)
	if !ok {
		return nil // the filter lets only tenant streams through
	}
	if err := p.checkOrder(b, ev); err != nil {
		return err
	}
	st, err := p.tenant(ctx, tenantID, ev)
	if err != nil {
		return err
	}
	fe := foldEvent(ev)
	names := fold.AffectedHostnames(st, fe)
	// The owners on the edges, before ev: whether st has a name before or after ev does not
	// matter, as edgeOwner then answers st's tenant or none, and either way ev's tenant gets it.
	owners := make([]string, len(names))
	for i, n := range names {
		if owners[i], err = p.edgeOwner(b, n); err != nil {
			return err
		}
	}
	span := p.tel.startApply(ev, tenantID)
	if err := fold.Apply(st, fe); err != nil {
		logCtx := ctx
		if span != nil {
			logCtx = trace.ContextWithSpan(ctx, span)
			endSpans([]trace.Span{span}, err)
		}
		p.log.ErrorContext(logCtx, "projector: cannot fold event", "tenant", tenantID, "stream", ev.Stream, "revision", ev.Revision, "position", ev.Position, "type", ev.Type, "event_id", ev.ID, "err", err)
		return &fatalError{fmt.Errorf("projector: fold event %s at position %d (stream %q revision %d): %w", ev.ID, ev.Position, ev.Stream, ev.Revision, err)}
	}
	// st holds ev now: b must record it, or not be committed.
	defer func() {
		if err != nil {
			b.stale = true
			if span != nil {
				endSpans([]trace.Span{span}, err)
			}
		}
	}()
	if p.opts.applyHook != nil {
		if err := p.opts.applyHook(uint64(ev.Position)); err != nil {
			return fmt.Errorf("projector: after folding the event at position %d: %w", ev.Position, err)
		}
	}
	for i, n := range names {
		if owner := owners[i]; owner != "" && owner != tenantID {
			// The control plane's reservations keep a hostname with one tenant; should a second
			// tenant's history claim it all the same, the edges keep the first tenant's
			// configuration until that tenant deletes it, rather than follow the last writer.
			p.log.ErrorContext(ctx, "projector: a second tenant claims a hostname its owner still has; the edges keep the owner's configuration",
				"hostname", n, "owner", owner, "tenant", tenantID, "position", ev.Position, "type", ev.Type, "event_id", ev.ID)
			continue
		}
		b.dirty[n] = dirty{tenant: st, version: uint64(ev.Position)}
	}
	b.n++
	b.last, b.time = uint64(ev.Position), ev.Time
	ref, refErr := history.Of(ev)
	if refErr != nil {
		p.log.WarnContext(ctx, "projector: the event's history token is unknown", "err", refErr)
	}
	b.lastRef = ref
	if span != nil {
		span.SetAttributes(attribute.Int("guestlist.hostnames_affected", len(names)))
		b.spans = append(b.spans, span)
	}
	return nil
}

// checkOrder returns a fatal error wrapping ErrStoreBehind when ev is not after the last event
// applied (in b, or before b): positions only grow, so the store is not the one the read model
// follows any more.
func (p *Projector) checkOrder(b *batch, ev eventstore.RecordedEvent) error {
	prev := b.last
	if b.n == 0 {
		prev = p.Position()
	}
	if uint64(ev.Position) > prev {
		return nil
	}
	return &fatalError{fmt.Errorf("%w: the read model %s has applied position %d, but the event store delivered the event at position %d (stream %q revision %d) after it: "+
		"was the store restored from an older backup, or replaced by another one? %s",
		ErrStoreBehind, p.path, prev, ev.Position, ev.Stream, ev.Revision, p.storeBehindHint())}
}

// edgeOwner returns the tenant whose configuration of hostname the edges have (or will have once
// b commits), or "" when none has it: the last tenant the batch recorded for it if that tenant
// has the hostname, otherwise, when the batch recorded none, the tenant of the stored
// configuration.
func (p *Projector) edgeOwner(b *batch, hostname string) (string, error) {
	if d, ok := b.dirty[hostname]; ok {
		if _, has := d.tenant.Hostnames[hostname]; has {
			return d.tenant.ID, nil
		}
		return "", nil
	}
	if b.view == nil {
		tx, err := p.db.Begin(false)
		if err != nil {
			return "", fmt.Errorf("projector: read the stored configurations: %w", err)
		}
		b.view = tx
	}
	v := b.view.Bucket(bucketHostnames).Get([]byte(hostname))
	if v == nil {
		return "", nil
	}
	owner, err := configTenant(v)
	if err != nil {
		// Written by commit, so the file is damaged: resubscribing cannot cure it.
		return "", &fatalError{fmt.Errorf("projector: the read model %s is damaged: the stored configuration of %q does not decode (%w); "+
			"stop guestlist and delete the file, it is rebuilt from the event store", p.path, hostname, err)}
	}
	return owner, nil
}

// configTenant returns the tenant_id of an encoded HostnameConfig without decoding the rest.
func configTenant(data []byte) (string, error) {
	const tenantField = 2 // HostnameConfig.tenant_id
	tenant := ""
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return "", protowire.ParseError(n)
		}
		data = data[n:]
		if num == tenantField && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return "", protowire.ParseError(n)
			}
			tenant = string(v) // the last occurrence wins, as in proto.Unmarshal
			data = data[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, data)
		if n < 0 {
			return "", protowire.ParseError(n)
		}
		data = data[n:]
	}
	return tenant, nil
}

// tenant returns the state of tenantID as of just before ev, rebuilding it from the store when it
// is not in memory.
func (p *Projector) tenant(ctx context.Context, tenantID string, ev eventstore.RecordedEvent) (*fold.Tenant, error) {
	if st, ok := p.tenants[tenantID]; ok {
		return st, nil
	}
	st := fold.NewTenant(tenantID)
	st.Index() // each event asks AffectedHostnames and HostnameConfig
	for next := uint64(0); next < ev.Revision; {
		evs, err := p.store.ReadStream(ctx, ev.Stream, eventstore.Forwards, next, int(min(ev.Revision-next, rebuildPage)))
		if err != nil {
			if errors.Is(err, eventstore.ErrStreamNotFound) {
				return nil, &fatalError{fmt.Errorf("projector: rebuild tenant %q before revision %d: %w", tenantID, ev.Revision, err)}
			}
			return nil, fmt.Errorf("projector: rebuild tenant %q: read stream from revision %d: %w", tenantID, next, err)
		}
		if len(evs) == 0 {
			return nil, &fatalError{fmt.Errorf("projector: rebuild tenant %q: stream ends before revision %d, at %d", tenantID, ev.Revision, next)}
		}
		for _, e := range evs {
			if e.Revision >= ev.Revision {
				break
			}
			if err := fold.Apply(st, foldEvent(e)); err != nil {
				p.log.Error("projector: cannot fold event while rebuilding tenant", "tenant", tenantID, "revision", e.Revision, "position", e.Position, "type", e.Type, "err", err)
				return nil, &fatalError{fmt.Errorf("projector: rebuild tenant %q: %w", tenantID, err)}
			}
			next = e.Revision + 1
		}
	}
	p.tenants[tenantID] = st
	p.log.Debug("projector: rebuilt tenant state", "tenant", tenantID, "revision", ev.Revision)
	return st, nil
}

// foldEvent converts a stored event into the fold's input.
func foldEvent(ev eventstore.RecordedEvent) fold.Event {
	return fold.Event{Type: ev.Type, Data: ev.Data, Revision: ev.Revision, Position: uint64(ev.Position), Time: ev.Time, Actor: ev.Metadata.Actor, RequestID: ev.Metadata.RequestID}
}

var marshal = proto.MarshalOptions{Deterministic: true}

// commit writes the batch's configurations and checkpoint in one transaction, then publishes the
// change.
func (p *Projector) commit(b *batch, caughtUp bool) error {
	names := make([]string, 0, len(b.dirty))
	for n := range b.dirty {
		names = append(names, n)
	}
	slices.Sort(names)
	var (
		upserts  []*configv1.HostnameConfig
		removals []string
		size     int
	)
	err := p.db.Update(func(tx *bolt.Tx) error {
		upserts, removals, size = upserts[:0], removals[:0], 0
		hb := tx.Bucket(bucketHostnames)
		for _, n := range names {
			d := b.dirty[n]
			key := []byte(n)
			cfg := fold.HostnameConfig(d.tenant, n, d.version)
			if cfg == nil {
				// Removed even when created and deleted within the batch (not stored before it):
				// a reader resuming from a position inside the batch (given by another projector,
				// whose batches differ) may hold it.
				if err := hb.Delete(key); err != nil {
					return fmt.Errorf("delete %q: %w", n, err)
				}
				removals = append(removals, n)
				size += len(n)
				continue
			}
			data, err := marshal.Marshal(cfg)
			if err != nil {
				return fmt.Errorf("encode configuration of %q: %w", n, err)
			}
			if err := hb.Put(key, data); err != nil {
				return fmt.Errorf("write %q: %w", n, err)
			}
			upserts = append(upserts, cfg)
			size += len(data)
		}
		if p.opts.commitHook != nil {
			if err := p.opts.commitHook(b.last); err != nil {
				return err
			}
		}
		var cp [8]byte
		binary.BigEndian.PutUint64(cp[:], b.last)
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyCheckpoint, cp[:]); err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
		put := func() error { return meta.Delete(keyCheckpointEvent) }
		if token := b.lastRef.Encode(); token != nil {
			put = func() error { return meta.Put(keyCheckpointEvent, token) }
		}
		if err := put(); err != nil {
			return fmt.Errorf("write checkpoint event: %w", err)
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("projector: commit %d events up to position %d: %w", b.n, b.last, err)
		endSpans(b.spans, err)
		return err
	}
	now := time.Now()
	var traces []trace.SpanContext
	if len(b.spans) > 0 {
		traces = make([]trace.SpanContext, len(b.spans))
		for i, s := range b.spans {
			traces[i] = s.SpanContext()
		}
		endSpans(b.spans, nil)
		p.log.DebugContext(trace.ContextWithSpanContext(context.Background(), traces[len(traces)-1]), "projector: change committed",
			"position", b.last, "events", b.n, "upserts", len(upserts), "removals", len(removals))
	}
	p.tel.commitDelay.Record(context.Background(), now.Sub(b.time).Seconds())

	p.mu.Lock()
	defer p.mu.Unlock()
	p.position, p.ref = b.last, b.lastRef
	if len(upserts)+len(removals) > 0 {
		p.ring.push(Change{Position: b.last, Upserts: upserts, Removals: removals, Traces: traces, HistoryToken: b.lastRef.Encode()}, size)
	}
	close(p.notify)
	p.notify = make(chan struct{})
	s := &p.stats
	s.Position = b.last
	s.Events += uint64(b.n)
	s.Batches++
	s.LastEventTime = b.time
	s.LastCommitDelay = now.Sub(b.time)
	p.caughtUpLocked(caughtUp)
	return nil
}
