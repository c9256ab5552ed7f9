package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// clearMetricEnv unsets every variable that could switch metric export on, for the duration of
// the test.
func clearMetricEnv(t *testing.T) {
	t.Helper()
	for _, k := range append(metricExporterEnv, "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED") {
		t.Setenv(k, "")
	}
}

func TestMetricReader(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		wantPush bool
		wantErr  bool
	}{
		{name: "ok/no environment: no push reader"},
		{name: "ok/none", env: map[string]string{"OTEL_METRICS_EXPORTER": "none"}},
		{name: "ok/console", env: map[string]string{"OTEL_METRICS_EXPORTER": "console"}, wantPush: true},
		{name: "ok/otlp endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, wantPush: true},
		{name: "fail/unknown exporter", env: map[string]string{"OTEL_METRICS_EXPORTER": "carrier-pigeon"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearMetricEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if got := MetricExportConfigured(); got != (len(tc.env) > 0) {
				t.Errorf("MetricExportConfigured() = %v with %v", got, tc.env)
			}
			r, err := metricReader(context.Background())
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				if _, err := SetupMetrics(context.Background(), "guestlist-test", "test"); err == nil {
					t.Fatal("SetupMetrics: no error")
				}
				return
			}
			if err != nil {
				t.Fatalf("metricReader: %v", err)
			}
			if (r != nil) != tc.wantPush {
				t.Fatalf("metricReader = %T, want a push reader: %v", r, tc.wantPush)
			}
			if r != nil {
				_ = r.Shutdown(context.Background())
			}
		})
	}
}

func TestSetupMetricsServesPrometheus(t *testing.T) {
	clearMetricEnv(t)
	prev := otel.GetMeterProvider()
	t.Cleanup(func() { otel.SetMeterProvider(prev) })

	m, err := SetupMetrics(context.Background(), "guestlist-test", "v0.0.0-test")
	if err != nil {
		t.Fatalf("SetupMetrics: %v", err)
	}
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	if otel.GetMeterProvider() != m.Provider {
		t.Error("SetupMetrics did not install the provider globally")
	}

	meter := m.Provider.Meter("guestlist.dev/test")
	c, err := meter.Int64Counter("guestlist.test.things", metric.WithUnit("{thing}"), metric.WithDescription("Things."))
	if err != nil {
		t.Fatal(err)
	}
	h, err := meter.Float64Histogram("guestlist.test.wait", metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(HistogramSecondsBuckets...))
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 3, metric.WithAttributes(attribute.String("kind", "a")))
	h.Record(context.Background(), 0.003)

	srv := httptest.NewServer(m.Handler)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		`guestlist_test_things_total{kind="a",otel_scope_name="guestlist.dev/test"`,
		`guestlist_test_wait_seconds_bucket{otel_scope_name="guestlist.dev/test",otel_scope_schema_url="",otel_scope_version="",le="0.005"} 1`,
		`guestlist_test_wait_seconds_bucket{otel_scope_name="guestlist.dev/test",otel_scope_schema_url="",otel_scope_version="",le="0.0025"} 0`,
		`target_info{`,
		`service_name="guestlist-test"`,
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(text, "} 3\n") {
		t.Errorf("/metrics lacks the counter's value 3:\n%s", grepLines(text, "guestlist_test_things"))
	}
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Two processes of one service (two edges) must not look alike where their metrics meet: an
// extra service.instance.id tells them apart, and OTEL_RESOURCE_ATTRIBUTES still wins.
func TestNewMetricsInstanceID(t *testing.T) {
	scrape := func(t *testing.T, m *Metrics) string {
		t.Helper()
		t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
		rec := httptest.NewRecorder()
		m.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		return grepLines(rec.Body.String(), "target_info{")
	}
	tests := []struct {
		name, env, want string
	}{
		{name: "ok/extra attribute", want: `service_instance_id="edge-1"`},
		{name: "ok/environment wins", env: "service.instance.id=from-env", want: `service_instance_id="from-env"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearMetricEnv(t)
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", tc.env)
			m, err := NewMetrics(context.Background(), "guestlist-edge", "test", Instance("edge-1")...)
			if err != nil {
				t.Fatalf("NewMetrics: %v", err)
			}
			if got := scrape(t, m); !strings.Contains(got, tc.want) || !strings.Contains(got, `service_name="guestlist-edge"`) {
				t.Errorf("target_info = %s, want %s", got, tc.want)
			}
		})
	}
	t.Run("ok/none without extra", func(t *testing.T) {
		clearMetricEnv(t)
		t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
		m, err := NewMetrics(context.Background(), "guestlist-api", "test", Instance("")...)
		if err != nil {
			t.Fatalf("NewMetrics: %v", err)
		}
		if got := scrape(t, m); strings.Contains(got, "service_instance_id") {
			t.Errorf("target_info = %s, want no service_instance_id", got)
		}
	})
}
