package storeurl

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.err {
				if !errors.Is(err, ErrBadURL) {
					t.Fatalf("Parse(%q) error = %v, want ErrBadURL", tt.in, err)
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
