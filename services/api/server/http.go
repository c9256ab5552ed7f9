package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"guestlist.dev/proto/gen/openapi"
	"guestlist.dev/services/api/apistatus"
)

// builtinPaths are the patterns the HTTP listener serves itself.
var builtinPaths = map[string]bool{"/": true, "/openapi.json": true, "/healthz": true, "/readyz": true}

// jsonMarshaler is the REST encoding: protojson with lowerCamelCase names, unpopulated fields
// omitted, enum names, and unknown fields in requests rejected (400).
func jsonMarshaler() runtime.Marshaler {
	return bodyMarshaler{&runtime.HTTPBodyMarshaler{Marshaler: &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: false, EmitUnpopulated: false},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}}
}

// bodyMarshaler is the REST encoding, whose decoders record in a bufferedBody the message they
// decode it into, so that errorHandler can name a field that does not decode by its path in the
// request (decodeError).
type bodyMarshaler struct{ *runtime.HTTPBodyMarshaler }

var _ runtime.Marshaler = bodyMarshaler{}

// NewDecoder returns the encoding's decoder of r, which records in r, when r is a bufferedBody,
// the message each Decode decodes into.
func (m bodyMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	d := m.HTTPBodyMarshaler.NewDecoder(r)
	b, ok := r.(*bufferedBody)
	if !ok {
		return d
	}
	return runtime.DecoderFunc(func(v any) error {
		b.into = messageName(v)
		return d.Decode(v)
	})
}

// messageName returns the full name of the message v is (a proto.Message) or points to (the
// gateway decodes a body that is one field of the request into a pointer to that field); "" for
// anything else.
func messageName(v any) protoreflect.FullName {
	if m, ok := v.(proto.Message); ok {
		return m.ProtoReflect().Descriptor().FullName()
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.Type().Elem().Kind() == reflect.Pointer {
		if m, ok := reflect.Zero(rv.Type().Elem()).Interface().(proto.Message); ok {
			return m.ProtoReflect().Descriptor().FullName()
		}
	}
	return ""
}

// httpHandler builds the HTTP listener's handler: the REST gateway under "/" and /openapi.json
// (only when a service has REST bindings), the built-in endpoints and cfg.ExtraHTTP, all behind
// the body size limit.
func (s *Server) httpHandler(cfg Config) (http.Handler, error) {
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, jsonMarshaler()),
		// The default header matcher forwards "Authorization" as the "authorization" metadata
		// that the auth interceptor reads, and no Grpc-Metadata-* header.
		runtime.WithIncomingHeaderMatcher(runtime.DefaultHeaderMatcher),
		runtime.WithErrorHandler(errorHandler),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
	)
	rest := false // whether any service has REST bindings
	for _, svc := range cfg.Services {
		if svc.RegisterGateway == nil {
			continue
		}
		rest = true
		if err := svc.RegisterGateway(context.Background(), gw, s.conn); err != nil {
			return nil, fmt.Errorf("server: register the REST gateway of %s: %w", svc.Name, err)
		}
	}
	otelOpts := []otelhttp.Option{otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
		return "HTTP " + r.Method
	})}
	if cfg.TracerProvider != nil {
		otelOpts = append(otelOpts, otelhttp.WithTracerProvider(cfg.TracerProvider))
	}
	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	otelOpts = append(otelOpts, otelhttp.WithMeterProvider(hostlessMeterProvider{mp}))

	mux := http.NewServeMux()
	if rest {
		// A process without REST bindings (the projector: gRPC ConfigService only) serves no
		// gateway and no API description; its other paths are 404.
		// Authentication comes before anything reads a body, and large bodies are decoded a few
		// at a time: see requireToken and limitDecoding.
		api := s.requireToken(gw, limitDecoding(gw, make(chan struct{}, maxLargeBodies)))
		mux.Handle("/", otelhttp.NewHandler(api, "rest", otelOpts...))
		mux.HandleFunc("GET /openapi.json", serveOpenAPI)
	}
	mux.HandleFunc("GET /healthz", serveHealthz)
	mux.HandleFunc("GET /readyz", s.serveReadyz)
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	for pattern, h := range cfg.ExtraHTTP {
		if builtinPaths[pattern] {
			return nil, fmt.Errorf("server: ExtraHTTP pattern %q collides with a built-in path", pattern)
		}
		if cfg.Metrics != nil && (pattern == "/metrics" || pattern == "GET /metrics") {
			return nil, fmt.Errorf("server: ExtraHTTP pattern %q collides with Config.Metrics", pattern)
		}
		if err := handle(mux, pattern, h); err != nil {
			return nil, err
		}
	}
	return limitBody(mux), nil
}

