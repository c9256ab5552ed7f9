package watch

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/enforce"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/edge/servercert"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// startEdge serves store on a real TLS listener on loopback and returns a function that makes one
// HTTPS GET of path on hostname with the client certificate leaf (nil: none) on a new connection,
// returning the status and the body.
func startEdge(t *testing.T, store *configset.Store) func(hostname, path string, leaf *pkitest.Leaf) (int, []byte, error) {
	t.Helper()
	edgeCA, err := servercert.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := enforce.New(enforce.Config{Addr: "127.0.0.1:0", Configs: store, Certificates: edgeCA.GetCertificate, Logger: quietLogger(t), Egress: egress.Loopback()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return func(hostname, path string, leaf *pkitest.Leaf) (int, []byte, error) {
		cfg := &tls.Config{RootCAs: edgeCA.Pool()}
		if leaf != nil {
			cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}}
		}
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, srv.Addr().String())
			},
			TLSClientConfig: cfg,
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + hostname + path)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, body, err
	}
}

// startOrigin serves the echo origin on loopback until the test ends and returns its URL.
func startOrigin(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go echo.ServeListener(ctx, ln)
	return "http://" + ln.Addr().String()
}

// TestLargeHostnameConfigurationIsReceived: a tenant with many revocations (about 21,000 at the
// longest ids the API accepts) has a hostname configuration larger than gRPC's default limit of
// 4 MiB on a received message. The ConfigService sends such a configuration alone, in one message
// (distribute.Split); the edge must receive it, or it stays at the position before it for good,
// reconnecting forever, and no later change of any tenant reaches it: here another tenant's
// revocation of a client certificate, which kept working.
func TestLargeHostnameConfigurationIsReceived(t *testing.T) {
	origin := startOrigin(t)

	acmeCA, betaCA := pkitest.NewCA(t, "Acme Root"), pkitest.NewCA(t, "Beta Root")
	device := betaCA.Client(t, "beta device")
	beta := func(version uint64, revoked ...string) *configv1.HostnameConfig {
		c := hostCfg("beta.example.com", version, betaCA, origin)
		c.TenantId = "beta"
		for i, fp := range revoked {
			c.Revocations = append(c.Revocations, &configv1.Revocation{CertificateAuthorityId: "ca1", RevocationId: fmt.Sprintf("rev-%d", i), FingerprintSha256: fp})
		}
		return c
	}
	// Acme's hostname: 40,000 revocations by fingerprint, with revocation ids of the longest length allowed.
	big := hostCfg("acme.example.com", 2, acmeCA, origin)
	for i := range 40000 {
		sum := sha256.Sum256(fmt.Appendf(nil, "revoked %d", i))
		big.Revocations = append(big.Revocations, &configv1.Revocation{
			CertificateAuthorityId: "ca1",
			RevocationId:           fmt.Sprintf("r%062d", i),
			FingerprintSha256:      hex.EncodeToString(sum[:]),
		})
	}
	if n := proto.Size(big); n <= 4<<20 {
		t.Fatalf("the large configuration is %d bytes; the test needs more than 4 MiB", n)
	}
	sum := sha256.Sum256(device.Cert.Raw)
	responses := []*configv1.WatchResponse{
		{Position: 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{beta(1)}},
		{Position: 2, Upserts: []*configv1.HostnameConfig{big}},
		{Position: 3, Upserts: []*configv1.HostnameConfig{beta(3, hex.EncodeToString(sum[:]))}},
	}
	// The server sends what follows the hello's position, then waits for the acks.
	_, addr := startServer(t, func(s *session) error {
		for _, r := range responses {
			if r.GetPosition() <= s.hello.GetResumePosition() {
				continue
			}
			s.send(r)
			if a := s.recv(); a.GetError() != "" || a.GetAckPosition() != r.GetPosition() {
				return fmt.Errorf("answer %v", a)
			}
		}
		<-s.stream.Context().Done()
		return nil
	})
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{Logger: quietLogger(t), Backoff: Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}})
	get := startEdge(t, store)

	waitFor(t, "the snapshot", func() bool { return store.Load().Position() >= 1 })
	if code, _, err := get("beta.example.com", "/", device); err != nil || code != http.StatusOK {
		t.Fatalf("before the revocation: status %d, error %v; want 200", code, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for store.Load().Position() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if pos := store.Load().Position(); pos != 3 {
		t.Errorf("the edge is at position %d, want 3: it never received the large configuration", pos)
	}
	if code, _, err := get("beta.example.com", "/", device); err == nil && code != http.StatusForbidden {
		t.Errorf("beta's revoked certificate: status %d, want 403", code)
	}
}
