package boltcheck_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
)

// TestUnderfullPagesBelowTheRootAreRefused: a damaged element count that leaves a branch page below
// a bucket's root with one child, or a leaf below it with none, loses keys that bbolt's own walk
// would only count as free space, so bbolt opens and reads the file; but the first delete that
// rebalances below such a branch hits bbolt's assertion "parent must have at least 2 children", a
// panic in the writer's goroutine (the projector deletes hostnames), and a leaf without elements
// gets a second parent element when next written. bbolt never writes either (it splits and
// rebalances so that only a root page may be that small), so Check refuses them. (Found by
// review: Check accepted both; with the one-child branch, the delete below then panicked.)
func TestUnderfullPagesBelowTheRootAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		// damage returns the id of the page to damage and its new element count.
		damage func(branch, leaf uint64) (uint64, uint16)
		want   string
	}{
		{"fail/branch-with-one-child", func(branch, _ uint64) (uint64, uint16) { return branch, 1 }, "below its root with one element"},
		{"fail/leaf-without-elements", func(_, leaf uint64) (uint64, uint16) { return leaf, 0 }, "below its root without elements"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, branchID, leafID, leafKeys := underfullFixture(t)
			id, n := tc.damage(branchID, leafID)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(binary.NativeEndian.AppendUint16(nil, n), int64(id*underfullPageSize+10)); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			_, err = boltcheck.Check(path)
			if errors.Is(err, boltcheck.ErrDamaged) && strings.Contains(err.Error(), tc.want) {
				return
			}
			if err != nil {
				t.Fatalf("Check: %v; want it damaged, %q", err, tc.want)
			}
			// Accepted: show what bbolt then does with it.
			db, err := boltcheck.Open(path, 0o600, underfullOptions)
			if err != nil {
				t.Fatalf("Check accepted the file, Open refused it: %v", err)
			}
			defer db.Close()
			var panicked any
			func() {
				defer func() { panicked = recover() }()
				_ = db.Update(func(tx *bolt.Tx) error {
					b := tx.Bucket([]byte("hostnames"))
					for i := range leafKeys - 2 { // all but two keys of the first leaf
						if err := b.Delete(binary.BigEndian.AppendUint64(nil, uint64(i))); err != nil {
							return err
						}
					}
					return nil
				})
			}()
			t.Fatalf("Check accepted the damaged file (a delete below it then panicked: %v)", panicked)
		})
	}
}

const underfullPageSize = 1024

var underfullOptions = &bolt.Options{PageSize: underfullPageSize, NoFreelistSync: true, FreelistType: bolt.FreelistMapType}

// underfullFixture writes a bucket of 20,000 keys on 1 KiB pages (a root branch, branches below it,
// leaves) and returns the file, the lowest branch on the first-child path below the bucket's root,
// that branch's first leaf, and the number of keys of that leaf, read as bbolt lays the file out.
func underfullFixture(t *testing.T) (path string, branchID, leafID uint64, leafKeys int) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "projections.db")
	db, err := bolt.Open(path, 0o600, underfullOptions)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("hostnames"))
		if err != nil {
			return err
		}
		for i := range 20000 {
			k := binary.BigEndian.AppendUint64(nil, uint64(i))
			if err := b.Put(k, k); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.NativeEndian
	page := func(id uint64) []byte { return raw[id*underfullPageSize : (id+1)*underfullPageSize] }
	flags := func(p []byte) uint16 { return le.Uint16(p[8:]) }
	count := func(p []byte) int { return int(le.Uint16(p[10:])) }
	firstChild := func(id uint64) uint64 { return le.Uint64(page(id)[16+8:]) }
	m0, m1 := page(0)[16:], page(1)[16:]
	m := m0
	if le.Uint64(m1[48:]) > le.Uint64(m0[48:]) {
		m = m1
	}
	rootLeaf := page(le.Uint64(m[16:])) // the root bucket: a leaf holding "hostnames"
	pos, ksize := int(le.Uint32(rootLeaf[16+4:])), int(le.Uint32(rootLeaf[16+8:]))
	bucketRoot := le.Uint64(rootLeaf[16+pos+ksize:])
	if flags(page(bucketRoot)) != 0x01 {
		t.Fatalf("bucket root %d is not a branch page", bucketRoot)
	}
	branchID = firstChild(bucketRoot)
	for flags(page(firstChild(branchID))) == 0x01 {
		branchID = firstChild(branchID)
	}
	if flags(page(branchID)) != 0x01 || count(page(branchID)) < 2 {
		t.Fatalf("page %d: flags %#x, %d elements; want a branch page below the root", branchID, flags(page(branchID)), count(page(branchID)))
	}
	leafID = firstChild(branchID)
	return path, branchID, leafID, count(page(leafID))
}

// TestShortFileSaysSo: a file cut below the 4 KiB that bbolt reads for its first meta page, whose
// first meta page is intact, is refused as too short, not as "neither meta page is valid".
func TestShortFileSaysSo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{PageSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("log")); return err }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 3000); err != nil {
		t.Fatal(err)
	}
	_, err = boltcheck.Check(path)
	if !errors.Is(err, boltcheck.ErrDamaged) || !strings.Contains(err.Error(), "the file is 3000 bytes, shorter than the 4,096 bytes") {
		t.Fatalf("Check: %v; want damaged, saying the file is too short", err)
	}
}
