package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// clearOTELEnv unsets every variable that could switch export on, for the duration of the test.
func clearOTELEnv(t *testing.T) {
	t.Helper()
	for _, k := range append(exporterEnv, "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED") {
		t.Setenv(k, "")
	}
}

func TestSpanExporterNoEnv(t *testing.T) {
	clearOTELEnv(t)
	if ExportConfigured() {
		t.Fatal("ExportConfigured() = true without OTEL_* variables")
	}
	exp, err := spanExporter(context.Background())
	if err != nil {
		t.Fatalf("spanExporter: %v", err)
	}
	if exp != nil {
		t.Fatalf("spanExporter without OTEL_* variables = %T, want none", exp)
	}
}

func TestSpanExporterNone(t *testing.T) {
	clearOTELEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "none")
	exp, err := spanExporter(context.Background())
	if err != nil {
		t.Fatalf("spanExporter: %v", err)
	}
	if exp != nil {
		t.Fatalf("spanExporter with OTEL_TRACES_EXPORTER=none = %T, want none", exp)
	}
}

func TestSpanExporterConsole(t *testing.T) {
	clearOTELEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	exp, err := spanExporter(context.Background())
	if err != nil {
		t.Fatalf("spanExporter: %v", err)
	}
	if exp == nil {
		t.Fatal("spanExporter with OTEL_TRACES_EXPORTER=console = none, want an exporter")
	}
	_ = exp.Shutdown(context.Background())
}

func TestSpanExporterUnknown(t *testing.T) {
	clearOTELEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "carrier-pigeon")
	if _, err := spanExporter(context.Background()); err == nil {
		t.Fatal("spanExporter with an unknown exporter name: no error")
	}
	if _, _, err := Setup(context.Background(), "guestlist", "test"); err == nil {
		t.Fatal("Setup with an unknown exporter name: no error")
	}
}

func TestSetupNoEnv(t *testing.T) {
	clearOTELEnv(t)
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	t.Cleanup(func() {
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
	})

	tp, shutdown, err := Setup(context.Background(), "guestlist-test", "v0.0.0-test")
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	if !span.SpanContext().IsValid() {
		t.Error("span from the provider has no valid span context")
	}
	span.End()

	// The W3C propagator is global: the span context goes out as traceparent.
	carrier := map[string]string{}
	otel.GetTextMapPropagator().Inject(ctx, propagationCarrier(carrier))
	if want := span.SpanContext().TraceID().String(); !strings.Contains(carrier["traceparent"], want) {
		t.Errorf("traceparent = %q, want it to hold trace id %s", carrier["traceparent"], want)
	}
	if otel.GetTracerProvider() != tp {
		t.Error("Setup did not install the provider globally")
	}

	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if err := shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("shutdown took %v without an exporter", d)
	}
}

type propagationCarrier map[string]string

func (c propagationCarrier) Get(k string) string { return c[k] }
func (c propagationCarrier) Set(k, v string)     { c[k] = v }
func (c propagationCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

func TestLoggerAddsTraceIDs(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	var buf bytes.Buffer
	log := NewLogger(&buf, slog.LevelInfo, true)

	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	log.InfoContext(ctx, "inside", "k", "v")
	log.DebugContext(ctx, "filtered out")
	span.End()
	log.InfoContext(context.Background(), "outside")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d log lines, want 2:\n%s", len(lines), buf.String())
	}
	var inside, outside map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &inside); err != nil {
		t.Fatalf("line 1 is not JSON: %v", err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &outside); err != nil {
		t.Fatalf("line 2 is not JSON: %v", err)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("exporter has %d spans, want 1", len(spans))
	}
	sc := spans[0].SpanContext
	if inside[TraceIDKey] != sc.TraceID().String() || inside[SpanIDKey] != sc.SpanID().String() {
		t.Errorf("inside the span: trace_id=%v span_id=%v, want %s %s", inside[TraceIDKey], inside[SpanIDKey], sc.TraceID(), sc.SpanID())
	}
	if inside["k"] != "v" || inside["msg"] != "inside" {
		t.Errorf("record lost its attributes: %v", inside)
	}
	if _, ok := outside[TraceIDKey]; ok {
		t.Errorf("outside any span the record has a trace_id: %v", outside)
	}
}

func TestLoggerTextAndNoDuplicate(t *testing.T) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewInMemoryExporter()))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	var buf bytes.Buffer
	log := NewLogger(&buf, slog.LevelDebug, false).With("component", "test")
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()

	log.DebugContext(ctx, "text")
	out := buf.String()
	if !strings.Contains(out, "trace_id="+span.SpanContext().TraceID().String()) || !strings.Contains(out, "component=test") {
		t.Errorf("text record = %q, want trace_id and component", out)
	}

	buf.Reset()
	log.InfoContext(ctx, "explicit", TraceIDKey, "given")
	if got := strings.Count(buf.String(), "trace_id="); got != 1 {
		t.Errorf("record with an explicit trace_id has %d trace_id attributes: %q", got, buf.String())
	}

	// A span context without a recording span (e.g. from an incoming traceparent) counts too.
	remote := trace.ContextWithSpanContext(context.Background(), span.SpanContext())
	buf.Reset()
	log.InfoContext(remote, "remote")
	if !strings.Contains(buf.String(), "span_id="+span.SpanContext().SpanID().String()) {
		t.Errorf("record = %q, want the span id", buf.String())
	}
}
