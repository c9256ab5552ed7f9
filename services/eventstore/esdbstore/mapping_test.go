package esdbstore

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/services/eventstore"
)

func TestPositionOf(t *testing.T) {
	tests := []struct {
		name string
		in   esdb.Position
		want eventstore.Position
		err  error
	}{
		{"ok/commit equals prepare", esdb.Position{Commit: 4242, Prepare: 4242}, 4242, nil},
		{"ok/large", esdb.Position{Commit: math.MaxInt64, Prepare: math.MaxInt64}, math.MaxInt64, nil},
		{"fail/explicit transaction", esdb.Position{Commit: 5000, Prepare: 4800}, 0, errSplitPosition},
		{"fail/checkpoint-shaped", esdb.Position{Commit: 5000, Prepare: 0}, 0, errSplitPosition},
		{"fail/no position (server before 22.10)", esdb.Position{Commit: math.MaxUint64, Prepare: math.MaxUint64}, 0, errNoPosition},
		{"fail/zero", esdb.Position{}, 0, errNoPosition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := positionOf(tt.in)
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("positionOf(%+v) = %d, %v; want %d, %v", tt.in, got, err, tt.want, tt.err)
			}
		})
	}
}

func TestAllPosition(t *testing.T) {
	if got, ok := allPosition(eventstore.Start).(esdb.Start); !ok {
		t.Errorf("allPosition(Start) = %#v, want esdb.Start", got)
	}
	if got := allPosition(777); got != (esdb.Position{Commit: 777, Prepare: 777}) {
		t.Errorf("allPosition(777) = %#v, want {777 777}", got)
	}
	// The $all order: commit first, then prepare; a checkpoint (c, 0) comes before the event at c.
	cases := []struct {
		a, b esdb.Position
		want bool
	}{
		{esdb.Position{Commit: 10, Prepare: 10}, esdb.Position{Commit: 9, Prepare: 9}, true},
		{esdb.Position{Commit: 10, Prepare: 10}, esdb.Position{Commit: 10, Prepare: 0}, true},
		{esdb.Position{Commit: 10, Prepare: 0}, esdb.Position{Commit: 10, Prepare: 10}, false},
		{esdb.Position{Commit: 10, Prepare: 10}, esdb.Position{Commit: 10, Prepare: 10}, false},
	}
	for _, c := range cases {
		if got := after(c.a, c.b); got != c.want {
			t.Errorf("after(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestExpectedRevision(t *testing.T) {
	tests := []struct {
		name string
		in   eventstore.ExpectedRevision
		want esdb.ExpectedRevision
	}{
		{"ok/any", eventstore.Any(), esdb.Any{}},
		{"ok/no stream", eventstore.NoStream(), esdb.NoStream{}},
		{"ok/stream exists", eventstore.StreamExists(), esdb.StreamExists{}},
		{"ok/exact 0", eventstore.Exact(0), esdb.Revision(0)},
		{"ok/exact", eventstore.Exact(41), esdb.Revision(41)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := expectedRevision(tt.in); got != tt.want {
				t.Fatalf("expectedRevision(%v) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
	if got := concreteRevision(0, false); got != (esdb.NoStream{}) {
		t.Errorf("concreteRevision(no stream) = %#v, want NoStream", got)
	}
	if got := concreteRevision(7, true); got != esdb.Revision(7) {
		t.Errorf("concreteRevision(7) = %#v, want Revision(7)", got)
	}
}

func TestPlanFilter(t *testing.T) {
	tests := []struct {
		name       string
		in         eventstore.Filter
		serverType esdb.FilterType
		prefixes   []string
		regex      string
		pass, drop [][2]string // stream, type
	}{
		{
			name: "ok/both kinds: streams on the server, types here", serverType: esdb.StreamFilterType, prefixes: []string{"tenant-"},
			in:   eventstore.Filter{StreamPrefixes: []string{"tenant-"}, EventTypePrefixes: []string{"guestlist.events.v1.Tenant"}},
			pass: [][2]string{{"tenant-a", "guestlist.events.v1.TenantCreated"}},
			drop: [][2]string{{"tenant-a", "guestlist.events.v1.HostnameCreated"}, {"hostname-x", "guestlist.events.v1.TenantCreated"}},
		},
		{
			name: "ok/types only", serverType: esdb.EventFilterType, prefixes: []string{"a.", "b."},
			in:   eventstore.Filter{EventTypePrefixes: []string{"a.", "b."}},
			pass: [][2]string{{"s", "a.X"}, {"t", "b.Y"}},
			drop: [][2]string{{"s", "c.Z"}, {"$stats", "a.X"}},
		},
		{
			name: "ok/empty: drop system events on the server", serverType: esdb.EventFilterType, regex: `^[^\$].*`,
			pass: [][2]string{{"tenant-a", "guestlist.events.v1.TenantCreated"}, {"platform", "x"}},
			drop: [][2]string{{"$settings", "$settings"}, {"tenant-a", "$>"}, {"$ce-tenant", "guestlist.events.v1.TenantCreated"}},
		},
		{
			name: "fail/system streams never pass, even when a prefix matches", serverType: esdb.StreamFilterType, prefixes: []string{"$"},
			in:   eventstore.Filter{StreamPrefixes: []string{"$"}},
			drop: [][2]string{{"$stats-1", "$statsCollected"}, {"$users", "x"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := planFilter(tt.in)
			if p.server == nil || p.server.Type != tt.serverType || p.server.Regex != tt.regex || strings.Join(p.server.Prefixes, ",") != strings.Join(tt.prefixes, ",") {
				t.Fatalf("server filter = %+v, want type %v prefixes %v regex %q", p.server, tt.serverType, tt.prefixes, tt.regex)
			}
			for _, e := range tt.pass {
				if !p.match(e[0], e[1]) {
					t.Errorf("%s/%s dropped, want passed", e[0], e[1])
				}
			}
			for _, e := range tt.drop {
				if p.match(e[0], e[1]) {
					t.Errorf("%s/%s passed, want dropped", e[0], e[1])
				}
			}
		})
	}
	// The plan owns its prefixes.
	f := eventstore.Filter{StreamPrefixes: []string{"a"}}
	p := planFilter(f)
	f.StreamPrefixes[0] = "b"
	if p.server.Prefixes[0] != "a" {
		t.Error("planFilter shares the caller's prefix slice")
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	full := eventstore.Metadata{
		Actor: "token:acme/ci", RequestID: "req-1", TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		TraceState: "congo=t61rcWkgMzE", CorrelationID: "corr-<1>&", CausationID: "cause-é",
	}
	b := encodeMetadata(full)
	want := `{"actor":"token:acme/ci","requestId":"req-1","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"congo=t61rcWkgMzE","$correlationId":"corr-<1>&","$causationId":"cause-é"}`
	if string(b) != want {
		t.Errorf("encodeMetadata = %s\nwant %s", b, want)
	}
	for _, m := range []eventstore.Metadata{full, {}, {Actor: "admin"}, {CausationID: "x"}} {
		got, err := decodeMetadata(encodeMetadata(m))
		if err != nil || got != m {
			t.Errorf("decode(encode(%+v)) = %+v, %v", m, got, err)
		}
	}
	if string(encodeMetadata(eventstore.Metadata{})) != "{}" {
		t.Errorf("empty metadata encodes as %s, want {}", encodeMetadata(eventstore.Metadata{}))
	}
}

func TestDecodeMetadata(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want eventstore.Metadata
		err  bool
	}{
		{name: "ok/empty (another program's event)", in: "", want: eventstore.Metadata{}},
		{name: "ok/unknown keys ignored", in: `{"actor":"a","$causationId":"c","other":{"x":1}}`, want: eventstore.Metadata{Actor: "a", CausationID: "c"}},
		{name: "ok/plain correlationId key is not the well-known one", in: `{"correlationId":"x"}`, want: eventstore.Metadata{}},
		{name: "fail/not JSON", in: "\x0a\x05hello", err: true},
		{name: "fail/not an object", in: `["actor"]`, err: true},
		{name: "fail/number for a string", in: `{"actor":1}`, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeMetadata([]byte(tt.in))
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("decodeMetadata(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.err)
			}
		})
	}
}

// FuzzDecodeMetadata: user metadata comes from the server, written by anyone with write access.
// Decoding never panics, and what decodes encodes to something that decodes the same.
func FuzzDecodeMetadata(f *testing.F) {
	f.Add([]byte(`{"actor":"a","requestId":"r","$correlationId":"c"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"actor":"\ud800"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMetadata(b)
		if err != nil {
			return
		}
		if checkMetadata(m) != nil {
			return // invalid UTF-8 cannot be written back; Append refuses it
		}
		again, err := decodeMetadata(encodeMetadata(m))
		if err != nil || again != m {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", m, again, err)
		}
	})
}

func TestCheckAppend(t *testing.T) {
	id := "0b1a9f64-1d3c-4c8e-9a57-2d6d1f0c7e11"
	ok := eventstore.EventData{ID: id, Type: "guestlist.events.v1.TenantCreated"}
	with := func(f func(*eventstore.EventData)) []eventstore.EventData {
		e := ok
		f(&e)
		return []eventstore.EventData{e}
	}
	tests := []struct {
		name   string
		stream string
		events []eventstore.EventData
		reason string
	}{
		{name: "ok/plain", stream: "tenant-acme", events: []eventstore.EventData{ok}},
		{name: "fail/nil UUID", stream: "s", events: with(func(e *eventstore.EventData) { e.ID = uuid.Nil.String() }), reason: "nil UUID"},
		{name: "fail/system stream", stream: "$stats", events: []eventstore.EventData{ok}, reason: `starts with "$"`},
		{name: "fail/system type", stream: "s", events: with(func(e *eventstore.EventData) { e.Type = "$>" }), reason: `starts with "$"`},
		{name: "fail/stream not UTF-8", stream: "s\xff", events: []eventstore.EventData{ok}, reason: "not valid UTF-8"},
		{name: "fail/type not UTF-8", stream: "s", events: with(func(e *eventstore.EventData) { e.Type = "t\xff" }), reason: "not valid UTF-8"},
		{name: "fail/metadata not UTF-8", stream: "s", events: with(func(e *eventstore.EventData) { e.Metadata.TraceState = "\xff" }), reason: "tracestate"},
		{name: "fail/shared rules", stream: "", events: []eventstore.EventData{ok}, reason: "empty stream name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids, err := checkAppend(tt.stream, tt.events)
			if tt.reason == "" {
				if err != nil || len(ids) != 1 || ids[0].String() != id {
					t.Fatalf("checkAppend = %v, %v; want [%s], nil", ids, err, id)
				}
				return
			}
			if !errors.Is(err, eventstore.ErrInvalidEvent) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("checkAppend = %v; want ErrInvalidEvent saying %q", err, tt.reason)
			}
		})
	}
	// The client gets the caller's ids, never a nil one it would replace.
	data := toEventData([]eventstore.EventData{ok}, []uuid.UUID{uuid.MustParse(id)})
	if data[0].EventID.String() != id || data[0].ContentType != esdb.ContentTypeBinary || string(data[0].Metadata) != "{}" {
		t.Errorf("toEventData = %+v", data[0])
	}
}

func TestRecorded(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	ev := func(stream, typ string, pos esdb.Position, meta string) *esdb.ResolvedEvent {
		return &esdb.ResolvedEvent{Event: &esdb.RecordedEvent{
			EventID: uuid.MustParse("0b1a9f64-1d3c-4c8e-9a57-2d6d1f0c7e11"), EventType: typ, StreamID: stream,
			EventNumber: 3, Position: pos, CreatedDate: created.In(time.FixedZone("x", 3600)), Data: []byte("d"), UserMetadata: []byte(meta),
		}}
	}
	p := esdb.Position{Commit: 9000, Prepare: 9000}
	got, system, err := recorded(ev("tenant-a", "guestlist.events.v1.TenantCreated", p, `{"actor":"admin"}`))
	want := eventstore.RecordedEvent{ID: "0b1a9f64-1d3c-4c8e-9a57-2d6d1f0c7e11", Type: "guestlist.events.v1.TenantCreated", Stream: "tenant-a",
		Data: []byte("d"), Metadata: eventstore.Metadata{Actor: "admin"}, Time: created, Revision: 3, Position: 9000}
	if err != nil || system || got.ID != want.ID || got.Type != want.Type || got.Stream != want.Stream || got.Metadata != want.Metadata ||
		!got.Time.Equal(created) || got.Time.Location() != time.UTC || got.Revision != 3 || got.Position != 9000 {
		t.Errorf("recorded = %+v, %v, %v; want %+v", got, system, err, want)
	}
	// System events are recognised before anything is checked.
	for _, e := range []*esdb.ResolvedEvent{ev("$stats-1", "x", esdb.Position{Commit: 1, Prepare: 0}, "junk"), ev("tenant-a", "$>", p, "junk")} {
		if _, system, err := recorded(e); !system || err != nil {
			t.Errorf("recorded(%s/%s) = system %v, %v; want system", e.Event.StreamID, e.Event.EventType, system, err)
		}
	}
	if _, _, err := recorded(ev("tenant-a", "t", esdb.Position{Commit: 9000, Prepare: 8000}, "")); !errors.Is(err, errSplitPosition) || !strings.Contains(err.Error(), `"tenant-a" at revision 3`) {
		t.Errorf("split position: %v", err)
	}
	if _, _, err := recorded(ev("tenant-a", "t", p, "not json")); err == nil {
		t.Error("bad metadata: no error")
	}
}

func TestMapError(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	unavailable := status.Error(codes.Unavailable, "connection refused")
	wrapped, _ := esdb.FromError(unavailable) // as the client returns an unclassified failure
	tests := []struct {
		name   string
		ctx    context.Context
		closed bool
		in     error
		is     error
		not    error
	}{
		{name: "ok/unavailable status", ctx: live, in: unavailable, is: eventstore.ErrUnavailable},
		{name: "ok/client error around a status", ctx: live, in: wrapped, is: eventstore.ErrUnavailable},
		{name: "ok/server deadline", ctx: live, in: status.Error(codes.DeadlineExceeded, "deadline"), is: eventstore.ErrUnavailable},
		{name: "ok/connection closed under the call", ctx: live, in: status.Error(codes.Canceled, "grpc: the client connection is closing"), is: eventstore.ErrUnavailable},
		{name: "ok/closed store wins", ctx: live, closed: true, in: unavailable, is: eventstore.ErrClosed, not: eventstore.ErrUnavailable},
		{name: "ok/caller's context wins", ctx: cancelled, in: status.Error(codes.Canceled, "context canceled"), is: context.Canceled, not: eventstore.ErrUnavailable},
		{name: "fail/access denied is not unavailable", ctx: live, in: status.Error(codes.PermissionDenied, "denied"), not: eventstore.ErrUnavailable},
		{name: "fail/unknown stays unknown", ctx: live, in: errors.New("boom"), not: eventstore.ErrUnavailable},
		{name: "ok/already mapped", ctx: live, in: eventstore.ErrStreamNotFound, is: eventstore.ErrStreamNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mapError(tt.ctx, tt.closed, "append to \"s\"", tt.in)
			if err == nil || !strings.HasPrefix(err.Error(), `esdbstore: append to "s": `) {
				t.Fatalf("mapError = %v, want context", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("mapError = %v, want errors.Is %v", err, tt.is)
			}
			if tt.not != nil && errors.Is(err, tt.not) {
				t.Errorf("mapError = %v, must not be %v", err, tt.not)
			}
		})
	}
	// The client's error stays reachable.
	var e *esdb.Error
	if err := mapError(live, false, "op", wrapped); !errors.As(err, &e) {
		t.Errorf("errors.As(*esdb.Error) fails on %v", err)
	}
	if err := mapError(live, false, "op", status.Error(codes.PermissionDenied, "denied")); !strings.Contains(err.Error(), "$all read and stream write") {
		t.Errorf("access denied error does not say what is needed: %v", err)
	}
}

func TestParseConnectionString(t *testing.T) {
	tests := []struct {
		name, in, addr string
		tls            bool
		err            string
	}{
		{name: "ok/esdb", in: "esdb://localhost:2113?tls=false", addr: "localhost:2113"},
		{name: "ok/kurrentdb scheme", in: "kurrentdb://db.example:2113", addr: "db.example:2113", tls: true},
		{name: "ok/kdb default port", in: "kdb://db.example?tls=false", addr: "db.example:2113"},
		{name: "fail/no scheme", in: "localhost:2113", err: "no scheme"},
		{name: "fail/other scheme", in: "postgres://x", err: `scheme "postgres"`},
		{name: "fail/bad port", in: "esdb://localhost:21x3", err: "malformed URL"},
		{name: "fail/bad setting keeps the password out", in: "esdb://admin:s3cret@localhost:2113?tls=maybe", err: "tls"},
		{name: "fail/path", in: "esdb://localhost:2113/db", err: "unsupported URL path"},
		{name: "fail/an @ in a certificate path is no password", in: "esdb://localhost:2113?tlsCAFile=/nonexistent/a@b/ca.pem", err: "no such file"},
		// A password with an unescaped '/', '?' or '#' after a numeric start ends the host part
		// early: the rest of the password would become the path, a setting or the fragment.
		{name: "fail/slash in the password", in: "esdb://admin:2113/s3cret@localhost:2113", err: "percent-encode"},
		{name: "fail/question mark in the password", in: "esdb://admin:2113?s3cret@localhost:2113", err: "percent-encode"},
		{name: "fail/hash in the password", in: "esdb://admin:2113#s3cret@localhost:2113", err: "percent-encode"},
		{name: "fail/password starting with a slash", in: "esdb://admin:/s3cret@localhost:2113", err: "percent-encode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConnectionString(tt.in)
			if tt.err != "" {
				if !errors.Is(err, ErrBadConnectionString) || !strings.Contains(err.Error(), tt.err) || strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("ParseConnectionString(%q) = %v; want ErrBadConnectionString saying %q, without the password", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || cfg.Address != tt.addr || cfg.DisableTLS == tt.tls {
				t.Fatalf("ParseConnectionString(%q) = %+v, %v; want address %s, TLS %v", tt.in, cfg, err, tt.addr, tt.tls)
			}
		})
	}
}
