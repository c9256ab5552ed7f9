// Package boltchecktest damages real bbolt files for robustness tests: each Damage changes a closed
// file in place the way a bad disk, a truncated copy or a bad restore would, and Refused checks
// that an open of the damaged file fails with an error naming it, without a crash (the test
// process would die) and without writing to the file.
package boltchecktest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
)

var order = binary.NativeEndian

// Layout locates pages of an undamaged file to damage.
type Layout struct {
	// PageSize is the file's page size, and Pages its high-water mark (pages in use or free).
	PageSize, Pages int64
	// FileSize is the file's length in bytes.
	FileSize int64
	// Branch is a branch page in use (0 when the file has none), and Leaf a leaf page in use: a
	// child of Branch when there is one.
	Branch, Leaf int64
	// Bucket names the bucket that Branch and Leaf belong to.
	Bucket string
}

// Locate reads the layout of the undamaged bbolt file at path (closed). It prefers the bucket with
// the most keys whose root is a branch page.
func Locate(path string) (Layout, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return Layout{}, fmt.Errorf("locate pages of %s: %w", path, err)
	}
	defer db.Close()
	f, err := os.Open(path)
	if err != nil {
		return Layout{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Layout{}, err
	}
	l := Layout{PageSize: int64(db.Info().PageSize), FileSize: fi.Size()}
	header := func(id int64) (flags uint16, count int, err error) {
		var h [16]byte
		if _, err := f.ReadAt(h[:], id*l.PageSize); err != nil {
			return 0, 0, err
		}
		return order.Uint16(h[8:]), int(order.Uint16(h[10:])), nil
	}
	err = db.View(func(tx *bolt.Tx) error {
		l.Pages = tx.Size() / l.PageSize
		type cand struct {
			name string
			root int64
			keys int
		}
		var cands []cand
		var visit func(name string, b *bolt.Bucket) error
		visit = func(name string, b *bolt.Bucket) error {
			if root := int64(b.Root()); root != 0 {
				cands = append(cands, cand{name: name, root: root, keys: b.Stats().KeyN})
			}
			return b.ForEachBucket(func(k []byte) error {
				return visit(name+"/"+string(k), b.Bucket(k))
			})
		}
		if err := tx.ForEach(func(k []byte, b *bolt.Bucket) error { return visit(string(k), b) }); err != nil {
			return err
		}
		best := cand{name: "(root)", root: int64(tx.Cursor().Bucket().Root())}
		bestBranch := false
		for _, c := range cands {
			flags, _, err := header(c.root)
			if err != nil {
				return err
			}
			isBranch := flags == 0x01
			if (isBranch && !bestBranch) || (isBranch == bestBranch && c.keys > best.keys) {
				best, bestBranch = c, isBranch
			}
		}
		l.Bucket = best.name
		id := best.root
		for {
			flags, count, err := header(id)
			if err != nil {
				return err
			}
			if flags != 0x01 {
				l.Leaf = id
				return nil
			}
			if count < 2 {
				return fmt.Errorf("branch page %d has %d elements", id, count)
			}
			l.Branch = id
			var e [16]byte
			if _, err := f.ReadAt(e[:], id*l.PageSize+16); err != nil {
				return err
			}
			id = int64(order.Uint64(e[8:]))
		}
	})
	return l, err
}

// Damage is one way to damage a closed bbolt file.
type Damage struct {
	// Name says what the damage is, as a subtest name.
	Name string
	// NeedsBranch: the damage needs a branch page (Layout.Branch); a file without one is too
	// small for it.
	NeedsBranch bool
	// Recoverable: bbolt falls back to the other meta page, and the file opens with its data
	// (the last transaction excepted when the damaged meta page was the newer one).
	Recoverable bool
	// Apply damages the file at path, laid out as l.
	Apply func(path string, l Layout) error
}

