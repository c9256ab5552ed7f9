package main

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
)

// writePair writes leaf's certificate and key as PEM files in dir, named name.pem and name.key.
func writePair(t *testing.T, dir, name string, leaf *pkitest.Leaf) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, []byte(pkitest.PEM(leaf.Cert)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, []byte(pkitest.KeyPEM(t, leaf.Key)), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// configServiceTLS makes what the ConfigService's TLS needs in dir: a CA (its certificate in
// ca.pem) and a server certificate for projector.internal (server.pem, server.key).
func configServiceTLS(t *testing.T, dir string) (ca *pkitest.CA, caPath, certPath, keyPath string) {
	t.Helper()
	ca = pkitest.NewCA(t, "ConfigService CA")
	caPath = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPath, []byte(pkitest.PEM(ca.Cert)), 0o600); err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = writePair(t, dir, "server", ca.Server(t, []string{"projector.internal"}))
	return ca, caPath, certPath, keyPath
}

func TestGRPCTLSFlags(t *testing.T) {
	dir := t.TempDir()
	const edgeTok = "edge-token-0123456789"
	ca, caPath, certPath, keyPath := configServiceTLS(t, dir)
	otherCert, _ := writePair(t, dir, "other", ca.Server(t, []string{"other.internal"}))
	expiredCert, expiredKey := writePair(t, dir, "expired", ca.Server(t, []string{"projector.internal"},
		pkitest.Validity(time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))))
	futureCert, futureKey := writePair(t, dir, "future", ca.Server(t, []string{"projector.internal"},
		pkitest.Validity(time.Now().Add(time.Hour), time.Now().Add(48*time.Hour))))
	clientCert, clientKey := writePair(t, dir, "client", ca.Client(t, "not a server"))
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	proj := []string{"--data-dir", dir, "--store", "esdb://db:2113", "--edge-token", edgeTok}
	serverCases := []struct {
		name    string
		args    []string
		env     map[string]string
		mention string
	}{
		{name: "ok/certificate and key", args: []string{"--grpc-tls-cert", certPath, "--grpc-tls-key", keyPath}},
		{name: "ok/from the environment", env: map[string]string{"GUESTLIST_GRPC_TLS_CERT": certPath, "GUESTLIST_GRPC_TLS_KEY": keyPath}},
		{name: "fail/certificate without key", args: []string{"--grpc-tls-cert", certPath}, mention: "--grpc-tls-cert needs --grpc-tls-key"},
		{name: "fail/key without certificate", args: []string{"--grpc-tls-key", keyPath}, mention: "--grpc-tls-key needs --grpc-tls-cert"},
		{name: "fail/key of another certificate", args: []string{"--grpc-tls-cert", otherCert, "--grpc-tls-key", keyPath}, mention: "private key does not match public key"},
		{name: "fail/missing file", args: []string{"--grpc-tls-cert", filepath.Join(dir, "nope.pem"), "--grpc-tls-key", keyPath}, mention: "nope.pem"},
		{name: "fail/not PEM", args: []string{"--grpc-tls-cert", notPEM, "--grpc-tls-key", keyPath}, mention: "not.pem"},
		{name: "fail/expired", args: []string{"--grpc-tls-cert", expiredCert, "--grpc-tls-key", expiredKey}, mention: "expired"},
		{name: "fail/not yet valid", args: []string{"--grpc-tls-cert", futureCert, "--grpc-tls-key", futureKey}, mention: "is not valid until"},
		{name: "fail/a client certificate", args: []string{"--grpc-tls-cert", clientCert, "--grpc-tls-key", clientKey}, mention: "not for server authentication"},
	}
	for _, tc := range serverCases {
		runFlagCase(t, "projector", &runProjectorRole, tc.name+"/projector", tc.env, append(slicesClone(proj), tc.args...), tc.mention, func(c projectorConfig) string {
			if c.GRPCTLS == nil || c.GRPCTLS.GetCertificate == nil || c.GRPCTLS.MinVersion != tls.VersionTLS12 {
				return "the ConfigService does not serve TLS"
			}
			if cert, err := c.GRPCTLS.GetCertificate(&tls.ClientHelloInfo{}); err != nil || cert.Leaf.Subject.CommonName != "projector.internal" {
				return "the ConfigService serves another certificate"
			}
			return ""
		})
		runFlagCase(t, "api", &runAPIRole, tc.name+"/api", tc.env, append([]string{"--data-dir", dir, "--projector", "--edge-token", edgeTok}, tc.args...), tc.mention, func(c apiConfig) string {
			if c.GRPCTLS == nil {
				return "the API does not serve TLS"
			}
			return ""
		})
	}
	runFlagCase(t, "projector", &runProjectorRole, "ok/plaintext by default/projector", nil, proj, "", func(c projectorConfig) string {
		if c.GRPCTLS != nil {
			return "TLS without --grpc-tls-cert"
		}
		return ""
	})

	edge := func(addr string, more ...string) []string {
		return append([]string{"--data-dir", dir, "--edge-token", edgeTok, "--config-addr", addr}, more...)
	}
	edgeCases := []struct {
		name    string
		args    []string
		env     map[string]string
		tls     bool   // the edge connects over TLS
		server  string // with tls: the server name it expects ("" for each address's host)
		mention string
	}{
		{name: "ok/loopback in plaintext", args: edge("127.0.0.1:50052,localhost:50053,[::1]:50054,[::1%lo]:50055,[::ffff:127.0.0.1]:50056")},
		{name: "ok/plaintext when asked", args: edge("projector:50052", "--config-plaintext")},
		{name: "ok/TLS", args: edge("projector.internal:50052", "--config-ca", caPath), tls: true},
		{name: "ok/TLS on loopback too", args: edge("127.0.0.1:50052", "--config-ca", caPath, "--config-server-name", "projector.internal"), tls: true, server: "projector.internal"},
		{name: "ok/TLS from the environment", args: edge("10.0.0.7:50052"), env: map[string]string{"GUESTLIST_CONFIG_CA": caPath, "GUESTLIST_CONFIG_SERVER_NAME": "projector.internal"}, tls: true, server: "projector.internal"},
		{name: "fail/another host in plaintext", args: edge("projector:50052"), mention: "--config-addr projector:50052 is not a loopback address"},
		{name: "fail/one of the hosts in plaintext", args: edge("127.0.0.1:50052,10.0.0.7:50052"), mention: "--config-addr 10.0.0.7:50052 is not a loopback address"},
		{name: "fail/the unspecified address in plaintext", args: edge("0.0.0.0:50052"), mention: "--config-addr 0.0.0.0:50052 is not a loopback address"},
		{name: "fail/a zone on another address", args: edge("[fe80::1%eth0]:50052"), mention: "not a loopback address"},
		{name: "fail/a name that resolves to loopback is not trusted to", args: edge("localhost.attacker.example:50052"), mention: "not a loopback address"},
		{name: "fail/TLS and plaintext", args: edge("projector:50052", "--config-ca", caPath, "--config-plaintext"), mention: "exclude each other"},
		{name: "fail/server name without CA", args: edge("projector:50052", "--config-plaintext", "--config-server-name", "p"), mention: "--config-server-name needs --config-ca"},
		{name: "fail/CA file missing", args: edge("projector:50052", "--config-ca", filepath.Join(dir, "nope.pem")), mention: "--config-ca"},
		{name: "fail/CA file without a certificate", args: edge("projector:50052", "--config-ca", notPEM), mention: "holds no PEM certificate"},
	}
	for _, tc := range edgeCases {
		runFlagCase(t, "edge", &runEdgeRole, tc.name+"/edge", tc.env, tc.args, tc.mention, func(c edgeConfig) string {
			if !tc.tls {
				if c.ConfigTLS != nil {
					return "TLS without --config-ca"
				}
				return ""
			}
			if c.ConfigTLS == nil || c.ConfigTLS.RootCAs == nil || c.ConfigTLS.InsecureSkipVerify || c.ConfigTLS.ServerName != tc.server {
				return "not TLS trusting --config-ca, expecting the server name " + tc.server
			}
			if _, err := ca.Server(t, []string{"projector.internal"}).Cert.Verify(x509.VerifyOptions{Roots: c.ConfigTLS.RootCAs}); err != nil {
				return "the roots do not hold --config-ca: " + err.Error()
			}
			return ""
		})
	}
}

