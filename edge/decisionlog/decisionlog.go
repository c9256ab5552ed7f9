// Package decisionlog writes the edge's decision log: one JSON object per line for every decision,
// with exactly these fields (PRODUCT.md, "Decisions at the edge"):
//
//	{"time":"2026-11-30T12:00:00.123456Z","edge_id":"edge-1","decision_id":"0190f0c1a2b3...",
//	 "tenant_id":"acme","hostname":"pay.example.com","config_revision":42,"mode":"enforce",
//	 "verdict":"deny","reason":"cert_revoked","rule":"",
//	 "cert":{"presented":true,"verified":false,"fingerprint_sha256":"…","serial_number":"…",
//	         "subject":"CN=device-1","issuer":"CN=Acme Devices CA","not_after":"2027-01-01T00:00:00Z"},
//	 "request":{"method":"GET","path":"/v1/pay"}}
//
// (shown wrapped here; each entry is a single line). Times are RFC 3339 in UTC with up to
// nanosecond precision; cert.not_after is null when no certificate was presented. Strings that
// are unknown are empty, never absent. mode is "off", "enforce" or "report"; verdict is "allow",
// "deny" or "report_deny".
//
// # Writing
//
// [Log.Write] encodes the entry on the caller's goroutine and appends it to an in-memory buffer
// under a mutex (a copy of a few hundred bytes); a background goroutine writes the buffer out when
// it holds 64 KiB or every [FlushInterval], whichever comes first, so the request path never waits
// for the disk. When the destination cannot keep up and 8 MiB are pending, Write blocks until the
// writer catches up: decisions are audit records and are not dropped. [Log.Flush] writes out
// everything written before it; [Log.Close] flushes and closes the file opened by [Open].
//
// # Decision ids
//
// [NewID] returns 32 lower-case hexadecimal digits (16 bytes): 6 bytes of Unix time in
// milliseconds, then 4 random bytes chosen once per process, then a 6-byte counter that starts at a
// random value and increases with every id. Ids therefore sort by time (to the millisecond; within
// one process strictly in the order they were made, unless the clock steps back), never repeat
// within a process, and collide across processes only if two processes drew the same 80 random
// bits and their counters meet within the same millisecond.
package decisionlog

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// FlushInterval is the longest a written entry waits in memory before the writer writes it out.
const FlushInterval = 200 * time.Millisecond

