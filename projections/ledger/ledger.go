package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	bolt "go.etcd.io/bbolt"

	"guestlist.dev/projections/fold"
	hist "guestlist.dev/projections/history"
	"guestlist.dev/services/boltcheck"
	"guestlist.dev/services/eventstore"
)

// damagedHint is what the error of a damaged ledger file says to do.
const damagedHint = `restore it from a backup, or move it aside and start again: the ledger is rebuilt from the event store ` +
	`(see "Damaged files" in docs/storage.md)`

// The ledger file holds these buckets:
//
//	meta                  "position" -> 8 bytes big-endian: the global position of the last event
//	                      applied (committed with the effects of that event)
//	                      "position-event" -> that event's history.Ref, encoded (committed with
//	                      "position"; absent in files written before it was kept)
//	tenants/<tenant id>   a bucket per tenant, holding
//	    chain             revision (8 bytes big-endian) -> the 32-byte chain hash after it
//	    checkpoints       tree size (8 bytes big-endian) -> the SignedCheckpoint text
//	    "state"           the tenant's log state (see encodeState)
var (
	bucketMeta        = []byte("meta")
	bucketTenants     = []byte("tenants")
	bucketChain       = []byte("chain")
	bucketCheckpoints = []byte("checkpoints")
	keyPosition       = []byte("position")
	keyPositionEvent  = []byte("position-event")
	keyState          = []byte("state")
)

// Errors of the ledger's lookups. Test with errors.Is.
var (
	// ErrNotFound is returned for a tenant, revision or checkpoint the ledger has not recorded.
	ErrNotFound = errors.New("ledger: not found")
	// ErrRunning is returned by Run when it is already running.
	ErrRunning = errors.New("ledger: already running")
	// ErrStoreBehind is wrapped by the error Run returns when the event store ends before the
	// ledger's position, or delivers an event at or before it: the store lost events the ledger
	// recorded (restored from an older backup, emptied) or is another one. Run stops rather than
	// skip the store's events up to its position. The error names both positions.
	ErrStoreBehind = errors.New("ledger: the ledger is ahead of the event store")
	// ErrHistoryDiverged is wrapped by the error Run returns when the event store has passed the
	// ledger's position without holding, there, the event the ledger recorded last: the store's
	// history is not the ledger's (an older backup restored and written to since, or another
	// store), and its events after the position would be chained onto the ledger's history. Run
	// stops; the error names both and what to do.
	ErrHistoryDiverged = errors.New("ledger: the event store's history is not the ledger's")
)

// Option configures Open.
type Option func(*options)

type options struct {
	everyEvents uint64
	everyTime   time.Duration
	quiet       time.Duration
	maxBatch    int
	now         func() time.Time
	retry       time.Duration
}

// WithCheckpointEvery makes the ledger sign a tenant's checkpoint during a burst once events events
// or d time have passed since its last one (default 1000 events or 1 s). A checkpoint is always
// made when a burst ends (see WithQuiet).
func WithCheckpointEvery(events int, d time.Duration) Option {
	return func(o *options) {
		if events > 0 {
			o.everyEvents = uint64(events)
		}
		if d > 0 {
			o.everyTime = d
		}
	}
}

// WithQuiet sets how long no event may arrive before a burst counts as ended and every tenant with
// events not yet checkpointed gets a checkpoint (default 100 ms).
func WithQuiet(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.quiet = d
		}
	}
}

// WithClock sets the clock of checkpoint times (default time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Ledger follows the event store and records, per tenant, the chain hash after every event, the
// Merkle log's compact range, and signed checkpoints, in a bbolt file. Reads are safe for
// concurrent use, also while Run is running.
type Ledger struct {
	db      *bolt.DB
	store   eventstore.Store
	signer  *Signer
	o       options
	running atomic.Bool
	// states caches tenant states; only Run's goroutine uses it.
	states map[string]*tenantState
}

