package telemetry

import (
	"context"
	"io"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys that carry the active span's ids.
const (
	// TraceIDKey is the attribute holding the active span's trace id (32 lower-case hex digits).
	TraceIDKey = "trace_id"
	// SpanIDKey is the attribute holding the active span's id (16 lower-case hex digits).
	SpanIDKey = "span_id"
)

// NewLogger returns a logger writing to w at level and above, as JSON lines when json is true and
// as logfmt-style text otherwise. Every record logged with a context that holds a valid span (the
// *Context methods, e.g. InfoContext) carries that span's trace_id and span_id, unless the record
// already has a trace_id attribute. (Under a logger's WithGroup they are added inside the group,
// like any attribute added at Handle time.)
func NewLogger(w io.Writer, level slog.Level, json bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if json {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(NewTraceHandler(h))
}

// NewTraceHandler wraps h so that records logged with a context holding a valid span carry its
// trace_id and span_id.
func NewTraceHandler(h slog.Handler) slog.Handler {
	return traceHandler{inner: h}
}

type traceHandler struct {
	inner slog.Handler
}

func (h traceHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if sc.IsValid() && !hasAttr(r, TraceIDKey) {
		r = r.Clone()
		r.AddAttrs(slog.String(TraceIDKey, sc.TraceID().String()), slog.String(SpanIDKey, sc.SpanID().String()))
	}
	return h.inner.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{inner: h.inner.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{inner: h.inner.WithGroup(name)}
}

func hasAttr(r slog.Record, key string) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			found = true
			return false
		}
		return true
	})
	return found
}
