package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// serveInProcess runs one request through the HTTP listener's handler (body size limit, routing,
// the gateway and the gRPC server behind it) with a body that counts what is read of it. A
// negative length sends the body with an unknown length, as chunked requests arrive.
func (env *testEnv) serveInProcess(t *testing.T, method, path string, body []byte, length int64, authorization ...string) (*httptest.ResponseRecorder, int64) {
	t.Helper()
	cr := &countingReader{r: bytes.NewReader(body)}
	req := httptest.NewRequestWithContext(ctxT(t), method, path, cr)
	req.ContentLength = length
	req.Header.Set("Content-Type", "application/json")
	for _, a := range authorization {
		req.Header.Add("Authorization", a)
	}
	rec := httptest.NewRecorder()
	env.srv.http.Handler.ServeHTTP(rec, req)
	return rec, cr.n.Load()
}

// createBody is a CreateTenant body of size bytes (at least its 22 bytes without padding): a
// valid tenant padded with whitespace.
func createBody(size int) []byte {
	b := []byte(`{"displayName":"Acme"}`)
	return append(b, bytes.Repeat([]byte(" "), max(size-len(b), 0))...)
}

type rpcStatus struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// TestRESTUnauthenticatedBodyIsNotRead: a request with a body and no valid bearer token is
// refused with the gateway's 401 before any of its body is read (the gateway would decode all of
// it first, up to MaxHTTPBodySize of JSON taking tens of times that in memory). The answer is the
// one the gateway gives a request without a body (whose 401 comes from the gRPC auth interceptor)
// and the status a gRPC client gets. Authenticated requests are served as before.
func TestRESTUnauthenticatedBodyIsNotRead(t *testing.T) {
	env := startServer(t, nil)
	big := createBody(MaxHTTPBodySize)
	for _, tc := range []struct {
		name          string
		authorization []string
		authnCalls    int64 // by the REST request with a body
	}{
		{"missing", nil, 0},
		{"basic scheme", []string{"Basic dXNlcjpwYXNz"}, 0},
		{"empty token", []string{"Bearer "}, 0},
		{"no scheme", []string{testToken}, 0},
		{"non-ASCII", []string{"Bearer t\u00e9st"}, 0},
		{"two headers", []string{"Bearer " + testToken, "Bearer " + testToken}, 0},
		{"unknown token", []string{"Bearer wrong"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// What the gateway answers today: a request without a body goes to the interceptor.
			want, _ := env.serveInProcess(t, "GET", "/v1/tenants/acme", nil, 0, tc.authorization...)
			if want.Code != http.StatusUnauthorized {
				t.Fatalf("GET: status %d, want 401; body %s", want.Code, want.Body)
			}
			var wantSt rpcStatus
			if err := json.Unmarshal(want.Body.Bytes(), &wantSt); err != nil {
				t.Fatalf("GET: body %s: %v", want.Body, err)
			}
			// And a gRPC client.
			ctx := ctxT(t)
			for _, a := range tc.authorization {
				if strings.ContainsFunc(a, func(r rune) bool { return r > 0x7e }) {
					continue // not valid as gRPC metadata: the gateway drops it
				}
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", a)
			}
			_, err := env.client.GetTenant(ctx, &guestlistv1.GetTenantRequest{TenantId: "acme"})
			if st := status.Convert(err); st.Code() != codes.Unauthenticated || wantSt.Code != int(codes.Unauthenticated) || st.Message() != wantSt.Message {
				t.Fatalf("gRPC: %v; REST GET: %s", err, want.Body)
			}

			for _, length := range []int64{int64(len(big)), -1} {
				before := env.authn.calls.Load()
				got, read := env.serveInProcess(t, "POST", "/v1/tenants?tenantId=acme", big, length, tc.authorization...)
				var gotSt rpcStatus
				if err := json.Unmarshal(got.Body.Bytes(), &gotSt); err != nil {
					t.Fatalf("POST: body %s: %v", got.Body, err)
				}
				if got.Code != http.StatusUnauthorized || gotSt != wantSt {
					t.Errorf("POST (length %d): %d %s, want the gateway's 401 %s", length, got.Code, got.Body, want.Body)
				}
				for _, h := range []string{"Content-Type", "WWW-Authenticate"} {
					if got.Header().Get(h) != want.Header().Get(h) {
						t.Errorf("POST (length %d): %s %q, want %q", length, h, got.Header().Get(h), want.Header().Get(h))
					}
				}
				if read != 0 {
					t.Errorf("POST (length %d): %d bytes of the body were read, want 0", length, read)
				}
				if n := env.authn.calls.Load() - before; n != tc.authnCalls {
					t.Errorf("POST (length %d): %d authenticator calls, want %d", length, n, tc.authnCalls)
				}
			}
		})
	}

	// With the token, small and large bodies (of known and unknown length) are read and served.
	for _, size := range []int{len(createBody(0)), largeBodySize + 1, MaxHTTPBodySize} {
		for _, length := range []int64{int64(size), -1} {
			body := createBody(size)
			got, read := env.serveInProcess(t, "POST", "/v1/tenants?tenantId=acme", body, length, "Bearer "+testToken)
			if got.Code != http.StatusOK || !strings.Contains(got.Body.String(), `"displayName":"Acme"`) {
				t.Errorf("authenticated POST of %d bytes (length %d): %d %s", size, length, got.Code, got.Body)
			}
			if read != int64(size) {
				t.Errorf("authenticated POST of %d bytes (length %d): %d bytes read", size, length, read)
			}
		}
	}
	// A body cut short reaches the gateway as a read error, as before.
	cut := append([]byte(`{"displayName":`), bytes.Repeat([]byte(" "), largeBodySize)...)
	got, _ := env.serveInProcess(t, "POST", "/v1/tenants?tenantId=acme", cut, int64(len(cut)+1), "Bearer "+testToken)
	if got.Code != http.StatusBadRequest {
		t.Errorf("truncated body: %d %s, want 400", got.Code, got.Body)
	}
}

