package configset

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"weak"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/decision"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// SaveKind says what a StateFile's last Save or Compact wrote.
type SaveKind int

const (
	// SavedNothing: the file held the set already (or the call failed).
	SavedNothing SaveKind = iota
	// SavedChange: the change since the set the file held was appended.
	SavedChange
	// SavedWhole: the whole set was written.
	SavedWhole
)

// minAppendBytes is how many bytes of changes a StateFile appends, at least, before it writes
// the whole set again (see StateFile); tests lower it.
var minAppendBytes int64 = 1 << 20

// StateFile keeps the file at one path holding its Store's current set, for LoadFile, as Save does,
// at the cost of what changed rather than of the whole set. Its first Save writes the whole set
// (Store.Save), unless the Store's last LoadFile was of the same path and loaded all of it (no tail
// left out, no hostname refused, a file with its checksum trailer, which files written before
// trailers lack): the file then holds the set loaded, and the first Save appends to it. Each later
// Save appends the change from the set the file holds to the current one (the hostnames upserted
// and removed, and the new position and history token; see the file format, above Save), and syncs
// the file, so that a change to one hostname of a million writes a few hundred bytes, not the whole
// configuration. It writes the whole set again instead:
//
//   - when the changes appended would pass half the size of the whole set's part of the file, or
//     1 MiB if that is more: what is appended is then at most half the set (or 1 MiB), and
//     rewriting costs at most about twice what the changes do, so that a file kept current
//     through many changes neither grows without bound nor takes LoadFile much longer to read
//     than the set alone;
//   - when the change alone is longer than LoadFile reads as one (MaxPartBytes, as a part);
//   - when the change cannot be told as one (the set's position went back, for a history that
//     replaced the one the file holds, or its refused hostnames changed, since a change carries
//     no refusals);
//   - when the file is not the one it last wrote (replaced, of another size, or modified
//     since), or the append fails; an append that fails half way leaves a tail that LoadFile
//     leaves out (TailError), and the whole set written next replaces the file.
//
// A StateFile is used by one goroutine at a time, and no other writer (another StateFile or
// Store.Save) writes its path meanwhile.
type StateFile struct {
	st   *Store
	path string
	// saved is the set the file holds, as this StateFile wrote it (or LoadFile read it); nil
	// until its first Save.
	saved *Set
	// file is the file as this StateFile last wrote it, size its size then, and base the size of
	// the whole set's part (the changes appended since are size - base bytes); sum is the
	// checksum of its last trailer, from which the next change's is chained.
	file       os.FileInfo
	size, base int64
	sum        uint32
	// appendErr is why the last Save's append failed (the whole set was written instead).
	appendErr error
	// torn: the file ends with a tail the Store's LoadFile left out, and f has not written it
	// since.
	torn bool
	// last is what the last Save or Compact wrote.
	last SaveKind
}

// loadedFile is a file LoadFile loaded whole: it holds set (weakly: a Store that moved on does
// not keep it), and the rest is as in StateFile. Or, if torn, one it loaded leaving a tail out
// (and refusing no hostname), which holds no set known to a StateFile.
type loadedFile struct {
	path       string
	set        weak.Pointer[Set]
	file       os.FileInfo
	size, base int64
	sum        uint32
	torn       bool
}

// StateFile returns a StateFile keeping path current with st's set.
func (st *Store) StateFile(path string) *StateFile {
	f := &StateFile{st: st, path: path}
	st.mu.Lock()
	defer st.mu.Unlock()
	if l := st.loaded; l != nil && l.path == path {
		if l.torn {
			f.torn = true
		} else if set := l.set.Value(); set != nil {
			f.saved, f.file, f.size, f.base, f.sum = set, l.file, l.size, l.base, l.sum
		}
	}
	return f
}

// Appended reports whether the file holds changes appended after its whole set, or a tail the
// Store's last LoadFile (of the same path, refusing no hostname) left out, as far as f knows:
// what Compact would write away.
func (f *StateFile) Appended() bool { return f.torn || (f.saved != nil && f.size > f.base) }

// AppendErr returns why the last Save's append failed, nil if it did not (or none was tried).
// Save then wrote the whole set, and reported only whether that failed: the file is current, but
// an append that keeps failing (a disk that refuses writes at the file's end) costs a whole set
// each time.
func (f *StateFile) AppendErr() error { return f.appendErr }

// LastSave returns what the last Save or Compact wrote: SavedNothing before the first, and after
// one that failed or found the file current.
func (f *StateFile) LastSave() SaveKind { return f.last }

