package distribute

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/watch"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// largeHostnames is how many hostnames acmeLarge creates: with a CA of 1 KiB, a snapshot of about
// 2.4 MB, three parts of the default 1 MiB, many times the smallest HTTP/2 windows (smallWindows).
const largeHostnames = 2000

// acmeLarge creates tenant acme with largeHostnames hostnames enforcing mTLS with the CA ca1 of
// certificate der (which every hostname's configuration carries), and returns the position.
func (e *env) acmeLarge(der []byte) uint64 {
	e.t.Helper()
	ms := []proto.Message{
		&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: der},
	}
	for i := range largeHostnames {
		ms = append(ms, &eventsv1.HostnameCreated{Hostname: fmt.Sprintf("h%04d.example.com", i), State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
			Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca1"}}})
	}
	return e.appendAcme(ms...)
}

// smallWindows returns a connection to e's server whose HTTP/2 windows (stream and connection)
// stay at 64 KiB, the smallest gRPC allows: set, they no longer grow with the measured bandwidth,
// as the defaults do up to 16 MiB. A stream that stops reading then blocks the server's Send after
// about 128 KiB (the window, and the server's write quota) and one part.
func (e *env) smallWindows(opts ...grpc.DialOption) *grpc.ClientConn {
	e.t.Helper()
	conn, err := grpc.NewClient(e.conn.Target(), append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(64 << 10),
	}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// watchSmallWindows opens a Watch stream over a smallWindows connection and sends the hello of
// edgeID.
func (e *env) watchSmallWindows(ctx context.Context, edgeID string) grpc.BidiStreamingClient[configv1.WatchRequest, configv1.WatchResponse] {
	e.t.Helper()
	stream, err := configv1.NewConfigServiceClient(e.smallWindows()).Watch(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := stream.Send(&configv1.WatchRequest{EdgeId: edgeID}); err != nil {
		e.t.Fatal(err)
	}
	return stream
}

// counter returns the value of the counter name (no attributes) that reader has, 0 when it has none.
func counter(t *testing.T, reader *sdkmetric.ManualReader, name string) float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return flatten(rm)[name+"|"]
}

// TestWatchSendStallEndsTheStream: an edge that sends its hello and then never reads blocks the
// server's Send once the HTTP/2 windows are full. Past the send stall limit the server ends the
// stream (DEADLINE_EXCEEDED naming the edge, the position and the limit; logged at WARN; counted),
// its handler returns, the goroutine that was blocked in Send returns too (Watchers no longer
// lists the stream, and no goroutine of Watch is left), and the snapshot read it was sending is
// garbage once the server's shared copy expires. The edge, reading again, gets the parts queued before the end and then the status.
// Before the stall limit, the handler stayed in Send for as long as the edge kept its connection,
// holding every configuration.
func TestWatchSendStallEndsTheStream(t *testing.T) {
	const limit = 300 * time.Millisecond
	var logs syncBuffer
	reader := sdkmetric.NewManualReader()
	rec := &recorder{}
	e := newEnv(t, envOpts{grpc: rec.options, server: []Option{
		WithSendStallLimit(limit), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))),
	}})
	last := e.acmeLarge(make([]byte, 1024))
	e.srv.snapMu.Lock()
	e.srv.snapKeep = 20 * time.Millisecond // the shared snapshot read is let go of soon after its use
	e.srv.snapMu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream := e.watchSmallWindows(ctx, "stalled-edge")
	// Never read. A configuration of the snapshot being sent, to tell when nothing holds it.
	var first *configv1.WatchResponse
	waitUntil(t, "the first part to be sent", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.streams) == 1 && rec.streams[0].first != nil {
			first, rec.streams[0].first = rec.streams[0].first, nil // the recorder holds it no more
		}
		return first != nil
	})
	start := time.Now()
	if !first.GetSnapshot() || !first.GetMore() || len(first.GetUpserts()) == 0 {
		t.Fatalf("first part: snapshot %v, more %v, %d configurations; want the first part of a snapshot", first.GetSnapshot(), first.GetMore(), len(first.GetUpserts()))
	}
	collected := make(chan struct{})
	runtime.AddCleanup(first.GetUpserts()[0], func(ch chan struct{}) { close(ch) }, collected)
	first = nil

	waitUntil(t, "the handler to return", func() bool { st, _ := rec.last(); return st.ended })
	if d := time.Since(start); d < limit-100*time.Millisecond || d > limit+5*time.Second {
		t.Errorf("the handler returned %s after the first part was sent; the limit is %s", d, limit)
	}
	st, _ := rec.last()
	want := []string{`edge "stalled-edge"`, fmt.Sprintf("of the response at position %d", last), "send stall limit (300ms)"}
	if status.Code(st.err) != codes.DeadlineExceeded || !containsAll(status.Convert(st.err).Message(), want) {
		t.Fatalf("the handler returned %v; want DEADLINE_EXCEEDED saying %q", st.err, want)
	}
	waitUntil(t, "the stream's sender to return (Watchers to list no stream)", func() bool { return len(e.srv.Watchers()) == 0 })
	waitUntil(t, "every goroutine of the stream to return", func() bool { return !strings.Contains(goroutines(), "distribute.(*Server).Watch") })
	deadline := time.Now().Add(10 * time.Second)
	for done := false; !done; {
		runtime.GC()
		select {
		case <-collected:
			done = true
		case <-time.After(10 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("a configuration of the snapshot the stalled stream was sending is still held")
			}
		}
	}
	if n := counter(t, reader, "guestlist.distribute.send.stalls"); n != 1 {
		t.Errorf("guestlist.distribute.send.stalls = %v, want 1", n)
	}
	if l := logs.String(); !containsAll(l, []string{"level=WARN", "send stall limit", "edge_id=stalled-edge", fmt.Sprintf("position=%d", last), "limit=300ms"}) {
		t.Errorf("the stall is not logged at WARN with the edge, position and limit:\n%s", l)
	}

	// Reading again, the edge gets what was queued before the end (parts of the snapshot), then
	// the status.
	parts := 0
	for {
		r, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.DeadlineExceeded || !containsAll(status.Convert(err).Message(), want) {
				t.Fatalf("the edge's stream ended with %v; want DEADLINE_EXCEEDED saying %q", err, want)
			}
			break
		}
		if !r.GetSnapshot() || !r.GetMore() {
			t.Fatalf("part %d: snapshot %v, more %v; want the snapshot's parts but its last", parts, r.GetSnapshot(), r.GetMore())
		}
		parts++
	}
	if parts == 0 {
		t.Error("the edge got no part")
	}
}

