package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
)

// restGet sends GET path to the dev node's REST API with token (none when empty) and returns the
// status, the header and the whole body.
func (n *devNode) restGet(path, token string) (int, http.Header, []byte) {
	n.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, n.api+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// exportItems checks that every line of an export is one bare JSON object with one key, tenantId
// (first) or event or checkpoint, and returns the lines with the number of events and the size of
// the last checkpoint.
func exportItems(t *testing.T, body []byte) (lines []string, events int, lastSize string) {
	t.Helper()
	lines = strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	for i, l := range lines {
		var x map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &x); err != nil || len(x) != 1 {
			t.Fatalf("line %d is not a JSON object with one key: %v\n%s", i+1, err, l)
		}
		switch {
		case i == 0:
			if string(x["tenantId"]) != `"acme"` {
				t.Fatalf("line 1 is not the tenant: %s", l)
			}
		case x["event"] != nil:
			events++
		case x["checkpoint"] != nil:
			var cp string
			_ = json.Unmarshal(x["checkpoint"], &cp)
			lastSize = strings.Split(cp, "\n")[1]
		default:
			t.Fatalf("line %d is neither an event nor a checkpoint (a bare ExportEventsResponse): %s", i+1, l)
		}
	}
	return lines, events, lastSize
}

// writeLines writes lines as a file in dir and returns its path.
func writeLines(t *testing.T, dir, name string, lines []string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRESTExportLines: the REST export of a real dev node is NDJSON (application/x-ndjson), one
// bare ExportEventsResponse a line ({"tenantId":...}, {"event":...}, {"checkpoint":...}, no
// {"result":...}), which audit verify --file accepts offline as it is; audit export writes the
// same lines; an export in the {"result":...} form of earlier versions still verifies; an export
// that ends with an error line does not, even when the lines before it would; errors before the
// first line are the usual REST errors (401, 403, 404, 400 with the field), and audit export
// then writes no file.
func TestRESTExportLines(t *testing.T) {
	dir := t.TempDir()
	n := startDev(t, dir)
	for _, id := range []string{"acme", "globex"} {
		if code, _ := n.rest("POST", "/v1/tenants?tenantId="+id, n.token, map[string]any{"displayName": id}); code != 200 {
			t.Fatal("create tenant")
		}
	}
	_, tok := n.rest("POST", "/v1/tenants/acme/tokens", n.token, map[string]any{"displayName": "auditor", "role": "ROLE_AUDITOR"})
	auditor, _ := tok["secret"].(string)
	for i := range 3 {
		if code, _ := n.rest("POST", "/v1/tenants/acme/hostnames", n.token, map[string]any{
			"hostname": fmt.Sprintf("h%d.acme.example", i), "originUrl": n.orig, "mtls": map[string]any{"mode": "MTLS_MODE_OFF"},
		}); code != 200 {
			t.Fatal("create hostname")
		}
	}
	const want = 5 // the tenant, its token, three hostnames
	keyFile := filepath.Join(dir, "checkpoint-key", "checkpoint.pub")
	out := t.TempDir()

	// The REST export, as it comes: wait for the ledger's checkpoint of the whole history.
	var body []byte
	var lines []string
	eventually(t, "the REST export has a signed checkpoint of all events", func() bool {
		code, hdr, b := n.restGet("/v1/tenants/acme/events:export", auditor)
		if code != 200 || hdr.Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("REST export: %d, content type %q: %s", code, hdr.Get("Content-Type"), b)
		}
		var events int
		var size string
		body = b
		lines, events, size = exportItems(t, b)
		return events == want && size == fmt.Sprint(want)
	})
	restFile := filepath.Join(out, "rest.ndjson")
	if err := os.WriteFile(restFile, body, 0o600); err != nil {
		t.Fatal(err)
	}
	offline := map[string]string{} // no API, no token
	verify := func(file string) (int, string) {
		code, stdout, stderr := runCmd(t, offline, "audit", "verify", "--file", file, "--public-key", keyFile, "--tenant", "acme")
		return code, stdout + stderr
	}
	if code, got := verify(restFile); code != exitOK || !strings.Contains(got, fmt.Sprintf(`intact: %d events of tenant "acme"`, want)) {
		t.Fatalf("verify --file of the REST export as it came: exit %d\n%s", code, got)
	}

	// guestlist audit export writes the same bare lines (compacted), which verify.
	env := map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": auditor}
	cliFile := filepath.Join(out, "cli.ndjson")
	if code, stdout, stderr := runCmd(t, env, "audit", "export", "--tenant", "acme", "--out", cliFile); code != exitOK {
		t.Fatalf("audit export: exit %d\n%s%s", code, stdout, stderr)
	}
	cli, _ := os.ReadFile(cliFile)
	cliLines, events, _ := exportItems(t, cli)
	if events != want || len(cliLines) != len(lines) {
		t.Fatalf("audit export wrote %d lines (%d events), the REST export has %d:\n%s", len(cliLines), events, len(lines), cli)
	}
	for i := range lines {
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(lines[i])); err != nil || cliLines[i] != compact.String() {
			t.Errorf("line %d: audit export wrote %s, the API sent %s", i+1, cliLines[i], lines[i])
		}
	}
	if code, got := verify(cliFile); code != exitOK || !strings.Contains(got, "intact") {
		t.Fatalf("verify --file of audit export's file: exit %d\n%s", code, got)
	}
	// On standard output too.
	if code, stdout, stderr := runCmd(t, env, "audit", "export", "--tenant", "acme"); code != exitOK || stdout != string(cli) {
		t.Errorf("audit export to standard output: exit %d\n%s%s", code, stdout, stderr)
	}

	// An export in the form of earlier versions ({"result":...} lines) still verifies.
	old := make([]string, len(cliLines))
	for i, l := range cliLines {
		old[i] = `{"result":` + l + `}`
	}
	if code, got := verify(writeLines(t, out, "old.ndjson", old)); code != exitOK || !strings.Contains(got, fmt.Sprintf("intact: %d events", want)) {
		t.Errorf("verify --file of {\"result\":...} lines: exit %d\n%s", code, got)
	}

	// A stream that failed part-way ends with {"error":...}: its lines before verify alone (up to
	// a checkpoint, they are a shorter history), so the error line must make it fail, naming it.
	errLine := `{"error":{"code":14,"message":"the server is shutting down; retry (context canceled)","details":[]}}`
	for name, ls := range map[string][]string{
		"bare":   append(append([]string(nil), cliLines...), errLine),
		"result": append(append([]string(nil), old...), errLine),
	} {
		code, got := verify(writeLines(t, out, "failed-"+name+".ndjson", ls))
		if code != exitError || !strings.Contains(got, "NOT intact") || !strings.Contains(got, "the export stream ended with an error") ||
			!strings.Contains(got, "Unavailable (code 14): the server is shutting down") {
			t.Errorf("verify --file of a %s export ending with an error line: exit %d\n%s", name, code, got)
		} else {
			t.Logf("%s export with an error line: %s", name, strings.TrimSpace(got))
		}
	}

	// Tampering with the bare lines is detected.
	tampered := append([]string(nil), cliLines...)
	for i, l := range tampered {
		if strings.Contains(l, `"actor":"admin"`) && strings.Contains(l, `"event"`) {
			tampered[i] = strings.Replace(l, `"actor":"admin"`, `"actor":"mallory"`, 1)
			break
		}
	}
	if code, got := verify(writeLines(t, out, "tampered.ndjson", tampered)); code != exitError || !strings.Contains(got, "does not match its hash chain value") {
		t.Errorf("verify --file of a tampered export: exit %d\n%s", code, got)
	}

	// Errors before the first line: the usual REST answers.
	_, globexTok := n.rest("POST", "/v1/tenants/globex/tokens", n.token, map[string]any{"displayName": "a", "role": "ROLE_AUDITOR"})
	globexAuditor, _ := globexTok["secret"].(string)
	for _, c := range []struct {
		name, path, token string
		status            int
		code              codes.Code
	}{
		{"no token", "/v1/tenants/acme/events:export", "", 401, codes.Unauthenticated},
		{"unknown token", "/v1/tenants/acme/events:export", "gla_unknown", 401, codes.Unauthenticated},
		{"another tenant's auditor", "/v1/tenants/acme/events:export", globexAuditor, 403, codes.PermissionDenied},
		{"unknown tenant", "/v1/tenants/nobody/events:export", n.token, 404, codes.NotFound},
		{"invalid tenant id", "/v1/tenants/A!/events:export", n.token, 400, codes.InvalidArgument},
	} {
		code, hdr, b := n.restGet(c.path, c.token)
		st := &spb.Status{}
		if err := protojson.Unmarshal(b, st); err != nil || code != c.status || codes.Code(st.GetCode()) != c.code || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %q %s (%v); want %d and a google.rpc.Status of code %v", c.name, code, hdr.Get("Content-Type"), b, err, c.status, c.code)
		}
		if c.status == 401 && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", c.name, hdr.Get("WWW-Authenticate"))
		}
		if c.code == codes.InvalidArgument && !strings.Contains(string(b), `"field":"tenant_id"`) {
			t.Errorf("%s: no field violation of tenant_id: %s", c.name, b)
		}
	}
	// The API's description says so.
	_, _, doc := n.restGet("/openapi.json", "")
	var api struct {
		Paths map[string]map[string]struct {
			Produces  []string `json:"produces"`
			Responses map[string]struct {
				Schema map[string]any `json:"schema"`
			} `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(doc, &api); err != nil {
		t.Fatal(err)
	}
	op := api.Paths["/v1/tenants/{tenantId}/events:export"]["get"]
	if strings.Join(op.Produces, ",") != "application/x-ndjson" || op.Responses["200"].Schema["$ref"] != "#/definitions/v1ExportEventsResponse" {
		t.Errorf("/openapi.json describes the export as %+v", op)
	}

	refused := filepath.Join(out, "refused.ndjson")
	code, stdout, stderr := runCmd(t, map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": globexAuditor}, "audit", "export", "--tenant", "acme", "--out", refused)
	if _, err := os.Stat(refused); code != exitError || !os.IsNotExist(err) || !strings.Contains(stderr, "403") {
		t.Errorf("audit export refused: exit %d, file %v\n%s%s", code, err, stdout, stderr)
	}
}

// TestAuditExportCutByShutdown: an export in progress when the API shuts down ends with an error
// line (UNAVAILABLE, shutting down) right away; the lines before it are a valid shorter history
// up to some checkpoint, and the export with its error line does not verify. guestlist audit
// export to standard output, cut the same way, exits 1 and ends its output with the error line.
func TestAuditExportCutByShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 20,000 hostnames")
	}
	dir := t.TempDir()
	n := startDev(t, dir)
	// A history long enough that the export is still being sent when the shutdown begins: the
	// client below reads one line and waits, so the API blocks once the connection's buffers
	// are full.
	const batches = 20
	n.acmeWithHostnames(batches)
	keyFile := filepath.Join(dir, "checkpoint-key", "checkpoint.pub")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, _, b := n.restGet("/v1/tenants/acme/events:export", n.token)
		if countItems(t, strings.Split(strings.TrimSuffix(string(b), "\n"), "\n"))["event"] == batches*1000+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never a checkpoint of the whole history")
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.api+"/v1/tenants/acme/events:export", nil)
	req.Header.Set("Authorization", "Bearer "+n.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n')
	var tenant struct {
		TenantID string `json:"tenantId"`
	}
	if err != nil || json.Unmarshal([]byte(first), &tenant) != nil || tenant.TenantID != "acme" {
		t.Fatalf("first line %q: %v", first, err)
	}
	// guestlist audit export to standard output, cut too: its output stalls, so that it stops
	// reading the answer.
	env := map[string]string{"GUESTLIST_API": n.api, "GUESTLIST_TOKEN": n.token}
	stdoutCut := make(chan int, 1)
	stalled := &stallingWriter{release: make(chan struct{})}
	go func() {
		stdoutCut <- runAuditExport(ctx, []string{"--tenant", "acme"}, mapEnv(env), stalled, io.Discard)
	}()
	for stalled.written() == 0 {
		time.Sleep(10 * time.Millisecond)
	}

	stopped := make(chan struct{})
	go func() { n.stop(); close(stopped) }()
	time.Sleep(500 * time.Millisecond) // the shutdown begins: the API's streams drain
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("the answer was cut off without its error line: %v", err)
	}
	close(stalled.release)
	select {
	case <-stopped:
	case <-time.After(8 * time.Second):
		t.Fatal("the shutdown waits for the export")
	}
	lines := strings.Split(strings.TrimSuffix(first+string(rest), "\n"), "\n")
	last := lines[len(lines)-1]
	if !isShutdownError(last) {
		t.Fatalf("after %d lines the export ends with %.300q; want the error line", len(lines), last)
	}
	events := countItems(t, lines[:len(lines)-1])["event"]
	if events >= batches*1000+1 {
		t.Fatalf("the whole export (%d events) was sent before the shutdown", events)
	}
	t.Logf("cut after %d of %d events: %s", events, batches*1000+1, last)
	offline := map[string]string{}
	code, stdout, stderr := runCmd(t, offline, "audit", "verify", "--file", writeLines(t, t.TempDir(), "cut.ndjson", lines), "--public-key", keyFile)
	if code != exitError || !strings.Contains(stdout, "the export stream ended with an error") || !strings.Contains(stdout, "Unavailable (code 14)") {
		t.Errorf("verify --file of the cut export: exit %d\n%s%s", code, stdout, stderr)
	}
	// Up to its last checkpoint, the part before the error is a valid (shorter) history: what the
	// error line keeps from passing for the whole.
	lastCP := -1
	for i, l := range lines[:len(lines)-1] {
		var x map[string]json.RawMessage
		if json.Unmarshal([]byte(l), &x) == nil && x["checkpoint"] != nil {
			lastCP = i
		}
	}
	if lastCP > 0 {
		code, stdout, _ := runCmd(t, offline, "audit", "verify", "--file", writeLines(t, t.TempDir(), "prefix.ndjson", lines[:lastCP+1]), "--public-key", keyFile)
		if code != exitOK {
			t.Errorf("the part up to the last checkpoint before the error: exit %d\n%s", code, stdout)
		}
	}

	cliCode := <-stdoutCut
	wl := strings.Split(strings.TrimSuffix(stalled.String(), "\n"), "\n")
	if cliCode != exitError || !isShutdownError(wl[len(wl)-1]) {
		t.Errorf("audit export to standard output, cut: exit %d, last line %.300q", cliCode, wl[len(wl)-1])
	}
}

// acmeWithHostnames creates tenant acme with batches of 1,000 hostnames: a long history, to export.
func (n *devNode) acmeWithHostnames(batches int) {
	n.t.Helper()
	if code, _ := n.rest("POST", "/v1/tenants?tenantId=acme", n.token, map[string]any{"displayName": "acme"}); code != 200 {
		n.t.Fatal("create tenant")
	}
	for b := range batches {
		var reqs []any
		for i := range 1000 {
			reqs = append(reqs, map[string]any{"hostname": map[string]any{
				"hostname": fmt.Sprintf("h%d-%d.acme.example", b, i), "originUrl": n.orig, "mtls": map[string]any{"mode": "MTLS_MODE_OFF"},
			}})
		}
		if code, _ := n.rest("POST", "/v1/tenants/acme/hostnames:batchCreate", n.token, map[string]any{"requests": reqs}); code != 200 {
			n.t.Fatal("batch create")
		}
	}
}

// countItems counts the lines of an export by their one key (event, checkpoint, ...).
func countItems(t *testing.T, lines []string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, l := range lines {
		var x map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &x); err != nil || len(x) != 1 {
			t.Fatalf("not a JSON object with one key: %v: %.300q", err, l)
		}
		for k := range x {
			n[k]++
		}
	}
	return n
}

// isShutdownError reports whether line is an export's error line saying that the server shuts
// down (UNAVAILABLE).
func isShutdownError(line string) bool {
	var x struct {
		Error *struct {
			Code    codes.Code `json:"code"`
			Message string     `json:"message"`
		} `json:"error"`
	}
	return json.Unmarshal([]byte(line), &x) == nil && x.Error != nil && x.Error.Code == codes.Unavailable && strings.Contains(x.Error.Message, "shutting down")
}

// stallingWriter takes what audit export writes, and blocks every write after the first until
// release is closed (so that the export is still in progress when the API shuts down).
type stallingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	b       strings.Builder
	n       int
}

func (w *stallingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	first := w.n == 0
	w.n++
	w.b.Write(p)
	w.mu.Unlock()
	if !first {
		<-w.release
	}
	return len(p), nil
}

func (w *stallingWriter) written() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

func (w *stallingWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestAuditExportFailures: guestlist audit export against a fake API. It writes bare lines, also
// from an API of an earlier version ({"result":...} lines); an answer that ends with an error line,
// is cut off, or is not an export fails it (exit 1, saying why): with --out no file is written
// (one already there is kept), and on standard output the lines end with an error line, so that
// the output never verifies as a (shorter) history.
func TestAuditExportFailures(t *testing.T) {
	const (
		tenant = `{"tenantId":"acme"}`
		event  = `{"event":{"position":"1","type":"x","hash":"ab"}}`
		cp     = `{"checkpoint":"guestlist/acme\n1\n"}`
		errL   = `{"error":{"code":14,"message":"store gone","details":[]}}`
	)
	answers := map[string]string{
		"bare":       tenant + "\n" + event + "\n" + cp + "\n",
		"spaced":     `{ "tenantId" : "acme" }` + "\n\n" + `{"event": {"position": "1"}}` + "\n" + cp + "\n",
		"old":        `{"result":` + tenant + "}\n" + `{"result":` + event + "}\n" + `{"result":` + cp + "}\n",
		"error":      tenant + "\n" + event + "\n" + cp + "\n" + errL + "\n",
		"olderror":   `{"result":` + tenant + "}\n" + `{"result":` + event + "}\n" + errL + "\n",
		"cut":        tenant + "\n" + event + "\n" + cp + "\n",
		"notenant":   event + "\n" + cp + "\n",
		"other":      `{"tenantId":"globex"}` + "\n" + event + "\n",
		"garbage":    tenant + "\n" + "not json\n",
		"unknown":    tenant + "\n" + `{"something":1}` + "\n",
		"empty":      "",
		"errorfirst": errL + "\n",
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.Header.Get("Authorization")[len("Bearer "):]
		w.Header().Set("Content-Type", "application/x-ndjson")
		if name == "cut" {
			// A declared length the body never reaches: the client sees the answer cut off.
			w.Header().Set("Content-Length", "100000")
		}
		_, _ = io.WriteString(w, answers[name])
	}))
	defer srv.Close()
	run := func(name string, args ...string) (int, string, string) {
		return runCmd(t, map[string]string{"GUESTLIST_API": srv.URL, "GUESTLIST_TOKEN": name}, append([]string{"audit", "export", "--tenant", "acme"}, args...)...)
	}
	bare := tenant + "\n" + event + "\n" + cp + "\n"
	for _, name := range []string{"bare", "spaced", "old"} {
		want := bare
		if name == "spaced" {
			want = tenant + "\n" + `{"event":{"position":"1"}}` + "\n" + cp + "\n"
		}
		if code, stdout, stderr := run(name); code != exitOK || stdout != want {
			t.Errorf("%s: exit %d\n%s%s\nwant\n%s", name, code, stdout, stderr, want)
		}
		out := filepath.Join(t.TempDir(), "x.ndjson")
		if code, _, stderr := run(name, "--out", out); code != exitOK {
			t.Errorf("%s --out: exit %d %s", name, code, stderr)
		} else if b, _ := os.ReadFile(out); string(b) != want {
			t.Errorf("%s --out wrote\n%s", name, b)
		}
	}
	for name, want := range map[string]string{
		"error":      "the export failed on the server after 3 lines: Unavailable (code 14): store gone",
		"olderror":   "the export failed on the server after 2 lines: Unavailable (code 14): store gone",
		"cut":        "read the answer after 3 lines: unexpected EOF",
		"notenant":   `the answer does not start with tenant "acme"`,
		"other":      `line 1 of the answer names another tenant than "acme"`,
		"garbage":    "line 2 of the answer is not JSON",
		"unknown":    "line 2 of the answer is not an item of an export",
		"empty":      "the answer is empty",
		"errorfirst": "the export failed on the server after 0 lines",
	} {
		dir := t.TempDir()
		out := filepath.Join(dir, "kept.ndjson")
		if err := os.WriteFile(out, []byte("an earlier export\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := run(name, "--out", out)
		if b, _ := os.ReadFile(out); code != exitError || !strings.Contains(stderr, want) || string(b) != "an earlier export\n" || stdout != "" {
			t.Errorf("%s --out: exit %d, file %q\n%s%s\nwant %q", name, code, b, stdout, stderr, want)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("%s --out: left %v", name, entries)
		}
		code, stdout, stderr = run(name)
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		last := lines[len(lines)-1]
		switch {
		case code != exitError || !strings.Contains(stderr, want):
			t.Errorf("%s: exit %d\n%s%s\nwant %q", name, code, stdout, stderr, want)
		case stdout == "":
			if name != "empty" && name != "errorfirst" && name != "notenant" && name != "other" {
				t.Errorf("%s: nothing written", name)
			}
		case !strings.HasPrefix(last, `{"error":`):
			t.Errorf("%s: the output does not end with an error line:\n%s", name, stdout)
		case strings.HasPrefix(name, "error") || name == "olderror":
			if last != errL {
				t.Errorf("%s: last line %s, want the API's %s", name, last, errL)
			}
		default:
			var x struct {
				Error struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(last), &x); err != nil || x.Error.Code != int(codes.Unknown) || !strings.Contains(x.Error.Message, want) {
				t.Errorf("%s: last line %s (%v)", name, last, err)
			}
		}
	}
}
