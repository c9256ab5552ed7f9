package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"guestlist.dev/edge/certid"
	"guestlist.dev/projections/audit"
	"guestlist.dev/projections/ledger"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// defaultAPI is where "guestlist audit" reaches the REST API unless --api says otherwise.
const defaultAPI = "http://127.0.0.1:8080"

// auditSubcommands are the subcommands of "guestlist audit".
var auditSubcommands = []struct{ name, summary string }{
	{"history", "the tenant's events, oldest first, one JSON object a line"},
	{"snapshot", "the tenant's configuration at a position or a time (JSON)"},
	{"explain", "the decision the edge would have made; with --decision, re-derive a logged decision (exit 1 when it differs)"},
	{"diff", "what changed in the tenant's configuration between two positions or times"},
	{"verify", "check the history against its hash chain and signed checkpoints (online, or offline: --file, --public-key);\n" +
		"             with --checkpoint OLD --public-key, that the latest history extends a kept checkpoint (consistency proof);\n" +
		"             with --revision N --public-key, that one event is in it (inclusion proof)"},
	{"checkpoint", "print the latest signed checkpoint (keep it for verify --checkpoint)"},
	{"export", "export the history for offline verification (NDJSON: one JSON object a line)"},
}

func auditUsage(w io.Writer) {
	fmt.Fprint(w, "Usage: guestlist audit SUBCOMMAND [flags]\n\nSubcommands:\n")
	for _, s := range auditSubcommands {
		fmt.Fprintf(w, "  %-10s %s\n", s.name, s.summary)
	}
	fmt.Fprint(w, "\nRun \"guestlist audit SUBCOMMAND -h\" for its flags.\n")
}

// runAudit is "guestlist audit": the auditors' command line against the REST API.
func runAudit(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		auditUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" && !strings.HasPrefix(args[1], "-") {
			// "audit help history" shows history's flags, as "audit history -h" does.
			return runAudit(ctx, []string{args[1], "-h"}, env, stdout, stderr)
		}
		auditUsage(stderr)
		return exitOK
	case "history":
		return runAuditHistory(ctx, args[1:], env, stdout, stderr)
	case "snapshot":
		return runAuditSnapshot(ctx, args[1:], env, stdout, stderr)
	case "explain":
		return runAuditExplain(ctx, args[1:], env, stdout, stderr)
	case "diff":
		return runAuditDiff(ctx, args[1:], env, stdout, stderr)
	case "verify":
		return runAuditVerify(ctx, args[1:], env, stdout, stderr)
	case "export":
		return runAuditExport(ctx, args[1:], env, stdout, stderr)
	case "checkpoint":
		return runAuditCheckpoint(ctx, args[1:], env, stdout, stderr)
	}
	fmt.Fprintf(stderr, "guestlist audit: unknown subcommand %q\n\n", args[0])
	auditUsage(stderr)
	return exitUsage
}

// apiClient calls the REST API with a bearer token.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// auditFlags are the flags every audit subcommand has.
type auditFlags struct {
	api    string
	apiCA  string
	token  tokenFlag
	tenant string
}

func (f *auditFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.api, "api", defaultAPI, "the REST API's base URL")
	fs.StringVar(&f.apiCA, "api-ca", "", "with an https:// --api: trust the CA certificates of this PEM file (default: the system's), e.g. the private CA of the API's --http-tls-cert")
	fs.Var(&f.token, "token", "bearer token (an auditor's, a tenant admin's or the admin's)")
	fs.StringVar(&f.tenant, "tenant", "", "the tenant's id")
}

// client checks the common flags and returns the API client: every subcommand that calls the API
// goes through it, so that --api-ca applies to all of them.
func (f *auditFlags) client(needTenant bool) (*apiClient, error) {
	if f.token.token == "" {
		return nil, errors.New("--token (or GUESTLIST_TOKEN) is required")
	}
	if needTenant && f.tenant == "" {
		return nil, errors.New("--tenant is required")
	}
	u, err := url.Parse(f.api)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--api %q: want an http(s) URL such as %s", f.api, defaultAPI)
	}
	hc := &http.Client{Timeout: time.Minute, CheckRedirect: refuseRedirect}
	tlsCfg, err := clientTLS("api-ca", f.apiCA, "api", u)
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsCfg
		hc.Transport = tr
	}
	return &apiClient{base: strings.TrimRight(f.api, "/"), token: f.token.token, http: hc}, nil
}

