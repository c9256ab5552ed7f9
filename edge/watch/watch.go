// Package watch is the edge's client of ConfigService.Watch: it keeps a configset.Store up to date
// with the control plane's configuration and persists it, so that an edge restarted without the
// control plane serves its last configuration.
//
// [Run] loads the persisted configuration (Options.StatePath) into the store, unless the store
// holds one already, then, forever until its context ends: opens a Watch stream (with the edge
// token as `authorization: Bearer ...` metadata), says hello with the edge id and the position the
// store holds, and applies every
// response to the store. The parts of a multi-part response (more = true) are collected and
// applied together with the last part. Each applied response is acknowledged (ack_position = its
// position) and saved to StatePath. A response that cannot be applied is refused (ack_position and
// error), the store keeps its configuration, and the stream is closed and reopened after a
// back-off, resuming from the store's position: the edge never skips a change it could not apply,
// so the position it reports (config_revision in the decision log) always describes exactly the
// configuration it enforces. The one exception is a hostname whose own configuration cannot be
// prepared (configset.RefusedError): the response is applied without it, the edge refuses that
// hostname as an unknown one (its handshakes fail, so no decision names a configuration it does not
// enforce), and the acknowledgement lists it (refused), so that one tenant's configuration cannot
// hold up every other tenant's changes. The store keeps such hostnames (configset.Set.Refused, also
// in the saved file); until it has received a snapshot, a process holding any asks for one in its
// hello (want_snapshot), so that an edge upgraded to a version that can prepare them gets them
// again rather than only the changes after its position.
//
// Saving runs on its own goroutine and coalesces: while one save is in progress, further applied
// responses only mark the set dirty, and the next save writes the then current set; the file is
// never more than one save behind. A save appends to the file what changed since the last one
// (configset.StateFile), so that a change to one hostname of a million writes a few hundred
// bytes, not the whole configuration; the whole set is written again when the changes appended
// reach half its size (at least 1 MiB). Run saves once more before it returns, writing the whole set. A failed or
// ended stream is reopened after a jittered exponential back-off (Options.Backoff), reset by every
// applied response. While disconnected, the store keeps serving the last configuration it applied.
// With Options.Alternates, each reconnection goes to the next ConfigService in turn (failover
// between projectors).
//
// # Histories
//
// Every response carries the history token of its position, which the store keeps with the
// configuration (configset.Set.HistoryToken, also in the saved file) and the hello sends back
// (history_token). The edge treats it as opaque. When the control plane's event store no longer
// has the edge's history (restored from an older backup and written to since), the answer to the
// hello is a snapshot marked replaces_history, which the edge applies even though it is behind
// the position it holds, logging the move; it then saves it as usual. A snapshot behind the edge
// without the mark, or the mark on anything but the first response of a stream, is refused.
package watch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"guestlist.dev/edge/configset"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// Default back-off bounds.
const (
	DefaultBackoffMin = 250 * time.Millisecond
	DefaultBackoffMax = 30 * time.Second
)

// maxParts bounds the number of parts of one multi-part response.
const maxParts = 1 << 20

// Backoff bounds the delay before reconnecting: the n-th consecutive failure waits a random
// duration between half and all of min(Max, Min·2^n).
type Backoff struct {
	// Min is the first delay; 0 means DefaultBackoffMin.
	Min time.Duration
	// Max is the largest delay; 0 means DefaultBackoffMax.
	Max time.Duration
}

