// Package boltcheck checks a bbolt file (go.etcd.io/bbolt v1.4) for damage before bbolt opens it,
// so that a damaged file (disk corruption, a truncated copy, a bad restore) is an error that names
// the file and says what to do, instead of a crash of the whole process.
//
// # Why bbolt cannot be left to find the damage
//
// A file written with NoFreelistSync (the event store's and the projector's) has no stored free
// list, and bbolt rebuilds it at every read-write open by walking every page reachable from the
// meta page ((*DB).freepages). That walk reports what it finds wrong (a page of the wrong type, a
// page referenced twice, keys out of order) by panicking in a goroutine of its own, which no caller
// can recover. On its way it follows page ids it has not checked: a page id past the file reads
// past the memory map, which faults (SIGBUS, SIGSEGV: fatal) or reads other memory and panics in
// the caller's goroutine, leaving the file open and locked. Later reads of a damaged page panic or
// fault the same way inside transactions, also in files with a stored free list (the ledger's),
// which bbolt does not walk at open. (*Tx).Check does not help: it also runs in a goroutine of its
// own, and on a file without a stored free list it first runs that same freepages walk. Nor does a
// walk with bbolt's cursors under recover: cursors notice neither a page reached twice nor keys out
// of order, which bbolt's walk then panics about.
//
// # What Check does
//
// Check maps the file read-only and walks it itself, with Go's bounds-checked slices (never
// pointer arithmetic), so a damaged file can only make it return an error. It validates the meta
// pages and picks the one bbolt would (the valid one of the higher transaction id), checks that
// the file is as long as the pages that meta page counts, reads the stored free list if there is
// one, and walks every bucket's B+tree from the root, checking everything bbolt's freepages walk
// checks, so that walk then finds nothing to panic about:
//
//   - every page id it follows is a data page below the high-water mark, and so are the page's
//     overflow pages;
//   - the page's header names that page (a page overwritten or misplaced says another id);
//   - no page is reached twice, and no page in use is in the stored free list;
//   - a bucket's pages are branch or leaf pages; an inline bucket's page is a leaf without buckets;
//   - every element, key and value lies within its page, keys are not empty, and keys are in
//     order within each page and between a branch element and its child's keys;
//   - a bucket value is at least a bucket header long.
//
// A panic during the walk is recovered, and debug.SetPanicOnFault turns a fault on the mapping
// (only possible if the file shrinks while it is checked) into one; both are errors, never a
// crash. Open takes a shared lock on the file (a read-only bolt.Open, which maps it and validates
// the meta pages but loads no free list and starts no goroutine) for the duration of the check,
// so a file that another process holds is refused as bolt.Open would (bolt.ErrTimeout), not
// reported as damaged while it is being written.
//
// When the meta page with the higher transaction id is invalid and the other one valid, bbolt
// falls back to the other one, which loses the last transaction; that is not damage (bbolt
// rewrites the invalid page with its next commit), and Open logs it as a warning
// (Report.MetaFallback).
//
// What Check does not do: it does not read values (the stores check their own records), it does
// not report pages that are neither reachable nor free (space lost, not a danger), and it checks
// the file as it is when opened: damage done to it while it is open is not caught.
//
// # Cost
//
// The walk reads every page in use, the pages bbolt's own walk reads right after it. For an event
// store of 1,000,000 events (a 507 MB file), the check takes 0.18 s when the file is in the page
// cache, about 60% of bbolt's read-write open (0.31 s): the store's Open goes from 0.31 s to 0.49 s.
// Read from disk it is the other way round: bbolt maps the file with MADV_RANDOM, so its walk reads
// it one page fault at a time (9.4 s), while the check's mapping keeps the kernel's read-ahead
// (0.6 s) and leaves the pages cached for bbolt's walk: the store's Open takes 0.9 s instead of
// 9.9 s. See docs/benchmarks.md, "Opening a bbolt file: the damage check". The check runs at every
// open, not only when a cheaper signal says the file may be damaged: bbolt's walk crashes on any
// damage it meets, and the damage that gives no cheaper signal (a flipped bit, a bad sector) is
// exactly what a check skipped on such a signal would leave to crash the process.
package boltcheck

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// ErrDamaged is wrapped by the error of a file that Check finds damaged (test with errors.Is; the
// error is a *DamageError).
var ErrDamaged = errors.New("the file is damaged")

// DefaultHint is what a DamageError tells to do unless WithHint says otherwise.
const DefaultHint = `restore it from a backup (see "Damaged files" in docs/storage.md)`

// DamageError is the error of a damaged file: which file, the first problem found, and what to
// do. It wraps ErrDamaged.
type DamageError struct {
	// Path is the file's path.
	Path string
	// Problem says what is wrong, starting with the page where it is when there is one
	// ("page 123: ...").
	Problem string
	// Hint says what to do.
	Hint string
}

// Error reads "events.db: the file is damaged (page 123: ...); restore it from a backup ...".
func (e *DamageError) Error() string {
	return fmt.Sprintf("%s: the file is damaged (%s); %s", filepath.Base(e.Path), e.Problem, e.Hint)
}

