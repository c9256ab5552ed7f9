package projector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"guestlist.dev/services/eventstore"
)

// ApplySpanName is the name of the span of an applied event.
const ApplySpanName = "projector apply"

// LagCountLimit bounds the count of guestlist_projector_lag_events: a larger backlog is reported
// as LagCountLimit.
const LagCountLimit = 10000

// scope is the instrumentation scope of the projector's tracer and meter.
const scope = "guestlist.dev/projections/projector"

// lagReadTimeout bounds the store read of one lag observation.
const lagReadTimeout = 2 * time.Second

// commitDelayBuckets are the boundaries, in seconds, of the commit delay histogram.
var commitDelayBuckets = []float64{
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
}

// WithTracerProvider sets the provider of the apply spans (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) {
		if tp != nil {
			o.tp = tp
		}
	}
}

// WithMeterProvider sets the provider of the projector's metrics (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) {
		if mp != nil {
			o.mp = mp
		}
	}
}

// telemetry holds the projector's tracer and instruments.
type telemetry struct {
	tracer      trace.Tracer
	commitDelay metric.Float64Histogram
	reg         metric.Registration
}

// newTelemetry creates the tracer and the instruments, and registers the observations of p.
func newTelemetry(p *Projector) (*telemetry, error) {
	tp, mp := p.opts.tp, p.opts.mp
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(scope)
	t := &telemetry{tracer: tp.Tracer(scope)}
	var err error
	if t.commitDelay, err = meter.Float64Histogram("guestlist.projector.commit.delay", metric.WithUnit("s"),
		metric.WithDescription("Per batch: from the store writing the batch's newest event to the read model committing it."),
		metric.WithExplicitBucketBoundaries(commitDelayBuckets...)); err != nil {
		return nil, fmt.Errorf("projector: create metric: %w", err)
	}
	applied, err1 := meter.Int64ObservableCounter("guestlist.projector.applied.events", metric.WithUnit("{event}"),
		metric.WithDescription("Events applied to the read model since the process started."))
	batches, err2 := meter.Int64ObservableCounter("guestlist.projector.batches", metric.WithUnit("{batch}"),
		metric.WithDescription("Read model transactions committed since the process started."))
	position, err3 := meter.Int64ObservableGauge("guestlist.projector.position",
		metric.WithDescription("The checkpoint: event-store position of the last applied event."))
	lagEvents, err4 := meter.Int64ObservableGauge("guestlist.projector.lag.events", metric.WithUnit("{event}"),
		metric.WithDescription(fmt.Sprintf("Tenant events in the store not yet applied (counted, at most %d).", LagCountLimit)))
	lagSeconds, err5 := meter.Float64ObservableGauge("guestlist.projector.lag", metric.WithUnit("s"),
		metric.WithDescription("0 when caught up; else now minus the store time of the oldest event not yet applied."))
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return nil, fmt.Errorf("projector: create metric: %w", err)
	}
	t.reg, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s := p.Stats()
		o.ObserveInt64(applied, int64(s.Events))
		o.ObserveInt64(batches, int64(s.Batches))
		o.ObserveInt64(position, int64(s.Position))
		n, oldest, err := p.lag(ctx)
		if err != nil {
			return nil // the store is not answering: no lag observation rather than a wrong one
		}
		o.ObserveInt64(lagEvents, int64(n))
		lag := 0.0
		if n > 0 {
			lag = max(time.Since(oldest).Seconds(), 0)
		}
		o.ObserveFloat64(lagSeconds, lag)
		return nil
	}, applied, batches, position, lagEvents, lagSeconds)
	if err != nil {
		return nil, fmt.Errorf("projector: register metric callback: %w", err)
	}
	return t, nil
}

// close unregisters the observations.
func (t *telemetry) close() {
	if t != nil && t.reg != nil {
		_ = t.reg.Unregister()
	}
}

// lag counts the tenant events after the checkpoint (at most LagCountLimit) and returns the store
// time of the oldest of them.
func (p *Projector) lag(ctx context.Context) (n int, oldest time.Time, err error) {
	ctx, cancel := context.WithTimeout(ctx, lagReadTimeout)
	defer cancel()
	evs, err := p.store.ReadAll(ctx, eventstore.Position(p.Position()), LagCountLimit, filter)
	if err != nil || len(evs) == 0 {
		return 0, time.Time{}, err
	}
	return len(evs), evs[0].Time, nil
}

// startApply starts the apply span of ev, a child of the trace context in its metadata; it
// returns nil when ev carries none.
func (t *telemetry) startApply(ev eventstore.RecordedEvent, tenantID string) trace.Span {
	if ev.Metadata.TraceParent == "" {
		return nil
	}
	carrier := propagation.MapCarrier{"traceparent": ev.Metadata.TraceParent}
	if ev.Metadata.TraceState != "" {
		carrier["tracestate"] = ev.Metadata.TraceState
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), carrier)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	_, span := t.tracer.Start(ctx, ApplySpanName, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String("guestlist.tenant_id", tenantID),
		attribute.String("guestlist.event.type", ev.Type),
		attribute.String("guestlist.event.id", ev.ID),
		attribute.Int64("guestlist.position", int64(ev.Position)),
		attribute.Int64("guestlist.revision", int64(ev.Revision)),
	))
	return span
}

// endSpans ends the apply spans of a batch, marking them failed when err is set.
func endSpans(spans []trace.Span, err error) {
	for _, s := range spans {
		if err != nil {
			s.RecordError(err)
			s.SetStatus(codes.Error, "not applied")
		}
		s.End()
	}
}
