// Package distribute serves the projector's read model to edge nodes: the ConfigService Watch
// stream (proto guestlist.config.v1).
//
// # Protocol
//
// Modelled on Envoy's delta xDS. The edge opens Watch and sends a hello, WatchRequest{edge_id,
// resume_position}. The server answers with
//
//   - only the changes after resume_position, when the edge holds a position (resume_position > 0)
//     with a history token of the event store's history at it (see "Histories") and the projector
//     still retains every change after it (see projector.Retains); or
//   - a snapshot: WatchResponse{snapshot: true, position, upserts: every configuration}, split into
//     parts of at most MaxPartBytes bytes and MaxPartConfigs configurations, every part but the
//     last with more = true, all at the same position;
//
// and then with every later change, in order, one response per change (a change too large for
// one part is split like a snapshot, with more = true on all parts but the last).
//
// The edge acknowledges the last part of each response with ack_position, or refuses a response
// with error set (a NACK), at its last part or at any earlier one (edge/watch refuses a response
// behind its configuration at its first part, without reading the rest). The edge keeps its last
// good configuration and applies nothing more from the stream: every later response is a change
// on top of the refused one. So a NACK ends the stream: the server sends no further part of the
// refused response (a large snapshot is not sent whole to an edge that refused its first part)
// nor any later response, logs the refusal and ends Watch with ABORTED. The edge opens a new
// stream from the position it holds, and is answered as any edge resuming from there: the changes
// after it (the refused one again, once the cause is gone, and then the next) or a snapshot.
//
// An ack may list hostnames the edge could not prepare and left out (refused); the server logs
// them. An edge that holds such hostnames sets want_snapshot in its hello and gets a snapshot
// (after waiting for the projector to reach its position, as below) instead of the changes it
// missed, so that a newer edge gets the configurations an older one could not prepare. An ack of
// position p answers every response up to p. The server keeps at most Window responses
// unanswered and waits for acks before sending more; an edge that stops reading falls behind the
// projector's ring of changes and gets a fresh snapshot when it resumes (and one that stops while
// a part is being sent has its stream ended, see "Edges that stop reading").
//
// Snapshots are sent only once the projector has caught up with the event store since it was
// opened (projector.Ready): before that, its read model may be far behind the store, and an edge
// holding nothing would get grants revoked since. A snapshot need not be at the projector's
// position: one read of the read model is shared by the edges that need a snapshot while the
// projector still retains every change after it (they get those changes next) and it is not
// behind the position an edge holds (or, for an edge ahead of the projector, is at the projector's
// position, as a new read would be), so that edges reconnecting together while tenants write hold
// one copy of every configuration between them rather than one each.
//
// When resume_position is ahead of the projector (the projector restarted and is catching up),
// the server waits up to AheadWait for the projector to get there rather than move the edge back
// in time; past that, it sends a snapshot (which the edge refuses while it is behind what it holds).
//
// # Edges that stop reading
//
// Parts are sent under HTTP/2 flow control: an edge that stops reading (hung, or keeping its
// connection open and reading nothing) makes the server's Send block once the stream's windows are
// full, and keepalive pings do not end such a stream (the edge answers them). The stream would
// hold what it is sending (for a snapshot, every configuration: the server's shared snapshot read
// is let go of 30 s after its last use, but not the stream's reference to it) for as long as the
// edge keeps its connection. So each part's Send is timed: one that has not completed within the
// send stall limit (WithSendStallLimit, default DefaultSendStallLimit) ends the stream with
// DEADLINE_EXCEEDED, naming the edge, the part, the position and the limit; the server logs it at
// WARN and counts it (guestlist_distribute_send_stalls_total). The limit bounds one part, not a
// response: an edge reading a large snapshot slowly but steadily is not cut off.
//
// The sends run on a goroutine of their own, so Watch can return while one is blocked. As gRPC
// writes Watch's status it cancels the stream's context, and a Send waiting for flow-control
// quota returns once that context is done (grpc-go's own HTTP/2 server transport, which
// grpc.Server.Serve uses; checked against grpc-go 1.84): the goroutine returns, letting go of the
// response, and only then does Watchers stop listing the stream. What gRPC had already queued for
// the stream (at most its write quota, 64 KiB, and one part, encoded) stays in its transport with
// the status behind it, until the edge reads again (it gets them, then the status) or its
// connection closes. An edge that reads again (edge/watch) drops the parts it had of the
// unfinished response and resumes on a new stream from the position it holds, as after any
// other end of a stream.
//
// # Histories
//
// Positions alone do not identify a history: an event store restored from an older backup (at Q)
// and written to since passes the positions after Q again, with other events. Every response
// carries the history token of its position (history_token: the projector's encoding of the event
// there, see package history), which the edge keeps with its configuration and sends back in its
// hello. The server checks a hello's token against the event store (projector.CheckHistory: one
// stream read and the store's last position, on every backend):
//
//   - the store holds the token's event at resume_position: the same history; served as above;
//   - the store has passed resume_position without holding that event there: the edge holds a
//     history the store no longer has (every change of the store's history between Q and
//     resume_position would be missed by resuming). The server logs a warning, counts it
//     (guestlist_distribute_history_diverged_total) and answers with a snapshot marked
//     replaces_history, which the edge takes even when it is behind what it holds;
//   - the store has not reached resume_position (restored and not written to since, a store still
//     catching up, an empty or another store): nothing is known; served as above (the edge keeps
//     its configuration). Should the projector reach resume_position while the server waits for
//     it, the store has too, and the token is checked again before any change is sent; a store
//     that still has not reached it (restored under the running projector) proves nothing of
//     the edge's history, which gets a snapshot (at resume_position or later) as below.
//
// A hello with a resume_position but without a token (an older edge, a configuration saved before
// tokens, a read model that did not know the token) cannot be told from one of another history,
// so it gets a snapshot at resume_position or later (as above when the projector is behind),
// never the changes after a position that may be another history's: a snapshot is right whatever
// history the edge holds, and carries a token (unless the read model does not know its
// checkpoint's event, see projector), so this happens once per edge. A token the server cannot
// read (not its encoding, over history.MaxTokenBytes, of another position than resume_position)
// is logged and treated as none; it is used for nothing but that lookup. A check that fails (the
// event store's read failed) ends the stream with UNAVAILABLE, sending nothing: the edge keeps its
// configuration and resumes on a new stream (resumed by position, an edge of another history would
// take the store's changes after its position, and their token, for its own, and no later check
// could tell). The replacing snapshot is the one any edge would get.
//
// # Authorization
//
// The server checks no tokens: the API server's interceptors authenticate the caller, and the
// Authorize hook (WithAuthorize), called at the start of each Watch, decides whether that caller
// may read configuration (the wiring checks for an edge principal). Watch only reads.
//
// # Telemetry: traces
//
// Every change sent to an edge whose events carried a trace (projector.Change.Traces) is sent
// inside a span named SendSpanName, a child of the last traced event's apply span and linked to
// the others of the change. The span's W3C context goes to the edge in the response's
// traceparent and tracestate fields (every part), and the edge continues the trace. Snapshots
// carry no trace context.
//
// # Telemetry: metrics
//
// Prometheus names (see services/telemetry):
//
//	guestlist_distribute_watchers                      open Watch streams
//	guestlist_distribute_edge_acked_position{edge_id}  per open stream, the last position the edge acknowledged
//	guestlist_distribute_responses_total{kind}         responses sent (kind snapshot or change; parts count once)
//	guestlist_distribute_nacks_total                   responses the edges refused
//	guestlist_distribute_history_diverged_total        hellos whose history the event store no longer has
//	                                                   (answered with a snapshot that replaces it)
//	guestlist_distribute_send_stalls_total             streams ended because the edge did not take a part
//	                                                   within the send stall limit
//
// edge_id is what each edge calls itself (printable ASCII, at most 256 bytes; a hello with another
// is refused with InvalidArgument); edges authenticate with the edge token, and only open streams
// are reported, so the label is bounded by the fleet's size.
package distribute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/history"
	"guestlist.dev/projections/projector"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// Defaults of the options.
