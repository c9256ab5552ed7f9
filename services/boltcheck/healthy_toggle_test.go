package boltcheck_test

import (
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
)

// TestToggleFreelistSync: a file written alternately with and without a stored free list
// (and with both free list types), with puts, deletes, nested and deleted buckets and big values,
// passes Check after every close.
func TestToggleFreelistSync(t *testing.T) {
	for _, ps := range []int{4096, 16384, 65536} {
		path := filepath.Join(t.TempDir(), "t.db")
		r := rand.New(rand.NewPCG(uint64(ps), 7))
		for round := range 12 {
			opts := &bolt.Options{PageSize: ps, NoFreelistSync: round%2 == 0, FreelistType: []bolt.FreelistType{bolt.FreelistArrayType, bolt.FreelistMapType}[round%3%2]}
			db, err := boltcheck.Open(path, 0o600, opts)
			if err != nil {
				t.Fatalf("ps %d round %d: open: %v", ps, round, err)
			}
			for range 5 {
				if err := db.Update(func(tx *bolt.Tx) error {
					b, err := tx.CreateBucketIfNotExists([]byte("b"))
					if err != nil {
						return err
					}
					for range 400 {
						k := binary.BigEndian.AppendUint32(nil, uint32(r.IntN(3000)))
						switch r.IntN(10) {
						case 0, 1, 2:
							_ = b.Delete(k)
						case 3:
							v := make([]byte, r.IntN(3*ps))
							_ = b.Put(k, v)
						default:
							_ = b.Put(k, make([]byte, r.IntN(100)))
						}
					}
					name := []byte{byte('n' + r.IntN(3))}
					if r.IntN(3) == 0 {
						_ = tx.DeleteBucket(name)
					} else {
						nb, err := tx.CreateBucketIfNotExists(name)
						if err != nil {
							return err
						}
						for range r.IntN(200) {
							_ = nb.Put(binary.BigEndian.AppendUint32(nil, r.Uint32()), []byte("x"))
						}
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := boltcheck.Check(path); err != nil {
				t.Fatalf("ps %d round %d (NoFreelistSync %v): %v", ps, round, opts.NoFreelistSync, err)
			}
		}
	}
}