// slicesClone copies s, so that appending to the copy leaves s alone.
func slicesClone(s []string) []string { return append([]string(nil), s...) }

// TestKeyPairFilesReload: a renewed certificate takes effect at the next handshake; a pair that
// does not load (written half-way, or removed) leaves the last good one serving.
func TestKeyPairFilesReload(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, "ConfigService CA")
	first := ca.Server(t, []string{"projector.internal"})
	certPath, keyPath := writePair(t, dir, "server", first)
	k, err := loadKeyPairFiles(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	k.logger = slog.New(slog.DiscardHandler)
	serving := func() *x509.Certificate {
		t.Helper()
		k.mu.Lock()
		k.lastCheck = time.Time{} // look at the files now
		k.mu.Unlock()
		c, err := k.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatalf("GetCertificate: %v", err)
		}
		return c.Leaf
	}
	if !serving().Equal(first.Cert) {
		t.Fatal("not serving the certificate loaded")
	}
	// Renewal writes the certificate first: until the key follows, the old pair serves.
	second := ca.Server(t, []string{"projector.internal"})
	if err := os.WriteFile(certPath, []byte(pkitest.PEM(second.Cert)), 0o600); err != nil {
		t.Fatal(err)
	}
	if !serving().Equal(first.Cert) {
		t.Fatal("serving a certificate whose key has not been written yet")
	}
	if err := os.WriteFile(keyPath, []byte(pkitest.KeyPEM(t, second.Key)), 0o600); err != nil {
		t.Fatal(err)
	}
	if !serving().Equal(second.Cert) {
		t.Fatal("the renewed certificate does not serve")
	}
	// Removed files: the last good pair serves.
	if err := os.Remove(certPath); err != nil {
		t.Fatal(err)
	}
	if !serving().Equal(second.Cert) {
		t.Fatal("a removed certificate file stopped the serving one")
	}
	// Within the check interval, the files are not looked at again.
	third := ca.Server(t, []string{"projector.internal"})
	writePair(t, dir, "server", third)
	k.mu.Lock()
	k.lastCheck = time.Now()
	k.mu.Unlock()
	if c, _ := k.GetCertificate(&tls.ClientHelloInfo{}); !c.Leaf.Equal(second.Cert) {
		t.Fatal("the files were read again within the check interval")
	}
	if !serving().Equal(third.Cert) {
		t.Fatal("the files written back do not serve")
	}
}

