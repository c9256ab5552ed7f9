package watch

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"guestlist.dev/edge/configset"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// UpdateSpanName is the name of the span of every response the edge applies or refuses.
const UpdateSpanName = "edge config update"

const scope = "guestlist.dev/edge/watch"

// telemetry holds the client's tracer, instruments and the state its observations read.
type telemetry struct {
	tracer  trace.Tracer
	updates metric.Int64Counter
	applied []metric.AddOption
	nacked  []metric.AddOption
	// saves counts the saver's writes of the state file, by result (savedAppended, savedWhole,
	// saveFailed).
	saves                                 metric.Int64Counter
	savedAppended, savedWhole, saveFailed []metric.AddOption
	reg                                   metric.Registration

	// lastUpdate is when the configuration last changed (UnixNano; 0: unknown).
	lastUpdate atomic.Int64
	// connected is 1 while a Watch stream is open.
	connected atomic.Int64
}

// newTelemetry creates the tracer and instruments, and registers the observations of w.
func newTelemetry(w *watcher) (*telemetry, error) {
	tp, mp := w.opts.TracerProvider, w.opts.MeterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(scope)
	t := &telemetry{
		tracer:        tp.Tracer(scope),
		applied:       []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "applied")))},
		nacked:        []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "nacked")))},
		savedAppended: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "appended")))},
		savedWhole:    []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "whole")))},
		saveFailed:    []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "failed")))},
	}
	var err error
	if t.updates, err = meter.Int64Counter("guestlist.edge.config.updates", metric.WithUnit("{response}"),
		metric.WithDescription("Configuration responses received, by result (applied or nacked).")); err != nil {
		return nil, fmt.Errorf("watch: create metric: %w", err)
	}
	if t.saves, err = meter.Int64Counter("guestlist.edge.config.saves", metric.WithUnit("{save}"),
		metric.WithDescription("Writes of the saved configuration (the state file), by result: appended (the change), whole (the whole set), or failed (a restart without the control plane would serve an older configuration).")); err != nil {
		return nil, fmt.Errorf("watch: create metric: %w", err)
	}
	revision, err1 := meter.Int64ObservableGauge("guestlist.edge.config.revision",
		metric.WithDescription("The event-store position of the configuration the edge enforces (config_revision)."))
	age, err2 := meter.Float64ObservableGauge("guestlist.edge.config.age", metric.WithUnit("s"),
		metric.WithDescription("Seconds since the edge's configuration last changed (an applied response, or the saved file it started from)."))
	connected, err3 := meter.Int64ObservableGauge("guestlist.edge.config.connected",
		metric.WithDescription("1 while the edge's configuration stream to the control plane is open, else 0."))
	refused, err4 := meter.Int64ObservableGauge("guestlist.edge.config.refused_hostnames", metric.WithUnit("{hostname}"),
		metric.WithDescription("Hostnames of the configuration the edge leaves out (and refuses) because it could not prepare their configuration."))
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, fmt.Errorf("watch: create metric: %w", err)
	}
	t.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(revision, int64(w.store.Load().Position()))
		if at := t.lastUpdate.Load(); at != 0 {
			o.ObserveFloat64(age, max(time.Since(time.Unix(0, at)).Seconds(), 0))
		}
		o.ObserveInt64(connected, t.connected.Load())
		o.ObserveInt64(refused, int64(len(w.store.Load().Refused())))
		return nil
	}, revision, age, connected, refused)
	if err != nil {
		return nil, fmt.Errorf("watch: register metric callback: %w", err)
	}
	return t, nil
}

// close unregisters the observations.
func (t *telemetry) close() {
	if t.reg != nil {
		_ = t.reg.Unregister()
	}
}

// startUpdate starts the span of applying resp (the last part of a response), a child of the trace
// context the control plane sent with it, if any.
func (t *telemetry) startUpdate(ctx context.Context, resp *configv1.WatchResponse, edgeID string) (context.Context, trace.Span) {
	if tp := resp.GetTraceparent(); tp != "" {
		carrier := propagation.MapCarrier{"traceparent": tp}
		if ts := resp.GetTracestate(); ts != "" {
			carrier["tracestate"] = ts
		}
		ctx = propagation.TraceContext{}.Extract(ctx, carrier)
	}
	return t.tracer.Start(ctx, UpdateSpanName, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String("guestlist.edge_id", edgeID),
		attribute.Int64("guestlist.position", int64(resp.GetPosition())),
		attribute.Bool("guestlist.snapshot", resp.GetSnapshot()),
	))
}

// saved counts a save of the state file: what it wrote (configset.StateFile.LastSave), or that
// it failed.
func (t *telemetry) saved(kind configset.SaveKind, err error) {
	switch {
	case err != nil:
		t.saves.Add(context.Background(), 1, t.saveFailed...)
	case kind == configset.SavedChange:
		t.saves.Add(context.Background(), 1, t.savedAppended...)
	case kind == configset.SavedWhole:
		t.saves.Add(context.Background(), 1, t.savedWhole...)
	}
}

// endUpdate ends an update span, counting the update as applied (err nil) or refused.
func (t *telemetry) endUpdate(span trace.Span, err error) {
	if err != nil {
		t.updates.Add(context.Background(), 1, t.nacked...)
		span.RecordError(err)
		span.SetStatus(codes.Error, "refused")
	} else {
		t.updates.Add(context.Background(), 1, t.applied...)
		t.lastUpdate.Store(time.Now().UnixNano())
	}
	span.End()
}
