package ledger

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"

	"guestlist.dev/services/eventstore"
)

// Export format
//
// An export is NDJSON: one JSON object per line, empty lines ignored, each line at most
// MaxExportLine bytes. WriteExport writes
//
//	{"tenant":"<tenant id>"}                        first, once
//	{"event":{...}}                                 one per event, in revision order
//	{"checkpoint":"<SignedCheckpoint text>"}        right after the event that completes its size
//
// where an event object has the fields of guestlist.v1.AuditEvent in lowerCamelCase, as protojson
// writes them: "position" and "revision" (decimal strings; numbers are accepted too), "type",
// "time" (RFC 3339 with nanoseconds, UTC), "actor", "requestId" ("request_id" accepted), "data"
// (standard base64 of the event's protobuf bytes exactly as stored) and "hash" (the chain value
// after the event, lower-case hex).
//
// The REST export (GET /v1/tenants/{tenant}/events:export, and guestlist audit export, which
// writes what it receives) sends one ExportEventsResponse a line in protojson, bare:
//
//	{"tenantId":"..."}                               the tenant ("tenant_id" accepted)
//	{"event":{...}}                                  an event, its "data" an Any (below)
//	{"checkpoint":"..."}                             a signed checkpoint
//	{"error":{...}}                                  last, when the export failed after lines
//	                                                 were sent (a google.rpc.Status)
//
// VerifyExport also accepts the forms exports of earlier versions have:
//
//	{"result":{"tenantId":"..."}}                    the grpc-gateway stream of ExportEvents, one
//	{"result":{"event":{...}}}                       ExportEventsResponse a line, as the REST export
//	{"result":{"checkpoint":"..."}}                  sent it and guestlist audit export wrote it
//	                                                 before they sent bare lines
//	{...}, {"result":{...}}                          an event object on its own, bare or as the
//	                                                 result of a stream of AuditEvent (exports made
//	                                                 before ExportEvents sent checkpoints)
//
// In an event, "data" may also be the protojson form of a google.protobuf.Any holding the bytes
// as ExportEvents sends it, a google.protobuf.BytesValue:
// {"@type":"type.googleapis.com/google.protobuf.BytesValue","value":"<base64>"} (an Any of any
// other type, whose "value" protojson would read as another message, is reported as a problem). An
// Any expanded into the message's JSON fields cannot be verified (its bytes are not exact) and is
// reported as a problem, as is a line with more than one item, a checkpoint of another tenant, and
// any other line. A line with an "error" (as the REST export, now and before, ends a stream that
// failed part-way) means the lines before it are only a part of the history, which could pass for
// a shorter history that verifies: it is always reported as a problem, naming the status's code
// and message. The tenant is taken from a tenant
// line or from a checkpoint on the first line; without either use VerifyExportTenant.
//
// A line must read the same to every JSON reader, or it could show jq or Python one event while
// the verifier checks another. So it is refused (reported with its line number and why) unless it
// is exactly one JSON object (RFC 8259: valid UTF-8, control characters escaped, no lone surrogate
// \u escapes, nothing after the object) where, at every level the verifier reads (the line,
// "result", "event", and the Any in "data"):
//
//   - every key is one of the names above, in that exact case, and appears at most once (and not
//     both "requestId" and "request_id", nor two of the tenant's names);
//   - every value has the type given above (strings; "position" and "revision" a string of decimal
//     digits, or a JSON number up to 2^53-1 which every reader reads exactly; never null);
//   - the values are in their one canonical form: decimal without leading zeros, "data" in padded
//     standard base64 without line breaks or stray bits, "time" in UTC as WriteExport
//     (time.RFC3339Nano) or protojson (0, 3, 6 or 9 digits of fraction) writes it, and within
//     the years 1677 to 2262 that the canonical encoding holds (CheckTime: outside them a time
//     would show another time than the one hashed), "hash" 64 lower-case hex digits.
//
// Only the content of an "error" line is read as any JSON (it is reported, never verified).
// Whitespace between tokens is allowed (protojson adds some), so lines are not compared byte for
// byte with one encoding: the format has several (above), all of which decode to one value.
//
// Checkpoints come once each, in strictly increasing size (the ledger keeps one per size, and
// WriteExport and ExportEvents send them in that order), each right after the event that completes
// its size. A checkpoint line whose size is not larger than the one of the checkpoint line before
// it is refused (its line and the earlier one named). One that comes after more events than its
// size is still checked against the events up to its size; as sizes increase, checking every
// checkpoint costs one pass over the events, in any order of the lines.

