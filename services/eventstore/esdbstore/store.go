package esdbstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
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
	// suspect is set on a client made to replace one that gave up (its discovery found no
	// server), until the server answers a call. While it is set, calls enter the client only
	// when no other call is inside (one probe at a time) and the others fail at once with
	// ErrUnavailable: calls that queue inside a client whose discovery then fails stay blocked
	// for good (see the package documentation), so during an outage no more than the probe is
	// let in. A client that has not given up is never suspect: a slow or briefly unreachable
	// server does not make healthy calls fail.
	suspect atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// close closes the client, once.
func (cn *conn) close() error {
	cn.closeOnce.Do(func() { cn.closeErr = cn.c.Close() })
	return cn.closeErr
}

// replaced reports whether the client was replaced (dead is closed).
func (cn *conn) replaced() bool {
	select {
	case <-cn.dead:
		return true
	default:
		return false
	}
}

// newConn wraps client c; suspect says whether the server may be away (a client made to replace
// one that gave up).
func newConn(c *esdb.Client, suspect bool) *conn {
	cn := &conn{c: c, dead: make(chan struct{})}
	cn.suspect.Store(suspect)
	return cn
}

// errServerAway is what calls get while a probe call finds out whether the server is back.
var errServerAway = fmt.Errorf("%w: no EventStoreDB server answered the client's discovery; one call at a time tries again until one answers", eventstore.ErrUnavailable)

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
	if err := checkUserinfo(scheme, rest); err != nil {
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
//
// A ',' does the same where net/url refuses the string: the client then parses it again with
// every ',' made a '/' (its reading of a list of gossip seeds), the user name's and password's
// too, and reads what follows a ',' in them as hosts, named in its errors.
func checkUserinfo(scheme, rest string) error {
	bad := atAfterHost(rest)
	if !bad && strings.Contains(rest, ",") {
		if _, err := url.Parse(scheme + "://" + rest); err != nil {
			bad = atAfterHost(strings.ReplaceAll(rest, ",", "/"))
		}
	}
	if bad {
		return fmt.Errorf("%w: an '@' after the host part: percent-encode '/', '?', '#' and ',' in the user name and password (%%2F, %%3F, %%23, %%2C)", ErrBadConnectionString)
	}
	return nil
}

// atAfterHost reports whether rest (a connection string after its scheme) has an '@' after its
// first '/', '?' or '#', other than in a file setting's value.
func atAfterHost(rest string) bool {
	end := strings.IndexAny(rest, "/?#")
	if end < 0 || !strings.Contains(rest[end:], "@") {
		return false
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
	return bad
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
	s.cur = newConn(c, false)
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

// acquire returns the current client, counted as in use (inflight) until the call leaves it. While
// the client is suspect, it lets a call in only when none is inside, and otherwise returns
// errServerAway.
func (s *Store) acquire() (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	if s.cur.suspect.Load() && s.cur.inflight.Load() > 0 {
		return nil, errServerAway
	}
	s.cur.inflight.Add(1)
	return s.cur, nil
}

// observe clears suspect when the outcome of a call is an answer from the server (success or a
// refusal); errors of the transport or of the caller's context say nothing.
func (cn *conn) observe(err error) {
	if err == nil {
		cn.suspect.Store(false)
		return
	}
	switch classify(err) {
	case kindWrongExpectedVersion, kindStreamDeleted, kindNotFound, kindAccessDenied:
		cn.suspect.Store(false)
	}
}

// replace swaps in a new client if cn, which gave up, is still the current one. The old client
// is closed by the last call that leaves it (see call): closing it with a call inside would make
// that call panic.
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
	s.cur = newConn(c, true) // the server was away: probe it one call at a time
	close(cn.dead)
	s.opts.log.Warn("esdbstore: the EventStoreDB client gave up connecting; using a new one")
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
		// Everything after fn runs here, not in the caller, which may have stopped waiting: the
		// call that sees the client give up replaces it even if its caller left, and the last
		// call out of a replaced client closes it.
		v, err := protect(ctx, cn.c, fn)
		cn.observe(err)
		cn.inflight.Add(-1)
		if err != nil && classify(err) == kindDead {
			s.replace(cn)
		}
		if cn.inflight.Load() == 0 && cn.replaced() {
			_ = cn.close()
		}
		ch <- result[T]{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-cn.dead:
		return zero, errClientGaveUp
	}
}

// protect runs fn on c, turning a panic of the client (it panics on a read response it does not
// know) into an error.
func protect[T any](ctx context.Context, c *esdb.Client, fn func(ctx context.Context, c *esdb.Client) (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the EventStoreDB client failed: %v", r)
		}
	}()
	return fn(ctx, c)
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
	return cn.close()
}