const (
	// DefaultWindow is how many responses may be unanswered before the server waits.
	DefaultWindow = 64
	// DefaultMaxPartBytes bounds the encoded configurations of one response.
	DefaultMaxPartBytes = 1 << 20
	// DefaultMaxPartConfigs bounds the configurations of one response.
	DefaultMaxPartConfigs = 1000
	// DefaultAheadWait is how long Watch waits for the projector to reach an edge's resume
	// position.
	DefaultAheadWait = 10 * time.Second
	// DefaultSendStallLimit is how long the sending of one part may take before the stream is
	// ended (see "Edges that stop reading" in the package documentation).
	DefaultSendStallLimit = 2 * time.Minute
)

// changesPerRead is how many changes the server takes from the projector at a time.
const changesPerRead = 64

// Option configures New.
type Option func(*options)

type options struct {
	log            *slog.Logger
	authorize      func(context.Context) error
	window         int
	maxPartBytes   int
	maxPartConfigs int
	aheadWait      time.Duration
	sendStallLimit time.Duration
	tp             trace.TracerProvider
	mp             metric.MeterProvider
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithAuthorize sets the hook that Watch calls first, with the stream's context. An error ends the
// call: a gRPC status error is returned as is, any other error as PERMISSION_DENIED.
func WithAuthorize(authorize func(ctx context.Context) error) Option {
	return func(o *options) { o.authorize = authorize }
}

// WithWindow sets how many responses may be unanswered (neither acknowledged nor refused) before
// the server waits (default DefaultWindow). Values below 1 keep the default.
func WithWindow(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.window = n
		}
	}
}