// goroutines returns the stacks of every goroutine.
func goroutines() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestWatchSlowReaderIsNotCutOff: an edge that takes a part every 150 ms, each well within the
// send stall limit (1 s), gets the whole snapshot although it takes longer than the limit in all:
// the limit bounds the sending of one part, not of a response.
func TestWatchSlowReaderIsNotCutOff(t *testing.T) {
	const limit = time.Second
	reader := sdkmetric.NewManualReader()
	e := newEnv(t, envOpts{server: []Option{
		WithSendStallLimit(limit), WithPartLimits(128<<10, 0),
		WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))),
	}})
	last := e.acmeLarge(make([]byte, 1024))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream := e.watchSmallWindows(ctx, "slow-edge")
	start := time.Now()
	parts, hostnames := 0, 0
	for {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d parts (%s): %v", parts, time.Since(start), err)
		}
		parts++
		hostnames += len(r.GetUpserts())
		if !r.GetMore() {
			if r.GetPosition() != last {
				t.Fatalf("the snapshot is at %d, want %d", r.GetPosition(), last)
			}
			break
		}
		time.Sleep(150 * time.Millisecond)
	}
	took := time.Since(start)
	if hostnames != largeHostnames || took <= limit {
		t.Fatalf("%d hostnames in %d parts, in %s; want %d, in more than the limit (%s)", hostnames, parts, took, largeHostnames, limit)
	}
	if err := stream.Send(&configv1.WatchRequest{AckPosition: last}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the ack", func() bool { ws := e.srv.Watchers(); return len(ws) == 1 && ws[0].Acked == last })
	if n := counter(t, reader, "guestlist.distribute.send.stalls"); n != 0 {
		t.Errorf("guestlist.distribute.send.stalls = %v, want 0", n)
	}
}

