package watch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// server is an in-test ConfigService: each Watch call runs the next script (the last one again
// when they run out).
type server struct {
	configv1.UnimplementedConfigServiceServer
	mu      sync.Mutex
	scripts []func(s *session) error
	calls   int
	hellos  chan *configv1.WatchRequest
	tokens  chan string
}

type session struct {
	t      *testing.T
	stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse]
	hello  *configv1.WatchRequest
}

func (s *session) send(r *configv1.WatchResponse) {
	s.t.Helper()
	if err := s.stream.Send(r); err != nil && s.stream.Context().Err() == nil {
		s.t.Errorf("send: %v", err)
	}
}

func (s *session) recv() *configv1.WatchRequest {
	s.t.Helper()
	m, err := s.stream.Recv()
	if err != nil {
		if s.stream.Context().Err() == nil { // not the end of the test
			s.t.Errorf("recv: %v", err)
		}
		return &configv1.WatchRequest{Error: "recv failed"}
	}
	return m
}

func (srv *server) Watch(stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	push(srv.tokens, strings.Join(md.Get("authorization"), ","))
	hello, err := stream.Recv()
	if err != nil {
		return err
	}
	push(srv.hellos, hello)
	srv.mu.Lock()
	script := srv.scripts[min(srv.calls, len(srv.scripts)-1)]
	srv.calls++
	srv.mu.Unlock()
	return script(&session{stream: stream, hello: hello})
}

// push sends v on ch unless ch is full (the scripts must not block on a test that stopped
// reading).
func push[T any](ch chan T, v T) {
	select {
	case ch <- v:
	default:
	}
}

func startServer(t *testing.T, scripts ...func(s *session) error) (*server, string) {
	t.Helper()
	srv := &server{scripts: scripts, hellos: make(chan *configv1.WatchRequest, 100), tokens: make(chan string, 100)}
	for i, sc := range scripts {
		scripts[i] = func(s *session) error { s.t = t; return sc(s) }
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	configv1.RegisterConfigServiceServer(g, srv)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return srv, ln.Addr().String()
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func hostCfg(name string, version uint64, ca *pkitest.CA, origin string) *configv1.HostnameConfig {
	return &configv1.HostnameConfig{
		Hostname: name, TenantId: "acme", Active: true, OriginUrl: origin, Version: version,
		Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE,
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{
			{CertificateAuthorityId: "ca1", CertificateDer: ca.Cert.Raw},
		},
	}
}

func quietLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func runWatch(t *testing.T, conn grpc.ClientConnInterface, store *configset.Store, opts Options) (cancel func()) {
	t.Helper()
	ctx, cancelCtx := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, conn, store, opts) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancelCtx()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSnapshotInPartsChangesAcksAndResume(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	acks := make(chan *configv1.WatchRequest, 10)
	first := func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, More: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 3, ca, "http://127.0.0.1:1")}})
		s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, More: false, Upserts: []*configv1.HostnameConfig{hostCfg("b.example.com", 5, ca, "http://127.0.0.1:1")}})
		push(acks, s.recv())
		s.send(&configv1.WatchResponse{Position: 7, Upserts: []*configv1.HostnameConfig{hostCfg("c.example.com", 7, ca, "http://127.0.0.1:1")}, Removals: []string{"a.example.com"}})
		push(acks, s.recv())
		return nil // ends the stream: the client reconnects
	}
	idle := func(s *session) error { <-s.stream.Context().Done(); return nil }
	srv, addr := startServer(t, first, idle)
	store := configset.NewStore()
	state := filepath.Join(t.TempDir(), "edge-config.bin")
	stop := runWatch(t, dial(t, addr), store, Options{
		EdgeID: "edge-1", Token: "s3cret", StatePath: state, Logger: quietLogger(t),
		Backoff: Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	})

	hello := <-srv.hellos
	if hello.GetEdgeId() != "edge-1" || hello.GetResumePosition() != 0 {
		t.Errorf("hello %v", hello)
	}
	if tok := <-srv.tokens; tok != "Bearer s3cret" {
		t.Errorf("authorization %q", tok)
	}
	if a := <-acks; a.GetAckPosition() != 5 || a.GetError() != "" {
		t.Errorf("first ack %v", a)
	}
	if a := <-acks; a.GetAckPosition() != 7 || a.GetError() != "" {
		t.Errorf("second ack %v", a)
	}
	hello = <-srv.hellos
	if hello.GetResumePosition() != 7 {
		t.Errorf("reconnect hello %v, want resume_position 7", hello)
	}
	set := store.Load()
	if set.Position() != 7 || set.Len() != 2 {
		t.Fatalf("set at %d with %d hostnames", set.Position(), set.Len())
	}
	if _, ok := set.Lookup("a.example.com"); ok {
		t.Error("a.example.com not removed")
	}
	stop()

	saved := configset.NewStore()
	if err := saved.LoadFile(state); err != nil {
		t.Fatal(err)
	}
	if saved.Load().Position() != 7 || saved.Load().Len() != 2 {
		t.Errorf("saved set at %d with %d hostnames", saved.Load().Position(), saved.Load().Len())
	}
}

