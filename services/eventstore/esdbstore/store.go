package esdbstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"guestlist.dev/services/eventstore"
)

// Store is an eventstore.Store on an EventStoreDB/KurrentDB server or cluster.
type Store struct {
	cfg  esdb.Configuration
	opts options

	// ctx is cancelled by Close; every call runs under a context that ends with it.
	ctx    context.Context
	cancel context.CancelFunc
	subs   sync.WaitGroup // subscription goroutines

	mu     sync.Mutex
	closed bool
	cur    *conn
}

var _ eventstore.Store = (*Store)(nil)

// conn is one client. The client gives up for good when its discovery fails (for instance while
// the server restarts): then every call fails with ErrorCodeConnectionClosed and the store
// replaces the client.
type conn struct {
	c *esdb.Client
	// inflight counts calls running inside the client. A client whose discovery failed can
	// leave callers blocked for good on its internal channel; closing it would make them panic,
	// so a client is only closed when no call is inside it.
	inflight atomic.Int64
	// dead is closed when the client is replaced: callers still waiting on it give up.
	dead chan struct{}
}

func newConn(c *esdb.Client) *conn { return &conn{c: c, dead: make(chan struct{})} }

// errClientGaveUp is what calls still waiting on a replaced client return.
var errClientGaveUp = fmt.Errorf("%w: the EventStoreDB client gave up connecting (no server answered its discovery)", eventstore.ErrUnavailable)

type options struct {
	log               *slog.Logger
	idempotencyWindow int
	closeGrace        time.Duration
	backoffMin        time.Duration
	backoffMax        time.Duration
	subscriptionBuf   int
	maxAppendAttempts int
}

// Option configures Open.
type Option func(*options)

// WithLogger sets the logger for the store and for the client's own messages (at debug level,
// except the client's errors, at warn). The default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithIdempotencyWindow sets how many of a stream's newest events an append compares its event
// ids with (default 64): a retry whose first attempt lies further back in the stream is not
// recognised. See the package documentation.
func WithIdempotencyWindow(n int) Option {
	return func(o *options) { o.idempotencyWindow = max(n, 1) }
}

// WithReconnectBackoff sets the bounds of the wait before a dropped subscription reconnects
// (default 50ms, doubling up to 5s).
func WithReconnectBackoff(minWait, maxWait time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = minWait, max(minWait, maxWait) }
}

// ErrBadConnectionString is wrapped by Open's error for a connection string the client cannot
// parse.
var ErrBadConnectionString = errors.New("esdbstore: bad EventStoreDB connection string")

// ParseConnectionString checks and parses an EventStoreDB connection string
// ("esdb://host:2113?tls=false", "esdb+discover://...", with "kurrentdb" or "kdb" as synonyms of
// "esdb" in the scheme). The error wraps ErrBadConnectionString and says what is wrong; it never
// repeats the connection string, which may hold a password.
func ParseConnectionString(s string) (*esdb.Configuration, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return nil, fmt.Errorf("%w: no scheme; want esdb://HOST:PORT?...", ErrBadConnectionString)
	}
	switch scheme {
	case "esdb", "kurrentdb", "kdb":
		scheme = "esdb"
	case "esdb+discover", "kurrentdb+discover", "kdb+discover":
		scheme = "esdb+discover"
	default:
		return nil, fmt.Errorf("%w: scheme %q; want esdb:// or esdb+discover://", ErrBadConnectionString, scheme)
	}
	if err := checkUserinfo(rest); err != nil {
		return nil, err
	}
	cfg, err := esdb.ParseConnectionString(scheme + "://" + rest)
	if err != nil {
		// The client's messages name the part that is wrong (host, port, setting).
		msg := err.Error()
		if i := strings.Index(msg, "://"); i >= 0 {
			msg = "malformed URL"
		}
		return nil, fmt.Errorf("%w: %s", ErrBadConnectionString, msg)
	}
	return cfg, nil
}

// checkUserinfo refuses an '@' after the first '/', '?' or '#' of a connection string (after the
// scheme), other than in a file setting's value: it means the user name or password holds one of
// those characters unescaped, which ends the host part early, and the rest of the password would
// be read as the path, a setting or the fragment, and repeated in the client's errors and log.
func checkUserinfo(rest string) error {
	end := strings.IndexAny(rest, "/?#")
	if end < 0 || !strings.Contains(rest[end:], "@") {
		return nil
	}
	tail, fragment, _ := strings.Cut(rest[end:], "#")
	path, query, _ := strings.Cut(tail, "?")
	bad := strings.Contains(path, "@") || strings.Contains(fragment, "@")
	for _, kv := range strings.Split(query, "&") {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "tlscafile", "usercertfile", "userkeyfile":
		default:
			bad = bad || strings.Contains(kv, "@")
		}
	}
	if bad {
		return fmt.Errorf("%w: an '@' after the host part: percent-encode '/', '?' and '#' in the user name and password (%%2F, %%3F, %%23)", ErrBadConnectionString)
	}
	return nil
}

// Open connects to the EventStoreDB server or cluster that connectionString names and checks
// that it answers (reading the newest event of $all), within ctx. An unreachable server gives an
// error wrapping eventstore.ErrUnavailable.
func Open(ctx context.Context, connectionString string, opts ...Option) (*Store, error) {
	cfg, err := ParseConnectionString(connectionString)
	if err != nil {
		return nil, err
	}
	s, err := newStore(cfg, opts...)
	if err != nil {
		return nil, err
	}
	if _, err := s.LastPosition(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("esdbstore: open: %w", err)
	}
	return s, nil
}