// Save brings the file up to the store's current set: nothing when the file holds it already,
// else the change since the set the file holds, appended, or the whole set, written (see
// StateFile). It reports whether it appended. A Save that fails leaves the file holding the set
// it held before or, after an append that failed half way, that set followed by a tail LoadFile
// leaves out; the next Save writes the whole set.
func (f *StateFile) Save() (appended bool, err error) {
	set := f.st.Load()
	if !set.Complete() {
		return false, errors.New("configset: nothing to save: no snapshot was applied yet")
	}
	f.appendErr, f.last = nil, SavedNothing
	if set == f.saved {
		return false, nil
	}
	if f.saved != nil && set.position >= f.saved.position && slices.Equal(set.refused, f.saved.refused) {
		// A change is at most maxChangeBytes, the most LoadFile reads as one: a longer one
		// would be read as a cut tail, and left out with everything after it.
		budget := min(max(f.base/2, minAppendBytes)-(f.size-f.base), maxChangeBytes)
		if rec, sum, ok := changeRecord(f.saved, set, f.sum, budget); ok {
			err := f.append(rec)
			if err == nil {
				f.saved, f.sum, f.last = set, sum, SavedChange
				return true, nil
			}
			// The whole set, written below, replaces the file whatever the append left.
			f.appendErr = err
		}
	}
	return false, f.saveWhole(set)
}

// Compact writes the whole set unless the file holds it already with no change appended, so
// that the file is one an edge of a version before changes were appended can read (Run of
// edge/watch does so as it returns).
func (f *StateFile) Compact() error {
	f.last = SavedNothing
	set := f.st.Load()
	if set == f.saved && f.size == f.base {
		return nil
	}
	if !set.Complete() {
		return errors.New("configset: nothing to save: no snapshot was applied yet")
	}
	return f.saveWhole(set)
}

// saveWhole writes the whole set.
func (f *StateFile) saveWhole(set *Set) error {
	f.saved = nil
	fi, sum, err := saveSet(f.path, set)
	if err != nil {
		return err
	}
	f.saved, f.file, f.size, f.base, f.sum, f.torn = set, fi, fi.Size(), fi.Size(), sum, false
	f.last = SavedWhole
	return nil
}

// append appends rec, the change from f.saved, to the file, and syncs it. It refuses a file that
// is not the one f last wrote, as it left it.
func (f *StateFile) append(rec []byte) (err error) {
	// Checked before opening too: opening something else planted there (a FIFO) could block.
	if fi, err := os.Lstat(f.path); err != nil {
		return fmt.Errorf("configset: append to %s: %w", f.path, err)
	} else if !fi.Mode().IsRegular() || !os.SameFile(fi, f.file) {
		return fmt.Errorf("configset: append to %s: the file is not the one last written (%v, replaced since)", f.path, fi.Mode())
	}
	file, err := os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("configset: append to %s: %w", f.path, err)
	}
	defer func() {
		if cerr := file.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("configset: append to %s: %w", f.path, cerr)
		}
	}()
	fi, err := file.Stat()
	switch {
	case err != nil:
		return fmt.Errorf("configset: append to %s: %w", f.path, err)
	case !os.SameFile(fi, f.file) || fi.Size() != f.size || !fi.ModTime().Equal(f.file.ModTime()):
		// The modification time catches a file rewritten in place to the same size since.
		return fmt.Errorf("configset: append to %s: the file is not the one last written (%d bytes modified %v; %d written, modified %v)",
			f.path, fi.Size(), fi.ModTime(), f.size, f.file.ModTime())
	}
	if _, err := file.Write(rec); err != nil {
		return fmt.Errorf("configset: append to %s: %w", f.path, err)
	}
	if err := file.Sync(); err != nil {
		return fmt.Errorf("configset: append to %s: %w", f.path, err)
	}
	f.size += int64(len(rec))
	if fi, err = file.Stat(); err == nil {
		f.file = fi
	} // else the next append finds the time changed, and the whole set is written
	return nil
}

// changeRecord returns the change from set old to set cur (of one Store) in the file format, its
// checksum chained from prev, and true, unless it is longer than budget bytes.
func changeRecord(old, cur *Set, prev uint32, budget int64) ([]byte, uint32, bool) {
	if budget <= 0 {
		return nil, 0, false
	}
	change := &configv1.WatchResponse{Position: cur.position, HistoryToken: cur.historyToken}
	size := int64(0)
	if !diff(old.root, cur.root, 0, func(h *decision.Hostname) bool {
		change.Upserts = append(change.Upserts, h.Config)
		size += int64(proto.Size(h.Config))
		return size <= budget
	}, func(name string) bool {
		change.Removals = append(change.Removals, name)
		size += int64(len(name))
		return size <= budget
	}) {
		return nil, 0, false
	}
	// The order of the tries' hashes is the Store's seed's: sorted, the file is the same for
	// the same change.
	slices.SortFunc(change.Upserts, func(a, b *configv1.HostnameConfig) int { return strings.Compare(a.GetHostname(), b.GetHostname()) })
	slices.Sort(change.Removals)
	rec, sum, err := appendChange(nil, prev, change)
	if err != nil || int64(len(rec)) > budget {
		return nil, 0, false
	}
	return rec, sum, true
}
