package storeurl

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Parsed
		err  bool
	}{
		{name: "ok/bolt absolute", in: "bolt:///var/lib/guestlist/events.db", want: Parsed{Kind: Bolt, Path: "/var/lib/guestlist/events.db"}},
		{name: "ok/bolt relative", in: "bolt://data/events.db", want: Parsed{Kind: Bolt, Path: "data/events.db"}},
		{name: "ok/bare path", in: "./events.db", want: Parsed{Kind: Bolt, Path: "./events.db"}},
		{name: "ok/esdb", in: "esdb://localhost:2113?tls=false", want: Parsed{Kind: ESDB, ConnectionString: "esdb://localhost:2113?tls=false"}},
		{name: "ok/esdb discover", in: "esdb+discover://a:2113,b:2113", want: Parsed{Kind: ESDB, ConnectionString: "esdb+discover://a:2113,b:2113"}},
		{name: "fail/empty", in: " ", err: true},
		{name: "fail/bolt without path", in: "bolt://", err: true},
		{name: "fail/unknown scheme", in: "postgres://db/x", err: true},
		{name: "ok/kurrentdb", in: "kurrentdb://db:2113", want: Parsed{Kind: ESDB, ConnectionString: "kurrentdb://db:2113"}},
		{name: "fail/esdb bad port", in: "esdb://localhost:21x3", err: true},
		{name: "fail/esdb bad setting", in: "esdb://admin:s3cret@localhost:2113?tls=maybe", err: true},
		{name: "fail/esdb path", in: "esdb://localhost:2113/events", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.err {
				if !errors.Is(err, ErrBadURL) || !strings.Contains(err.Error(), "--store") || strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("Parse(%q) error = %v, want ErrBadURL naming --store, without the password", tt.in, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestOpenBolt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	st, err := Open(context.Background(), "bolt://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Append(context.Background(), "s", eventstore.NoStream(), eventstore.EventData{ID: "0b1a9f64-1d3c-4c8e-9a57-2d6d1f0c7e11", Type: "t"}); err != nil {
		t.Fatal(err)
	}
	if p, err := st.LastPosition(context.Background()); err != nil || p != 1 {
		t.Fatalf("LastPosition = %d, %v; want 1", p, err)
	}
}

// TestOpenESDBUnreachable opens an esdb:// value whose server does not answer: Open fails with
// ErrUnavailable, naming --store, once the client gives up or the context ends.
func TestOpenESDBUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := Open(ctx, "esdb://"+addr+"?tls=false&maxDiscoverAttempts=2&discoveryInterval=10")
	if err == nil {
		st.Close()
		t.Fatal("Open of an unreachable EventStoreDB succeeded")
	}
	if !errors.Is(err, eventstore.ErrUnavailable) || !strings.Contains(err.Error(), "--store") {
		t.Fatalf("Open = %v; want ErrUnavailable naming --store", err)
	}
	if _, err := Open(ctx, "esdb://localhost:21x3"); !errors.Is(err, ErrBadURL) {
		t.Fatalf("Open of a malformed connection string = %v; want ErrBadURL", err)
	}
}