// refuseRedirect is the audit client's redirect policy: none is followed. The API never
// redirects, and Go's client would send the Authorization header again to the redirect's target
// when it is the same host (over plaintext http:// or to another port) or a subdomain of it: the
// bearer token goes to --api and nowhere else.
func refuseRedirect(req *http.Request, via []*http.Request) error {
	return fmt.Errorf("the answer redirects to %s: not followed (the API does not redirect; the bearer token goes to --api only)", req.URL.Redacted())
}

// call sends a request (body nil for none) and returns the response body of a 200.
func (c *apiClient) call(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read the response: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(method, path, resp.Status, raw)
	}
	return raw, nil
}

// statusError is the error of an answer other than 200: its HTTP status and the message of the
// google.rpc.Status in its body (or the body itself).
func statusError(method, path, httpStatus string, body []byte) error {
	var st struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(body, &st)
	if st.Message == "" {
		st.Message = strings.TrimSpace(string(body))
	}
	return fmt.Errorf("%s %s: %s: %s", method, path, httpStatus, st.Message)
}

// callProto calls the API and decodes the response into out.
func (c *apiClient) callProto(ctx context.Context, method, path string, in, out proto.Message) error {
	var body []byte
	if in != nil {
		b, err := protojson.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode the request: %w", err)
		}
		body = b
	}
	raw, err := c.call(ctx, method, path, body)
	if err != nil {
		return err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode the response: %w", method, path, err)
	}
	return nil
}

// parseAuditFlags parses a subcommand's flags; it returns an exit code when the command is over.
func parseAuditFlags(fs *flag.FlagSet, args []string, env func(string) string, stderr io.Writer) (int, bool) {
	if err := parseFlags(fs, args, env); err != nil {
		if errors.Is(err, errHelp) {
			return exitOK, true
		}
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return exitUsage, true
	}
	return 0, false
}

func runAuditHistory(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit history", "Print the tenant's events, oldest first, one JSON object a line.", stderr)
	var f auditFlags
	f.register(fs)
	from := fs.Uint64("from-position", 0, "only events after this global position")
	if code, done := parseAuditFlags(fs, args, env, stderr); done {
		return code
	}
	c, err := f.client(true)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit history: %v\n", err)
		return exitUsage
	}
	for tok := ""; ; {
		q := url.Values{"fromPosition": {strconv.FormatUint(*from, 10)}, "pageSize": {"1000"}}
		if tok != "" {
			q.Set("pageToken", tok)
		}
		raw, err := c.call(ctx, http.MethodGet, "/v1/tenants/"+url.PathEscape(f.tenant)+"/events?"+q.Encode(), nil)
		if err != nil {
			fmt.Fprintf(stderr, "guestlist audit history: %v\n", err)
			return exitError
		}
		var page struct {
			Events        []json.RawMessage `json:"events"`
			NextPageToken string            `json:"nextPageToken"`
		}
		if err := json.Unmarshal(raw, &page); err != nil {
			fmt.Fprintf(stderr, "guestlist audit history: decode the response: %v\n", err)
			return exitError
		}
		for _, ev := range page.Events {
			var b bytes.Buffer
			if err := json.Compact(&b, ev); err != nil {
				fmt.Fprintf(stderr, "guestlist audit history: %v\n", err)
				return exitError
			}
			fmt.Fprintln(stdout, b.String())
		}
		if tok = page.NextPageToken; tok == "" {
			return exitOK
		}
	}
}

// pointFlags name a point of history: a position or a time.
type pointFlags struct {
	position *uint64
	time     *time.Time
}

func (p *pointFlags) register(fs *flag.FlagSet, prefix, what string) {
	fs.Func(prefix+"position", "the global position "+what, func(s string) error {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return errors.New("want a position (a non-negative integer)")
		}
		p.position = &v
		return nil
	})
	fs.Func(prefix+"time", "the time (RFC 3339) "+what, func(s string) error {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return errors.New("want an RFC 3339 time such as 2026-11-30T12:00:00Z")
		}
		p.time = &v
		return nil
	})
}

