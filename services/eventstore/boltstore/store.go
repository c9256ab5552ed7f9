// Package boltstore is guestlist's embedded event store, a single file managed by bbolt
// (go.etcd.io/bbolt). It implements eventstore.Store and passes the storetest conformance suite.
//
// # Durability and group commit
//
// Append returns once its events are fsynced. A single committer goroutine drains the queue of
// pending appends into one bbolt read-write transaction and so one fsync: concurrent appends
// share the cost of the sync (group commit). Each append in a batch is checked (expected
// revision, idempotency) against the state that includes the appends before it in the same
// batch; an append that fails its checks writes nothing and does not affect the others.
//
// The committer does not wait a fixed time for a batch to fill; it waits briefly only for the
// writers it answered last time to come back (see commitLoop). bbolt runs with the hashmap
// freelist and without syncing the freelist (NoFreelistSync): data and metadata are still
// fsynced with every commit, and bbolt rebuilds the freelist when it opens the file.
//
// Reads, LastPosition and subscriptions see only acknowledged (fsynced) events.
//
// # Layout
//
// The file holds these buckets:
//
//	log      big-endian position (8 bytes)                      -> record (see record.go)
//	stream   uvarint len(stream), stream, big-endian revision   -> big-endian position
//	head     stream                                             -> big-endian last revision
//	eventid  uvarint len(stream), stream, 16-byte event id      -> big-endian position, big-endian revision
//	meta     "format"                                           -> format version (1 byte)
//	         "indexed"                                          -> big-endian position
//
// The length prefix makes the keys of one stream a contiguous range that no other stream's keys
// fall into.
//
// Every commit writes the log and the heads. The stream and eventid indexes, which the log
// determines, are kept in memory for a while and written in bulk by a later commit, up to the
// position in "indexed"; Open indexes whatever a crash left unindexed (see index.go). This
// keeps a commit of n appends to n different streams from writing 2n index leaves.
//
// # Limits
//
// A stream name is at most MaxStreamNameLen bytes, and the records of one append at most
// MaxAppendSize bytes in total; larger appends fail with eventstore.ErrInvalidEvent.
package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
	"guestlist.dev/services/eventstore"
)

const (
	// MaxStreamNameLen is the longest stream name, in bytes, that the store accepts.
	MaxStreamNameLen = 4096
	// MaxAppendSize is the largest total encoded size, in bytes, of the events of one append.
	MaxAppendSize = 64 << 20
)

const formatVersion = 1

var (
	bucketLog     = []byte("log")
	bucketStream  = []byte("stream")
	bucketHead    = []byte("head")
	bucketEventID = []byte("eventid")
	bucketMeta    = []byte("meta")
	keyFormat     = []byte("format")
	keyIndexed    = []byte("indexed")
)

// Option configures Open.
type Option func(*options)

type options struct {
	lockTimeout    time.Duration
	maxBatch       int
	maxBatchBytes  int
	noFreelistSync bool
	indexFlush     int
	groupWait      time.Duration
	// unchecked skips boltcheck (set by BenchmarkOpen only, to measure what the check costs).
	unchecked bool
}

func defaultOptions() options {
	return options{
		lockTimeout:    5 * time.Second,
		maxBatch:       1024,
		maxBatchBytes:  16 << 20,
		noFreelistSync: true,
		indexFlush:     4096,
	}
}

// ErrLocked is returned by Open when another process holds the file (bbolt takes an exclusive
// file lock) for longer than the lock timeout (WithLockTimeout).
var ErrLocked = errors.New("the file is locked by another process")

// WithGroupWait lets the committer wait up to d (and at most half a commit's duration) for the
// writers it just answered to come back before it commits a smaller batch (default 0: commit what
// is queued at once). It raises throughput for many writers that append in a tight loop (see
// docs/benchmarks.md), and lowers it for writers that do other work between appends, such as the
// control plane, whose commands append twice in a row.
func WithGroupWait(d time.Duration) Option {
	return func(o *options) { o.groupWait = max(d, 0) }
}

// WithLockTimeout sets how long Open waits for another process to release the file (default 5s).
// Zero waits forever.
func WithLockTimeout(d time.Duration) Option {
	return func(o *options) { o.lockTimeout = d }
}

// WithMaxBatch bounds a group commit to this many appends (default 1024) and, roughly, this many
// bytes of records (default 16 MiB). A single append larger than maxBytes still commits, alone.
// Values below 1 keep the default.
func WithMaxBatch(appends, maxBytes int) Option {
	return func(o *options) {
		if appends > 0 {
			o.maxBatch = appends
		}
		if maxBytes > 0 {
			o.maxBatchBytes = maxBytes
		}
	}
}

// WithFreelistSync makes bbolt write its free page list with every commit (default false). It
// does not change durability: without it, bbolt rebuilds the list by scanning the file when it
// opens it, so commits write less at the cost of a slower Open on large files.
func WithFreelistSync(sync bool) Option {
	return func(o *options) { o.noFreelistSync = !sync }
}