// Options configures Run.
type Options struct {
	// EdgeID names the edge in the hello message.
	EdgeID string
	// Token is the edge's bearer token, sent as `authorization: Bearer <Token>` metadata; empty
	// sends none.
	Token string
	// StatePath is where the configuration is persisted (through a configset.StateFile after
	// applied responses, coalesced: the changes appended, the whole set written as Run returns)
	// and loaded from at start (LoadState), unless the store already holds a complete
	// configuration (the caller loaded it); empty disables persistence.
	StatePath string
	// Logger receives the client's logs; nil means slog.Default().
	Logger *slog.Logger
	// Backoff bounds the reconnection delays.
	Backoff Backoff
	// Alternates are further ConfigService connections (other projectors of the same event
	// store). After a stream fails or ends, Run reopens it on the next connection in turn (the
	// conn given to Run, then Alternates[0], Alternates[1], ..., and round again), resuming from
	// the position the store holds: positions are the event store's, the same on every projector.
	Alternates []grpc.ClientConnInterface
	// TracerProvider makes the UpdateSpanName spans; nil means the global provider.
	TracerProvider trace.TracerProvider
	// MeterProvider makes the client's metrics; nil means the global provider.
	MeterProvider metric.MeterProvider
	// OnStatus, if set, is called with the error that ended each Watch stream (a refused token,
	// an unreachable ConfigService, ...) before Run reconnects, and with nil when a stream applies
	// its first response. Readiness checks use it to say why the edge has no configuration. It
	// must not block.
	OnStatus func(error)
}

