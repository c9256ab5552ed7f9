package distribute

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/history"
	pt "guestlist.dev/projections/projector/projectortest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
)

// restoreFixture is an installation whose event store has a backup taken at position q, and an
// edge's configuration at p > q, with p's history token, from before the store was restored. Its
// env is closed.
type restoreFixture struct {
	dir, backup string
	gen         *pt.Gen
	q           uint64
	held        pt.Model
}

// newRestoreFixture writes commands to a store, copies the closed store file (the backup), writes
// more, and syncs an edge with the projector.
func newRestoreFixture(t *testing.T) *restoreFixture {
	t.Helper()
	f := &restoreFixture{dir: t.TempDir(), gen: pt.NewGen(7, 3, 30)}
	f.backup = filepath.Join(f.dir, "events.db.backup")
	e := newEnv(t, envOpts{dir: f.dir, gen: f.gen, noRun: true})
	_, f.q = e.write(40)
	e.close()
	if err := pt.CopyFile(f.backup, filepath.Join(f.dir, "events.db")); err != nil {
		t.Fatal(err)
	}
	e = newEnv(t, envOpts{dir: f.dir, gen: f.gen})
	want, p := e.write(40)
	e.waitProjector(p)
	ed := e.watch("edge-1", 0, false)
	f.held = ed.converge(want)
	ed.close()
	e.close()
	if f.held.Position != p || f.q >= p {
		t.Fatalf("test setup: the edge holds position %d, the store ended at %d, the backup at %d", f.held.Position, p, f.q)
	}
	ref, err := history.Decode(f.held.HistoryToken)
	if err != nil || ref.Position != p {
		t.Fatalf("the edge's history token %x decodes to %v, %v; want the event at %d", f.held.HistoryToken, ref, err, p)
	}
	return f
}

// restore puts the backup in place of the store and moves the read model aside (it is rebuilt
// from the store, as docs/storage.md says to do).
func (f *restoreFixture) restore(t *testing.T) {
	t.Helper()
	if err := pt.CopyFile(filepath.Join(f.dir, "events.db"), f.backup); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(f.dir, "projection.db"), filepath.Join(f.dir, "projection.db.old")); err != nil {
		t.Fatal(err)
	}
}

// diverge writes a new history to the restored store, past the edge's position, and returns the
// env serving it (with every event applied) and the configuration it has.
func (f *restoreFixture) diverge(t *testing.T, opts envOpts) (*env, map[string]*configv1.HostnameConfig) {
	t.Helper()
	opts.dir, opts.gen = f.dir, nil // the generator's state is the old history's: write with revoke
	e := newEnv(t, opts)
	return e, revoke(t, e, f.held.Position)
}

// revoke writes a revocation to e's store, and new tokens until the store is past past (see
// pt.Diverge), and returns the configuration once the projector has it.
func revoke(t *testing.T, e *env, past uint64) map[string]*configv1.HostnameConfig {
	t.Helper()
	if _, _, err := pt.Diverge(context.Background(), e.store, past); err != nil {
		t.Fatal(err)
	}
	want, last := e.expected()
	e.waitProjector(last)
	return want
}

// noneReplaces fails the test when a response replaces the edge's history.
func noneReplaces(t *testing.T, ed *edge) {
	t.Helper()
	_, rs, _, _ := ed.snapshot()
	for i, r := range rs {
		if r.GetReplacesHistory() {
			t.Fatalf("response %d (position %d, snapshot %v) replaces the edge's history", i, r.GetPosition(), r.GetSnapshot())
		}
	}
}

// TestWatchRestoredStoreReplacesTheEdgesHistory: the event store restored from a backup older
// than the edge's configuration and written to past the edge's position (a revocation among
// the new events): the edge resuming with its history token gets a snapshot that replaces its
// history (every part marked), and ends up with the store's configuration, the revocation
// included. Without the token check it got only the changes after its position (none here) and
// kept the configuration of a history the store no longer has.
func TestWatchRestoredStoreReplacesTheEdgesHistory(t *testing.T) {
	f := newRestoreFixture(t)
	f.restore(t)
	reader := sdkmetric.NewManualReader()
	e, want := f.diverge(t, envOpts{server: []Option{WithPartLimits(1<<20, 5), WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))}})
	ed := e.watchFrom("edge-1", f.held, false)
	m := replaced(t, e, ed, want)
	// The edge, now in the store's history, resumes as usual.
	ed.close()
	ed = e.watchFrom("edge-1", m, false)
	ed.converge(revoke(t, e, 0))
	noneReplaces(t, ed)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if n := flatten(rm)["guestlist.distribute.history.diverged|"]; n != 1 {
		t.Errorf("guestlist.distribute.history.diverged = %v, want 1", n)
	}
}