// query returns the snapshot query for the point ("" for now), or an error when both are set.
func (p *pointFlags) query() (string, error) {
	switch {
	case p.position != nil && p.time != nil:
		return "", errors.New("give a position or a time, not both")
	case p.position != nil:
		return "?atPosition=" + strconv.FormatUint(*p.position, 10), nil
	case p.time != nil:
		return "?atTime=" + url.QueryEscape(p.time.UTC().Format(time.RFC3339Nano)), nil
	}
	return "", nil
}

func (c *apiClient) snapshot(ctx context.Context, tenant string, p *pointFlags) (*guestlistv1.Snapshot, error) {
	q, err := p.query()
	if err != nil {
		return nil, err
	}
	out := &guestlistv1.Snapshot{}
	if err := c.callProto(ctx, http.MethodGet, "/v1/tenants/"+url.PathEscape(tenant)+"/snapshot"+q, nil, out); err != nil {
		return nil, err
	}
	return out, nil
}

func runAuditSnapshot(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit snapshot", "Print the tenant's configuration as it stood at a position or a time (default: now).", stderr)
	var f auditFlags
	f.register(fs)
	var at pointFlags
	at.register(fs, "at-", "of the snapshot")
	if code, done := parseAuditFlags(fs, args, env, stderr); done {
		return code
	}
	c, err := f.client(true)
	if err == nil {
		_, err = at.query()
	}
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit snapshot: %v\n", err)
		return exitUsage
	}
	s, err := c.snapshot(ctx, f.tenant, &at)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit snapshot: %v\n", err)
		return exitError
	}
	if s.GetTenant() == nil {
		fmt.Fprintf(stderr, "guestlist audit snapshot: tenant %q did not exist yet at that point (its first event is later)\n", f.tenant)
	}
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(s)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit snapshot: %v\n", err)
		return exitError
	}
	fmt.Fprintln(stdout, string(b))
	return exitOK
}

func runAuditDiff(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit diff", "List what changed in the tenant's configuration from one point to another (default: now).", stderr)
	var f auditFlags
	f.register(fs)
	var from, to pointFlags
	from.register(fs, "from-", "to compare from")
	to.register(fs, "to-", "to compare to (default: now)")
	if code, done := parseAuditFlags(fs, args, env, stderr); done {
		return code
	}
	c, err := f.client(true)
	if err == nil && from.position == nil && from.time == nil {
		err = errors.New("--from-position or --from-time is required")
	}
	if err == nil {
		_, err = from.query()
	}
	if err == nil {
		_, err = to.query()
	}
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit diff: %v\n", err)
		return exitUsage
	}
	a, err := c.snapshot(ctx, f.tenant, &from)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit diff: from: %v\n", err)
		return exitError
	}
	b, err := c.snapshot(ctx, f.tenant, &to)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit diff: to: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "position %d -> %d\n", a.GetPosition(), b.GetPosition())
	for _, line := range audit.Diff(a, b) {
		fmt.Fprintln(stdout, line)
	}
	return exitOK
}

// headerFlag collects --header 'Name: value' flags as the policy sees them: lower-case names,
// repeated headers joined by ", ".
type headerFlag struct{ values map[string]string }

func (h *headerFlag) String() string { return "" }

func (h *headerFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	name = strings.ToLower(strings.TrimSpace(name))
	if !ok || name == "" {
		return fmt.Errorf("want 'Name: value', got %q", s)
	}
	value = strings.TrimSpace(value)
	if h.values == nil {
		h.values = map[string]string{}
	}
	if v, ok := h.values[name]; ok {
		value = v + ", " + value
	}
	h.values[name] = value
	return nil
}

// decisionLine is what explain --decision reads of a decision log line.
type decisionLine struct {
	Time           time.Time `json:"time"`
	TenantID       string    `json:"tenant_id"`
	Hostname       string    `json:"hostname"`
	ConfigRevision uint64    `json:"config_revision"`
	Verdict        string    `json:"verdict"`
	Reason         string    `json:"reason"`
	Rule           string    `json:"rule"`
	Cert           struct {
		Presented         bool   `json:"presented"`
		FingerprintSHA256 string `json:"fingerprint_sha256"`
	} `json:"cert"`
	Request struct {
		Method string `json:"method"`
		Path   string `json:"path"`
	} `json:"request"`
}

