package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/services/auth"
)

// mapEnv is an env lookup from a map.
func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// captureDev replaces runControlPlane for one test and returns the configuration it was called with.
func captureDev(t *testing.T) *devConfig {
	t.Helper()
	got := &devConfig{}
	prev := runControlPlane
	runControlPlane = func(_ context.Context, cfg devConfig) error {
		*got = cfg
		return nil
	}
	t.Cleanup(func() { runControlPlane = prev })
	return got
}

func runCmd(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, mapEnv(env), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDevFlagsEnvPrecedence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want func(devConfig) string // "" when fine, else a complaint
	}{
		{
			name: "defaults",
			args: []string{"--data-dir", dir},
			want: func(c devConfig) string {
				if c.GRPCAddr != "127.0.0.1:50051" || c.HTTPAddr != "127.0.0.1:8080" || c.EdgeAddr != "127.0.0.1:8443" || c.OriginAddr != "127.0.0.1:8081" {
					return "addresses are not PRODUCT.md's defaults"
				}
				if c.DecisionLog != filepath.Join(dir, "decisions.jsonl") {
					return "decision log default is not <data-dir>/decisions.jsonl"
				}
				if got := c.originAllow().String(); got != "127.0.0.0/8,::1/128" {
					return "dev's edge does not reach loopback origins (the echo origin) by default: " + got
				}
				return ""
			},
		},
		{
			name: "env sets",
			env:  map[string]string{"GUESTLIST_DATA_DIR": dir, "GUESTLIST_GRPC_ADDR": "127.0.0.1:0", "GUESTLIST_DECISION_LOG": "-", "GUESTLIST_LOG_FORMAT": "json"},
			want: func(c devConfig) string {
				if c.DataDir != dir || c.GRPCAddr != "127.0.0.1:0" || c.DecisionLog != "-" {
					return "environment variables were not applied"
				}
				return ""
			},
		},
		{
			name: "flag beats env",
			env:  map[string]string{"GUESTLIST_DATA_DIR": "/nonexistent/should-not-be-used", "GUESTLIST_HTTP_ADDR": "127.0.0.1:1"},
			args: []string{"--data-dir=" + dir, "-http-addr", ":0"},
			want: func(c devConfig) string {
				if c.DataDir != dir || c.HTTPAddr != ":0" {
					return "the command line did not win over the environment"
				}
				return ""
			},
		},
		{
			name: "origin allow emptied: public addresses only",
			args: []string{"--data-dir", dir, "--origin-allow="},
			want: func(c devConfig) string {
				if c.OriginAllow == nil || c.originAllow().String() != "" {
					return "an empty --origin-allow did not take loopback away"
				}
				return ""
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := captureDev(t)
			code, _, stderr := runCmd(t, tc.env, append([]string{"dev"}, tc.args...)...)
			if code != exitOK {
				t.Fatalf("exit %d, stderr:\n%s", code, stderr)
			}
			if msg := tc.want(*got); msg != "" {
				t.Errorf("%s: %+v", msg, *got)
			}
		})
	}
}

