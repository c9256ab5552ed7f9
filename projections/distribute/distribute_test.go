package distribute

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/history"
	"guestlist.dev/projections/projector"
	pt "guestlist.dev/projections/projector/projectortest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// env is an event store, a projector and a ConfigService server on loopback.
type env struct {
	t      *testing.T
	store  *boltstore.Store
	p      *projector.Projector
	srv    *Server
	conn   *grpc.ClientConn
	client configv1.ConfigServiceClient
	gen    *pt.Gen
	run    func() // starts the projector
	close  func() // stops and closes everything (also done when the test ends)
}

type envOpts struct {
	projector []projector.Option
	server    []Option
	noRun     bool
	// grpc returns options of the gRPC server that serves srv (interceptors).
	grpc func(srv *Server) []grpc.ServerOption
	// dir holds events.db and projection.db (default: a new temporary directory); gen writes
	// the commands (default: a new generator). An env opened again on the files of a closed one
	// takes both over.
	dir string
	gen *pt.Gen
	// wrapStore, when set, wraps the event store that the projector (and so the server's history
	// checks) reads; writes go to the store itself.
	wrapStore func(eventstore.Store) eventstore.Store
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	dir, gen := o.dir, o.gen
	if dir == "" {
		dir = t.TempDir()
	}
	if gen == nil {
		gen = pt.NewGen(1, 3, 30)
	}
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	var read eventstore.Store = store
	if o.wrapStore != nil {
		read = o.wrapStore(store)
	}
	p, err := projector.Open(filepath.Join(dir, "projection.db"), read, append([]projector.Option{projector.WithLogger(quiet)}, o.projector...)...)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(p, append([]Option{WithLogger(quiet)}, o.server...)...)
	var gopts []grpc.ServerOption
	if o.grpc != nil {
		gopts = o.grpc(srv)
	}
	gs := grpc.NewServer(gopts...)
	configv1.RegisterConfigServiceServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: store, p: p, srv: srv, conn: conn, client: configv1.NewConfigServiceClient(conn), gen: gen}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	close(runDone)
	e.run = func() {
		runDone = make(chan struct{})
		go func() {
			defer close(runDone)
			if err := p.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
	}
	if !o.noRun {
		e.run()
	}
	e.close = sync.OnceFunc(func() {
		cancel()
		<-runDone
		_ = conn.Close()
		gs.Stop()
		_ = p.Close()
		_ = store.Close()
	})
	t.Cleanup(e.close)
	return e
}

// write appends n generated commands and returns the expected read model and its position once
// the projector has it.
func (e *env) write(n int) (map[string]*configv1.HostnameConfig, uint64) {
	e.t.Helper()
	ctx := context.Background()
	for range n {
		if err := pt.WriteAll(ctx, e.store, e.gen.Next()); err != nil {
			e.t.Fatal(err)
		}
	}
	return e.expected()
}

// appendAcme appends ms to tenant acme's stream and returns their position once the projector
// has it.
func (e *env) appendAcme(ms ...proto.Message) uint64 {
	e.t.Helper()
	res, err := pt.Write(context.Background(), e.store, pt.Append{Stream: fold.TenantStream("acme"), Events: ms})
	if err != nil {
		e.t.Fatal(err)
	}
	e.waitProjector(uint64(res.Position))
	return uint64(res.Position)
}

// hostnameCreated creates name, active, in mode OFF.
func hostnameCreated(name string) *eventsv1.HostnameCreated {
	return &eventsv1.HostnameCreated{Hostname: name, State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_OFF}}
}

func (e *env) expected() (map[string]*configv1.HostnameConfig, uint64) {
	e.t.Helper()
	want, last, err := pt.Expected(context.Background(), e.store)
	if err != nil {
		e.t.Fatal(err)
	}
	return want, last
}

// edge is a test edge: it applies responses as an edge would (parts together), and acks each.
type edge struct {
	t      *testing.T
	cancel context.CancelFunc
	stream configv1.ConfigService_WatchClient
	noAck  bool

	mu        sync.Mutex
	model     pt.Model
	pending   *pt.Model // parts received so far of a response in parts
	responses []*configv1.WatchResponse
	applied   []*configv1.WatchResponse // the last part of each applied response
	err       error
	done      chan struct{}
}

// hello opens a Watch stream, ended with the test, and sends hello on it.
func (e *env) hello(t *testing.T, hello *configv1.WatchRequest) configv1.ConfigService_WatchClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := e.client.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(hello); err != nil {
		t.Fatal(err)
	}
	return stream
}

// watch starts an edge that holds resume and its history token (none when no event is there).
func (e *env) watch(id string, resume uint64, noAck bool) *edge {
	e.t.Helper()
	return e.watchFrom(id, pt.Model{Position: resume, HistoryToken: e.tokenAt(resume)}, noAck)
}