func runAuditExplain(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit explain", "Give the decision the edge would have made for a request. With --decision, re-derive a logged\n"+
		"decision (its tenant, hostname, request, config_revision and time) and exit 0 when the verdict,\nreason and rule match, 1 when not.", stderr)
	var f auditFlags
	f.register(fs)
	hostname := fs.String("hostname", "", "the request's hostname")
	certFile := fs.String("cert", "", "the client's certificate chain, leaf first (PEM file); none: no certificate")
	method := fs.String("method", "GET", "the request's method")
	path := fs.String("path", "/", "the request's path")
	handshake := fs.Bool("handshake", false, "explain the TLS handshake instead of a request (what a decision logged with an empty method records)")
	var headers headerFlag
	fs.Var(&headers, "header", "a request header, 'Name: value' (repeatable), for a policy that reads request.headers; the decision log does not record them")
	var at pointFlags
	at.register(fs, "at-", "of the configuration (default: now)")
	requestTime := fs.String("request-time", "", "with --at-position: when the request was made (RFC 3339; default now)")
	logged := fs.String("decision", "", "a decision log line (JSON) to re-derive")
	if code, done := parseAuditFlags(fs, args, env, stderr); done {
		return code
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "guestlist audit explain: "+format+"\n", a...)
		return code
	}
	req := &guestlistv1.ExplainRequest{Hostname: *hostname, Method: *method, Path: *path}
	if *handshake {
		req.Method, req.Path = "", ""
	}
	var line *decisionLine
	if *logged != "" {
		line = &decisionLine{}
		if err := json.Unmarshal([]byte(*logged), line); err != nil {
			return fail(exitUsage, "--decision: not a decision log line: %v", err)
		}
		if line.Hostname == "" || line.TenantID == "" || line.Time.IsZero() {
			return fail(exitUsage, "--decision: the line lacks time, tenant_id or hostname")
		}
		if f.tenant == "" {
			f.tenant = line.TenantID
		}
		req.Hostname, req.Method, req.Path = line.Hostname, line.Request.Method, line.Request.Path
		req.At = &guestlistv1.ExplainRequest_AtPosition{AtPosition: line.ConfigRevision}
		req.RequestTime = timestamppb.New(line.Time)
	} else {
		if req.Hostname == "" {
			return fail(exitUsage, "--hostname (or --decision) is required")
		}
		if _, err := at.query(); err != nil {
			return fail(exitUsage, "%v", err)
		}
		switch {
		case at.position != nil:
			req.At = &guestlistv1.ExplainRequest_AtPosition{AtPosition: *at.position}
		case at.time != nil:
			req.At = &guestlistv1.ExplainRequest_AtTime{AtTime: timestamppb.New(*at.time)}
		}
		if *requestTime != "" {
			t, err := time.Parse(time.RFC3339Nano, *requestTime)
			if err != nil {
				return fail(exitUsage, "--request-time: want an RFC 3339 time")
			}
			req.RequestTime = timestamppb.New(t)
		}
	}
	if headers.values != nil {
		if req.Method == "" {
			return fail(exitUsage, "--header: the handshake has no headers")
		}
		req.Headers = &guestlistv1.RequestHeaders{Values: headers.values}
	}
	c, err := f.client(true)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	if *certFile != "" {
		b, err := os.ReadFile(*certFile)
		if err != nil {
			return fail(exitUsage, "--cert: %v", err)
		}
		chain, err := audit.ParseChain(string(b))
		if err != nil {
			return fail(exitUsage, "--cert %s: %v", *certFile, err)
		}
		req.ClientCertificateChainPem = string(b)
		// The certificate must be the one the logged decision saw, or the comparison below would
		// blame the history for the wrong certificate.
		if line != nil && len(chain) > 0 {
			switch fp := certid.FingerprintSHA256(chain[0].Raw); {
			case !line.Cert.Presented:
				return fail(exitUsage, "--cert: the logged request presented no certificate; leave --cert out")
			case line.Cert.FingerprintSHA256 != "" && fp != line.Cert.FingerprintSHA256:
				return fail(exitUsage, "--cert %s: its leaf's SHA-256 fingerprint is %s, the logged request's %s: not the certificate the decision was made with", *certFile, fp, line.Cert.FingerprintSHA256)
			}
		}
	} else if line != nil && line.Cert.Presented {
		return fail(exitUsage, "--decision: the logged request presented a certificate (SHA-256 fingerprint %s); give its chain with --cert", line.Cert.FingerprintSHA256)
	}
	req.TenantId = f.tenant
	resp := &guestlistv1.ExplainResponse{}
	if err := c.callProto(ctx, http.MethodPost, "/v1/tenants/"+url.PathEscape(f.tenant)+":explain", req, resp); err != nil {
		if line != nil && strings.Contains(err.Error(), "reads request.headers") {
			return fail(exitError, "%v\nCANNOT RE-DERIVE: the policy's outcome depends on headers the decision log does not record; give them with --header", err)
		}
		return fail(exitError, "%v", err)
	}
	fmt.Fprintf(stdout, "explained: verdict=%s reason=%s rule=%q config_revision=%d\n", resp.GetVerdict(), resp.GetReason(), resp.GetRule(), resp.GetConfigRevision())
	if line == nil {
		return exitOK
	}
	fmt.Fprintf(stdout, "logged:    verdict=%s reason=%s rule=%q config_revision=%d\n", line.Verdict, line.Reason, line.Rule, line.ConfigRevision)
	if resp.GetVerdict() != line.Verdict || resp.GetReason() != line.Reason || resp.GetRule() != line.Rule {
		fmt.Fprintln(stdout, "MISMATCH: the replayed configuration gives a different decision")
		return exitError
	}
	fmt.Fprintln(stdout, "match")
	return exitOK
}

