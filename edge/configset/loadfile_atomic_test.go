package configset

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// TestLoadFilePublishesOnce: LoadFile publishes the loaded set once, the changes applied: a
// reader of the store sees the set before or the set loaded, never the file's set before its
// changes (an older configuration: a hostname a later change removed or changed, still there),
// nor, for a file refused, any set of the file. A reader that misses the window cannot fail the
// test; one that sees a set of the file before LoadFile returns does.
func TestLoadFilePublishesOnce(t *testing.T) {
	_, dir, _, good := savedFile(t) // position 7: a and b
	file := slices.Clone(good)
	const changes = 3000
	for pos := uint64(8); pos < 8+changes; pos++ {
		file = appendTo(t, file, delta(pos, nil, cfg(t, "a.example.com", pos)))
	}
	okFile := writeTemp(t, dir, file)
	bad := appendTo(t, slices.Clone(file), delta(3, []string{"a.example.com"})) // position back
	badFile := filepath.Join(dir, "bad")
	if err := os.WriteFile(badFile, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		refuse bool
	}{{okFile, false}, {badFile, true}} {
		t.Run(fmt.Sprint("refused ", tc.refuse), func(t *testing.T) {
			st := NewStore()
			if err := st.Apply(snapshot(1, cfg(t, "keep.example.com", 1))); err != nil {
				t.Fatal(err)
			}
			before := st.Load()
			var stop atomic.Bool
			var seen []uint64 // positions other than before's, seen while LoadFile ran
			var wg sync.WaitGroup
			wg.Go(func() {
				for !stop.Load() {
					if s := st.Load(); s != before && !stop.Load() {
						seen = append(seen, s.Position())
						if len(seen) > 100 {
							return
						}
					}
				}
			})
			err := st.LoadFile(tc.path)
			stop.Store(true)
			wg.Wait()
			if tc.refuse != (err != nil) {
				t.Fatalf("LoadFile: %v", err)
			}
			last := uint64(8 + changes - 1)
			if tc.refuse {
				if st.Load() != before {
					t.Fatal("the set changed")
				}
				if len(seen) > 0 {
					t.Fatalf("while a refused file was loaded, readers saw sets of it at positions %v", seen[:min(len(seen), 5)])
				}
				return
			}
			if st.Load().Position() != last {
				t.Fatalf("loaded at position %d, want %d", st.Load().Position(), last)
			}
			for _, p := range seen {
				if p != last {
					t.Fatalf("while the file was loaded, readers saw the set at position %d, before its changes to %d", p, last)
				}
			}
		})
	}
}
