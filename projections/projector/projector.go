// Package projector builds the edges' read model: it follows the event store's tenant streams from
// a checkpoint, folds each event into its tenant's state (package fold), and keeps the resulting
// configuration of every hostname in a bbolt file, together with the checkpoint.
//
// # Exactly once
//
// The configurations an event changes and the checkpoint (the global position of the last applied
// event) are written in the same bbolt transaction. A crash at any moment leaves the file either
// before or after a whole batch of events, so after a restart the projector resubscribes from the
// checkpoint and neither loses nor applies twice any event.
//
// # The event store it follows
//
// The read model holds positions of one event store, and so do the edges it feeds. When Run finds
// that the store ends before the checkpoint (checked whenever it subscribes and whenever it finds
// no further event), or the subscription delivers an event at or before it, the store lost events
// or is another one (an older backup restored, the store emptied or replaced): Run stops with
// ErrStoreBehind rather than skip the store's events up to the checkpoint, and does not rebuild
// the read model by itself either.
//
// Positions alone do not tell two histories apart: a store restored from an older backup and
// written to since reaches the checkpoint's position again, with other events. So the read model
// keeps, with its checkpoint and in the same transaction, the identity of the event at the
// checkpoint (its stream, revision and id: a history.Ref). When Run subscribes and the store has
// passed the checkpoint's position without holding that event there, Run stops with
// ErrHistoryDiverged (naming both events and what to do) rather than fold the other history's
// events onto this one. A read model written before the identity was kept has none until its next
// commit, and is checked by positions only until then.
//
// # History tokens
//
// Every Change, and every Snapshot (SnapshotWithHistory), carries the history token of its
// position (history.Ref.Encode of the event there), which the distribution hands to the edges.
// CheckHistory tells whether the store still holds the history of a token an edge sends back.
//
// # Batches
//
// While catching up, up to MaxBatchEvents events (default 1,000) or MaxBatchDelay of work (default
// 50 ms) go into one transaction. Once caught up with the store, a batch is committed as soon as no
// further event is waiting, so a change reaches the read model (and the edges) one fsync after it
// reaches the projector.
//
// # Tenant states
//
// The fold needs a tenant's whole state to decide which hostnames an event affects. The projector
// keeps every tenant's state in memory. After a restart the states are rebuilt lazily: the first
// event of a tenant since the restart reads that tenant's stream up to the event from the store.
//
// # Changes
//
// Every committed batch that changes at least one hostname is published as a Change (the upserted
// configurations and removed hostnames, at the batch's last position) to an in-memory ring of the
// most recent changes, which the distribution server reads (Changes) to stream deltas to edges. A
// reader that falls out of the ring (ErrCompacted) starts again from a Snapshot.
//
// # Telemetry: traces
//
// Every applied event that carries a trace context in its metadata (the API call that wrote it:
// eventstore.Metadata.TraceParent) gets a span named ApplySpanName, a child of that context. The
// span covers folding the event and committing its batch, and ends when the batch is durable.
// The span contexts of a batch's applied events travel with its Change (Change.Traces), so that
// the distribution continues the trace to the edges. Events without a trace context get no span.
//
// # Telemetry: metrics
//
// Prometheus names (see services/telemetry):
//
//	guestlist_projector_applied_events_total   events applied since the process started
//	guestlist_projector_batches_total          transactions committed since the process started
//	guestlist_projector_position               the checkpoint: position of the last applied event
//	guestlist_projector_lag_events             tenant events in the store not yet applied, counted
//	                                           (not a position difference: positions are not dense,
//	                                           e.g. on EventStoreDB), at most LagCountLimit
//	guestlist_projector_lag_seconds            0 when caught up; else now minus the store time of
//	                                           the oldest event not yet applied, i.e. how stale
//	                                           the read model is
//	guestlist_projector_commit_delay_seconds   histogram, per batch: from the store writing the
//	                                           batch's newest event to the read model committing it
//
// The lag gauges read the store (ReadAll from the checkpoint, at most LagCountLimit events) when
// metrics are collected, not on the projector's path.
package projector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/history"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	"guestlist.dev/services/boltcheck"
	"guestlist.dev/services/eventstore"
)

// damagedHint is what the error of a damaged read model file says to do.
const damagedHint = `it is rebuilt from the event store when it is missing: stop guestlist, move the file aside and start again ` +
	`(see "Damaged files" in docs/storage.md)`