// handle registers h at pattern, turning http.ServeMux's panic on a bad or conflicting pattern
// into an error.
func handle(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	if h == nil {
		return fmt.Errorf("server: ExtraHTTP pattern %q has a nil handler", pattern)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("server: ExtraHTTP pattern %q: %v", pattern, r)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

// errorHandler is grpc-gateway's default error handler (google.rpc.Status JSON with details, the
// usual code to HTTP status mapping) with a proper WWW-Authenticate challenge on 401, and the
// gateway's decoding errors given a BadRequest naming the field (decodeError).
func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	var body *bufferedBody
	if b, ok := r.Body.(*bufferedBody); ok {
		body = b
		if method, ok := runtime.RPCMethod(ctx); ok {
			body.method = method
		}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, challengeWriter{w}, r, decodeError(err, body))
}

// routingErrorHandler answers requests that match no REST binding with the HTTP status the router
// chose (404, 405, 400) and a google.rpc.Status body.
func routingErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	code := codes.Internal
	switch httpStatus {
	case http.StatusBadRequest:
		code = codes.InvalidArgument
	case http.StatusNotFound:
		code = codes.NotFound
	case http.StatusMethodNotAllowed:
		code = codes.Unimplemented
	}
	err := &runtime.HTTPStatusError{HTTPStatus: httpStatus, Err: status.Error(code, http.StatusText(httpStatus))}
	errorHandler(ctx, mux, m, w, r, err)
}

// limitBody refuses a request whose declared length exceeds MaxHTTPBodySize with 413 and caps
// the body of every other request at that size (the gateway answers a body found larger with 413
// too: decodeError).
func limitBody(next http.Handler) http.Handler {
	limited := http.MaxBytesHandler(next, MaxHTTPBodySize)
	answer, err := protojson.Marshal(status.Convert(errBodyTooLarge).Proto())
	if err != nil {
		panic("server: encoding a status: " + err.Error()) // a google.rpc.Status always encodes
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > MaxHTTPBodySize {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			_, _ = w.Write(answer)
			return
		}
		limited.ServeHTTP(w, r)
	})
}

// errBodyTooLarge is the answer to a REST body larger than MaxHTTPBodySize, with HTTP status 413.
var errBodyTooLarge = apistatus.InvalidArgument(apistatus.Violation{Field: "body", Reason: fmt.Sprintf(
	"larger than %d bytes (4 MiB); send less in one request (for example fewer hostnames in a batch)", MaxHTTPBodySize)})