// WithPartLimits sets the most bytes of encoded configurations and the most configurations of one
// response (defaults DefaultMaxPartBytes, DefaultMaxPartConfigs); larger snapshots and changes are
// sent in parts. A single configuration larger than maxBytes is sent alone. Values below 1 keep the
// default.
func WithPartLimits(maxBytes, maxConfigs int) Option {
	return func(o *options) {
		if maxBytes > 0 {
			o.maxPartBytes = maxBytes
		}
		if maxConfigs > 0 {
			o.maxPartConfigs = maxConfigs
		}
	}
}

// WithAheadWait sets how long Watch waits for the projector to reach a resume position it has
// not reached yet before it sends a snapshot instead (default DefaultAheadWait).
func WithAheadWait(d time.Duration) Option {
	return func(o *options) { o.aheadWait = d }
}

// WithSendStallLimit sets how long the sending of one part of a response may take (the edge
// taking it in, under HTTP/2 flow control) before the server ends the stream with
// DEADLINE_EXCEEDED (default DefaultSendStallLimit; see "Edges that stop reading" in the package
// documentation). It bounds each part, not a whole response: an edge reading a large snapshot
// slowly but steadily is not cut off. Values below 1 keep the default.
func WithSendStallLimit(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.sendStallLimit = d
		}
	}
}

// Server implements configv1.ConfigServiceServer on a projector. Create it with New.
type Server struct {
	configv1.UnimplementedConfigServiceServer

	p    *projector.Projector
	opts options
	log  *slog.Logger
	tel  *telemetry

	mu       sync.Mutex
	watchers map[*watcher]struct{}

	// snapMu serialises snapshot reads; the last one is reused while the projector retains the
	// changes after it (the edge gets them next), so edges connecting together (after a restart,
	// while tenants keep writing) share one read of the read model instead of holding one copy
	// each. It holds every configuration, so it is dropped snapKeep after it was last used.
	snapMu      sync.Mutex
	snapPos     uint64
	snapToken   []byte
	snapConfigs []*configv1.HostnameConfig
	snapKeep    time.Duration
	snapUses    uint64 // the last use's timer drops the snapshot
}

// snapKeep is how long a snapshot read is kept for edges connecting after it.
const snapKeep = 30 * time.Second

var _ configv1.ConfigServiceServer = (*Server)(nil)

// New returns a ConfigService server streaming p's read model. Should its metrics fail to
// register, it logs that and serves without them.
func New(p *projector.Projector, opts ...Option) *Server {
	o := options{
		log:            slog.Default(),
		window:         DefaultWindow,
		maxPartBytes:   DefaultMaxPartBytes,
		maxPartConfigs: DefaultMaxPartConfigs,
		aheadWait:      DefaultAheadWait,
		sendStallLimit: DefaultSendStallLimit,
	}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{p: p, opts: o, log: o.log.With("component", "distribute"), watchers: map[*watcher]struct{}{}, snapKeep: snapKeep}
	tel, err := newTelemetry(s)
	if err != nil {
		s.log.Error("distribute: metrics unavailable", "err", err)
		tel = &telemetry{tracer: otel.GetTracerProvider().Tracer(scope)}
	}
	s.tel = tel
	return s
}

