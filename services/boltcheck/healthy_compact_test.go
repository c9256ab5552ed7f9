package boltcheck_test

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
)

// TestCompactAndPending: a file written while a read transaction stays open (its pages
// pending in the stored free list), and its bolt.Compact copy, pass Check.
func TestCompactAndPending(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	db, err := bolt.Open(src, 0o600, &bolt.Options{NoFreelistSync: false, InitialMmapSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	rtx, err := db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		if err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			for i := range 500 {
				k := binary.BigEndian.AppendUint32(nil, uint32(i))
				if round%3 == 2 {
					_ = b.Delete(k)
				} else {
					_ = b.Put(k, make([]byte, 50+round))
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if round == 10 {
			_ = rtx.Rollback()
			rtx, _ = db.Begin(false)
		}
	}
	// Copy the file while the reader is still open (as a hot backup would, under a read tx).
	hot := filepath.Join(dir, "hot.db")
	if err := rtx.CopyFile(hot, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = rtx.Rollback()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	dstPath := filepath.Join(dir, "dst.db")
	s, _ := bolt.Open(src, 0o600, nil)
	d, _ := bolt.Open(dstPath, 0o600, &bolt.Options{NoFreelistSync: true})
	if err := bolt.Compact(d, s, 1000); err != nil {
		t.Fatal(err)
	}
	s.Close()
	d.Close()
	for _, p := range []string{src, hot, dstPath} {
		if _, err := boltcheck.Check(p); err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
}
