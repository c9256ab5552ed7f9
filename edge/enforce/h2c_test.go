package enforce

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"guestlist.dev/edge/echo"
)

// TestH2CUpgradeIgnored: an HTTP/1.1 request asking to upgrade to h2c reaches the origin without
// the upgrade (no Upgrade, HTTP2-Settings or Connection: Upgrade) and is answered as HTTP/1.1.
// Forwarded, an origin granting it would have made the connection an HTTP/2 tunnel whose requests
// the edge never decides nor scrubs of forged certificate headers (independent review). Other
// upgrades (WebSocket) still go through: TestUpgradeGoesThroughReverseProxy.
func TestH2CUpgradeIgnored(t *testing.T) {
	for _, upgrade := range []string{"h2c", "H2C", "websocket, h2c"} {
		t.Run(upgrade, func(t *testing.T) {
			e := timeoutEnv(t, 5*time.Second)
			conn := rawTLS(t, e, hostA, nil)
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(conn, "GET /up HTTP/1.1\r\nHost: "+hostA+"\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: "+upgrade+"\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufioReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got echo.Response
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, %v", resp.StatusCode, err)
			}
			for _, k := range []string{"Upgrade", "Http2-Settings", "Connection"} {
				if v, ok := got.Headers[k]; ok {
					t.Errorf("the origin got %s: %q", k, v)
				}
			}
			if got.Path != "/up" || got.Proto != "HTTP/1.1" {
				t.Errorf("the origin got %s %s", got.Path, got.Proto)
			}
		})
	}
}