// Run keeps store up to date from the ConfigService at conn until ctx is done (see the package
// documentation), and then returns nil. It returns an error at once only for a nil store or
// connection, or when its metrics cannot be registered.
func Run(ctx context.Context, conn grpc.ClientConnInterface, store *configset.Store, opts Options) error {
	if store == nil {
		return errors.New("watch: no store")
	}
	if conn == nil {
		return errors.New("watch: no connection")
	}
	clients := []configv1.ConfigServiceClient{configv1.NewConfigServiceClient(conn)}
	targets := []string{target(conn, 0)}
	for i, alt := range opts.Alternates {
		if alt == nil {
			return fmt.Errorf("watch: Options.Alternates[%d] is nil", i)
		}
		clients = append(clients, configv1.NewConfigServiceClient(alt))
		targets = append(targets, target(alt, i+1))
	}
	w := &watcher{clients: clients, targets: targets, store: store, opts: opts, log: opts.Logger}
	if w.log == nil {
		w.log = slog.Default()
	}
	if w.opts.Backoff.Min <= 0 {
		w.opts.Backoff.Min = DefaultBackoffMin
	}
	if w.opts.Backoff.Max <= 0 {
		w.opts.Backoff.Max = DefaultBackoffMax
	}
	w.opts.Backoff.Max = max(w.opts.Backoff.Max, w.opts.Backoff.Min)
	tel, err := newTelemetry(w)
	if err != nil {
		return err
	}
	w.tel = tel
	defer tel.close()
	w.loadState()
	if w.opts.StatePath != "" {
		w.dirty = make(chan struct{}, 1)
		// The saver's last save follows the last session's return, not the end of ctx: a
		// response whose Apply is in progress when ctx ends is applied all the same, and that
		// save must hold it.
		stopSaver, saverDone := make(chan struct{}), make(chan struct{})
		go w.saver(w.store.Load(), stopSaver, saverDone)
		defer func() { close(stopSaver); <-saverDone }()
	}

	failures := 0
	for {
		applied, err := w.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if applied {
			failures = 0
		}
		if w.opts.OnStatus != nil {
			w.opts.OnStatus(err)
		}
		delay := w.delay(failures)
		failures++
		w.cur = (w.cur + 1) % len(w.clients)
		w.log.Warn("configuration stream ended; reconnecting", "error", err, "retry_in", delay,
			"position", store.Load().Position(), "next", w.targets[w.cur])
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

type watcher struct {
	clients []configv1.ConfigServiceClient // the connection given to Run, then Options.Alternates
	targets []string                       // the clients' targets, for logs
	cur     int                            // the client of the next session
	store   *configset.Store
	opts    Options
	log     *slog.Logger
	dirty   chan struct{} // signals the saver; nil without StatePath
	tel     *telemetry
	// snapshotted: this process applied a snapshot; the hostnames the store refuses since were
	// refused by this very version, and a snapshot would not bring them back.
	snapshotted bool
}

// saver saves the store whenever it is signalled, and once more when stop is closed (Run
// returns: no session applies anything any more) if the store moved since the last save. saved
// is the set the file holds (the one loaded from it, or none), taken before the first session
// starts: taken here, it could be a set a session applied (and signalled) before this goroutine
// ran, which would then never be saved until the next one.
//
// It saves through a configset.StateFile: the first save writes the whole set (unless the file
// was loaded whole, see configset.Store.StateFile), and later ones append what changed, so that a
// change to one hostname of many writes little. The last save writes the whole set (Compact),
// also when nothing changed since a file with changes appended (or a tail a crash cut short) was
// loaded refusing no hostname (configset.StateFile.Appended; after a load that refused some, the
// file is left as it is), so that the file an edge leaves when it stops is one that versions
// before changes were appended read too.
func (w *watcher) saver(saved *configset.Set, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if testHookSaverStart != nil {
		testHookSaverStart()
	}
	file := w.store.StateFile(w.opts.StatePath)
	// Sets are compared, not positions: a snapshot at the position the edge holds may bring
	// hostnames it had left out (want_snapshot).
	wrote := false // file has written: its changes may need compacting at the end
	save := func(last bool) {
		set := w.store.Load()
		// At the end, a file loaded with changes appended or a tail left out (after a crash)
		// is compacted too.
		if !set.Complete() || (set == saved && (!last || (!wrote && !file.Appended()))) {
			return
		}
		start := time.Now()
		var err error
		if last {
			err = file.Compact() // tries no append: AppendErr is still the last Save's
		} else {
			_, err = file.Save() // what it wrote: file.LastSave()
			if aerr := file.AppendErr(); aerr != nil {
				w.log.Warn("could not append the change to the saved configuration; writing it whole", "path", w.opts.StatePath, "error", aerr)
			}
		}
		w.tel.saved(file.LastSave(), err)
		if err != nil {
			w.log.Error("could not save the configuration; a restart without the control plane would serve an older one",
				"path", w.opts.StatePath, "position", set.Position(), "error", err)
			return
		}
		saved, wrote = set, true // Save may have written a newer one; saving that again is harmless
		w.log.Debug("configuration saved", "path", w.opts.StatePath, "position", set.Position(), "appended", file.LastSave() == configset.SavedChange, "took", time.Since(start))
	}
	for {
		select {
		case <-stop:
			save(true)
			return
		case <-w.dirty:
			save(false)
		}
	}
}

// testHookSaverStart, when set by a test, runs as the saver goroutine starts.
var testHookSaverStart func()

// loadState loads the persisted configuration, if any and if the store holds none yet.
func (w *watcher) loadState() {
	if w.opts.StatePath == "" {
		return
	}
	if !w.store.Load().Complete() {
		LoadState(w.log, w.store, w.opts.StatePath)
	}
	if !w.store.Load().Complete() {
		w.log.Info("no saved configuration", "path", w.opts.StatePath)
		return
	}
	if fi, err := os.Stat(w.opts.StatePath); err == nil {
		w.tel.lastUpdate.Store(fi.ModTime().UnixNano())
	}
	w.log.Info("serving the saved configuration until the control plane answers",
		"path", w.opts.StatePath, "position", w.store.Load().Position())
}

// LoadState loads the configuration saved at path (by Run, through a configset.StateFile) into
// store with configset.Store.LoadFile, and logs what it could not load: hostnames this version
// cannot prepare (refused until the control plane sends them again), changes at the file's end
// that a crash cut short (left out: the control plane sends them again, the set's position being
// before them), or a file that cannot be used at all, which leaves the store as it was, so that
// the edge fails closed (every hostname unknown) until the control plane answers, rather than
// not start. A missing file is not logged.
func LoadState(log *slog.Logger, store *configset.Store, path string) {
	err := store.LoadFile(path)
	var refused *configset.RefusedError
	var tail *configset.TailError
	if errors.As(err, &tail) {
		log.Warn("the saved configuration ends with changes that cannot be read (a crash while saving?); it is used as it stood before them",
			"path", path, "position", tail.Position, "error", tail)
	}
	if errors.As(err, &refused) {
		log.Warn("the saved configuration leaves out hostnames this version cannot prepare; they are refused until the control plane sends them again",
			"path", path, "refused", len(store.Load().Refused()), "error", refused)
	}
	if err != nil && tail == nil && refused == nil {
		log.Error("the saved configuration cannot be used; starting without it", "path", path, "error", err)
	}
}

// delay returns the jittered back-off before reconnection attempt n (0-based).
func (w *watcher) delay(n int) time.Duration {
	d := w.opts.Backoff.Min
	for i := 0; i < n && d < w.opts.Backoff.Max; i++ {
		d *= 2
	}
	d = min(d, w.opts.Backoff.Max)
	return d/2 + rand.N(d/2+1)
}

// session runs one Watch stream until it fails. applied reports whether it applied a response.
func (w *watcher) session(ctx context.Context) (applied bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if w.opts.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+w.opts.Token)
	}
	// gRPC refuses a received message over 4 MiB by default; the ConfigService sends one
	// hostname's configuration larger than its parts in one message, which would end every stream
	// at that change, and the edge would never get past it.
	stream, err := w.clients[w.cur].Watch(ctx, grpc.MaxCallRecvMsgSize(configset.MaxPartBytes))
	if err != nil {
		return false, fmt.Errorf("watch: open stream to %s: %w", w.targets[w.cur], err)
	}
	held := w.store.Load()
	resume := held.Position()
	// Hostnames left out for want of a configuration the edge could prepare: a snapshot brings
	// them again, and this process (a newer version, say) may prepare them now, unless it refused
	// them itself.
	wantSnapshot := len(held.Refused()) > 0 && !w.snapshotted
	if wantSnapshot {
		w.log.Info("asking for a snapshot: the configuration leaves out hostnames this edge could not prepare",
			"refused", len(held.Refused()), "position", resume)
	}
	hello := &configv1.WatchRequest{EdgeId: w.opts.EdgeID, ResumePosition: resume, WantSnapshot: wantSnapshot, HistoryToken: held.HistoryToken()}
	if err := stream.Send(hello); err != nil {
		return false, fmt.Errorf("watch: send hello: %w", recvErr(stream, err))
	}
	w.log.Debug("configuration stream open", "target", w.targets[w.cur], "resume_position", resume)
	w.tel.connected.Store(1)
	defer w.tel.connected.Store(0)

	var parts []*configv1.WatchResponse // the parts of a response sent in parts, so far
	var prep *configset.PartPreparer    // preparing their upserts while the next part arrives
	defer func() {
		if prep != nil { // a response given up half way
			prep.Wait()
		}
	}()
	answered := false // a response was applied: later ones do not answer the hello
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return applied, errors.New("watch: the server ended the stream")
			}
			return applied, fmt.Errorf("watch: receive: %w", err)
		}
		if len(parts) > 0 {
			// Refused as it arrives, before it is prepared; Merge checks the parts again.
			if err := configset.CheckPart(parts[0], resp, len(parts)); err != nil {
				return applied, w.nack(ctx, stream, resp.GetPosition(), err)
			}
		}
		if resp.GetReplacesHistory() && (answered || !resp.GetSnapshot()) {
			err := errors.New("replaces_history is set on a response that is not the snapshot answering the hello")
			return applied, w.nack(ctx, stream, resp.GetPosition(), err)
		}
		if cur := w.store.Load().Position(); len(parts) == 0 && resp.GetPosition() < cur && !resp.GetReplacesHistory() {
			// The store would refuse it (configset.Store.Apply): refuse it at its first part
			// rather than receive every part of it (a snapshot of a projector that is behind).
			err := fmt.Errorf("the response at position %d is behind the configuration, at position %d", resp.GetPosition(), cur)
			return applied, w.nack(ctx, stream, resp.GetPosition(), err)
		}
		parts = append(parts, resp)
		// Prepared as it arrives, so that a large snapshot is never held whole with a copy of
		// every shared list per hostname (configset.Store.Prepare), while the next part is
		// received and decoded.
		if prep == nil {
			prep = w.store.NewPartPreparer()
		}
		prep.Add(resp.GetUpserts())
		if resp.GetMore() {
			if len(parts) >= maxParts {
				return applied, w.nack(ctx, stream, resp.GetPosition(), fmt.Errorf("more than %d parts", maxParts))
			}
			continue
		}
		spanCtx, span := w.tel.startUpdate(ctx, resp, w.opts.EdgeID)
		ready := prep.Wait()
		full, err := configset.Merge(parts...)
		parts, prep = nil, nil
		if err != nil {
			w.tel.endUpdate(span, err)
			return applied, w.nack(spanCtx, stream, resp.GetPosition(), err)
		}
		if prev := w.store.Load(); full.GetReplacesHistory() {
			w.log.WarnContext(spanCtx, "the control plane's event store no longer has this edge's configuration (restored from an older backup and written to since?); replacing it with the store's",
				"from_position", prev.Position(), "to_position", full.GetPosition(), "hostnames", len(full.GetUpserts()))
		}
		answered = true
		ack := &configv1.WatchRequest{AckPosition: full.GetPosition()}
		if err := w.store.ApplyPrepared(full, ready); err != nil {
			var refused *configset.RefusedError
			if !errors.As(err, &refused) {
				w.tel.endUpdate(span, err)
				return applied, w.nack(spanCtx, stream, full.GetPosition(), err)
			}
			// Applied without these hostnames, which the edge now refuses (configset.Store.Apply).
			// The ack and the log name the first maxRefusedListed and count the rest.
			for i, r := range refused.Refused {
				if i == maxRefusedListed {
					break
				}
				if i < maxRefusedLogged {
					w.log.ErrorContext(spanCtx, "left a hostname out of the configuration: its configuration could not be prepared; its handshakes fail until a configuration that can be arrives",
						"hostname", r.Hostname, "position", full.GetPosition(), "error", r.Err)
				}
				ack.Refused = append(ack.Refused, &configv1.RefusedHostname{Hostname: r.Hostname, Error: r.Err.Error()})
			}
			ack.RefusedTotal = uint64(len(refused.Refused))
			if n := len(refused.Refused); n > maxRefusedLogged {
				w.log.ErrorContext(spanCtx, "left more hostnames out of the configuration", "more", n-maxRefusedLogged, "position", full.GetPosition())
			}
		}
		if full.GetSnapshot() {
			w.snapshotted = true
		}
		if !applied && w.opts.OnStatus != nil {
			w.opts.OnStatus(nil)
		}
		applied = true
		w.log.DebugContext(spanCtx, "configuration applied", "position", full.GetPosition(), "snapshot", full.GetSnapshot(),
			"upserts", len(full.GetUpserts()), "removals", len(full.GetRemovals()))
		w.tel.endUpdate(span, nil)
		if w.dirty != nil {
			select {
			case w.dirty <- struct{}{}:
			default: // a save is pending; it will write the current set
			}
		}
		if err := stream.Send(ack); err != nil {
			return applied, fmt.Errorf("watch: send ack for position %d: %w", full.GetPosition(), recvErr(stream, err))
		}
	}
}

