package configset

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"weak"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// The file that Save writes and LoadFile reads is the set as the Watch stream would send it: one
// snapshot, in parts. It is a sequence of guestlist.config.v1.WatchResponse messages, each
// preceded by its length in bytes as a protobuf varint (the framing of
// google.golang.org/protobuf/encoding/protodelim, and of Java's writeDelimitedTo). Every part has
// the set's position and snapshot = true; the upserts are ordered by hostname and split into
// parts of about partBytes; more = true on every part but the last. A set without hostnames is
// one part without upserts. A file whose last part has more = true is truncated, and refused.
//
// The last part's removals, meaningless in a snapshot, list the hostnames the set left out
// (Set.Refused), so that an edge restarted from the file still knows it lacks them.
//
// Every part carries the set's history token (Set.HistoryToken) in history_token; a file written
// before tokens has none, and is read as a set without one. replaces_history is never written,
// and ignored when read.
//
// After the last part comes a trailer: trailerMagic and the CRC-32C (Castagnoli, big-endian) of
// every byte before the trailer. A file damaged on disk is refused even where its bytes still
// parse (one flipped bit turns the mode ENFORCE into REPORT, which forwards every request). A file
// that ends right after its last part was written before the trailer existed and is read without
// the check; anything else after the last part but a trailer is refused.
//
// After the trailer, a file may hold changes ([StateFile] appends them, so that keeping the file
// current costs what changed, not the whole set): each is one guestlist.config.v1.WatchResponse
// as the Watch stream sends a change (snapshot = false, more = false, its position and history
// token, the hostnames upserted and removed since the content before it), framed as the parts
// are, followed by trailerMagic and a CRC-32C of the change's bytes (its length and message),
// chained: computed from the checksum before it (the set's trailer's, or the previous change's)
// as crc32.Update does, so that a change is valid only where it was appended, not after another
// file's set or change (a block of an older file that a crash might leave in view).
// LoadFile applies them in order. A change cut short or whose checksum does not match is where a
// crash interrupted an append (or where the file was damaged since): LoadFile loads the set as
// it stood before it and reports the rest as a *TailError. A change whose checksum matches but
// that is not a change of the set, or cannot be applied to it, was written wrong: the file is
// refused. Versions before changes were appended refuse a file that has any.
const (
	// partBytes is the size at which Save starts a new part.
	partBytes = 1 << 20
	// trailerMagic starts the trailer. Its first byte is no valid protobuf tag (wire type 7), so
	// the trailer cannot be read as part of a message.
	trailerMagic = "\x07glcrc32c"
)

// MaxPartBytes bounds one encoded part of a response: one part of the file when LoadFile reads it,
// and one message of the Watch stream when the edge receives it (edge/watch). One hostname's
// configuration may be large (a CA with many revocations: about 21,000 take 4 MiB), and the
// ConfigService sends a configuration larger than its part size alone, in one message.
const MaxPartBytes = 1 << 28

// maxChangeBytes bounds the message of one change appended after the set: MaxPartBytes, as for
// a part; tests lower it.
var maxChangeBytes int64 = MaxPartBytes

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Save writes the current set to path, atomically: to a temporary file in the same directory,
// synced, renamed over path, and the directory synced, so that path holds either the previous
// file or the new one, whole, even after a crash. The file is readable by its owner only. Save
// refuses a set that is not complete (no snapshot applied yet). It may run concurrently with Apply
// (it saves the set current when it starts).
//
// The temporary file is always the same, "."+base(path)+".tmp": a crash during a Save leaves at
// most that one file, as large as the configuration, and the next Save removes it and creates it
// afresh (never through a symbolic link, whatever its mode or owner was), so that a crash loop
// cannot fill the disk. Saves of one path must not run concurrently (the watch's saver makes them
// one at a time; two edges do not share a data directory).
func (st *Store) Save(path string) error {
	_, _, err := saveSet(path, st.Load())
	return err
}