// exportEvent is the JSON form of an event in an export.
type exportEvent struct {
	Position  jsonUint        `json:"position"`
	Revision  jsonUint        `json:"revision"`
	Type      string          `json:"type"`
	Time      string          `json:"time"`
	Actor     string          `json:"actor,omitempty"`
	RequestID string          `json:"requestId,omitempty"`
	ReqIDOld  string          `json:"request_id,omitempty"`
	Data      json.RawMessage `json:"data"`
	Hash      string          `json:"hash"`
}

// eventLine and checkpointLine are the lines ExportWriter writes.
type (
	eventLine struct {
		Event *exportEvent `json:"event"`
	}
	checkpointLine struct {
		Checkpoint string `json:"checkpoint"`
	}
)

// jsonUint is a uint64 written as a decimal string (as protojson does) and read from a string or
// a number.
type jsonUint uint64

func (u jsonUint) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, strconv.FormatUint(uint64(u), 10)), nil
}

func (u *jsonUint) UnmarshalJSON(b []byte) error {
	if len(b) >= 2 && b[0] == '"' {
		b = b[1 : len(b)-1]
	}
	v, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("not an unsigned integer: %s", b)
	}
	*u = jsonUint(v)
	return nil
}

// ExportWriter writes an export line by line.
type ExportWriter struct {
	w      *bufio.Writer
	tenant string
	chain  [32]byte
	next   uint64
	buf    []byte
	line   []byte
}

// NewExportWriter starts an export of tenant's history to w, writing the tenant line. Call
// WriteEvent for every event in revision order, WriteCheckpoint after the event that completes a
// checkpoint's size, and Flush at the end.
func NewExportWriter(w io.Writer, tenant string) (*ExportWriter, error) {
	ew := &ExportWriter{w: bufio.NewWriterSize(w, 1<<16), tenant: tenant}
	b, err := json.Marshal(struct {
		Tenant string `json:"tenant"`
	}{tenant})
	if err != nil {
		return nil, fmt.Errorf("ledger: export: %w", err)
	}
	if _, err := ew.w.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("ledger: export: %w", err)
	}
	return ew, nil
}

// WriteEvent writes the next event, with its chain hash.
func (ew *ExportWriter) WriteEvent(ev eventstore.RecordedEvent) error {
	if ev.Revision != ew.next {
		return fmt.Errorf("ledger: export: revision %d where %d was expected", ev.Revision, ew.next)
	}
	ew.buf = appendCanonical(ew.buf[:0], ew.tenant, ev.Revision, uint64(ev.Position), ev.Type, ev.Time.UnixNano(), ev.Metadata.Actor, ev.Metadata.RequestID, ev.Data)
	ew.chain = Chain(ew.chain, ew.buf)
	ew.next++
	data := make([]byte, 0, base64.StdEncoding.EncodedLen(len(ev.Data))+2)
	data = append(data, '"')
	data = base64.StdEncoding.AppendEncode(data, ev.Data)
	data = append(data, '"')
	b, err := json.Marshal(eventLine{&exportEvent{
		Position: jsonUint(ev.Position), Revision: jsonUint(ev.Revision), Type: ev.Type,
		Time: ev.Time.UTC().Format(time.RFC3339Nano), Actor: ev.Metadata.Actor, RequestID: ev.Metadata.RequestID,
		Data: data, Hash: HashHex(ew.chain),
	}})
	if err != nil {
		return fmt.Errorf("ledger: export revision %d: %w", ev.Revision, err)
	}
	if _, err := ew.w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("ledger: export revision %d: %w", ev.Revision, err)
	}
	return nil
}

