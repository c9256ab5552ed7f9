package enforce

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/servercert"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

const (
	hostA = "a.example.com"
	hostB = "b.example.com"
)

func TestAllowedRequestReachesOriginWithHeaders(t *testing.T) {
	caA := pkitest.NewCA(t, "Acme Root")
	inter := caA.Intermediate(t, "Acme Devices")
	leaf := inter.Client(t, "device-1")
	e := newEnv(t, host(hostA, "acme", caA))
	c := e.client(withCert(leaf, inter.Cert))

	r := e.get(c, "https://"+hostA+"/pay/x%2Fy?q=1&r=%20")
	expectStatus(t, r, 200)
	if r.echo == nil {
		t.Fatalf("no echo: %s", r.body)
	}
	if r.echo.Path != "/pay/x%2Fy?q=1&r=%20" {
		t.Errorf("origin path %q", r.echo.Path)
	}
	if r.echo.Host != hostA {
		t.Errorf("origin Host %q", r.echo.Host)
	}
	want := map[string]string{
		"X-Guestlist-Decision":             "allow",
		"X-Guestlist-Config-Revision":      strconv.FormatUint(e.pos, 10),
		"X-Client-Cert-Present":            "true",
		"X-Client-Cert-Verified":           "true",
		"X-Client-Cert-Fingerprint-Sha256": certid.FingerprintSHA256(leaf.Cert.Raw),
		"X-Client-Cert-Serial-Number":      certid.SerialNumber(leaf.Cert.SerialNumber),
		"X-Client-Cert-Subject":            leaf.Cert.Subject.String(),
		"X-Client-Cert-Issuer":             leaf.Cert.Issuer.String(),
		"X-Client-Cert-Not-After":          leaf.Cert.NotAfter.UTC().Format(time.RFC3339),
		"Client-Cert":                      ":" + base64.StdEncoding.EncodeToString(leaf.Cert.Raw) + ":",
		"Client-Cert-Chain":                ":" + base64.StdEncoding.EncodeToString(inter.Cert.Raw) + ":",
		"X-Forwarded-Proto":                "https",
		"X-Forwarded-Host":                 hostA,
		"X-Forwarded-For":                  "127.0.0.1",
		"X-Client-Cert-Error":              "",
	}
	for k, v := range want {
		if got := r.originHeader(k); got != v {
			t.Errorf("origin got %s = %q, want %q", k, got, v)
		}
	}
	id := r.originHeader("X-Guestlist-Decision-Id")
	if len(id) != 32 {
		t.Errorf("decision id %q", id)
	}

	lines := e.logLines()
	if len(lines) != 1 {
		t.Fatalf("%d decision log lines, want 1", len(lines))
	}
	l := lines[0]
	if l["decision_id"] != id || l["verdict"] != "allow" || l["reason"] != "certificate_verified" ||
		l["config_revision"] != float64(e.pos) || l["tenant_id"] != "acme" || l["hostname"] != hostA ||
		l["mode"] != "enforce" || l["edge_id"] != "edge-test" {
		t.Errorf("decision log line %v", l)
	}
	req := l["request"].(map[string]any)
	if req["method"] != "GET" || req["path"] != "/pay/x/y" {
		t.Errorf("request %v", req)
	}
	cert := l["cert"].(map[string]any)
	if cert["presented"] != true || cert["verified"] != true || cert["serial_number"] != certid.SerialNumber(leaf.Cert.SerialNumber) {
		t.Errorf("cert %v", cert)
	}
}