func runAuditVerify(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit verify", "Check the tenant's history against its hash chain and signed checkpoints: through the API, or\n"+
		"offline with --file EXPORT --public-key KEY.pem alone. Exit 0 when intact, 1 when not. Offline, give\n"+
		"--tenant too: any tenant's genuine export verifies with the key, so without it the tenant is the one\n"+
		"the file names (printed with the positions checked); with it, another tenant's export is refused.\n\n"+
		"With --checkpoint OLD --public-key KEY.pem: fetch the RFC 6962 consistency proof from a checkpoint kept\n"+
		"earlier (guestlist audit checkpoint) to the latest signed checkpoint, and check both signatures and the\n"+
		"proof; exit 0 when the latest history extends the old one, 1 when not.\n\n"+
		"With --revision N --public-key KEY.pem: fetch the event at revision N with its inclusion proof in the\n"+
		"latest signed checkpoint, recompute its leaf from the event's exact bytes, and check the signature and\n"+
		"the proof; exit 0 when the event is in the history, 1 when not. Neither downloads the history.", stderr)
	var f auditFlags
	f.register(fs)
	file := fs.String("file", "", "an export to verify offline: NDJSON as guestlist audit export writes it and GET .../events:export answers it (or as earlier versions wrote it); a line {\"error\":...} (an export that failed part-way) is never intact")
	keyFile := fs.String("public-key", "", "with --file, --checkpoint or --revision: the checkpoint public key (PEM)")
	oldFile := fs.String("checkpoint", "", "a signed checkpoint kept earlier (file): check that the latest history extends it")
	var revision *uint64
	fs.Func("revision", "check that the tenant's event at this revision is in the latest signed checkpoint", func(s string) error {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return errors.New("want a revision (a non-negative integer)")
		}
		revision = &v
		return nil
	})
	if code, done := parseAuditFlags(fs, args, env, stderr); done {
		return code
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "guestlist audit verify: "+format+"\n", a...)
		return code
	}
	modes := 0
	for _, set := range []bool{*file != "", *oldFile != "", revision != nil} {
		if set {
			modes++
		}
	}
	if modes > 1 {
		return fail(exitUsage, "give one of --file, --checkpoint and --revision")
	}
	if *oldFile != "" || revision != nil {
		if *keyFile == "" {
			return fail(exitUsage, "--checkpoint and --revision need --public-key")
		}
		pub, err := readPublicKey(*keyFile)
		if err != nil {
			return fail(exitUsage, "%v", err)
		}
		if *oldFile != "" {
			return verifyConsistency(ctx, &f, pub, *oldFile, stdout, fail)
		}
		return verifyInclusion(ctx, &f, pub, *revision, stdout, fail)
	}
	report := func(valid bool, checked, firstBad uint64, problem string) int {
		if valid {
			fmt.Fprintf(stdout, "intact: %d events of tenant %q checked\n", checked, f.tenant)
			return exitOK
		}
		fmt.Fprintf(stdout, "NOT intact after %d events checked: %s\n", checked, problem)
		if firstBad != 0 {
			fmt.Fprintf(stdout, "first bad position: %d\n", firstBad)
		}
		return exitError
	}
	if *file != "" {
		if *keyFile == "" {
			return fail(exitUsage, "--file needs --public-key")
		}
		pub, err := readPublicKey(*keyFile)
		if err != nil {
			return fail(exitUsage, "%v", err)
		}
		in, err := os.Open(*file)
		if err != nil {
			return fail(exitUsage, "--file: %v", err)
		}
		defer in.Close()
		// A directory opens, and fails only when read: that is a usage error, not a history
		// found broken (pipes and other files are read as they come).
		if fi, err := in.Stat(); err == nil && fi.IsDir() {
			return fail(exitUsage, "--file %s is a directory, not an export", *file)
		}
		var r ledger.Result
		if f.tenant != "" {
			r = ledger.VerifyExportTenant(in, pub, f.tenant)
		} else {
			r = ledger.VerifyExport(in, pub)
		}
		if !r.Valid {
			return report(r.Valid, r.Checked, r.FirstBadPosition, r.Problem)
		}
		// Say which history was verified: without --tenant it is the one the file names, and a
		// genuine export of any tenant verifies with the same key.
		fmt.Fprintf(stdout, "intact: %d events of tenant %q checked", r.Checked, r.Tenant)
		if r.Checked > 0 {
			fmt.Fprintf(stdout, ", positions %d to %d", r.FirstPosition, r.LastPosition)
		}
		fmt.Fprintln(stdout)
		// An export cut short at an earlier checkpoint (or an old one) verifies too: say as of
		// when the history is signed, so that the auditor sees how recent it is.
		fmt.Fprintf(stdout, "the history as of the signed checkpoint of %s (size %d)\n", r.CheckpointTime.UTC().Format(time.RFC3339Nano), r.Checked)
		if f.tenant == "" {
			fmt.Fprintf(stdout, "the tenant is the one the file names; pass --tenant to require it\n")
		}
		return exitOK
	}
	c, err := f.client(true)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	resp := &guestlistv1.VerifyResponse{}
	if err := c.callProto(ctx, http.MethodPost, "/v1/tenants/"+url.PathEscape(f.tenant)+":verify", &guestlistv1.VerifyRequest{TenantId: f.tenant}, resp); err != nil {
		return fail(exitError, "%v", err)
	}
	return report(resp.GetValid(), resp.GetCheckedEvents(), resp.GetFirstBadPosition(), resp.GetProblem())
}