// TestEdgeWatchesTheConfigServiceOverTLS: projectors serving TLS (--grpc-tls-cert) and an edge
// trusting their CA (--config-ca, --config-server-name) converge and enforce as in plaintext; an
// edge trusting another CA, one expecting another name, and one in plaintext get no
// configuration, and /readyz says why.
func TestEdgeWatchesTheConfigServiceOverTLS(t *testing.T) {
	dir := t.TempDir()
	_, caPath, certPath, keyPath := configServiceTLS(t, dir)
	pair, err := loadKeyPairFiles(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := loadRoots(caPath)
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, func(p *projectorConfig, e *edgeConfig) {
		if p != nil {
			p.GRPCTLS = pair.serverTLS(slog.New(slog.DiscardHandler))
		}
		if e != nil {
			e.ConfigTLS = &tls.Config{RootCAs: roots, ServerName: "projector.internal", MinVersion: tls.VersionTLS12}
		}
	})
	origin := &slowOrigin{}
	good := c.setUpTenant(origin.start(t))
	n := c.api
	eventually(t, "the edge serves pay.acme.example", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 200 })
	n.rest("POST", "/v1/tenants/acme/certificateAuthorities/devices/revocations", n.token, map[string]any{"serialNumber": good.Cert.SerialNumber.Text(16)})
	eventually(t, "the revocation is enforced", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 403 })

	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(pkitest.NewCA(t, "another CA").Cert)
	cases := []struct {
		id  string
		tls *tls.Config
		why string
	}{
		{"edge-trusting-another-ca", &tls.Config{RootCAs: otherRoots, ServerName: "projector.internal"}, "certificate signed by unknown authority"},
		{"edge-expecting-another-name", &tls.Config{RootCAs: roots, ServerName: "api.internal"}, "certificate is valid for projector.internal, not api.internal"},
		{"edge-in-plaintext", nil, "last attempt failed"},
	}
	for _, tc := range cases {
		t.Run(tc.id, func(t *testing.T) {
			cfg := c.startAnotherEdge(tc.id, func(cfg *edgeConfig) { cfg.ConfigTLS = tc.tls })
			body := waitNotReady(t, cfg, tc.why)
			if !strings.Contains(body, "no configuration received yet") {
				t.Errorf("/readyz body %q does not say that no configuration arrived", body)
			}
			for _, p := range c.projectors {
				for _, w := range p.cp.distribute.Watchers() {
					if w.EdgeID == tc.id {
						t.Errorf("projector streams configuration to %s", tc.id)
					}
				}
			}
		})
	}
}