func TestRefusedResponseIsNackedAndOldConfigKept(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	acks := make(chan *configv1.WatchRequest, 10)
	script := func(s *session) error {
		if s.hello.GetResumePosition() == 0 {
			s.send(&configv1.WatchResponse{Position: 2, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 2, ca, "http://127.0.0.1:1")}})
			push(acks, s.recv())
		}
		bad := hostCfg("b.example.com", 9, ca, "http://127.0.0.1:1") // a version beyond the position
		s.send(&configv1.WatchResponse{Position: 3, Upserts: []*configv1.HostnameConfig{bad}})
		push(acks, s.recv())
		// The client closes its side after a refusal.
		if _, err := s.stream.Recv(); !errors.Is(err, io.EOF) && s.stream.Context().Err() == nil {
			t.Errorf("after the refusal: %v, want EOF", err)
		}
		return nil
	}
	srv, addr := startServer(t, script)
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if a := <-acks; a.GetAckPosition() != 2 || a.GetError() != "" {
		t.Errorf("ack %v", a)
	}
	nack := <-acks
	if nack.GetAckPosition() != 3 || !strings.Contains(nack.GetError(), "b.example.com") {
		t.Errorf("nack %v", nack)
	}
	<-srv.hellos
	if h := <-srv.hellos; h.GetResumePosition() != 2 {
		t.Errorf("resumed at %d, want 2", h.GetResumePosition())
	}
	if store.Load().Position() != 2 || store.Load().Len() != 1 {
		t.Errorf("store at %d with %d hostnames", store.Load().Position(), store.Load().Len())
	}
}

// TestUnpreparableHostnameLeftOut: a hostname whose configuration the edge cannot prepare does
// not hold up the rest of the response, nor the responses after it (a NACK would, for every
// tenant: the edge would resume before it and be sent it again): the edge applies the rest,
// refuses that hostname (removed, though it served it before), acknowledges the position naming
// it, and streams on.
func TestUnpreparableHostnameLeftOut(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	acks := make(chan *configv1.WatchRequest, 10)
	sessions := make(chan struct{}, 10)
	script := func(s *session) error {
		sessions <- struct{}{}
		s.send(&configv1.WatchResponse{Position: 2, Snapshot: true, Upserts: []*configv1.HostnameConfig{
			hostCfg("a.example.com", 2, ca, "http://127.0.0.1:1"), hostCfg("b.example.com", 2, ca, "http://127.0.0.1:1"),
		}})
		push(acks, s.recv())
		bad := hostCfg("b.example.com", 3, ca, "http://127.0.0.1:1")
		bad.CertificateAuthorities[0].CertificateDer = []byte("garbage")
		s.send(&configv1.WatchResponse{Position: 3, Upserts: []*configv1.HostnameConfig{bad, hostCfg("c.example.com", 3, ca, "http://127.0.0.1:1")}})
		push(acks, s.recv())
		s.send(&configv1.WatchResponse{Position: 4, Upserts: []*configv1.HostnameConfig{hostCfg("d.example.com", 4, ca, "http://127.0.0.1:1")}})
		push(acks, s.recv())
		<-s.stream.Context().Done()
		return nil
	}
	_, addr := startServer(t, script)
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if a := <-acks; a.GetAckPosition() != 2 || a.GetError() != "" || len(a.GetRefused()) != 0 {
		t.Errorf("first ack %v", a)
	}
	a := <-acks
	if a.GetAckPosition() != 3 || a.GetError() != "" || len(a.GetRefused()) != 1 ||
		a.GetRefused()[0].GetHostname() != "b.example.com" || !strings.Contains(a.GetRefused()[0].GetError(), "certificate_der") {
		t.Errorf("ack of the response with the bad hostname: %v; want ack_position 3 refusing b.example.com", a)
	}
	if a := <-acks; a.GetAckPosition() != 4 || a.GetError() != "" {
		t.Errorf("ack of the next response: %v", a)
	}
	set := store.Load()
	if set.Position() != 4 || set.Len() != 3 {
		t.Errorf("set at %d with %d hostnames, want 4 with a, c and d", set.Position(), set.Len())
	}
	if _, ok := set.Lookup("b.example.com"); ok {
		t.Error("b.example.com is still served with its configuration from before the one the edge could not prepare")
	}
	if len(sessions) != 1 {
		t.Errorf("%d sessions; the edge reconnected", len(sessions))
	}
}

