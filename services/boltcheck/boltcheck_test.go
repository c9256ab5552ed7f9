package boltcheck_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/boltcheck"
	"guestlist.dev/services/boltcheck/boltchecktest"
)

const (
	logKeys       = 3000
	inlineBuckets = 20
)

// makeFile writes a bbolt file like guestlist's: a "log" bucket large enough for a branch root,
// nested buckets ("tenants"/"acme"/"chain"), inline buckets ("meta", "tenants"/"small-<i>"), values
// spanning overflow pages ("big"), and a last transaction that changes nothing (so that either meta
// page holds every key). noSync: without a stored free list.
func makeFile(t testing.TB, noSync bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType, NoFreelistSync: noSync})
	if err != nil {
		t.Fatal(err)
	}
	value := bytes.Repeat([]byte("v"), 200)
	for start := 0; start < logKeys; start += 500 {
		if err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("log"))
			if err != nil {
				return err
			}
			for i := start; i < start+500; i++ {
				if err := b.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), value); err != nil {
					return err
				}
			}
			chain, err := tx.CreateBucketIfNotExists([]byte("tenants"))
			if err != nil {
				return err
			}
			if chain, err = chain.CreateBucketIfNotExists([]byte("acme")); err != nil {
				return err
			}
			if chain, err = chain.CreateBucketIfNotExists([]byte("chain")); err != nil {
				return err
			}
			for i := start; i < start+500; i += 10 {
				if err := chain.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), value[:32]); err != nil {
					return err
				}
			}
			meta, err := tx.CreateBucketIfNotExists([]byte("meta"))
			if err != nil {
				return err
			}
			return meta.Put([]byte("position"), binary.BigEndian.AppendUint64(nil, uint64(start)))
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Values larger than a page (overflow pages), and small buckets stored inline.
	if err := db.Update(func(tx *bolt.Tx) error {
		big, err := tx.CreateBucket([]byte("big"))
		if err != nil {
			return err
		}
		for i, n := range []int{100 << 10, 3 << 20} {
			if err := big.Put([]byte{byte(i + 1)}, bytes.Repeat([]byte{byte(i)}, n)); err != nil {
				return err
			}
		}
		tenants := tx.Bucket([]byte("tenants"))
		for i := range inlineBuckets {
			b, err := tenants.CreateBucket(fmt.Appendf(nil, "small-%d", i))
			if err != nil {
				return err
			}
			if err := b.Put([]byte("k"), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(*bolt.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func boltOptions(noSync bool) *bolt.Options {
	return &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: noSync}
}

func freelistModes(t *testing.T, test func(t *testing.T, noSync bool)) {
	t.Run("NoFreelistSync", func(t *testing.T) { test(t, true) })
	t.Run("stored free list", func(t *testing.T) { test(t, false) })
}

// TestCheckCountsWhatBboltCounts: on an undamaged file the check finds nothing, and the pages it
// finds in use are exactly those bbolt does not count as free.
func TestCheckCountsWhatBboltCounts(t *testing.T) {
	freelistModes(t, func(t *testing.T, noSync bool) {
		path := makeFile(t, noSync)
		rep, err := boltcheck.Check(path)
		if err != nil {
			t.Fatal(err)
		}
		if rep.MetaFallback != "" || rep.Buckets != 6+inlineBuckets || rep.Branches == 0 || rep.Keys < logKeys+logKeys/10 {
			t.Errorf("report %+v: want %d buckets, branch pages, at least %d keys, no fallback", rep, 6+inlineBuckets, logKeys+logKeys/10)
		}
		db, err := bolt.Open(path, 0o600, boltOptions(noSync))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		free := uint64(db.Stats().FreePageN)
		if rep.InUse+free != rep.Pages {
			t.Errorf("check: %d of %d pages in use; bbolt: %d free; want them to add up", rep.InUse, rep.Pages, free)
		}
		t.Logf("%+v, bbolt: %d free", rep, free)
	})
}

func openAndClose(path string, noSync bool) error {
	db, err := boltcheck.Open(path, 0o600, boltOptions(noSync))
	if err != nil {
		return err
	}
	return db.Close()
}

// TestDamagedFilesAreRefused damages copies of a real file in every way of boltchecktest.Damages:
// Open refuses each with an error naming the file, writes nothing to it, and the process lives;
// a damaged meta page falls back to the other one with every key there.
func TestDamagedFilesAreRefused(t *testing.T) {
	freelistModes(t, func(t *testing.T, noSync bool) {
		boltchecktest.Each(t, makeFile(t, noSync), func(t *testing.T, path string, d boltchecktest.Damage) {
			if !d.Recoverable {
				boltchecktest.Refused(t, path, func() error { return openAndClose(path, noSync) })
				return
			}
			rep, err := boltcheck.Check(path)
			if err != nil || rep.MetaFallback == "" {
				t.Fatalf("Check = %+v, %v; want a meta page fallback", rep, err)
			}
			db, err := boltcheck.Open(path, 0o600, boltOptions(noSync))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.View(func(tx *bolt.Tx) error {
				if n := tx.Bucket([]byte("log")).Stats().KeyN; n != logKeys {
					return fmt.Errorf("%d keys in the log, want %d", n, logKeys)
				}
				return nil
			}); err != nil {
				t.Error(err)
			}
		})
	})
}

// uncheckedChildEnv makes TestUncheckedBboltCrashes the child: it opens the file named by the
// variable with plain bolt.Open, reads every key and value, and prints "opened".
const uncheckedChildEnv = "BOLTCHECK_UNCHECKED_CHILD"

// TestUncheckedBboltCrashes shows that the damages are real: plain bolt.Open (and a read of every
// key and value) of each damaged file, in a child process, crashes the process or fails, where
// boltcheck.Open returns an error. Only the meta page damages open.
func TestUncheckedBboltCrashes(t *testing.T) {
	if path := os.Getenv(uncheckedChildEnv); path != "" {
		uncheckedChild(path)
		return
	}
	if testing.Short() {
		t.Skip("starts a process per damage")
	}
	crashes := 0
	boltchecktest.Each(t, makeFile(t, true), func(t *testing.T, path string, d boltchecktest.Damage) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestUncheckedBboltCrashes$", "-test.count=1")
		cmd.Env = append(os.Environ(), uncheckedChildEnv+"="+path)
		out, err := cmd.CombinedOutput()
		crashed := strings.Contains(string(out), "panic") || strings.Contains(string(out), "fatal error") || strings.Contains(string(out), "unexpected fault")
		var first string
		for line := range strings.Lines(string(out)) {
			if strings.HasPrefix(line, "panic") || strings.HasPrefix(line, "fatal error") || strings.HasPrefix(line, "unexpected fault") || strings.HasPrefix(line, "bolt.Open") {
				first = strings.TrimSpace(line)
				break
			}
		}
		switch {
		case d.Recoverable:
			if err != nil || !strings.Contains(string(out), "opened") {
				t.Errorf("bbolt did not open the file: %v\n%s", err, out)
			}
		case crashed:
			crashes++
			t.Logf("plain bbolt crashed: %s", first)
		case err != nil:
			t.Logf("plain bbolt refused it: %s", first)
		default:
			t.Errorf("plain bbolt opened the damaged file and read every key:\n%s", out)
		}
	})
	if crashes == 0 {
		t.Error("no damage crashed plain bbolt")
	}
}

func uncheckedChild(path string) {
	db, err := bolt.Open(path, 0o600, boltOptions(true))
	if err != nil {
		fmt.Println("bolt.Open:", err)
		os.Exit(1)
	}
	var sum byte
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			var walk func(b *bolt.Bucket) error
			walk = func(b *bolt.Bucket) error {
				return b.ForEach(func(k, v []byte) error {
					if v == nil {
						return walk(b.Bucket(k))
					}
					for _, c := range v {
						sum += c
					}
					return nil
				})
			}
			return walk(b)
		})
	})
	if err != nil {
		fmt.Println("read:", err)
		os.Exit(1)
	}
	fmt.Println("opened, value bytes sum to", sum)
	os.Exit(0)
}