// requireToken answers a request that carries a body with the gateway's 401 before anything reads
// that body, unless the request's bearer token is valid. The gateway decodes the whole body into
// the request message before the call reaches the gRPC server's auth interceptor, and decoded JSON
// can take tens of times its size in memory (about 40 times for {"requests":[{"hostname":{}},...]}),
// so without this check any client could make the process hold hundreds of MiB per request without
// a token. The check is the interceptor's own (authenticate, on the metadata the gateway would send
// from this request), so the answer is the very one the gateway gives once the interceptor has
// refused the call. The interceptor still authenticates every call the gateway makes; a request
// with a body and a valid token is thus authenticated twice, and nothing is remembered between
// the two. Requests without a body (GET, DELETE) have nothing to decode: the gateway passes them
// on and answers them itself, as before.
func (s *Server) requireToken(gw *runtime.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		ctx, err := runtime.AnnotateIncomingContext(r.Context(), gw, r, "")
		if err == nil {
			_, err = s.authenticate(ctx, r.Method+" "+r.URL.Path)
		} else {
			ctx = r.Context() // an invalid header (grpc-timeout): the gateway's answer, without reading the body
		}
		if err != nil {
			_, out := runtime.MarshalerForRequest(gw, r)
			errorHandler(ctx, gw, out, w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// limitDecoding lets at most cap(slots) requests with a body larger than largeBodySize (or of
// unknown length) be decoded and served by the gateway at once; the others wait for a slot,
// holding their raw body only, for at most slotWait (then UNAVAILABLE). The body is read before
// the wait, so that a slow sender holds no slot, and the slot is given back when the response
// starts, so that a client that does not read its answer holds none either. Each decoding request
// can take tens of times its body in memory until its call ends, so this bounds what even
// authenticated callers can make the process hold. GET, HEAD, DELETE and OPTIONS take no slot: no
// binding decodes their body (net/http discards it).
//
// Every body the gateway decodes is read first (the gateway would read it at once anyway) and
// given to it as a bufferedBody, so that errorHandler can name the field at the position of a
// decoding error (decodeError).
func limitDecoding(gw *runtime.ServeMux, slots chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions:
			gw.ServeHTTP(w, r)
			return
		}
		if r.ContentLength == 0 {
			gw.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > 0 && r.ContentLength <= largeBodySize {
			r.Body = newBufferedBody(readBody(r))
			gw.ServeHTTP(w, r)
			return
		}
		body, readErr := readBody(r)
		r.Body = newBufferedBody(body, readErr)
		if readErr == nil && len(body) <= largeBodySize {
			gw.ServeHTTP(w, r)
			return
		}
		wait := time.NewTimer(slotWait)
		defer wait.Stop()
		select {
		case slots <- struct{}{}:
			rw := &releaseOnWrite{ResponseWriter: w, release: func() { <-slots }}
			defer rw.done()
			w = rw
		case <-wait.C:
			_, out := runtime.MarshalerForRequest(gw, r)
			errorHandler(r.Context(), gw, out, w, r, status.Errorf(codes.Unavailable, "too many large requests at once; retry in a moment"))
			return
		case <-r.Context().Done():
			_, out := runtime.MarshalerForRequest(gw, r)
			errorHandler(r.Context(), gw, out, w, r, status.FromContextError(r.Context().Err()).Err())
			return
		}
		gw.ServeHTTP(w, r)
	})
}

// slotWait is how long a large request waits for a decoding slot (see limitDecoding).
var slotWait = 10 * time.Second

// releaseOnWrite gives back a decoding slot when the response starts (its call has ended) or,
// failing that, when the request is done.
type releaseOnWrite struct {
	http.ResponseWriter
	once    sync.Once
	release func()
}

func (w *releaseOnWrite) done() { w.once.Do(w.release) }

// WriteHeader gives the slot back, then writes the header.
func (w *releaseOnWrite) WriteHeader(code int) {
	w.done()
	w.ResponseWriter.WriteHeader(code)
}

// Write gives the slot back, then writes p.
func (w *releaseOnWrite) Write(p []byte) (int, error) {
	w.done()
	return w.ResponseWriter.Write(p)
}

// Flush gives the slot back, then flushes, when the underlying writer can.
func (w *releaseOnWrite) Flush() {
	w.done()
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap returns the underlying writer (for http.ResponseController).
func (w *releaseOnWrite) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// readBody reads r's body (which limitBody caps at MaxHTTPBodySize). The error is nil when the
// whole body was read.
func readBody(r *http.Request) ([]byte, error) {
	if r.ContentLength > 0 && r.ContentLength <= MaxHTTPBodySize {
		buf := make([]byte, r.ContentLength)
		n, err := io.ReadFull(r.Body, buf)
		return buf[:n], err
	}
	return io.ReadAll(r.Body)
}

// bufferedBody is a request body read before the gateway decodes it: its bytes, then the error
// that ended the reading, if any (a body beyond MaxHTTPBodySize, a broken connection), which the
// gateway thus meets where it would have met it.
type bufferedBody struct {
	io.Reader
	raw []byte // the bytes read
	// into is the full name of the message the gateway decoded the body into (bodyMarshaler), ""
	// before; method is the gRPC method's full name ("/guestlist.v1.HostnameService/CreateHostname"),
	// set by errorHandler when known.
	into   protoreflect.FullName
	method string
}

func newBufferedBody(raw []byte, readErr error) *bufferedBody {
	return &bufferedBody{Reader: io.MultiReader(bytes.NewReader(raw), errReader{readErr}), raw: raw}
}

// Close does nothing: the server closes the request's own body.
func (*bufferedBody) Close() error { return nil }

// errReader returns err, or io.EOF when err is nil.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err == nil {
		return 0, io.EOF
	}
	return 0, e.err
}

// challengeWriter sets "WWW-Authenticate: Bearer" on a 401 response (the default handler puts the
// status message there).
type challengeWriter struct{ http.ResponseWriter }

func (w challengeWriter) WriteHeader(code int) {
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="guestlist"`)
	}
	w.ResponseWriter.WriteHeader(code)
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openapi.JSON)
}

func serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

// serveReadyz answers 200 while the server serves and Config.Ready reports ready, 503 with the
// reason otherwise.
func (s *Server) serveReadyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !s.serving.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready: shutting down\n")
		return
	}
	if s.ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := s.ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
	}
	_, _ = io.WriteString(w, "ok\n")
}
