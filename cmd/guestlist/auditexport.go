package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"guestlist.dev/projections/ledger"
)

const (
	// exportIdleTimeout is how long "audit export" waits for the answer's header and then for
	// each next piece of the export (the API flushes at least every second while it sends).
	exportIdleTimeout = time.Minute
	// maxExportLine bounds one line of an export (as ledger.VerifyExport does).
	maxExportLine = ledger.MaxExportLine
)

func runAuditExport(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit export", "Write the tenant's history for offline verification, as the REST export\n"+
		"(GET /v1/tenants/{tenant}/events:export) sends it: NDJSON, one JSON object a line, each an\n"+
		"ExportEventsResponse in protojson: {\"tenantId\":...} first, then {\"event\":{...}} for every event in\n"+
		"order and {\"checkpoint\":\"...\"} for each signed checkpoint, right after the event that completes its\n"+
		"size. The export streams through in bounded memory, whatever its length. With --out, the file is\n"+
		"written only once the whole export arrived (a file already there is replaced then, and kept\n"+
		"otherwise); on standard output, an export that fails part-way ends with a line {\"error\":{...}}\n"+
		"(a google.rpc.Status), which verification refuses. Exit 0 when the whole export was written, 1\n"+
		"when not. Verify it offline with guestlist audit verify --file EXPORT --public-key KEY.pem.", stderr)
	var f auditFlags
	f.register(fs)
	out := fs.String("out", "", "write to this file instead of standard output")
	if code, done := parseAuditFlags(fs, args, env, stderr); done {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "guestlist audit export: "+format+"\n", a...)
		return exitError
	}
	c, err := f.client(true)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit export: %v\n", err)
		return exitUsage
	}
	body, err := c.stream(ctx, "/v1/tenants/"+url.PathEscape(f.tenant)+"/events:export", exportIdleTimeout)
	if err != nil {
		return fail("%v", err)
	}
	defer body.Close()

	var dst io.Writer = stdout
	var tmp *os.File
	if *out != "" {
		tmp, err = os.CreateTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".*.partial")
		if err != nil {
			return fail("--out: %v", err)
		}
		defer func() {
			if tmp != nil { // not renamed: the export is incomplete
				_ = tmp.Close()
				_ = os.Remove(tmp.Name())
			}
		}()
		dst = tmp
	}
	w := bufio.NewWriterSize(dst, 64<<10)
	sum, copyErr := copyExport(w, body, f.tenant)
	if copyErr != nil && *out == "" && sum.lines > 0 {
		// Standard output already holds lines: end them with the error, so that the output
		// never passes for a complete (shorter) export.
		_, _ = w.Write(errorLine(copyErr))
	}
	if err := w.Flush(); err != nil && copyErr == nil {
		copyErr = fmt.Errorf("write the export: %w", err)
	}
	if copyErr != nil {
		what := "standard output holds the lines before the error, and the error as the last line"
		switch {
		case *out != "":
			what = *out + " was not written"
		case sum.lines == 0:
			what = "nothing was written"
		}
		return fail("%v (%s)", copyErr, what)
	}
	if tmp != nil {
		if err := finishFile(tmp, *out); err != nil {
			return fail("--out: %v", err)
		}
		tmp = nil
	}
	if sum.events > 0 && sum.checkpoints == 0 {
		fmt.Fprintf(stderr, "guestlist audit export: warning: no signed checkpoint yet (the ledger signs one shortly after a change); offline verification can then only check the hash chain\n")
	}
	return exitOK
}

// finishFile makes the complete export in tmp the file at path.
func finishFile(tmp *os.File, path string) error {
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	return nil
}

// exportSummary counts what copyExport wrote.
type exportSummary struct {
	lines, events, checkpoints int
}

// exportError is the error a failed export stream ended with (its last line {"error":...}).
type exportError struct {
	line int
	st   *status.Status
	raw  []byte // the line, as the API sent it
}

func (e *exportError) Error() string {
	return fmt.Sprintf("the export failed on the server after %d lines: %v (code %d): %s", e.line-1, e.st.Code(), e.st.Code(), e.st.Message())
}

