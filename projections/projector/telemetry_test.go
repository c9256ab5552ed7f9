package projector

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	pt "guestlist.dev/projections/projector/projectortest"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
)

// appendTraced appends m to stream with the trace context of ctx in the metadata, as the command
// service does.
func appendTraced(t *testing.T, ctx context.Context, store eventstore.Store, stream string, m proto.Message) eventstore.AppendResult {
	t.Helper()
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	data, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	res, err := store.Append(ctx, stream, eventstore.Any(), eventstore.EventData{
		ID: pt.NewID(), Type: fold.TypeOf(m), Data: data,
		Metadata: eventstore.Metadata{Actor: "admin", TraceParent: carrier.Get("traceparent"), TraceState: carrier.Get("tracestate")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestApplySpansFollowTheEventsTrace(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	p := openProjector(t, dir, store, WithTracerProvider(tp), WithMeterProvider(sdkmetric.NewMeterProvider()))
	defer p.Close()
	stop := running(p)
	defer stop()

	stream := fold.TenantStream("acme")
	// An event without a trace context: applied, no span.
	if _, err := pt.Write(ctx, store, pt.Append{Stream: stream, Events: []proto.Message{&eventsv1.TenantCreated{TenantId: "acme"}}}); err != nil {
		t.Fatal(err)
	}
	apiCtx, api := tp.Tracer("test").Start(ctx, "api call")
	res := appendTraced(t, apiCtx, store, stream, &eventsv1.HostnameCreated{Hostname: "pay.example.com", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, OriginUrl: "http://o"})
	api.End()

	cs, err := p.Changes(ctx, uint64(res.Position)-1, 1)
	if err != nil || len(cs) != 1 {
		t.Fatalf("changes: %+v, %v", cs, err)
	}
	if len(cs[0].Traces) != 1 {
		t.Fatalf("change has %d traces, want 1", len(cs[0].Traces))
	}
	sc := cs[0].Traces[0]
	if sc.TraceID() != api.SpanContext().TraceID() {
		t.Errorf("change trace %v, want the API call's %v", sc.TraceID(), api.SpanContext().TraceID())
	}
	var apply []tracetest.SpanStub
	for _, s := range spans.GetSpans() {
		if s.Name == ApplySpanName {
			apply = append(apply, s)
		}
	}
	if len(apply) != 1 {
		t.Fatalf("%d apply spans, want 1 (the untraced event gets none)", len(apply))
	}
	if apply[0].Parent.SpanID() != api.SpanContext().SpanID() || apply[0].SpanContext.SpanID() != sc.SpanID() {
		t.Errorf("apply span %v has parent %v; want parent %v and to be the change's %v", apply[0].SpanContext.SpanID(), apply[0].Parent.SpanID(), api.SpanContext().SpanID(), sc.SpanID())
	}
	if !apply[0].Parent.IsRemote() {
		t.Error("apply span's parent is not marked remote (it comes from the event's metadata)")
	}
}

// metricValues collects the projector's metrics: name -> value (the single data point's).
func metricValues(t *testing.T, r sdkmetric.Reader) map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out[m.Name] += float64(dp.Value)
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					out[m.Name] = float64(dp.Value)
				}
			case metricdata.Gauge[float64]:
				for _, dp := range d.DataPoints {
					out[m.Name] = dp.Value
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					out[m.Name+".count"] += float64(dp.Count)
				}
			}
		}
	}
	return out
}

func TestLagMetrics(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	reader := sdkmetric.NewManualReader()
	p := openProjector(t, dir, store, WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	defer p.Close()

	stream := fold.TenantStream("acme")
	ms := []proto.Message{&eventsv1.TenantCreated{TenantId: "acme"}}
	for _, h := range []string{"a.example.com", "b.example.com", "c.example.com"} {
		ms = append(ms, &eventsv1.HostnameCreated{Hostname: h, State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, OriginUrl: "http://o"})
	}
	res, err := pt.Write(ctx, store, pt.Append{Stream: stream, Events: ms})
	if err != nil {
		t.Fatal(err)
	}
	// Events of other streams are not the projector's: they are no lag.
	if _, err := store.Append(ctx, "hostname-z.example.com", eventstore.Any(), eventstore.EventData{ID: pt.NewID(), Type: "guestlist.events.v1.HostnameReserved", Data: []byte{}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // so that the lag in seconds is visibly above 0

	tests := []struct {
		name string
		run  bool
		want map[string]float64
		lag  bool // lag in seconds > 0
	}{
		{name: "ok/behind before running", want: map[string]float64{
			"guestlist.projector.lag.events": 4, "guestlist.projector.applied.events": 0, "guestlist.projector.position": 0,
		}, lag: true},
		{name: "ok/caught up", run: true, want: map[string]float64{
			"guestlist.projector.lag.events": 0, "guestlist.projector.lag": 0, "guestlist.projector.applied.events": 4,
			"guestlist.projector.position": float64(res.Position), "guestlist.projector.batches": 1, "guestlist.projector.commit.delay.count": 1,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.run {
				stop := running(p)
				defer stop()
				if err := p.WaitFor(ctx, uint64(res.Position)); err != nil {
					t.Fatal(err)
				}
			}
			got := metricValues(t, reader)
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
			if tc.lag && got["guestlist.projector.lag"] < 0.02 {
				t.Errorf("lag = %vs, want at least 0.02", got["guestlist.projector.lag"])
			}
		})
	}
}
