package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
)

// The interceptor chain, outermost first: recovery, logging, authentication, validation (and, for
// streams, drain: the stream's context ends when the server shuts down).

// infraPrefixes are the method prefixes of the infrastructure services that need no bearer token
// and whose calls are logged at debug level only.
var infraPrefixes = []string{
	"/grpc.health.v1.Health/",
	"/grpc.reflection.v1.ServerReflection/",
	"/grpc.reflection.v1alpha.ServerReflection/",
}

func isInfra(fullMethod string) bool {
	for _, p := range infraPrefixes {
		if strings.HasPrefix(fullMethod, p) {
			return true
		}
	}
	return false
}

// errInternal is what a client sees of a panic or an unexpected failure; the details are logged.
var errInternal = status.Error(codes.Internal, "internal error")

// wrappedStream replaces a server stream's context and optionally checks received messages.
type wrappedStream struct {
	grpc.ServerStream
	ctx   context.Context
	check func(m any) error
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

func (w *wrappedStream) RecvMsg(m any) error {
	if err := w.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if w.check != nil {
		return w.check(m)
	}
	return nil
}

// --- recovery ---

func (s *Server) recovered(ctx context.Context, method string, r any) error {
	s.log.ErrorContext(ctx, "panic in RPC handler", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return errInternal
}

func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, s.recovered(ctx, info.FullMethod, r)
		}
	}()
	return handler(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = s.recovered(ss.Context(), info.FullMethod, r)
		}
	}()
	return handler(srv, ss)
}

// --- access logging ---

// callInfo collects what inner interceptors learn about a call for its access log line.
type callInfo struct {
	actor string
}

type callInfoKey struct{}

func callInfoFrom(ctx context.Context) *callInfo {
	ci, _ := ctx.Value(callInfoKey{}).(*callInfo)
	return ci
}

func (s *Server) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	ci := &callInfo{}
	ctx = context.WithValue(ctx, callInfoKey{}, ci)
	panicked := true
	defer func() { s.logCall(ctx, info.FullMethod, err, panicked, time.Since(start), ci) }()
	resp, err = handler(ctx, req)
	panicked = false
	return resp, err
}

func (s *Server) logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	ci := &callInfo{}
	ctx := context.WithValue(ss.Context(), callInfoKey{}, ci)
	panicked := true
	defer func() { s.logCall(ctx, info.FullMethod, err, panicked, time.Since(start), ci) }()
	err = handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	panicked = false
	return err
}

// logCall writes the access log line of one call. A panicking handler is logged as INTERNAL (the
// recovery interceptor turns it into that status).
func (s *Server) logCall(ctx context.Context, method string, err error, panicked bool, d time.Duration, ci *callInfo) {
	code := status.Code(err)
	if panicked {
		code = codes.Internal
	}
	level := slog.LevelInfo
	switch {
	case isInfra(method):
		level = slog.LevelDebug
	case code == codes.Internal || code == codes.Unknown || code == codes.DataLoss:
		level = slog.LevelError
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.String("method", method),
		slog.String("code", code.String()),
		slog.Duration("duration", d),
	)
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("peer", p.Addr.String()))
	}
	if ci.actor != "" {
		attrs = append(attrs, slog.String("actor", ci.actor))
	}
	switch {
	case panicked:
		attrs = append(attrs, slog.String("error", "panic"))
	case err != nil:
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	s.log.LogAttrs(ctx, level, "rpc", attrs...)
}

// --- authentication ---

// bearerToken returns the token of an "authorization: Bearer <token>" value.
func bearerToken(v string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	if token == "" || strings.ContainsAny(token, " \t") {
		return "", false
	}
	return token, true
}

// authenticate returns ctx carrying the caller's principal, or an UNAUTHENTICATED status. Calls
// to the health and reflection services need no token.
func (s *Server) authenticate(ctx context.Context, method string) (context.Context, error) {
	ctx, _, err := s.authenticateToken(ctx, method)
	return ctx, err
}