// TestMismatchedPartsAreRefused: a part that does not belong to the response its first part began
// is refused as it arrives (not only once a last part comes, which may never), and nothing of the
// response is applied.
func TestMismatchedPartsAreRefused(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	first := func() *configv1.WatchResponse {
		return &configv1.WatchResponse{Position: 5, Snapshot: true, More: true, HistoryToken: []byte("t5"), Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 5, ca, "http://x")}}
	}
	for _, tc := range []struct {
		name   string
		second *configv1.WatchResponse
		want   string
	}{
		{name: "fail/another position", second: &configv1.WatchResponse{Position: 6, Snapshot: true, HistoryToken: []byte("t5")}, want: "part 1 is at position 6, part 0 at 5"},
		{name: "fail/not a snapshot, more to come", second: &configv1.WatchResponse{Position: 5, More: true, HistoryToken: []byte("t5")}, want: "part 1 has snapshot = false"},
		{name: "fail/another history token, more to come", second: &configv1.WatchResponse{Position: 5, Snapshot: true, More: true, HistoryToken: []byte("t4")}, want: "part 1 has another history token"},
		{name: "fail/replaces_history, more to come", second: &configv1.WatchResponse{Position: 5, Snapshot: true, More: true, HistoryToken: []byte("t5"), ReplacesHistory: true}, want: "part 1 has replaces_history = true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acks := make(chan *configv1.WatchRequest, 10)
			script := func(s *session) error {
				s.send(first())
				tc.second.Upserts = []*configv1.HostnameConfig{hostCfg("b.example.com", 5, ca, "http://x")}
				s.send(tc.second)
				push(acks, s.recv())
				<-s.stream.Context().Done()
				return nil
			}
			_, addr := startServer(t, script)
			store := configset.NewStore()
			runWatch(t, dial(t, addr), store, Options{Logger: quietLogger(t), Backoff: Backoff{Min: time.Minute}})
			select {
			case n := <-acks:
				if !strings.Contains(n.GetError(), tc.want) || n.GetAckPosition() != tc.second.GetPosition() {
					t.Errorf("nack %v, want one at position %d saying %q", n, tc.second.GetPosition(), tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the mismatched part was not refused")
			}
			if store.Load().Position() != 0 {
				t.Error("partial response applied")
			}
		})
	}
}

// TestSnapshotBehindIsRefusedAtItsFirstPart: an edge holding a newer configuration than the
// server's (the server's projector is behind, and sends a snapshot after waiting for it) refuses
// the snapshot at its first part, rather than receiving it whole (every hostname) to refuse it.
func TestSnapshotBehindIsRefusedAtItsFirstPart(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	answers := make(chan *configv1.WatchRequest, 10)
	script := func(s *session) error {
		if s.hello.GetResumePosition() == 0 {
			s.send(&configv1.WatchResponse{Position: 9, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 9, ca, "http://x")}})
			push(answers, s.recv())
			return nil // the client reconnects, holding position 9
		}
		// Only the first part: the rest would follow once the client asks for it by reading on.
		s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, More: true, Upserts: []*configv1.HostnameConfig{hostCfg("b.example.com", 5, ca, "http://x")}})
		push(answers, s.recv())
		<-s.stream.Context().Done()
		return nil
	}
	_, addr := startServer(t, script)
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: time.Second}})
	if a := <-answers; a.GetAckPosition() != 9 || a.GetError() != "" {
		t.Fatalf("ack %v", a)
	}
	select {
	case n := <-answers:
		if n.GetAckPosition() != 5 || !strings.Contains(n.GetError(), "behind") {
			t.Errorf("nack %v", n)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the first part of a snapshot behind the edge's configuration was not refused")
	}
	if set := store.Load(); set.Position() != 9 || set.Len() != 1 {
		t.Errorf("set at %d with %d hostnames, want the one at 9", set.Position(), set.Len())
	}
}