// Open opens (creating if needed) the ledger file at path, following store and signing with signer.
// It first checks the file (package boltcheck): a damaged file is an error wrapping
// boltcheck.ErrDamaged that names the file and says what to do (restore it, or move it aside: the
// ledger is rebuilt from the store), and nothing is opened.
func Open(path string, store eventstore.Store, signer *Signer, opts ...Option) (*Ledger, error) {
	o := options{everyEvents: 1000, everyTime: time.Second, quiet: 100 * time.Millisecond, maxBatch: 1000, now: time.Now, retry: 100 * time.Millisecond}
	for _, f := range opts {
		f(&o)
	}
	db, err := boltcheck.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second}, boltcheck.WithHint(damagedHint))
	if err != nil {
		return nil, fmt.Errorf("ledger: open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketTenants} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("ledger: init %s: %w", path, err)
	}
	return &Ledger{db: db, store: store, signer: signer, o: o, states: map[string]*tenantState{}}, nil
}

// Close closes the ledger file. Stop Run first.
func (l *Ledger) Close() error {
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("ledger: close: %w", err)
	}
	return nil
}

// Position returns the global position of the last event the ledger applied.
func (l *Ledger) Position() (eventstore.Position, error) {
	var p eventstore.Position
	err := l.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyPosition); len(v) == 8 {
			p = eventstore.Position(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("ledger: read position: %w", err)
	}
	return p, nil
}

// tenantState is a tenant's log state.
type tenantState struct {
	size   uint64
	chain  [32]byte
	rng    *compact.Range
	cpSize uint64 // size of the last checkpoint
	cpTime time.Time
}

// encodeState encodes st: version 1 (1 byte), size (8), chain (32), last checkpoint size (8) and
// time (8, Unix nanoseconds), number of compact range hashes (1), then those 32-byte hashes.
func encodeState(st *tenantState) []byte {
	hs := st.rng.Hashes()
	b := make([]byte, 0, 1+8+32+8+8+1+32*len(hs))
	b = append(b, 1)
	b = binary.BigEndian.AppendUint64(b, st.size)
	b = append(b, st.chain[:]...)
	b = binary.BigEndian.AppendUint64(b, st.cpSize)
	b = binary.BigEndian.AppendUint64(b, uint64(st.cpTime.UnixNano()))
	b = append(b, byte(len(hs)))
	for _, h := range hs {
		b = append(b, h...)
	}
	return b
}

func decodeState(b []byte) (*tenantState, error) {
	if len(b) < 58 || b[0] != 1 {
		return nil, errors.New("ledger: corrupt tenant state")
	}
	st := &tenantState{size: binary.BigEndian.Uint64(b[1:9])}
	copy(st.chain[:], b[9:41])
	st.cpSize = binary.BigEndian.Uint64(b[41:49])
	st.cpTime = time.Unix(0, int64(binary.BigEndian.Uint64(b[49:57]))).UTC()
	n := int(b[57])
	if len(b) != 58+32*n {
		return nil, errors.New("ledger: corrupt tenant state hashes")
	}
	hs := make([][]byte, n)
	for i := range hs {
		hs[i] = append([]byte(nil), b[58+32*i:58+32*(i+1)]...)
	}
	r, err := rangeFactory.NewRange(0, st.size, hs)
	if err != nil {
		return nil, fmt.Errorf("ledger: tenant state: %w", err)
	}
	st.rng = r
	return st, nil
}

// tenantBucket returns tenant's bucket, creating it and its sub-buckets when create is set.
func tenantBucket(tx *bolt.Tx, tenant string, create bool) (*bolt.Bucket, error) {
	tb := tx.Bucket(bucketTenants)
	if !create {
		if b := tb.Bucket([]byte(tenant)); b != nil {
			return b, nil
		}
		return nil, fmt.Errorf("%w: tenant %q", ErrNotFound, tenant)
	}
	b, err := tb.CreateBucketIfNotExists([]byte(tenant))
	if err != nil {
		return nil, fmt.Errorf("ledger: tenant bucket %q: %w", tenant, err)
	}
	for _, n := range [][]byte{bucketChain, bucketCheckpoints} {
		if _, err := b.CreateBucketIfNotExists(n); err != nil {
			return nil, fmt.Errorf("ledger: tenant bucket %q/%s: %w", tenant, n, err)
		}
	}
	return b, nil
}