func TestDenials(t *testing.T) {
	caA := pkitest.NewCA(t, "Acme Root")
	caB := pkitest.NewCA(t, "Other Tenant Root")
	e := newEnv(t, host(hostA, "acme", caA), host(hostB, "other", caB))

	cases := []struct {
		name   string
		opts   []clientOpts
		reason string
	}{
		{"no certificate", nil, "certificate_missing"},
		{"another tenant's CA", []clientOpts{withCert(caB.Client(t, "intruder"))}, "certificate_untrusted"},
		{"expired", []clientOpts{withCert(caA.Client(t, "old", pkitest.Validity(time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))))}, "certificate_expired"},
		{"self-signed", []clientOpts{withCert(pkitest.NewCA(t, "Acme Root").Client(t, "forged"))}, "certificate_untrusted"},
		{"server certificate", []clientOpts{withCert(caA.Server(t, []string{"x.example.com"}))}, "certificate_wrong_key_usage"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.get(e.client(tc.opts...), "https://"+hostA+"/")
			expectStatus(t, r, 403)
			var body struct {
				Error, Reason string
				DecisionID    string `json:"decision_id"`
			}
			if err := json.Unmarshal(r.body, &body); err != nil {
				t.Fatalf("403 body %s: %v", r.body, err)
			}
			if body.Reason != tc.reason || len(body.DecisionID) != 32 || r.header.Get("X-Guestlist-Decision-Id") != body.DecisionID {
				t.Errorf("403 body %s, want reason %s", r.body, tc.reason)
			}
		})
	}
	lines := e.logLines()
	if len(lines) != len(cases) {
		t.Fatalf("%d log lines for %d requests", len(lines), len(cases))
	}
	for i, l := range lines {
		if l["verdict"] != "deny" || l["reason"] != cases[i].reason {
			t.Errorf("line %d: %v", i, l)
		}
	}
}

func TestRevokedThenUnrevokedOnOneConnection(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	leaf := ca.Client(t, "device-1")
	h := host(hostA, "acme", ca)
	e := newEnv(t, h)
	c := e.client(withCert(leaf))
	expectStatus(t, e.get(c, "https://"+hostA+"/"), 200)

	revoked := host(hostA, "acme", ca)
	revoked.Revocations = []*configv1.Revocation{{
		CertificateAuthorityId: h.CertificateAuthorities[0].CertificateAuthorityId,
		RevocationId:           "r1",
		SerialNumber:           certid.SerialNumber(leaf.Cert.SerialNumber),
	}}
	e.change([]*configv1.HostnameConfig{revoked})
	r := e.get(c, "https://"+hostA+"/")
	expectStatus(t, r, 403)
	if _, reason := r.decision(); reason != "certificate_revoked" {
		t.Errorf("reason %q", reason)
	}
	if !r.reused {
		t.Error("the request did not reuse the connection")
	}

	e.change([]*configv1.HostnameConfig{host(hostA, "acme", ca)})
	r = e.get(c, "https://"+hostA+"/")
	expectStatus(t, r, 200)
	if !r.reused {
		t.Error("the request did not reuse the connection")
	}
	if got := r.originHeader("X-Guestlist-Config-Revision"); got != strconv.FormatUint(e.pos, 10) {
		t.Errorf("config revision %s, want %d", got, e.pos)
	}
	lines := e.logLines()
	// The revoked request's line names the revoked certificate, for an auditor to match the
	// revocation (its chain verified); the identity reaches no origin.
	if cert, _ := lines[1]["cert"].(map[string]any); cert["serial_number"] != certid.SerialNumber(leaf.Cert.SerialNumber) || cert["verified"] != false || cert["subject"] != leaf.Cert.Subject.String() {
		t.Errorf("the revoked request's log line: %v", lines[1]["cert"])
	}
	for i, want := range []uint64{1, 2, 3} {
		if lines[i]["config_revision"] != float64(want) {
			t.Errorf("line %d config_revision %v, want %d", i, lines[i]["config_revision"], want)
		}
	}
}

func TestCARemovedWhileConnectionOpen(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	other := pkitest.NewCA(t, "Acme New Root")
	e := newEnv(t, host(hostA, "acme", ca, other))
	for _, proto := range []string{"http1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			e.change([]*configv1.HostnameConfig{host(hostA, "acme", ca, other)})
			opts := []clientOpts{withCert(ca.Client(t, "device"))}
			if proto == "h2" {
				opts = append(opts, withH2())
			}
			c := e.client(opts...)
			r := e.get(c, "https://"+hostA+"/")
			expectStatus(t, r, 200)
			if (proto == "h2") != (r.proto == "HTTP/2.0") {
				t.Fatalf("protocol %s", r.proto)
			}
			e.change([]*configv1.HostnameConfig{host(hostA, "acme", other)})
			r = e.get(c, "https://"+hostA+"/")
			expectStatus(t, r, 403)
			if !r.reused {
				t.Error("not the same connection")
			}
			if _, reason := r.decision(); reason != "certificate_untrusted" {
				t.Errorf("reason %q", reason)
			}
		})
	}
}