func TestBackoff(t *testing.T) {
	w := &watcher{opts: Options{Backoff: Backoff{Min: 100 * time.Millisecond, Max: time.Second}}}
	for n, hi := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		hi *= time.Millisecond
		if n >= 4 {
			hi = time.Second
		}
		for range 50 {
			d := w.delay(n)
			if d < hi/2 || d > hi {
				t.Fatalf("delay(%d) = %v, want in [%v, %v]", n, d, hi/2, hi)
			}
		}
	}
	if d := w.delay(1000); d > time.Second {
		t.Errorf("delay(1000) = %v", d)
	}
}

// TestRestartWithoutControlPlane: an edge restarted with its state file and no reachable
// control plane serves the saved configuration.
func TestRestartWithoutControlPlane(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	origin := startOrigin(t)

	state := filepath.Join(t.TempDir(), "edge-config.bin")
	acked := make(chan struct{})
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 9, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("pay.example.com", 9, ca, origin)}})
		s.recv()
		close(acked)
		<-s.stream.Context().Done()
		return nil
	})
	first := configset.NewStore()
	stop := runWatch(t, dial(t, addr), first, Options{StatePath: state, Logger: quietLogger(t)})
	<-acked
	stop()

	// Restart: a new store, a control plane that is not there.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	nowhere := ln.Addr().String()
	ln.Close()
	store := configset.NewStore()
	runWatch(t, dial(t, nowhere), store, Options{StatePath: state, Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}})
	waitFor(t, "the saved configuration", func() bool { return store.Load().Position() == 9 })

	code, body, err := startEdge(t, store)("pay.example.com", "/hello", ca.Client(t, "device"))
	if err != nil {
		t.Fatal(err)
	}
	if code != 200 || !strings.Contains(string(body), `"X-Guestlist-Config-Revision": [`) || !strings.Contains(string(body), `"9"`) {
		t.Errorf("status %d: %s", code, body)
	}
}

// TestFailoverToAlternate: the first server ends the stream after one change; the edge reopens it on
// the alternate, resuming from the position it holds, and comes back to the first when the
// alternate fails in turn.
func TestFailoverToAlternate(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	first, addr1 := startServer(t,
		func(s *session) error {
			s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 5, ca, "http://127.0.0.1:1")}})
			s.recv()
			return errors.New("projector going away")
		},
		func(s *session) error {
			<-s.stream.Context().Done()
			return nil
		})
	second, addr2 := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 7, Upserts: []*configv1.HostnameConfig{hostCfg("b.example.com", 7, ca, "http://127.0.0.1:1")}})
		s.recv()
		return errors.New("this one goes away too")
	})
	store := configset.NewStore()
	runWatch(t, dial(t, addr1), store, Options{
		EdgeID: "e1", Logger: quietLogger(t), Backoff: Backoff{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond},
		Alternates: []grpc.ClientConnInterface{dial(t, addr2)},
	})
	hello := func(ch chan *configv1.WatchRequest) *configv1.WatchRequest {
		t.Helper()
		select {
		case h := <-ch:
			return h
		case <-time.After(10 * time.Second):
			t.Fatal("no hello")
			return nil
		}
	}
	if h := hello(first.hellos); h.GetResumePosition() != 0 {
		t.Errorf("first hello resumes from %d, want 0", h.GetResumePosition())
	}
	if h := hello(second.hellos); h.GetResumePosition() != 5 || h.GetEdgeId() != "e1" {
		t.Errorf("hello on the alternate: %v, want edge e1 resuming from 5", h)
	}
	if h := hello(first.hellos); h.GetResumePosition() != 7 {
		t.Errorf("hello back on the first: resumes from %d, want 7", h.GetResumePosition())
	}
	set := store.Load()
	if _, ok := set.Lookup("b.example.com"); !ok || set.Position() != 7 {
		t.Errorf("store at %d, want 7 with b.example.com", set.Position())
	}
}

