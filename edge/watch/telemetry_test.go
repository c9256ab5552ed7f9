package watch

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

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestUpdateSpansAndMetrics: a snapshot, a traced change (its span continues the control plane's
// trace) and a refused change; the revision, age, connection and update counters follow.
func TestUpdateSpansAndMetrics(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	// The control plane's span that sent the change.
	_, sender := tp.Tracer("test").Start(context.Background(), "distribute send")
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpan(context.Background(), sender), carrier)
	sender.End()

	acks := make(chan *configv1.WatchRequest, 10)
	release := make(chan struct{})
	script := func(s *session) error {
		if s.hello.GetResumePosition() != 0 {
			<-s.stream.Context().Done()
			return nil
		}
		s.send(&configv1.WatchResponse{Position: 2, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 2, ca, "http://127.0.0.1:1")}})
		push(acks, s.recv())
		s.send(&configv1.WatchResponse{Position: 5, Upserts: []*configv1.HostnameConfig{hostCfg("b.example.com", 5, ca, "http://127.0.0.1:1")},
			Traceparent: carrier.Get("traceparent"), Tracestate: carrier.Get("tracestate")})
		push(acks, s.recv())
		<-release
		bad := hostCfg("c.example.com", 8, ca, "http://127.0.0.1:1") // a version beyond the position
		s.send(&configv1.WatchResponse{Position: 7, Upserts: []*configv1.HostnameConfig{bad}})
		push(acks, s.recv())
		<-s.stream.Context().Done()
		return nil
	}
	_, addr := startServer(t, script)
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{EdgeID: "edge-7", Logger: quietLogger(t), TracerProvider: tp, MeterProvider: mp,
		Backoff: Backoff{Min: time.Hour, Max: time.Hour}})
	<-acks
	<-acks

	var update tracetest.SpanStub
	for _, s := range spans.GetSpans() {
		if s.Name == UpdateSpanName && s.Parent.IsValid() {
			update = s
		}
	}
	if update.Name == "" {
		t.Fatalf("no %q span with a parent among %d spans", UpdateSpanName, len(spans.GetSpans()))
	}
	if update.Parent.SpanID() != sender.SpanContext().SpanID() || update.SpanContext.TraceID() != sender.SpanContext().TraceID() || !update.Parent.IsRemote() {
		t.Errorf("update span parent %v (remote %v) trace %v; want the sender's %v in trace %v",
			update.Parent.SpanID(), update.Parent.IsRemote(), update.SpanContext.TraceID(), sender.SpanContext().SpanID(), sender.SpanContext().TraceID())
	}
	if !hasKV(update.Attributes, attribute.Int64("guestlist.position", 5)) || !hasKV(update.Attributes, attribute.String("guestlist.edge_id", "edge-7")) {
		t.Errorf("update span attributes %v", update.Attributes)
	}

	m := collect(t, reader)
	if m["guestlist.edge.config.revision"] != 5 || m["guestlist.edge.config.connected"] != 1 || m["guestlist.edge.config.updates|result=applied"] != 2 {
		t.Errorf("after two applied responses: %v", m)
	}
	if age, ok := m["guestlist.edge.config.age"]; !ok || age < 0 || age > 5 {
		t.Errorf("config age = %v (present %v), want a few seconds at most", age, ok)
	}

	close(release)
	if nack := <-acks; nack.GetError() == "" {
		t.Fatalf("the bad response was not refused: %v", nack)
	}
	waitFor(t, "the refusal to be counted and the stream to close", func() bool {
		m = collect(t, reader)
		return m["guestlist.edge.config.updates|result=nacked"] == 1 && m["guestlist.edge.config.connected"] == 0
	})
	if m["guestlist.edge.config.revision"] != 5 {
		t.Errorf("revision after the refusal = %v, want 5 (the last good configuration)", m["guestlist.edge.config.revision"])
	}
}

func hasKV(kvs []attribute.KeyValue, want attribute.KeyValue) bool {
	for _, kv := range kvs {
		if kv == want {
			return true
		}
	}
	return false
}

// collect maps "name" or "name|k=v" to each data point's value.
func collect(t *testing.T, r sdkmetric.Reader) map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	key := func(name string, set attribute.Set) string {
		for _, kv := range set.ToSlice() {
			name += "|" + string(kv.Key) + "=" + kv.Value.Emit()
		}
		return name
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
			case metricdata.Gauge[float64]:
				for _, dp := range d.DataPoints {
					out[key(m.Name, dp.Attributes)] = dp.Value
				}
			}
		}
	}
	return out
}