func TestMisdirected(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	caB := pkitest.NewCA(t, "B Root")
	e := newEnv(t, host(hostA, "acme", ca), host(hostB, "acme", ca, caB))
	for _, proto := range []string{"http1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			opts := []clientOpts{withCert(ca.Client(t, "device"))}
			if proto == "h2" {
				opts = append(opts, withH2())
			}
			c := e.client(opts...)
			expectStatus(t, e.get(c, "https://"+hostA+"/"), 200)
			for _, h := range []string{hostB, "B.example.com:443", "a.example.com.evil", "a.example.com:x", "[::1]"} {
				req, _ := http.NewRequest("GET", "https://"+hostA+"/", nil)
				req.Host = h
				r, err := e.do(c, req)
				if err != nil {
					t.Fatal(err)
				}
				expectStatus(t, r, http.StatusMisdirectedRequest)
			}
			// Variants of the same name are fine.
			for _, h := range []string{"A.Example.COM", "a.example.com.", "a.example.com:8443"} {
				req, _ := http.NewRequest("GET", "https://"+hostA+"/", nil)
				req.Host = h
				r, err := e.do(c, req)
				if err != nil {
					t.Fatal(err)
				}
				expectStatus(t, r, 200)
				if r.echo.Host != hostA {
					t.Errorf("origin Host %q", r.echo.Host)
				}
			}
		})
	}
}

func TestHostnameRemovedWhileConnectionOpen(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	e := newEnv(t, host(hostA, "acme", ca), host(hostB, "acme", ca))
	c := e.client(withCert(ca.Client(t, "device")))
	expectStatus(t, e.get(c, "https://"+hostA+"/"), 200)
	e.change(nil, hostA)
	r := e.get(c, "https://"+hostA+"/")
	expectStatus(t, r, http.StatusMisdirectedRequest)
	// The connection was closed; a new one fails the handshake.
	if _, err := c.Get("https://" + hostA + "/"); err == nil {
		t.Fatal("request to a removed hostname succeeded")
	}
	// Deactivated: the same.
	inactive := host(hostB, "acme", ca)
	inactive.Active = false
	e.change([]*configv1.HostnameConfig{inactive})
	if _, err := c.Get("https://" + hostB + "/"); err == nil {
		t.Fatal("request to an inactive hostname succeeded")
	}
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	// TLS 1.3 clients see a server's refusal of their certificate only when reading.
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+cfg.ServerName+"\r\n\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 12)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf[9:12]) != "200" {
		return fmt.Errorf("status %s", buf[9:12])
	}
	return nil
}

func TestHandshakeFailsClosed(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	leaf := ca.Client(t, "device")
	off := host("open.example.com", "acme")
	off.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	e := newEnv(t, host(hostA, "acme", ca), off)
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}

	if err := dialTLS(t, e.addr, &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool(), Certificates: []tls.Certificate{cert}}); err != nil {
		t.Fatalf("known hostname: %v", err)
	}
	// Refused with the unrecognized_name alert (RFC 6066), TLS 1.2 and 1.3 alike: the client is
	// told the name is the problem, not that the server failed.
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tc := range []struct {
			what string
			cfg  *tls.Config
		}{
			{"unknown SNI", &tls.Config{ServerName: "unknown.example.com", InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}},
			// Dialing an IP address without ServerName sends no SNI.
			{"no SNI", &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}},
			{"single-label SNI", &tls.Config{ServerName: "localhost", InsecureSkipVerify: true}},
		} {
			tc.cfg.MaxVersion = v
			err := dialTLS(t, e.addr, tc.cfg)
			if err == nil {
				t.Errorf("%s, %s: handshake succeeded", tls.VersionName(v), tc.what)
			} else if !strings.Contains(err.Error(), "unrecognized name") {
				t.Errorf("%s, %s: %v, want the unrecognized_name alert", tls.VersionName(v), tc.what, err)
			}
		}
	}
	// Mode OFF: no certificate asked for, forwarded.
	c := e.client()
	r := e.get(c, "https://open.example.com/")
	expectStatus(t, r, 200)
	if r.originHeader("X-Client-Cert-Present") != "false" || r.originHeader("X-Guestlist-Decision") != "allow" {
		t.Errorf("headers %v", r.echo.Headers)
	}
}