func (l *Ledger) state(tx *bolt.Tx, tenant string) (*tenantState, error) {
	if st, ok := l.states[tenant]; ok {
		return st, nil
	}
	st := &tenantState{rng: rangeFactory.NewEmptyRange(0)}
	if b := tx.Bucket(bucketTenants).Bucket([]byte(tenant)); b != nil {
		if v := b.Get(keyState); v != nil {
			var err error
			if st, err = decodeState(v); err != nil {
				return nil, fmt.Errorf("tenant %q: %w", tenant, err)
			}
		}
	}
	l.states[tenant] = st
	return st, nil
}

// Run follows the store from the ledger's position until ctx is done (it then returns nil). It
// resubscribes after subscription errors, and returns an error when the store is closed or an
// event cannot be recorded (for example a revision gap in a tenant stream, which means the store
// and the ledger disagree). Only one Run may run at a time.
func (l *Ledger) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer l.running.Store(false)
	for {
		err := l.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var se subError
		if !errors.As(err, &se) || errors.Is(err, eventstore.ErrClosed) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(l.o.retry):
		}
	}
}

// subError marks an error of the subscription, after which Run resubscribes.
type subError struct{ err error }

func (e subError) Error() string { return e.err.Error() }
func (e subError) Unwrap() error { return e.err }

type item struct {
	ev  eventstore.RecordedEvent
	err error
}

func (l *Ledger) follow(ctx context.Context) error {
	// A failed transaction may have left the cache ahead of the file.
	clear(l.states)
	from, err := l.Position()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if from > 0 {
		last, err := l.store.LastPosition(ctx)
		if err != nil {
			return subError{fmt.Errorf("ledger: read the event store's last position: %w", err)}
		}
		if last < from {
			return fmt.Errorf("%w: the ledger %s is at position %d, but the event store's last position is %d: "+
				"was the store restored from an older backup, emptied, or replaced by another one? The ledger stops "+
				"rather than skip the store's events up to position %d; run guestlist on the store it was built from, "+
				"or, to go on with this store, stop guestlist and move %s aside: it is rebuilt from the store "+
				"(see \"Restoring a backup\" in docs/storage.md)",
				ErrStoreBehind, l.db.Path(), from, last, from, l.db.Path())
		}
		if err := l.checkHistory(ctx); err != nil {
			return err
		}
	}
	sub, err := l.store.Subscribe(ctx, from, eventstore.Filter{StreamPrefixes: []string{fold.TenantStreamPrefix}})
	if err != nil {
		return subError{fmt.Errorf("ledger: subscribe from %d: %w", from, err)}
	}
	defer sub.Close()
	ch := make(chan item, 4*l.o.maxBatch)
	go func() {
		for {
			ev, err := sub.Next(ctx)
			select {
			case ch <- item{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var quiet <-chan time.Time
	var timer *time.Timer
	batch := make([]eventstore.RecordedEvent, 0, l.o.maxBatch)
	for {
		var it item
		select {
		case <-ctx.Done():
			return nil
		case <-quiet:
			quiet = nil
			if err := l.commit(nil, true); err != nil {
				return err
			}
			continue
		case it = <-ch:
		}
		batch = batch[:0]
		var subErr error
	collect:
		for {
			if it.err != nil {
				subErr = it.err
				break
			}
			batch = append(batch, it.ev)
			if len(batch) == cap(batch) {
				break
			}
			select {
			case it = <-ch:
			default:
				break collect
			}
		}
		if len(batch) > 0 {
			if err := l.commit(batch, false); err != nil {
				return err
			}
			if timer == nil {
				timer = time.NewTimer(l.o.quiet)
				defer timer.Stop()
			} else {
				timer.Reset(l.o.quiet)
			}
			quiet = timer.C
		}
		if subErr != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Checkpoint what was applied before resubscribing.
			if err := l.commit(nil, true); err != nil {
				return err
			}
			return subError{fmt.Errorf("ledger: subscription: %w", subErr)}
		}
	}
}

// checkHistory returns an error wrapping ErrHistoryDiverged when the store has passed the ledger's
// position without holding the ledger's last event there. A ledger written before it kept that
// event is not checked.
func (l *Ledger) checkHistory(ctx context.Context) error {
	var ref hist.Ref
	err := l.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyPositionEvent)
		if v == nil {
			return nil
		}
		var err error
		ref, err = hist.Decode(v)
		return err
	})
	if err != nil {
		return fmt.Errorf("ledger: read the last event recorded: %w", err)
	}
	if ref == (hist.Ref{}) {
		return nil
	}
	res, err := hist.Check(ctx, l.store, ref)
	switch {
	case err != nil:
		return subError{fmt.Errorf("ledger: check the event store's history at the ledger's position: %w", err)}
	case res.Verdict != hist.Diverged:
		return nil
	}
	return fmt.Errorf("%w: the ledger %s recorded up to the %s, but %s: was the store restored from an older backup and written to since, "+
		"or replaced by another one? The ledger stops rather than chain another history's events onto its own; run guestlist on the store "+
		"it was built from, or, to go on with this store, stop guestlist and move %s aside: it is rebuilt from the store",
		ErrHistoryDiverged, l.db.Path(), ref, res.Describe(), l.db.Path())
}

