package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
)

// httpListenerTLS makes what an HTTP listener's TLS needs in dir: a CA (its certificate in
// ca.pem) and a server certificate for api.internal and 127.0.0.1 (http.pem, http.key), plus a
// file that holds no certificate (not.pem).
func httpListenerTLS(t *testing.T, dir string) (ca *pkitest.CA, caPath, certPath, keyPath, notPEM string) {
	t.Helper()
	ca = pkitest.NewCA(t, "HTTP listener CA")
	caPath = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPath, []byte(pkitest.PEM(ca.Cert)), 0o600); err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = writePair(t, dir, "http", httpServerCert(t, ca))
	notPEM = filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca, caPath, certPath, keyPath, notPEM
}

// httpServerCert issues a server certificate for api.internal and 127.0.0.1.
func httpServerCert(t *testing.T, ca *pkitest.CA, opts ...pkitest.Options) *pkitest.Leaf {
	t.Helper()
	return ca.Server(t, []string{"api.internal"}, append([]pkitest.Options{func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}}, opts...)...)
}

// TestHTTPTLSFlags: --http-tls-cert and --http-tls-key (or their variables) make the HTTP
// listener of every role that has one serve TLS 1.2 or later with the pair; half a pair, a missing
// or unusable file, an expired certificate or one not for servers stop the role at start with a
// usage error naming the flag and what is wrong; without them the listener stays plaintext.
func TestHTTPTLSFlags(t *testing.T) {
	dir := t.TempDir()
	const edgeTok = "edge-token-0123456789"
	ca, _, certPath, keyPath, notPEM := httpListenerTLS(t, dir)
	otherCert, _ := writePair(t, dir, "other", httpServerCert(t, ca))
	expiredCert, expiredKey := writePair(t, dir, "expired", httpServerCert(t, ca,
		pkitest.Validity(time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))))
	clientCert, clientKey := writePair(t, dir, "client", ca.Client(t, "not a server"))
	cases := []struct {
		name    string
		args    []string
		env     map[string]string
		mention string
	}{
		{name: "ok/certificate and key", args: []string{"--http-tls-cert", certPath, "--http-tls-key", keyPath}},
		{name: "ok/from the environment", env: map[string]string{"GUESTLIST_HTTP_TLS_CERT": certPath, "GUESTLIST_HTTP_TLS_KEY": keyPath}},
		{name: "ok/plaintext by default"},
		{name: "fail/certificate without key", args: []string{"--http-tls-cert", certPath}, mention: "--http-tls-cert needs --http-tls-key"},
		{name: "fail/key without certificate", env: map[string]string{"GUESTLIST_HTTP_TLS_KEY": keyPath}, mention: "--http-tls-key needs --http-tls-cert"},
		{name: "fail/key of another certificate", args: []string{"--http-tls-cert", otherCert, "--http-tls-key", keyPath}, mention: "private key does not match public key"},
		{name: "fail/missing file", args: []string{"--http-tls-cert", certPath, "--http-tls-key", filepath.Join(dir, "nope.key")}, mention: "--http-tls-cert, --http-tls-key: TLS file: stat " + filepath.Join(dir, "nope.key") + ": no such file"},
		{name: "fail/not PEM", args: []string{"--http-tls-cert", notPEM, "--http-tls-key", keyPath}, mention: "not.pem"},
		{name: "fail/expired", args: []string{"--http-tls-cert", expiredCert, "--http-tls-key", expiredKey}, mention: "certificate " + expiredCert + " expired at"},
		{name: "fail/a client certificate", args: []string{"--http-tls-cert", clientCert, "--http-tls-key", clientKey}, mention: "not for server authentication"},
	}
	// check accepts the HTTP listener's TLS configuration of an ok/ case.
	check := func(name string, c *tls.Config) string {
		if strings.HasPrefix(name, "ok/plaintext") {
			if c != nil {
				return "TLS without --http-tls-cert"
			}
			return ""
		}
		if c == nil || c.GetCertificate == nil || c.MinVersion != tls.VersionTLS12 {
			return "the HTTP listener does not serve TLS 1.2 or later"
		}
		if cert, err := c.GetCertificate(&tls.ClientHelloInfo{}); err != nil || cert.Leaf.Subject.CommonName != "api.internal" {
			return "the HTTP listener serves another certificate"
		}
		return ""
	}
	for _, tc := range cases {
		runFlagCase(t, "dev", &runControlPlane, tc.name+"/dev", tc.env, append([]string{"--data-dir", filepath.Join(dir, "dev")}, tc.args...), tc.mention,
			func(c devConfig) string { return check(tc.name, c.HTTPTLS) })
		runFlagCase(t, "api", &runAPIRole, tc.name+"/api", tc.env, append([]string{"--data-dir", dir, "--projector", "--edge-token", edgeTok}, tc.args...), tc.mention,
			func(c apiConfig) string { return check(tc.name, c.HTTPTLS) })
		runFlagCase(t, "projector", &runProjectorRole, tc.name+"/projector", tc.env, append([]string{"--data-dir", dir, "--store", "esdb://db:2113", "--edge-token", edgeTok}, tc.args...), tc.mention,
			func(c projectorConfig) string { return check(tc.name, c.HTTPTLS) })
		runFlagCase(t, "edge", &runEdgeRole, tc.name+"/edge", tc.env, append([]string{"--data-dir", dir, "--config-addr", "p1:50052", "--config-plaintext", "--edge-token", edgeTok}, tc.args...), tc.mention,
			func(c edgeConfig) string { return check(tc.name, c.HTTPTLS) })
	}
}

