package distribute

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/watch"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// recorder is a stream interceptor of env's gRPC server (envOpts.grpc: recorder.options) that
// records each Watch stream's hello and first response, and can end the streams open so far.
type recorder struct {
	mu      sync.Mutex
	streams []*recorded
}

// recorded is one Watch stream (under recorder.mu).
type recorded struct {
	hello *configv1.WatchRequest
	first *configv1.WatchResponse
	end   context.CancelFunc
	ended bool  // the handler returned
	err   error // what it returned
}

func (r *recorder) options(*Server) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.StreamInterceptor(func(x any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		st := &recorded{end: cancel}
		r.mu.Lock()
		r.streams = append(r.streams, st)
		r.mu.Unlock()
		err := handler(x, &recordedStream{ServerStream: ss, ctx: ctx, r: r, st: st})
		r.mu.Lock()
		st.ended, st.err = true, err
		r.mu.Unlock()
		return err
	})}
}

// endAll ends every stream open so far, and waits until their handlers returned.
func (r *recorder) endAll(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	open := append([]*recorded(nil), r.streams...)
	r.mu.Unlock()
	for _, st := range open {
		st.end()
	}
	waitUntil(t, "the streams to end", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, st := range open {
			if !st.ended {
				return false
			}
		}
		return true
	})
}

// last returns a copy of the last stream's record.
func (r *recorder) last() (recorded, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.streams) == 0 {
		return recorded{}, 0
	}
	return *r.streams[len(r.streams)-1], len(r.streams)
}

type recordedStream struct {
	grpc.ServerStream
	ctx context.Context
	r   *recorder
	st  *recorded
}

func (s *recordedStream) Context() context.Context { return s.ctx }

func (s *recordedStream) SendMsg(m any) error {
	s.r.mu.Lock()
	if s.st.first == nil {
		s.st.first = m.(*configv1.WatchResponse)
	}
	s.r.mu.Unlock()
	return s.ServerStream.SendMsg(m)
}

func (s *recordedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	s.r.mu.Lock()
	if err == nil && s.st.hello == nil {
		s.st.hello = m.(*configv1.WatchRequest)
	}
	s.r.mu.Unlock()
	return err
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
	}
}

// TestWatchRealEdgeResumesWithItsToken: a real edge (edge/watch) keeps the history token of what
// it applied, in memory and in its saved file, and sends it back: resuming on a new stream, or
// started again from its saved file, it gets the changes after its position, not a snapshot. A
// resume without a usable token gets a whole snapshot, which converges as well, so an edge that
// lost its token (a hello without it, a file saved without it) would cost a snapshot per
// reconnection and per edge, and no other test would tell. A file saved without a token (by a
// version before tokens) gets that snapshot, once.
func TestWatchRealEdgeResumesWithItsToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		// restart: the edge is stopped (its saved file written) and started again with a new
		// store, which loads the file; otherwise only its stream is ended.
		restart bool
		// edit, when set, rewrites the saved file of the stopped edge.
		edit         func(t *testing.T, e *env, statePath string)
		wantSnapshot bool
	}{
		{name: "ok/a new stream"},
		{name: "ok/restarted from its saved file", restart: true},
		{name: "fail/a file saved without a token gets a snapshot", restart: true, wantSnapshot: true, edit: func(t *testing.T, e *env, statePath string) {
			pos, configs, err := e.p.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			old := configset.NewStore()
			if err := old.Apply(&configv1.WatchResponse{Position: pos, Snapshot: true, Upserts: configs}); err != nil {
				t.Fatal(err)
			}
			if err := old.Save(statePath); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			e := newEnv(t, envOpts{grpc: rec.options})
			last := e.acmeHostnames(3)
			e.waitProjector(last)
			statePath := filepath.Join(t.TempDir(), "edge-config.pb")

			var store *configset.Store
			var stop func()
			start := func() {
				store = configset.NewStore() // as a started edge's: the saved file is loaded
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() {
					done <- watch.Run(ctx, e.conn, store, watch.Options{EdgeID: "edge-1", StatePath: statePath, Logger: quiet,
						Backoff: watch.Backoff{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond}})
				}()
				stop = sync.OnceFunc(func() {
					cancel()
					if err := <-done; err != nil {
						t.Errorf("watch.Run: %v", err)
					}
				})
				t.Cleanup(stop)
			}
			start()
			waitUntil(t, "the edge to take the first snapshot", func() bool { return store.Load().Position() == last })
			if st, n := rec.last(); n != 1 || !st.first.GetSnapshot() {
				t.Fatalf("%d streams, the first response: snapshot %v; want the edge's first snapshot", n, st.first.GetSnapshot())
			}

			if tc.restart {
				stop() // Run saves the configuration before it returns
			}
			rec.endAll(t)
			if tc.edit != nil {
				tc.edit(t, e, statePath)
			}
			next := e.appendAcme(hostnameCreated("next.example.com"))
			e.waitProjector(next)
			if tc.restart {
				start()
			}
			waitUntil(t, "the edge to apply the next change", func() bool { return store.Load().Position() == next })

			st, n := rec.last()
			if n < 2 {
				t.Fatalf("%d streams; want the edge's second", n)
			}
			hello, first := st.hello, st.first
			if hello.GetResumePosition() != last {
				t.Fatalf("hello: resume_position %d; want %d", hello.GetResumePosition(), last)
			}
			if tc.wantSnapshot {
				// The snapshot read for the first stream is shared while the change after it is
				// retained: a snapshot at the edge's position or later, then the change.
				if len(hello.GetHistoryToken()) > 0 || !first.GetSnapshot() || first.GetPosition() < last {
					t.Errorf("hello with token %x; first response at %d, snapshot %v; want no token and a snapshot at %d or later",
						hello.GetHistoryToken(), first.GetPosition(), first.GetSnapshot(), last)
				}
			} else {
				if want := e.tokenAt(last); len(want) == 0 || !bytes.Equal(hello.GetHistoryToken(), want) {
					t.Errorf("hello: history token %x; want the token of position %d, %x", hello.GetHistoryToken(), last, want)
				}
				if first.GetSnapshot() || first.GetPosition() != next {
					t.Errorf("first response on the resumed stream: snapshot %v at %d; want the change at %d", first.GetSnapshot(), first.GetPosition(), next)
				}
			}
			if tok := store.Load().HistoryToken(); !bytes.Equal(tok, e.tokenAt(next)) {
				t.Errorf("the edge holds token %x at %d; want %x", tok, next, e.tokenAt(next))
			}
		})
	}
}