// TestWatchRestoredStoreWrittenAfterTheHello: the edge says hello while the restored store has
// not reached its position (nothing known: the server waits for the projector), and the new
// history passes it meanwhile: the token is checked again, and the edge's history replaced,
// rather than the changes after its position of the other history sent.
func TestWatchRestoredStoreWrittenAfterTheHello(t *testing.T) {
	f := newRestoreFixture(t)
	f.restore(t)
	e := newEnv(t, envOpts{dir: f.dir, server: []Option{WithAheadWait(10 * time.Second)}})
	e.waitProjector(f.q)
	ed := e.watchFrom("edge-1", f.held, false)
	time.Sleep(50 * time.Millisecond) // the hello is checked before the store passes the edge
	replaced(t, e, ed, revoke(t, e, f.held.Position))
}

// replaced waits until ed holds want, and checks that the first response was a snapshot replacing
// the edge's history, with every part marked, and that the edge now holds a token of e's store's
// history.
func replaced(t *testing.T, e *env, ed *edge, want map[string]*configv1.HostnameConfig) pt.Model {
	t.Helper()
	m := ed.converge(want)
	_, rs, applied, _ := ed.snapshot()
	if !rs[0].GetSnapshot() || !rs[0].GetReplacesHistory() {
		t.Fatalf("first response: snapshot %v, replaces_history %v; want a snapshot replacing the edge's history", rs[0].GetSnapshot(), rs[0].GetReplacesHistory())
	}
	for i, r := range rs {
		if r.GetPosition() != rs[0].GetPosition() {
			break
		}
		if !r.GetReplacesHistory() || string(r.GetHistoryToken()) != string(applied[0].GetHistoryToken()) {
			t.Errorf("part %d of the snapshot: replaces_history %v, token %x; want every part marked, with one token", i, r.GetReplacesHistory(), r.GetHistoryToken())
		}
	}
	res, err := e.p.CheckHistory(context.Background(), m.Position, m.HistoryToken)
	if err != nil || res.Verdict != history.Same {
		t.Errorf("the edge's new token: %v, %v; want the store's history", res.Verdict, err)
	}
	return m
}

// TestWatchHistoryNotReplaced: the cases where the edge keeps its history.
func TestWatchHistoryNotReplaced(t *testing.T) {
	short := envOpts{server: []Option{WithAheadWait(50 * time.Millisecond)}}

	// Restored and not written to since: the store has not reached the edge's position, so
	// nothing is known (as for an empty or another store); the edge keeps its configuration and
	// refuses the snapshot behind it.
	t.Run("store not at the edge's position", func(t *testing.T) {
		f := newRestoreFixture(t)
		f.restore(t)
		short.dir = f.dir
		e := newEnv(t, short)
		e.waitProjector(f.q)
		ed := e.watchFrom("edge-1", f.held, false)
		rs := ed.waitResponses(1)
		if !rs[0].GetSnapshot() || rs[0].GetPosition() != f.q {
			t.Fatalf("first response at %d (snapshot %v), want the snapshot at %d", rs[0].GetPosition(), rs[0].GetSnapshot(), f.q)
		}
		noneReplaces(t, ed)
	})

	// The same store, its read model rebuilt and still catching up: the token is of the store's
	// history; the edge waits for the projector and gets the changes after its position.
	t.Run("projector catching up", func(t *testing.T) {
		f := newRestoreFixture(t)
		if err := os.Rename(filepath.Join(f.dir, "projection.db"), filepath.Join(f.dir, "projection.db.old")); err != nil {
			t.Fatal(err)
		}
		e := newEnv(t, envOpts{dir: f.dir, gen: f.gen, noRun: true, server: []Option{WithAheadWait(5 * time.Second)}})
		ed := e.watchFrom("edge-1", f.held, false)
		time.Sleep(50 * time.Millisecond)
		e.run()
		want, last := e.write(5)
		e.waitProjector(last)
		ed.converge(want)
		noneReplaces(t, ed)
		_, rs, _, _ := ed.snapshot()
		for _, r := range rs {
			if r.GetSnapshot() || r.GetPosition() <= f.held.Position {
				t.Fatalf("response at %d (snapshot %v) for an edge holding %d", r.GetPosition(), r.GetSnapshot(), f.held.Position)
			}
		}
	})

}

