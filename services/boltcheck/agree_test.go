package boltcheck_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
)

// TestRandomHealthyFilesPass is the other half of the damage tests: Check must never refuse a file
// bbolt wrote itself, or a store would refuse to open after an ordinary workload. Random
// workloads (puts, overwrites, deletes that merge and free pages, nested and inline buckets,
// deleted buckets, values from empty to several pages, random page sizes and fill percents, with
// and without a stored free list) are written to real files; after each, Check must pass where
// bbolt's own (*Tx).Check finds nothing but lost space, and count the keys and buckets bbolt's
// cursors count. (bbolt v1.4.3 loses the pages of a bucket deleted with buckets nested in it:
// its check then reports them "unreachable unfreed". That is space, not damage, and Check does not
// report it either.)
func TestRandomHealthyFilesPass(t *testing.T) {
	seeds := 24
	if testing.Short() {
		seeds = 6
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
			noSync := seed%2 == 0
			opts := &bolt.Options{FreelistType: bolt.FreelistMapType, NoFreelistSync: noSync}
			if seed%3 == 0 {
				opts.PageSize = 1024 << rng.IntN(4) // 1, 2, 4 or 8 KiB
			}
			path := filepath.Join(t.TempDir(), "random.db")
			for round := range 4 {
				db, err := boltcheck.Open(path, 0o600, opts)
				if err != nil {
					t.Fatalf("round %d: open after an ordinary workload: %v", round, err)
				}
				for range 5 + rng.IntN(10) {
					if err := db.Update(func(tx *bolt.Tx) error { return randomTx(tx, rng) }); err != nil {
						t.Fatalf("round %d: %v", round, err)
					}
				}
				var bboltErrs []error
				var keys, buckets uint64
				if err := db.View(func(tx *bolt.Tx) error {
					for err := range tx.Check() {
						if !strings.HasSuffix(err.Error(), ": unreachable unfreed") {
							bboltErrs = append(bboltErrs, err)
						}
					}
					keys, buckets = countAll(tx)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				if len(bboltErrs) > 0 {
					t.Fatalf("round %d: bbolt's own check: %v", round, errors.Join(bboltErrs...))
				}
				rep, err := boltcheck.Check(path)
				if err != nil {
					t.Fatalf("round %d: Check refuses a file bbolt wrote and checks as sound: %v", round, err)
				}
				if rep.Keys != keys || rep.Buckets != buckets {
					t.Fatalf("round %d: Check counted %d keys in %d buckets, bbolt's cursors %d in %d", round, rep.Keys, rep.Buckets, keys, buckets)
				}
			}
		})
	}
}

// countAll counts the entries (keys and buckets) and the buckets (not the root) as Report does,
// with bbolt's cursors.
func countAll(tx *bolt.Tx) (keys, buckets uint64) {
	var walk func(b *bolt.Bucket)
	walk = func(b *bolt.Bucket) {
		buckets++
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			keys++
			if v == nil {
				walk(b.Bucket(k))
			}
		}
	}
	_ = tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		keys++
		walk(b)
		return nil
	})
	return keys, buckets
}

// randomTx makes random changes in one transaction: mostly puts, some deletes of keys and of
// whole buckets, in top-level and nested buckets.
func randomTx(tx *bolt.Tx, rng *rand.Rand) error {
	ops := 1 + rng.IntN(400)
	for range ops {
		b, err := randomBucket(tx, rng)
		if err != nil {
			return err
		}
		key := []byte(fmt.Sprintf("k%05d", rng.IntN(3000)))
		switch r := rng.IntN(100); {
		case r < 70:
			if err := b.Put(key, randomValue(rng)); err != nil {
				return err
			}
		case r < 95:
			if err := b.Delete(key); err != nil && !errors.Is(err, bolt.ErrIncompatibleValue) {
				return err
			}
		default:
			name := []byte(fmt.Sprintf("sub%d", rng.IntN(4)))
			if err := b.DeleteBucket(name); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
				return err
			}
		}
	}
	return nil
}

// randomBucket returns one of a few top-level buckets, or a bucket nested one or two levels in
// it (created when missing; nested buckets with few keys stay inline).
func randomBucket(tx *bolt.Tx, rng *rand.Rand) (*bolt.Bucket, error) {
	b, err := tx.CreateBucketIfNotExists([]byte(fmt.Sprintf("top%d", rng.IntN(3))))
	if err != nil {
		return nil, err
	}
	b.FillPercent = []float64{bolt.DefaultFillPercent, 0.9, 1.0}[rng.IntN(3)]
	for depth := rng.IntN(3); depth > 0; depth-- {
		name := []byte(fmt.Sprintf("sub%d", rng.IntN(4)))
		if b.Get(name) != nil { // a key of that name, not a bucket
			return b, nil
		}
		if b, err = b.CreateBucketIfNotExists(name); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// randomValue is empty, small, or up to a few pages long.
func randomValue(rng *rand.Rand) []byte {
	var n int
	switch r := rng.IntN(100); {
	case r < 10:
		n = 0
	case r < 90:
		n = 1 + rng.IntN(200)
	default:
		n = 1 + rng.IntN(20000)
	}
	v := make([]byte, n)
	for i := range v {
		v[i] = byte(rng.Uint32())
	}
	return v
}
