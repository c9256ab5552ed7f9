package configset

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/decision"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// sameSet fails the test unless b is the set a: the same position, history token, hostnames
// with equal configurations, and refused hostnames.
func sameSet(t *testing.T, a, b *Set) {
	t.Helper()
	if a.Position() != b.Position() || !bytes.Equal(a.HistoryToken(), b.HistoryToken()) || a.Len() != b.Len() || a.Complete() != b.Complete() {
		t.Fatalf("position %d/%d, token %q/%q, %d/%d hostnames, complete %v/%v",
			a.Position(), b.Position(), a.HistoryToken(), b.HistoryToken(), a.Len(), b.Len(), a.Complete(), b.Complete())
	}
	for name, h := range a.All() {
		h2, ok := b.Lookup(name)
		if !ok || !proto.Equal(h.Config, h2.Config) {
			t.Fatalf("%s differs", name)
		}
	}
	if !slices.Equal(a.Refused(), b.Refused()) {
		t.Fatalf("refused %q, then %q", a.Refused(), b.Refused())
	}
}

// loaded returns a new store with path loaded, and the TailError LoadFile reported, if any; any
// other error but refused hostnames fails the test.
func loaded(t *testing.T, path string) (*Store, *TailError) {
	t.Helper()
	st := NewStore()
	err := st.LoadFile(path)
	var tail *TailError
	errors.As(err, &tail)
	var refused *RefusedError
	errors.As(err, &refused)
	if err != nil && tail == nil && refused == nil {
		t.Fatalf("LoadFile: %v", err)
	}
	return st, tail
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// tokened returns resp with a history token naming its position.
func tokened(resp *configv1.WatchResponse) *configv1.WatchResponse {
	resp.HistoryToken = fmt.Appendf(nil, "token of %d", resp.Position)
	return resp
}

func TestStateFileAppendsChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "edge-config.binpb")
	st := NewStore()
	f := st.StateFile(path)
	if _, err := f.Save(); err == nil {
		t.Fatal("Save of an incomplete set succeeded")
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("a failed Save wrote the file")
	}
	var ups []*configv1.HostnameConfig
	for i := range 500 {
		ups = append(ups, cfg(t, fmt.Sprintf("h%03d.example.com", i), 10))
	}
	if err := st.Apply(tokened(snapshot(10, ups...))); err != nil {
		t.Fatal(err)
	}
	if appended, err := f.Save(); err != nil || appended {
		t.Fatalf("first Save: appended %v, %v; want the whole set written", appended, err)
	}
	whole := fileSize(t, path)
	if appended, err := f.Save(); err != nil || appended || fileSize(t, path) != whole {
		t.Fatalf("Save of the set the file holds: appended %v, %v, %d bytes (%d before)", appended, err, fileSize(t, path), whole)
	}
	changes := []*configv1.WatchResponse{
		delta(11, nil, cfg(t, "h001.example.com", 11)),                             // one changed
		delta(12, []string{"h002.example.com"}, cfg(t, "new.example.com", 12)),     // one gone, one new
		delta(13, []string{"h003.example.com", "h004.example.com", "absent.test"}), // removals only
		delta(14, nil), // the position moves on, nothing else
		delta(15, nil, cfg(t, "h002.example.com", 15), cfg(t, "h001.example.com", 15)),
	}
	for _, c := range changes {
		before := fileSize(t, path)
		if err := st.Apply(tokened(c)); err != nil {
			t.Fatal(err)
		}
		appended, err := f.Save()
		if err != nil || !appended {
			t.Fatalf("position %d: appended %v, %v", c.Position, appended, err)
		}
		grew := fileSize(t, path) - before
		if grew <= 0 || grew > int64(len(c.Upserts)+1)*1024 {
			t.Fatalf("position %d: the file grew by %d bytes for %d upserts (the whole set is %d)", c.Position, grew, len(c.Upserts), whole)
		}
		got, tail := loaded(t, path)
		if tail != nil {
			t.Fatal(tail)
		}
		sameSet(t, st.Load(), got.Load())
	}
	// A snapshot that repeats the set (a reconnection the control plane could not serve with
	// changes) with one hostname changed keeps the other entries, so it is appended as that one
	// change.
	var again []*configv1.HostnameConfig
	for _, h := range st.Load().All() {
		again = append(again, proto.CloneOf(h.Config))
	}
	again[0].OriginUrl, again[0].Version = "http://elsewhere.example.com", 16
	before := fileSize(t, path)
	if err := st.Apply(tokened(snapshot(16, again...))); err != nil {
		t.Fatal(err)
	}
	if appended, err := f.Save(); err != nil || !appended || fileSize(t, path)-before > 1024 {
		t.Fatalf("a snapshot repeating the set but one hostname: appended %v, %v, %d bytes", appended, err, fileSize(t, path)-before)
	}
	if got, tail := loaded(t, path); tail != nil {
		t.Fatal(tail)
	} else {
		sameSet(t, st.Load(), got.Load())
	}
	// Compact writes the file Save writes, and then appends again.
	if err := f.Compact(); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "saved")
	if err := st.Save(other); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(other)
	if !bytes.Equal(a, b) {
		t.Fatalf("after Compact the file (%d bytes) is not what Save writes (%d bytes)", len(a), len(b))
	}
	if err := f.Compact(); err != nil || fileSize(t, path) != int64(len(a)) {
		t.Fatal("a second Compact changed the file", err)
	}
	if err := st.Apply(delta(17, nil, cfg(t, "h100.example.com", 17))); err != nil {
		t.Fatal(err)
	}
	if appended, err := f.Save(); err != nil || !appended {
		t.Fatalf("Save after Compact: appended %v, %v", appended, err)
	}
	got, _ := loaded(t, path)
	sameSet(t, st.Load(), got.Load())
}

