package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/auth"
)

// A server-streaming method for HandleServerStreamNDJSON, bound to GET /v1/ndjson/{tenant_id}. By
// the tenant id of its request it sends:
//
//	three    three tenants, then ends
//	empty    nothing, then ends
//	refused  PERMISSION_DENIED before any message
//	fails    two tenants, then UNAVAILABLE with an ErrorInfo
//	chunks   a tenant; after step is signalled, 40 tenants of about 1 KiB (more than
//	         ndjsonFlushSize, less than the buffer); after the second signal one more, then ends
//	endless  tenants of 1 KiB until its context ends, then closes stopped
const ndjsonMethod = "/guestlist.test.v1.NDJSONTest/Stream"

// ndjsonTest is the method's service, with the channels its "chunks" and "endless" streams use.
type ndjsonTest struct {
	step    chan struct{}
	stopped chan struct{}
	desc    grpc.ServiceDesc
}

func newNDJSONTest() *ndjsonTest {
	n := &ndjsonTest{step: make(chan struct{}), stopped: make(chan struct{})}
	n.desc = grpc.ServiceDesc{
		ServiceName: "guestlist.test.v1.NDJSONTest",
		HandlerType: (*any)(nil),
		Streams:     []grpc.StreamDesc{{StreamName: "Stream", ServerStreams: true, Handler: n.stream}},
	}
	return n
}