func TestReportMode(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	h := host(hostA, "acme", ca)
	h.Mode = configv1.MtlsMode_MTLS_MODE_REPORT
	e := newEnv(t, h)
	r := e.get(e.client(), "https://"+hostA+"/")
	expectStatus(t, r, 200)
	if got := r.originHeader("X-Guestlist-Decision"); got != "report_deny" {
		t.Errorf("X-Guestlist-Decision %q", got)
	}
	if got := r.originHeader("X-Client-Cert-Present"); got != "false" {
		t.Errorf("X-Client-Cert-Present %q", got)
	}
	r = e.get(e.client(withCert(pkitest.NewCA(t, "x").Client(t, "x"))), "https://"+hostA+"/")
	expectStatus(t, r, 200)
	if r.originHeader("X-Client-Cert-Error") != "certificate_untrusted" || r.originHeader("X-Client-Cert-Fingerprint-Sha256") != "" ||
		r.originHeader("Client-Cert") != "" || r.originHeader("X-Client-Cert-Present") != "true" {
		t.Errorf("headers for an untrusted certificate: %v", r.echo.Headers)
	}
	r = e.get(e.client(withCert(ca.Client(t, "ok"))), "https://"+hostA+"/")
	if got := r.originHeader("X-Guestlist-Decision"); got != "allow" {
		t.Errorf("X-Guestlist-Decision %q", got)
	}
	lines := e.logLines()
	if lines[0]["verdict"] != "report_deny" || lines[0]["mode"] != "report" || lines[0]["reason"] != "certificate_missing" {
		t.Errorf("log %v", lines[0])
	}
}

func TestRejectInHandshake(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	h := host(hostA, "acme", ca)
	h.RejectInHandshake = true
	e := newEnv(t, h)
	good := ca.Client(t, "device")
	bad := pkitest.NewCA(t, "other").Client(t, "intruder")
	tlsCert := func(l *pkitest.Leaf) []tls.Certificate {
		return []tls.Certificate{{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key}}
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			base := func(certs []tls.Certificate) *tls.Config {
				cfg := &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool(), MaxVersion: v}
				if certs != nil {
					cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
				}
				return cfg
			}
			if err := dialTLS(t, e.addr, base(nil)); err == nil {
				t.Error("no certificate: accepted")
			}
			if err := dialTLS(t, e.addr, base(tlsCert(bad))); err == nil {
				t.Error("untrusted certificate: accepted")
			}
			if err := dialTLS(t, e.addr, base(tlsCert(good))); err != nil {
				t.Errorf("valid certificate: %v", err)
			}
		})
	}
	lines := e.logLines()
	var reasons []string
	for _, l := range lines {
		reasons = append(reasons, l["verdict"].(string)+"/"+l["reason"].(string))
	}
	want := "deny/certificate_missing deny/certificate_untrusted allow/certificate_verified"
	if got := strings.Join(reasons, " "); got != want+" "+want {
		t.Errorf("log reasons %s", got)
	}
}

