package boltstore

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"guestlist.dev/services/boltcheck/boltchecktest"
	"guestlist.dev/services/eventstore"
)

// damagedStoreEvents is enough events for the log bucket's root to be a branch page.
const damagedStoreEvents = 3000

// writeDamageSource writes a store of damagedStoreEvents events to path, closes it, and opens and
// closes it once more, so that the file's last transaction changes nothing (either meta page then
// holds every event). It returns the events.
func writeDamageSource(t *testing.T, path string) []eventstore.RecordedEvent {
	t.Helper()
	ctx := context.Background()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range damagedStoreEvents / 100 {
		evs := make([]eventstore.EventData, 100)
		for j := range evs {
			evs[j] = ev("T", fmt.Sprintf("%d/%d/%s", i, j, strings.Repeat("x", 200)))
		}
		if _, err := s.Append(ctx, fmt.Sprintf("tenant-%d", i%5), eventstore.Any(), evs...); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.ReadAll(ctx, eventstore.Start, damagedStoreEvents+1, eventstore.Filter{})
	if err != nil || len(all) != damagedStoreEvents {
		t.Fatalf("ReadAll: %d events, %v", len(all), err)
	}
	for range 2 {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = Open(path); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return all
}

// TestDamagedFileIsRefused damages copies of a real events.db in every way of
// boltchecktest.Damages. Open refuses each with an error that names the file and says to restore it
// from a backup, writes nothing to it, and does not crash the process (before boltcheck, most of
// these panicked in bbolt's free list walk, in a goroutine of bbolt's own). A damaged meta page
// falls back to the other one, with every event there.
func TestDamagedFileIsRefused(t *testing.T) {
	src := filepath.Join(t.TempDir(), "events.db")
	want := writeDamageSource(t, src)
	boltchecktest.Each(t, src, func(t *testing.T, path string, d boltchecktest.Damage) {
		if !d.Recoverable {
			boltchecktest.RefusedByOpen(t, path, "boltstore: open "+path+": events.db: the file is damaged (", "restore it from a backup",
				func() (io.Closer, error) { return Open(path, WithLockTimeout(time.Second)) })
			return
		}
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := context.Background()
		got, err := s.ReadAll(ctx, eventstore.Start, damagedStoreEvents+1, eventstore.Filter{})
		if err != nil || len(got) != len(want) {
			t.Fatalf("ReadAll after the meta page fallback: %d events, %v; want %d", len(got), err, len(want))
		}
		for i := range got {
			if !sameRecorded(got[i], want[i]) {
				t.Fatalf("event %d differs after the meta page fallback", i)
			}
		}
		for i := range 5 {
			evs, err := s.ReadStream(ctx, fmt.Sprintf("tenant-%d", i), eventstore.Forwards, 0, damagedStoreEvents)
			if err != nil || len(evs) != damagedStoreEvents/5 {
				t.Errorf("ReadStream tenant-%d: %d events, %v", i, len(evs), err)
			}
		}
	})
}