// TestOpenHeldFileIsTimeout: a file another bolt.DB holds is bolt.ErrTimeout, as from bolt.Open,
// not a damage found while it is written.
func TestOpenHeldFileIsTimeout(t *testing.T) {
	path := makeFile(t, true)
	held, err := bolt.Open(path, 0o600, boltOptions(true))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	opts := boltOptions(true)
	opts.Timeout = 50 * time.Millisecond
	if db, err := boltcheck.Open(path, 0o600, opts); !errors.Is(err, bolt.ErrTimeout) {
		if db != nil {
			db.Close()
		}
		t.Errorf("Open of a held file = %v, want bolt.ErrTimeout", err)
	}
}

// TestOpenNewAndEmptyFiles: a missing or empty file is created by bbolt as before.
func TestOpenNewAndEmptyFiles(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "new.db"), empty} {
		if err := openAndClose(path, true); err != nil {
			t.Fatalf("%s: %v", filepath.Base(path), err)
		}
		if _, err := boltcheck.Check(path); err != nil {
			t.Errorf("%s after creation: %v", filepath.Base(path), err)
		}
	}
	if _, err := boltcheck.Check(filepath.Join(dir, "missing.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Check of a missing file = %v, want os.ErrNotExist", err)
	}
}

// TestMetaFallbackIsLogged: Open warns that it uses the older meta page.
func TestMetaFallbackIsLogged(t *testing.T) {
	path := makeFile(t, true)
	l, err := boltchecktest.Locate(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range boltchecktest.Damages() {
		if d.Recoverable {
			if err := d.Apply(path, l); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	var logged bytes.Buffer
	db, err := boltcheck.Open(path, 0o600, boltOptions(true), boltcheck.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Which meta page is the newer depends on the number of transactions: either message will do.
	if s := logged.String(); !strings.Contains(s, "level=WARN") || !regexp.MustCompile(`meta page(, 0,| 0) is invalid`).MatchString(s) || !strings.Contains(s, path) {
		t.Errorf("log: %q; want a warning naming the file and the invalid meta page", s)
	}
}

// TestHint: the error tells what WithHint says.
func TestHint(t *testing.T) {
	path := makeFile(t, true)
	if err := os.Truncate(path, 3*4096); err != nil {
		t.Fatal(err)
	}
	_, err := boltcheck.Check(path, boltcheck.WithHint("move it aside"))
	var de *boltcheck.DamageError
	if !errors.As(err, &de) || de.Path != path || !strings.HasSuffix(err.Error(), "; move it aside") ||
		!strings.HasPrefix(err.Error(), "test.db: the file is damaged (the file is 12288 bytes, shorter than the ") {
		t.Errorf("Check = %v", err)
	}
}
