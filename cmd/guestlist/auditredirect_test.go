package main

import (
	"crypto/tls"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAuditRedirectKeepsTheToken: the audit commands send the bearer token to --api and nowhere
// else. The API never redirects, so a redirect (from a proxy in front of it, say) is reported and
// not followed, by the client every subcommand uses and by the export's streaming client: Go's
// client would otherwise send the Authorization header again to the same host over plaintext
// http://, or to another port of it. A call the API answers itself works as before.
func TestAuditRedirectKeepsTheToken(t *testing.T) {
	dir := t.TempDir()
	ca, caPath, certPath, keyPath, _ := httpListenerTLS(t, dir)
	admin := "gla_" + strings.Repeat("34", 32)

	// A plaintext listener on the same host that records every Authorization header it gets.
	var mu sync.Mutex
	var leaked []string
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plain := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		leaked = append(leaked, r.Header.Get("Authorization"))
		mu.Unlock()
		http.Error(w, "not here", http.StatusNotFound)
	})}
	go func() { _ = plain.Serve(plainLn) }()
	t.Cleanup(func() { _ = plain.Close() })

	// An HTTPS listener with the API's certificate that redirects every request to the plaintext
	// one, as a misconfigured proxy in front of the API would.
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	redirLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	redir := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+plainLn.Addr().String()+r.URL.RequestURI(), http.StatusFound)
	})}
	go func() { _ = redir.Serve(redirLn) }()
	t.Cleanup(func() { _ = redir.Close() })
	redirBase := "https://" + redirLn.Addr().String()

	api := startCommand(t, `REST API\s+(https://127\.0\.0\.1:\d+)`, "api", "--data-dir", filepath.Join(dir, "api"), "--projector",
		"--edge-token", "edge-token-0123456789", "--admin-token", admin, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--http-tls-cert", certPath, "--http-tls-key", keyPath)
	if code, body, err := restCall(httpsClient(poolOf(ca)), "POST", api+"/v1/tenants?tenantId=acme", admin, `{"displayName":"Acme"}`); err != nil || code != http.StatusOK {
		t.Fatalf("create a tenant: %d %s %v", code, body, err)
	}

	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		want     string // in stdout for ok/ cases, in stderr for fail/ cases
	}{
		{name: "ok/history answered by the API", args: []string{"history", "--api", api}, wantCode: exitOK, want: `"acme"`},
		{name: "fail/history redirected to http://", args: []string{"history", "--api", redirBase}, wantCode: exitError, want: "redirect"},
		{name: "fail/export redirected to http://", args: []string{"export", "--api", redirBase}, wantCode: exitError, want: "redirect"},
		{name: "fail/snapshot redirected to http://", args: []string{"snapshot", "--api", redirBase}, wantCode: exitError, want: "redirect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			leaked = nil
			mu.Unlock()
			args := append([]string{"audit"}, tc.args...)
			args = append(args, "--api-ca", caPath, "--tenant", "acme")
			code, stdout, stderr := runCmd(t, map[string]string{"GUESTLIST_TOKEN": admin}, args...)
			out := stdout
			if tc.wantCode != exitOK {
				out = stderr
			}
			if code != tc.wantCode || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, want %d; want %q in:\nstdout %s\nstderr %s", code, tc.wantCode, tc.want, firstLine(stdout), stderr)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, h := range leaked {
				if strings.Contains(h, admin) {
					t.Errorf("the bearer token was sent in plaintext to %s after a redirect", plainLn.Addr())
				}
			}
		})
	}
}