// readPublicKey reads the checkpoint public key (PEM) from a file.
func readPublicKey(path string) (ed25519.PublicKey, error) {
	keyPEM, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--public-key: %w", err)
	}
	pub, err := ledger.ParsePublicKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--public-key %s: %w", path, err)
	}
	return pub, nil
}

// verifyConsistency is "audit verify --checkpoint OLD": it fetches the consistency proof from the
// old checkpoint's size to the latest signed checkpoint and checks it with the key alone
// (audit.VerifyConsistencyProof). Exit 0 when the latest history extends the old one, 1 when not
// (a forged or foreign old checkpoint included), 2 for unusable input.
func verifyConsistency(ctx context.Context, f *auditFlags, pub ed25519.PublicKey, oldFile string, stdout io.Writer, fail func(int, string, ...any) int) int {
	raw, err := os.ReadFile(oldFile)
	if err != nil {
		return fail(exitUsage, "--checkpoint: %v", err)
	}
	old := ledger.SignedCheckpoint(raw)
	oldCP, err := ledger.ParseCheckpoint(old)
	if err != nil {
		return fail(exitUsage, "--checkpoint %s: %v", oldFile, err)
	}
	if f.tenant == "" {
		f.tenant = oldCP.Tenant
	}
	if oldCP.Tenant != f.tenant {
		return fail(exitUsage, "--checkpoint %s is of tenant %q, not %q", oldFile, oldCP.Tenant, f.tenant)
	}
	if _, err := ledger.VerifyCheckpoint(pub, old); err != nil {
		fmt.Fprintf(stdout, "NOT verified: the old checkpoint (size %d): %v\n", oldCP.Size, err)
		return exitError
	}
	c, err := f.client(true)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	p := &guestlistv1.ConsistencyProof{}
	q := url.Values{"fromSize": {strconv.FormatUint(oldCP.Size, 10)}}
	if err := c.callProto(ctx, http.MethodGet, "/v1/tenants/"+url.PathEscape(f.tenant)+"/proofs/consistency?"+q.Encode(), nil, p); err != nil {
		return fail(exitError, "%v", err)
	}
	newer, err := audit.VerifyConsistencyProof(pub, old, p)
	if err != nil {
		fmt.Fprintf(stdout, "NOT consistent: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "consistent: the history of %s at size %d (signed %s) extends the one at size %d (signed %s)\n",
		newer.Tenant, newer.Size, newer.Time.Format(time.RFC3339), oldCP.Size, oldCP.Time.Format(time.RFC3339))
	return exitOK
}

// verifyInclusion is "audit verify --revision N": it fetches the event at revision N with its
// inclusion proof in the latest signed checkpoint, recomputes the leaf from the event's exact
// bytes and checks it with the key alone (audit.VerifyInclusionProof). Exit 0 when the event is in
// the history, 1 when not.
func verifyInclusion(ctx context.Context, f *auditFlags, pub ed25519.PublicKey, revision uint64, stdout io.Writer, fail func(int, string, ...any) int) int {
	c, err := f.client(true)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	p := &guestlistv1.InclusionProof{}
	q := url.Values{"revision": {strconv.FormatUint(revision, 10)}}
	if err := c.callProto(ctx, http.MethodGet, "/v1/tenants/"+url.PathEscape(f.tenant)+"/proofs/inclusion?"+q.Encode(), nil, p); err != nil {
		return fail(exitError, "%v", err)
	}
	if p.GetRevision() != revision {
		fmt.Fprintf(stdout, "NOT included: asked for revision %d, got a proof of revision %d\n", revision, p.GetRevision())
		return exitError
	}
	cp, err := audit.VerifyInclusionProof(pub, f.tenant, p)
	if err != nil {
		fmt.Fprintf(stdout, "NOT included: %v\n", err)
		return exitError
	}
	ev := p.GetEvent()
	fmt.Fprintf(stdout, "included: revision %d (position %d, %s by %s at %s) is in the history of %s at size %d (signed %s)\n",
		revision, ev.GetPosition(), ev.GetType(), ev.GetActor(), ev.GetTime().AsTime().Format(time.RFC3339Nano), cp.Tenant, cp.Size, cp.Time.Format(time.RFC3339))
	return exitOK
}

func runAuditCheckpoint(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit checkpoint", "Print the tenant's latest signed checkpoint, in its text form. Keep it: later,\n"+
		"guestlist audit verify --checkpoint FILE --public-key KEY.pem checks that the history then extends it.", stderr)
	var f auditFlags
	f.register(fs)
	out := fs.String("out", "", "write to this file instead of standard output")
	if code, done := parseAuditFlags(fs, args, env, stderr); done {
		return code
	}
	c, err := f.client(true)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit checkpoint: %v\n", err)
		return exitUsage
	}
	// The consistency proof from size 0 to the latest checkpoint is empty: it carries the checkpoint.
	p := &guestlistv1.ConsistencyProof{}
	if err := c.callProto(ctx, http.MethodGet, "/v1/tenants/"+url.PathEscape(f.tenant)+"/proofs/consistency?fromSize=0", nil, p); err != nil {
		fmt.Fprintf(stderr, "guestlist audit checkpoint: %v\n", err)
		return exitError
	}
	if _, err := ledger.ParseCheckpoint(ledger.SignedCheckpoint(p.GetCheckpoint())); err != nil {
		fmt.Fprintf(stderr, "guestlist audit checkpoint: the API returned no checkpoint: %v\n", err)
		return exitError
	}
	if *out == "" {
		_, err = io.WriteString(stdout, p.GetCheckpoint())
	} else {
		err = os.WriteFile(*out, []byte(p.GetCheckpoint()), 0o644)
	}
	if err != nil {
		fmt.Fprintf(stderr, "guestlist audit checkpoint: %v\n", err)
		return exitError
	}
	return exitOK
}