func TestForgedHeadersReplaced(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	off := host("open.example.com", "acme")
	off.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	e := newEnv(t, host(hostA, "acme", ca), off)
	forged := []string{
		"X-Client-Cert-Verified", "true",
		"x-client-cert-present", "true",
		"X-Client-Cert-Subject", "CN=admin",
		"X_Client_Cert_Subject", "CN=admin",
		"x_client_cert_issuer", "CN=evil",
		"X-Client-Cert-Fingerprint-Sha256", "00",
		"X-Client-Cert-Serial-Number", "1",
		"X-Client-Cert-Not-After", "2999-01-01T00:00:00Z",
		"X-Client-Cert-Error", "",
		"Client-Cert", ":AAAA:",
		"Client-Cert-Chain", ":AAAA:",
		"X-Guestlist-Decision", "allow",
		"X-Guestlist-Decision-Id", "forged",
		"X-Guestlist-Config-Revision", "999",
		"X-Forwarded-For", "10.0.0.1",
		"X-Forwarded-Host", "evil.example.com",
		"X-Forwarded-Proto", "http",
		"Forwarded", "for=10.0.0.1",
		"X-Forwarded-Port", "1",
		"X-Forwarded-Client-Cert", "Hash=00;Subject=\"CN=admin\"",
		"X-Real-Ip", "6.6.6.6",
		"Connection", "X-Guestlist-Decision, X-Client-Cert-Verified, Client-Cert",
	}
	// REPORT without a certificate: the verdict is report_deny, nothing verified.
	rep := host(hostB, "acme", ca)
	rep.Mode = configv1.MtlsMode_MTLS_MODE_REPORT
	e.change([]*configv1.HostnameConfig{rep})
	for _, tc := range []struct {
		url  string
		opts []clientOpts
	}{
		{"https://" + hostB + "/", nil},
		{"https://open.example.com/", nil},
		{"https://" + hostA + "/", []clientOpts{withCert(ca.Client(t, "device"))}},
	} {
		r := e.get(e.client(tc.opts...), tc.url, forged...)
		expectStatus(t, r, 200)
		for k := range r.echo.Headers {
			if strings.Contains(k, "_") {
				t.Errorf("%s: origin got %s", tc.url, k)
			}
		}
		for _, k := range decisionHeaders {
			if vs := r.echo.Headers[k]; len(vs) > 1 {
				t.Errorf("%s: origin got %s %d times: %v", tc.url, k, len(vs), vs)
			}
		}
		verified := strings.Contains(tc.url, hostA)
		if got := r.originHeader("X-Client-Cert-Verified"); got != strconv.FormatBool(verified) {
			t.Errorf("%s: X-Client-Cert-Verified %q", tc.url, got)
		}
		if !verified {
			for _, k := range []string{"X-Client-Cert-Subject", "X-Client-Cert-Issuer", "X-Client-Cert-Fingerprint-Sha256", "X-Client-Cert-Serial-Number", "X-Client-Cert-Not-After", "Client-Cert", "Client-Cert-Chain"} {
				if v := r.originHeader(k); v != "" {
					t.Errorf("%s: origin got %s = %q", tc.url, k, v)
				}
			}
		} else if got := r.originHeader("X-Client-Cert-Subject"); got != "CN=device" {
			t.Errorf("subject %q", got)
		}
		if got := r.originHeader("X-Guestlist-Decision-Id"); got == "forged" || len(got) != 32 {
			t.Errorf("%s: decision id %q", tc.url, got)
		}
		if got := r.originHeader("X-Guestlist-Config-Revision"); got != strconv.FormatUint(e.pos, 10) {
			t.Errorf("%s: revision %q", tc.url, got)
		}
		if got := r.originHeader("X-Guestlist-Decision"); strings.Contains(tc.url, hostB) != (got == "report_deny") || got == "" {
			t.Errorf("%s: decision %q", tc.url, got)
		}
		if r.originHeader("X-Forwarded-For") != "127.0.0.1" || r.originHeader("X-Forwarded-Proto") != "https" ||
			r.originHeader("Forwarded") != "" || !strings.HasSuffix(r.originHeader("X-Forwarded-Host"), ".example.com") ||
			strings.Contains(r.originHeader("X-Forwarded-Host"), "evil") || r.originHeader("X-Forwarded-Port") != "" ||
			r.originHeader("X-Forwarded-Client-Cert") != "" || r.originHeader("X-Real-Ip") != "" {
			t.Errorf("%s: forwarding headers %v", tc.url, r.echo.Headers)
		}
	}
}

// ticketCache hands out the session of one hostname for every hostname, as a malicious client
// could.
type ticketCache struct {
	mu sync.Mutex
	ss *tls.ClientSessionState
	n  int
}