func TestDevBadValues(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		env     map[string]string
		args    []string
		mention string
	}{
		{args: []string{"--log-level", "loud"}, mention: "log-level"},
		{args: []string{"--log-format", "xml"}, mention: "log-format"},
		{args: []string{"--grpc-addr", "localhost"}, mention: "grpc-addr"},
		{args: []string{"--http-addr", "127.0.0.1:99999"}, mention: "http-addr"},
		{args: []string{"--admin-token", "has space"}, mention: "admin-token"},
		{args: []string{"--no-such-flag"}, mention: "no-such-flag"},
		{args: []string{"extra"}, mention: "extra"},
		{env: map[string]string{"GUESTLIST_LOG_LEVEL": "loud"}, mention: "GUESTLIST_LOG_LEVEL"},
		{env: map[string]string{"GUESTLIST_EDGE_ADDR": "nope"}, mention: "GUESTLIST_EDGE_ADDR"},
		{args: []string{"--origin-allow", "10.0.0.0/33"}, mention: "origin-allow"},
		// The flag package says only "parse error" for its own types: what they take is added.
		{args: []string{"--body-idle-timeout", "abc"}, mention: "-body-idle-timeout: parse error (want a duration such as 30s, 5m or 1h30m)"},
		{env: map[string]string{"GUESTLIST_BODY_IDLE_TIMEOUT": "abc"}, mention: "GUESTLIST_BODY_IDLE_TIMEOUT (--body-idle-timeout): parse error (want a duration"},
	}
	for _, tc := range cases {
		called := false
		prev := runControlPlane
		runControlPlane = func(context.Context, devConfig) error { called = true; return nil }
		code, _, stderr := runCmd(t, tc.env, append([]string{"dev", "--data-dir", dir}, tc.args...)...)
		runControlPlane = prev
		if code != exitUsage {
			t.Errorf("%v %v: exit %d, want 2", tc.env, tc.args, code)
		}
		if !strings.Contains(stderr, tc.mention) {
			t.Errorf("%v %v: stderr does not name %q:\n%s", tc.env, tc.args, tc.mention, stderr)
		}
		if called {
			t.Errorf("%v %v: the control plane ran despite the bad value", tc.env, tc.args)
		}
	}
	// A good flag shadows a bad environment value: the variable is never read.
	got := captureDev(t)
	code, _, stderr := runCmd(t, map[string]string{"GUESTLIST_LOG_LEVEL": "loud"}, "dev", "--data-dir", dir, "--log-level", "debug")
	if code != exitOK || got.DataDir != dir {
		t.Errorf("a flag did not shadow a bad environment value: exit %d\n%s", code, stderr)
	}
}

var tokenRE = regexp.MustCompile(`^gla_[0-9a-f]{64}$`)

func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	tok, src, err := adminToken(dir, "")
	if err != nil {
		t.Fatalf("adminToken: %v", err)
	}
	if src != tokenGenerated || !tokenRE.MatchString(tok) {
		t.Fatalf("first start: %q (source %v), want a generated gla_ + 64 hex token", tok, src)
	}
	path := filepath.Join(dir, adminTokenFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("token file: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("token file mode %#o, want 0600", perm)
	}
	if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != tok {
		t.Errorf("token file holds %q, want %q", b, tok)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".admin.token-*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}

	again, src, err := adminToken(dir, "")
	if err != nil || again != tok || src != tokenFromFile {
		t.Errorf("second start: %q, %v, %v; want the same token from the file", again, src, err)
	}

	over, src, err := adminToken(dir, "flag-token-0123456789")
	if err != nil || over != "flag-token-0123456789" || src != tokenFromFlag {
		t.Errorf("with the flag: %q, %v, %v", over, src, err)
	}
	if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != tok {
		t.Errorf("the flag overwrote the token file: %q", b)
	}

	// Two tokens are never the same.
	other, _, err := adminToken(t.TempDir(), "")
	if err != nil || other == tok {
		t.Errorf("another data dir: %q, %v", other, err)
	}

	// A token file that others may read is refused.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := adminToken(dir, ""); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable token file: err = %v", err)
	}
	// An empty one too.
	if err := os.WriteFile(path, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := adminToken(dir, ""); err == nil {
		t.Error("empty token file accepted")
	}
}

func TestAdminTokenConcurrentStarts(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	toks := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, _, err := adminToken(dir, "")
			if err != nil {
				t.Errorf("adminToken: %v", err)
			}
			toks[i] = tok
		}()
	}
	wg.Wait()
	for _, tok := range toks[1:] {
		if tok != toks[0] {
			t.Fatalf("concurrent first starts disagree: %v", toks)
		}
	}
}

func TestDevCreatesDataDirAndToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data")
	got := captureDev(t)
	code, _, stderr := runCmd(t, nil, "dev", "--data-dir", dir)
	if code != exitOK {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatalf("data dir: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("data dir mode %#o, want 0700", perm)
	}
	if got.TokenSource != tokenGenerated || !tokenRE.MatchString(got.AdminToken) {
		t.Errorf("first start: token %q source %v", got.AdminToken, got.TokenSource)
	}
	if got.Logger == nil || got.TracerProvider == nil || got.Stdout == nil || got.Version == "" {
		t.Errorf("devConfig is missing logger, tracer provider, stdout or version: %+v", *got)
	}
	first := got.AdminToken

	code, _, stderr = runCmd(t, nil, "dev", "--data-dir", dir)
	if code != exitOK || got.AdminToken != first || got.TokenSource != tokenFromFile {
		t.Errorf("second start: exit %d, token %q (%v), want the first token from the file\n%s", code, got.AdminToken, got.TokenSource, stderr)
	}
	code, _, _ = runCmd(t, map[string]string{"GUESTLIST_ADMIN_TOKEN": "env-token-abcdefghijkl"}, "dev", "--data-dir", dir)
	if code != exitOK || got.AdminToken != "env-token-abcdefghijkl" || got.TokenSource != tokenFromFlag {
		t.Errorf("GUESTLIST_ADMIN_TOKEN: exit %d, token %q (%v)", code, got.AdminToken, got.TokenSource)
	}
}

func TestDevControlPlaneError(t *testing.T) {
	prev := runControlPlane
	runControlPlane = func(context.Context, devConfig) error { return errors.New("store is on fire") }
	t.Cleanup(func() { runControlPlane = prev })
	code, _, stderr := runCmd(t, nil, "dev", "--data-dir", t.TempDir())
	if code != exitError || !strings.Contains(stderr, "store is on fire") {
		t.Errorf("exit %d, stderr:\n%s", code, stderr)
	}
}

// TestDevServesAndRestarts runs the real control plane of "guestlist dev" on a data dir, writes
// through REST, stops, starts again on the same dir, and reads the write back.
func TestDevServesAndRestarts(t *testing.T) {
	dir := t.TempDir()
	token := "gla_" + strings.Repeat("cd", 32)
	start := func() (base string, stop func()) {
		out := &lockedBuffer{}
		cfg := devConfig{
			DataDir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", EdgeAddr: "127.0.0.1:0", OriginAddr: "127.0.0.1:0", AdminToken: token, TokenSource: tokenFromFlag,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Stdout: out,
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- serveControlPlane(ctx, cfg) }()
		re := regexp.MustCompile(`REST API\s+(http://127\.0\.0\.1:\d+)`)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && base == ""; time.Sleep(10 * time.Millisecond) {
			if m := re.FindStringSubmatch(out.String()); m != nil {
				base = m[1]
			}
		}
		if base == "" {
			cancel()
			t.Fatalf("no REST address in the banner:\n%s", out.String())
		}
		return base, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serveControlPlane: %v", err)
			}
		}
	}
	call := func(method, url string, body string) (int, string) {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	base, stop := start()
	if code, body := call("POST", base+"/v1/tenants?tenantId=acme", `{"displayName":"Acme"}`); code != 200 {
		t.Fatalf("create tenant: %d %s", code, body)
	}
	stop()
	base, stop = start()
	defer stop()
	code, body := call("GET", base+"/v1/tenants/acme", "")
	if code != 200 || !strings.Contains(body, `"displayName":"Acme"`) {
		t.Fatalf("after restart: %d %s", code, body)
	}
}

type acceptAll struct{}