// TestWatchWithoutUsableTokenGetsASnapshot: the event store restored and written to past the
// edge's position (a revocation among the new events), and an edge that sends no history token (an
// older edge, a file saved before tokens) or one the server cannot use: its position cannot be
// told from the other history's, so it gets a snapshot (not the changes after its position, which
// would have left it the old history's configuration, the revoked certificate allowed), and ends
// up with the store's configuration and a token of its history. Before, such an edge was resumed
// by position.
func TestWatchWithoutUsableTokenGetsASnapshot(t *testing.T) {
	f := newRestoreFixture(t)
	f.restore(t)
	e, want := f.diverge(t, envOpts{})
	otherPosition := history.Ref{Position: f.held.Position + 1, Stream: "tenant-t0", Revision: 1}.Encode()
	hostnameStream, _ := history.Decode(f.held.HistoryToken)
	hostnameStream.Stream = "hostname-h1.example.com" // a real stream; no tenant's
	for name, token := range map[string][]byte{
		"no token":                 nil,
		"garbage":                  []byte("not a token"),
		"oversized":                append(append([]byte{}, f.held.HistoryToken...), make([]byte, 2*history.MaxTokenBytes)...),
		"another position's token": otherPosition,
		"a hostname stream":        hostnameStream.Encode(),
	} {
		t.Run(name, func(t *testing.T) {
			held := f.held
			held.HistoryToken = token
			ed := e.watchFrom("edge-"+name, held, false)
			ed.t = t // a failing case fails itself, not the others
			m := ed.converge(want)
			rs := ed.waitResponses(1)
			if !rs[0].GetSnapshot() || rs[0].GetPosition() < held.Position {
				t.Fatalf("first response: snapshot %v at %d; want a snapshot at %d or later", rs[0].GetSnapshot(), rs[0].GetPosition(), held.Position)
			}
			noneReplaces(t, ed) // at or after the edge's position: an ordinary snapshot
			if res, err := e.p.CheckHistory(context.Background(), m.Position, m.HistoryToken); err != nil || res.Verdict != history.Same {
				t.Errorf("the edge's new token: %v, %v; want the store's history", res.Verdict, err)
			}
		})
	}

	// The same history, without a token: a snapshot too, at the edge's position or later, which
	// holds what the changes would have given.
	t.Run("same history", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		midConfigs, mid := e.write(20)
		want, last := e.write(20)
		e.waitProjector(last)
		ed := e.watchFrom("edge-same", pt.Model{Position: mid, Configs: midConfigs}, false)
		ed.converge(want)
		if rs := ed.waitResponses(1); !rs[0].GetSnapshot() || rs[0].GetPosition() != last {
			t.Fatalf("first response: snapshot %v at %d; want the snapshot at %d", rs[0].GetSnapshot(), rs[0].GetPosition(), last)
		}
	})
}

// unavailableOnce is an event store whose next stream read, once armed, fails with
// eventstore.ErrUnavailable (as a remote store's read does when its connection drops), and
// closes failed.
type unavailableOnce struct {
	eventstore.Store
	armed  *atomic.Bool
	failed chan struct{}
}

// ReadStream implements eventstore.Store.
func (s unavailableOnce) ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, max int) ([]eventstore.RecordedEvent, error) {
	if s.armed.CompareAndSwap(true, false) {
		close(s.failed)
		return nil, fmt.Errorf("test: read stream %q: %w", stream, eventstore.ErrUnavailable)
	}
	return s.Store.ReadStream(ctx, stream, dir, from, max)
}

// TestWatchHistoryCheckFailedIsNotResumed: the event store restored and written past the edge's
// position, and the read that checks the edge's history token fails (a remote store's connection
// dropping): the server ends the stream with UNAVAILABLE, sending nothing, and the edge, resuming
// again, gets the snapshot that replaces its history. Before, the server logged the failure and
// resumed the edge by position: it sent the new history's changes after the edge's position, whose
// history token the edge then kept, so that no later hello told the histories apart and the edge
// kept, for good, a certificate the store had revoked.
func TestWatchHistoryCheckFailedIsNotResumed(t *testing.T) {
	f := newRestoreFixture(t)
	f.restore(t)
	var armed atomic.Bool
	failed := make(chan struct{})
	e, _ := f.diverge(t, envOpts{wrapStore: func(s eventstore.Store) eventstore.Store {
		return unavailableOnce{Store: s, armed: &armed, failed: failed}
	}})
	armed.Store(true) // the projector is idle: the next stream read is the hello's check
	ed := e.watchFrom("edge-1", f.held, false)
	select {
	case <-failed:
	case <-time.After(10 * time.Second):
		t.Fatal("the history token was not checked")
	}
	// A change of the store's history after the edge's position.
	res, err := pt.Write(context.Background(), e.store, pt.Append{Stream: fold.TenantStream("late"),
		Events: []proto.Message{&eventsv1.TenantCreated{TenantId: "late"}, hostnameCreated("late.example.com")}})
	if err != nil {
		t.Fatal(err)
	}
	e.waitProjector(uint64(res.Position))
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, rs, _, err := ed.snapshot()
		if len(rs) > 0 {
			m, _, _, _ := ed.snapshot()
			now, _ := e.expected()
			verdict, _ := e.p.CheckHistory(context.Background(), m.Position, m.HistoryToken)
			t.Fatalf("after a failed history check the edge was resumed by position: first response at %d (snapshot %v, replaces_history %v); "+
				"the edge now holds the old history's configuration with a token of the store's history (a later hello: %v), "+
				"and differs from the store's configuration (a revocation among it):\n%s",
				rs[0].GetPosition(), rs[0].GetSnapshot(), rs[0].GetReplacesHistory(), verdict.Verdict, pt.Diff(m.Configs, now))
		}
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("the stream ended with %v, want UNAVAILABLE", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream neither ended nor sent anything after the failed check")
		}
		time.Sleep(2 * time.Millisecond)
	}
	want, _ := e.expected()
	replaced(t, e, e.watchFrom("edge-1", f.held, false), want)
}