func (c *ticketCache) Get(string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ss, c.ss != nil
}

func (c *ticketCache) Put(_ string, ss *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ss != nil && c.ss == nil {
		c.ss = ss
		c.n++
	}
}

func TestSessionResumptionDoesNotCrossHostnames(t *testing.T) {
	caA := pkitest.NewCA(t, "A Root")
	caB := pkitest.NewCA(t, "B Root")
	e := newEnv(t, host(hostA, "acme", caA), host(hostB, "other", caB))
	leafA := caA.Client(t, "device")
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cache := &ticketCache{}
			connect := func(name string, withCert bool) (tls.ConnectionState, int) {
				cfg := &tls.Config{ServerName: name, MaxVersion: v, ClientSessionCache: cache,
					// The client accepts any server certificate, so that it offers A's session to B
					// (crypto/tls clients check that the session's certificate is valid for the name).
					InsecureSkipVerify: true}
				if withCert {
					cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{leafA.Cert.Raw}, PrivateKey: leafA.Key}}
				}
				conn, err := tls.Dial("tcp", e.addr, cfg)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", name)
				resp, err := http.ReadResponse(bufioReader(conn), nil)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return conn.ConnectionState(), resp.StatusCode
			}
			cs, status := connect(hostA, true)
			if status != 200 || cs.DidResume {
				t.Fatalf("A: status %d, resumed %v", status, cs.DidResume)
			}
			if cache.ss == nil {
				t.Fatal("no session ticket from A")
			}
			// A's session resumes on A (tickets work)...
			cs, status = connect(hostA, false)
			if !cs.DidResume || status != 200 {
				t.Fatalf("A again: resumed %v, status %d", cs.DidResume, status)
			}
			// ...but not on B: full handshake, no certificate, denied.
			cs, status = connect(hostB, false)
			if cs.DidResume {
				t.Error("A's session was resumed on B")
			}
			if status != 403 {
				t.Errorf("B: status %d, want 403", status)
			}
		})
	}
}

// TestSessionNotResumedOnRefusedName: a client offering a valid session of a hostname the edge
// serves (with a client certificate, or of a hostname in mode OFF, without one), with the name of
// one it does not serve (unknown, or removed since the session began), is refused with
// unrecognized_name: the session is not resumed.
func TestSessionNotResumedOnRefusedName(t *testing.T) {
	ca := pkitest.NewCA(t, "A Root")
	const open = "open.example.com"
	off := func() *configv1.HostnameConfig {
		h := host(open, "acme", ca)
		h.Mode = configv1.MtlsMode_MTLS_MODE_OFF
		return h
	}
	e := newEnv(t, host(hostA, "acme", ca), off())
	leaf := ca.Client(t, "device")
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, from := range []string{hostA, open} {
			t.Run(tls.VersionName(v)+"/"+from, func(t *testing.T) {
				e.change([]*configv1.HostnameConfig{host(hostA, "acme", ca), off()}) // again, for the next case
				cache := &ticketCache{}
				cfg := func(name string) *tls.Config {
					c := &tls.Config{ServerName: name, MaxVersion: v, ClientSessionCache: cache, InsecureSkipVerify: true}
					if from == hostA {
						c.Certificates = []tls.Certificate{{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}}
					}
					return c
				}
				if err := dialTLS(t, e.addr, cfg(from)); err != nil {
					t.Fatal(err)
				}
				if cache.ss == nil {
					t.Fatal("no session ticket")
				}
				for _, name := range []string{"unknown.example.com", from} {
					if name == from { // removed: its session does not outlive it
						e.change(nil, from)
					}
					err := dialTLS(t, e.addr, cfg(name))
					if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
						t.Errorf("%s with a session of %s: %v, want the unrecognized_name alert", name, from, err)
					}
				}
			})
		}
	}
}