// commit applies batch and signs the checkpoints that are due (all pending ones when idle), in one
// transaction with the new position.
func (l *Ledger) commit(batch []eventstore.RecordedEvent, idle bool) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		touched := map[string]*tenantState{}
		var buf []byte
		var prev uint64
		if v := tx.Bucket(bucketMeta).Get(keyPosition); len(v) == 8 {
			prev = binary.BigEndian.Uint64(v)
		}
		for i := range batch {
			ev := &batch[i]
			if uint64(ev.Position) <= prev {
				return fmt.Errorf("%w: the store delivered the event at position %d (%s revision %d) after the ledger %s recorded position %d: "+
					"the store is not the one the ledger was built from", ErrStoreBehind, ev.Position, ev.Stream, ev.Revision, l.db.Path(), prev)
			}
			prev = uint64(ev.Position)
			tenant, ok := strings.CutPrefix(ev.Stream, fold.TenantStreamPrefix)
			if !ok {
				continue
			}
			st, err := l.state(tx, tenant)
			if err != nil {
				return err
			}
			if ev.Revision != st.size {
				return fmt.Errorf("ledger: %s: event at position %d has revision %d, the ledger expects %d", ev.Stream, ev.Position, ev.Revision, st.size)
			}
			b, err := tenantBucket(tx, tenant, true)
			if err != nil {
				return err
			}
			buf = appendCanonical(buf[:0], tenant, ev.Revision, uint64(ev.Position), ev.Type, ev.Time.UnixNano(), ev.Metadata.Actor, ev.Metadata.RequestID, ev.Data)
			st.chain = Chain(st.chain, buf)
			lh := LeafHash(buf)
			if err := st.rng.Append(lh[:], nil); err != nil {
				return fmt.Errorf("ledger: %s: merkle append: %w", ev.Stream, err)
			}
			st.size++
			var key [8]byte
			binary.BigEndian.PutUint64(key[:], ev.Revision)
			if err := b.Bucket(bucketChain).Put(key[:], append([]byte(nil), st.chain[:]...)); err != nil {
				return fmt.Errorf("ledger: %s: put chain hash: %w", ev.Stream, err)
			}
			touched[tenant] = st
		}
		now := l.o.now().UTC()
		if idle {
			for tenant, st := range l.states {
				if st.size > st.cpSize {
					touched[tenant] = st
				}
			}
		}
		for tenant, st := range touched {
			due := st.size > st.cpSize && (idle || st.size-st.cpSize >= l.o.everyEvents || now.Sub(st.cpTime) >= l.o.everyTime)
			if due {
				if err := l.checkpoint(tx, tenant, st, now); err != nil {
					return err
				}
			}
			b, err := tenantBucket(tx, tenant, true)
			if err != nil {
				return err
			}
			if err := b.Put(keyState, encodeState(st)); err != nil {
				return fmt.Errorf("ledger: tenant %q: put state: %w", tenant, err)
			}
		}
		if len(batch) > 0 {
			last := batch[len(batch)-1]
			meta := tx.Bucket(bucketMeta)
			if err := meta.Put(keyPosition, binary.BigEndian.AppendUint64(nil, uint64(last.Position))); err != nil {
				return fmt.Errorf("ledger: put position: %w", err)
			}
			put := func() error { return meta.Delete(keyPositionEvent) }
			if ref, err := hist.Of(last); err == nil {
				put = func() error { return meta.Put(keyPositionEvent, ref.Encode()) }
			}
			if err := put(); err != nil {
				return fmt.Errorf("ledger: put the last event: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		clear(l.states)
		return fmt.Errorf("ledger: commit: %w", err)
	}
	return nil
}

func (l *Ledger) checkpoint(tx *bolt.Tx, tenant string, st *tenantState, now time.Time) error {
	root, err := rootOf(st.rng)
	if err != nil {
		return err
	}
	signed := l.signer.Sign(Checkpoint{Tenant: tenant, Size: st.size, Root: root, Chain: st.chain, Time: now})
	b, err := tenantBucket(tx, tenant, true)
	if err != nil {
		return err
	}
	if err := b.Bucket(bucketCheckpoints).Put(binary.BigEndian.AppendUint64(nil, st.size), []byte(signed)); err != nil {
		return fmt.Errorf("ledger: tenant %q: put checkpoint: %w", tenant, err)
	}
	st.cpSize, st.cpTime = st.size, now
	return nil
}

// Checkpoints returns tenant's signed checkpoints, oldest (smallest) first. It returns ErrNotFound
// for a tenant the ledger has not seen.
func (l *Ledger) Checkpoints(tenant string) ([]SignedCheckpoint, error) {
	var out []SignedCheckpoint
	err := l.db.View(func(tx *bolt.Tx) error {
		b, err := tenantBucket(tx, tenant, false)
		if err != nil {
			return err
		}
		return b.Bucket(bucketCheckpoints).ForEach(func(_, v []byte) error {
			out = append(out, SignedCheckpoint(v))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("ledger: checkpoints of %q: %w", tenant, err)
	}
	return out, nil
}

// Latest returns tenant's newest signed checkpoint, or ErrNotFound.
func (l *Ledger) Latest(tenant string) (SignedCheckpoint, error) {
	var out SignedCheckpoint
	err := l.db.View(func(tx *bolt.Tx) error {
		b, err := tenantBucket(tx, tenant, false)
		if err != nil {
			return err
		}
		_, v := b.Bucket(bucketCheckpoints).Cursor().Last()
		if v == nil {
			return fmt.Errorf("%w: no checkpoint", ErrNotFound)
		}
		out = SignedCheckpoint(v)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("ledger: latest checkpoint of %q: %w", tenant, err)
	}
	return out, nil
}

// Size returns how many events of tenant the ledger has recorded (0 for a tenant it has not seen).
func (l *Ledger) Size(tenant string) (uint64, error) {
	var n uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTenants).Bucket([]byte(tenant))
		if b == nil {
			return nil
		}
		if v := b.Get(keyState); v != nil {
			st, err := decodeState(v)
			if err != nil {
				return err
			}
			n = st.size
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("ledger: size of %q: %w", tenant, err)
	}
	return n, nil
}

// ChainHash returns the chain hash the ledger recorded after tenant's event at revision, or
// ErrNotFound.
func (l *Ledger) ChainHash(tenant string, revision uint64) ([32]byte, error) {
	var out [32]byte
	err := l.db.View(func(tx *bolt.Tx) error {
		b, err := tenantBucket(tx, tenant, false)
		if err != nil {
			return err
		}
		v := b.Bucket(bucketChain).Get(binary.BigEndian.AppendUint64(nil, revision))
		if len(v) != 32 {
			return fmt.Errorf("%w: revision %d", ErrNotFound, revision)
		}
		copy(out[:], v)
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("ledger: chain hash of %q at %d: %w", tenant, revision, err)
	}
	return out, nil
}

// chainHashes returns the recorded chain hashes of tenant from revision from, at most max.
func (l *Ledger) chainHashes(tenant string, from uint64, max int) ([][32]byte, error) {
	var out [][32]byte
	err := l.db.View(func(tx *bolt.Tx) error {
		b, err := tenantBucket(tx, tenant, false)
		if err != nil {
			return err
		}
		c := b.Bucket(bucketChain).Cursor()
		next := from
		for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, from)); k != nil && len(out) < max; k, v = c.Next() {
			if binary.BigEndian.Uint64(k) != next || len(v) != 32 {
				return fmt.Errorf("ledger: chain hashes of %q: corrupt at revision %d", tenant, next)
			}
			out = append(out, [32]byte(v))
			next++
		}
		return nil
	})
	return out, err
}