// Defaults of the options.
const (
	// DefaultMaxBatchEvents is the most events applied in one transaction.
	DefaultMaxBatchEvents = 1000
	// DefaultMaxBatchDelay is how long a batch may collect events while catching up.
	DefaultMaxBatchDelay = 50 * time.Millisecond
	// DefaultRetainChanges is how many recent changes the ring keeps.
	DefaultRetainChanges = 10000
	// DefaultRetainBytes bounds the encoded size of the configurations the ring keeps.
	DefaultRetainBytes = 64 << 20
)

// Errors returned by the projector.
var (
	// ErrCompacted is returned by Changes when changes after the given position are no longer
	// retained; the reader needs a Snapshot.
	ErrCompacted = errors.New("projector: changes after this position are no longer retained")
	// ErrClosed is returned by operations on a closed projector.
	ErrClosed = errors.New("projector: closed")
	// ErrRunning is returned by Run when another Run is in progress.
	ErrRunning = errors.New("projector: already running")
	// ErrStoreBehind is wrapped by the error Run returns when the event store ends before the read
	// model's checkpoint, or delivers an event at or before it: the store lost events the read
	// model has applied (restored from an older backup, emptied) or is not the one the read model
	// was built from. Run stops (found at the start: without becoming Ready) rather than skip the
	// store's events up to the checkpoint; it does not rebuild the read model by itself either, as
	// the edges (and the audit ledger) hold positions of the store as it was. The error names both
	// positions and what to do.
	ErrStoreBehind = errors.New("projector: the read model is ahead of the event store")
	// ErrHistoryDiverged is wrapped by the error Run returns when the event store has passed the
	// read model's checkpoint but does not hold the checkpoint's event at its position: the store
	// is not the one the read model was built from (an older backup restored and written to since,
	// or another store). Run stops without becoming Ready, as for ErrStoreBehind; the error names
	// both events and what to do (move the read model aside: it is rebuilt from the store).
	ErrHistoryDiverged = errors.New("projector: the event store's history is not the read model's")
)

// formatVersion is the read model's format. Version 2: the configuration of a hostname two
// tenants' histories claim is the first claimant's (fe371d3); a version-1 file may hold the last
// writer's, so it is rebuilt from the store when opened (see Open).
const formatVersion = 2

var (
	bucketHostnames = []byte("hostnames")
	bucketMeta      = []byte("meta")
	keyFormat       = []byte("format")
	keyCheckpoint   = []byte("checkpoint")
	// keyCheckpointEvent holds the history.Ref of the event at the checkpoint, encoded
	// (history.Ref.Encode); written with the checkpoint. Absent in files written before it existed.
	keyCheckpointEvent = []byte("checkpoint-event")
)

// filter selects the events the projector folds.
var filter = eventstore.Filter{StreamPrefixes: []string{fold.TenantStreamPrefix}}

// Change is what one committed batch changed in the read model. Its configurations are shared
// with every reader and must not be modified.
type Change struct {
	// Position is the event-store position the change brings the read model to.
	Position uint64
	// Upserts are the configurations added or changed, sorted by hostname.
	Upserts []*configv1.HostnameConfig
	// Removals are the hostnames removed, sorted: every hostname that the batch's events affected
	// and that has no configuration at Position, including those created and deleted within the
	// batch. So the change brings to Position a reader holding the read model as of any position
	// after the previous change, not only as of the previous change's (a batch boundary of another
	// projector, or of this one before its file was rebuilt, may lie inside this batch).
	Removals []string
	// Traces are the span contexts of the apply spans of the batch's events that carried a trace
	// context, in order (see ApplySpanName); empty when none did. The distribution continues the
	// last one's trace and links the others.
	Traces []trace.SpanContext
	// HistoryToken identifies the history at Position: the encoded history.Ref of the batch's last
	// event. Nil when it is not known (see the package documentation).
	HistoryToken []byte
}

// Option configures Open.
type Option func(*options)

type options struct {
	log            *slog.Logger
	maxBatchEvents int
	maxBatchDelay  time.Duration
	retainChanges  int
	retainBytes    int
	backoffMin     time.Duration
	backoffMax     time.Duration
	lockTimeout    time.Duration
	// commitHook, for tests, runs inside each commit's transaction; an error aborts it.
	commitHook func(last uint64) error
	// applyHook, for tests, runs after each event is folded into its tenant's state, before the
	// batch records it; an error stands for any failure at that point (see add).
	applyHook func(pos uint64) error
	// tp and mp provide the spans and metrics; nil means the global providers.
	tp trace.TracerProvider
	mp metric.MeterProvider
}