func TestCertlessSessionNotResumedAfterModeChange(t *testing.T) {
	ca := pkitest.NewCA(t, "A Root")
	off := host(hostA, "acme", ca)
	off.Mode = configv1.MtlsMode_MTLS_MODE_OFF
	e := newEnv(t, off)
	cache := tls.NewLRUClientSessionCache(4)
	var resumed []bool
	c := e.client(withCert(ca.Client(t, "device")), func(c *tls.Config, tr *http.Transport) {
		c.ClientSessionCache = cache
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			resumed = append(resumed, cs.DidResume)
			return nil
		}
		tr.DisableKeepAlives = true
	})
	for range 2 {
		r := e.get(c, "https://"+hostA+"/")
		expectStatus(t, r, 200)
		if got := r.originHeader("X-Client-Cert-Present"); got != "false" {
			t.Errorf("mode OFF: X-Client-Cert-Present %q", got)
		}
	}
	e.change([]*configv1.HostnameConfig{host(hostA, "acme", ca)})
	r := e.get(c, "https://"+hostA+"/")
	expectStatus(t, r, 200)
	r = e.get(c, "https://"+hostA+"/")
	expectStatus(t, r, 200)
	if want := []bool{false, true, false, true}; fmt.Sprint(resumed) != fmt.Sprint(want) {
		t.Errorf("resumed %v, want %v (OFF sessions resume, not after the switch to ENFORCE; then the session with the certificate resumes)", resumed, want)
	}
}

func TestResumedSessionIsDecidedOnCurrentConfig(t *testing.T) {
	ca := pkitest.NewCA(t, "A Root")
	other := pkitest.NewCA(t, "A New Root")
	e := newEnv(t, host(hostA, "acme", ca, other))
	leaf := ca.Client(t, "device")
	cache := tls.NewLRUClientSessionCache(4)
	c := e.client(withCert(leaf), func(c *tls.Config, tr *http.Transport) {
		c.ClientSessionCache = cache
		tr.DisableKeepAlives = true
	})
	expectStatus(t, e.get(c, "https://"+hostA+"/"), 200)
	e.change([]*configv1.HostnameConfig{host(hostA, "acme", other)})
	var resumed bool
	c.Transport.(*http.Transport).TLSClientConfig.VerifyConnection = func(cs tls.ConnectionState) error {
		resumed = resumed || cs.DidResume
		return nil
	}
	r := e.get(c, "https://"+hostA+"/")
	if !resumed {
		t.Fatal("the session was not resumed")
	}
	expectStatus(t, r, 403)
}

func TestOriginPathPrefixAndErrors(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	h := host(hostA, "acme", ca)
	e := newEnv(t)
	h.OriginUrl = e.originURL + "/base/?k=v"
	down := host(hostB, "acme", ca)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	down.OriginUrl = "http://" + ln.Addr().String()
	ln.Close()
	bad := host("bad.example.com", "acme", ca)
	bad.OriginUrl = "ftp://x"
	e.change([]*configv1.HostnameConfig{h, down, bad})
	c := e.client(withCert(ca.Client(t, "device")))
	r := e.get(c, "https://"+hostA+"/x/y?q=1")
	expectStatus(t, r, 200)
	if r.echo.Path != "/base/x/y?k=v&q=1" {
		t.Errorf("origin path %q", r.echo.Path)
	}
	expectStatus(t, e.get(c, "https://"+hostB+"/"), 502)
	expectStatus(t, e.get(c, "https://bad.example.com/"), 502)
}

func TestPostBodyStreams(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	e := newEnv(t, host(hostA, "acme", ca))
	c := e.client(withCert(ca.Client(t, "device")))
	body := strings.Repeat("x", 3<<20)
	req, _ := http.NewRequest("POST", "https://"+hostA+"/upload", strings.NewReader(body))
	r, err := e.do(c, req)
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, r, 200)
	if r.echo.BodyBytes != int64(len(body)) {
		t.Errorf("origin read %d bytes", r.echo.BodyBytes)
	}
}

