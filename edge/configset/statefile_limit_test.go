package configset

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestStateFileChangeWithinReadLimit: a change too large for LoadFile to read as one message
// (maxChangeBytes) is not appended (it would be read as a cut tail, and left out with everything
// after it): the whole set is written instead.
func TestStateFileChangeWithinReadLimit(t *testing.T) {
	defer func(old, oldMax int64) { minAppendBytes, maxChangeBytes = old, oldMax }(minAppendBytes, maxChangeBytes)
	minAppendBytes = 1 << 20
	maxChangeBytes = 4 << 10
	path := filepath.Join(t.TempDir(), "c")
	st := NewStore()
	if err := st.Apply(snapshot(1, cfg(t, "a.example.com", 1))); err != nil {
		t.Fatal(err)
	}
	f := st.StateFile(path)
	if _, err := f.Save(); err != nil {
		t.Fatal(err)
	}
	var ups []*configv1.HostnameConfig
	for i := range 40 {
		ups = append(ups, cfg(t, fmt.Sprintf("h%02d.example.com", i), 2))
	}
	if err := st.Apply(delta(2, nil, ups...)); err != nil {
		t.Fatal(err)
	}
	if appended, err := f.Save(); err != nil || appended {
		t.Fatalf("a change of %d hostnames: appended %v, %v; want the whole set written", len(ups), appended, err)
	}
	got := NewStore()
	if err := got.LoadFile(path); err != nil {
		var tail *TailError
		errors.As(err, &tail)
		t.Fatalf("LoadFile: %v (tail %v)", err, tail)
	}
	sameSet(t, st.Load(), got.Load())
	// A small change is still appended.
	if err := st.Apply(delta(3, []string{"h01.example.com"})); err != nil {
		t.Fatal(err)
	}
	if appended, err := f.Save(); err != nil || !appended {
		t.Fatalf("a small change: appended %v, %v", appended, err)
	}
}