// Unwrap returns ErrDamaged.
func (e *DamageError) Unwrap() error { return ErrDamaged }

// Report describes a file that Check found undamaged.
type Report struct {
	// Txid is the transaction id of the meta page in use.
	Txid uint64
	// Pages is the file's high-water mark: the number of pages it holds, in use or free.
	Pages uint64
	// InUse is the number of pages reached from the meta page (meta pages, the stored free list,
	// and every bucket's pages, with their overflow pages).
	InUse uint64
	// Buckets, Branches, Leaves and Keys count what the walk went through (Keys includes the
	// entries that are buckets).
	Buckets, Branches, Leaves, Keys uint64
	// MetaFallback, when not empty, says that one meta page is invalid and which one bbolt uses.
	MetaFallback string
}

// Option configures Check and Open.
type Option func(*config)

type config struct {
	hint string
	log  *slog.Logger
}

// WithHint sets what a DamageError tells to do about the file (default DefaultHint).
func WithHint(hint string) Option {
	return func(c *config) {
		if hint != "" {
			c.hint = hint
		}
	}
}

// WithLogger sets where Open reports a meta page fallback (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.log = l
		}
	}
}

func newConfig(opts []Option) config {
	c := config{hint: DefaultHint}
	for _, o := range opts {
		o(&c)
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	return c
}

// Check reads the bbolt file at path and returns what it found, or a *DamageError (wrapping
// ErrDamaged) for the first damage found. It never writes to the file and takes no lock: use Open,
// or hold the file otherwise, if another process may be writing it. Other errors (the file cannot
// be read) are returned wrapped with the path.
func Check(path string, opts ...Option) (Report, error) {
	cfg := newConfig(opts)
	return check(path, cfg)
}

func check(path string, cfg config) (rep Report, err error) {
	f, err := os.Open(path)
	if err != nil {
		return Report{}, fmt.Errorf("boltcheck: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Report{}, fmt.Errorf("boltcheck: %w", err)
	}
	data, unmap, err := mapFile(f, fi.Size())
	if err != nil {
		return Report{}, fmt.Errorf("boltcheck: %s: %w", path, err)
	}
	defer func() {
		if uerr := unmap(); uerr != nil && err == nil {
			err = fmt.Errorf("boltcheck: %s: unmap: %w", path, uerr)
		}
	}()
	// The walk is bounds-checked: a panic here is a bug of the walk, or a fault because the file
	// shrank while mapped. Either way the file is not opened, and the process goes on.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			rep, err = Report{}, fmt.Errorf("boltcheck: %s: the check failed (did the file change while it was read?): %v", path, r)
		}
	}()
	w := &walker{data: data, rep: &rep}
	if werr := w.run(); werr != nil {
		var p *problem
		if errors.As(werr, &p) {
			return Report{}, &DamageError{Path: path, Problem: p.msg, Hint: cfg.hint}
		}
		return Report{}, fmt.Errorf("boltcheck: %s: %w", path, werr)
	}
	return rep, nil
}

// Open opens the bbolt file at path as bolt.Open(path, mode, options) does, after checking it with
// Check: a damaged file is a *DamageError, and bbolt never opens it. A missing or empty file is not
// checked (bbolt creates it). The check holds a shared lock on the file, taken by a read-only
// bolt.Open with options.Timeout: a file that another process holds is bolt.ErrTimeout, as from
// bolt.Open. A meta page fallback (Report.MetaFallback) is logged as a warning.
func Open(path string, mode os.FileMode, options *bolt.Options, opts ...Option) (*bolt.DB, error) {
	cfg := newConfig(opts)
	fi, err := os.Stat(path)
	if err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
		if err := checkLocked(path, mode, options, cfg); err != nil {
			return nil, err
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return bolt.Open(path, mode, options)
}

// checkLocked runs the check while a read-only bolt.DB holds a shared lock on the file.
func checkLocked(path string, mode os.FileMode, options *bolt.Options, cfg config) error {
	ro := &bolt.Options{ReadOnly: true}
	if options != nil {
		ro.Timeout = options.Timeout
		ro.OpenFile = options.OpenFile
	}
	db, err := bolt.Open(path, mode, ro)
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) || errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrNotExist) {
			return err
		}
		// bbolt refused the file (both meta pages invalid, too short): say what is wrong with it.
		// No other process holds the file: bbolt got its lock before it refused.
		if _, cerr := check(path, cfg); cerr != nil {
			return cerr
		}
		return err
	}
	rep, cerr := check(path, cfg)
	if err := db.Close(); err != nil && cerr == nil {
		cerr = fmt.Errorf("boltcheck: %s: close after the check: %w", path, err)
	}
	if cerr != nil {
		return cerr
	}
	if rep.MetaFallback != "" {
		cfg.log.Warn("boltcheck: "+rep.MetaFallback, "path", path)
	}
	return nil
}
