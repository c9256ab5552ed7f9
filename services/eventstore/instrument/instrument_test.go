package instrument_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"go.opentelemetry.io/otel/attribute"
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
	ev := func() eventstore.EventData {
		return eventstore.EventData{ID: storetest.NewEventID(), Type: "test.Thing", Data: []byte("{}")}
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