// saveSet is Save of set, which it returns the file of (as written: its size is the file's), and
// the checksum of its trailer.
func saveSet(path string, set *Set) (_ os.FileInfo, sum uint32, err error) {
	if !set.Complete() {
		return nil, 0, errors.New("configset: nothing to save: no snapshot was applied yet")
	}
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("configset: save: remove the leftover temporary file: %w", err)
	}
	// O_EXCL: a file (or symbolic link) put there since is not written through.
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("configset: save: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("configset: save %s: %w", path, err)
		}
	}()
	if sum, err = writeSet(f, set); err != nil {
		return nil, 0, err
	}
	if err := f.Sync(); err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if err := f.Close(); err != nil {
		return nil, 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, 0, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, 0, err
	}
	defer d.Close()
	return fi, sum, d.Sync()
}

// writeSet writes set in the file format, and returns the checksum of its trailer.
func writeSet(w io.Writer, set *Set) (uint32, error) {
	configs := make([]*configv1.HostnameConfig, 0, set.Len())
	for _, h := range set.All() {
		configs = append(configs, h.Config)
	}
	slices.SortFunc(configs, func(a, b *configv1.HostnameConfig) int { return strings.Compare(a.GetHostname(), b.GetHostname()) })
	sum := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, sum), 1<<20)
	opts := protodelim.MarshalOptions{MarshalOptions: proto.MarshalOptions{Deterministic: true}}
	part := &configv1.WatchResponse{Position: set.Position(), Snapshot: true, HistoryToken: set.historyToken}
	size := 0
	flush := func(more bool) error {
		part.More = more
		if _, err := opts.MarshalTo(bw, part); err != nil {
			return err
		}
		part.Upserts, size = part.Upserts[:0], 0
		return nil
	}
	for _, c := range configs {
		if len(part.Upserts) > 0 && size >= partBytes {
			if err := flush(true); err != nil {
				return 0, err
			}
		}
		part.Upserts = append(part.Upserts, c)
		size += proto.Size(c)
	}
	part.Removals = set.refused
	if err := flush(false); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	_, err := w.Write(binary.BigEndian.AppendUint32([]byte(trailerMagic), sum.Sum32()))
	return sum.Sum32(), err
}