func TestRunArguments(t *testing.T) {
	if err := Run(context.Background(), dial(t, "127.0.0.1:1"), configset.NewStore(), Options{Alternates: []grpc.ClientConnInterface{nil}}); err == nil {
		t.Error("nil alternate accepted")
	}
	if err := Run(context.Background(), nil, configset.NewStore(), Options{}); err == nil {
		t.Error("nil connection accepted")
	}
	if err := Run(context.Background(), dial(t, "127.0.0.1:1"), nil, Options{}); err == nil {
		t.Error("nil store accepted")
	}
}

// TestOnStatus: OnStatus hears why a stream ended, then nil once a stream applies a response.
func TestOnStatus(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	_, addr := startServer(t,
		func(s *session) error { return status.Error(codes.Unauthenticated, "invalid bearer token") },
		func(s *session) error {
			s.send(&configv1.WatchResponse{Position: 3, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 3, ca, "http://127.0.0.1:1")}})
			s.recv()
			<-s.stream.Context().Done()
			return nil
		})
	var mu sync.Mutex
	var got []error
	runWatch(t, dial(t, addr), configset.NewStore(), Options{
		EdgeID: "e1", Logger: quietLogger(t), Backoff: Backoff{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond},
		OnStatus: func(err error) { mu.Lock(); got = append(got, err); mu.Unlock() },
	})
	waitFor(t, "two statuses", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 2 })
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(fmt.Sprint(got[0]), "Unauthenticated") {
		t.Errorf("first status %v, want the Unauthenticated refusal", got[0])
	}
	if got[1] != nil {
		t.Errorf("second status %v, want nil (a response applied)", got[1])
	}
}

// TestStateNotLoadedAgain: Run loads the saved configuration only into a store that holds none
// (the edge's command loads it first, to serve while Run starts; a large file was read and
// prepared twice).
func TestStateNotLoadedAgain(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	state := filepath.Join(t.TempDir(), "edge-config.bin")
	saved := configset.NewStore()
	if err := saved.Apply(&configv1.WatchResponse{Position: 7, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 7, ca, "http://127.0.0.1:1")}}); err != nil {
		t.Fatal(err)
	}
	if err := saved.Save(state); err != nil {
		t.Fatal(err)
	}
	srv, addr := startServer(t, func(s *session) error {
		<-s.stream.Context().Done()
		return nil
	})

	// A store that holds a configuration already: Run leaves it as it is.
	held := configset.NewStore()
	if err := held.Apply(&configv1.WatchResponse{Position: 5, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("b.example.com", 5, ca, "http://127.0.0.1:1")}}); err != nil {
		t.Fatal(err)
	}
	stop := runWatch(t, dial(t, addr), held, Options{StatePath: state, Logger: quietLogger(t)})
	if h := <-srv.hellos; h.GetResumePosition() != 5 {
		t.Errorf("resumed at %d, want 5: the saved file was loaded over the configuration the store held", h.GetResumePosition())
	}
	stop()

	// An empty store: Run loads the file.
	empty := configset.NewStore()
	runWatch(t, dial(t, addr), empty, Options{StatePath: state, Logger: quietLogger(t)})
	if h := <-srv.hellos; h.GetResumePosition() != 7 {
		t.Errorf("resumed at %d, want 7 (the saved file)", h.GetResumePosition())
	}
}