func defaultOptions() options {
	return options{
		log:            slog.Default(),
		maxBatchEvents: DefaultMaxBatchEvents,
		maxBatchDelay:  DefaultMaxBatchDelay,
		retainChanges:  DefaultRetainChanges,
		retainBytes:    DefaultRetainBytes,
		backoffMin:     50 * time.Millisecond,
		backoffMax:     5 * time.Second,
		lockTimeout:    5 * time.Second,
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithBatch bounds a transaction to maxEvents events and, while catching up, to collecting events
// for maxDelay (defaults DefaultMaxBatchEvents, DefaultMaxBatchDelay). Values below 1 keep the
// default.
func WithBatch(maxEvents int, maxDelay time.Duration) Option {
	return func(o *options) {
		if maxEvents > 0 {
			o.maxBatchEvents = maxEvents
		}
		if maxDelay > 0 {
			o.maxBatchDelay = maxDelay
		}
	}
}

// WithRetention sets how many recent changes, and roughly how many bytes of encoded
// configurations, the ring of changes keeps (defaults DefaultRetainChanges, DefaultRetainBytes).
// The newest change is always kept. Values below 1 keep the default.
func WithRetention(changes, bytes int) Option {
	return func(o *options) {
		if changes > 0 {
			o.retainChanges = changes
		}
		if bytes > 0 {
			o.retainBytes = bytes
		}
	}
}

// WithBackoff sets the first and the longest wait before resubscribing after the subscription
// failed (defaults 50 ms and 5 s). Values below 1 keep the default.
func WithBackoff(first, longest time.Duration) Option {
	return func(o *options) {
		if first > 0 {
			o.backoffMin = first
		}
		if longest > 0 {
			o.backoffMax = longest
		}
	}
}

// WithLockTimeout sets how long Open waits for another process to release the file (default 5 s).
func WithLockTimeout(d time.Duration) Option {
	return func(o *options) { o.lockTimeout = d }
}

// Stats describes the projector's progress, for readiness and metrics.
type Stats struct {
	// Position is the checkpoint: the position of the last applied event.
	Position uint64
	// Ready is true once the projector has caught up with the store since it was opened.
	Ready bool
	// CaughtUp is true when, at the last commit, no further event was known to be waiting.
	CaughtUp bool
	// Events and Batches count the events applied and the transactions committed since Open.
	Events, Batches uint64
	// Changes is how many changes are retained in the ring.
	Changes int
	// LastEventTime is when the store wrote the last applied event.
	LastEventTime time.Time
	// LastCommitDelay is, for the last batch, the time from the store writing its newest event to
	// the read model committing it: the propagation delay while live, the lag while catching up.
	LastCommitDelay time.Duration
}

// Projector maintains the read model. Create it with Open, start it with Run, and Close it.
// Methods other than Run may be called concurrently with each other and with Run.
type Projector struct {
	db    *bolt.DB
	path  string
	store eventstore.Store
	opts  options
	log   *slog.Logger
	tel   *telemetry

	// tenants is owned by Run: the fold state of every tenant seen since Open, consistent with
	// the checkpoint whenever no batch is in progress.
	tenants map[string]*fold.Tenant

	mu        sync.Mutex
	position  uint64
	ref       history.Ref // the event at position, when known (see keyCheckpointEvent)
	ring      ring
	notify    chan struct{} // closed, and replaced, when position advances
	ready     chan struct{} // closed when stats.Ready turns true
	stats     Stats
	closed    bool
	done      chan struct{} // closed by Close
	running   bool
	cancelRun context.CancelFunc
	runDone   chan struct{}
}

// Open opens (creating it, and its directory, if needed) the read model file at path and returns
// a projector that follows store from the file's checkpoint once Run is called. It first checks the
// file (package boltcheck): a damaged file is an error wrapping boltcheck.ErrDamaged that names the
// file and says what to do (move it aside: the read model is rebuilt from the store), and nothing
// is opened.
func Open(path string, store eventstore.Store, opts ...Option) (*Projector, error) {
	if store == nil {
		return nil, errors.New("projector: open: nil event store")
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("projector: open %s: %w", path, err)
	}
	// boltcheck: a damaged file is an error naming it, not a panic in bbolt's free list walk.
	db, err := boltcheck.Open(path, 0o600, &bolt.Options{
		Timeout:        o.lockTimeout,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
	}, boltcheck.WithHint(damagedHint), boltcheck.WithLogger(o.log))
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("projector: open %s: file is locked by another process: %w", path, err)
		}
		return nil, fmt.Errorf("projector: open %s: %w", path, err)
	}
	var (
		checkpoint uint64
		ref        history.Ref
	)
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketHostnames); err != nil {
			return fmt.Errorf("create bucket %s: %w", bucketHostnames, err)
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", bucketMeta, err)
		}
		switch v := meta.Get(keyFormat); {
		case len(v) == 1 && v[0] == 1:
			// Version 1 kept the last writer's configuration of a hostname two tenants claimed:
			// start over (the store holds every event), as for a new file.
			o.log.Warn("projector: the read model is of format 1; rebuilding it from the event store", "path", path)
			if err := tx.DeleteBucket(bucketHostnames); err != nil {
				return fmt.Errorf("drop the format-1 configurations: %w", err)
			}
			if _, err := tx.CreateBucket(bucketHostnames); err != nil {
				return fmt.Errorf("create bucket %s: %w", bucketHostnames, err)
			}
			if err := meta.Delete(keyCheckpoint); err != nil {
				return fmt.Errorf("drop the format-1 checkpoint: %w", err)
			}
			if err := meta.Delete(keyCheckpointEvent); err != nil {
				return fmt.Errorf("drop the format-1 checkpoint: %w", err)
			}
			fallthrough
		case v == nil:
			if err := meta.Put(keyFormat, []byte{formatVersion}); err != nil {
				return fmt.Errorf("write format: %w", err)
			}
		case len(v) != 1 || v[0] != formatVersion:
			return fmt.Errorf("unsupported file format %x (want %d)", v, formatVersion)
		}
		if checkpoint, err = readCheckpoint(meta); err != nil {
			return err
		}
		ref, err = readCheckpointEvent(meta, checkpoint)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("projector: open %s: %w", path, err)
	}
	p := &Projector{
		db:       db,
		path:     path,
		store:    store,
		opts:     o,
		log:      o.log.With("component", "projector"),
		tenants:  map[string]*fold.Tenant{},
		position: checkpoint,
		ref:      ref,
		ring:     ring{start: checkpoint, maxChanges: o.retainChanges, maxBytes: o.retainBytes},
		notify:   make(chan struct{}),
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
	}
	p.stats.Position = checkpoint
	if p.tel, err = newTelemetry(p); err != nil {
		_ = db.Close()
		return nil, err
	}
	return p, nil
}