const (
	kickBytes  = 64 << 10 // wake the writer once this much is pending
	maxPending = 8 << 20  // block writers beyond this
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("decisionlog: log is closed")

// Entry is one decision.
type Entry struct {
	// Time is when the decision was made.
	Time time.Time
	// EdgeID names the edge node.
	EdgeID string
	// DecisionID is the decision's id (see NewID); also sent to the origin and named in 403 bodies.
	DecisionID string
	// TenantID owns the hostname.
	TenantID string
	// Hostname is the normalised hostname (the connection's SNI).
	Hostname string
	// ConfigRevision is the event-store position of the edge's configuration at decision time.
	ConfigRevision uint64
	// Mode is "off", "enforce" or "report".
	Mode string
	// Verdict is "allow", "deny" or "report_deny".
	Verdict string
	// Reason says why.
	Reason string
	// Rule names the policy rule that decided, if any.
	Rule string
	// Cert describes the client certificate.
	Cert Cert
	// Request describes the request.
	Request Request
}

// Cert is the "cert" object of an entry.
type Cert struct {
	// Presented: the client sent a certificate.
	Presented bool
	// Verified: it verified against the hostname's CAs.
	Verified bool
	// FingerprintSHA256 is the certid form of the leaf's fingerprint, or "".
	FingerprintSHA256 string
	// SerialNumber is the certid form of the leaf's serial number, or "".
	SerialNumber string
	// Subject is the leaf's subject (RFC 2253 string form), or "".
	Subject string
	// Issuer is the leaf's issuer (RFC 2253 string form), or "".
	Issuer string
	// NotAfter is the leaf's expiry; zero is written as null.
	NotAfter time.Time
}

// Request is the "request" object of an entry.
type Request struct {
	// Method is the HTTP method.
	Method string
	// Path is the request path the decision saw (request.path: percent-decoded, without the query).
	Path string
}

// Log is a decision log. It is safe for concurrent use. A nil *Log discards entries.
type Log struct {
	mu      sync.Mutex
	drained *sync.Cond // signalled when buf was taken by the writer
	buf     []byte     // pending lines
	closed  bool
	err     error // first write error

	writeMu sync.Mutex // held while writing out; orders the writes of Flush and the writer
	spare   []byte     // reused buffer, guarded by writeMu
	w       io.Writer
	c       io.Closer

	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	scratch sync.Pool // *[]byte used to encode outside the lock
	lines   atomic.Uint64
}

// New returns a Log writing to w. Close it to stop its writer goroutine; Close does not close w.
func New(w io.Writer) *Log {
	return newLog(w, nil)
}

// Open returns a Log appending to the file at path, created with mode 0600 if needed, or writing
// to standard output when path is "-". Close closes the file (never standard output). A symbolic
// link at path is followed (an operator's --decision-log /dev/stdout); see OpenNoFollow for a path
// in a directory someone else could have put a link in.
func Open(path string) (*Log, error) {
	if path == "-" {
		return newLog(os.Stdout, nil), nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: open %s: %w", path, err)
	}
	return newLog(f, f), nil
}

// OpenNoFollow is Open, refusing a symbolic link at path instead of following it: whoever could
// put one in the log's directory would otherwise have the edge append to a file of their choosing
// (with the edge's rights). The file is opened through an [os.Root] on its directory, which opens
// the last component with O_NOFOLLOW on Unix and never leaves the directory, so a link swapped in
// at that moment cannot lead outside it either; one that leads to another file in the directory is
// refused right after.
func OpenNoFollow(path string) (*Log, error) {
	if path == "-" {
		return newLog(os.Stdout, nil), nil
	}
	f, err := openAppend(path)
	if err != nil {
		return nil, fmt.Errorf("decisionlog: open %s: %w", path, err)
	}
	return newLog(f, f), nil
}

// errSymlink is why OpenNoFollow refuses a symbolic link.
var errSymlink = errors.New("the decision log is a symbolic link, which is not followed: give the file's own path, or remove the link")

// openAppend opens the file at path for appending (created with mode 0600), refusing a symbolic
// link (see OpenNoFollow).
func openAppend(path string) (*os.File, error) {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if fi, err := root.Lstat(name); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return nil, errSymlink
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		var li fs.FileInfo
		if li, err = root.Lstat(name); err == nil && (li.Mode()&fs.ModeSymlink != 0 || !os.SameFile(fi, li)) {
			err = errSymlink
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func newLog(w io.Writer, c io.Closer) *Log {
	l := &Log{
		w:    w,
		c:    c,
		buf:  make([]byte, 0, kickBytes*2),
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	l.drained = sync.NewCond(&l.mu)
	l.scratch.New = func() any { b := make([]byte, 0, 1024); return &b }
	go l.run()
	return l
}

// Write logs e. It returns ErrClosed after Close, and otherwise nil: write errors of the
// destination are reported by Flush, Close and Err.
func (l *Log) Write(e *Entry) error {
	if l == nil {
		return nil
	}
	bp := l.scratch.Get().(*[]byte)
	line := AppendEntry((*bp)[:0], e)
	line = append(line, '\n')
	l.mu.Lock()
	for len(l.buf) > maxPending && !l.closed {
		l.kickWriter()
		l.drained.Wait()
	}
	if l.closed {
		l.mu.Unlock()
		*bp = line
		l.scratch.Put(bp)
		return ErrClosed
	}
	l.buf = append(l.buf, line...)
	if len(l.buf) >= kickBytes {
		l.kickWriter()
	}
	l.mu.Unlock()
	l.lines.Add(1)
	if cap(line) <= 64<<10 {
		*bp = line
		l.scratch.Put(bp)
	}
	return nil
}

// Lines reports how many entries were written (accepted by Write) so far.
func (l *Log) Lines() uint64 {
	if l == nil {
		return 0
	}
	return l.lines.Load()
}

func (l *Log) kickWriter() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *Log) run() {
	defer close(l.done)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.kick:
		case <-t.C:
		}
		_ = l.writeOut()
	}
}

// writeOut writes everything pending and returns the first write error seen so far.
func (l *Log) writeOut() error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	out := l.buf
	l.buf = l.spare[:0]
	l.drained.Broadcast()
	l.mu.Unlock()
	var err error
	if len(out) > 0 {
		_, err = l.w.Write(out)
	}
	if cap(out) > maxPending*2 {
		out = nil // do not keep a huge buffer around after a burst
	}
	l.spare = out
	l.mu.Lock()
	if err != nil && l.err == nil {
		l.err = fmt.Errorf("decisionlog: write: %w", err)
	}
	err = l.err
	l.mu.Unlock()
	return err
}