func TestGracefulShutdownDrains(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	slowOrigin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		_, _ = io.WriteString(w, "done")
	})}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go slowOrigin.Serve(ln)
	defer slowOrigin.Close()

	store := configset.NewStore()
	h := host(hostA, "acme", ca)
	h.OriginUrl, h.Version = "http://"+ln.Addr().String(), 1
	if err := store.Apply(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{h}}); err != nil {
		t.Fatal(err)
	}
	edgeCA, _ := servercert.LoadOrCreateCA(t.TempDir())
	out := &syncBuffer{}
	log := decisionlog.New(out)
	srv, err := New(Config{Addr: "127.0.0.1:0", Configs: store, Certificates: edgeCA.GetCertificate, Log: log, Logger: testLogger(t), Egress: egress.Loopback()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	e := &env{t: t, addr: srv.Addr().String(), edgeCA: edgeCA}
	c := e.client(withCert(ca.Client(t, "device")))
	got := make(chan *result, 1)
	go func() {
		req, _ := http.NewRequest("GET", "https://"+hostA+"/", nil)
		r, err := e.do(c, req)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r == nil || r.status != 200 || string(r.body) != "done" {
		t.Fatalf("in-flight request: %+v", r)
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Errorf("decision log not flushed at shutdown: %q", out.String())
	}
	if _, err := net.DialTimeout("tcp", srv.Addr().String(), time.Second); err == nil {
		t.Error("still listening")
	}
	_ = log.Close()
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{Addr: "127.0.0.1:0"}); err == nil {
		t.Error("no store accepted")
	}
	if _, err := New(Config{Addr: "127.0.0.1:0", Configs: configset.NewStore()}); err == nil {
		t.Error("no certificates accepted")
	}
	if _, err := New(Config{Addr: "256.1.1.1:0", Configs: configset.NewStore(), Certificates: func(string) (*tls.Certificate, error) { return nil, nil }}); err == nil {
		t.Error("bad address accepted")
	}
}

func TestIsReservedAndHeaderSafe(t *testing.T) {
	for _, k := range decisionHeaders {
		for _, v := range []string{k, strings.ToLower(k), strings.ToUpper(k), strings.ReplaceAll(k, "-", "_")} {
			if !isReserved(v) {
				t.Errorf("%s not reserved", v)
			}
		}
	}
	for _, k := range []string{"Client-Certs", "X-Client-Cert", "Accept", "X-Guestlist", "Client_Cert_Chain_"} {
		if isReserved(k) {
			t.Errorf("%s reserved", k)
		}
	}
	if got := headerSafe("CN=a\r\nX-Evil: 1,O=é"); got != `CN=a\0D\0AX-Evil: 1,O=\C3\A9` {
		t.Errorf("headerSafe %q", got)
	}
	if hostMatches("a.example.com:", "a.example.com") != true {
		t.Error("empty port")
	}
}

// TestPolicyPathCannotBeBypassed: a rule on a path prefix also catches the encodings and
// repeated slashes that an origin may resolve to that path; a path with dot segments is
// refused (400) before any decision.
func TestPolicyPathCannotBeBypassed(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	leaf := ca.Client(t, "device-1")
	h := host(hostA, "acme", ca)
	h.Policy = &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{
		{Name: "no-admin", Action: configv1.Action_ACTION_DENY, Expression: `request.path.startsWith("/admin")`},
		{Name: "rest", Action: configv1.Action_ACTION_ALLOW, Expression: `cert.verified`},
	}}
	e := newEnv(t, h)
	c := e.client(withCert(leaf))
	for _, p := range []string{"/admin", "/%61dmin", "//admin", "/x/../admin", "/./admin/", "/pay/%2e%2e/admin"} {
		want := 403
		if strings.Contains(p, "/.") || strings.Contains(p, "%2e") {
			want = 400
		}
		r := e.get(c, "https://"+hostA+p)
		if r.status != want {
			t.Errorf("%s: status %d, want %d", p, r.status, want)
		}
	}
	expectStatus(t, e.get(c, "https://"+hostA+"/pay"), 200)
}

func TestConnectRefused(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	e := newEnv(t, host(hostA, "acme", ca))
	req, _ := http.NewRequest(http.MethodConnect, "https://"+hostA+"/", nil)
	req.Host = hostA
	r, err := e.do(e.client(withCert(ca.Client(t, "device"))), req)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != http.StatusMethodNotAllowed || r.echo != nil {
		t.Errorf("CONNECT: %d, reached the origin: %v", r.status, r.echo != nil)
	}
}