// hangingStreams is a client stream interceptor that, once armed, makes the first stream that
// receives a part of a change in parts (not its last) hang in that RecvMsg until released: an
// edge that stops reading in the middle of a response.
type hangingStreams struct {
	armed   atomic.Bool
	hung    atomic.Bool
	release chan struct{}
}

func (h *hangingStreams) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &hangingStream{ClientStream: cs, h: h}, nil
}

type hangingStream struct {
	grpc.ClientStream
	h *hangingStreams
}

func (s *hangingStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if r, ok := m.(*configv1.WatchResponse); ok && err == nil && s.h.armed.Load() && r.GetMore() && !r.GetSnapshot() && s.h.hung.CompareAndSwap(false, true) {
		<-s.h.release
	}
	return err
}

// TestWatchRealEdgeResumesAfterAStall: a real edge (edge/watch) that stops reading in the middle
// of a change in parts has its stream ended by the send stall limit; once it reads again, it gets
// the status (DEADLINE_EXCEEDED), drops the parts it had of the unfinished change, reconnects,
// resumes from the position it holds with its history token, and gets that change on the new
// stream.
func TestWatchRealEdgeResumesAfterAStall(t *testing.T) {
	rec := &recorder{}
	// A real CA (the edge prepares the configurations), about 450 bytes: a change of every
	// hostname of about 1.2 MB, in parts of 256 KiB.
	e := newEnv(t, envOpts{grpc: rec.options, server: []Option{WithSendStallLimit(300 * time.Millisecond), WithPartLimits(256<<10, 0)}})
	held := e.acmeLarge(pkitest.NewCA(t, "Acme Root").Cert.Raw)
	hang := &hangingStreams{release: make(chan struct{})}
	release := sync.OnceFunc(func() { close(hang.release) })
	conn := e.smallWindows(grpc.WithStreamInterceptor(hang.intercept))

	var mu sync.Mutex
	var statuses []error
	store := configset.NewStore()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- watch.Run(ctx, conn, store, watch.Options{EdgeID: "edge-1", Logger: quiet,
			Backoff: watch.Backoff{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond},
			OnStatus: func(err error) {
				mu.Lock()
				statuses = append(statuses, err)
				mu.Unlock()
			}})
	}()
	stop := sync.OnceFunc(func() {
		cancel()
		release()
		if err := <-done; err != nil {
			t.Errorf("watch.Run: %v", err)
		}
	})
	t.Cleanup(stop)
	waitUntil(t, "the edge to take the snapshot", func() bool { return store.Load().Position() == held })

	// A change of every hostname (a revocation of their CA).
	hang.armed.Store(true)
	change := e.appendAcme(&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "1"}})
	waitUntil(t, "the stalled stream's handler to return", func() bool { st, n := rec.last(); return n == 1 && st.ended })
	if st, _ := rec.last(); status.Code(st.err) != codes.DeadlineExceeded {
		t.Fatalf("the stream ended with %v, want DEADLINE_EXCEEDED", st.err)
	}
	if pos := store.Load().Position(); pos != held {
		t.Fatalf("the edge holds %d while it does not read; want %d", pos, held)
	}
	release() // no other stream hangs (hung is set)
	waitUntil(t, "the edge to take the change", func() bool { return store.Load().Position() == change })

	mu.Lock()
	ended := append([]error(nil), statuses...)
	mu.Unlock()
	stalled := false
	for _, err := range ended {
		stalled = stalled || (status.Code(err) == codes.DeadlineExceeded && strings.Contains(err.Error(), "send stall limit"))
	}
	if !stalled {
		t.Errorf("the edge's streams ended with %v; want one with DEADLINE_EXCEEDED (the send stall limit)", ended)
	}
	st, n := rec.last()
	if n != 2 {
		t.Fatalf("%d streams; want the stalled one and the edge's next", n)
	}
	if st.hello.GetResumePosition() != held || !bytes.Equal(st.hello.GetHistoryToken(), e.tokenAt(held)) {
		t.Errorf("the next stream's hello resumes from %d with token %x; want %d with %x", st.hello.GetResumePosition(), st.hello.GetHistoryToken(), held, e.tokenAt(held))
	}
	if st.first.GetSnapshot() || st.first.GetPosition() != change {
		t.Errorf("the next stream's first response: snapshot %v at %d; want the change at %d", st.first.GetSnapshot(), st.first.GetPosition(), change)
	}
	if set := store.Load(); set.Len() != largeHostnames || len(set.Refused()) != 0 || !bytes.Equal(set.HistoryToken(), e.tokenAt(change)) {
		t.Errorf("the edge holds %d hostnames (%d refused) with token %x; want %d with the change's token %x", set.Len(), len(set.Refused()), set.HistoryToken(), largeHostnames, e.tokenAt(change))
	}
}