// TestRefusedHostnamesAskedForAgain: an edge that left out a hostname asks for a snapshot when it
// restarts from its saved file (a newer edge may prepare what an older one could not; the changes
// after its position would never bring the hostname again), but not when it merely reconnects (it
// refused the hostname itself), and it saves the snapshot that brings the hostname back even at
// the position it held.
func TestRefusedHostnamesAskedForAgain(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	state := filepath.Join(t.TempDir(), "edge-config.bin")
	bad := hostCfg("b.example.com", 3, ca, "http://127.0.0.1:1")
	bad.CertificateAuthorities[0].CertificateDer = []byte("garbage")
	acks := make(chan *configv1.WatchRequest, 10)
	var sessions atomic.Int32
	script := func(s *session) error {
		switch sessions.Add(1) {
		case 1:
			s.send(&configv1.WatchResponse{Position: 3, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 3, ca, "http://127.0.0.1:1"), bad}})
			push(acks, s.recv())
			return errors.New("the projector restarts") // ends the stream: the edge reconnects
		case 3:
			// After a restart from the file; the projector has not moved, and the hostname can be
			// prepared now (an upgraded edge).
			s.send(&configv1.WatchResponse{Position: 3, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 3, ca, "http://127.0.0.1:1"), hostCfg("b.example.com", 3, ca, "http://127.0.0.1:1")}})
			push(acks, s.recv())
		}
		<-s.stream.Context().Done()
		return nil
	}
	srv, addr := startServer(t, script)
	store := configset.NewStore()
	stop := runWatch(t, dial(t, addr), store, Options{StatePath: state, Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if h := <-srv.hellos; h.GetWantSnapshot() {
		t.Errorf("first hello %v: asks for a snapshot with nothing refused", h)
	}
	if a := <-acks; a.GetRefusedTotal() != 1 || len(a.GetRefused()) != 1 {
		t.Errorf("ack %v, want b.example.com refused", a)
	}
	if h := <-srv.hellos; h.GetWantSnapshot() || h.GetResumePosition() != 3 {
		t.Errorf("hello after reconnecting %v, want the changes after 3: this process refused b.example.com itself", h)
	}
	waitFor(t, "the configuration saved", func() bool {
		st := configset.NewStore()
		return st.LoadFile(state) == nil && len(st.Load().Refused()) == 1
	})
	stop()

	// Restart from the file.
	restarted := configset.NewStore()
	stop = runWatch(t, dial(t, addr), restarted, Options{StatePath: state, Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if h := <-srv.hellos; !h.GetWantSnapshot() || h.GetResumePosition() != 3 {
		t.Errorf("hello after a restart %v, want a snapshot asked for at 3", h)
	}
	if a := <-acks; a.GetAckPosition() != 3 || len(a.GetRefused()) != 0 {
		t.Errorf("ack %v", a)
	}
	if _, ok := restarted.Load().Lookup("b.example.com"); !ok {
		t.Error("b.example.com not served after the snapshot")
	}
	stop()
	saved := configset.NewStore()
	if err := saved.LoadFile(state); err != nil {
		t.Fatal(err)
	}
	if _, ok := saved.Load().Lookup("b.example.com"); !ok || len(saved.Load().Refused()) != 0 {
		t.Errorf("the saved file lacks b.example.com (refused %v): the snapshot at the same position was not saved", saved.Load().Refused())
	}
}

// TestFirstResponseSavedWhenTheSaverStartsLate: the first response a session applies is saved
// even when the saver goroutine starts only after it was applied (a loaded machine). Before, the
// saver took the store's set as "already saved" when it started, and so skipped that response
// until the next one: a restart without the control plane then served nothing.
func TestFirstResponseSavedWhenTheSaverStartsLate(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	state := filepath.Join(t.TempDir(), "edge-config.bin")
	acked := make(chan *configv1.WatchRequest, 1)
	release := make(chan struct{})
	testHookSaverStart = func() { <-release }
	t.Cleanup(func() { testHookSaverStart = nil })
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 3, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 3, ca, "http://127.0.0.1:1")}})
		push(acked, s.recv())
		<-s.stream.Context().Done()
		return nil
	})
	store := configset.NewStore()
	stop := runWatch(t, dial(t, addr), store, Options{StatePath: state, Logger: quietLogger(t)})
	defer stop()
	<-acked // applied, and the saver signalled, before the saver runs
	close(release)
	waitFor(t, "the first response saved", func() bool {
		st := configset.NewStore()
		return st.LoadFile(state) == nil && st.Load().Position() == 3
	})
}