// writeAt writes b at offset off of the file at path.
func writeAt(path string, off int64, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readAt reads n bytes at offset off of the file at path.
func readAt(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	return b, err
}

func u64(v uint64) []byte { return order.AppendUint64(nil, v) }
func u32(v uint32) []byte { return order.AppendUint32(nil, v) }

// garbage is n bytes from a fixed seed, so that failures repeat.
func garbage(n int64, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Damages lists the damages the robustness tests apply, one file copy each.
func Damages() []Damage {
	return []Damage{
		{Name: "leaf page overwritten with garbage", Apply: func(p string, l Layout) error {
			return writeAt(p, l.Leaf*l.PageSize, garbage(l.PageSize, 1))
		}},
		{Name: "branch page overwritten with garbage", NeedsBranch: true, Apply: func(p string, l Layout) error {
			return writeAt(p, l.Branch*l.PageSize, garbage(l.PageSize, 2))
		}},
		{Name: "leaf page typed as a free-list page", Apply: func(p string, l Layout) error {
			return writeAt(p, l.Leaf*l.PageSize+8, []byte{0x10, 0})
		}},
		{Name: "leaf page of an unknown type", Apply: func(p string, l Layout) error {
			return writeAt(p, l.Leaf*l.PageSize+8, []byte{0x20, 0})
		}},
		{Name: "branch page typed as a leaf", NeedsBranch: true, Apply: func(p string, l Layout) error {
			return writeAt(p, l.Branch*l.PageSize+8, []byte{0x02, 0})
		}},
		{Name: "branch element beyond the high-water mark", NeedsBranch: true, Apply: func(p string, l Layout) error {
			return writeAt(p, l.Branch*l.PageSize+16+8, u64(uint64(l.Pages+3)))
		}},
		{Name: "branch element beyond the end of the file", NeedsBranch: true, Apply: func(p string, l Layout) error {
			return writeAt(p, l.Branch*l.PageSize+16+8, u64(uint64(l.FileSize/l.PageSize+1000)))
		}},
		{Name: "branch element far beyond any mapping", NeedsBranch: true, Apply: func(p string, l Layout) error {
			return writeAt(p, l.Branch*l.PageSize+16+8, u64(1<<50))
		}},
		{Name: "page referenced twice", NeedsBranch: true, Apply: func(p string, l Layout) error {
			first, err := readAt(p, l.Branch*l.PageSize+16+8, 8)
			if err != nil {
				return err
			}
			return writeAt(p, l.Branch*l.PageSize+16+16+8, first)
		}},
		{Name: "leaf keys out of order", Apply: swapFirstKeys},
		{Name: "leaf key running past its page", Apply: func(p string, l Layout) error {
			return writeAt(p, l.Leaf*l.PageSize+16+8, u32(0xFFFF_FFF0))
		}},
		{Name: "truncated to half its pages", Apply: func(p string, l Layout) error {
			return os.Truncate(p, l.Pages/2*l.PageSize)
		}},
		{Name: "truncated to a few bytes", Apply: func(p string, l Layout) error {
			return os.Truncate(p, 100)
		}},
		{Name: "both meta pages zeroed", Apply: func(p string, l Layout) error {
			if err := writeAt(p, 0, make([]byte, l.PageSize)); err != nil {
				return err
			}
			return writeAt(p, l.PageSize, make([]byte, l.PageSize))
		}},
		{Name: "meta page 0 with a flipped byte", Recoverable: true, Apply: func(p string, l Layout) error {
			return flip(p, 16+40) // the high-water mark: the checksum no longer matches
		}},
		{Name: "meta page 1 with a flipped byte", Recoverable: true, Apply: func(p string, l Layout) error {
			return flip(p, l.PageSize+16+40)
		}},
	}
}

// swapFirstKeys swaps the first two keys of the leaf page (keys of one length: the bytes are
// swapped, every element stays within the page).
func swapFirstKeys(path string, l Layout) error {
	page, err := readAt(path, l.Leaf*l.PageSize, int(l.PageSize))
	if err != nil {
		return err
	}
	if order.Uint16(page[10:]) < 2 {
		return fmt.Errorf("leaf page %d has fewer than two keys", l.Leaf)
	}
	key := func(i int) []byte {
		e := 16 + 16*i
		pos, ksize := int(order.Uint32(page[e+4:])), int(order.Uint32(page[e+8:]))
		return page[e+pos : e+pos+ksize]
	}
	k0, k1 := key(0), key(1)
	if len(k0) != len(k1) {
		return fmt.Errorf("leaf page %d: the first two keys differ in length", l.Leaf)
	}
	tmp := append([]byte(nil), k0...)
	copy(k0, k1)
	copy(k1, tmp)
	return writeAt(path, l.Leaf*l.PageSize, page)
}

func flip(path string, off int64) error {
	b, err := readAt(path, off, 1)
	if err != nil {
		return err
	}
	return writeAt(path, off, []byte{b[0] ^ 0x40})
}

// CopyFile copies the file src to dst (created with mode 0600).
func CopyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Each runs one subtest per damage on a copy of the undamaged, closed file src: the copy, named
// like src, in a directory of its own, is damaged and handed to test. A damage that needs a branch
// page fails when src has none.
func Each(t *testing.T, src string, test func(t *testing.T, path string, d Damage)) {
	t.Helper()
	l, err := Locate(src)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d pages of %d bytes (file %d bytes); damaging bucket %s: branch page %d, leaf page %d",
		filepath.Base(src), l.Pages, l.PageSize, l.FileSize, l.Bucket, l.Branch, l.Leaf)
	for _, d := range Damages() {
		t.Run(d.Name, func(t *testing.T) {
			if d.NeedsBranch && l.Branch == 0 {
				t.Fatalf("%s has no branch page to damage: write more data", src)
			}
			path := filepath.Join(t.TempDir(), filepath.Base(src))
			if err := CopyFile(path, src); err != nil {
				t.Fatal(err)
			}
			if err := d.Apply(path, l); err != nil {
				t.Fatalf("damage %s: %v", d.Name, err)
			}
			test(t, path, d)
		})
	}
}

// Refused checks that open, an open of the damaged file at path, fails with a boltcheck.ErrDamaged
// error that names the file and says what to do, and that it left the file's bytes as they were.
func Refused(t *testing.T, path string, open func() error) {
	t.Helper()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	openErr := open()
	err = openErr
	if err == nil {
		t.Fatalf("the damaged %s was opened", filepath.Base(path))
	}
	if !errors.Is(err, boltcheck.ErrDamaged) {
		t.Errorf("open: %v; want an error wrapping boltcheck.ErrDamaged", err)
	}
	var de *boltcheck.DamageError
	if msg := err.Error(); !strings.Contains(msg, filepath.Base(path)+": the file is damaged") || !errors.As(err, &de) || de.Hint == "" || !strings.Contains(msg, de.Hint) {
		t.Errorf("open: %v; want it to name the file, say it is damaged and what to do", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("the failed open changed %s (%d bytes before, %d after)", filepath.Base(path), len(before), len(after))
	}
	t.Logf("%v", openErr)
}

// RefusedByOpen is Refused for a store's Open: open opens the damaged file at path (and the store
// is closed if it opens), and its error must also start with wantPrefix and contain wantHint, the
// store's advice on what to do with the file.
func RefusedByOpen(t *testing.T, path, wantPrefix, wantHint string, open func() (io.Closer, error)) {
	t.Helper()
	Refused(t, path, func() error {
		c, err := open()
		if err == nil {
			c.Close()
			return nil
		}
		if !strings.HasPrefix(err.Error(), wantPrefix) || !strings.Contains(err.Error(), wantHint) {
			t.Errorf("Open: %v; want it to start with %q and say %q", err, wantPrefix, wantHint)
		}
		return err
	})
}
