package distribute

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"guestlist.dev/projections/projector"
)

// SendSpanName is the name of the span of a change sent to an edge.
const SendSpanName = "distribute send"

const scope = "guestlist.dev/projections/distribute"

// WithTracerProvider sets the provider of the send spans (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) {
		if tp != nil {
			o.tp = tp
		}
	}
}

// WithMeterProvider sets the provider of the distribution's metrics (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) {
		if mp != nil {
			o.mp = mp
		}
	}
}

// telemetry holds the server's tracer and instruments.
type telemetry struct {
	tracer    trace.Tracer
	responses metric.Int64Counter
	nacks     metric.Int64Counter
	diverged  metric.Int64Counter
	stalls    metric.Int64Counter
	snapshot  []metric.AddOption
	change    []metric.AddOption
}

// newTelemetry creates the tracer and instruments of s, and registers its observations.
func newTelemetry(s *Server) (*telemetry, error) {
	tp, mp := s.opts.tp, s.opts.mp
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(scope)
	t := &telemetry{
		tracer:   tp.Tracer(scope),
		snapshot: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("kind", "snapshot")))},
		change:   []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("kind", "change")))},
	}
	var err error
	if t.responses, err = meter.Int64Counter("guestlist.distribute.responses", metric.WithUnit("{response}"),
		metric.WithDescription("Configuration responses sent to edges, by kind (snapshot or change).")); err != nil {
		return nil, fmt.Errorf("distribute: create metric: %w", err)
	}
	if t.nacks, err = meter.Int64Counter("guestlist.distribute.nacks", metric.WithUnit("{response}"),
		metric.WithDescription("Configuration responses the edges refused.")); err != nil {
		return nil, fmt.Errorf("distribute: create metric: %w", err)
	}
	if t.diverged, err = meter.Int64Counter("guestlist.distribute.history.diverged", metric.WithUnit("{hello}"),
		metric.WithDescription("Edges that resumed from a history the event store no longer has (restored from an older backup and written to since), and got a snapshot replacing it.")); err != nil {
		return nil, fmt.Errorf("distribute: create metric: %w", err)
	}
	if t.stalls, err = meter.Int64Counter("guestlist.distribute.send.stalls", metric.WithUnit("{stream}"),
		metric.WithDescription("Watch streams ended because the edge did not take a part within the send stall limit (it stopped reading).")); err != nil {
		return nil, fmt.Errorf("distribute: create metric: %w", err)
	}
	watchers, err := meter.Int64ObservableGauge("guestlist.distribute.watchers", metric.WithUnit("{stream}"),
		metric.WithDescription("Open Watch streams."))
	if err != nil {
		return nil, fmt.Errorf("distribute: create metric: %w", err)
	}
	acked, err := meter.Int64ObservableGauge("guestlist.distribute.edge.acked.position",
		metric.WithDescription("Per open Watch stream: the last configuration position the edge acknowledged."))
	if err != nil {
		return nil, fmt.Errorf("distribute: create metric: %w", err)
	}
	if _, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		ws := s.Watchers()
		o.ObserveInt64(watchers, int64(len(ws)))
		for _, w := range ws {
			o.ObserveInt64(acked, int64(w.Acked), metric.WithAttributes(attribute.String("edge_id", w.EdgeID)))
		}
		return nil
	}, watchers, acked); err != nil {
		return nil, fmt.Errorf("distribute: register metric callback: %w", err)
	}
	return t, nil
}

// startSend starts the send span of change c to edge edgeID; it returns nil when c carries no
// trace.
func (t *telemetry) startSend(ctx context.Context, c projector.Change, edgeID string) trace.Span {
	if len(c.Traces) == 0 {
		return nil
	}
	last := c.Traces[len(c.Traces)-1]
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		attribute.String("guestlist.edge_id", edgeID),
		attribute.Int64("guestlist.position", int64(c.Position)),
		attribute.Int("guestlist.upserts", len(c.Upserts)),
		attribute.Int("guestlist.removals", len(c.Removals)),
	)}
	if len(c.Traces) > 1 {
		links := make([]trace.Link, len(c.Traces)-1)
		for i, sc := range c.Traces[:len(c.Traces)-1] {
			links[i] = trace.Link{SpanContext: sc}
		}
		opts = append(opts, trace.WithLinks(links...))
	}
	_, span := t.tracer.Start(trace.ContextWithSpanContext(ctx, last), SendSpanName, opts...)
	return span
}

// traceFields returns the W3C traceparent and tracestate of span (empty for nil).
func traceFields(span trace.Span) (traceparent, tracestate string) {
	if span == nil {
		return "", ""
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpan(context.Background(), span), carrier)
	return carrier.Get("traceparent"), carrier.Get("tracestate")
}