// WatcherStatus describes one open Watch stream.
type WatcherStatus struct {
	// EdgeID is what the edge called itself in its hello.
	EdgeID string
	// Since is when the stream opened.
	Since time.Time
	// Sent is the position of the last response sent; Acked the last position the edge
	// acknowledged.
	Sent, Acked uint64
	// Unanswered is how many responses await an ack or a nack.
	Unanswered int
	// Snapshots, Responses and Nacks count snapshots and responses sent (a response in parts
	// counts once), and responses refused (a refusal ends the stream, so Nacks is 0 or 1).
	Snapshots, Responses, Nacks uint64
}

// Watchers returns the status of every open Watch stream.
func (s *Server) Watchers() []WatcherStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]WatcherStatus, 0, len(s.watchers))
	for w := range s.watchers {
		out = append(out, w.status())
	}
	return out
}

// watcher is the state of one Watch stream that its sender and receiver share.
type watcher struct {
	edgeID string
	since  time.Time

	mu         sync.Mutex
	unanswered []uint64 // positions of sent responses awaiting an answer, ascending
	answered   chan struct{}
	sent       uint64
	acked      uint64
	snapshots  uint64
	responses  uint64
	nacks      uint64
	// refused is the edge's NACK, once it refused a response: nothing more is sent. It is set
	// under mu (before nacks counts it) and read without.
	refused atomic.Pointer[refusal]
	// stall times each part's Send.
	stall *sendStall
}

// sendStall times the Sends of one stream (its sender's, one at a time): a Send still in progress
// after limit closes stalled, on which Watch ends the stream (see "Edges that stop reading" in the
// package documentation). One timer serves every Send: reset before it, stopped after it.
type sendStall struct {
	limit   time.Duration
	timer   *time.Timer   // runs fire; stopped unless a Send is in progress
	stalled chan struct{} // closed by fire
	once    sync.Once
	// What the Send in progress is sending, for the status that ends the stream: stored before
	// the timer is reset, read once stalled is closed.
	pos         atomic.Uint64
	part, parts atomic.Int64
}

func newSendStall(limit time.Duration) *sendStall {
	st := &sendStall{limit: limit, stalled: make(chan struct{})}
	st.timer = time.AfterFunc(time.Hour, st.fire)
	st.timer.Stop()
	return st
}

func (st *sendStall) fire() { st.once.Do(func() { close(st.stalled) }) }

// send sends part (number i of n, from 0, of the response at pos) on stream, timed.
func (st *sendStall) send(stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse], part *configv1.WatchResponse, pos uint64, i, n int) error {
	st.pos.Store(pos)
	st.part.Store(int64(i))
	st.parts.Store(int64(n))
	st.timer.Reset(st.limit)
	err := stream.Send(part)
	st.timer.Stop()
	return err
}

// err returns the status that ends the stalled stream of edgeID.
func (st *sendStall) err(edgeID string) error {
	return status.Errorf(codes.DeadlineExceeded,
		"distribute: edge %q has not taken part %d of %d of the response at position %d within the send stall limit (%s); the stream ends: resume on a new one",
		edgeID, st.part.Load()+1, st.parts.Load(), st.pos.Load(), st.limit)
}

// sendPanic is a panic of a stream's sender goroutine, which Watch panics with again on its own
// goroutine (where the server's interceptors recover it).
type sendPanic struct {
	value any
	stack []byte
}

func (p *sendPanic) String() string {
	return fmt.Sprintf("%v (in the Watch sender goroutine)\n%s", p.value, p.stack)
}

// sendResult is what a stream's sender goroutine hands Watch as it returns.
type sendResult struct {
	err      error
	panicked *sendPanic
}

// refusal is an edge's NACK of the response at position, which ends the Watch stream.
type refusal struct {
	position uint64
	reason   string
}

func (r *refusal) Error() string {
	return fmt.Sprintf("distribute: the edge refused the response at position %d: %s", r.position, r.reason)
}

func (w *watcher) status() WatcherStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return WatcherStatus{EdgeID: w.edgeID, Since: w.since, Sent: w.sent, Acked: w.acked, Unanswered: len(w.unanswered), Snapshots: w.snapshots, Responses: w.responses, Nacks: w.nacks}
}

