package instrument_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
	"guestlist.dev/services/eventstore/instrument"
	"guestlist.dev/services/eventstore/storetest"
)

func openBolt(t *testing.T) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// The wrapper passes the store's conformance suite: it changes no behaviour.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		w, err := instrument.Wrap(openBolt(t))
		if err != nil {
			t.Fatal(err)
		}
		return w
	})
}

func TestAppendMeasuredAndTraced(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	w, err := instrument.Wrap(openBolt(t), instrument.WithTracerProvider(tp), instrument.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}

	ctx, parent := tp.Tracer("test").Start(context.Background(), "api call")
	// As the command service does: the events carry the API call's trace context.
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	ev := func() eventstore.EventData {
		return eventstore.EventData{ID: storetest.NewEventID(), Type: "test.Thing", Data: []byte("{}"), Metadata: eventstore.Metadata{TraceParent: carrier.Get("traceparent")}}
	}
	tests := []struct {
		name     string
		expected eventstore.ExpectedRevision
		events   []eventstore.EventData
		wantErr  error
	}{
		{name: "ok/first", expected: eventstore.NoStream(), events: []eventstore.EventData{ev(), ev()}},
		{name: "ok/second", expected: eventstore.Exact(1), events: []eventstore.EventData{ev()}},
		{name: "fail/wrong expected revision", expected: eventstore.Exact(0), events: []eventstore.EventData{ev()}, wantErr: eventstore.ErrWrongExpectedRevision},
		{name: "fail/invalid event", expected: eventstore.Any(), events: []eventstore.EventData{{ID: storetest.NewEventID()}}, wantErr: eventstore.ErrInvalidEvent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.Append(ctx, "tenant-acme", tc.expected, tc.events...)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Append: %v, want %v", err, tc.wantErr)
			}
		})
	}
	parent.End()

	// Spans: one per Append, children of the caller's span.
	got := spans.GetSpans()
	var appends []tracetest.SpanStub
	for _, s := range got {
		if s.Name == instrument.SpanName {
			appends = append(appends, s)
		}
	}
	if len(appends) != len(tests) {
		t.Fatalf("%d append spans, want %d", len(appends), len(tests))
	}
	for i, s := range appends {
		if s.Parent.SpanID() != parent.SpanContext().SpanID() || s.SpanContext.TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("span %d: parent %v, want the caller's span %v", i, s.Parent.SpanID(), parent.SpanContext().SpanID())
		}
	}
	if oc := attr(appends[2].Attributes, "guestlist.outcome"); oc != instrument.OutcomeWrongExpectedRevision {
		t.Errorf("third span outcome = %q", oc)
	}

	// The stored events carry the append span's context: the projector continues from there.
	stored, err := w.ReadStream(context.Background(), "tenant-acme", eventstore.Forwards, 0, 10)
	if err != nil || len(stored) != 3 {
		t.Fatalf("read back: %d events, %v", len(stored), err)
	}
	for i, ev := range stored {
		span := appends[0]
		if i == 2 {
			span = appends[1]
		}
		want := "00-" + span.SpanContext.TraceID().String() + "-" + span.SpanContext.SpanID().String() + "-01"
		if ev.Metadata.TraceParent != want {
			t.Errorf("event %d traceparent %q, want the append span's %q", i, ev.Metadata.TraceParent, want)
		}
	}

	// Metrics: latency by outcome, events appended.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	var appended int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "guestlist.eventstore.append.duration":
				for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
					oc, _ := dp.Attributes.Value("outcome")
					counts[oc.AsString()] += dp.Count
					if dp.Sum <= 0 {
						t.Errorf("outcome %s: latency sum %v", oc.AsString(), dp.Sum)
					}
				}
			case "guestlist.eventstore.appended.events":
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					appended += dp.Value
				}
			}
		}
	}
	want := map[string]uint64{instrument.OutcomeOK: 2, instrument.OutcomeWrongExpectedRevision: 1, instrument.OutcomeInvalidEvent: 1}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("append latency count for outcome %s = %d, want %d (all: %v)", k, counts[k], v, counts)
		}
	}
	if appended != 3 {
		t.Errorf("appended events = %d, want 3", appended)
	}
}

func TestWrapNil(t *testing.T) {
	if _, err := instrument.Wrap(nil); err == nil {
		t.Fatal("Wrap(nil): no error")
	}
}

func attr(kvs []attribute.KeyValue, key string) string {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// An event's own trace context is kept when it is of another trace, and parents the append span
// when the context holds no span.
func TestAppendTraceFromMetadata(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	w, err := instrument.Wrap(openBolt(t), instrument.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	other := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	ctx, parent := tp.Tracer("test").Start(context.Background(), "api call")
	tests := []struct {
		name       string
		ctx        context.Context
		parent     string
		wantParent string // the append span's parent span id
		keep       bool   // the event keeps its traceparent
	}{
		{name: "ok/context span wins, other trace kept", ctx: ctx, parent: other, wantParent: parent.SpanContext().SpanID().String(), keep: true},
		{name: "ok/no context span: the metadata parents the span", ctx: context.Background(), parent: other, wantParent: "b7ad6b7169203331"},
		{name: "ok/no trace context: stored as given", ctx: ctx, parent: "", wantParent: parent.SpanContext().SpanID().String(), keep: false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := eventstore.EventData{ID: storetest.NewEventID(), Type: "test.Thing", Data: []byte("{}"), Metadata: eventstore.Metadata{TraceParent: tc.parent}}
			if _, err := w.Append(tc.ctx, "tenant-acme", eventstore.Any(), ev); err != nil {
				t.Fatal(err)
			}
			got := spans.GetSpans()
			s := got[len(got)-1]
			if s.Parent.SpanID().String() != tc.wantParent {
				t.Errorf("append span parent %v, want %s", s.Parent.SpanID(), tc.wantParent)
			}
			stored, err := w.ReadStream(context.Background(), "tenant-acme", eventstore.Forwards, uint64(i), 1)
			if err != nil {
				t.Fatal(err)
			}
			if tc.parent == "" && stored[0].Metadata.TraceParent != "" {
				t.Errorf("an event without trace context was stored with %q", stored[0].Metadata.TraceParent)
			}
			if kept := stored[0].Metadata.TraceParent == other; kept != tc.keep {
				t.Errorf("stored traceparent %q, kept = %v, want %v", stored[0].Metadata.TraceParent, kept, tc.keep)
			}
		})
	}
	parent.End()
}
