// Package telemetry sets up guestlist's OpenTelemetry tracing, its metrics (Prometheus at /metrics,
// OTLP when configured; see SetupMetrics) and its structured logs.
//
// Tracing is opt-in through the standard OTEL_* environment variables: without any of
// OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, spans are
// created (so that logs still carry trace ids that correlate with a caller's traceparent) but never
// exported, and nothing ever connects anywhere. Logs are log/slog records that carry the trace_id and
// span_id of the span active in the context they are logged with.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// exporterEnv lists the variables that switch span export on. When none is set, Setup installs no
// exporter at all.
var exporterEnv = []string{
	"OTEL_TRACES_EXPORTER",
	"OTEL_EXPORTER_OTLP_ENDPOINT",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
}

// ExportConfigured reports whether the environment asks for spans to be exported, that is whether
// any of OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is
// set to a non-empty value.
func ExportConfigured() bool {
	for _, k := range exporterEnv {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return false
}

// Setup configures tracing for the process serviceName at version and returns its TracerProvider and
// a shutdown function that flushes and stops it (call it once, on the way out, with a deadline).
// extra are further resource attributes, such as semconv.ServiceInstanceID for a process that
// runs next to others of the same service (OTEL_RESOURCE_ATTRIBUTES overrides them).
//
// The span exporter is chosen by the standard OTEL_* variables through autoexport
// (OTEL_TRACES_EXPORTER=otlp|console|none, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_ENDPOINT,
// ...); when none of OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT and
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, or OTEL_TRACES_EXPORTER=none, the provider has no span
// processor and exports nothing. OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the
// resource, and OTEL_TRACES_SAMPLER the sampler, as usual.
//
// Setup installs the provider as the global TracerProvider and the W3C trace-context (plus baggage)
// propagator as the global TextMapPropagator.
func Setup(ctx context.Context, serviceName, version string, extra ...attribute.KeyValue) (trace.TracerProvider, func(context.Context) error, error) {
	res, err := newResource(ctx, serviceName, version, extra...)
	if err != nil {
		return nil, nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}

	exp, err := spanExporter(ctx)
	if err != nil {
		return nil, nil, err
	}
	if exp != nil {
		opts = append(opts, sdktrace.WithBatcher(exp))
	}

	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	shutdown := func(ctx context.Context) error {
		if err := tp.Shutdown(ctx); err != nil {
			return fmt.Errorf("telemetry: shut down tracer provider: %w", err)
		}
		return nil
	}
	return tp, shutdown, nil
}

// Instance returns the resource attribute that tells one process from others of its service
// (service.instance.id = id; an edge passes its edge id), for Setup, SetupMetrics and NewMetrics.
// It returns none for an empty id.
func Instance(id string) []attribute.KeyValue {
	if id == "" {
		return nil
	}
	return []attribute.KeyValue{semconv.ServiceInstanceID(id)}
}

// newResource describes the process serviceName at version, with the extra attributes;
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override it.
func newResource(ctx context.Context, serviceName, version string, extra ...attribute.KeyValue) (*resource.Resource, error) {
	attrs := append([]attribute.KeyValue{semconv.ServiceName(serviceName), semconv.ServiceVersion(version)}, extra...)
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(attrs...),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // last, so that OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) && !errors.Is(err, resource.ErrSchemaURLConflict) {
		return nil, fmt.Errorf("telemetry: build resource: %w", err)
	}
	return res, nil
}

// spanExporter returns the exporter that the environment asks for, or nil for none.
func spanExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	if !ExportConfigured() {
		return nil, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("telemetry: create span exporter from OTEL_* environment: %w", err)
	}
	if autoexport.IsNoneSpanExporter(exp) {
		return nil, nil
	}
	return exp, nil
}