// Watch implements configv1.ConfigServiceServer.
func (s *Server) Watch(stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse]) error {
	ctx := stream.Context()
	if s.opts.authorize != nil {
		if err := s.opts.authorize(ctx); err != nil {
			if _, ok := status.FromError(err); ok {
				return err
			}
			return status.Error(codes.PermissionDenied, "not allowed to watch configuration")
		}
	}
	hello, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	if err := checkEdgeID(hello.GetEdgeId()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	w := &watcher{edgeID: hello.GetEdgeId(), since: time.Now(), answered: make(chan struct{}), stall: newSendStall(s.opts.sendStallLimit)}
	log := s.log.With("edge_id", w.edgeID)
	s.mu.Lock()
	s.watchers[w] = struct{}{}
	s.mu.Unlock()
	log.Info("distribute: edge watching", "resume_position", hello.GetResumePosition(), "history_token", len(hello.GetHistoryToken()) > 0)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	recvErr := make(chan error, 1)
	go func() {
		recvErr <- s.receive(stream, w, log)
		cancel()
	}()
	// The sends run on a goroutine of their own, so that a Send the edge blocks (it stopped
	// reading) cannot hold this one: past the stall limit, Watch returns, and gRPC, ending the
	// stream, ends the Send (see "Edges that stop reading" in the package documentation). The
	// sender forgets w as it returns (so Watchers lists a stream until everything it held is let
	// go), before handing its result over.
	done, abandoned := make(chan sendResult), make(chan struct{})
	go func() {
		var res sendResult
		defer func() {
			if r := recover(); r != nil {
				res = sendResult{panicked: &sendPanic{value: r, stack: debug.Stack()}}
			}
			s.mu.Lock()
			delete(s.watchers, w)
			s.mu.Unlock()
			select {
			case done <- res:
			case <-abandoned:
				if res.panicked != nil {
					log.Error("distribute: panic in the sender of a stream ended for a stalled send", "panic", res.panicked.String())
				}
			}
		}()
		res.err = s.send(ctx, stream, w, log, hello)
	}()
	select {
	case res := <-done:
		if res.panicked != nil {
			panic(res.panicked)
		}
		err = res.err
	case <-w.stall.stalled:
		close(abandoned)
		cancel()
		if s.tel.stalls != nil {
			s.tel.stalls.Add(stream.Context(), 1)
		}
		log.Warn("distribute: the edge has not taken a part within the send stall limit (it stopped reading?); ending the stream, which lets go of the response",
			"position", w.stall.pos.Load(), "part", w.stall.part.Load()+1, "parts", w.stall.parts.Load(), "limit", w.stall.limit)
		return w.stall.err(w.edgeID)
	}
	cancel()
	select {
	case rerr := <-recvErr:
		if errors.Is(rerr, io.EOF) {
			log.Info("distribute: edge closed the stream")
			return nil
		}
		if err == nil || errors.Is(err, context.Canceled) {
			err = rerr
		}
	default:
	}
	if r := w.refused.Load(); r != nil {
		// The edge resumes from its last good position on a new stream (see the package doc).
		log.Info("distribute: watch ended: the edge refused a response; it resumes on a new stream", "position", r.position)
		return status.Error(codes.Aborted, r.Error()+"; nothing more is sent on this stream: resume from the last position applied")
	}
	if err != nil {
		log.Info("distribute: watch ended", "err", err)
	}
	if _, ok := status.FromError(err); !ok {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return status.FromContextError(err).Err()
		}
		return status.Error(codes.Unavailable, err.Error())
	}
	return err
}

// maxEdgeID bounds the edge_id of a hello, which goes into logs and a metric label.
const maxEdgeID = 256

// checkEdgeID returns why id is not an acceptable edge_id: longer than maxEdgeID bytes, or with
// bytes outside printable ASCII.
func checkEdgeID(id string) error {
	if len(id) > maxEdgeID {
		return fmt.Errorf("edge_id: %d bytes; at most %d", len(id), maxEdgeID)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return fmt.Errorf("edge_id: byte %d (0x%02x) is not printable ASCII", i, id[i])
		}
	}
	return nil
}