func (acceptAll) Authenticate(_ context.Context, tok string) (auth.Principal, error) {
	if tok == "" {
		return auth.Principal{}, status.Error(codes.Unauthenticated, "no token")
	}
	return auth.Principal{Role: auth.RoleAdmin}, nil
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestServeAPIBannerAndShutdown(t *testing.T) {
	out := &lockedBuffer{}
	cfg := devConfig{
		DataDir: "/tmp/gl", GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		AdminToken: "gla_" + strings.Repeat("ab", 32), TokenSource: tokenGenerated,
		Version: "v9.9.9", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Stdout: out,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveAPI(ctx, cfg, &controlPlane{Authenticator: acceptAll{}}) }()

	re := regexp.MustCompile(`REST API\s+(http://127\.0\.0\.1:\d+)`)
	var base string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
			break
		}
	}
	if base == "" {
		cancel()
		t.Fatalf("no REST address in the banner:\n%s", out.String())
	}
	banner := out.String()
	for _, want := range []string{"guestlist dev v9.9.9", "gRPC API     127.0.0.1:", cfg.AdminToken, "/tmp/gl/admin.token"} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	if strings.Contains(banner, ":0 ") || strings.HasSuffix(base, ":0") {
		t.Errorf("banner shows :0 instead of the real port:\n%s", banner)
	}
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serveAPI after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serveAPI did not return after cancel")
	}
}