// WithIndexFlush sets after how many appended events, roughly, a commit writes the index
// entries kept in memory to the index buckets (default 4096; see "Deferred indexing" in
// index.go). It bounds that memory and the work Open does after a crash. 1 indexes every commit.
func WithIndexFlush(events int) Option {
	return func(o *options) { o.indexFlush = max(events, 1) }
}

// Store is the bbolt-backed eventstore.Store. Create it with Open.
type Store struct {
	db   *bolt.DB
	opts options

	mu     sync.Mutex
	queue  []*appendReq
	closed bool
	failed error // set when a commit failed; the store then refuses appends
	wake   chan struct{}

	// state is the last acknowledged position and a channel closed when it advances.
	state atomic.Pointer[commitState]

	done          chan struct{} // closed when Close starts
	committerDone chan struct{}
	closeOnce     sync.Once
	closeErr      error

	// overlay holds the index entries not yet in the index buckets. The committer changes it,
	// under overlayMu; ReadStream reads it under overlayMu.
	overlayMu sync.RWMutex
	overlay   *memIndex
	stage     *memIndex // the committer's entries of the transaction in progress

	commits atomic.Uint64 // transactions committed
	flushes atomic.Uint64 // commits that wrote the index buckets
	appends atomic.Uint64 // appends answered by the committer, whatever the outcome

	// Committer-owned scratch.
	arena []byte
	key   []byte
}

type commitState struct {
	pos     eventstore.Position
	changed chan struct{}
}

var _ eventstore.Store = (*Store)(nil)

// Open opens (creating it if needed, with its directory) the event store file at path. It first
// checks the file (package boltcheck): a damaged file is an error wrapping boltcheck.ErrDamaged
// that names the file and says to restore it from a backup, and the store is not opened.
func Open(path string, opts ...Option) (*Store, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	// boltcheck: a damaged file is an error naming it, not a panic in bbolt's free list walk.
	open := boltcheck.Open
	if o.unchecked {
		open = func(path string, mode os.FileMode, opts *bolt.Options, _ ...boltcheck.Option) (*bolt.DB, error) {
			return bolt.Open(path, mode, opts)
		}
	}
	db, err := open(path, 0o600, &bolt.Options{
		Timeout:        o.lockTimeout,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: o.noFreelistSync,
	})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("boltstore: open %s: %w (waited %v): %w", path, ErrLocked, o.lockTimeout, err)
		}
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	var last eventstore.Position
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketLog, bucketStream, bucketHead, bucketEventID, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keyFormat); {
		case v == nil:
			if err := meta.Put(keyFormat, []byte{formatVersion}); err != nil {
				return fmt.Errorf("write format version: %w", err)
			}
		case len(v) != 1 || v[0] != formatVersion:
			return fmt.Errorf("unknown format version %x (this build reads %d)", v, formatVersion)
		}
		if k, _ := tx.Bucket(bucketLog).Cursor().Last(); k != nil {
			if len(k) != 8 {
				return fmt.Errorf("log key %x: %w", k, errCorrupt)
			}
			last = eventstore.Position(binary.BigEndian.Uint64(k))
		}
		if _, err := catchUpIndex(tx, last); err != nil {
			return fmt.Errorf("index the log: %w", err)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	s := &Store{
		db:            db,
		opts:          o,
		wake:          make(chan struct{}, 1),
		done:          make(chan struct{}),
		committerDone: make(chan struct{}),
		overlay:       newMemIndex(),
		stage:         newMemIndex(),
	}
	s.state.Store(&commitState{pos: last, changed: make(chan struct{})})
	go s.commitLoop()
	return s, nil
}

// Stats are counters of a Store since it was opened.
type Stats struct {
	// Commits is the number of write transactions (each one fsync) committed.
	Commits uint64
	// Appends is the number of appends that reached the committer, whatever their outcome.
	// Appends / Commits is the average group-commit batch size.
	Appends uint64
	// IndexFlushes is the number of commits that wrote the index buckets.
	IndexFlushes uint64
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Appends: s.appends.Load(), IndexFlushes: s.flushes.Load()}
}

// Path returns the file's path.
func (s *Store) Path() string { return s.db.Path() }

// Close waits for the appends already queued to commit, ends subscriptions with
// eventstore.ErrClosed and closes the file. Later calls to any method fail with
// eventstore.ErrClosed; calling Close again returns nil.
func (s *Store) Close() error {
	err := eventstore.ErrClosed
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.done)
		s.signal()
		<-s.committerDone
		if cerr := s.db.Close(); cerr != nil {
			s.closeErr = fmt.Errorf("boltstore: close: %w", cerr)
		}
		err = s.closeErr
	})
	if errors.Is(err, eventstore.ErrClosed) {
		return nil
	}
	return err
}

func (s *Store) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// LastPosition implements eventstore.Store.
func (s *Store) LastPosition(ctx context.Context) (eventstore.Position, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("boltstore: last position: %w", err)
	}
	if s.isClosed() {
		return 0, fmt.Errorf("boltstore: last position: %w", eventstore.ErrClosed)
	}
	return s.state.Load().pos, nil
}