func readCheckpoint(meta *bolt.Bucket) (uint64, error) {
	v := meta.Get(keyCheckpoint)
	switch len(v) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(v), nil
	}
	return 0, fmt.Errorf("corrupt checkpoint of %d bytes", len(v))
}

// readCheckpointEvent returns the identity of the event at the checkpoint, the zero Ref when the
// file has none. An identity of another position than the checkpoint's is the zero Ref too: a
// version before keyCheckpointEvent (run on the file after a newer one, as in a rollback) moved
// the checkpoint without it, so the file knows its checkpoint's event no more than one written
// before it existed; the next commit writes it again.
func readCheckpointEvent(meta *bolt.Bucket, checkpoint uint64) (history.Ref, error) {
	v := meta.Get(keyCheckpointEvent)
	if v == nil {
		return history.Ref{}, nil
	}
	ref, err := history.Decode(v)
	if err != nil {
		return history.Ref{}, fmt.Errorf("corrupt checkpoint event: %w", err)
	}
	if ref.Position != checkpoint {
		return history.Ref{}, nil
	}
	return ref, nil
}

// Close stops Run, if it is running, waits for it to return, and closes the file. Waiting
// readers of Changes and WaitFor get ErrClosed.
func (p *Projector) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	cancel, runDone := p.cancelRun, p.runDone
	p.mu.Unlock()
	if cancel != nil {
		cancel()
		<-runDone
	}
	p.tel.close()
	if err := p.db.Close(); err != nil {
		return fmt.Errorf("projector: close %s: %w", p.path, err)
	}
	return nil
}

// Position returns the checkpoint: the global position of the last event applied to the read
// model (0 before the first).
func (p *Projector) Position() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.position
}

// Ready reports whether the projector has caught up with the event store since it was opened.
func (p *Projector) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats.Ready
}

// Stats returns the projector's progress.
func (p *Projector) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Changes = p.ring.len()
	return s
}

// WaitFor blocks until the read model has reached position pos, ctx is done, or the projector
// closes.
func (p *Projector) WaitFor(ctx context.Context, pos uint64) error {
	for {
		p.mu.Lock()
		reached, ch := p.position >= pos, p.notify
		p.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("projector: wait for position %d: %w", pos, ctx.Err())
		case <-p.done:
			return ErrClosed
		}
	}
}

// WaitReady waits until the projector has caught up with the event store since it was opened
// (Ready). It returns ErrClosed if the projector is closed first, and ctx's error if ctx ends.
func (p *Projector) WaitReady(ctx context.Context) error {
	select {
	case <-p.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("projector: wait until caught up: %w", ctx.Err())
	case <-p.done:
		return ErrClosed
	}
}