// maxRefusedListed bounds the refused hostnames an ack names (a response may leave out many: one
// policy shared by a tenant's hostnames); maxRefusedLogged those logged one by one.
const (
	maxRefusedListed = 100
	maxRefusedLogged = 10
)

// nack refuses the response at position with cause, and returns the error that ends the session.
func (w *watcher) nack(ctx context.Context, stream grpc.BidiStreamingClient[configv1.WatchRequest, configv1.WatchResponse], position uint64, cause error) error {
	w.log.ErrorContext(ctx, "refused a configuration response; keeping the last good configuration",
		"position", position, "error", cause, "serving_position", w.store.Load().Position())
	if err := stream.Send(&configv1.WatchRequest{AckPosition: position, Error: cause.Error()}); err != nil {
		w.log.Debug("could not send the refusal", "error", err)
	}
	_ = stream.CloseSend()
	// Give the server a moment to read the refusal before the stream is canceled: it then sends
	// nothing more and ends the stream (projections/distribute), which ends the wait.
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
	}
	return fmt.Errorf("watch: refused the response at position %d: %w", position, cause)
}

// recvErr returns the stream's status error when Send failed with io.EOF (gRPC reports the
// reason on Recv).
func recvErr(stream grpc.BidiStreamingClient[configv1.WatchRequest, configv1.WatchResponse], err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if _, rerr := stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return err
}

// target names conn for logs: its target when it has one (a *grpc.ClientConn), else its place.
func target(conn grpc.ClientConnInterface, i int) string {
	if c, ok := conn.(interface{ CanonicalTarget() string }); ok {
		return c.CanonicalTarget()
	}
	return fmt.Sprintf("connection %d", i)
}