// receive reads the edge's acks until the stream ends or a NACK, which it records in w and
// returns (a *refusal): the stream ends with it.
func (s *Server) receive(stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse], w *watcher, log *slog.Logger) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		pos := req.GetAckPosition()
		nack := req.GetError() != ""
		if nack {
			log.Warn("distribute: edge refused configuration", "position", pos, "error", req.GetError())
		}
		if refused := req.GetRefused(); len(refused) > 0 {
			names := make([]string, len(refused))
			for i, r := range refused {
				names[i] = r.GetHostname()
			}
			log.Warn("distribute: edge applied the configuration without hostnames it could not prepare, and refuses them",
				"position", pos, "refused_total", req.GetRefusedTotal(), "hostnames", names, "first_error", refused[0].GetError())
		}
		w.mu.Lock()
		if pos > w.sent {
			w.mu.Unlock()
			log.Warn("distribute: edge answered a position never sent; ignored", "position", pos, "sent", w.sent)
			continue
		}
		n := 0
		for n < len(w.unanswered) && w.unanswered[n] <= pos {
			n++
		}
		w.unanswered = w.unanswered[n:]
		var refused *refusal
		if nack {
			refused = &refusal{position: pos, reason: req.GetError()}
			w.refused.Store(refused)
			w.nacks++
			if s.tel.nacks != nil {
				s.tel.nacks.Add(stream.Context(), 1)
			}
		} else {
			w.acked = max(w.acked, pos)
		}
		close(w.answered)
		w.answered = make(chan struct{})
		w.mu.Unlock()
		if refused != nil {
			return refused
		}
	}
}

// noVerdict is checkHistory's verdict for a hello without a usable history token.
const noVerdict history.Verdict = 0

// send streams the snapshot or the missed changes, then live changes, until ctx is done or an
// error. The hello's want_snapshot asks for a snapshot (at resume_position or later) instead of
// the missed changes; its history_token, when the store no longer has that history, for a snapshot
// that replaces the edge's configuration (see "Histories" in the package documentation).
func (s *Server) send(ctx context.Context, stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse], w *watcher, log *slog.Logger, hello *configv1.WatchRequest) error {
	resume := hello.GetResumePosition()
	cursor := resume
	needSnapshot := resume == 0
	var verdict history.Verdict // noVerdict: no usable token
	if !needSnapshot {
		var err error
		if verdict, err = s.checkHistory(ctx, log, resume, hello.GetHistoryToken()); err != nil {
			return err
		}
	}
	replace := verdict == history.Diverged
	needSnapshot = needSnapshot || replace
	if !needSnapshot && resume > s.p.Position() {
		wctx, wcancel := context.WithTimeout(ctx, s.opts.aheadWait)
		err := s.p.WaitFor(wctx, resume)
		wcancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, projector.ErrClosed):
			return status.Error(codes.Unavailable, "configuration is not being served")
		case err != nil:
			log.Warn("distribute: edge is ahead of the projector; sending a snapshot", "resume_position", resume, "position", s.p.Position())
			needSnapshot = true
		}
	}
	if !needSnapshot && verdict == history.NotReached {
		// The projector has reached resume since the hello, so the store has too: check again,
		// or the changes after resume of another history would be taken for this one's.
		var err error
		if verdict, err = s.checkHistory(ctx, log, resume, hello.GetHistoryToken()); err != nil {
			return err
		}
		replace = verdict == history.Diverged
		needSnapshot = replace
		if verdict == history.NotReached {
			// The store says it has not reached a position the projector has applied (restored
			// while the server waited?): nothing is proven of the edge's history, so it is not
			// resumed by position either; the projector's snapshot is at resume or later.
			log.Warn("distribute: the event store still has not reached the edge's position, which the projector has; sending a snapshot rather than the changes after it",
				"resume_position", resume, "position", s.p.Position())
			needSnapshot = true
		}
	}
	if !needSnapshot && verdict == noVerdict {
		log.Info("distribute: the edge's position comes without a usable history token; sending a snapshot rather than the changes after a position that may be another history's",
			"resume_position", resume)
		needSnapshot = true
	}
	if !needSnapshot && hello.GetWantSnapshot() {
		log.Info("distribute: the edge asks for a snapshot (it left out hostnames it could not prepare)", "resume_position", resume)
		needSnapshot = true
	}
	if !needSnapshot && !s.p.Retains(resume) {
		log.Info("distribute: changes after the edge's position are no longer retained; sending a snapshot", "resume_position", resume)
		needSnapshot = true
	}
	for {
		if needSnapshot {
			if err := s.waitWindow(ctx, w); err != nil {
				return err
			}
			if !s.p.Ready() {
				// A projector still catching up (its read model rebuilt, say) holds an old
				// configuration: a snapshot of it would give an edge without one grants since
				// revoked. The edge keeps what it has, or refuses every hostname, meanwhile.
				log.Info("distribute: the projector has not caught up with the event store; the snapshot waits until it has", "position", s.p.Position())
				switch err := s.p.WaitReady(ctx); {
				case errors.Is(err, projector.ErrClosed):
					return status.Error(codes.Unavailable, "configuration is not being served")
				case err != nil:
					return ctx.Err()
				}
			}
			pos, token, configs, err := s.snapshot(cursor)
			if err != nil {
				log.Error("distribute: reading the snapshot failed", "err", err)
				return status.Error(codes.Unavailable, "configuration snapshot unavailable")
			}
			head := &configv1.WatchResponse{Position: pos, Snapshot: true, HistoryToken: token, ReplacesHistory: replace}
			if err := s.sendParts(stream, w, head, configs, nil, nil); err != nil {
				return err
			}
			if replace {
				log.Warn("distribute: sent a snapshot that replaces the edge's configuration of another history",
					"resume_position", resume, "position", pos, "hostnames", len(configs))
			}
			cursor, needSnapshot, replace = pos, false, false
			log.Debug("distribute: snapshot sent", "position", pos, "hostnames", len(configs))
		}
		changes, err := s.p.Changes(ctx, cursor, changesPerRead)
		switch {
		case errors.Is(err, projector.ErrCompacted):
			log.Info("distribute: edge fell behind the retained changes; sending a snapshot", "position", cursor)
			needSnapshot = true
			continue
		case errors.Is(err, projector.ErrClosed):
			return status.Error(codes.Unavailable, "configuration is not being served")
		case err != nil:
			return err
		}
		for _, c := range changes {
			if err := s.waitWindow(ctx, w); err != nil {
				return err
			}
			span := s.tel.startSend(ctx, c, w.edgeID)
			err := s.sendParts(stream, w, &configv1.WatchResponse{Position: c.Position, HistoryToken: c.HistoryToken}, c.Upserts, c.Removals, span)
			if span != nil {
				if err != nil {
					span.RecordError(err)
					span.SetStatus(otelcodes.Error, "send failed")
				}
				log.DebugContext(trace.ContextWithSpan(ctx, span), "distribute: change sent", "position", c.Position,
					"upserts", len(c.Upserts), "removals", len(c.Removals))
				span.End()
			}
			if err != nil {
				return err
			}
			cursor = c.Position
		}
	}
}