// TestRefusedListBounded: an ack names at most maxRefusedListed refused hostnames (one shared
// policy an edge cannot compile may leave out thousands) and counts them all.
func TestRefusedListBounded(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	const n = maxRefusedListed + 50
	var ups []*configv1.HostnameConfig
	for i := range n {
		c := hostCfg(fmt.Sprintf("h%03d.example.com", i), 2, ca, "http://127.0.0.1:1")
		c.CertificateAuthorities[0].CertificateDer = []byte("garbage")
		ups = append(ups, c)
	}
	acks := make(chan *configv1.WatchRequest, 10)
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 2, Snapshot: true, Upserts: ups})
		push(acks, s.recv())
		<-s.stream.Context().Done()
		return nil
	})
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{Logger: quietLogger(t)})
	a := <-acks
	if a.GetAckPosition() != 2 || a.GetRefusedTotal() != n || len(a.GetRefused()) != maxRefusedListed || a.GetRefused()[0].GetHostname() != "h000.example.com" {
		t.Errorf("ack at %d, refused_total %d, %d listed; want 2, %d, %d", a.GetAckPosition(), a.GetRefusedTotal(), len(a.GetRefused()), n, maxRefusedListed)
	}
	if got := len(store.Load().Refused()); got != n {
		t.Errorf("the store has %d refused hostnames, want %d", got, n)
	}
}

// TestReplacingSnapshotTaken: the hello carries the history token of the configuration held (and
// saved); a snapshot behind it marked replaces_history, answering the hello, replaces the
// configuration and the saved file, token included. The mark on any later response is refused.
func TestReplacingSnapshotTaken(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	answers := make(chan *configv1.WatchRequest, 10)
	var sessions atomic.Int32
	srv, addr := startServer(t, func(s *session) error {
		switch sessions.Add(1) {
		case 1:
			s.send(&configv1.WatchResponse{Position: 9, Snapshot: true, HistoryToken: []byte("old 9"), Upserts: []*configv1.HostnameConfig{
				hostCfg("a.example.com", 2, ca, "http://127.0.0.1:1"), hostCfg("b.example.com", 9, ca, "http://127.0.0.1:1")}})
			push(answers, s.recv())
			return errors.New("the store is restored")
		case 2:
			s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, ReplacesHistory: true, HistoryToken: []byte("new 5"), More: true,
				Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 4, ca, "http://127.0.0.1:1")}})
			s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, ReplacesHistory: true, HistoryToken: []byte("new 5")})
			push(answers, s.recv())
			// Not an answer to the hello any more.
			s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, ReplacesHistory: true, HistoryToken: []byte("new 5")})
			push(answers, s.recv())
		}
		<-s.stream.Context().Done()
		return nil
	})
	store := configset.NewStore()
	path := filepath.Join(t.TempDir(), "edge-config.pb")
	stop := runWatch(t, dial(t, addr), store, Options{StatePath: path, Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if a := <-answers; a.GetAckPosition() != 9 || a.GetError() != "" {
		t.Fatalf("first ack %v", a)
	}
	<-srv.hellos
	if h := <-srv.hellos; h.GetResumePosition() != 9 || string(h.GetHistoryToken()) != "old 9" {
		t.Fatalf("second hello: resume_position %d, history_token %q; want 9 and the snapshot's token", h.GetResumePosition(), h.GetHistoryToken())
	}
	if a := <-answers; a.GetAckPosition() != 5 || a.GetError() != "" {
		t.Fatalf("answer to the replacing snapshot %v, want position 5 acknowledged", a)
	}
	if a := <-answers; a.GetAckPosition() != 5 || !strings.Contains(a.GetError(), "replaces_history") {
		t.Errorf("answer to a later response marked replaces_history %v, want a refusal", a)
	}
	set := store.Load()
	if set.Position() != 5 || set.Len() != 1 || string(set.HistoryToken()) != "new 5" {
		t.Fatalf("set at %d with %d hostnames and token %q, want 5 with a.example.com and the new token", set.Position(), set.Len(), set.HistoryToken())
	}
	stop()
	saved := configset.NewStore()
	if err := saved.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if got := saved.Load(); got.Position() != 5 || string(got.HistoryToken()) != "new 5" {
		t.Errorf("saved configuration at %d with token %q, want the replacing snapshot's", got.Position(), got.HistoryToken())
	}
}