// Retains reports whether Changes can deliver every change after position after, that is whether
// a reader holding the read model as of after can catch up without a snapshot.
func (p *Projector) Retains(after uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return after >= p.ring.start
}

// Changes returns up to max (at least 1) of the changes after position after, in order, waiting
// until there is at least one. It returns ErrCompacted when some of those changes are no longer
// retained, ErrClosed when the projector closes, and ctx's error when ctx is done. Positions
// after the read model's position are allowed: Changes waits for the projector to get there.
func (p *Projector) Changes(ctx context.Context, after uint64, max int) ([]Change, error) {
	max = maxOf(max, 1)
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		cs, err := p.ring.after(after, max)
		ch := p.notify
		p.mu.Unlock()
		if err != nil || len(cs) > 0 {
			return cs, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("projector: changes after %d: %w", after, ctx.Err())
		case <-p.done:
			return nil, ErrClosed
		}
	}
}

// Snapshot returns the whole read model, sorted by hostname, and the position it reflects, read
// in one transaction. Its configurations may share messages (see SnapshotWithHistory): they must
// not be modified.
func (p *Projector) Snapshot() (position uint64, configs []*configv1.HostnameConfig, err error) {
	position, _, configs, err = p.SnapshotWithHistory()
	return position, configs, err
}

// SnapshotWithHistory is Snapshot, with the history token of the position (nil when the read
// model does not know it), read in the same transaction. Configurations of the snapshot may share
// messages (lists of CAs and revocations, policies stored with the same bytes): they must not be
// modified.
func (p *Projector) SnapshotWithHistory() (position uint64, token []byte, configs []*configv1.HostnameConfig, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		meta, b := tx.Bucket(bucketMeta), tx.Bucket(bucketHostnames)
		var err error
		if position, err = readCheckpoint(meta); err != nil {
			return err
		}
		ref, err := readCheckpointEvent(meta, position)
		if err != nil {
			return err
		}
		token = ref.Encode()
		sharer := newListSharer()
		return b.ForEach(func(k, v []byte) error {
			c := new(configv1.HostnameConfig)
			if err := proto.Unmarshal(v, c); err != nil {
				return fmt.Errorf("decode configuration of %q: %w", k, err)
			}
			sharer.share(v, c)
			configs = append(configs, c)
			return nil
		})
	})
	if err != nil {
		return 0, nil, nil, fmt.Errorf("projector: snapshot: %w", err)
	}
	return position, token, configs, nil
}

// CheckHistory tells whether the event store still holds the history of token, a history token
// of position (one this package made: Change.HistoryToken, SnapshotWithHistory) that a reader
// sends back: its Verdict is history.Same when the store holds the token's event at position, history.Diverged
// when the store has passed position without holding it there, history.NotReached when the store
// has not reached position. A token that does not decode, or is not of position, is an error
// wrapping history.ErrBadToken; a failed read of the store is an error too. It reads one event
// and the store's last position, and trusts the token for nothing else.
func (p *Projector) CheckHistory(ctx context.Context, position uint64, token []byte) (history.Result, error) {
	ref, err := history.Decode(token)
	if err != nil {
		return history.Result{}, fmt.Errorf("projector: check history at position %d: %w", position, err)
	}
	if ref.Position != position {
		return history.Result{}, fmt.Errorf("projector: check history at position %d: %w: the token is of position %d", position, history.ErrBadToken, ref.Position)
	}
	res, err := history.Check(ctx, p.store, ref)
	if err != nil {
		return history.Result{}, fmt.Errorf("projector: check history at position %d: %w", position, err)
	}
	return res, nil
}

// Lookup returns the stored configuration of hostname (nil if there is none) and the position of
// the read model.
func (p *Projector) Lookup(hostname string) (position uint64, config *configv1.HostnameConfig, err error) {
	err = p.db.View(func(tx *bolt.Tx) error {
		var err error
		if position, err = readCheckpoint(tx.Bucket(bucketMeta)); err != nil {
			return err
		}
		v := tx.Bucket(bucketHostnames).Get([]byte(hostname))
		if v == nil {
			return nil
		}
		config = new(configv1.HostnameConfig)
		if err := proto.Unmarshal(v, config); err != nil {
			return fmt.Errorf("decode configuration of %q: %w", hostname, err)
		}
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("projector: lookup %q: %w", hostname, err)
	}
	return position, config, nil
}

func maxOf(a, b int) int {
	if a > b {
		return a
	}
	return b
}