func (n *ndjsonTest) stream(_ any, stream grpc.ServerStream) error {
	req := &guestlistv1.GetTenantRequest{}
	if err := stream.RecvMsg(req); err != nil {
		return err
	}
	p, _ := auth.FromContext(stream.Context())
	send := func(name string) error {
		return stream.SendMsg(&guestlistv1.Tenant{TenantId: req.GetTenantId(), DisplayName: name + "/" + p.Actor()})
	}
	big := strings.Repeat("x", 1000) // (a line of about 1 KiB)
	switch id := req.GetTenantId(); id {
	case "three":
		for _, name := range []string{"one", "two", "three"} {
			if err := send(name); err != nil {
				return err
			}
		}
	case "refused":
		return status.Error(codes.PermissionDenied, "not yours")
	case "fails":
		for _, name := range []string{"one", "two"} {
			if err := send(name); err != nil {
				return err
			}
		}
		st, _ := status.New(codes.Unavailable, "store gone").WithDetails(&errdetails.ErrorInfo{Reason: "STORE_GONE", Domain: "guestlist.dev"})
		return st.Err()
	case "chunks":
		if err := send("first"); err != nil {
			return err
		}
		wait := func() error {
			select {
			case <-n.step:
				return nil
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := wait(); err != nil {
			return err
		}
		for range 40 {
			if err := send(big); err != nil {
				return err
			}
		}
		if err := wait(); err != nil {
			return err
		}
		return send("last")
	case "endless":
		defer close(n.stopped)
		for stream.Context().Err() == nil {
			if err := send(big); err != nil {
				return err
			}
		}
		return stream.Context().Err()
	}
	return nil
}

// service registers the method and its NDJSON binding, over an earlier binding of the same path
// that must not answer (as the generated one of ExportEvents).
func (n *ndjsonTest) service() Service {
	return Service{
		Name:         n.desc.ServiceName,
		RegisterGRPC: func(r grpc.ServiceRegistrar) { r.RegisterService(&n.desc, struct{}{}) },
		RegisterGateway: func(_ context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			if err := mux.HandlePath(http.MethodGet, "/v1/ndjson/{tenant_id}", func(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
				_, _ = io.WriteString(w, `{"result":"the earlier binding answered"}`)
			}); err != nil {
				return err
			}
			return HandleServerStreamNDJSON(mux, http.MethodGet, "/v1/ndjson/{tenant_id}", ndjsonMethod,
				func(ctx context.Context, _ *http.Request, params map[string]string) (func() (proto.Message, error), error) {
					cs, err := conn.NewStream(ctx, &n.desc.Streams[0], ndjsonMethod)
					if err != nil {
						return nil, err
					}
					if err := cs.SendMsg(&guestlistv1.GetTenantRequest{TenantId: params["tenant_id"]}); err != nil {
						return nil, err
					}
					if err := cs.CloseSend(); err != nil {
						return nil, err
					}
					return func() (proto.Message, error) {
						m := &guestlistv1.Tenant{}
						if err := cs.RecvMsg(m); err != nil {
							return nil, err
						}
						return m, nil
					}, nil
				})
		},
	}
}

func startNDJSONServer(t *testing.T) (*testEnv, *ndjsonTest) {
	t.Helper()
	n := newNDJSONTest()
	env := startServer(t, func(c *Config) { c.Services = append(c.Services, n.service()) })
	return env, n
}

// lines splits an NDJSON body into its lines, failing the test unless each is one JSON object.
func lines(t *testing.T, body []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSuffix(string(body), "\n"), "\n") {
		if l == "" && len(body) == 0 {
			break
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q is not a JSON object: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// TestRESTStreamNDJSON: a server stream over REST is one bare protojson message a line
// (application/x-ndjson), called through the gRPC interceptors (the token, the principal,
// validation, the access log); errors before the first line are the gateway's usual answers, and
// an error after lines were sent is the answer's last line, a google.rpc.Status with its details.
func TestRESTStreamNDJSON(t *testing.T) {
	env, _ := startNDJSONServer(t)

	r := env.do(t, "GET", "/v1/ndjson/three", testToken, "")
	if r.status != http.StatusOK || r.header.Get("Content-Type") != NDJSONContentType {
		t.Fatalf("three: status %d, content type %q; body %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	got := lines(t, r.body)
	if len(got) != 3 {
		t.Fatalf("three: %d lines, want 3:\n%s", len(got), r.body)
	}
	for i, name := range []string{"one", "two", "three"} {
		// Bare: the message's own fields, lowerCamelCase, the principal's actor from the
		// interceptor; no {"result":...}.
		if len(got[i]) != 2 || got[i]["tenantId"] != "three" || got[i]["displayName"] != name+"/admin" {
			t.Errorf("line %d = %v, want {tenantId: three, displayName: %s/admin}", i+1, got[i], name)
		}
	}
	if !strings.Contains(env.logs.String(), ndjsonMethod) {
		t.Errorf("no access log line for %s:\n%s", ndjsonMethod, env.logs.String())
	}

	r = env.do(t, "GET", "/v1/ndjson/empty", testToken, "")
	if r.status != http.StatusOK || r.header.Get("Content-Type") != NDJSONContentType || len(r.body) != 0 {
		t.Errorf("empty: status %d, content type %q, body %q", r.status, r.header.Get("Content-Type"), r.body)
	}

	// Before the first line: the usual REST errors.
	for _, c := range []struct {
		path, token string
		status      int
		code        codes.Code
	}{
		{"/v1/ndjson/three", "", http.StatusUnauthorized, codes.Unauthenticated},
		{"/v1/ndjson/three", "wrong", http.StatusUnauthorized, codes.Unauthenticated},
		{"/v1/ndjson/refused", testToken, http.StatusForbidden, codes.PermissionDenied},
		{"/v1/ndjson/A!", testToken, http.StatusBadRequest, codes.InvalidArgument},
	} {
		r := env.do(t, "GET", c.path, c.token, "")
		st := &spb.Status{}
		if err := protojson.Unmarshal(r.body, st); err != nil || r.status != c.status || codes.Code(st.GetCode()) != c.code ||
			r.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s with token %q: status %d, content type %q, body %s (%v); want %d and a google.rpc.Status of code %v",
				c.path, c.token, r.status, r.header.Get("Content-Type"), r.body, err, c.status, c.code)
		}
		if c.status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s with token %q: WWW-Authenticate = %q, want a Bearer challenge", c.path, c.token, r.header.Get("WWW-Authenticate"))
		}
		if c.code == codes.InvalidArgument {
			br := badRequestOf(t, status.ErrorProto(st))
			if len(br.GetFieldViolations()) != 1 || br.GetFieldViolations()[0].GetField() != "tenant_id" {
				t.Errorf("%s: violations %v, want one of tenant_id", c.path, br.GetFieldViolations())
			}
		}
	}

	// After lines were sent: status 200, and the error as the last line.
	r = env.do(t, "GET", "/v1/ndjson/fails", testToken, "")
	all := strings.Split(strings.TrimSuffix(string(r.body), "\n"), "\n")
	if r.status != http.StatusOK || len(all) != 3 {
		t.Fatalf("fails: status %d, %d lines, want 200 and 3:\n%s", r.status, len(all), r.body)
	}
	var last struct {
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal([]byte(all[2]), &last); err != nil || !strings.HasPrefix(all[2], `{"error":`) {
		t.Fatalf("fails: last line %s: %v", all[2], err)
	}
	st := &spb.Status{}
	if err := protojson.Unmarshal(last.Error, st); err != nil {
		t.Fatalf("fails: the error %s is not a google.rpc.Status: %v", last.Error, err)
	}
	sterr := status.FromProto(st)
	if sterr.Code() != codes.Unavailable || sterr.Message() != "store gone" || len(sterr.Details()) != 1 {
		t.Errorf("fails: error %v, details %v; want UNAVAILABLE store gone with its ErrorInfo", sterr, sterr.Details())
	} else if ei, ok := sterr.Details()[0].(*errdetails.ErrorInfo); !ok || ei.GetReason() != "STORE_GONE" {
		t.Errorf("fails: detail %v, want the ErrorInfo", sterr.Details()[0])
	}
}

// readUntil reads from br until the body holds at least n bytes, or fails the test after 5 s.
func readUntil(t *testing.T, br *bufio.Reader, got *bytes.Buffer, n int) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for got.Len() < n {
			k, err := br.Read(buf)
			got.Write(buf[:k])
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after %d bytes: %v", got.Len(), err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("only %d bytes of %d arrived while the stream was open: the answer is not flushed as it goes", got.Len(), n)
	}
}

// TestRESTStreamNDJSONFlushes: the answer reaches the client while the stream is still open: the
// first line at once, then chunks of tens of KiB, not all at the end; a client that goes away ends
// the gRPC call.
func TestRESTStreamNDJSONFlushes(t *testing.T) {
	env, n := startNDJSONServer(t)
	req, _ := http.NewRequestWithContext(ctxT(t), "GET", env.base+"/v1/ndjson/chunks", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n') // the stream waits for n.step: only a flushed line arrives
	if err != nil || !strings.Contains(first, `"displayName":"first/admin"`) {
		t.Fatalf("first line %q: %v", first, err)
	}
	n.step <- struct{}{}
	var got bytes.Buffer
	readUntil(t, br, &got, 32<<10) // 40 KiB sent, then the stream waits again
	n.step <- struct{}{}
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	got.Write(rest)
	all := lines(t, got.Bytes())
	if len(all) != 41 || all[40]["displayName"] != "last/admin" {
		t.Fatalf("%d lines after the first, want 41 ending with the last", len(all))
	}

	// A client that stops reading and goes away ends the call.
	ctx, cancel := context.WithCancel(ctxT(t))
	req, _ = http.NewRequestWithContext(ctx, "GET", env.base+"/v1/ndjson/endless", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-n.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the gRPC stream goes on after its REST client went away")
	}
}

// TestRESTStreamNDJSONShutdown: a stream forwarded over REST when the server shuts down ends at
// once with an error line (UNAVAILABLE, the server is shutting down), so that the client can tell
// it from a complete answer, and the shutdown does not wait for its timeout.
func TestRESTStreamNDJSONShutdown(t *testing.T) {
	env, n := startNDJSONServer(t)
	req, _ := http.NewRequestWithContext(ctxT(t), "GET", env.base+"/v1/ndjson/endless", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(resp.Body)
		body <- b
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := env.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v (the timeout is 5 s: the stream was not drained)", d)
	}
	<-n.stopped
	b := <-body
	all := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	last := all[len(all)-1]
	var x struct {
		Error *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(last), &x); err != nil || x.Error == nil || codes.Code(x.Error.Code) != codes.Unavailable ||
		!strings.Contains(x.Error.Message, "shutting down") {
		t.Errorf("after %d lines, the last is %.200q (%v); want an error line, UNAVAILABLE, shutting down", len(all), last, err)
	}
}

// countingWriter is an http.ResponseWriter (and http.Flusher) that counts and drops what it is
// given.
type countingWriter struct {
	header         http.Header
	status         int
	bytes, flushes int
}

func (w *countingWriter) Header() http.Header         { return w.header }
func (w *countingWriter) WriteHeader(code int)        { w.status = code }
func (w *countingWriter) Write(p []byte) (int, error) { w.bytes += len(p); return len(p), nil }
func (w *countingWriter) Flush()                      { w.flushes++ }

// TestNDJSONBoundedMemory: a long stream (200,000 messages of about 1 KiB: 200 MB of lines) goes
// out in chunks while the heap stays small: nothing is held but the message and the buffer. The
// heap is measured live (after a GC) against what was live before the stream, so that garbage and
// what other tests of the package left behind do not count.
func TestNDJSONBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("200 MB of lines")
	}
	const n = 200_000
	mux := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard, jsonMarshaler()))
	_, m := runtime.MarshalerForRequest(mux, httptest.NewRequest("GET", "/", nil))
	w := &countingWriter{header: http.Header{}}
	big := strings.Repeat("x", 1000)
	var peak uint64
	var ms goruntime.MemStats
	live := func() uint64 {
		goruntime.GC()
		goruntime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := live()
	i := 0
	recv := func() (proto.Message, error) {
		if i == n {
			return nil, io.EOF
		}
		if i%20_000 == 0 {
			if h := live(); h > base {
				peak = max(peak, h-base)
			}
		}
		i++
		return &guestlistv1.Tenant{TenantId: "acme", DisplayName: big}, nil
	}
	forwardNDJSON(context.Background(), mux, m, w, httptest.NewRequest("GET", "/v1/x", nil), recv)
	if w.status != http.StatusOK || w.bytes < n*1000 || w.header.Get("Content-Type") != NDJSONContentType {
		t.Fatalf("status %d, %d bytes, content type %q", w.status, w.bytes, w.header.Get("Content-Type"))
	}
	if w.flushes < w.bytes/(64<<10) {
		t.Errorf("%d flushes for %d bytes: not flushed per chunk", w.flushes, w.bytes)
	}
	if peak > 16<<20 {
		t.Errorf("the live heap grew by %d MiB while %d MiB of lines went out", peak>>20, w.bytes>>20)
	}
	t.Logf("%d MiB in %d flushes; the live heap grew by at most %d KiB", w.bytes>>20, w.flushes, peak>>10)
}
