//go:build unix

package configset

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestStateFileDoesNotOpenAPlantedFIFO: a FIFO put in the file's place is not opened to append
// to (opening it would block until something reads it): the whole set is written over it.
func TestStateFileDoesNotOpenAPlantedFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c")
	st := NewStore()
	if err := st.Apply(snapshot(10, cfg(t, "a.example.com", 10))); err != nil {
		t.Fatal(err)
	}
	f := st.StateFile(path)
	if _, err := f.Save(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("no FIFO here: %v", err)
	}
	if err := st.Apply(delta(11, nil, cfg(t, "b.example.com", 11))); err != nil {
		t.Fatal(err)
	}
	if appended, err := f.Save(); err != nil || appended || f.AppendErr() == nil {
		t.Fatalf("appended %v, %v, append error %v; want the append refused and the whole set written", appended, err, f.AppendErr())
	}
	got, tail := loaded(t, path)
	if tail != nil {
		t.Fatal(tail)
	}
	sameSet(t, st.Load(), got.Load())
}
