package server

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// otelhttp records server.address and server.port on its metrics from the request's Host header
// (when no server name is configured), which any client sets as it likes: every new Host value
// made new time series, so that unauthenticated requests could grow /metrics without bound. The
// semantic conventions make both attributes opt-in on http.server.* metrics for that reason; the
// HTTP listener's meters drop them.
var hostAttributes = map[attribute.Key]bool{"server.address": true, "server.port": true}

// withoutHost returns the measurement option carrying set's attributes less hostAttributes.
func withoutHost(set attribute.Set) metric.MeasurementOption {
	filtered, _ := set.Filter(func(kv attribute.KeyValue) bool { return !hostAttributes[kv.Key] })
	return metric.WithAttributeSet(filtered)
}

// hostlessMeterProvider gives meters whose synchronous instruments drop hostAttributes from every
// measurement (otelhttp uses no asynchronous instruments).
type hostlessMeterProvider struct{ metric.MeterProvider }

func (p hostlessMeterProvider) Meter(name string, opts ...metric.MeterOption) metric.Meter {
	return hostlessMeter{p.MeterProvider.Meter(name, opts...)}
}

type hostlessMeter struct{ metric.Meter }

// wrap returns inst wrapped by w, or nil when the meter gave no instrument.
func wrap[I any](inst I, err error, w func(I) I) (I, error) {
	if any(inst) == nil {
		return inst, err
	}
	return w(inst), err
}

func (m hostlessMeter) Int64Counter(name string, opts ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	i, err := m.Meter.Int64Counter(name, opts...)
	return wrap(i, err, func(i metric.Int64Counter) metric.Int64Counter { return hostlessInt64Counter{i} })
}

func (m hostlessMeter) Float64Counter(name string, opts ...metric.Float64CounterOption) (metric.Float64Counter, error) {
	i, err := m.Meter.Float64Counter(name, opts...)
	return wrap(i, err, func(i metric.Float64Counter) metric.Float64Counter { return hostlessFloat64Counter{i} })
}

func (m hostlessMeter) Int64UpDownCounter(name string, opts ...metric.Int64UpDownCounterOption) (metric.Int64UpDownCounter, error) {
	i, err := m.Meter.Int64UpDownCounter(name, opts...)
	return wrap(i, err, func(i metric.Int64UpDownCounter) metric.Int64UpDownCounter { return hostlessInt64UpDownCounter{i} })
}

func (m hostlessMeter) Float64UpDownCounter(name string, opts ...metric.Float64UpDownCounterOption) (metric.Float64UpDownCounter, error) {
	i, err := m.Meter.Float64UpDownCounter(name, opts...)
	return wrap(i, err, func(i metric.Float64UpDownCounter) metric.Float64UpDownCounter {
		return hostlessFloat64UpDownCounter{i}
	})
}

func (m hostlessMeter) Int64Histogram(name string, opts ...metric.Int64HistogramOption) (metric.Int64Histogram, error) {
	i, err := m.Meter.Int64Histogram(name, opts...)
	return wrap(i, err, func(i metric.Int64Histogram) metric.Int64Histogram { return hostlessInt64Histogram{i} })
}

func (m hostlessMeter) Float64Histogram(name string, opts ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	i, err := m.Meter.Float64Histogram(name, opts...)
	return wrap(i, err, func(i metric.Float64Histogram) metric.Float64Histogram { return hostlessFloat64Histogram{i} })
}

func (m hostlessMeter) Int64Gauge(name string, opts ...metric.Int64GaugeOption) (metric.Int64Gauge, error) {
	i, err := m.Meter.Int64Gauge(name, opts...)
	return wrap(i, err, func(i metric.Int64Gauge) metric.Int64Gauge { return hostlessInt64Gauge{i} })
}

func (m hostlessMeter) Float64Gauge(name string, opts ...metric.Float64GaugeOption) (metric.Float64Gauge, error) {
	i, err := m.Meter.Float64Gauge(name, opts...)
	return wrap(i, err, func(i metric.Float64Gauge) metric.Float64Gauge { return hostlessFloat64Gauge{i} })
}

type hostlessInt64Counter struct{ metric.Int64Counter }

func (c hostlessInt64Counter) Add(ctx context.Context, v int64, opts ...metric.AddOption) {
	c.Int64Counter.Add(ctx, v, withoutHost(metric.NewAddConfig(opts).Attributes()))
}

type hostlessFloat64Counter struct{ metric.Float64Counter }

func (c hostlessFloat64Counter) Add(ctx context.Context, v float64, opts ...metric.AddOption) {
	c.Float64Counter.Add(ctx, v, withoutHost(metric.NewAddConfig(opts).Attributes()))
}

type hostlessInt64UpDownCounter struct{ metric.Int64UpDownCounter }

func (c hostlessInt64UpDownCounter) Add(ctx context.Context, v int64, opts ...metric.AddOption) {
	c.Int64UpDownCounter.Add(ctx, v, withoutHost(metric.NewAddConfig(opts).Attributes()))
}

type hostlessFloat64UpDownCounter struct{ metric.Float64UpDownCounter }

func (c hostlessFloat64UpDownCounter) Add(ctx context.Context, v float64, opts ...metric.AddOption) {
	c.Float64UpDownCounter.Add(ctx, v, withoutHost(metric.NewAddConfig(opts).Attributes()))
}

type hostlessInt64Histogram struct{ metric.Int64Histogram }

func (h hostlessInt64Histogram) Record(ctx context.Context, v int64, opts ...metric.RecordOption) {
	h.Int64Histogram.Record(ctx, v, withoutHost(metric.NewRecordConfig(opts).Attributes()))
}

type hostlessFloat64Histogram struct{ metric.Float64Histogram }

func (h hostlessFloat64Histogram) Record(ctx context.Context, v float64, opts ...metric.RecordOption) {
	h.Float64Histogram.Record(ctx, v, withoutHost(metric.NewRecordConfig(opts).Attributes()))
}

type hostlessInt64Gauge struct{ metric.Int64Gauge }

func (g hostlessInt64Gauge) Record(ctx context.Context, v int64, opts ...metric.RecordOption) {
	g.Int64Gauge.Record(ctx, v, withoutHost(metric.NewRecordConfig(opts).Attributes()))
}

type hostlessFloat64Gauge struct{ metric.Float64Gauge }

func (g hostlessFloat64Gauge) Record(ctx context.Context, v float64, opts ...metric.RecordOption) {
	g.Float64Gauge.Record(ctx, v, withoutHost(metric.NewRecordConfig(opts).Attributes()))
}