// startCommand runs "guestlist args..." in this process until the test ends (when it must exit
// 0), and returns the first group of re once the command's standard output matches it (the
// banner, written in one Write).
func startCommand(t *testing.T, re string, args ...string) string {
	t.Helper()
	out, errOut := &lockedBuffer{}, &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- runContext(ctx, args, mapEnv(nil), out, errOut) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("guestlist %s: exit %d\n%s", args[0], code, errOut.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("guestlist %s did not stop within 30 s", args[0])
		}
	})
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := rx.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-done:
			done <- code
			t.Fatalf("guestlist %s exited %d before its banner:\n%s", args[0], code, errOut.String())
		default:
		}
	}
	t.Fatalf("guestlist %s: no match for %s in its banner:\n%s\nstderr:\n%s", args[0], re, out.String(), errOut.String())
	return ""
}

// httpsClient returns a client trusting roots (nil: the system's), over fresh connections.
func httpsClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
	}}
}

// poolOf is a certificate pool holding ca.
func poolOf(ca *pkitest.CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// TestHTTPListenerTLSOnEveryRole: each role started with --http-tls-cert and --http-tls-key
// prints an https:// address in its banner and serves its HTTP listener over TLS only: a client
// trusting the CA gets /healthz, a plaintext request gets net/http's 400, and clients that do not
// trust the CA or offer TLS older than 1.2 fail the handshake.
func TestHTTPListenerTLSOnEveryRole(t *testing.T) {
	dir := t.TempDir()
	ca, _, certPath, keyPath, _ := httpListenerTLS(t, dir)
	tlsArgs := []string{"--http-tls-cert", certPath, "--http-tls-key", keyPath}
	const edgeTok = "edge-token-0123456789"
	roles := []struct {
		name   string
		banner string // finds the HTTP listener's URL
		args   []string
	}{
		{"dev", `REST API\s+(https://127\.0\.0\.1:\d+)`, []string{"dev", "--data-dir", filepath.Join(dir, "dev"),
			"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--edge-addr", "127.0.0.1:0", "--origin-addr", "127.0.0.1:0"}},
		{"api", `REST API\s+(https://127\.0\.0\.1:\d+)`, []string{"api", "--data-dir", filepath.Join(dir, "api"), "--projector", "--edge-token", edgeTok,
			"--admin-token", "gla_" + strings.Repeat("ab", 32), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}},
		{"projector", `HTTP\s+(https://127\.0\.0\.1:\d+)`, []string{"projector", "--data-dir", filepath.Join(dir, "projector"),
			"--store", "bolt://" + filepath.Join(dir, "projector-events.db"), "--edge-token", edgeTok, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}},
		{"edge", `HTTP\s+(https://127\.0\.0\.1:\d+)`, []string{"edge", "--data-dir", filepath.Join(dir, "edge"), "--config-addr", freeAddr(t),
			"--edge-token", edgeTok, "--edge-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}},
	}
	for _, r := range roles {
		t.Run(r.name, func(t *testing.T) {
			base := startCommand(t, r.banner, append(r.args, tlsArgs...)...)

			resp, err := httpsClient(poolOf(ca)).Get(base + "/healthz")
			if err != nil {
				t.Fatalf("GET /healthz over TLS: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
				t.Errorf("GET /healthz over TLS: %d, TLS %+v", resp.StatusCode, resp.TLS)
			}

			plain := "http://" + strings.TrimPrefix(base, "https://")
			resp, err = http.Get(plain + "/healthz")
			if err != nil {
				t.Fatalf("GET /healthz in plaintext: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTP request to an HTTPS server") {
				t.Errorf("GET /healthz in plaintext: %d %q, want 400 (an HTTP request to an HTTPS server)", resp.StatusCode, body)
			}

			if _, err := httpsClient(poolOf(pkitest.NewCA(t, "another CA"))).Get(base + "/healthz"); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
				t.Errorf("a client trusting another CA: %v, want a failed handshake", err)
			}
			old := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: poolOf(ca), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11},
			}}
			if _, err := old.Get(base + "/healthz"); err == nil || !strings.Contains(err.Error(), "protocol version") {
				t.Errorf("a client offering TLS 1.1 at most: %v, want a handshake failure about the protocol version", err)
			}
		})
	}
}

// startAPIWithHTTPTLS starts "guestlist api" (with --projector, on a bolt store in dir) serving
// its HTTP listener with certPath and keyPath, and returns its https:// base URL.
func startAPIWithHTTPTLS(t *testing.T, dir, admin, certPath, keyPath string) string {
	t.Helper()
	return startCommand(t, `REST API\s+(https://127\.0\.0\.1:\d+)`, "api", "--data-dir", filepath.Join(dir, "api"), "--projector",
		"--edge-token", "edge-token-0123456789", "--admin-token", admin, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--http-tls-cert", certPath, "--http-tls-key", keyPath)
}

// restCall sends a REST request with the bearer token through client and returns the status and
// body; err is the request's error (a failed handshake).
func restCall(client *http.Client, method, url, token, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestRESTOverHTTPS: "guestlist api --http-tls-cert ... --http-tls-key ..." answers REST calls
// with a token over HTTPS (a tenant created and read back); a plaintext call is refused with 400
// and does nothing; a client that does not trust the CA fails the handshake before it sends the
// token; and a renewed pair written over the files serves at a later handshake, without a restart.
func TestRESTOverHTTPS(t *testing.T) {
	dir := t.TempDir()
	ca, _, certPath, keyPath, _ := httpListenerTLS(t, dir)
	admin := "gla_" + strings.Repeat("cd", 32)
	base := startAPIWithHTTPTLS(t, dir, admin, certPath, keyPath)
	client := httpsClient(poolOf(ca))

	code, body, err := restCall(client, "POST", base+"/v1/tenants?tenantId=acme", admin, `{"displayName":"Acme"}`)
	if err != nil || code != http.StatusOK {
		t.Fatalf("create a tenant over HTTPS: %d %s %v", code, body, err)
	}
	code, body, err = restCall(client, "GET", base+"/v1/tenants/acme", admin, "")
	if err != nil || code != http.StatusOK || !strings.Contains(body, `"displayName":"Acme"`) {
		t.Fatalf("read the tenant over HTTPS: %d %s %v", code, body, err)
	}

	plain := "http://" + strings.TrimPrefix(base, "https://")
	code, body, err = restCall(http.DefaultClient, "POST", plain+"/v1/tenants?tenantId=plain", admin, `{"displayName":"Plain"}`)
	if err != nil || code != http.StatusBadRequest || !strings.Contains(body, "HTTP request to an HTTPS server") {
		t.Errorf("a plaintext call: %d %q %v, want 400 (an HTTP request to an HTTPS server)", code, body, err)
	}
	if code, _, _ := restCall(client, "GET", base+"/v1/tenants/plain", admin, ""); code != http.StatusNotFound {
		t.Errorf("the plaintext call created a tenant (GET answers %d)", code)
	}

	_, _, err = restCall(httpsClient(nil), "GET", base+"/v1/tenants/acme", admin, "")
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("a client trusting the system's roots only: %v, want a failed handshake", err)
	}

	// Renewal: a new pair written over the files serves at a handshake after the check interval.
	renewed := httpServerCert(t, ca)
	writePair(t, dir, "http", renewed)
	eventually(t, "the renewed certificate serves", func() bool {
		c, err := tls.Dial("tcp", strings.TrimPrefix(base, "https://"), &tls.Config{RootCAs: poolOf(ca), ServerName: "api.internal"})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Equal(renewed.Cert)
	})
	if code, _, err := restCall(client, "GET", base+"/v1/tenants/acme", admin, ""); err != nil || code != http.StatusOK {
		t.Errorf("REST after the renewal: %d %v", code, err)
	}
}

// TestHealthcheckCA: "guestlist healthcheck --ca FILE" checks an https:// /readyz served with a
// private CA's certificate; without --ca (the system's roots) or with another CA it fails (exit
// 1); a --ca file that is missing or holds no certificate, or --ca with an http:// URL, is a
// usage error (exit 2) naming the flag and the file.
func TestHealthcheckCA(t *testing.T) {
	dir := t.TempDir()
	_, caPath, certPath, keyPath, notPEM := httpListenerTLS(t, dir)
	otherCA := filepath.Join(dir, "other-ca.pem")
	if err := os.WriteFile(otherCA, []byte(pkitest.PEM(pkitest.NewCA(t, "another CA").Cert)), 0o600); err != nil {
		t.Fatal(err)
	}
	base := startAPIWithHTTPTLS(t, dir, "gla_"+strings.Repeat("ef", 32), certPath, keyPath)
	readyz := base + "/readyz"
	missing := filepath.Join(dir, "nope.pem")
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStdout string
		wantStderr []string
	}{
		{name: "ok/--ca", args: []string{"--url", readyz, "--ca", caPath}, wantCode: exitOK, wantStdout: "200 OK"},
		{name: "ok/GUESTLIST_CA", args: []string{"--url", readyz}, env: map[string]string{"GUESTLIST_CA": caPath}, wantCode: exitOK, wantStdout: "200 OK"},
		{name: "fail/without --ca", args: []string{"--url", readyz}, wantCode: exitError, wantStderr: []string{"certificate signed by unknown authority"}},
		{name: "fail/another CA", args: []string{"--url", readyz, "--ca", otherCA}, wantCode: exitError, wantStderr: []string{"certificate signed by unknown authority"}},
		{name: "fail/missing file", args: []string{"--url", readyz, "--ca", missing}, wantCode: exitUsage, wantStderr: []string{"--ca: open " + missing + ": no such file or directory"}},
		{name: "fail/no certificate in the file", args: []string{"--url", readyz, "--ca", notPEM}, wantCode: exitUsage, wantStderr: []string{"--ca: " + notPEM + " holds no PEM certificate"}},
		{name: "fail/an http:// URL", args: []string{"--url", "http://" + strings.TrimPrefix(readyz, "https://"), "--ca", caPath}, wantCode: exitUsage, wantStderr: []string{"--ca is for an https:// --url"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.env, append([]string{"healthcheck"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(stdout, tt.wantStdout) {
				t.Errorf("exit %d, want %d; stdout %q, want %q\nstderr: %s", code, tt.wantCode, stdout, tt.wantStdout, stderr)
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q does not contain %q", stderr, want)
				}
			}
		})
	}
}

// TestAuditAPICA: "guestlist audit --api https://... --api-ca FILE" reaches an API served with a
// private CA's certificate, through the client every subcommand uses (history) and through the
// export's streaming client too; without --api-ca the handshake fails (exit 1); a --api-ca file
// that is missing or holds no certificate, or --api-ca with an http:// --api, is a usage error
// (exit 2) naming the flag and the file.
func TestAuditAPICA(t *testing.T) {
	dir := t.TempDir()
	ca, caPath, certPath, keyPath, notPEM := httpListenerTLS(t, dir)
	admin := "gla_" + strings.Repeat("12", 32)
	base := startAPIWithHTTPTLS(t, dir, admin, certPath, keyPath)
	if code, body, err := restCall(httpsClient(poolOf(ca)), "POST", base+"/v1/tenants?tenantId=acme", admin, `{"displayName":"Acme"}`); err != nil || code != http.StatusOK {
		t.Fatalf("create a tenant: %d %s %v", code, body, err)
	}
	// The export needs the tenant's first signed checkpoint, which the ledger writes shortly after.
	eventually(t, "acme has a signed checkpoint", func() bool {
		code, _, _ := restCall(httpsClient(poolOf(ca)), "GET", base+"/v1/tenants/acme/events:export", admin, "")
		return code == http.StatusOK
	})
	common := []string{"--api", base, "--tenant", "acme"}
	env := map[string]string{"GUESTLIST_TOKEN": admin}
	missing := filepath.Join(dir, "nope.pem")
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "ok/history", args: append([]string{"history", "--api-ca", caPath}, common...), wantCode: exitOK, wantStdout: `"acme"`},
		{name: "ok/export", args: append([]string{"export", "--api-ca", caPath}, common...), wantCode: exitOK, wantStdout: `{"tenantId":"acme"}`},
		{name: "ok/GUESTLIST_API_CA", args: append([]string{"history"}, common...), env: map[string]string{"GUESTLIST_API_CA": caPath}, wantCode: exitOK, wantStdout: `"acme"`},
		{name: "fail/history without --api-ca", args: append([]string{"history"}, common...), wantCode: exitError, wantStderr: "certificate signed by unknown authority"},
		{name: "fail/export without --api-ca", args: append([]string{"export"}, common...), wantCode: exitError, wantStderr: "certificate signed by unknown authority"},
		{name: "fail/missing file", args: append([]string{"history", "--api-ca", missing}, common...), wantCode: exitUsage, wantStderr: "--api-ca: open " + missing + ": no such file or directory"},
		{name: "fail/no certificate in the file", args: append([]string{"history", "--api-ca", notPEM}, common...), wantCode: exitUsage, wantStderr: "--api-ca: " + notPEM + " holds no PEM certificate"},
		{name: "fail/an http:// API", args: []string{"history", "--api-ca", caPath, "--tenant", "acme", "--api", "http://" + strings.TrimPrefix(base, "https://")}, wantCode: exitUsage, wantStderr: "--api-ca is for an https:// --api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := map[string]string{}
			for k, v := range env {
				e[k] = v
			}
			for k, v := range tt.env {
				e[k] = v
			}
			code, stdout, stderr := runCmd(t, e, append([]string{"audit"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(stdout, tt.wantStdout) || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("exit %d, want %d; stdout %q, want %q; stderr %q, want %q", code, tt.wantCode, firstLine(stdout), tt.wantStdout, stderr, tt.wantStderr)
			}
			if tt.wantCode == exitOK {
				var first map[string]any
				if err := json.NewDecoder(bytes.NewReader([]byte(stdout))).Decode(&first); err != nil {
					t.Errorf("stdout does not start with a JSON object: %v", err)
				}
			}
		})
	}
}

// firstLine is s up to its first newline.
func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// TestBannerCurlHint: the banner's "Try: curl" line works as printed. Over plaintext it needs no
// CA; over HTTPS it names --cacert and says which CA, since curl refuses a private CA's
// certificate without it.
func TestBannerCurlHint(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	tests := []struct {
		name    string
		tls     *tls.Config
		source  tokenSource
		want    []string
		notWant []string
	}{
		{name: "ok/plaintext, generated token", source: tokenGenerated,
			want:    []string{`Try:  curl -H "Authorization: Bearer $(cat `, ` http://127.0.0.1:8080/v1/tenants`},
			notWant: []string{"--cacert"}},
		{name: "ok/https, generated token", tls: &tls.Config{}, source: tokenGenerated,
			want: []string{`Try:  curl --cacert CA.pem -H "Authorization: Bearer $(cat `, ` https://127.0.0.1:8080/v1/tenants`,
				"(CA.pem: the CA that issued --http-tls-cert; leave --cacert out if it is a public CA)"}},
		{name: "ok/https, token from the flag", tls: &tls.Config{}, source: tokenFromFlag,
			want: []string{`Try:  curl --cacert CA.pem -H "Authorization: Bearer $GUESTLIST_ADMIN_TOKEN" https://127.0.0.1:8080/v1/tenants`,
				"($GUESTLIST_ADMIN_TOKEN: the token given with --admin-token or in that variable)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			printBanner(&out, devConfig{DataDir: t.TempDir(), AdminToken: "gla_x", TokenSource: tt.source, HTTPTLS: tt.tls}, addr, addr)
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("banner lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("banner has %q:\n%s", w, out.String())
				}
			}
		})
	}
}