// panickingStream panics in SendMsg, which Watch's sender goroutine calls.
type panickingStream struct{ grpc.ServerStream }

func (panickingStream) SendMsg(any) error { panic("boom") }

// TestWatchSenderPanicReachesTheHandler: the sends run on a goroutine of their own; a panic there
// is panicked again on the handler's goroutine, where the server's interceptors recover it (as
// they did when the handler sent itself), rather than crash the process.
func TestWatchSenderPanicReachesTheHandler(t *testing.T) {
	recovered := make(chan any, 1)
	e := newEnv(t, envOpts{grpc: func(*Server) []grpc.ServerOption {
		return []grpc.ServerOption{grpc.StreamInterceptor(func(x any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
			defer func() {
				if r := recover(); r != nil {
					recovered <- r
					err = status.Error(codes.Internal, "panic")
				}
			}()
			return handler(x, panickingStream{ss})
		})}
	}})
	e.acmeHostnames(1)
	stream := e.hello(t, &configv1.WatchRequest{EdgeId: "edge-1"})
	if _, err := stream.Recv(); status.Code(err) != codes.Internal {
		t.Fatalf("Recv: %v, want INTERNAL", err)
	}
	select {
	case r := <-recovered:
		if s := fmt.Sprint(r); !strings.Contains(s, "boom") || !strings.Contains(s, "sendParts") {
			t.Errorf("recovered %q; want the sender's panic and its stack", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not panic")
	}
	waitUntil(t, "Watchers to list no stream", func() bool { return len(e.srv.Watchers()) == 0 })
}

func TestWithSendStallLimit(t *testing.T) {
	for _, tc := range []struct {
		opts []Option
		want time.Duration
	}{
		{nil, DefaultSendStallLimit},
		{[]Option{WithSendStallLimit(0)}, DefaultSendStallLimit},
		{[]Option{WithSendStallLimit(-time.Second)}, DefaultSendStallLimit},
		{[]Option{WithSendStallLimit(5 * time.Second)}, 5 * time.Second},
	} {
		if got := New(nil, append([]Option{WithLogger(quiet)}, tc.opts...)...).opts.sendStallLimit; got != tc.want {
			t.Errorf("%d options: send stall limit %s, want %s", len(tc.opts), got, tc.want)
		}
	}
	if DefaultSendStallLimit != 2*time.Minute {
		t.Errorf("DefaultSendStallLimit = %s; the README says 2 minutes", DefaultSendStallLimit)
	}
}
