package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// metricExporterEnv lists the variables that switch OTLP (or other autoexport) metric export on.
// When none is set, SetupMetrics serves /metrics only and connects nowhere.
var metricExporterEnv = []string{
	"OTEL_METRICS_EXPORTER",
	"OTEL_EXPORTER_OTLP_ENDPOINT",
	"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
}

// MetricExportConfigured reports whether the environment asks for metrics to be pushed, that is
// whether any of OTEL_METRICS_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set to a non-empty value.
func MetricExportConfigured() bool {
	for _, k := range metricExporterEnv {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return false
}

// Metrics is a process's metric pipeline: an OpenTelemetry MeterProvider read by a Prometheus
// exporter (served by Handler) and, when the environment asks for it, by a periodic OTLP reader.
type Metrics struct {
	// Provider creates the process's instruments. Pass it to the components (their
	// MeterProvider options); SetupMetrics also installs it as the global MeterProvider.
	Provider metric.MeterProvider
	// Handler serves the Prometheus text exposition of every instrument of Provider, plus the Go
	// runtime and process collectors, from a private prometheus.Registry (never the global one).
	// Mount it at /metrics.
	Handler http.Handler
	// Registry is the private registry Handler serves, for registering further collectors.
	Registry *prometheus.Registry

	sdk *sdkmetric.MeterProvider
}

// Shutdown flushes the periodic reader, if any, and stops the provider. Call it once, on the way
// out, with a deadline.
func (m *Metrics) Shutdown(ctx context.Context) error {
	if err := m.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: shut down meter provider: %w", err)
	}
	return nil
}

// HistogramSecondsBuckets are the bucket boundaries, in seconds, of guestlist's latency
// histograms: 50 µs to 10 s. (OpenTelemetry's default boundaries suit milliseconds.)
var HistogramSecondsBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// SetupMetrics builds the metric pipeline of the process serviceName at version with NewMetrics
// and installs its provider as the global MeterProvider.
func SetupMetrics(ctx context.Context, serviceName, version string, extra ...attribute.KeyValue) (*Metrics, error) {
	m, err := NewMetrics(ctx, serviceName, version, extra...)
	if err != nil {
		return nil, err
	}
	otel.SetMeterProvider(m.Provider)
	return m, nil
}

// NewMetrics builds the metric pipeline of the process serviceName at version (the resource is
// the same as Setup's, extra attributes included), without installing anything globally.
//
// Processes of one service whose metrics meet in one place (an OpenTelemetry collector's
// Prometheus exporter) need a service.instance.id each (semconv.ServiceInstanceID in extra, or
// OTEL_RESOURCE_ATTRIBUTES), or their series merge into one.
//
// Every instrument is exposed at Metrics.Handler in the Prometheus text format, with Prometheus
// names: dots become underscores, the unit is appended ("s" -> _seconds) and counters end in
// _total (guestlist.edge.request.duration with unit s -> guestlist_edge_request_duration_seconds).
//
// Push export is opt-in like span export: only when one of OTEL_METRICS_EXPORTER,
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set does SetupMetrics add
// the reader that autoexport.NewMetricReader makes from the OTEL_* environment (OTLP over
// http/protobuf by default, every 60 s or OTEL_METRIC_EXPORT_INTERVAL);
// OTEL_METRICS_EXPORTER=none adds none. Without them nothing connects anywhere.
func NewMetrics(ctx context.Context, serviceName, version string, extra ...attribute.KeyValue) (*Metrics, error) {
	res, err := newResource(ctx, serviceName, version, extra...)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("telemetry: register the Go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("telemetry: register the process collector: %w", err)
	}
	prom, err := promexporter.New(promexporter.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("telemetry: create the Prometheus exporter: %w", err)
	}
	opts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(prom)}
	push, err := metricReader(ctx)
	if err != nil {
		_ = prom.Shutdown(ctx)
		return nil, err
	}
	if push != nil {
		opts = append(opts, sdkmetric.WithReader(push))
	}
	mp := sdkmetric.NewMeterProvider(opts...)
	return &Metrics{
		Provider: mp,
		Handler:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}),
		Registry: reg,
		sdk:      mp,
	}, nil
}

// metricReader returns the push reader that the environment asks for, or nil for none.
func metricReader(ctx context.Context) (sdkmetric.Reader, error) {
	if !MetricExportConfigured() {
		return nil, nil
	}
	r, err := autoexport.NewMetricReader(ctx)
	if err != nil {
		return nil, fmt.Errorf("telemetry: create metric reader from OTEL_* environment: %w", err)
	}
	if autoexport.IsNoneMetricReader(r) {
		return nil, nil
	}
	return r, nil
}