// appendedFile writes path with a StateFile of a new store: the whole set at position 10 (a and
// b), then the change at 11 (c added), appended. It returns the store and the StateFile.
func appendedFile(t *testing.T, path string) (*Store, *StateFile) {
	t.Helper()
	st := NewStore()
	if err := st.Apply(snapshot(10, cfg(t, "a.example.com", 10), cfg(t, "b.example.com", 10))); err != nil {
		t.Fatal(err)
	}
	f := st.StateFile(path)
	if _, err := f.Save(); err != nil {
		t.Fatal(err)
	}
	if err := st.Apply(delta(11, nil, cfg(t, "c.example.com", 11))); err != nil {
		t.Fatal(err)
	}
	if appended, err := f.Save(); err != nil || !appended {
		t.Fatalf("appended %v, %v", appended, err)
	}
	return st, f
}

// TestStateFileWritesWholeSet: the cases where Save writes the whole set instead of appending,
// each checked by loading the file.
func TestStateFileWritesWholeSet(t *testing.T) {
	setup := func(t *testing.T) (*Store, *StateFile, string) {
		path := filepath.Join(t.TempDir(), "c")
		st, f := appendedFile(t, path)
		return st, f, path
	}
	for _, tc := range []struct {
		name      string
		change    func(t *testing.T, st *Store, path string)
		appendErr bool // an append was tried, and failed
	}{
		{"refused hostname", func(t *testing.T, st *Store, _ string) {
			if err := st.Apply(delta(12, nil, unpreparable(t, "d.example.com", 12))); err == nil {
				t.Fatal("not refused")
			}
		}, false},
		{"refused hostname upserted again", func(t *testing.T, st *Store, path string) {
			_ = st.Apply(delta(12, nil, unpreparable(t, "d.example.com", 12)))
			f := st.StateFile(path)
			if _, err := f.Save(); err != nil {
				t.Fatal(err)
			}
			if err := st.Apply(delta(13, nil, cfg(t, "d.example.com", 13))); err != nil {
				t.Fatal(err)
			}
			if appended, err := f.Save(); err != nil || appended {
				t.Fatalf("refused list emptied: appended %v, %v", appended, err)
			}
			if err := st.Apply(delta(14, nil, cfg(t, "e.example.com", 14))); err != nil {
				t.Fatal(err)
			}
		}, true}, // the file was written by another StateFile since
		{"history replaced", func(t *testing.T, st *Store, _ string) {
			r := snapshot(5, cfg(t, "x.example.com", 5))
			r.ReplacesHistory = true
			if err := st.Apply(r); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"snapshot", func(t *testing.T, st *Store, _ string) {
			var ups []*configv1.HostnameConfig
			for i := range 3000 {
				ups = append(ups, cfg(t, fmt.Sprintf("s%d.example.com", i), 12))
			}
			if err := st.Apply(snapshot(12, ups...)); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"file replaced", func(t *testing.T, st *Store, path string) {
			other := path + ".other" // the same bytes, another file
			b, _ := os.ReadFile(path)
			if err := os.WriteFile(other, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(other, path); err != nil {
				t.Fatal(err)
			}
			if err := st.Apply(delta(12, nil, cfg(t, "d.example.com", 12))); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"file grown by another writer", func(t *testing.T, st *Store, path string) {
			fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			fh.Write([]byte("planted"))
			fh.Close()
			if err := st.Apply(delta(12, nil, cfg(t, "d.example.com", 12))); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"file rewritten in place, same size", func(t *testing.T, st *Store, path string) {
			b, _ := os.ReadFile(path)
			if err := os.WriteFile(path, b, 0o600); err != nil { // the same inode, a new time
				t.Fatal(err)
			}
			if err := st.Apply(delta(12, nil, cfg(t, "d.example.com", 12))); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"file removed", func(t *testing.T, st *Store, path string) {
			os.Remove(path)
			if err := st.Apply(delta(12, nil, cfg(t, "d.example.com", 12))); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run("ok/"+tc.name, func(t *testing.T) {
			st, f, path := setup(t)
			tc.change(t, st, path)
			if appended, err := f.Save(); err != nil || appended {
				t.Fatalf("appended %v, %v; want the whole set written", appended, err)
			}
			if tc.appendErr != (f.AppendErr() != nil) {
				t.Errorf("AppendErr() = %v", f.AppendErr())
			}
			got, tail := loaded(t, path)
			if tail != nil {
				t.Fatal(tail)
			}
			sameSet(t, st.Load(), got.Load())
			// The file holds the whole set and nothing after it: what Save writes.
			other := path + ".saved"
			if err := st.Save(other); err != nil {
				t.Fatal(err)
			}
			a, _ := os.ReadFile(path)
			b, _ := os.ReadFile(other)
			if !bytes.Equal(a, b) {
				t.Fatal("the file is not what Save writes")
			}
			// The next change appends to the file written whole, and AppendErr forgets the
			// append that failed before.
			if err := st.Apply(delta(30, nil, cfg(t, "z.example.com", 30))); err != nil {
				t.Fatal(err)
			}
			if appended, err := f.Save(); err != nil || !appended || f.AppendErr() != nil {
				t.Fatalf("the next Save: appended %v, %v, append error %v; want it appended", appended, err, f.AppendErr())
			}
		})
	}
}

// TestStateFileBound: changes are appended until they would pass half the whole set's size (or
// the floor), then the whole set is written; the file never holds more changes than that.
func TestStateFileBound(t *testing.T) {
	defer func(old int64) { minAppendBytes = old }(minAppendBytes)
	minAppendBytes = 4 << 10
	path := filepath.Join(t.TempDir(), "c")
	st := NewStore()
	var ups []*configv1.HostnameConfig
	for i := range 100 {
		ups = append(ups, cfg(t, fmt.Sprintf("h%03d.example.com", i), 1))
	}
	if err := st.Apply(snapshot(1, ups...)); err != nil {
		t.Fatal(err)
	}
	f := st.StateFile(path)
	if _, err := f.Save(); err != nil {
		t.Fatal(err)
	}
	whole := fileSize(t, path)
	if whole/2 <= minAppendBytes {
		t.Fatalf("the whole set is %d bytes; the test wants it above twice the floor", whole)
	}
	wholes := 0
	for pos := uint64(2); pos < 400; pos++ {
		if err := st.Apply(delta(pos, nil, cfg(t, fmt.Sprintf("h%03d.example.com", pos%100), pos))); err != nil {
			t.Fatal(err)
		}
		appended, err := f.Save()
		if err != nil {
			t.Fatal(err)
		}
		size := fileSize(t, path)
		if !appended {
			wholes++
			other := path + ".saved"
			if err := st.Save(other); err != nil {
				t.Fatal(err)
			}
			if want := fileSize(t, other); size != want {
				t.Fatalf("position %d: the whole set written is %d bytes, want %d", pos, size, want)
			}
			whole = size
		}
		if size > whole+whole/2 {
			t.Fatalf("position %d: the file is %d bytes, more than the whole set (%d) and half of it", pos, size, whole)
		}
	}
	if wholes < 2 {
		t.Fatalf("the whole set was written %d times in 398 changes of about 1/%d of it each", wholes, 100)
	}
	got, _ := loaded(t, path)
	sameSet(t, st.Load(), got.Load())
}

// TestStateFileTornTail: a crash during an append leaves the file cut anywhere in the change
// being appended, and damage may change any of its bytes: LoadFile then loads the set as it was
// before that change and reports a TailError; damage in an earlier change leaves out the changes
// from there on. The next Save writes the whole set.
func TestStateFileTornTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c")
	st := NewStore()
	if err := st.Apply(tokened(snapshot(10, cfg(t, "a.example.com", 10), cfg(t, "b.example.com", 10)))); err != nil {
		t.Fatal(err)
	}
	f := st.StateFile(path)
	if _, err := f.Save(); err != nil {
		t.Fatal(err)
	}
	sets := []*Set{st.Load()}
	offsets := []int64{fileSize(t, path)} // where each change starts, then the end
	for i, c := range []*configv1.WatchResponse{
		delta(11, nil, cfg(t, "c.example.com", 11)),
		delta(12, []string{"a.example.com"}),
		delta(13, nil, cfg(t, "b.example.com", 13)),
	} {
		if err := st.Apply(tokened(c)); err != nil {
			t.Fatal(err)
		}
		if appended, err := f.Save(); err != nil || !appended {
			t.Fatalf("change %d: appended %v, %v", i, appended, err)
		}
		sets = append(sets, st.Load())
		offsets = append(offsets, fileSize(t, path))
	}
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// expect loads data, and checks it loads the set as it was after the first changes; with
	// resave, it also checks that a StateFile of the loaded store replaces the damaged file.
	expect := func(t *testing.T, data []byte, changes int, resave bool) {
		t.Helper()
		p := filepath.Join(dir, "damaged")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, tail := loaded(t, p)
		if tail == nil || tail.Changes != changes || tail.Offset != offsets[changes] || tail.Position != sets[changes].Position() {
			t.Fatalf("TailError %+v, want one after %d changes, at byte %d, position %d", tail, changes, offsets[changes], sets[changes].Position())
		}
		sameSet(t, sets[changes], got.Load())
		if !resave {
			return
		}
		// A StateFile of the loaded store writes the whole set first, which loads whole.
		if err := got.Apply(delta(20, nil, cfg(t, "z.example.com", 20))); err != nil {
			t.Fatal(err)
		}
		if appended, err := got.StateFile(p).Save(); err != nil || appended {
			t.Fatalf("first Save after loading: appended %v, %v", appended, err)
		}
		again, tail := loaded(t, p)
		if tail != nil {
			t.Fatal(tail)
		}
		sameSet(t, got.Load(), again.Load())
	}
	last := offsets[2]
	for cut := last; cut < int64(len(full)); cut++ {
		t.Run(fmt.Sprintf("cut at %d", cut), func(t *testing.T) {
			if cut == last {
				got, tail := loaded(t, writeTemp(t, dir, full[:cut]))
				if tail != nil {
					t.Fatal(tail)
				}
				sameSet(t, sets[2], got.Load())
				return
			}
			expect(t, full[:cut], 2, cut%17 == 1)
		})
	}
	for i := range 3 {
		for at := offsets[i]; at < offsets[i+1]; at++ {
			t.Run(fmt.Sprintf("change %d, byte %d flipped", i, at), func(t *testing.T) {
				damaged := bytes.Clone(full)
				damaged[at] ^= 0x10
				expect(t, damaged, i, at%17 == 1)
			})
		}
	}
}

// appendTo appends a change to the file's bytes, its checksum chained from the file's last one
// (the last 4 bytes of a set's trailer or a change's), as a StateFile appends it.
func appendTo(t testing.TB, file []byte, change *configv1.WatchResponse) []byte {
	t.Helper()
	out, _, err := appendChange(file, binary.BigEndian.Uint32(file[len(file)-4:]), change)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeTemp(t *testing.T, dir string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, "temp")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadFileRefusesBadChange: a change whose checksum matches but that is not a change of the
// set (written wrong, not cut short) makes the whole file refused, the set unchanged.
func TestLoadFileRefusesBadChange(t *testing.T) {
	_, dir, _, good := savedFile(t) // position 7: a and b
	for _, tc := range []struct {
		name   string
		change *configv1.WatchResponse
		want   string
	}{
		{"snapshot", snapshot(8, cfg(t, "c.example.com", 8)), "not a change"},
		{"part", &configv1.WatchResponse{Position: 8, More: true}, "not a change"},
		{"replaces history", &configv1.WatchResponse{Position: 8, ReplacesHistory: true}, "not a change"},
		{"position back", delta(6, []string{"a.example.com"}), "backwards"},
		{"upserted twice", delta(8, nil, cfg(t, "c.example.com", 8), cfg(t, "c.example.com", 8)), "both"},
		{"version beyond position", delta(8, nil, cfg(t, "c.example.com", 9)), "beyond"},
	} {
		t.Run("fail/"+tc.name, func(t *testing.T) {
			file := appendTo(t, appendTo(t, slices.Clone(good), delta(8, nil, cfg(t, "d.example.com", 8))), tc.change)
			p := writeTemp(t, dir, file)
			st := NewStore()
			if err := st.Apply(snapshot(1, cfg(t, "keep.example.com", 1))); err != nil {
				t.Fatal(err)
			}
			before := st.Load()
			err := st.LoadFile(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("LoadFile = %v, want an error naming the file and saying %q", err, tc.want)
			}
			var tail *TailError
			if errors.As(err, &tail) {
				t.Fatalf("reported as a cut tail: %v", err)
			}
			if st.Load() != before {
				t.Fatal("the set changed")
			}
		})
	}
}

// TestStateFileModel: random histories of snapshots (some replacing the history), changes (some
// with hostnames that cannot be prepared) and Saves, with a low floor so that whole sets are
// written too; after every Save the file loads to the store's set, and the file cut at any
// change's end loads to the set saved there.
func TestStateFileModel(t *testing.T) {
	defer func(old int64) { minAppendBytes = old }(minAppendBytes)
	minAppendBytes = 8 << 10
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			dir := t.TempDir()
			path := filepath.Join(dir, "c")
			st := NewStore()
			f := st.StateFile(path)
			pos := uint64(1)
			name := func() string { return fmt.Sprintf("n%d.example.com", rng.IntN(60)) }
			upsert := func() *configv1.HostnameConfig {
				if rng.IntN(25) == 0 {
					return unpreparable(t, name(), pos)
				}
				c := cfg(t, name(), pos)
				c.OriginUrl += strings.Repeat("/x", rng.IntN(200))
				return c
			}
			if err := st.Apply(tokened(snapshot(pos))); err != nil {
				t.Fatal(err)
			}
			ends := map[int64]*Set{} // file size after an append -> the set saved
			appends, wholes := 0, 0
			for step := range 400 {
				switch r := rng.IntN(20); {
				case r == 0: // a snapshot, sometimes of an older history
					var ups []*configv1.HostnameConfig
					seen := map[string]bool{}
					for range rng.IntN(30) {
						if u := upsert(); !seen[u.Hostname] {
							seen[u.Hostname] = true
							ups = append(ups, u)
						}
					}
					resp := snapshot(pos, ups...)
					if rng.IntN(3) == 0 && pos > 3 {
						resp.ReplacesHistory = true
						resp.Position = pos - 2
						for _, u := range ups {
							u.Version = resp.Position
						}
					}
					applyIgnoringRefused(t, st, tokened(resp))
				default:
					pos++
					var ups []*configv1.HostnameConfig
					var rem []string
					seen := map[string]bool{}
					for range rng.IntN(4) {
						if rng.IntN(3) == 0 {
							if n := name(); !seen[n] {
								seen[n] = true
								rem = append(rem, n)
							}
						} else if u := upsert(); !seen[u.Hostname] {
							seen[u.Hostname] = true
							ups = append(ups, u)
						}
					}
					applyIgnoringRefused(t, st, tokened(delta(pos, rem, ups...)))
				}
				if rng.IntN(3) == 0 {
					continue // not saved: the next Save covers this step too
				}
				appended, err := f.Save()
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if appended {
					appends++
					ends[fileSize(t, path)] = st.Load()
				} else {
					wholes++
					clear(ends)
					ends[fileSize(t, path)] = st.Load()
				}
				got, tail := loaded(t, path)
				if tail != nil {
					t.Fatalf("step %d: %v", step, tail)
				}
				sameSet(t, st.Load(), got.Load())
			}
			if appends < 50 || wholes < 5 {
				t.Fatalf("%d appends and %d whole sets: the history does not exercise both", appends, wholes)
			}
			full, _ := os.ReadFile(path)
			for _, end := range slices.Sorted(maps.Keys(ends)) {
				got, tail := loaded(t, writeTemp(t, dir, full[:end]))
				if tail != nil {
					t.Fatalf("cut at %d: %v", end, tail)
				}
				sameSet(t, ends[end], got.Load())
			}
		})
	}
}

func applyIgnoringRefused(t *testing.T, st *Store, resp *configv1.WatchResponse) {
	t.Helper()
	var refused *RefusedError
	if err := st.Apply(resp); err != nil && !errors.As(err, &refused) {
		t.Fatal(err)
	}
}

// TestDiff: diff of two versions of a trie reports exactly the entries changed, added and
// removed between them, whatever the history between the versions, also with hashes that
// collide in part (deep tries) or whole (collision nodes).
func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name string
		bits uint64 // the hash's bits kept: fewer, more collisions
	}{{"full hashes", ^uint64(0)}, {"4-bit hashes", 0xf}, {"high bits only", 0xf << 60}} {
		t.Run(tc.name, func(t *testing.T) {
			hashOf := func(name string) uint64 {
				h := fnv.New64a()
				h.Write([]byte(name))
				return h.Sum64() & tc.bits
			}
			rng := rand.New(rand.NewPCG(3, 4))
			prepared := map[string]*decision.Hostname{}
			entry := func(name string, v uint64) *decision.Hostname {
				h, err := decision.Prepare(&configv1.HostnameConfig{Hostname: name, Mode: configv1.MtlsMode_MTLS_MODE_OFF, Version: v})
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
			var roots []*node
			var models []map[string]*decision.Hostname
			var root *node
			model := map[string]*decision.Hostname{}
			for edit := uint64(1); edit <= 150; edit++ {
				tx := &txn{edit: edit, hashOf: hashOf}
				for range rng.IntN(30) {
					n := fmt.Sprintf("n%d.example.com", rng.IntN(120))
					if rng.IntN(3) == 0 {
						root, _ = tx.remove(root, 0, hashOf(n), n)
						delete(model, n)
						continue
					}
					h := entry(n, edit)
					if rng.IntN(5) == 0 && prepared[n] != nil {
						h = prepared[n] // the same entry again: not a change
					}
					prepared[n] = h
					root, _ = tx.insert(root, 0, hashOf(n), h)
					model[n] = h
				}
				roots = append(roots, root)
				models = append(models, maps.Clone(model))
			}
			for range 400 {
				i, j := rng.IntN(len(roots)), rng.IntN(len(roots))
				wantChanged := map[string]bool{}
				for n, h := range models[j] {
					if models[i][n] != h {
						wantChanged[n] = true
					}
				}
				wantGone := map[string]bool{}
				for n := range models[i] {
					if _, ok := models[j][n]; !ok {
						wantGone[n] = true
					}
				}
				changed, gone := map[string]bool{}, map[string]bool{}
				if !diff(roots[i], roots[j], 0, func(h *decision.Hostname) bool {
					if changed[h.Name()] {
						t.Fatalf("%s reported twice", h.Name())
					}
					changed[h.Name()] = true
					return true
				}, func(n string) bool {
					if gone[n] {
						t.Fatalf("%s reported gone twice", n)
					}
					gone[n] = true
					return true
				}) {
					t.Fatal("diff stopped")
				}
				if !maps.Equal(changed, wantChanged) || !maps.Equal(gone, wantGone) {
					t.Fatalf("versions %d -> %d: changed %v, gone %v; want %v, %v", i, j, changed, gone, wantChanged, wantGone)
				}
			}
		})
	}
}

// TestStateFileAfterLoadFile: a StateFile of the path a Store loaded whole appends to that file
// from its first Save, also when the set moved on since; after a load that left a tail out or
// refused a hostname, or of another path, its first Save writes the whole set.
func TestStateFileAfterLoadFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	appendedFile(t, src)
	withChange, _ := os.ReadFile(src)
	for _, tc := range []struct {
		name   string
		file   []byte
		other  bool // the StateFile is of another path
		append bool // its first Save appends
	}{
		{"ok/loaded whole", withChange, false, true},
		{"ok/loaded whole, no change appended", withChange[:fileSizeOfSet(t, withChange)], false, true},
		{"ok/another path", withChange, true, false},
		{"ok/tail left out", withChange[:len(withChange)-1], false, false},
		{"ok/hostname refused", appendTo(t, slices.Clone(withChange), delta(12, nil, unpreparable(t, "d.example.com", 12))), false, false},
		// A file written before trailers: a change appended to it would not read (nor the file).
		{"ok/no trailer", withChange[:fileSizeOfSet(t, withChange)-len(trailerMagic)-4], false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeTemp(t, t.TempDir(), tc.file)
			st2 := NewStore()
			if err := st2.LoadFile(path); err != nil {
				var refused *RefusedError
				var tail *TailError
				if !errors.As(err, &refused) && !errors.As(err, &tail) {
					t.Fatal(err)
				}
			}
			if err := st2.Apply(delta(20, []string{"a.example.com"}, cfg(t, "e.example.com", 20))); err != nil {
				t.Fatal(err)
			}
			target := path
			if tc.other {
				target = filepath.Join(t.TempDir(), "other")
				if err := os.WriteFile(target, tc.file, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.ReadFile(target)
			f := st2.StateFile(target)
			// A tail left out is more than the set too, which Compact writes away.
			if got := f.Appended(); got != (tc.append && len(tc.file) > fileSizeOfSet(t, tc.file) || tc.name == "ok/tail left out") {
				t.Errorf("Appended() = %v before the first Save", got)
			}
			appended, err := f.Save()
			if err != nil || appended != tc.append {
				t.Fatalf("first Save: appended %v, %v; want appended %v", appended, err, tc.append)
			}
			after, _ := os.ReadFile(target)
			if tc.append && !bytes.HasPrefix(after, before) {
				t.Fatal("the first Save appended, but the file does not start with the one loaded")
			}
			got, tail := loaded(t, target)
			if tail != nil {
				t.Fatal(tail)
			}
			sameSet(t, st2.Load(), got.Load())
			if err := f.Compact(); err != nil {
				t.Fatal(err)
			}
			if f.Appended() || fileSize(t, target) != int64(fileSizeOfSet(t, mustRead(t, target))) {
				t.Fatal("Compact left changes appended")
			}
		})
	}
}

// TestStateFileAfterAFailedLoadFile: after a LoadFile of the path that did not load the file
// whole (here one that failed, the file damaged in place since the first LoadFile loaded it, or
// that found no file), a StateFile of that path does not append to the file the first LoadFile
// loaded: its first Save writes the whole set, which loads.
func TestStateFileAfterAFailedLoadFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, path string) // the file after the first LoadFile
	}{
		{"damaged in place", func(t *testing.T, path string) {
			b := mustRead(t, path)
			before, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x40
			if err := os.WriteFile(path, b, 0o600); err != nil { // the same file, rewritten
				t.Fatal(err)
			}
			if after, err := os.Stat(path); err != nil || !os.SameFile(before, after) || after.Size() != before.Size() {
				t.Skipf("the file was not rewritten in place (%v)", err)
			}
		}},
		{"removed", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run("ok/"+tc.name, func(t *testing.T) {
			_, _, path, _ := savedFile(t) // position 7: a and b
			st := NewStore()
			if err := st.LoadFile(path); err != nil {
				t.Fatal(err)
			}
			tc.change(t, path)
			if err := st.LoadFile(path); err != nil && tc.name == "removed" {
				t.Fatalf("LoadFile of a missing file: %v", err)
			}
			if err := st.Apply(delta(8, nil, cfg(t, "c.example.com", 8))); err != nil {
				t.Fatal(err)
			}
			f := st.StateFile(path)
			if appended, err := f.Save(); err != nil || appended || f.AppendErr() != nil {
				t.Fatalf("first Save: appended %v, %v, append error %v; want the whole set written, no append tried", appended, err, f.AppendErr())
			}
			got, tail := loaded(t, path)
			if tail != nil {
				t.Fatal(tail)
			}
			sameSet(t, st.Load(), got.Load())
		})
	}
}

// TestStateFileAfterATornLoad: after a LoadFile that left a tail out (a crash during an append),
// a StateFile of that path reports the file as having more than its set (Appended), and Compact
// writes the whole set although the set did not change; after one that also refused a hostname
// (a file of a newer version), Appended is false, so that the saver leaves the file as it is.
func TestStateFileAfterATornLoad(t *testing.T) {
	_, _, _, good := savedFile(t) // position 7: a and b
	withChange := appendTo(t, slices.Clone(good), delta(8, nil, cfg(t, "c.example.com", 8)))
	refused := appendTo(t, slices.Clone(good), delta(8, nil, unpreparable(t, "d.example.com", 8)))
	for _, tc := range []struct {
		name    string
		file    []byte
		compact bool // Appended
	}{
		{"torn", withChange[:len(withChange)-1], true},
		{"torn and refused", appendTo(t, slices.Clone(refused), delta(9, nil, cfg(t, "e.example.com", 9)))[:len(refused)+5], false},
	} {
		t.Run("ok/"+tc.name, func(t *testing.T) {
			path := writeTemp(t, t.TempDir(), tc.file)
			st := NewStore()
			var tail *TailError
			if err := st.LoadFile(path); !errors.As(err, &tail) {
				t.Fatalf("LoadFile = %v, want a tail left out", err)
			}
			f := st.StateFile(path)
			if f.Appended() != tc.compact {
				t.Fatalf("Appended() = %v", f.Appended())
			}
			if !tc.compact {
				return
			}
			if err := f.Compact(); err != nil {
				t.Fatal(err)
			}
			after := mustRead(t, path)
			if f.Appended() || len(after) != fileSizeOfSet(t, after) {
				t.Fatalf("Compact left the tail (%d bytes, the set's %d)", len(after), fileSizeOfSet(t, after))
			}
			got, tail := loaded(t, path)
			if tail != nil {
				t.Fatal(tail)
			}
			sameSet(t, st.Load(), got.Load())
			// The file written whole is then appended to.
			if err := st.Apply(delta(9, nil, cfg(t, "f.example.com", 9))); err != nil {
				t.Fatal(err)
			}
			if appended, err := f.Save(); err != nil || !appended {
				t.Fatalf("appended %v, %v", appended, err)
			}
		})
	}
}

// fileSizeOfSet returns the size of a file's set: its parts and trailer, before any change.
func fileSizeOfSet(t *testing.T, file []byte) int {
	t.Helper()
	r := &countReader{r: bufioReader(file)}
	if _, _, _, err := readSet(r, nil); err != nil {
		t.Fatal(err)
	}
	return int(r.n)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChangeFromAnotherFile: a change is valid only after what it was appended to; appended
// to another file's set (or after another change), it is a tail left out.
func TestChangeFromAnotherFile(t *testing.T) {
	_, dir, _, good := savedFile(t) // position 7: a and b
	change := delta(8, nil, cfg(t, "c.example.com", 8))
	mine := appendTo(t, slices.Clone(good), change)
	st := NewStore()
	if err := st.Apply(snapshot(7, cfg(t, "a.example.com", 7), cfg(t, "x.example.com", 7))); err != nil {
		t.Fatal(err)
	}
	var other bytes.Buffer
	if _, err := writeSet(&other, st.Load()); err != nil {
		t.Fatal(err)
	}
	spliced := slices.Concat(other.Bytes(), mine[len(good):])
	got, tail := loaded(t, writeTemp(t, dir, spliced))
	if tail == nil || tail.Offset != int64(other.Len()) || !strings.Contains(tail.Error(), "not of this file") {
		t.Fatalf("a change of another file: tail %v", tail)
	}
	sameSet(t, st.Load(), got.Load())
	// The same change twice: the second does not chain from the first.
	twice := slices.Concat(mine, mine[len(good):])
	if _, tail := loaded(t, writeTemp(t, dir, twice)); tail == nil || tail.Changes != 1 {
		t.Fatalf("a change repeated: tail %v", tail)
	}
}

// TestLoadFileBoundsAChangesLength: a damaged length (here 128 MiB, with a few bytes after it) is
// not believed beyond the file's end: LoadFile leaves the tail out without allocating that much.
func TestLoadFileBoundsAChangesLength(t *testing.T) {
	_, dir, _, good := savedFile(t)
	file := append(binary.AppendUvarint(slices.Clone(good), 128<<20), "a few bytes"...)
	path := writeTemp(t, dir, file)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, tail := loaded(t, path)
	runtime.ReadMemStats(&after)
	if tail == nil || tail.Offset != int64(len(good)) {
		t.Fatalf("tail %v, want one from byte %d", tail, len(good))
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 16<<20 {
		t.Fatalf("LoadFile allocated %d bytes for a change whose length says 128 MiB in a file of %d", n, len(file))
	}
}