// view runs fn in a read transaction, mapping a closed database to ErrClosed.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	if s.isClosed() {
		return eventstore.ErrClosed
	}
	err := s.db.View(fn)
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return eventstore.ErrClosed
	}
	return err
}

// streamPrefix appends the key prefix of stream's keys in the stream and eventid buckets to dst.
func streamPrefix(dst []byte, stream string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(stream)))
	return append(dst, stream...)
}

func posKey(dst []byte, p eventstore.Position) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(p))
}

func readUint64(v []byte, what string) (uint64, error) {
	if len(v) < 8 {
		return 0, fmt.Errorf("%s %x: %w", what, v, errCorrupt)
	}
	return binary.BigEndian.Uint64(v), nil
}

// ReadStream implements eventstore.Store. Reading Backwards from a revision past the end starts
// at the stream's last event. max < 1 reads nothing.
func (s *Store) ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, max int) ([]eventstore.RecordedEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: read stream %q: %w", stream, err)
	}
	if stream == "" {
		return nil, fmt.Errorf("boltstore: read stream: empty stream name: %w", eventstore.ErrStreamNotFound)
	}
	limit := s.state.Load().pos
	out := []eventstore.RecordedEvent{}
	// The overlay must not lose entries that the transaction's index buckets lack: hold
	// overlayMu from before the transaction starts until the positions are known.
	s.overlayMu.RLock()
	locked := true
	defer func() {
		if locked {
			s.overlayMu.RUnlock()
		}
	}()
	err := s.view(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketHead).Get([]byte(stream)) == nil {
			return eventstore.ErrStreamNotFound
		}
		if max < 1 {
			return nil
		}
		positions, err := streamPositions(tx.Bucket(bucketStream).Cursor(), stream, s.overlay.tails[stream], dir, from, max, limit)
		s.overlayMu.RUnlock()
		locked = false
		if err != nil {
			return err
		}
		logb := tx.Bucket(bucketLog)
		var pk [8]byte
		for _, pos := range positions {
			rec := logb.Get(posKey(pk[:0], pos))
			if rec == nil {
				return fmt.Errorf("stream index points to missing position %d: %w", pos, errCorrupt)
			}
			ev, err := decodeRecord(pos, rec)
			if err != nil {
				return fmt.Errorf("position %d: %w", pos, err)
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: read stream %q: %w", stream, err)
	}
	return out, nil
}

// scanChunk bounds the records one read transaction scans for ReadAll and subscriptions, so
// that a selective filter does not hold a read transaction open for long.
const scanChunk = 4096

// ReadAll implements eventstore.Store. max < 1 reads nothing.
func (s *Store) ReadAll(ctx context.Context, from eventstore.Position, max int, filter eventstore.Filter) ([]eventstore.RecordedEvent, error) {
	out := []eventstore.RecordedEvent{}
	limit := s.state.Load().pos
	for len(out) < max && from < limit {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("boltstore: read all: %w", err)
		}
		var err error
		out, from, err = s.scan(out, from, limit, max, filter)
		if err != nil {
			return nil, fmt.Errorf("boltstore: read all: %w", err)
		}
	}
	if s.isClosed() {
		return nil, fmt.Errorf("boltstore: read all: %w", eventstore.ErrClosed)
	}
	return out, nil
}

// scan appends to out the events after position from, up to position limit, that pass filter,
// until out holds max events or scanChunk records were looked at. It returns the position up to
// which it looked. On an error, out holds the events read before it.
func (s *Store) scan(out []eventstore.RecordedEvent, from, limit eventstore.Position, max int, filter eventstore.Filter) ([]eventstore.RecordedEvent, eventstore.Position, error) {
	scanned := from
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLog).Cursor()
		var seek [8]byte
		n := 0
		for k, v := c.Seek(posKey(seek[:0], from+1)); k != nil && len(out) < max && n < scanChunk; k, v = c.Next() {
			p, err := readUint64(k, "log key")
			if err != nil {
				return err
			}
			pos := eventstore.Position(p)
			if pos > limit {
				break
			}
			n++
			scanned = pos
			if len(filter.StreamPrefixes) > 0 || len(filter.EventTypePrefixes) > 0 {
				h, err := decodeHeader(v)
				if err != nil {
					return fmt.Errorf("position %d: %w", pos, err)
				}
				if !matchBytes(filter.StreamPrefixes, h.stream) || !matchBytes(filter.EventTypePrefixes, h.typ) {
					continue
				}
			}
			ev, err := decodeRecord(pos, v)
			if err != nil {
				return fmt.Errorf("position %d: %w", pos, err)
			}
			out = append(out, ev)
		}
		if n == 0 && scanned < limit {
			// The log ends before limit: positions are dense, so this cannot happen
			// unless the file was changed behind our back.
			return fmt.Errorf("log ends at position %d, want %d: %w", scanned, limit, errCorrupt)
		}
		return nil
	})
	return out, scanned, err
}

// matchBytes is eventstore.Filter's prefix match on a byte slice.
func matchBytes(prefixes []string, b []byte) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, p := range prefixes {
		if len(b) >= len(p) && string(b[:len(p)]) == p {
			return true
		}
	}
	return false
}