// WriteCheckpoint writes a signed checkpoint line.
func (ew *ExportWriter) WriteCheckpoint(s SignedCheckpoint) error {
	str := string(s)
	b, err := json.Marshal(checkpointLine{str})
	if err != nil {
		return fmt.Errorf("ledger: export checkpoint: %w", err)
	}
	if _, err := ew.w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("ledger: export checkpoint: %w", err)
	}
	return nil
}

// Flush writes any buffered data.
func (ew *ExportWriter) Flush() error {
	if err := ew.w.Flush(); err != nil {
		return fmt.Errorf("ledger: export: %w", err)
	}
	return nil
}

// WriteExport writes the export of tenant (see "Export format"): events in revision order from 0,
// each signed checkpoint right after the event that completes its size (checkpoints beyond the
// events at the end).
func WriteExport(w io.Writer, tenant string, events []eventstore.RecordedEvent, checkpoints []SignedCheckpoint) error {
	type sized struct {
		size uint64
		s    SignedCheckpoint
	}
	cps := make([]sized, 0, len(checkpoints))
	for _, s := range checkpoints {
		cp, err := ParseCheckpoint(s)
		if err != nil {
			return fmt.Errorf("ledger: export: %w", err)
		}
		cps = append(cps, sized{cp.Size, s})
	}
	ew, err := NewExportWriter(w, tenant)
	if err != nil {
		return err
	}
	next := 0
	for _, ev := range events {
		if err := ew.WriteEvent(ev); err != nil {
			return err
		}
		for next < len(cps) && cps[next].size <= ev.Revision+1 {
			if err := ew.WriteCheckpoint(cps[next].s); err != nil {
				return err
			}
			next++
		}
	}
	for ; next < len(cps); next++ {
		if err := ew.WriteCheckpoint(cps[next].s); err != nil {
			return err
		}
	}
	return ew.Flush()
}

// entry is a parsed export line.
type entry struct {
	kind      byte // 'e' event, 'c' checkpoint, 't' tenant, 0 empty
	line      int
	err       error
	pos, rev  uint64
	canonical []byte
	leaf      [32]byte
	hash      [32]byte
	hasHash   bool
	tenant    string
	cp        SignedCheckpoint
}

func hexDecode(dst []byte, s string) (int, error) {
	for i := 0; i < len(dst); i++ {
		hi, ok1 := fromHex(s[2*i])
		lo, ok2 := fromHex(s[2*i+1])
		if !ok1 || !ok2 {
			return i, fmt.Errorf("invalid hex %q", s)
		}
		dst[i] = hi<<4 | lo
	}
	return len(dst), nil
}

func fromHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// VerifyExport verifies an export (see "Export format") offline with only the checkpoint public
// key: it recomputes every event's canonical bytes and chain hash and compares the hash with the
// event's, checks that revisions run 0, 1, 2, ... with increasing positions, and checks every
// checkpoint's signature, that checkpoints come once each in increasing size, and that each one's
// root and chain hash match the events at its size. The export must end at a signed checkpoint:
// events after the last one are reported (nothing signed vouches for them), as is an export
// without events; a checkpoint larger than the history means events were removed. A valid
// result names the tenant, the positions checked and the time of the last checkpoint.
//
// FirstBadPosition is the position of the first event line that does not fit: a changed event (its
// hash no longer matches), the event after a dropped line (a revision gap), an inserted line, or
// the first of two swapped lines (out of order). For a checkpoint with a bad signature it is the
// position of the last event the checkpoint covers; for a checkpoint whose root or chain does not
// match events whose hashes were rewritten consistently, the position of the first event after
// the previous matching checkpoint.
func VerifyExport(r io.Reader, pub ed25519.PublicKey) Result {
	return verifyExport(r, pub, "")
}