// stallingBody yields head, then blocks until ctx is done.
type stallingBody struct {
	head []byte
	ctx  context.Context
}

func (s *stallingBody) Read(p []byte) (int, error) {
	if len(s.head) > 0 {
		n := copy(p, s.head)
		s.head = s.head[n:]
		return n, nil
	}
	<-s.ctx.Done()
	return 0, io.ErrUnexpectedEOF
}

// TestRESTUnauthenticatedBodyNotAwaited: over a real connection, an unauthenticated request that
// declares a body of MaxHTTPBodySize and sends only its first KiB is answered 401 at once; the
// server does not wait for the rest (the gateway would, to decode it).
func TestRESTUnauthenticatedBodyNotAwaited(t *testing.T) {
	env := startServer(t, nil)
	for _, authorization := range []string{"", "Bearer wrong"} {
		// The start of a JSON string that would go on for MaxHTTPBodySize bytes.
		head := append([]byte(`{"displayName":"`), bytes.Repeat([]byte("x"), 1024)...)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body := &stallingBody{head: head, ctx: ctx}
		req, err := http.NewRequestWithContext(ctx, "POST", env.base+"/v1/tenants?tenantId=acme", body)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = MaxHTTPBodySize
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			t.Errorf("authorization %q: %v (the server waited for the body)", authorization, err)
		} else {
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("authorization %q: status %d, want 401", authorization, resp.StatusCode)
			}
			resp.Body.Close()
		}
		cancel()
	}
}

// TestRESTBodyLimit: a body the gRPC server could not receive is refused before it is read.
func TestRESTBodyLimit(t *testing.T) {
	if MaxHTTPBodySize > MaxRecvMsgSize {
		t.Errorf("MaxHTTPBodySize %d is beyond MaxRecvMsgSize %d: such bodies can never succeed", MaxHTTPBodySize, MaxRecvMsgSize)
	}
	env := startServer(t, nil)
	r := env.do(t, "POST", "/v1/tenants?tenantId=acme", testToken, string(createBody(MaxRecvMsgSize+1)))
	if r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("body of MaxRecvMsgSize+1 bytes: status %d, want 413; body %.200s", r.status, r.body)
	}
	// Of a body of unknown length, no more than the limit (and the byte that shows it is exceeded)
	// is read.
	if _, read := env.serveInProcess(t, "POST", "/v1/tenants?tenantId=acme", createBody(2*MaxRecvMsgSize), -1, "Bearer "+testToken); read > MaxRecvMsgSize+1 {
		t.Errorf("body of unknown length: %d bytes read, want at most %d", read, MaxRecvMsgSize+1)
	}
}