// copyExport copies the lines of the REST export from r to w, one bare compact JSON object a line:
// the API's lines compacted, and the {"result":...} lines of an API of an earlier version
// unwrapped. It checks that the export starts with tenant, and ends with an error when the
// stream does: on its line {"error":...} (an *exportError), on a line that is not an item of an
// export, and when the answer is cut off.
func copyExport(w io.Writer, r io.Reader, tenant string) (exportSummary, error) {
	var sum exportSummary
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxExportLine)
	var compact bytes.Buffer
	n := 0
	for sc.Scan() {
		n++
		compact.Reset()
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := json.Compact(&compact, sc.Bytes()); err != nil {
			return sum, fmt.Errorf("line %d of the answer is not JSON: %w", n, err)
		}
		line := compact.Bytes()
		if bytes.HasPrefix(line, []byte(`{"result":`)) || bytes.HasPrefix(line, []byte(`{"error":`)) {
			// grpc-gateway's framing: an API of an earlier version, or the error line.
			var x struct {
				Result json.RawMessage `json:"result"`
				Error  json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal(line, &x); err != nil {
				return sum, fmt.Errorf("line %d of the answer: %w", n, err)
			}
			if x.Error != nil {
				st := &spb.Status{}
				if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(x.Error, st); err != nil {
					st = status.New(codes.Unknown, string(x.Error)).Proto()
				}
				return sum, &exportError{line: n, st: status.FromProto(st), raw: append([]byte(nil), sc.Bytes()...)}
			}
			line = x.Result
		}
		var kind *int
		switch {
		case bytes.HasPrefix(line, []byte(`{"event":`)):
			kind = &sum.events
		case bytes.HasPrefix(line, []byte(`{"checkpoint":`)):
			kind = &sum.checkpoints
		case bytes.HasPrefix(line, []byte(`{"tenantId":`)):
			var t struct {
				TenantID string `json:"tenantId"`
			}
			if err := json.Unmarshal(line, &t); err != nil || t.TenantID != tenant {
				return sum, fmt.Errorf("line %d of the answer names another tenant than %q: %.200s", n, tenant, line)
			}
		default:
			return sum, fmt.Errorf("line %d of the answer is not an item of an export: %.200s", n, line)
		}
		if sum.lines == 0 && kind != nil {
			return sum, fmt.Errorf("the answer does not start with tenant %q: %.200s", tenant, line)
		}
		if _, err := w.Write(append(line, '\n')); err != nil {
			return sum, fmt.Errorf("write the export: %w", err)
		}
		sum.lines++
		if kind != nil {
			*kind++
		}
	}
	if err := sc.Err(); err != nil {
		return sum, fmt.Errorf("read the answer after %d lines: %w", n, err)
	}
	if sum.lines == 0 {
		return sum, errors.New("the answer is empty")
	}
	return sum, nil
}

// errorLine is the line that ends an export written to standard output when err stopped it: the
// API's own error line, or one saying what went wrong here.
func errorLine(err error) []byte {
	var ee *exportError
	if errors.As(err, &ee) {
		return append(bytes.TrimSpace(ee.raw), '\n')
	}
	b, merr := protojson.Marshal(status.New(codes.Unknown, "guestlist audit export: "+err.Error()).Proto())
	if merr != nil {
		b = []byte(`{"code":2,"message":"guestlist audit export failed"}`)
	}
	var c bytes.Buffer
	if json.Compact(&c, b) == nil {
		b = c.Bytes()
	}
	return fmt.Appendf(nil, "{\"error\":%s}\n", b)
}

// stream sends GET path and returns the body of a 200 answer, which fails once no byte of it
// came for idle (the answer's header included); any other answer is an error, with the message
// of its google.rpc.Status. Close the body when done.
func (c *apiClient) stream(ctx context.Context, path string, idle time.Duration) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(idle, func() { cancel(fmt.Errorf("nothing received for %v", idle)) })
	fail := func(err error) (io.ReadCloser, error) {
		timer.Stop()
		cancel(nil)
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return fail(fmt.Errorf("GET %s: %w", path, err))
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	client := *c.http  // its transport (--api-ca) and redirect policy
	client.Timeout = 0 // no overall timeout: an export may take long
	resp, err := client.Do(req)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			err = cause
		}
		return fail(fmt.Errorf("GET %s: %w", path, err))
	}
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return fail(statusError(http.MethodGet, path, resp.Status, raw))
	}
	timer.Reset(idle)
	return &idleBody{body: resp.Body, ctx: ctx, timer: timer, idle: idle, cancel: cancel}, nil
}

// idleBody is an answer's body that fails once nothing arrived for idle.
type idleBody struct {
	body   io.ReadCloser
	ctx    context.Context
	timer  *time.Timer
	idle   time.Duration
	cancel context.CancelCauseFunc
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && !errors.Is(err, io.EOF) && b.ctx.Err() != nil {
		if cause := context.Cause(b.ctx); cause != nil {
			err = cause
		}
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	b.cancel(nil)
	return b.body.Close()
}