// TestKeyPairFilesRetriesAFailedPair: a pair that failed to load is read again at the next look
// even when its files' modification times and sizes did not change (an owner or mode fixed with
// chown or chmod changes neither), and the last good pair serves until it loads. Checked over real
// TLS handshakes.
func TestKeyPairFilesRetriesAFailedPair(t *testing.T) {
	cases := []struct {
		name string
		// fix is what the operator does after the renewal (cert written, key not loadable with
		// it); second is the renewed pair.
		fix  func(t *testing.T, keyPath string, second *pkitest.Leaf)
		want string // "first" or "second": the pair served after fix
	}{
		{name: "ok/the key completed in place, its modification time and size unchanged", want: "second",
			fix: func(t *testing.T, keyPath string, second *pkitest.Leaf) {
				fi, err := os.Stat(keyPath)
				if err != nil {
					t.Fatal(err)
				}
				pem := pkitest.KeyPEM(t, second.Key)
				if int64(len(pem)) != fi.Size() {
					t.Fatalf("the renewed key's PEM is %d bytes, the first's %d: this case needs the same size", len(pem), fi.Size())
				}
				if err := os.WriteFile(keyPath, []byte(pem), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(keyPath, fi.ModTime(), fi.ModTime()); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "fail/the pair still does not match", want: "first",
			fix: func(*testing.T, string, *pkitest.Leaf) {}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ca := pkitest.NewCA(t, "ConfigService CA")
			roots := x509.NewCertPool()
			roots.AddCert(ca.Cert)
			first := ca.Server(t, []string{"projector.internal"})
			certPath, keyPath := writePair(t, dir, "server", first)
			k, err := loadKeyPairFiles(certPath, keyPath)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := tls.Listen("tcp", "127.0.0.1:0", k.serverTLS(slog.New(slog.DiscardHandler)))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_ = c.(*tls.Conn).Handshake()
					_ = c.Close()
				}
			}()
			serving := func() *x509.Certificate {
				t.Helper()
				k.mu.Lock()
				k.lastCheck = time.Time{} // look at the files at this handshake
				k.mu.Unlock()
				c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "projector.internal"})
				if err != nil {
					t.Fatalf("TLS handshake: %v", err)
				}
				defer c.Close()
				return c.ConnectionState().PeerCertificates[0]
			}

			second := ca.Server(t, []string{"projector.internal"})
			if err := os.WriteFile(certPath, []byte(pkitest.PEM(second.Cert)), 0o600); err != nil {
				t.Fatal(err)
			}
			if !serving().Equal(first.Cert) {
				t.Fatal("serving a certificate without its key")
			}
			tc.fix(t, keyPath, second)
			want := map[string]*x509.Certificate{"first": first.Cert, "second": second.Cert}[tc.want]
			if got := serving(); !got.Equal(want) {
				t.Fatalf("serving serial %x, want the %s pair's (%x)", got.SerialNumber, tc.want, want.SerialNumber)
			}
		})
	}
}
