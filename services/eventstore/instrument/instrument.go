// Package instrument wraps any eventstore.Store with OpenTelemetry: a span and a latency
// measurement for every Append, for every backend alike.
//
// Metrics (Prometheus names; see services/telemetry):
//
//	guestlist_eventstore_append_duration_seconds{outcome}  histogram of Append latency
//	guestlist_eventstore_appended_events_total             events appended (successful appends only)
//
// outcome is one of ok, wrong_expected_revision, idempotency_conflict, invalid_event, unavailable,
// closed, canceled and error: a closed set, so the label's cardinality is bounded. Stream names
// (which hold tenant ids and hostnames) go on spans only, never on metrics.
//
// The span, "eventstore append", is a child of the span in Append's context (the API call that
// decided the change), or, when the context holds none, of the trace context in the first event's
// metadata. When the span is recorded, the wrapper then replaces the trace context of every event
// that carries one of the same trace (eventstore.Metadata.TraceParent and TraceState, which the
// command service sets from the API call) with the append span's, so that whoever applies the
// event later (the projector) continues the trace from the durable write: API call -> append ->
// apply. Events without a trace context, or of another trace, are stored as given. Backends do
// not compare metadata when they recognise a retried append, so a retry with a new span is still
// idempotent.
package instrument

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

// scope is the instrumentation scope of the wrapper's tracer and meter.
const scope = "guestlist.dev/services/eventstore/instrument"

// SpanName is the name of the span of every Append.
const SpanName = "eventstore append"

// Outcomes of an Append, the values of the outcome attribute.
const (
	OutcomeOK                    = "ok"
	OutcomeWrongExpectedRevision = "wrong_expected_revision"
	OutcomeIdempotencyConflict   = "idempotency_conflict"
	OutcomeInvalidEvent          = "invalid_event"
	OutcomeUnavailable           = "unavailable"
	OutcomeClosed                = "closed"
	OutcomeCanceled              = "canceled"
	OutcomeError                 = "error"
)

var outcomes = []string{
	OutcomeOK, OutcomeWrongExpectedRevision, OutcomeIdempotencyConflict, OutcomeInvalidEvent,
	OutcomeUnavailable, OutcomeClosed, OutcomeCanceled, OutcomeError,
}

// bucketsSeconds are the append latency histogram's boundaries: 50 µs to 10 s.
var bucketsSeconds = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Option configures Wrap.
type Option func(*options)

type options struct {
	tp trace.TracerProvider
	mp metric.MeterProvider
}

// WithTracerProvider sets the provider of the Append spans (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) {
		if tp != nil {
			o.tp = tp
		}
	}
}

// WithMeterProvider sets the provider of the metrics (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) {
		if mp != nil {
			o.mp = mp
		}
	}
}

// Store is an eventstore.Store that measures and traces the Store it wraps. Every method other
// than Append is passed through unchanged.
type Store struct {
	eventstore.Store

	tracer   trace.Tracer
	latency  metric.Float64Histogram
	appended metric.Int64Counter
	// byOutcome holds the pre-built attribute option of each outcome.
	byOutcome map[string][]metric.RecordOption
}

var _ eventstore.Store = (*Store)(nil)

// Wrap returns s measured and traced. It fails only if an instrument cannot be created.
func Wrap(s eventstore.Store, opts ...Option) (*Store, error) {
	if s == nil {
		return nil, errors.New("instrument: nil event store")
	}
	o := options{tp: otel.GetTracerProvider(), mp: otel.GetMeterProvider()}
	for _, opt := range opts {
		opt(&o)
	}
	meter := o.mp.Meter(scope)
	latency, err := meter.Float64Histogram("guestlist.eventstore.append.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Latency of event store appends (durable writes), by outcome."),
		metric.WithExplicitBucketBoundaries(bucketsSeconds...))
	if err != nil {
		return nil, fmt.Errorf("instrument: create histogram: %w", err)
	}
	appended, err := meter.Int64Counter("guestlist.eventstore.appended.events",
		metric.WithUnit("{event}"),
		metric.WithDescription("Events appended to the event store."))
	if err != nil {
		return nil, fmt.Errorf("instrument: create counter: %w", err)
	}
	w := &Store{Store: s, tracer: o.tp.Tracer(scope), latency: latency, appended: appended, byOutcome: map[string][]metric.RecordOption{}}
	for _, oc := range outcomes {
		w.byOutcome[oc] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", oc)))}
	}
	return w, nil
}

// Append implements eventstore.Store: it appends through the wrapped store inside a span and
// records the latency.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if !trace.SpanContextFromContext(ctx).IsValid() && len(events) > 0 && events[0].Metadata.TraceParent != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{
			"traceparent": events[0].Metadata.TraceParent, "tracestate": events[0].Metadata.TraceState,
		})
	}
	ctx, span := s.tracer.Start(ctx, SpanName, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("guestlist.stream", stream),
			attribute.Int("guestlist.events", len(events)),
			attribute.String("guestlist.expected_revision", expected.String()),
		))
	defer span.End()
	if span.IsRecording() {
		events = stamp(span.SpanContext(), events)
	}
	start := time.Now()
	res, err := s.Store.Append(ctx, stream, expected, events...)
	elapsed := time.Since(start).Seconds()
	oc := outcome(err)
	s.latency.Record(ctx, elapsed, s.byOutcome[oc]...)
	span.SetAttributes(attribute.String("guestlist.outcome", oc))
	if err != nil {
		span.RecordError(err)
		if oc != OutcomeWrongExpectedRevision && oc != OutcomeIdempotencyConflict {
			span.SetStatus(codes.Error, oc)
		}
		return res, err
	}
	s.appended.Add(ctx, int64(len(events)))
	span.SetAttributes(attribute.Int64("guestlist.position", int64(res.Position)), attribute.Int64("guestlist.revision", int64(res.NextExpectedRevision)))
	return res, nil
}

// stamp returns events with sc as the trace context of each event whose trace context is of sc's
// trace; it copies events rather than change the caller's slice.
func stamp(sc trace.SpanContext, events []eventstore.EventData) []eventstore.EventData {
	if !sc.IsValid() {
		return events
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), carrier)
	tp, ts := carrier.Get("traceparent"), carrier.Get("tracestate")
	out := make([]eventstore.EventData, len(events))
	for i, ev := range events {
		if ev.Metadata.TraceParent != "" && sameTrace(ev.Metadata.TraceParent, sc.TraceID()) {
			ev.Metadata.TraceParent, ev.Metadata.TraceState = tp, ts
		}
		out[i] = ev
	}
	return out
}

// sameTrace reports whether W3C traceparent tp is of trace id.
func sameTrace(tp string, id trace.TraceID) bool {
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp}))
	return sc.IsValid() && sc.TraceID() == id
}

// outcome classifies an Append error.
func outcome(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, eventstore.ErrWrongExpectedRevision):
		return OutcomeWrongExpectedRevision
	case errors.Is(err, eventstore.ErrIdempotencyConflict):
		return OutcomeIdempotencyConflict
	case errors.Is(err, eventstore.ErrInvalidEvent):
		return OutcomeInvalidEvent
	case errors.Is(err, eventstore.ErrUnavailable):
		return OutcomeUnavailable
	case errors.Is(err, eventstore.ErrClosed):
		return OutcomeClosed
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return OutcomeCanceled
	}
	return OutcomeError
}