// VerifyExportTenant is VerifyExport for an export of tenant: an export of another tenant is
// refused, and one without a tenant line (exports made before ExportEvents sent the tenant) is
// read as tenant's.
func VerifyExportTenant(r io.Reader, pub ed25519.PublicKey, tenant string) Result {
	return verifyExport(r, pub, tenant)
}

type lineBatch struct {
	data    []byte
	ends    []int
	first   int // line number of the first line
	entries []entry
	done    chan struct{}
}

// MaxExportLine bounds the length of one line of an export, its line feed excluded. An event's
// data is at most what one API request carries (4 MiB), which is 5.6 MiB in base64: a longer line
// is not one of an export, and reading it would only hold memory (the verifier reads several
// lines ahead of the one it checks).
const MaxExportLine = 64 << 20

// scanExportLines is bufio.ScanLines for lines of at most MaxExportLine bytes.
func scanExportLines(data []byte, atEOF bool) (int, []byte, error) {
	advance, line, err := bufio.ScanLines(data, atEOF)
	if len(line) > MaxExportLine {
		return 0, nil, bufio.ErrTooLong
	}
	return advance, line, err
}

// A batch of lines holds at most batchLines lines, and takes no more lines once it holds
// batchBytes (so one line may take it beyond that): the lines read ahead of the one being applied
// are bounded by a few batches, whatever the size of the lines and of the file.
const (
	batchLines = 1024
	batchBytes = 4 << 20
)

func verifyExport(r io.Reader, pub ed25519.PublicKey, tenant string) Result {
	v := &exportVerifier{pub: pub, tenant: tenant, rng: rangeFactory.NewEmptyRange(0)}
	res := v.verify(r, tenant)
	res.Tenant = v.tenant
	if v.n > 0 {
		res.FirstPosition, res.LastPosition = v.positions[0], v.lastPos
	}
	return res
}

// verify reads the export from r and checks its lines in order.
func (v *exportVerifier) verify(r io.Reader, tenant string) Result {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), MaxExportLine+2) // the line, "\r\n"
	sc.Split(scanExportLines)
	line := 0
	// The first non-empty line may name the tenant, which parsing events needs.
	for sc.Scan() {
		line++
		if blank(sc.Bytes()) {
			continue
		}
		var e entry
		e.line = line
		parseLine(sc.Bytes(), tenant, &e)
		if tenant == "" {
			switch e.kind {
			case 't':
				tenant = e.tenant
			case 'c':
				if cp, err := ParseCheckpoint(e.cp); err == nil {
					tenant = cp.Tenant
					v.tenant = tenant
				}
			}
		}
		if res, stop := v.apply(&e); stop {
			return res
		}
		break
	}
	workers := runtime.GOMAXPROCS(0)
	work := make(chan *lineBatch, 2*workers)
	ordered := make(chan *lineBatch, 2*workers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				start := 0
				for i, end := range b.ends {
					b.entries[i].line = b.first + i
					parseLine(b.data[start:end], tenant, &b.entries[i])
					start = end
				}
				close(b.done)
			}
		}()
	}
	var scanErr error
	go func() {
		defer close(ordered)
		defer close(work)
		var b *lineBatch
		flush := func() bool {
			if b == nil {
				return true
			}
			b.entries = make([]entry, len(b.ends))
			select {
			case ordered <- b:
			case <-stop:
				return false
			}
			work <- b
			b = nil
			return true
		}
		for sc.Scan() {
			line++
			if b == nil {
				b = &lineBatch{first: line, done: make(chan struct{}), data: make([]byte, 0, 512*batchLines)}
			}
			b.data = append(b.data, sc.Bytes()...)
			b.ends = append(b.ends, len(b.data))
			v.maxBatch = max(v.maxBatch, len(b.data))
			if (len(b.ends) == batchLines || len(b.data) >= batchBytes) && !flush() {
				return
			}
		}
		scanErr = sc.Err()
		flush()
	}()
	defer func() {
		close(stop)
		for range ordered {
		}
		wg.Wait()
	}()
	for b := range ordered {
		<-b.done
		for i := range b.entries {
			if res, stop := v.apply(&b.entries[i]); stop {
				return res
			}
		}
	}
	if errors.Is(scanErr, bufio.ErrTooLong) {
		return bad(v.n, 0, "line %d is longer than %d MiB: not a line of an export (an event holds at most a few MiB)", line+1, MaxExportLine>>20)
	}
	if scanErr != nil {
		return bad(v.n, 0, "read export: %v", scanErr)
	}
	return v.finish()
}