// tokenAt is the history token of the event at position pos of e's store, as the projector
// encodes it in its responses; nil when no event is there.
func (e *env) tokenAt(pos uint64) []byte {
	e.t.Helper()
	if pos == 0 {
		return nil
	}
	evs, err := e.store.ReadAll(context.Background(), eventstore.Position(pos-1), 1, eventstore.Filter{})
	if err != nil {
		e.t.Fatal(err)
	}
	if len(evs) == 0 || uint64(evs[0].Position) != pos {
		return nil
	}
	ref, err := history.Of(evs[0])
	if err != nil {
		e.t.Fatal(err)
	}
	return ref.Encode()
}

// watchFrom starts an edge that holds model.
func (e *env) watchFrom(id string, model pt.Model, noAck bool) *edge {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.client.Watch(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := stream.Send(&configv1.WatchRequest{EdgeId: id, ResumePosition: model.Position, HistoryToken: model.HistoryToken}); err != nil {
		e.t.Fatal(err)
	}
	ed := &edge{t: e.t, cancel: cancel, stream: stream, noAck: noAck, model: model, done: make(chan struct{})}
	if ed.model.Configs == nil {
		ed.model.Configs = map[string]*configv1.HostnameConfig{}
	}
	go ed.loop()
	e.t.Cleanup(ed.close)
	return ed
}

func (ed *edge) loop() {
	defer close(ed.done)
	for {
		r, err := ed.stream.Recv()
		if err != nil {
			ed.mu.Lock()
			ed.err = err
			ed.mu.Unlock()
			return
		}
		ed.mu.Lock()
		ed.responses = append(ed.responses, r)
		if ed.pending == nil {
			ed.pending = &pt.Model{Position: ed.model.Position}
			if !r.GetSnapshot() {
				// A delta applies on top of what the edge holds.
				ed.pending.Configs = clone(ed.model.Configs)
			}
		}
		ed.pending.Apply(r.GetPosition(), r.GetUpserts(), r.GetRemovals())
		last := !r.GetMore()
		if last {
			ed.pending.HistoryToken = r.GetHistoryToken()
			ed.model, ed.pending = *ed.pending, nil
			ed.applied = append(ed.applied, r)
		}
		ed.mu.Unlock()
		if last && !ed.noAck {
			if err := ed.stream.Send(&configv1.WatchRequest{AckPosition: r.GetPosition()}); err != nil {
				return
			}
		}
	}
}

func clone(m map[string]*configv1.HostnameConfig) map[string]*configv1.HostnameConfig {
	out := make(map[string]*configv1.HostnameConfig, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (ed *edge) close() {
	ed.cancel()
	<-ed.done
}

func (ed *edge) snapshot() (pt.Model, []*configv1.WatchResponse, []*configv1.WatchResponse, error) {
	ed.mu.Lock()
	defer ed.mu.Unlock()
	return pt.Model{Position: ed.model.Position, Configs: clone(ed.model.Configs), HistoryToken: ed.model.HistoryToken}, append([]*configv1.WatchResponse(nil), ed.responses...), append([]*configv1.WatchResponse(nil), ed.applied...), ed.err
}

// converge waits until the edge's model equals want.
func (ed *edge) converge(want map[string]*configv1.HostnameConfig) pt.Model {
	ed.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, _, _, err := ed.snapshot()
		d := pt.Diff(m.Configs, want)
		if d == "" {
			return m
		}
		if err != nil || time.Now().After(deadline) {
			ed.t.Fatalf("edge did not converge (position %d, err %v):\n%s", m.Position, err, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitResponses waits until the edge has received at least n responses (parts).
func (ed *edge) waitResponses(n int) []*configv1.WatchResponse {
	ed.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, rs, _, err := ed.snapshot()
		if len(rs) >= n {
			return rs
		}
		if err != nil || time.Now().After(deadline) {
			ed.t.Fatalf("edge got %d responses, want %d (err %v)", len(rs), n, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// lastChange returns the position of the newest retained change.
func (e *env) lastChange(after uint64) uint64 {
	e.t.Helper()
	last := after
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		cs, err := e.p.Changes(ctx, last, 1000)
		cancel()
		if err != nil || len(cs) == 0 {
			return last
		}
		last = cs[len(cs)-1].Position
	}
}

func (e *env) waitProjector(pos uint64) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.p.WaitFor(ctx, pos); err != nil {
		e.t.Fatal(err)
	}
}

func TestWatchSnapshotThenLiveChanges(t *testing.T) {
	e := newEnv(t, envOpts{})
	want, last := e.write(80)
	e.waitProjector(last)
	ed := e.watch("edge-1", 0, false)
	rs := ed.waitResponses(1)
	if !rs[0].GetSnapshot() || rs[0].GetPosition() != e.p.Position() || rs[0].GetMore() {
		t.Fatalf("first response: snapshot %v position %d more %v; projector at %d", rs[0].GetSnapshot(), rs[0].GetPosition(), rs[0].GetMore(), e.p.Position())
	}
	ed.converge(want)

	want, last = e.write(60)
	e.waitProjector(last)
	m := ed.converge(want)
	if lc := e.lastChange(0); m.Position != lc {
		t.Errorf("edge at %d, last change at %d", m.Position, lc)
	}
	_, rs, _, _ = ed.snapshot()
	for i, r := range rs[1:] {
		if r.GetSnapshot() || r.GetPosition() <= rs[i].GetPosition() {
			t.Fatalf("response %d: snapshot %v position %d after %d", i+1, r.GetSnapshot(), r.GetPosition(), rs[i].GetPosition())
		}
	}
	for i, r := range rs {
		if ref, err := history.Decode(r.GetHistoryToken()); err != nil || ref.Position != r.GetPosition() {
			t.Fatalf("response %d at %d: history token %x decodes to %v, %v", i, r.GetPosition(), r.GetHistoryToken(), ref, err)
		}
	}
	// The server saw every ack.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ws := e.srv.Watchers()
		if len(ws) == 1 && ws[0].Acked == m.Position && ws[0].Unanswered == 0 && ws[0].EdgeID == "edge-1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watchers = %+v, want edge-1 acked at %d", ws, m.Position)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWatchResumeGetsOnlyMissedChanges(t *testing.T) {
	e := newEnv(t, envOpts{})
	want, last := e.write(50)
	e.waitProjector(last)
	ed := e.watch("edge-1", 0, false)
	held := ed.converge(want)
	ed.close()

	want, last = e.write(40)
	e.waitProjector(last)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	missed, err := e.p.Changes(ctx, held.Position, 1000)
	cancel()
	if err != nil || len(missed) == 0 {
		t.Fatalf("changes after %d: %d, %v", held.Position, len(missed), err)
	}
	ed = e.watchFrom("edge-1", held, false)
	ed.converge(want)
	rs := ed.waitResponses(len(missed))
	for i, r := range rs {
		if r.GetSnapshot() {
			t.Fatalf("response %d is a snapshot", i)
		}
	}
	if len(rs) != len(missed) {
		t.Errorf("got %d responses, want the %d missed changes", len(rs), len(missed))
	}
	for i := range min(len(rs), len(missed)) {
		if rs[i].GetPosition() != missed[i].Position || len(rs[i].GetUpserts()) != len(missed[i].Upserts) || len(rs[i].GetRemovals()) != len(missed[i].Removals) {
			t.Errorf("response %d at %d, change at %d", i, rs[i].GetPosition(), missed[i].Position)
		}
	}
}

// TestWatchWantSnapshot: an edge that left out hostnames it could not prepare asks for a snapshot
// in its hello and gets one, at its position or later, although the changes after its position
// are retained; without the flag it gets those changes.
func TestWatchWantSnapshot(t *testing.T) {
	e := newEnv(t, envOpts{})
	want, last := e.write(30)
	e.waitProjector(last)
	mid := last - 10
	if !e.p.Retains(mid) {
		t.Fatalf("the projector does not retain the changes after %d", mid)
	}
	for _, tc := range []struct {
		name     string
		want     bool
		snapshot bool
	}{
		{"ok/want snapshot", true, true},
		{"ok/changes", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := e.hello(t, &configv1.WatchRequest{EdgeId: "edge-1", ResumePosition: mid, HistoryToken: e.tokenAt(mid), WantSnapshot: tc.want})
			r, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if r.GetSnapshot() != tc.snapshot || r.GetPosition() < mid {
				t.Fatalf("first response at %d, snapshot %v; want snapshot %v at %d or later", r.GetPosition(), r.GetSnapshot(), tc.snapshot, mid)
			}
			if tc.snapshot {
				n := len(r.GetUpserts())
				for r.GetMore() {
					if r, err = stream.Recv(); err != nil {
						t.Fatal(err)
					}
					n += len(r.GetUpserts())
				}
				if n != len(want) {
					t.Errorf("snapshot of %d hostnames, want %d", n, len(want))
				}
			}
		})
	}
}

func TestWatchResumeTooOldGetsSnapshot(t *testing.T) {
	e := newEnv(t, envOpts{projector: []projector.Option{projector.WithRetention(5, 0)}})
	positions := []uint64{e.appendAcme(&eventsv1.TenantCreated{TenantId: "acme"}, hostnameCreated("h0.example.com"))}
	for i := 1; i < 20; i++ {
		positions = append(positions, e.appendAcme(hostnameCreated(fmt.Sprintf("h%d.example.com", i))))
	}
	want, _ := e.expected()
	ed := e.watch("edge-old", positions[3], false)
	rs := ed.waitResponses(1)
	if !rs[0].GetSnapshot() || rs[0].GetPosition() != positions[19] {
		t.Fatalf("first response: snapshot %v at %d, want a snapshot at %d", rs[0].GetSnapshot(), rs[0].GetPosition(), positions[19])
	}
	ed.converge(want)
	// An edge inside the retained window gets deltas.
	ed2 := e.watch("edge-recent", positions[16], false)
	rs = ed2.waitResponses(3)
	if rs[0].GetSnapshot() || rs[0].GetPosition() != positions[17] {
		t.Fatalf("recent edge: snapshot %v at %d", rs[0].GetSnapshot(), rs[0].GetPosition())
	}
}

func TestWatchLargeSnapshotAndChangeInParts(t *testing.T) {
	const maxBytes, maxConfigs = 4096, 10
	e := newEnv(t, envOpts{server: []Option{WithPartLimits(maxBytes, maxConfigs)}})
	stream := fold.TenantStream("acme")
	ms := []proto.Message{
		&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: make([]byte, 300)},
	}
	for i := range 35 {
		ms = append(ms, &eventsv1.HostnameCreated{Hostname: fmt.Sprintf("h%02d.example.com", i), Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca1"}}, State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE})
	}
	res, err := pt.Write(context.Background(), e.store, pt.Append{Stream: stream, Events: ms})
	if err != nil {
		t.Fatal(err)
	}
	e.waitProjector(uint64(res.Position))
	want, _ := e.expected()
	ed := e.watch("edge-1", 0, false)
	ed.converge(want)
	_, rs, _, _ := ed.snapshot()
	checkParts(t, rs, uint64(res.Position), true, 35, maxBytes, maxConfigs)

	// One event changing every hostname: a change in parts.
	res, err = pt.Write(context.Background(), e.store, pt.Append{Stream: stream, Events: []proto.Message{&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	e.waitProjector(uint64(res.Position))
	want, _ = e.expected()
	ed.converge(want)
	_, all, _, _ := ed.snapshot()
	checkParts(t, all[len(rs):], uint64(res.Position), false, 35, maxBytes, maxConfigs)
}

func checkParts(t *testing.T, rs []*configv1.WatchResponse, pos uint64, snapshot bool, total, maxBytes, maxConfigs int) {
	t.Helper()
	if len(rs) < 2 {
		t.Fatalf("%d responses, want parts", len(rs))
	}
	n := 0
	for i, r := range rs {
		if r.GetSnapshot() != snapshot || r.GetPosition() != pos || r.GetMore() != (i < len(rs)-1) {
			t.Errorf("part %d: snapshot %v position %d more %v", i, r.GetSnapshot(), r.GetPosition(), r.GetMore())
		}
		if len(r.GetUpserts()) > maxConfigs {
			t.Errorf("part %d has %d configurations", i, len(r.GetUpserts()))
		}
		if sz := proto.Size(r); sz > maxBytes+256 {
			t.Errorf("part %d is %d bytes", i, sz)
		}
		n += len(r.GetUpserts())
	}
	if n != total {
		t.Errorf("parts carry %d configurations, want %d", n, total)
	}
}

func TestWatchTwoWatchersGetTheSameStream(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, last := e.write(40)
	e.waitProjector(last)
	a := e.watch("edge-a", 0, false)
	b := e.watch("edge-b", 0, false)
	a.waitResponses(1)
	b.waitResponses(1)
	want, last := e.write(60)
	e.waitProjector(last)
	ma, mb := a.converge(want), b.converge(want)
	lc := e.lastChange(0)
	for _, ed := range []*edge{a, b} {
		deadline := time.Now().Add(5 * time.Second)
		for m, _, _, _ := ed.snapshot(); m.Position != lc; m, _, _, _ = ed.snapshot() {
			if time.Now().After(deadline) {
				t.Fatalf("edge at %d, want %d", m.Position, lc)
			}
			time.Sleep(time.Millisecond)
		}
	}
	_, ra, _, _ := a.snapshot()
	_, rb, _, _ := b.snapshot()
	if len(ra) != len(rb) {
		t.Fatalf("watchers got %d and %d responses", len(ra), len(rb))
	}
	for i := range ra {
		if !proto.Equal(ra[i], rb[i]) {
			t.Fatalf("response %d differs:\n%v\n%v", i, ra[i], rb[i])
		}
	}
	if ma.Position != mb.Position {
		t.Errorf("positions %d and %d", ma.Position, mb.Position)
	}
}

// TestWatchDisconnectAndResumeConverges: an edge that drops the stream at random moments (also in
// the middle of a snapshot in parts) while writes go on, and resumes with what it holds, ends
// with the same configuration as the store.
func TestWatchDisconnectAndResumeConverges(t *testing.T) {
	e := newEnv(t, envOpts{server: []Option{WithPartLimits(2048, 3)}})
	e.write(40)
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		for range 150 {
			if err := pt.WriteAll(context.Background(), e.store, e.gen.Next()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	rnd := mrand.New(mrand.NewPCG(3, 3))
	held := pt.Model{}
	for i := range 6 {
		ed := e.watchFrom(fmt.Sprintf("edge-%d", i), held, false)
		ed.waitResponses(1 + rnd.IntN(6))
		ed.close()
		var rs []*configv1.WatchResponse
		held, rs, _, _ = ed.snapshot()
		if i == 0 && !rs[0].GetSnapshot() {
			t.Fatal("a new edge did not get a snapshot")
		}
	}
	<-writing
	want, last := e.expected()
	e.waitProjector(last)
	ed := e.watchFrom("edge-final", held, false)
	ed.converge(want)
}

func TestWatchAuthorize(t *testing.T) {
	var seen []string
	var mu sync.Mutex
	e := newEnv(t, envOpts{server: []Option{WithAuthorize(func(ctx context.Context) error {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, strings.Join(md.Get("x-who"), ","))
		switch strings.Join(md.Get("x-who"), ",") {
		case "edge":
			return nil
		case "tenant":
			return status.Error(codes.PermissionDenied, "edges only")
		}
		return errors.New("who are you")
	})}})
	for _, who := range []string{"tenant", "nobody"} {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-who", who)
		stream, err := e.client.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&configv1.WatchRequest{EdgeId: "x"})
		if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: Recv = %v, want PermissionDenied", who, err)
		}
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-who", "edge")
	stream, err := e.client.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&configv1.WatchRequest{EdgeId: "x"})
	r, err := stream.Recv()
	if err != nil || !r.GetSnapshot() {
		t.Fatalf("edge: %v, %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, " ") != "tenant nobody edge" {
		t.Errorf("authorize saw %q", seen)
	}
}

// TestWatchEdgeID: the hello's edge_id goes into logs and a metric label; one that is too long or
// carries control bytes is refused before anything is sent.
func TestWatchEdgeID(t *testing.T) {
	e := newEnv(t, envOpts{})
	for _, tc := range []struct {
		name, id string
		code     codes.Code
	}{
		{"ok/empty", "", codes.OK},
		{"ok/host name", "edge-7.eu-west.example", codes.OK},
		{"ok/longest", strings.Repeat("e", maxEdgeID), codes.OK},
		{"fail/too long", strings.Repeat("e", maxEdgeID+1), codes.InvalidArgument},
		{"fail/newline", "edge-1\nlevel=ERROR msg=forged", codes.InvalidArgument},
		{"fail/not ASCII", "édge", codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := e.hello(t, &configv1.WatchRequest{EdgeId: tc.id})
			r, err := stream.Recv()
			if status.Code(err) != tc.code {
				t.Fatalf("Recv = %v, %v; want %v", r, err, tc.code)
			}
			if tc.code == codes.OK && !r.GetSnapshot() {
				t.Fatalf("first response %v, want a snapshot", r)
			}
		})
	}
}

// TestWatchWindowAndNack: an edge that does not answer gets at most Window responses; a NACK is
// logged and ends the stream (ABORTED): nothing more is sent on it, not even the responses the
// window now allows, since each builds on the refused one.
func TestWatchWindowAndNack(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	e := newEnv(t, envOpts{server: []Option{WithWindow(2), WithLogger(logger)}})
	e.appendAcme(&eventsv1.TenantCreated{TenantId: "acme"}, hostnameCreated("h0.example.com"))
	ed := e.watch("slow", 0, true)
	ed.waitResponses(1) // the snapshot
	for i := 1; i <= 5; i++ {
		e.appendAcme(hostnameCreated(fmt.Sprintf("h%d.example.com", i)))
	}
	ed.waitResponses(2)
	time.Sleep(100 * time.Millisecond)
	_, rs, _, _ := ed.snapshot()
	if len(rs) != 2 {
		t.Fatalf("an edge that does not answer got %d responses with a window of 2", len(rs))
	}
	if ws := e.srv.Watchers(); len(ws) != 1 || ws[0].Unanswered != 2 {
		t.Fatalf("watchers = %+v", ws)
	}
	// Refuse the snapshot: the stream ends, and no more responses come.
	if err := ed.stream.Send(&configv1.WatchRequest{AckPosition: rs[0].GetPosition(), Error: "cannot apply: disk full"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ed.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream goes on after a NACK")
	}
	_, rs, _, err := ed.snapshot()
	if status.Code(err) != codes.Aborted || len(rs) != 2 {
		t.Errorf("after the NACK: %d responses, the stream ended with %v; want 2 and ABORTED", len(rs), err)
	}
	if !strings.Contains(logs.String(), "edge refused configuration") || !strings.Contains(logs.String(), "disk full") {
		t.Errorf("NACK not logged: %s", logs.String())
	}
}

// TestWatchResumeAheadOfProjector: an edge holding a position the projector has not reached yet
// (it restarted) waits for it and gets only the changes after it; an edge holding a position
// the projector does not reach in time gets a snapshot.
func TestWatchResumeAheadOfProjector(t *testing.T) {
	e := newEnv(t, envOpts{noRun: true, server: []Option{WithAheadWait(time.Second)}})
	heldConfigs, held := e.write(30)
	want, last := e.write(30)
	ed := e.watchFrom("edge-ahead", pt.Model{Position: held, Configs: heldConfigs, HistoryToken: e.tokenAt(held)}, false)
	time.Sleep(20 * time.Millisecond)
	e.run()
	e.waitProjector(last)
	ed.converge(want)
	_, rs, _, _ := ed.snapshot()
	for _, r := range rs {
		if r.GetSnapshot() || r.GetPosition() <= held {
			t.Fatalf("response at %d (snapshot %v) for an edge holding %d", r.GetPosition(), r.GetSnapshot(), held)
		}
	}

	far := e.watch("edge-far", last+1000, false)
	rs = far.waitResponses(1)
	if !rs[0].GetSnapshot() {
		t.Fatal("an edge far ahead of the store did not get a snapshot")
	}
}

func TestSplit(t *testing.T) {
	cfg := func(i int) *configv1.HostnameConfig {
		return &configv1.HostnameConfig{Hostname: fmt.Sprintf("h%d", i), OriginUrl: strings.Repeat("x", 100)}
	}
	var ups []*configv1.HostnameConfig
	for i := range 7 {
		ups = append(ups, cfg(i))
	}
	tests := []struct {
		name       string
		ups        []*configv1.HostnameConfig
		rems       []string
		bytes, max int
		want       []int // entries per part
	}{
		{"empty", nil, nil, 1000, 10, []int{0}},
		{"by count", ups, []string{"a", "b"}, 1 << 20, 3, []int{3, 3, 3}},
		{"by bytes", ups, nil, 250, 100, []int{2, 2, 2, 1}},
		{"one too large travels alone", ups[:2], nil, 10, 100, []int{1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts := Split(9, true, tt.ups, tt.rems, tt.bytes, tt.max)
			var got []int
			for i, p := range parts {
				got = append(got, len(p.GetUpserts())+len(p.GetRemovals()))
				if p.GetPosition() != 9 || !p.GetSnapshot() || p.GetMore() != (i < len(parts)-1) {
					t.Errorf("part %d: %v", i, p)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("parts %v, want %v", got, tt.want)
			}
		})
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// benchWatchServer runs a projector on a bolt store in b's temporary directory and a
// ConfigService over it (with opts) on loopback until b ends, and returns the store, the
// projector, a client connection to the service and b's context.
func benchWatchServer(b *testing.B, opts ...Option) (*boltstore.Store, *projector.Projector, *grpc.ClientConn, context.Context) {
	b.Helper()
	dir := b.TempDir()
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	p, err := projector.Open(filepath.Join(dir, "projection.db"), store, projector.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	go func() { _ = p.Run(ctx) }()
	gs := grpc.NewServer()
	configv1.RegisterConfigServiceServer(gs, New(p, append([]Option{WithLogger(quiet)}, opts...)...))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	b.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return store, p, conn, ctx
}

// benchHostnames is a tenant "acme" with a CA of 1 KiB and 1,000 hostnames trusting it.
func benchHostnames() []proto.Message {
	ms := []proto.Message{&eventsv1.TenantCreated{TenantId: "acme"}, &eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: make([]byte, 1024)}}
	for i := range 1000 {
		ms = append(ms, &eventsv1.HostnameCreated{Hostname: fmt.Sprintf("h%d.example.com", i), State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca1"}}})
	}
	return ms
}

// BenchmarkWatchPropagation measures, for one hostname update at a time, the time from the event
// store acknowledging the append to an edge holding the changed configuration (projector commit,
// change, gRPC response over loopback). It reports the median and the 99th percentile.
func BenchmarkWatchPropagation(b *testing.B) {
	store, _, conn, ctx := benchWatchServer(b)
	stream := fold.TenantStream("acme")
	if _, err := pt.Write(ctx, store, pt.Append{Stream: stream, Events: benchHostnames()}); err != nil {
		b.Fatal(err)
	}
	w, err := configv1.NewConfigServiceClient(conn).Watch(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := w.Send(&configv1.WatchRequest{EdgeId: "bench"}); err != nil {
		b.Fatal(err)
	}
	recvUntil := func(pos uint64) {
		for {
			r, err := w.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if !r.GetMore() {
				if err := w.Send(&configv1.WatchRequest{AckPosition: r.GetPosition()}); err != nil {
					b.Fatal(err)
				}
				if r.GetPosition() >= pos {
					return
				}
			}
		}
	}
	recvUntil(1)
	var lat []time.Duration
	i := 0
	for b.Loop() {
		i++
		res, err := pt.Write(ctx, store, pt.Append{Stream: stream, Events: []proto.Message{&eventsv1.HostnameUpdated{Hostname: fmt.Sprintf("h%d.example.com", i%1000), OriginUrl: fmt.Sprintf("http://o%d", i), State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca1"}}}}})
		if err != nil {
			b.Fatal(err)
		}
		acked := time.Now()
		recvUntil(uint64(res.Position))
		lat = append(lat, time.Since(acked))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkWatchSnapshotParts measures the sending of a snapshot in many small parts (1,000
// hostnames with a CA of 1 KiB each, parts of at most 4 KiB: about 330 parts): one Watch stream a
// loop, from the hello to the edge holding the whole snapshot (the read of the read model is shared
// between the streams, see Server.snapshot). It measures the cost of each part's Send on the
// server, which a per-part mechanism (such as the send stall limit) adds to.
func BenchmarkWatchSnapshotParts(b *testing.B) {
	store, p, conn, ctx := benchWatchServer(b, WithPartLimits(4096, 1000))
	res, err := pt.Write(ctx, store, pt.Append{Stream: fold.TenantStream("acme"), Events: benchHostnames()})
	if err != nil {
		b.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = p.WaitFor(wctx, uint64(res.Position))
	wcancel()
	if err != nil {
		b.Fatal(err)
	}
	client := configv1.NewConfigServiceClient(conn)
	parts := 0
	for b.Loop() {
		sctx, scancel := context.WithCancel(ctx)
		w, err := client.Watch(sctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Send(&configv1.WatchRequest{EdgeId: "bench"}); err != nil {
			b.Fatal(err)
		}
		for n := 0; ; {
			r, err := w.Recv()
			if err != nil {
				b.Fatal(err)
			}
			n += len(r.GetUpserts())
			parts++
			if !r.GetMore() {
				if n != 1000 {
					b.Fatalf("the snapshot has %d hostnames, want 1000", n)
				}
				break
			}
		}
		scancel()
	}
	b.ReportMetric(float64(parts)/float64(b.N), "parts/op")
}

// TestSnapshotReadIsDropped: the snapshot kept for edges connecting together holds every
// configuration; it is shared while the projector has not moved, and let go snapKeep after its
// last use (not after an earlier one's).
func TestSnapshotReadIsDropped(t *testing.T) {
	e := newEnv(t, envOpts{})
	_, last := e.write(20)
	e.waitProjector(last)
	keep := func(d time.Duration) {
		e.srv.snapMu.Lock()
		e.srv.snapKeep = d
		e.srv.snapMu.Unlock()
	}
	held := func() []*configv1.HostnameConfig {
		e.srv.snapMu.Lock()
		defer e.srv.snapMu.Unlock()
		return e.srv.snapConfigs
	}
	waitDropped := func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for held() != nil {
			if time.Now().After(deadline) {
				t.Fatal("the snapshot read is still held long after its last use")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	keep(time.Hour)
	_, _, a, err := e.srv.snapshot(0)
	if err != nil || len(a) == 0 {
		t.Fatalf("snapshot: %d configurations, %v", len(a), err)
	}
	if _, _, b, _ := e.srv.snapshot(0); &a[0] != &b[0] {
		t.Fatal("a second edge's snapshot was read again instead of shared")
	}
	keep(time.Millisecond)
	_, _, _, _ = e.srv.snapshot(0) // the last use: dropped a millisecond after it
	waitDropped()

	// An earlier use's expiry does not drop what a later use keeps.
	_, _, _, _ = e.srv.snapshot(0)
	keep(time.Hour)
	_, _, _, _ = e.srv.snapshot(0)
	time.Sleep(20 * time.Millisecond)
	if held() == nil {
		t.Fatal("dropped at an earlier use's expiry")
	}
}

// TestSnapshotReusedWhileRetained: edges that connect while tenants keep writing share one read of
// the read model (each read holds every configuration) as long as the projector retains the changes
// after it, which they get next; an edge holding a later position, or one after the ring has moved
// past the read, gets a new read.
func TestSnapshotReusedWhileRetained(t *testing.T) {
	e := newEnv(t, envOpts{projector: []projector.Option{projector.WithRetention(8, 0)}})
	e.srv.snapMu.Lock()
	e.srv.snapKeep = time.Hour
	e.srv.snapMu.Unlock()
	_, first := e.write(20)
	e.waitProjector(first)
	a := e.watch("edge-a", 0, false)
	if rs := a.waitResponses(1); !rs[0].GetSnapshot() || rs[0].GetPosition() != first {
		t.Fatalf("edge-a: first response at %d (snapshot %v), want the snapshot at %d", rs[0].GetPosition(), rs[0].GetSnapshot(), first)
	}
	want, second := e.write(3)
	e.waitProjector(second)
	if second == first {
		t.Fatal("the writes did not move the projector")
	}

	// ok/shared: a new edge gets the same read, then the changes after it.
	b := e.watch("edge-b", 0, false)
	if rs := b.waitResponses(1); !rs[0].GetSnapshot() || rs[0].GetPosition() != first {
		t.Fatalf("edge-b: first response at %d (snapshot %v), want the snapshot read for edge-a, at %d", rs[0].GetPosition(), rs[0].GetSnapshot(), first)
	}
	b.converge(want)
	a.converge(want)

	// ok/not behind the edge: an edge at a later position that asks for a snapshot gets a new read.
	stream := e.hello(t, &configv1.WatchRequest{EdgeId: "edge-c", ResumePosition: second, HistoryToken: e.tokenAt(second), WantSnapshot: true})
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !r.GetSnapshot() || r.GetPosition() != second {
		t.Fatalf("edge-c at %d: first response at %d (snapshot %v), want a new snapshot at %d", second, r.GetPosition(), r.GetSnapshot(), second)
	}

	// ok/ring moved on: once the changes after the read are no longer retained, a new edge gets a
	// new read (at the projector's position), not one it cannot catch up from.
	e.srv.snapMu.Lock()
	e.srv.snapPos, e.srv.snapToken, e.srv.snapConfigs = first, e.tokenAt(first), []*configv1.HostnameConfig{} // the old read, still held
	e.srv.snapMu.Unlock()
	var third uint64
	for i := 0; e.p.Retains(first); i++ { // changes are batches: write until the ring moves on
		if i == 50 {
			t.Fatalf("the projector still retains the changes after %d", first)
		}
		want, third = e.write(1)
		e.waitProjector(third)
	}
	d := e.watch("edge-d", 0, false)
	if rs := d.waitResponses(1); !rs[0].GetSnapshot() || rs[0].GetPosition() != third {
		t.Fatalf("edge-d: first response at %d (snapshot %v), want a new snapshot at %d", rs[0].GetPosition(), rs[0].GetSnapshot(), third)
	}
	d.converge(want)
}

// TestWatchSnapshotWaitsForProjector: a projector still catching up with the store (its read model
// rebuilt, say) holds an old configuration; an edge with none gets no snapshot of it, but the one
// at the store's end once the projector has caught up.
func TestWatchSnapshotWaitsForProjector(t *testing.T) {
	e := newEnv(t, envOpts{noRun: true})
	want, last := e.write(40)
	ed := e.watch("edge-new", 0, false)
	time.Sleep(100 * time.Millisecond)
	ed.mu.Lock()
	early := len(ed.responses)
	ed.mu.Unlock()
	if early != 0 {
		t.Fatalf("%d responses before the projector caught up", early)
	}
	e.run()
	rs := ed.waitResponses(1)
	if !rs[0].GetSnapshot() || rs[0].GetPosition() != last {
		t.Fatalf("first response at %d (snapshot %v), want the snapshot at the store's end, %d", rs[0].GetPosition(), rs[0].GetSnapshot(), last)
	}
	ed.converge(want)
}

// TestSnapshotSharedWithEdgesAhead: edges ahead of the projector (the event store restored from a
// backup and not written to since: every edge is ahead) get, once AheadWait has passed, the
// snapshot at the projector's position, which they refuse until the store gets there. A read
// there is shared like any other: an edge ahead, which no read can reach, takes the read held
// when it is at the projector's position, rather than read every configuration again for each
// of them at every reconnection.
func TestSnapshotSharedWithEdgesAhead(t *testing.T) {
	e := newEnv(t, envOpts{server: []Option{WithAheadWait(10 * time.Millisecond)}})
	e.srv.snapMu.Lock()
	e.srv.snapKeep = time.Hour
	e.srv.snapMu.Unlock()
	_, pos := e.write(20)
	e.waitProjector(pos)
	held := func() *configv1.HostnameConfig {
		e.srv.snapMu.Lock()
		defer e.srv.snapMu.Unlock()
		if len(e.srv.snapConfigs) == 0 {
			return nil
		}
		return e.srv.snapConfigs[0]
	}
	var first *configv1.HostnameConfig
	for i, tc := range []struct {
		name   string
		resume uint64
	}{
		{name: "ok/an edge ahead gets the projector's snapshot", resume: pos + 1000},
		{name: "ok/another edge ahead shares its read", resume: pos + 1000},
		{name: "ok/an edge further ahead shares it too", resume: pos + 5000},
		{name: "ok/a new edge shares it", resume: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := e.hello(t, &configv1.WatchRequest{EdgeId: fmt.Sprintf("edge-%d", i), ResumePosition: tc.resume})
			r, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if !r.GetSnapshot() || r.GetPosition() != pos || !bytes.Equal(r.GetHistoryToken(), e.tokenAt(pos)) {
				t.Fatalf("first response at %d (snapshot %v), want the snapshot at the projector's position %d with its token", r.GetPosition(), r.GetSnapshot(), pos)
			}
			if i == 0 {
				first = held()
				return
			}
			if h := held(); h == nil || h != first {
				t.Fatal("the snapshot was read again instead of shared")
			}
		})
	}
}