func TestBannerTokenFromFile(t *testing.T) {
	var b bytes.Buffer
	addr := fakeAddr("127.0.0.1:1234")
	printBanner(&b, devConfig{DataDir: "d", AdminToken: "secret-secret", TokenSource: tokenFromFile, Version: "v1"}, addr, addr)
	if strings.Contains(b.String(), "secret-secret") {
		t.Errorf("a reused token was printed again:\n%s", b.String())
	}
	if !strings.Contains(b.String(), filepath.Join("d", "admin.token")) {
		t.Errorf("banner does not say where the token is:\n%s", b.String())
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

func TestVersion(t *testing.T) {
	code, stdout, stderr := runCmd(t, nil, "version")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(stdout, "guestlist ") || !strings.Contains(stdout, runtime.Version()) {
		t.Errorf("version output:\n%s", stdout)
	}

	prev := version
	version = "v1.2.3"
	t.Cleanup(func() { version = prev })
	_, stdout, _ = runCmd(t, nil, "version")
	if !strings.HasPrefix(stdout, "guestlist v1.2.3\n") {
		t.Errorf("with -X main.version=v1.2.3:\n%s", stdout)
	}
	if _, stdout, _ = runCmd(t, nil, "--version"); !strings.HasPrefix(stdout, "guestlist v1.2.3\n") {
		t.Errorf("--version:\n%s", stdout)
	}
}

func TestReadBuildDetails(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "guestlist.dev/guestlist", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-11-30T00:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	d := readBuildDetails("", bi, true)
	if d.Version != "devel-0123456789ab" || d.GoVersion != "go1.26.8" || !d.Modified {
		t.Errorf("devel build: %+v", d)
	}
	var b bytes.Buffer
	d.write(&b)
	for _, want := range []string{"guestlist devel-0123456789ab", "guestlist.dev/guestlist (devel)", "0123456789abcdef0123456789abcdef01234567 (modified)", "2026-11-30T00:00:00Z", "go1.26.8"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}

	bi.Main.Version = "v0.4.0"
	if d := readBuildDetails("", bi, true); d.Version != "v0.4.0" {
		t.Errorf("module version: %q", d.Version)
	}
	if d := readBuildDetails("v1.0.0", bi, true); d.Version != "v1.0.0" {
		t.Errorf("ldflags version: %q", d.Version)
	}
	if d := readBuildDetails("", nil, false); d.Version != "devel" || d.GoVersion != runtime.Version() {
		t.Errorf("no build info: %+v", d)
	}
}

func TestCommandsAndHelp(t *testing.T) {
	if code, _, stderr := runCmd(t, nil); code != exitUsage || !strings.Contains(stderr, "Commands:") {
		t.Errorf("no command: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCmd(t, nil, "frobnicate"); code != exitUsage || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d\n%s", code, stderr)
	}
	code, stdout, _ := runCmd(t, nil, "help")
	if code != exitOK {
		t.Errorf("help: exit %d", code)
	}
	for _, name := range []string{"dev", "api", "projector", "edge", "origin", "audit", "version", "help"} {
		if !strings.Contains(stdout, "  "+name+" ") {
			t.Errorf("help does not list %s:\n%s", name, stdout)
		}
	}
	code, _, stderr := runCmd(t, nil, "help", "dev")
	if code != exitOK || !strings.Contains(stderr, "--data-dir") || !strings.Contains(stderr, "GUESTLIST_DATA_DIR") || !strings.Contains(stderr, "./.guestlist") {
		t.Errorf("help dev: exit %d\n%s", code, stderr)
	}
	if code, _, _ := runCmd(t, nil, "dev", "-h"); code != exitOK {
		t.Errorf("dev -h: exit %d", code)
	}
	for _, name := range []string{"api", "projector", "edge", "origin"} {
		code, _, stderr := runCmd(t, nil, "help", name)
		if code != exitOK || !strings.Contains(stderr, "Usage: guestlist "+name) || !strings.Contains(stderr, "GUESTLIST_") {
			t.Errorf("help %s: exit %d\n%s", name, code, stderr)
		}
	}
}

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{"data-dir": "GUESTLIST_DATA_DIR", "admin-token": "GUESTLIST_ADMIN_TOKEN", "log-level": "GUESTLIST_LOG_LEVEL"} {
		if got := envName(flag); got != want {
			t.Errorf("envName(%q) = %q, want %q", flag, got, want)
		}
	}
}

// TestHelpTexts: every command's and audit subcommand's -h reads cleanly: no "(RFC 3339)" appended
// to a flag's text that already ends in a parenthesis ("(default: now) (RFC 3339)"), and no
// "Flags" heading over an empty list.
func TestHelpTexts(t *testing.T) {
	var cmds [][]string
	for _, c := range commands() {
		if c.run != nil && c.name != "audit" {
			cmds = append(cmds, []string{c.name, "-h"})
		}
	}
	for _, s := range auditSubcommands {
		cmds = append(cmds, []string{"audit", s.name, "-h"})
	}
	for _, args := range cmds {
		code, _, help := runCmd(t, nil, args...)
		if code != exitOK {
			t.Errorf("%s: exit %d\n%s", strings.Join(args, " "), code, help)
			continue
		}
		if strings.Contains(help, ") (RFC 3339)") {
			t.Errorf("%s: two parentheses in a row:\n%s", strings.Join(args, " "), help)
		}
		if strings.Contains(help, `(default "false")`) {
			t.Errorf("%s: a switch shows its default as a quoted string:\n%s", strings.Join(args, " "), help)
		}
		if strings.HasSuffix(strings.TrimSpace(help), "the command line wins):") {
			t.Errorf("%s: a Flags heading without flags:\n%s", strings.Join(args, " "), help)
		}
	}
}

// TestHelpOfAnAuditSubcommand: "audit help history" and "help audit history" show history's flags,
// as "audit history -h" does, not the audit overview; an unknown subcommand is a usage error.
func TestHelpOfAnAuditSubcommand(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"ok/audit help history", []string{"audit", "help", "history"}, exitOK, "Usage: guestlist audit history [flags]"},
		{"ok/help audit history", []string{"help", "audit", "history"}, exitOK, "Usage: guestlist audit history [flags]"},
		{"ok/help audit", []string{"help", "audit"}, exitOK, "Usage: guestlist audit SUBCOMMAND"},
		{"ok/audit help", []string{"audit", "help"}, exitOK, "Usage: guestlist audit SUBCOMMAND"},
		{"fail/audit help of an unknown subcommand", []string{"audit", "help", "nope"}, exitUsage, `unknown subcommand "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, nil, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("%s: exit %d, want %d and %q in:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.want, stderr)
			}
		})
	}
}