// LoadFile replaces the current set with the one saved in path by Save (and the changes a
// StateFile appended to it), as Apply applies a snapshot then changes: the saved position must
// not be behind the current one, and a hostname whose configuration this version cannot prepare
// (a file written by a newer edge) is left out, kept in Set.Refused with those the saved set had
// left out, and named by a returned *RefusedError, the set being loaded. Changes at the end of the
// file that cannot be read (a crash while one was appended) are left out, the set being loaded as
// it stood before them, and reported by a returned *TailError; when both happen, the error
// returned joins the two. Any other problem (a damaged file) leaves the current set as it is and
// is returned. A missing file is not an error: the set stays as it is (empty, on a new Store).
// The set loaded is published once, its changes applied: readers never see a set of the file
// before its last change, nor any of a file refused.
func (st *Store) LoadFile(path string) error {
	// Whatever this load finds, the file an earlier one loaded is no longer known to hold its set
	// (this one may fail because the file was damaged since, or find it gone): only a load that
	// succeeds whole, below, lets a StateFile append to its file.
	st.mu.Lock()
	st.loaded = nil
	st.mu.Unlock()
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("configset: load: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("configset: load: %w", err)
	}
	// Each part is prepared as soon as it is read, so that its copies of shared lists are garbage
	// at once (see Store.Prepare), on another goroutine while the next part is read.
	prep := st.NewPartPreparer()
	r := &countReader{r: bufio.NewReaderSize(f, 1<<20)}
	// The preparer gets copies of the parts' lists of upserts: it may replace upserts in the
	// lists it is given (Store.Prepare) while readSet joins the parts it read.
	resp, sum, trailer, err := readSet(r, func(part *configv1.WatchResponse) { prep.Add(slices.Clone(part.GetUpserts())) })
	prepared := prep.Wait()
	if err != nil {
		return fmt.Errorf("configset: load %s: %w", path, err)
	}
	base := r.n
	st.mu.Lock()
	defer st.mu.Unlock()
	refused := resp.Removals
	resp.Removals = nil
	resp.ReplacesHistory = false // a file never moves the set back
	// The set is published once, with the changes applied: readers never see the file's set
	// without its later changes (an older configuration), nor any set of a file refused.
	var partly []RefusedHostname
	set, err := st.applyTo(st.cur.Load(), resp, refused, prepared)
	if err != nil {
		var e *RefusedError
		if !errors.As(err, &e) {
			return fmt.Errorf("configset: load %s: %w", path, err)
		}
		partly = e.Refused
	}
	var tail *TailError
	for n := 0; ; n++ {
		at := r.n
		// A damaged length is not believed beyond the file's end.
		change, next, err := readChange(r, sum, min(maxChangeBytes, fi.Size()-at))
		if err == io.EOF {
			break
		}
		if err != nil {
			tail = &TailError{Path: path, Offset: at, Changes: n, Position: set.Position(), Err: err}
			break
		}
		if change.GetSnapshot() || change.GetMore() || change.GetReplacesHistory() {
			return fmt.Errorf("configset: load %s: the change at byte %d is not a change (snapshot %v, more %v, replaces_history %v)",
				path, at, change.GetSnapshot(), change.GetMore(), change.GetReplacesHistory())
		}
		applied, err := st.applyTo(set, change, nil, nil)
		if err != nil {
			var e *RefusedError
			if !errors.As(err, &e) {
				return fmt.Errorf("configset: load %s: the change at byte %d: %w", path, at, err)
			}
			partly = append(partly, e.Refused...)
		}
		set, sum = applied, next
	}
	st.cur.Store(set)
	st.loaded = nil
	switch {
	case trailer && tail == nil && len(partly) == 0:
		// The file holds exactly this set: a StateFile of path may append to it.
		st.loaded = &loadedFile{path: path, set: weak.Make(set), file: fi, size: r.n, base: base, sum: sum}
	case tail != nil && len(partly) == 0:
		// The file ends with a tail left out: a StateFile of path compacts it (see Appended).
		st.loaded = &loadedFile{path: path, torn: true}
	}
	var errs []error
	if len(partly) > 0 {
		errs = append(errs, &RefusedError{Position: set.Position(), Refused: partly})
	}
	if tail != nil {
		errs = append(errs, tail)
	}
	return errors.Join(errs...)
}

// TailError is LoadFile's report of changes at the end of a file that it could not read: one cut
// short, or whose checksum does not match, and everything after it. They were appended last (by
// a StateFile), so this is where a crash interrupted an append, or where the file was damaged
// since; the set is loaded as it stood before them, at Position, which the control plane then
// brings up to date as it would an edge that had been stopped there.
type TailError struct {
	// Path is the file's.
	Path string
	// Offset is where the first change left out starts, in bytes from the file's start.
	Offset int64
	// Changes is how many changes before it were applied.
	Changes int
	// Position is the loaded set's.
	Position uint64
	// Err is what is wrong with the change at Offset.
	Err error
}

// Error says where the changes left out start and at which position the set was loaded.
func (e *TailError) Error() string {
	return fmt.Sprintf("configset: load %s: the changes from byte %d on were left out (%v); loaded the set at position %d, after %d change(s)",
		e.Path, e.Offset, e.Err, e.Position, e.Changes)
}

// Unwrap returns Err.
func (e *TailError) Unwrap() error { return e.Err }