// serverCheck marks the contexts of the Watch streams (envOpts.grpc: markStreams), so that a
// wrapped store can tell the server's history checks from the projector's reads.
type serverCheck struct{}

func markStreams(*Server) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.StreamInterceptor(func(x any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(x, markedStream{ss})
	})}
}

type markedStream struct{ grpc.ServerStream }

func (s markedStream) Context() context.Context {
	return context.WithValue(s.ServerStream.Context(), serverCheck{}, true)
}

// rewound is an event store that, to the server's history checks while armed, looks as if it had
// been restored to before position below under the running projector: its last position is at
// most below-1, and it holds no event of a stream after it. It counts those checks.
type rewound struct {
	eventstore.Store
	below *atomic.Uint64
	armed *atomic.Bool
	calls *atomic.Int64
}

func (s rewound) lying(ctx context.Context) bool {
	return ctx.Value(serverCheck{}) != nil && s.armed.Load()
}

// LastPosition implements eventstore.Store.
func (s rewound) LastPosition(ctx context.Context) (eventstore.Position, error) {
	last, err := s.Store.LastPosition(ctx)
	if ctx.Value(serverCheck{}) != nil {
		s.calls.Add(1)
	}
	if below := s.below.Load(); err == nil && s.lying(ctx) && uint64(last) >= below {
		last = eventstore.Position(below - 1)
	}
	return last, err
}

// ReadStream implements eventstore.Store.
func (s rewound) ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, max int) ([]eventstore.RecordedEvent, error) {
	evs, err := s.Store.ReadStream(ctx, stream, dir, from, max)
	if s.lying(ctx) {
		below := s.below.Load()
		evs = slices.DeleteFunc(evs, func(ev eventstore.RecordedEvent) bool { return uint64(ev.Position) >= below })
	}
	return evs, err
}

// TestWatchNotReachedOnTheRecheck: an edge whose token's position the store had not reached at
// the hello (the server waits for the projector), and the projector reaches it: the token is
// checked again. The same history is resumed by position (ok); but a store that still has not
// reached the position (restored under the running projector, say) proves nothing of the edge's
// history, and the edge gets a snapshot at its position or later (fail) rather than changes that
// may be another history's. Before, that case was resumed by position.
func TestWatchNotReachedOnTheRecheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		lie  bool // the store still looks rewound on the recheck
	}{
		{"ok/the store has reached the edge's position", false},
		{"fail/the store still has not", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var below atomic.Uint64
			var armed atomic.Bool
			var calls atomic.Int64
			e := newEnv(t, envOpts{noRun: true, grpc: markStreams, server: []Option{WithAheadWait(10 * time.Second)},
				wrapStore: func(s eventstore.Store) eventstore.Store {
					return rewound{Store: s, below: &below, armed: &armed, calls: &calls}
				}})
			heldConfigs, held := e.write(20)
			want, last := e.write(20)
			below.Store(held)
			armed.Store(true)
			ed := e.watchFrom("edge-1", pt.Model{Position: held, Configs: heldConfigs, HistoryToken: e.tokenAt(held)}, false)
			ed.t = t
			for deadline := time.Now().Add(10 * time.Second); calls.Load() == 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the hello's token was not checked")
				}
			}
			armed.Store(tc.lie)
			e.run()
			e.waitProjector(last)
			ed.converge(want)
			noneReplaces(t, ed)
			if n := calls.Load(); n != 2 {
				t.Errorf("%d history checks; want the hello's and the one once the projector reached the edge", n)
			}
			_, rs, _, _ := ed.snapshot()
			if tc.lie {
				if !rs[0].GetSnapshot() || rs[0].GetPosition() < held {
					t.Fatalf("first response: snapshot %v at %d; want a snapshot at %d or later", rs[0].GetSnapshot(), rs[0].GetPosition(), held)
				}
				return
			}
			for _, r := range rs {
				if r.GetSnapshot() || r.GetPosition() <= held {
					t.Fatalf("response at %d (snapshot %v) for an edge holding %d; want the changes after it", r.GetPosition(), r.GetSnapshot(), held)
				}
			}
		})
	}
}
