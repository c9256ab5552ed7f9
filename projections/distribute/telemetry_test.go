package distribute

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/projector"
	pt "guestlist.dev/projections/projector/projectortest"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
)

func TestChangesCarryTheTraceToTheEdge(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := newEnv(t, envOpts{
		projector: []projector.Option{projector.WithTracerProvider(tp), projector.WithMeterProvider(mp)},
		server:    []Option{WithTracerProvider(tp), WithMeterProvider(mp)},
	})
	ctx := context.Background()
	stream := fold.TenantStream("acme")
	res, err := pt.Write(ctx, e.store, pt.Append{Stream: stream, Events: []proto.Message{&eventsv1.TenantCreated{TenantId: "acme"}}})
	if err != nil {
		t.Fatal(err)
	}
	e.waitProjector(uint64(res.Position))
	ed := e.watch("edge-1", 0, false)
	ed.waitResponses(1) // the snapshot

	// A traced change, as the command service writes it.
	apiCtx, api := tp.Tracer("test").Start(ctx, "api call")
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(apiCtx, carrier)
	data, _ := proto.Marshal(&eventsv1.HostnameCreated{Hostname: "pay.example.com", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, OriginUrl: "http://o"})
	if _, err := e.store.Append(apiCtx, stream, eventstore.Any(), eventstore.EventData{ID: pt.NewID(), Type: "guestlist.events.v1.HostnameCreated", Data: data,
		Metadata: eventstore.Metadata{TraceParent: carrier.Get("traceparent")}}); err != nil {
		t.Fatal(err)
	}
	api.End()
	rs := ed.waitResponses(2)

	snap, change := rs[0], rs[1]
	if snap.GetTraceparent() != "" {
		t.Errorf("snapshot carries traceparent %q, want none", snap.GetTraceparent())
	}
	got := propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": change.GetTraceparent()})
	var send, apply tracetest.SpanStub
	deadline := time.Now().Add(5 * time.Second)
	for send.Name == "" && time.Now().Before(deadline) {
		for _, s := range spans.GetSpans() {
			switch s.Name {
			case SendSpanName:
				send = s
			case projector.ApplySpanName:
				apply = s
			}
		}
		time.Sleep(time.Millisecond) // the send span ends just after the response went out
	}
	if send.Name == "" || apply.Name == "" {
		t.Fatalf("spans: send %q, apply %q", send.Name, apply.Name)
	}
	sc := trace.SpanContextFromContext(got)
	if sc.TraceID() != api.SpanContext().TraceID() || sc.SpanID() != send.SpanContext.SpanID() {
		t.Errorf("response traceparent %q: want trace %v span %v (the send span)", change.GetTraceparent(), api.SpanContext().TraceID(), send.SpanContext.SpanID())
	}
	if send.Parent.SpanID() != apply.SpanContext.SpanID() || apply.Parent.SpanID() != api.SpanContext().SpanID() {
		t.Errorf("chain: send's parent %v (want apply %v); apply's parent %v (want api %v)", send.Parent.SpanID(), apply.SpanContext.SpanID(), apply.Parent.SpanID(), api.SpanContext().SpanID())
	}
	if !hasAttr(send.Attributes, attribute.String("guestlist.edge_id", "edge-1")) {
		t.Errorf("send span attributes %v lack the edge id", send.Attributes)
	}

	// Metrics: one watcher that acknowledged the change; a snapshot and a change sent.
	var rm metricdata.ResourceMetrics
	deadline = time.Now().Add(5 * time.Second)
	for {
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		m := flatten(rm)
		if m["guestlist.distribute.edge.acked.position|edge_id=edge-1"] == float64(change.GetPosition()) {
			if m["guestlist.distribute.watchers|"] != 1 || m["guestlist.distribute.responses|kind=snapshot"] != 1 || m["guestlist.distribute.responses|kind=change"] != 1 {
				t.Errorf("metrics: %v", m)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acked position never reached %d: %v", change.GetPosition(), m)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hasAttr(kvs []attribute.KeyValue, want attribute.KeyValue) bool {
	for _, kv := range kvs {
		if kv == want {
			return true
		}
	}
	return false
}

// flatten maps "name|k=v,..." to the value of each int64 data point.
func flatten(rm metricdata.ResourceMetrics) map[string]float64 {
	out := map[string]float64{}
	key := func(name string, set attribute.Set) string {
		k := name + "|"
		for i, kv := range set.ToSlice() {
			if i > 0 {
				k += ","
			}
			k += string(kv.Key) + "=" + kv.Value.Emit()
		}
		return k
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out[key(m.Name, dp.Attributes)] = float64(dp.Value)
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					out[key(m.Name, dp.Attributes)] = float64(dp.Value)
				}
			}
		}
	}
	return out
}