// readSet reads a file written by writeSet, checks its trailer and joins its parts, leaving r
// after the trailer (at the changes a StateFile appended, if any); it returns the trailer's
// checksum and whether there was one (a file written before trailers has none, nor changes).
// each, when not nil, is called with every part once it is read.
func readSet(r protodelim.Reader, each func(*configv1.WatchResponse)) (_ *configv1.WatchResponse, sum uint32, trailed bool, err error) {
	opts := protodelim.UnmarshalOptions{MaxSize: MaxPartBytes}
	sr := &sumReader{r: r}
	var parts []*configv1.WatchResponse
	for {
		part := &configv1.WatchResponse{}
		err := opts.UnmarshalFrom(sr, part)
		if err == io.EOF { // no byte read: the end of the file, between parts
			break
		}
		if err != nil {
			return nil, 0, false, fmt.Errorf("part %d: %w", len(parts), err)
		}
		if !part.GetSnapshot() {
			return nil, 0, false, fmt.Errorf("part %d is not a snapshot", len(parts))
		}
		if len(parts) > 0 {
			if err := CheckPart(parts[0], part, len(parts)); err != nil {
				return nil, 0, false, err
			}
		}
		parts = append(parts, part)
		if each != nil {
			each(part)
		}
		if !part.GetMore() {
			break
		}
	}
	if len(parts) == 0 {
		return nil, 0, false, errors.New("the file is empty")
	}
	trailer := make([]byte, len(trailerMagic)+4)
	switch n, err := io.ReadFull(r, trailer); {
	case n == 0 && errors.Is(err, io.EOF):
		// No trailer: written before there was one.
	case n == len(trailer) && string(trailer[:len(trailerMagic)]) == trailerMagic:
		if want := binary.BigEndian.Uint32(trailer[len(trailerMagic):]); want != sr.crc {
			return nil, 0, false, fmt.Errorf("the file is damaged: its checksum is %08x, its content's %08x", want, sr.crc)
		}
		trailed = true
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
		return nil, 0, false, fmt.Errorf("read the trailer: %w", err)
	default:
		return nil, 0, false, errors.New("data after the last part (more = false) that is not a whole trailer: the file is truncated or damaged")
	}
	resp, err := Merge(parts...)
	if err != nil {
		return nil, 0, false, err
	}
	return resp, sr.crc, trailed, nil
}

// appendChange appends to b a change in the file format, framed, then its trailer, whose
// checksum is chained from prev (the checksum of the trailer before it in the file), and returns
// the checksum.
func appendChange(b []byte, prev uint32, change *configv1.WatchResponse) ([]byte, uint32, error) {
	start := len(b)
	b = protowire.AppendVarint(b, uint64(proto.Size(change)))
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, change)
	if err != nil {
		return nil, 0, err
	}
	sum := crc32.Update(prev, castagnoli, b[start:])
	return binary.BigEndian.AppendUint32(append(b, trailerMagic...), sum), sum, nil
}

// readChange reads one change appended after a file's set, of at most maxSize bytes, and checks
// its trailer, whose checksum is chained from prev; it returns the change and that checksum, or
// io.EOF at the end of the file (before any byte of a change).
func readChange(r protodelim.Reader, prev uint32, maxSize int64) (*configv1.WatchResponse, uint32, error) {
	sr := &sumReader{r: r, crc: prev}
	change := &configv1.WatchResponse{}
	if err := (protodelim.UnmarshalOptions{MaxSize: max(maxSize, 1)}).UnmarshalFrom(sr, change); err != nil {
		if err == io.EOF {
			return nil, 0, io.EOF
		}
		return nil, 0, fmt.Errorf("the change does not read: %w", err)
	}
	trailer := make([]byte, len(trailerMagic)+4)
	if _, err := io.ReadFull(r, trailer); err != nil {
		return nil, 0, fmt.Errorf("the change's trailer does not read: %w", err)
	}
	if string(trailer[:len(trailerMagic)]) != trailerMagic {
		return nil, 0, errors.New("the change is not followed by its trailer")
	}
	if want := binary.BigEndian.Uint32(trailer[len(trailerMagic):]); want != sr.crc {
		return nil, 0, fmt.Errorf("the change is damaged, or not of this file: its checksum is %08x, its content's %08x", want, sr.crc)
	}
	return change, sr.crc, nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r protodelim.Reader
	n int64
}

// Read implements io.Reader.
func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// ReadByte implements io.ByteReader.
func (c *countReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// sumReader computes the CRC-32C of what is read through it.
type sumReader struct {
	r   protodelim.Reader
	crc uint32
	one [1]byte
}

// Read implements io.Reader.
func (s *sumReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.crc = crc32.Update(s.crc, castagnoli, p[:n])
	return n, err
}

// ReadByte implements io.ByteReader.
func (s *sumReader) ReadByte() (byte, error) {
	b, err := s.r.ReadByte()
	if err == nil {
		s.one[0] = b
		s.crc = crc32.Update(s.crc, castagnoli, s.one[:])
	}
	return b, err
}
