package esdbstore

import (
	"context"
	"os"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/storetest"
)

// serverURL returns the connection string of the EventStoreDB server the conformance suite runs
// against, or skips the test.
func serverURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("GUESTLIST_ESDB_URL")
	if u == "" {
		t.Skip("set GUESTLIST_ESDB_URL (e.g. esdb://localhost:2113?tls=false) to run the EventStoreDB conformance suite")
	}
	return u
}

func openServer(t *testing.T, conn string, opts ...Option) eventstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, conn, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// TestConformance runs the conformance suite against a real EventStoreDB (GUESTLIST_ESDB_URL).
// A server cannot be emptied: the suite uses stream names of its own and compares positions
// relative to where each test starts.
func TestConformance(t *testing.T) {
	conn := serverURL(t)
	s := openServer(t, conn)
	t.Cleanup(func() { _ = s.Close() })
	storetest.Run(t, func(t *testing.T) eventstore.Store { return s })
}

// TestConformanceReopen runs the close-and-reopen part of the suite against a real server; each
// opening is a new client.
func TestConformanceReopen(t *testing.T) {
	conn := serverURL(t)
	storetest.RunReopen(t, func(t *testing.T, _ string) eventstore.Store { return openServer(t, conn) })
}

// TestConformanceFake runs the whole suite against the in-process fake of the server's gRPC
// Streams service (fake_test.go): the mapping, idempotency, filters and subscriptions of this
// package through the real client, over loopback gRPC, with sparse positions.
func TestConformanceFake(t *testing.T) {
	f := newFakeESDB()
	s := fakeStoreFor(t, f)
	storetest.Run(t, func(t *testing.T) eventstore.Store { return s })
}

// TestConformanceReopenFake runs the close-and-reopen tests against the fake.
func TestConformanceReopenFake(t *testing.T) {
	f := newFakeESDB()
	conn := f.serve(t)
	storetest.RunReopen(t, func(t *testing.T, _ string) eventstore.Store { return openServer(t, conn, WithLogger(quiet)) })
}
