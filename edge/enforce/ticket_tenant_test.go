package enforce

import (
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestSessionNotResumedForAnotherTenant: a session ticket issued while hostname A belonged to
// tenant t1 is not resumed once A was deleted and created again by tenant t2. Resumed, it carried
// t1's device certificate to t2 without the client sending it (a full handshake names t2's CAs,
// and a client holding only a t1 certificate sends none): t2's decision log recorded the t1
// device's fingerprint, and in REPORT mode t2's origin would be told a certificate was presented.
// (From an independent review.) The same client to A while t1 still has it resumes.
func TestSessionNotResumedForAnotherTenant(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			caT1 := pkitest.NewCA(t, "T1 Root")
			caT2 := pkitest.NewCA(t, "T2 Root")
			e := newEnv(t, host(hostA, "t1", caT1))
			dev := caT1.Client(t, "t1-device")
			cache := tls.NewLRUClientSessionCache(8)
			// A standard client: Certificates, so crypto/tls sends the certificate only when the
			// server's CertificateRequest names its issuer.
			dial := func() (int, bool) {
				cfg := &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool(), ClientSessionCache: cache, MaxVersion: v,
					NextProtos: []string{"http/1.1"}, Certificates: []tls.Certificate{{Certificate: [][]byte{dev.Cert.Raw}, PrivateKey: dev.Key}}}
				conn, err := tls.Dial("tcp", e.addr, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+hostA+"\r\nConnection: close\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(bufioReader(conn), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode, conn.ConnectionState().DidResume
			}
			if st, _ := dial(); st != http.StatusOK {
				t.Fatalf("t1's device to t1's hostname: %d", st)
			}
			if st, resumed := dial(); st != http.StatusOK || !resumed {
				t.Fatalf("again while t1 has the hostname: status %d, resumed %v; want 200, resumed", st, resumed)
			}
			e.change(nil, hostA)
			e.change([]*configv1.HostnameConfig{host(hostA, "t2", caT2)})
			st, resumed := dial()
			lines := e.logLines()
			last := lines[len(lines)-1]
			cert, _ := last["cert"].(map[string]any)
			if resumed {
				t.Fatalf("t1's session was resumed on the hostname now t2's: status %d; t2's log line: tenant %v presented %v fingerprint %v", st, last["tenant_id"], cert["presented"], cert["fingerprint_sha256"])
			}
			if last["tenant_id"] != "t2" || cert["presented"] != false {
				t.Fatalf("t2's log line %v; want no certificate presented (a full handshake named t2's CAs)", last)
			}
		})
	}
}