func newStore(cfg *esdb.Configuration, opts ...Option) (*Store, error) {
	o := options{
		log:               slog.Default(),
		idempotencyWindow: 64,
		closeGrace:        2 * time.Second,
		backoffMin:        50 * time.Millisecond,
		backoffMax:        5 * time.Second,
		subscriptionBuf:   256,
		maxAppendAttempts: 64,
	}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Store{cfg: *cfg, opts: o}
	s.cfg.Logger = clientLogger(o.log)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	c, err := esdb.NewClient(&s.cfg)
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("%w: %v", ErrBadConnectionString, err)
	}
	s.cur = newConn(c)
	return s, nil
}

// clientLogger sends the client's log lines to l: its errors at warn (it logs every failed call
// as an error, also those guestlist retries), the rest at debug.
func clientLogger(l *slog.Logger) esdb.LoggingFunc {
	return func(level esdb.LogLevel, format string, args ...any) {
		lvl := slog.LevelDebug
		if level == esdb.LogError || level == esdb.LogWarn {
			lvl = slog.LevelWarn
		}
		if !l.Enabled(context.Background(), lvl) {
			return
		}
		l.Log(context.Background(), lvl, "esdbstore: client: "+fmt.Sprintf(format, args...))
	}
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// opContext returns the context of one operation: it ends with ctx and when the store closes.
func (s *Store) opContext(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.isClosed() {
		return nil, nil, eventstore.ErrClosed
	}
	octx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	return octx, func() { stop(); cancel() }, nil
}

// acquire returns the current client, counted as in use until release.
func (s *Store) acquire() (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	s.cur.inflight.Add(1)
	return s.cur, nil
}

// replace swaps in a new client if cn, which gave up, is still the current one. The old client
// is closed only if no call is inside it (see conn).
func (s *Store) replace(cn *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.cur != cn {
		return
	}
	c, err := esdb.NewClient(&s.cfg)
	if err != nil { // the configuration was valid before; cannot happen
		s.opts.log.Error("esdbstore: cannot make a new client", "err", err)
		return
	}
	s.cur = newConn(c)
	close(cn.dead)
	s.opts.log.Warn("esdbstore: the EventStoreDB client gave up connecting; using a new one")
	if cn.inflight.Load() == 0 {
		_ = cn.c.Close()
	}
}

// result is what a call into the client returns.
type result[T any] struct {
	v   T
	err error
}

// call runs fn on the current client in a goroutine of its own and waits for it or for ctx.
// The client can block a call on its internal channel regardless of the context (while it
// discovers the server, or for good after its discovery failed), so no caller waits on it
// directly. A panic in the client (it panics on a read response it does not know) becomes an
// error.
func call[T any](s *Store, ctx context.Context, fn func(ctx context.Context, c *esdb.Client) (T, error)) (T, error) {
	var zero T
	cn, err := s.acquire()
	if err != nil {
		return zero, err
	}
	ch := make(chan result[T], 1)
	go func() {
		defer cn.inflight.Add(-1)
		defer func() {
			if r := recover(); r != nil {
				ch <- result[T]{err: fmt.Errorf("the EventStoreDB client failed: %v", r)}
			}
		}()
		v, err := fn(ctx, cn.c)
		ch <- result[T]{v, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil && classify(r.err) == kindDead {
			s.replace(cn)
		}
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-cn.dead:
		return zero, errClientGaveUp
	}
}

// LastPosition implements eventstore.Store: the position of the newest event that is not
// EventStoreDB's own.
func (s *Store) LastPosition(ctx context.Context) (eventstore.Position, error) {
	const op = "last position"
	octx, done, err := s.opContext(ctx)
	if err != nil {
		return 0, mapError(ctx, true, op, err)
	}
	defer done()
	var from esdb.AllPosition = esdb.End{}
	const page = 64
	for {
		start := from
		evs, err := call(s, octx, func(ctx context.Context, c *esdb.Client) ([]*esdb.ResolvedEvent, error) {
			return readAllPage(ctx, c, esdb.Backwards, start, page)
		})
		if err != nil {
			return 0, mapError(ctx, s.isClosed(), op, err)
		}
		for _, re := range evs {
			r := re.OriginalEvent()
			if r == nil {
				continue
			}
			if p, ok := start.(esdb.Position); ok && !after(p, r.Position) {
				continue // a backwards read from a position starts before it; be sure
			}
			ev, system, err := recorded(re)
			if err != nil {
				return 0, fmt.Errorf("esdbstore: %s: %w", op, err)
			}
			if !system {
				return ev.Position, nil
			}
			from = r.Position
		}
		if len(evs) < page {
			return eventstore.Start, nil
		}
	}
}

// Close implements eventstore.Store. Calls in progress fail with ErrClosed (an append that
// fails so may still have been written: the server decides; a retry with the same ids is
// idempotent); subscriptions end with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	cn := s.cur
	s.mu.Unlock()

	s.cancel()
	s.subs.Wait()
	deadline := time.Now().Add(s.opts.closeGrace)
	for cn.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := cn.inflight.Load(); n > 0 {
		s.opts.log.Warn("esdbstore: calls stuck inside the EventStoreDB client; leaving it open", "calls", n)
		return nil
	}
	return cn.c.Close()
}