// TestRESTLargeBodiesDecodedFewAtATime: at most maxLargeBodies requests with a large body are in
// the gateway at once, even with a valid token; the others wait for them. Requests with a small
// body and unauthenticated ones are not held up.
func TestRESTLargeBodiesDecodedFewAtATime(t *testing.T) {
	var inGateway, peak atomic.Int32
	arrived := make(chan int, 64)
	release := make(chan struct{})
	env := startServer(t, func(c *Config) {
		c.Services[0].RegisterGateway = func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			// Stands for a binding that decodes its body and waits for its call.
			err := mux.HandlePath("POST", "/v1/test/hold", func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
				n, err := io.Copy(io.Discard, r.Body)
				cur := inGateway.Add(1)
				for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
				}
				arrived <- int(n)
				<-release
				inGateway.Add(-1)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				_, _ = fmt.Fprint(w, n)
			})
			if err != nil {
				return err
			}
			return guestlistv1.RegisterTenantServiceHandler(ctx, mux, conn)
		}
	})
	post := func(size int, chunked bool, token string) (int, string) {
		var body io.Reader = bytes.NewReader(createBody(size))
		if chunked {
			body = io.MultiReader(body) // no length known to the client: sent chunked
		}
		req, err := http.NewRequestWithContext(ctxT(t), "POST", env.base+"/v1/test/hold", body)
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	const large = 3 * maxLargeBodies
	var wg sync.WaitGroup
	for i := range large {
		wg.Go(func() {
			size := largeBodySize + 1 + i
			if code, body := post(size, i%2 == 1, testToken); code != http.StatusOK || body != fmt.Sprint(size) {
				t.Errorf("large request %d: %d %q, want 200 %d", i, code, body, size)
			}
		})
	}
	timeout := time.After(10 * time.Second)
	for range maxLargeBodies {
		select {
		case <-arrived:
		case <-timeout:
			t.Fatalf("fewer than %d large requests reached the gateway", maxLargeBodies)
		}
	}
	select {
	case <-arrived:
		t.Errorf("more than %d large requests in the gateway at once", maxLargeBodies)
	case <-time.After(300 * time.Millisecond):
	}
	// Meanwhile an unauthenticated large request is refused, and a small one gets through.
	if code, _ := post(MaxHTTPBodySize, false, ""); code != http.StatusUnauthorized {
		t.Errorf("unauthenticated large request while the slots are taken: %d, want 401", code)
	}
	wg.Go(func() {
		if code, body := post(1024, false, testToken); code != http.StatusOK || body != "1024" {
			t.Errorf("small request: %d %q", code, body)
		}
	})
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Errorf("a small request waited for the large ones")
	}
	close(release)
	wg.Wait()
	if p := peak.Load(); p > maxLargeBodies+1 {
		t.Errorf("%d requests in the gateway at once, want at most %d large ones and the small one", p, maxLargeBodies)
	}
}

// TestRESTDecodingSlotsCannotBeHeld: a client cannot keep the large-body slots from others. A
// request gives its slot back once its response starts (a client that does not read its answer
// holds none); requests whose method no binding decodes a body for take none; and a request that
// finds every slot taken gets UNAVAILABLE after slotWait instead of waiting for ever.
func TestRESTDecodingSlotsCannotBeHeld(t *testing.T) {
	release := make(chan struct{})
	answered := make(chan struct{}, 64)
	held := make(chan struct{}, 64)
	env := startServer(t, func(c *Config) {
		c.Services[0].RegisterGateway = func(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
			// Answers at once, then keeps writing its response until released (a large answer to
			// a client that does not read it).
			if err := mux.HandlePath("POST", "/v1/test/answer-then-hold", func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusOK)
				answered <- struct{}{}
				<-release
			}); err != nil {
				return err
			}
			// Holds its slot while its call runs.
			if err := mux.HandlePath("POST", "/v1/test/hold", func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
				_, _ = io.Copy(io.Discard, r.Body)
				held <- struct{}{}
				<-release
			}); err != nil {
				return err
			}
			return mux.HandlePath("GET", "/v1/test/get", func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
				w.WriteHeader(http.StatusOK)
			})
		}
	})
	defer close(release)
	send := func(method, path string) int {
		req, err := http.NewRequestWithContext(ctxT(t), method, env.base+path, io.MultiReader(bytes.NewReader(createBody(largeBodySize+1))))
		if err != nil {
			t.Error(err)
			return 0
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0 // the background requests end with the test
		}
		defer resp.Body.Close()
		return resp.StatusCode
	}
	waitFor := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not happen", what)
		}
	}
	// Answered, then stuck writing: they hold no slot, so as many again get into the gateway.
	for range maxLargeBodies {
		go send("POST", "/v1/test/answer-then-hold")
		waitFor(answered, "a large request answering")
	}
	for range maxLargeBodies {
		go send("POST", "/v1/test/hold")
		waitFor(held, "a large request reaching the gateway while others write their answers")
	}
	// Every slot is taken now. A GET with a large body takes none.
	if code := send("GET", "/v1/test/get"); code != http.StatusOK {
		t.Errorf("GET with a large body while the slots are taken: %d, want 200", code)
	}
	// A large POST waits slotWait at most.
	defer func(w time.Duration) { slotWait = w }(slotWait)
	slotWait = 100 * time.Millisecond
	if code := send("POST", "/v1/test/hold"); code != http.StatusServiceUnavailable {
		t.Errorf("large request finding every slot taken: %d, want 503", code)
	}
}
