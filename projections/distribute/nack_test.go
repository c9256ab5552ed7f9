package distribute

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/watch"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// tap is a stream interceptor of env's gRPC server (envOpts.grpc: tap.options) that records what
// each Watch stream sends and the NACKs it receives. The message number hold (from 0) of each
// stream waits until the server has taken a NACK of that stream in (Watchers counts it), so that
// how much the server sends after a NACK does not depend on how soon it reads it: that message
// (sent, or about to be, before the NACK came) is the most that may follow the refused part.
type tap struct {
	hold int
	srv  *Server

	mu       sync.Mutex
	streams  []*tapped
	released bool // hold no more
}

// release makes the streams hold no more messages from now on.
func (tp *tap) release() {
	tp.mu.Lock()
	tp.released = true
	tp.mu.Unlock()
}

// tapped is what one stream sent and the positions it received NACKs for (under tap.mu).
type tapped struct {
	sent   []*configv1.WatchResponse
	nacked []uint64
}

func (tp *tap) options(srv *Server) []grpc.ServerOption {
	tp.srv = srv
	return []grpc.ServerOption{grpc.StreamInterceptor(func(x any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		st := &tapped{}
		tp.mu.Lock()
		tp.streams = append(tp.streams, st)
		tp.mu.Unlock()
		return handler(x, &tapStream{ServerStream: ss, tp: tp, st: st, start: time.Now()})
	})}
}

// recorded returns a copy of what the streams so far sent and received.
func (tp *tap) recorded() []tapped {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	out := make([]tapped, len(tp.streams))
	for i, st := range tp.streams {
		out[i] = tapped{sent: append([]*configv1.WatchResponse(nil), st.sent...), nacked: append([]uint64(nil), st.nacked...)}
	}
	return out
}

type tapStream struct {
	grpc.ServerStream
	tp    *tap
	st    *tapped
	start time.Time // before the stream's watcher was made
	n     int       // messages sent
}

func (s *tapStream) SendMsg(m any) error {
	s.tp.mu.Lock()
	hold := s.n == s.tp.hold && !s.tp.released
	s.tp.mu.Unlock()
	if hold {
		s.waitNack()
	}
	s.n++
	s.tp.mu.Lock()
	s.st.sent = append(s.st.sent, m.(*configv1.WatchResponse))
	s.tp.mu.Unlock()
	return s.ServerStream.SendMsg(m)
}

// waitNack waits (10 s at most) until the server has counted a NACK of this stream.
func (s *tapStream) waitNack() {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		for _, w := range s.tp.srv.Watchers() {
			if !w.Since.Before(s.start) && w.Nacks > 0 {
				return
			}
		}
	}
}

func (s *tapStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req := m.(*configv1.WatchRequest); err == nil && req.GetError() != "" {
		s.tp.mu.Lock()
		s.st.nacked = append(s.st.nacked, req.GetAckPosition())
		s.tp.mu.Unlock()
	}
	return err
}

// acmeHostnames creates tenant acme with n hostnames, and returns the position.
func (e *env) acmeHostnames(n int) uint64 {
	e.t.Helper()
	ms := []proto.Message{&eventsv1.TenantCreated{TenantId: "acme"}}
	for i := range n {
		ms = append(ms, hostnameCreated(fmt.Sprintf("h%02d.example.com", i)))
	}
	return e.appendAcme(ms...)
}