// checkHistory checks the edge's history token of resume against the event store: history.Diverged
// when the store has passed resume without holding the token's event there (the edge holds a
// history the store no longer has; logged and counted), history.Same or history.NotReached, or 0
// for a missing token and one the server cannot read (logged). A check that fails (the store's
// read failed) is logged and returned as an UNAVAILABLE status error that ends the stream: resuming
// by position instead would send an edge of another history the store's changes after its
// position, whose token it would keep, and no later hello would tell the histories apart. The edge
// keeps its configuration and resumes on a new stream.
func (s *Server) checkHistory(ctx context.Context, log *slog.Logger, resume uint64, token []byte) (history.Verdict, error) {
	if len(token) == 0 {
		return 0, nil
	}
	res, err := s.p.CheckHistory(ctx, resume, token)
	switch {
	case errors.Is(err, history.ErrBadToken):
		log.Warn("distribute: the edge sent a history token that is not the server's; treated as none", "resume_position", resume, "token_bytes", len(token), "err", err)
		return 0, nil
	case err != nil && ctx.Err() != nil:
		return 0, ctx.Err()
	case err != nil:
		log.Warn("distribute: could not check the edge's history against the event store; ending the stream (the edge resumes on a new one)", "resume_position", resume, "err", err)
		return 0, status.Error(codes.Unavailable, "the edge's history token could not be checked against the event store; resume on a new stream")
	case res.Verdict != history.Diverged:
		log.Debug("distribute: the edge's history", "resume_position", resume, "verdict", res.Verdict)
		return res.Verdict, nil
	}
	ref, _ := history.Decode(token)
	log.Warn("distribute: the edge holds a configuration of another history than the event store's (restored from an older backup and written to since?); "+
		"sending a snapshot that replaces it", "resume_position", resume, "edge_event", ref.String(), "store", res.Describe())
	if s.tel.diverged != nil {
		s.tel.diverged.Add(ctx, 1)
	}
	return history.Diverged, nil
}

