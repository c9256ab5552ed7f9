package boltcheck_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
)

// smallFile writes a small bbolt file (page size 1 KiB, so that a few dozen pages hold a branch
// root, leaves, a nested bucket, an inline bucket and an overflow value) and returns its bytes.
func smallFile(f *testing.F, noSync bool) []byte {
	f.Helper()
	path := filepath.Join(f.TempDir(), fmt.Sprint("seed-", noSync, ".db"))
	db, err := bolt.Open(path, 0o600, &bolt.Options{PageSize: 1024, FreelistType: bolt.FreelistMapType, NoFreelistSync: noSync})
	if err != nil {
		f.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		log, err := tx.CreateBucket([]byte("log"))
		if err != nil {
			return err
		}
		for i := range 120 {
			if err := log.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), bytes.Repeat([]byte{byte(i)}, 40)); err != nil {
				return err
			}
		}
		nested, err := log.CreateBucket([]byte("nested"))
		if err != nil {
			return err
		}
		if err := nested.Put([]byte("big"), bytes.Repeat([]byte("b"), 3000)); err != nil {
			return err
		}
		inline, err := tx.CreateBucket([]byte("meta"))
		if err != nil {
			return err
		}
		return inline.Put([]byte("position"), []byte{0, 0, 0, 7})
	}); err != nil {
		f.Fatal(err)
	}
	// A second transaction frees pages, so that the free list is not empty.
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("log")).Delete(binary.BigEndian.AppendUint64(nil, 3))
	}); err != nil {
		f.Fatal(err)
	}
	if err := db.Close(); err != nil {
		f.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzCheckedFileDoesNotCrashBbolt damages a small bbolt file at fuzzer-chosen places (up to
// three patches of bytes, and an optional truncation) and checks the property the stores rely on:
// a file that Check accepts never crashes bbolt, neither at open (its free-list walk, for a file
// without a stored free list) nor when every bucket, key and value is read, nor when half the keys
// of every bucket are deleted and others added in one transaction. A crash of bbolt in
// its own goroutine kills the fuzzing process, which the fuzzer reports as a failure; so does an
// input that takes over 20 s.
//
//	go test -run XXX -fuzz FuzzCheckedFileDoesNotCrashBbolt guestlist.dev/services/boltcheck
func FuzzCheckedFileDoesNotCrashBbolt(f *testing.F) {
	seeds := [2][]byte{smallFile(f, true), smallFile(f, false)}
	f.Add(true, uint32(0), []byte{}, uint32(0), []byte{}, uint32(0), []byte{}, uint32(0))
	f.Add(false, uint32(0), []byte{}, uint32(0), []byte{}, uint32(0), []byte{}, uint32(0))
	f.Add(true, uint32(4*1024+16), []byte{0xff, 0xff}, uint32(0), []byte{}, uint32(0), []byte{}, uint32(0))
	f.Add(true, uint32(2*1024+8), []byte{0x01}, uint32(5*1024+20), []byte{0x09, 0, 0, 0}, uint32(0), []byte{}, uint32(0))
	f.Add(false, uint32(3*1024), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0}, uint32(0), []byte{}, uint32(0), []byte{}, uint32(9*1024))
	f.Fuzz(func(t *testing.T, noSync bool, o1 uint32, p1 []byte, o2 uint32, p2 []byte, o3 uint32, p3 []byte, truncate uint32) {
		b := bytes.Clone(seeds[0])
		if !noSync {
			b = bytes.Clone(seeds[1])
		}
		for _, p := range []struct {
			off   uint32
			bytes []byte
		}{{o1, p1}, {o2, p2}, {o3, p3}} {
			if len(p.bytes) == 0 {
				continue
			}
			off := int(p.off % uint32(len(b)))
			copy(b[off:], p.bytes)
		}
		if truncate != 0 {
			b = b[:int(truncate%uint32(len(b)))]
		}
		// A hang is a failure too: the fuzzer records the input of a crashed worker.
		hang := time.AfterFunc(20*time.Second, func() { panic("checking and reading one damaged file took over 20 s") })
		defer hang.Stop()
		path := filepath.Join(t.TempDir(), "fuzz.db")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := boltcheck.Check(path); err != nil {
			return // refused: the stores never hand it to bbolt
		}
		db, err := bolt.Open(path, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType, NoFreelistSync: noSync})
		if err != nil {
			return // bbolt refused it with an error: no crash
		}
		defer db.Close()
		err = db.View(func(tx *bolt.Tx) error {
			var walk func(b *bolt.Bucket)
			walk = func(b *bolt.Bucket) {
				c := b.Cursor()
				for k, v := c.First(); k != nil; k, v = c.Next() {
					if v == nil {
						walk(b.Bucket(k))
					}
				}
			}
			return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { walk(b); return nil })
		})
		if err != nil {
			t.Fatalf("Check accepted the file, but reading it failed: %v", err)
		}
		// Writing: delete every other key of every bucket (rebalancing), add some, commit.
		var panicked any
		func() {
			defer func() { panicked = recover() }()
			_ = db.Update(func(tx *bolt.Tx) error {
				var change func(b *bolt.Bucket) error
				change = func(b *bolt.Bucket) error {
					var keys, buckets [][]byte
					_ = b.ForEach(func(k, v []byte) error {
						if v == nil {
							buckets = append(buckets, bytes.Clone(k))
						} else {
							keys = append(keys, bytes.Clone(k))
						}
						return nil
					})
					for i, k := range keys {
						if i%2 == 0 {
							if err := b.Delete(k); err != nil {
								return err
							}
						}
					}
					for i := range 20 {
						if err := b.Put(fmt.Appendf(nil, "new-%03d", i), []byte("v")); err != nil {
							return err
						}
					}
					for _, k := range buckets {
						if err := change(b.Bucket(k)); err != nil {
							return err
						}
					}
					return nil
				}
				return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return change(b) })
			})
		}()
		if panicked != nil {
			t.Fatalf("Check accepted the file, but changing it panicked: %v", panicked)
		}
	})
}
