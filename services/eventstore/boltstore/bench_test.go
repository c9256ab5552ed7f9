package boltstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/storetest"
)

// benchEventSize is the size of each event's data in the append benchmarks.
const benchEventSize = 200

// BenchmarkAppend measures durable appends per second, each of one event to the writer's own
// stream, at several numbers of concurrent writers, against the raw bbolt baseline: db.Batch
// puts of a value as large as the store's encoded record, with the same bbolt options and the
// same durability (an fsync before the call returns).
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("store/writers=%d", writers), func(b *testing.B) { benchStore(b, writers) })
		b.Run(fmt.Sprintf("store-groupwait1ms/writers=%d", writers), func(b *testing.B) { benchStore(b, writers, WithGroupWait(time.Millisecond)) })
		b.Run(fmt.Sprintf("raw-bbolt-batch/writers=%d", writers), func(b *testing.B) { benchRaw(b, writers, 0) })
		b.Run(fmt.Sprintf("raw-bbolt-batch-delay100us/writers=%d", writers), func(b *testing.B) { benchRaw(b, writers, 100*time.Microsecond) })
		b.Run(fmt.Sprintf("raw-bbolt-batch-delay1ms/writers=%d", writers), func(b *testing.B) { benchRaw(b, writers, time.Millisecond) })
	}
}

// BenchmarkSyncIndexAppend is BenchmarkAppend's store with the index buckets written by every
// commit (WithIndexFlush(1)), to show what deferred indexing saves.
func BenchmarkSyncIndexAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("store/writers=%d", writers), func(b *testing.B) { benchStore(b, writers, WithIndexFlush(1)) })
	}
}

// runWriters runs b.N calls of op spread over writers goroutines and reports events/s.
func runWriters(b *testing.B, writers int, op func(w int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := op(w); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}

func benchEvent() eventstore.EventData {
	data := make([]byte, benchEventSize)
	for i := range data {
		data[i] = byte('a' + i%26)
	}
	return eventstore.EventData{
		ID:   storetest.NewEventID(),
		Type: "guestlist.events.v1.BenchmarkEvent",
		Data: data,
		Metadata: eventstore.Metadata{
			Actor: "token:acme/bench",
		},
	}
}

func benchStore(b *testing.B, writers int, opts ...Option) {
	s, err := Open(filepath.Join(b.TempDir(), "events.db"), opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	template := benchEvent()
	streams := make([]string, writers)
	for w := range streams {
		streams[w] = fmt.Sprintf("tenant-%d", w)
	}
	runWriters(b, writers, func(w int) error {
		ev := template
		ev.ID = storetest.NewEventID()
		_, err := s.Append(ctx, streams[w], eventstore.Any(), ev)
		return err
	})
	st := s.Stats()
	b.ReportMetric(float64(st.Appends)/float64(st.Commits), "appends/commit")
}

func benchRaw(b *testing.B, writers int, delay time.Duration) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, &bolt.Options{
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: defaultOptions().noFreelistSync,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if delay > 0 {
		db.MaxBatchDelay = delay
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket(bucketLog)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	ev := benchEvent()
	id, _ := eventstore.ParseUUID(ev.ID)
	value := appendRecord(nil, time.Now().UnixNano(), id, "tenant-00", 1, &ev)
	runWriters(b, writers, func(int) error {
		return db.Batch(func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketLog)
			seq, err := bk.NextSequence()
			if err != nil {
				return err
			}
			return bk.Put(binary.BigEndian.AppendUint64(nil, seq), value)
		})
	})
}

// BenchmarkOpen measures what opening a large store costs: the damage check alone
// (boltcheck.Check), bbolt's own read-write open alone (which walks every page to rebuild the free
// list) and the store's whole Open (both, then the store's own start-up transaction), on one file
// of GUESTLIST_BENCH_OPEN_EVENTS events (default 200,000) appended 1,000 at a time to 100 streams.
// Run with -benchtime Nx: each iteration opens and closes the file, with the file in the page cache
// (warm/) and, on Linux, with its page cache dropped before each iteration (cold/: read from disk).
func BenchmarkOpen(b *testing.B) {
	events := 200_000
	if v := os.Getenv("GUESTLIST_BENCH_OPEN_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			b.Fatalf("GUESTLIST_BENCH_OPEN_EVENTS=%q: want a number of at least 1000", v)
		}
		events = n
	}
	path := filepath.Join(b.TempDir(), "events.db")
	start := time.Now()
	s, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	template := benchEvent()
	batch := make([]eventstore.EventData, 1000)
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < events/len(batch); i += 4 {
				evs := make([]eventstore.EventData, len(batch))
				for j := range evs {
					evs[j] = template
					evs[j].ID = storetest.NewEventID()
				}
				if _, err := s.Append(ctx, fmt.Sprintf("tenant-%d", i%100), eventstore.Any(), evs...); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	rep, err := boltcheck.Check(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d events written in %v: file %d MB, %d pages, %d in use, %d keys in %d buckets",
		events, time.Since(start).Round(time.Millisecond), fi.Size()>>20, rep.Pages, rep.InUse, rep.Keys, rep.Buckets)
	unchecked := func(o *options) { o.unchecked = true }
	ops := []struct {
		name string
		op   func() error
	}{
		{"check", func() error { _, err := boltcheck.Check(path); return err }},
		{"bbolt-open", func() error {
			db, err := bolt.Open(path, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
			if err != nil {
				return err
			}
			return db.Close()
		}},
		{"store-open-unchecked", func() error {
			s, err := Open(path, unchecked)
			if err != nil {
				return err
			}
			return s.Close()
		}},
		{"store-open", func() error {
			s, err := Open(path)
			if err != nil {
				return err
			}
			return s.Close()
		}},
	}
	for _, cold := range []bool{false, true} {
		for _, o := range ops {
			name := "warm/" + o.name
			if cold {
				name = "cold/" + o.name
			}
			b.Run(name, func(b *testing.B) {
				for range b.N {
					if cold {
						b.StopTimer()
						if err := dropCache(path); err != nil {
							b.Skipf("cannot drop the file's page cache: %v", err)
						}
						b.StartTimer()
					}
					if err := o.op(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