// TestWatchNackStopsTheResponse: an edge refusing a snapshot in parts at one of its parts gets no
// further part of it (but the one the server may have been sending as the NACK came), and the
// stream ends with ABORTED. The server used to send every part of the refused response.
func TestWatchNackStopsTheResponse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		nackAt int // the part refused, from 0; the snapshot has 6
	}{
		{"ok/first part", 0},
		{"ok/middle part", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := &tap{hold: tc.nackAt + 1}
			e := newEnv(t, envOpts{server: []Option{WithPartLimits(1<<20, 2)}, grpc: tp.options})
			last := e.acmeHostnames(12)
			stream := e.hello(t, &configv1.WatchRequest{EdgeId: "edge-1"})
			var got []*configv1.WatchResponse
			for {
				r, err := stream.Recv()
				if err != nil {
					if status.Code(err) != codes.Aborted {
						t.Errorf("the stream ended with %v; want ABORTED", err)
					}
					break
				}
				got = append(got, r)
				if len(got) > tc.nackAt+2 {
					t.Fatalf("part %d came after the NACK of part %d", len(got)-1, tc.nackAt)
				}
				if len(got)-1 == tc.nackAt {
					if err := stream.Send(&configv1.WatchRequest{AckPosition: r.GetPosition(), Error: "cannot apply: disk full"}); err != nil {
						t.Fatal(err)
					}
				}
			}
			if len(got) < tc.nackAt+1 {
				t.Fatalf("%d parts before the stream ended", len(got))
			}
			for i, r := range got {
				if !r.GetSnapshot() || r.GetPosition() != last || !r.GetMore() {
					t.Errorf("part %d: snapshot %v at %d, more %v; want a part of the snapshot at %d, not its last", i, r.GetSnapshot(), r.GetPosition(), r.GetMore(), last)
				}
			}
		})
	}
}

// TestWatchNackedEdgeKeepsItsConfiguration: a real edge (edge/watch) holding a configuration at a
// position the projector has not reached is sent a snapshot behind it, in parts, once the server
// stops waiting for the projector; it refuses it at its first part, and the server sends no more
// of it (at most the part it was sending as the NACK came) but ends the stream. The edge keeps its
// configuration through its reconnections, and once the projector gets past its position takes
// the snapshot there (it holds no history token, so it is not sent the changes after its
// position).
func TestWatchNackedEdgeKeepsItsConfiguration(t *testing.T) {
	tp := &tap{hold: 1}
	e := newEnv(t, envOpts{server: []Option{WithPartLimits(1<<20, 2), WithAheadWait(10 * time.Millisecond)}, grpc: tp.options})
	last := e.acmeHostnames(12)
	store := configset.NewStore()
	kept := &configv1.HostnameConfig{Hostname: "kept.example.com", TenantId: "acme", Active: true, Mode: configv1.MtlsMode_MTLS_MODE_OFF, Version: last + 1}
	if err := store.Apply(&configv1.WatchResponse{Position: last + 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{kept}}); err != nil {
		t.Fatal(err)
	}
	held := store.Load()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- watch.Run(ctx, e.conn, store, watch.Options{EdgeID: "edge-1", Logger: quiet, Backoff: watch.Backoff{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch.Run: %v", err)
		}
	})

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s", what)
			}
		}
	}
	refusedStreams := func() int {
		n := 0
		for _, st := range tp.recorded() {
			if len(st.nacked) > 0 {
				n++
			}
		}
		return n
	}
	waitFor("the edge to refuse the snapshot on two streams", func() bool { return refusedStreams() >= 2 })
	if store.Load() != held {
		t.Fatalf("the edge left its configuration for one at position %d", store.Load().Position())
	}
	for i, st := range tp.recorded() {
		if len(st.nacked) == 0 {
			continue
		}
		var parts []string
		for _, r := range st.sent {
			if r.GetPosition() == st.nacked[0] {
				parts = append(parts, fmt.Sprintf("more=%v", r.GetMore()))
			}
		}
		if len(parts) == 0 || len(parts) > 2 || parts[len(parts)-1] != "more=true" {
			t.Errorf("stream %d: the server sent %d parts %v of the response refused at its first part; want 1 or 2, not the last", i, len(parts), parts)
		}
	}

	// The projector reaches the edge's position (which the edge holds) and goes past it; the
	// snapshot there comes in parts, none of which is held back for a NACK.
	tp.release()
	e.appendAcme(hostnameCreated("caught-up.example.com"))
	next := e.appendAcme(hostnameCreated("next.example.com"))
	waitFor("the edge to take the snapshot past its position", func() bool { return store.Load().Position() == next })
	if _, ok := store.Load().Lookup("next.example.com"); !ok {
		t.Error("after the snapshot, the edge does not hold next.example.com")
	}
	if _, ok := store.Load().Lookup("kept.example.com"); ok {
		t.Error("after the snapshot, the edge still holds kept.example.com, which the store's history never had")
	}
}