// exportVerifier checks the entries of an export in order.
type exportVerifier struct {
	pub        ed25519.PublicKey
	tenant     string
	tenantSeen bool // a line of the export named the tenant (else tenant is the one required, if any)
	n          uint64
	chain      [32]byte
	rng        *compact.Range
	lastPos    uint64
	positions  []uint64
	chains     [][32]byte
	leaves     [][32]byte
	pending    []Checkpoint // checkpoints beyond the events seen so far, by increasing size
	goodSize   uint64       // the largest size of a matching checkpoint
	goodTime   time.Time    // the time of that checkpoint
	cpSize     uint64       // the size of the last checkpoint line
	cpLine     int          // its line (0: none yet)
	// lag is the Merkle range over the first events, up to the size of the last checkpoint that
	// came after more events than its size. Checkpoint sizes increase from line to line, so it
	// only grows: each event is added to it at most once, whatever the order of the lines.
	lag       *compact.Range
	lagLeaves uint64 // events added to lag (tests)
	maxBatch  int    // the most bytes of lines a batch held (tests; written by the reading goroutine)
}

// apply checks the next entry; stop is set with the result when the export is bad.
func (v *exportVerifier) apply(e *entry) (Result, bool) {
	if e.err != nil {
		return bad(v.n, e.pos, "line %d: %v", e.line, e.err), true
	}
	switch e.kind {
	case 't':
		if v.tenant != "" && e.tenant != v.tenant {
			if !v.tenantSeen {
				// The tenant was required by the caller (VerifyExportTenant), not named by an earlier line.
				return bad(v.n, 0, "line %d: this is an export of tenant %q, not of %q", e.line, e.tenant, v.tenant), true
			}
			return bad(v.n, 0, "line %d: export of tenant %q inside the export of %q", e.line, e.tenant, v.tenant), true
		}
		v.tenant, v.tenantSeen = e.tenant, true
	case 'c':
		cp, err := VerifyCheckpoint(v.pub, e.cp)
		if err != nil {
			var pos uint64
			if c, perr := ParseCheckpoint(e.cp); perr == nil && c.Size > 0 && c.Size <= v.n {
				pos = v.positions[c.Size-1]
			}
			return bad(v.n, pos, "line %d: %v", e.line, err), true
		}
		if cp.Tenant != v.tenant {
			return bad(v.n, 0, "line %d: checkpoint of tenant %q in the export of %q", e.line, cp.Tenant, v.tenant), true
		}
		if v.cpLine > 0 && cp.Size <= v.cpSize {
			const rule = "an export has each checkpoint once, in increasing size"
			if cp.Size == v.cpSize {
				return bad(v.n, 0, "line %d: the checkpoint at size %d again (first on line %d): %s", e.line, cp.Size, v.cpLine, rule), true
			}
			return bad(v.n, 0, "line %d: checkpoint at size %d after the checkpoint at size %d (line %d): %s", e.line, cp.Size, v.cpSize, v.cpLine, rule), true
		}
		v.cpSize, v.cpLine = cp.Size, e.line
		if cp.Size <= v.n {
			return v.checkAt(cp, e.line)
		}
		v.pending = append(v.pending, cp) // sizes increase, so pending stays sorted
	case 'e':
		switch {
		case e.rev > v.n:
			return bad(v.n, e.pos, "line %d: revision gap: revision %d (position %d) where %d was expected: events missing before it, or lines out of order", e.line, e.rev, e.pos, v.n), true
		case e.rev < v.n:
			return bad(v.n, e.pos, "line %d: duplicate or out-of-order revision %d (position %d) where %d was expected", e.line, e.rev, e.pos, v.n), true
		case v.n > 0 && e.pos <= v.lastPos:
			return bad(v.n, e.pos, "line %d: out of order: position %d after position %d", e.line, e.pos, v.lastPos), true
		}
		v.chain = Chain(v.chain, e.canonical)
		if e.hasHash && e.hash != v.chain {
			return bad(v.n, e.pos, "line %d: event at revision %d (position %d) does not match its hash chain value: it was changed, or an event before it was inserted or removed", e.line, e.rev, e.pos), true
		}
		if err := v.rng.Append(e.leaf[:], nil); err != nil {
			return bad(v.n, e.pos, "merkle append: %v", err), true
		}
		v.lastPos = e.pos
		v.positions = append(v.positions, e.pos)
		v.chains = append(v.chains, v.chain)
		v.leaves = append(v.leaves, e.leaf)
		v.n++
		e.canonical = nil
		for len(v.pending) > 0 && v.pending[0].Size == v.n {
			cp := v.pending[0]
			v.pending = v.pending[1:]
			if res, stop := v.checkAt(cp, e.line); stop {
				return res, true
			}
		}
	}
	return Result{}, false
}