// Flush writes out every entry written before it was called and returns the first write error
// the log has seen, if any.
func (l *Log) Flush() error {
	if l == nil {
		return nil
	}
	return l.writeOut()
}

// Err returns the first error the destination returned, if any.
func (l *Log) Err() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close flushes the log, stops its writer and closes the file opened by Open. Later Writes
// return ErrClosed. Close is idempotent.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.done
		return l.Err()
	}
	l.closed = true
	l.drained.Broadcast()
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	err := l.writeOut()
	if l.c != nil {
		if cerr := l.c.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("decisionlog: close: %w", cerr)
		}
	}
	return err
}

// AppendEntry appends e as a JSON object (without a newline) to b.
func AppendEntry(b []byte, e *Entry) []byte {
	b = append(b, `{"time":`...)
	b = appendTime(b, e.Time)
	b = append(b, `,"edge_id":`...)
	b = appendString(b, e.EdgeID)
	b = append(b, `,"decision_id":`...)
	b = appendString(b, e.DecisionID)
	b = append(b, `,"tenant_id":`...)
	b = appendString(b, e.TenantID)
	b = append(b, `,"hostname":`...)
	b = appendString(b, e.Hostname)
	b = append(b, `,"config_revision":`...)
	b = strconv.AppendUint(b, e.ConfigRevision, 10)
	b = append(b, `,"mode":`...)
	b = appendString(b, e.Mode)
	b = append(b, `,"verdict":`...)
	b = appendString(b, e.Verdict)
	b = append(b, `,"reason":`...)
	b = appendString(b, e.Reason)
	b = append(b, `,"rule":`...)
	b = appendString(b, e.Rule)
	b = append(b, `,"cert":{"presented":`...)
	b = strconv.AppendBool(b, e.Cert.Presented)
	b = append(b, `,"verified":`...)
	b = strconv.AppendBool(b, e.Cert.Verified)
	b = append(b, `,"fingerprint_sha256":`...)
	b = appendString(b, e.Cert.FingerprintSHA256)
	b = append(b, `,"serial_number":`...)
	b = appendString(b, e.Cert.SerialNumber)
	b = append(b, `,"subject":`...)
	b = appendString(b, e.Cert.Subject)
	b = append(b, `,"issuer":`...)
	b = appendString(b, e.Cert.Issuer)
	b = append(b, `,"not_after":`...)
	b = appendTime(b, e.Cert.NotAfter)
	b = append(b, `},"request":{"method":`...)
	b = appendString(b, e.Request.Method)
	b = append(b, `,"path":`...)
	b = appendString(b, e.Request.Path)
	b = append(b, `}}`...)
	return b
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD; control characters,
// '"', '\\', U+2028 and U+2029 are escaped (as encoding/json does, minus its HTML escaping).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

var (
	idInstance [4]byte
	idCounter  atomic.Uint64
)

func init() {
	var seed [10]byte
	if _, err := rand.Read(seed[:]); err != nil {
		panic("decisionlog: no randomness: " + err.Error())
	}
	copy(idInstance[:], seed[:4])
	var c [8]byte
	copy(c[2:], seed[4:])
	idCounter.Store(binary.BigEndian.Uint64(c[:]))
}

// NewID returns a new decision id made at now (see the package documentation).
func NewID(now time.Time) string {
	var raw [16]byte
	appendID(raw[:0], now)
	var out [32]byte
	hex.Encode(out[:], raw[:])
	return string(out[:])
}

// appendID appends the 16 bytes of a new decision id made at now to b.
func appendID(b []byte, now time.Time) []byte {
	ms := uint64(now.UnixMilli())
	n := idCounter.Add(1)
	return append(b,
		byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms),
		idInstance[0], idInstance[1], idInstance[2], idInstance[3],
		byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}
