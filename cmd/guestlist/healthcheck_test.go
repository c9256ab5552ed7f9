package main

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthcheck(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/starting", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "projector: not caught up", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/readyz", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	tlsSrv := httptest.NewUnstartedServer(mux)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is the point
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)

	// A port that refuses connections: listen, note the address, close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/readyz"
	l.Close()

	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "ok/200", args: []string{"--url", srv.URL + "/readyz"}, wantCode: exitOK, wantStdout: "200 OK"},
		{name: "ok/204", args: []string{"--url", srv.URL + "/healthz"}, wantCode: exitOK, wantStdout: "204 No Content"},
		{name: "ok/url from GUESTLIST_URL", env: map[string]string{"GUESTLIST_URL": srv.URL + "/readyz"}, wantCode: exitOK, wantStdout: "200 OK"},
		{name: "fail/503", args: []string{"--url", srv.URL + "/starting"}, wantCode: exitError, wantStderr: "503 Service Unavailable: projector: not caught up"},
		{name: "fail/404", args: []string{"--url", srv.URL + "/nothing"}, wantCode: exitError, wantStderr: "404 Not Found"},
		{name: "fail/redirect not followed", args: []string{"--url", srv.URL + "/moved"}, wantCode: exitError, wantStderr: "302 Found"},
		{name: "fail/unreachable", args: []string{"--url", closed}, wantCode: exitError, wantStderr: "connection refused"},
		{name: "fail/untrusted https", args: []string{"--url", tlsSrv.URL + "/readyz"}, wantCode: exitError, wantStderr: "certificate"},
		{name: "fail/bad url", args: []string{"--url", "http://[::1"}, wantCode: exitUsage, wantStderr: "--url"},
		{name: "fail/bad scheme", args: []string{"--url", "ftp://127.0.0.1/readyz"}, wantCode: exitUsage, wantStderr: "scheme must be http or https"},
		{name: "fail/no host", args: []string{"--url", "http:///readyz"}, wantCode: exitUsage, wantStderr: "no host"},
		{name: "fail/no url", wantCode: exitUsage, wantStderr: "--url is required"},
		{name: "fail/positional argument", args: []string{"--url", srv.URL + "/readyz", "extra"}, wantCode: exitUsage, wantStderr: `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.env, append([]string{"healthcheck"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout, stderr)
			}
			if !strings.Contains(stdout, tt.wantStdout) {
				t.Errorf("stdout %q does not contain %q", stdout, tt.wantStdout)
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.wantStderr)
			}
			if tt.wantCode != exitOK && stdout != "" {
				t.Errorf("a failing check printed to stdout: %q", stdout)
			}
		})
	}
}

func TestHealthcheckHelp(t *testing.T) {
	code, stdout, _ := runCmd(t, nil, "help")
	if code != exitOK || !strings.Contains(stdout, "  healthcheck ") {
		t.Errorf("help does not list healthcheck (exit %d):\n%s", code, stdout)
	}
	code, _, stderr := runCmd(t, nil, "help", "healthcheck")
	if code != exitOK || !strings.Contains(stderr, "--url") || !strings.Contains(stderr, "GUESTLIST_URL") {
		t.Errorf("help healthcheck: exit %d\n%s", code, stderr)
	}
}

func TestHealthcheckTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers
	}))
	t.Cleanup(srv.Close)
	u, err := parseHealthcheckURL(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = checkHealth(context.Background(), u, nil, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("checkHealth against a server that never answers: %v, want a deadline error", err)
	}
}