// snapshot returns a snapshot of the projector's read model and its history token. It reuses the
// last one read when the projector still retains every change after it, which the caller sends
// next, and it is at position min or later (an edge refuses a snapshot behind what it holds) or,
// for a min the projector has not reached (an edge ahead of it), at the projector's position,
// where a new read would be too; otherwise it reads the read model again.
func (s *Server) snapshot(min uint64) (uint64, []byte, []*configv1.HostnameConfig, error) {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	if s.snapConfigs == nil || !s.p.Retains(s.snapPos) || (s.snapPos < min && s.snapPos != s.p.Position()) {
		s.snapConfigs = nil // let the old one go before reading the next
		pos, token, configs, err := s.p.SnapshotWithHistory()
		if err != nil {
			return 0, nil, nil, err
		}
		if configs == nil {
			configs = []*configv1.HostnameConfig{}
		}
		s.snapPos, s.snapToken, s.snapConfigs = pos, token, configs
	}
	s.snapUses++
	use := s.snapUses
	time.AfterFunc(s.snapKeep, func() { // an earlier use's timer finds a later use and keeps it
		s.snapMu.Lock()
		defer s.snapMu.Unlock()
		if s.snapUses == use { // not used since
			s.snapConfigs = nil
		}
	})
	return s.snapPos, s.snapToken, s.snapConfigs, nil
}

// waitWindow waits until fewer than Window responses are unanswered.
func (s *Server) waitWindow(ctx context.Context, w *watcher) error {
	for {
		w.mu.Lock()
		n, ch := len(w.unanswered), w.answered
		w.mu.Unlock()
		if n < s.opts.window {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendParts sends one response, in parts if it is large: head's position, snapshot flag, history
// token and replaces_history on every part, and span's trace context (none when span is nil). Once
// the edge has refused a response (this one or an earlier one), it sends no further part and
// returns the refusal.
func (s *Server) sendParts(stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse], w *watcher, head *configv1.WatchResponse, upserts []*configv1.HostnameConfig, removals []string, span trace.Span) error {
	if r := w.refused.Load(); r != nil {
		return r
	}
	pos, snapshot := head.GetPosition(), head.GetSnapshot()
	parts := Split(pos, snapshot, upserts, removals, s.opts.maxPartBytes, s.opts.maxPartConfigs)
	tp, ts := traceFields(span)
	for _, part := range parts {
		part.HistoryToken, part.ReplacesHistory = head.GetHistoryToken(), head.GetReplacesHistory()
		part.Traceparent, part.Tracestate = tp, ts
	}
	if s.tel.responses != nil {
		kind := s.tel.change
		if snapshot {
			kind = s.tel.snapshot
		}
		s.tel.responses.Add(stream.Context(), 1, kind...)
	}
	// Count the response as unanswered before its last part can be answered.
	w.mu.Lock()
	w.unanswered = append(w.unanswered, pos)
	w.sent = pos
	w.responses++
	if snapshot {
		w.snapshots++
	}
	w.mu.Unlock()
	for i, part := range parts {
		if r := w.refused.Load(); r != nil && i > 0 {
			return r
		}
		if err := w.stall.send(stream, part, pos, i, len(parts)); err != nil {
			return fmt.Errorf("distribute: send position %d: %w", pos, err)
		}
	}
	return nil
}

// Split cuts a response into parts of at most maxBytes bytes of encoded configurations and
// hostnames and maxConfigs entries each (a single larger entry travels alone), every part at
// position pos with the given snapshot flag and more = true on all but the last. It always
// returns at least one part.
func Split(pos uint64, snapshot bool, upserts []*configv1.HostnameConfig, removals []string, maxBytes, maxConfigs int) []*configv1.WatchResponse {
	var parts []*configv1.WatchResponse
	cur := &configv1.WatchResponse{Position: pos, Snapshot: snapshot}
	n, size := 0, 0
	room := func(sz int) {
		if n > 0 && (n >= maxConfigs || size+sz > maxBytes) {
			cur.More = true
			parts = append(parts, cur)
			cur = &configv1.WatchResponse{Position: pos, Snapshot: snapshot}
			n, size = 0, 0
		}
		n++
		size += sz
	}
	for _, c := range upserts {
		room(proto.Size(c) + 4) // + tag and length
		cur.Upserts = append(cur.Upserts, c)
	}
	for _, r := range removals {
		room(len(r) + 3)
		cur.Removals = append(cur.Removals, r)
	}
	return append(parts, cur)
}