// authenticateToken is authenticate that also returns the bearer token it accepted ("" for the
// infrastructure services).
func (s *Server) authenticateToken(ctx context.Context, method string) (context.Context, string, error) {
	if isInfra(method) {
		return ctx, "", nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch len(vals) {
	case 0:
		return nil, "", status.Error(codes.Unauthenticated, `missing bearer token: send the header "authorization: Bearer <token>"`)
	case 1:
	default:
		return nil, "", status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	token, ok := bearerToken(vals[0])
	if !ok {
		return nil, "", status.Error(codes.Unauthenticated, `malformed authorization header: want "Bearer <token>"`)
	}
	p, err := s.principal(ctx, method, token)
	if err != nil {
		return nil, "", err
	}
	if ci := callInfoFrom(ctx); ci != nil {
		ci.actor = p.Actor()
	}
	return auth.NewContext(ctx, p), token, nil
}

// principal asks the authenticator who token is, and maps its failure to the status the caller
// gets: its own when it has one, the context's when that ended, INTERNAL (logged) otherwise.
func (s *Server) principal(ctx context.Context, method, token string) (auth.Principal, error) {
	p, err := s.authn.Authenticate(ctx, token)
	if err == nil {
		return p, nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return p, status.FromContextError(ctxErr).Err()
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK && st.Code() != codes.Unknown {
		return p, st.Err()
	}
	s.log.ErrorContext(ctx, "authenticator failed", "method", method, "error", err)
	return p, errInternal
}

func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// authStream authenticates a streaming call when it starts and, for a token that can be deleted
// (a tenant's or the platform's, not the admin's or the edges'), again while the stream sends
// (reauthStream): a token deleted during a long stream (a history export) stops working at once
// there too, as DeleteToken promises.
func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, token, err := s.authenticateToken(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	var stream grpc.ServerStream = &wrappedStream{ServerStream: ss, ctx: ctx}
	if p, ok := auth.FromContext(ctx); ok && p.TokenID != "" {
		stream = &reauthStream{ServerStream: stream, s: s, method: info.FullMethod, token: token, next: time.Now().Add(reauthInterval)}
	}
	return handler(srv, stream)
}

// reauthInterval is how long a streaming call may send without its token being checked again.
var reauthInterval = time.Second

// reauthStream checks its call's token again before sending a message, at most once every
// reauthInterval; a token no longer valid ends the call with the authenticator's answer
// (UNAUTHENTICATED) instead of the message.
type reauthStream struct {
	grpc.ServerStream
	s      *Server
	method string
	token  string
	next   time.Time // when the token is next checked
}

// SendMsg sends m once the token, if due for a check, is still valid.
func (r *reauthStream) SendMsg(m any) error {
	if now := time.Now(); !now.Before(r.next) {
		if _, err := r.s.principal(r.Context(), r.method, r.token); err != nil {
			return err
		}
		r.next = now.Add(reauthInterval)
	}
	return r.ServerStream.SendMsg(m)
}

// --- validation ---

// validate checks a request message against its protovalidate rules. A violation gives
// INVALID_ARGUMENT with one google.rpc.BadRequest field violation per protovalidate violation.
func (s *Server) validate(ctx context.Context, method string, req any) error {
	msg, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if err := invalidUTF8Error(msg); err != nil {
		return err
	}
	err := s.validator.Validate(msg)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if errors.As(err, &verr) {
		return violationsError(msg.ProtoReflect().Descriptor(), verr)
	}
	s.log.ErrorContext(ctx, "request validation failed", "method", method, "error", err)
	return errInternal
}

// violationsError converts protovalidate's violations of a request message of type md to an
// apistatus INVALID_ARGUMENT: the field path in proto names (e.g.
// "hostname.mtls.certificate_authority_ids[0]"), and the rule's message. A required oneof left
// empty is named by the fields a user can set ("revocation.target: one of serialNumber or
// fingerprintSha256 is required"), not by protovalidate's "exactly one field is required in oneof".
func violationsError(md protoreflect.MessageDescriptor, verr *protovalidate.ValidationError) error {
	vs := make([]apistatus.Violation, 0, len(verr.Violations))
	for _, v := range verr.Violations {
		reason := v.Proto.GetMessage()
		if reason == "" {
			reason = "violates rule " + v.Proto.GetRuleId()
		}
		if o := oneofAt(md, v.Proto.GetField().GetElements()); o != nil && v.Proto.GetRuleId() == "required" {
			reason = "one of " + oneofFieldList(o, " or ") + " is required"
		}
		vs = append(vs, apistatus.Violation{Field: protovalidate.FieldPathString(v.Proto.GetField()), Reason: reason})
	}
	return apistatus.InvalidArgument(vs...)
}

// oneofAt returns the oneof that the field path path names in a message of type md: a path whose
// elements before the last are message fields, and whose last is the name of a oneof of the
// message they lead to. Anything else is nil.
func oneofAt(md protoreflect.MessageDescriptor, path []*validate.FieldPathElement) protoreflect.OneofDescriptor {
	if len(path) == 0 {
		return nil
	}
	for _, e := range path[:len(path)-1] {
		f := md.Fields().ByName(protoreflect.Name(e.GetFieldName()))
		if f == nil || f.Message() == nil || f.IsList() || f.IsMap() {
			return nil
		}
		md = f.Message()
	}
	return md.Oneofs().ByName(protoreflect.Name(path[len(path)-1].GetFieldName()))
}

func (s *Server) validateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.validate(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) validateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx, check: func(m any) error {
		return s.validate(ctx, info.FullMethod, m)
	}})
}

// --- drain ---

// drainStream cancels a streaming call's context when the server begins to shut down, so that
// long-lived streams end and the graceful stop need not wait for its timeout. A call that ends
// with its context's error because of that ends with UNAVAILABLE, saying why (the client may
// retry), rather than CANCELLED, which would say the client gave up.
func (s *Server) drainStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	stop := context.AfterFunc(s.drainCtx, cancel)
	defer stop()
	err := handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	if err != nil && s.drainCtx.Err() != nil && ss.Context().Err() == nil {
		if st := status.Convert(err); st.Code() == codes.Canceled || st.Code() == codes.Unknown {
			return status.Errorf(codes.Unavailable, "the server is shutting down; retry (%s)", st.Message())
		}
	}
	return err
}
