package configset

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// FuzzLoadFile: LoadFile of arbitrary bytes does not panic, and a file it loads is one that Save
// writes back in a form that loads to the same set (position, history token, the hostnames'
// configurations, the refused hostnames) and saves to the same bytes again. A loaded file that
// carries the checksum trailer, once any one of its bytes is changed, is refused, or loads only
// what comes before the change it damaged (a TailError at or before the byte). A StateFile of a
// file loaded with no tail left out (appending to it if it was loaded whole) keeps it loading to
// the set after a change.
func FuzzLoadFile(f *testing.F) {
	st := NewStore()
	if err := st.Apply(&configv1.WatchResponse{Position: 7, Snapshot: true, HistoryToken: []byte("tok"),
		Upserts: []*configv1.HostnameConfig{cfg(f, "a.example.com", 7), cfg(f, "b.example.com", 6)}}); err != nil {
		f.Fatal(err)
	}
	var good bytes.Buffer
	if _, err := writeSet(&good, st.Load()); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes(), uint16(0), byte(0))
	f.Add(good.Bytes(), uint16(40), byte(1))
	f.Add(good.Bytes()[:good.Len()-len(trailerMagic)-4], uint16(3), byte(0x80))
	st2 := NewStore()
	_ = st2.Apply(&configv1.WatchResponse{Position: 3, Snapshot: true, Upserts: []*configv1.HostnameConfig{unpreparable(f, "c.example.com", 2)}})
	var refused bytes.Buffer
	if _, err := writeSet(&refused, st2.Load()); err != nil {
		f.Fatal(err)
	}
	f.Add(refused.Bytes(), uint16(9), byte(4))
	f.Add([]byte{}, uint16(0), byte(0))
	// A file with changes appended, as a StateFile writes it.
	withChanges := bytes.Clone(good.Bytes())
	for _, c := range []*configv1.WatchResponse{
		{Position: 8, HistoryToken: []byte("tok8"), Upserts: []*configv1.HostnameConfig{cfg(f, "c.example.com", 8)}},
		{Position: 9, Removals: []string{"a.example.com"}},
	} {
		withChanges = appendTo(f, withChanges, c)
	}
	f.Add(withChanges, uint16(0), byte(0))
	f.Add(withChanges, uint16(good.Len()+20), byte(2))
	f.Add(withChanges[:len(withChanges)-3], uint16(0), byte(0))
	dir := f.TempDir()
	// load loads data; a file loaded in part (hostnames refused, a tail left out) is loaded, and
	// the TailError returned.
	load := func(data []byte) (*Store, *TailError, error) {
		p := filepath.Join(dir, "in")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			f.Fatal(err)
		}
		st := NewStore()
		err := st.LoadFile(p)
		var partly *RefusedError
		var tail *TailError
		if errors.As(err, &tail) || errors.As(err, &partly) {
			err = nil
		}
		return st, tail, err
	}
	save := func(st *Store) []byte {
		var b bytes.Buffer
		if _, err := writeSet(&b, st.Load()); err != nil {
			f.Fatal(err)
		}
		return b.Bytes()
	}
	f.Fuzz(func(t *testing.T, data []byte, at uint16, xor byte) {
		st, tail, err := load(data)
		if err != nil {
			if st.Load().Complete() || st.Load().Len() != 0 {
				t.Fatalf("a refused file (%v) changed the set", err)
			}
			return
		}
		if !st.Load().Complete() {
			t.Fatal("a loaded set is not complete")
		}
		if set := st.Load(); tail == nil && set.Position() < 1<<62 {
			// A StateFile of a file loaded with no tail left out (appending to it, if no
			// hostname was refused either) keeps it loading to the store's set after a change.
			st2 := NewStore()
			p := filepath.Join(dir, "in")
			_ = st2.LoadFile(p)
			if err := st2.Apply(&configv1.WatchResponse{Position: set.Position() + 1, HistoryToken: []byte("next")}); err != nil {
				t.Fatal(err)
			}
			if _, err := st2.StateFile(p).Save(); err != nil {
				t.Fatal(err)
			}
			again := NewStore()
			if err := again.LoadFile(p); err != nil {
				var partly *RefusedError
				if !errors.As(err, &partly) {
					t.Fatalf("the file a StateFile kept after LoadFile: %v", err)
				}
			}
			if a, b := st2.Load(), again.Load(); a.Position() != b.Position() || a.Len() != b.Len() || !slices.Equal(a.Refused(), b.Refused()) {
				t.Fatalf("the file a StateFile kept after LoadFile: position %d/%d, %d/%d hostnames, refused %q/%q",
					a.Position(), b.Position(), a.Len(), b.Len(), a.Refused(), b.Refused())
			}
		}
		saved := save(st)
		again, tail, err := load(saved)
		if err != nil || tail != nil {
			t.Fatalf("the file saved from a loaded one does not load whole: %v, %v", err, tail)
		}
		a, b := st.Load(), again.Load()
		if a.Position() != b.Position() || !bytes.Equal(a.HistoryToken(), b.HistoryToken()) || a.Len() != b.Len() {
			t.Fatalf("round trip: position %d/%d, token %q/%q, %d/%d hostnames", a.Position(), b.Position(), a.HistoryToken(), b.HistoryToken(), a.Len(), b.Len())
		}
		for name, h := range a.All() {
			h2, ok := b.Lookup(name)
			if !ok || !proto.Equal(h.Config, h2.Config) {
				t.Fatalf("round trip: %s differs", name)
			}
		}
		ra, rb := slices.Sorted(slices.Values(a.Refused())), slices.Sorted(slices.Values(b.Refused()))
		if !slices.Equal(ra, rb) {
			t.Fatalf("round trip: refused %q, then %q", ra, rb)
		}
		if !bytes.Equal(save(again), saved) {
			t.Fatal("saving the loaded set again gives other bytes")
		}
		// A checksummed file damaged in one byte is refused.
		n := len(trailerMagic) + 4
		if xor == 0 || len(data) < n || !bytes.Equal(data[len(data)-n:len(data)-4], []byte(trailerMagic)) {
			return
		}
		damaged := bytes.Clone(data)
		i := int(at) % len(damaged)
		damaged[i] ^= xor
		if _, tail, err := load(damaged); err == nil && (tail == nil || tail.Offset > int64(i)) {
			t.Fatalf("byte %d changed (^%#x), the file still loads (left out: %v)", i, xor, tail)
		}
	})
}