// checkAt compares cp (cp.Size <= v.n) with the events.
func (v *exportVerifier) checkAt(cp Checkpoint, line int) (Result, bool) {
	var root []byte
	var chain [32]byte
	if cp.Size == v.n {
		r, err := rootOf(v.rng)
		if err != nil {
			return bad(v.n, 0, "%v", err), true
		}
		root, chain = r, v.chain
	} else {
		if v.lag == nil {
			v.lag = rangeFactory.NewEmptyRange(0)
		}
		for v.lag.End() < cp.Size { // (cp.Size is larger than at the last call: see lag)
			if err := v.lag.Append(v.leaves[v.lag.End()][:], nil); err != nil {
				return bad(v.n, 0, "merkle append: %v", err), true
			}
			v.lagLeaves++
		}
		r, err := rootOf(v.lag)
		if err != nil {
			return bad(v.n, 0, "%v", err), true
		}
		root = r
		if cp.Size > 0 {
			chain = v.chains[cp.Size-1]
		}
	}
	if !bytes.Equal(root, cp.Root) || chain != cp.Chain {
		var pos uint64
		if cp.Size > 0 {
			pos = v.positions[0]
			if v.goodSize < cp.Size {
				pos = v.positions[v.goodSize]
			}
		}
		return bad(v.n, pos, "line %d: the events up to revision %d do not match the signed checkpoint at size %d", line, cp.Size-1, cp.Size), true
	}
	if cp.Size >= v.goodSize {
		v.goodSize, v.goodTime = cp.Size, cp.Time
	}
	return Result{}, false
}

// finish reports the result once every line was applied.
func (v *exportVerifier) finish() Result {
	if len(v.pending) > 0 {
		return bad(v.n, 0, "events removed: a signed checkpoint covers %d events, the export has %d", v.pending[len(v.pending)-1].Size, v.n)
	}
	if v.n == 0 {
		// Every tenant's history starts with its creation: an export without events is a file
		// emptied, or not an export, and there is nothing a signature vouches for.
		return bad(0, 0, "the export holds no events (a tenant's history starts with its creation, and ends at a signed checkpoint)")
	}
	if v.goodSize < v.n {
		// Without a signature over them, the last events could have been changed or appended by
		// anyone who rewrote the file: only a signed checkpoint makes them evidence.
		return bad(v.goodSize, v.positions[v.goodSize], "events from revision %d (position %d) on are not covered by a signed checkpoint (the last covers %d events); an export must end at a signed checkpoint", v.goodSize, v.positions[v.goodSize], v.goodSize)
	}
	return Result{Valid: true, Checked: v.n, CheckpointTime: v.goodTime}
}
