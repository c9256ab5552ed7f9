package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"guestlist.dev/edge/echo"
	"guestlist.dev/edge/pkitest"
	pt "guestlist.dev/projections/projector/projectortest"
	"guestlist.dev/services/eventstore/boltstore"
)

// TestDevRestoredBackupRewindsTheEdge: the hazard of restoring an older backup, end to end through
// guestlist dev (REST, event store, projector, Watch, the edge and its saved configuration). The
// edge holds position P; events.db is restored from a copy taken at Q < P, projections.db and
// ledger.db are moved aside (docs/storage.md), and the new history revokes a client certificate,
// then carries the store past P without touching the hostname again. The edge, resuming from its
// saved configuration, must enforce the revocation and forget the hostnames of the old history.
// Before history tokens it resumed after P, got no change, and kept accepting the revoked
// certificate.
func TestDevRestoredBackupRewindsTheEdge(t *testing.T) {
	dir := t.TempDir()
	origin := httptest.NewServer(echo.Handler())
	t.Cleanup(origin.Close)
	ca := pkitest.NewCA(t, "acme devices")
	good := ca.Client(t, "terminal-1")

	n := startDev(t, dir)
	if code, _ := n.rest("POST", "/v1/tenants?tenantId=acme", n.token, map[string]any{"displayName": "acme"}); code != 200 {
		t.Fatal("create tenant")
	}
	n.rest("POST", "/v1/tenants/acme/certificateAuthorities?certificateAuthorityId=devices", n.token, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	n.hostname("acme", "pay.acme.example", origin.URL)
	eventually(t, "the edge serves pay.acme.example", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 200 })
	n.stop()
	events := filepath.Join(dir, eventsFile)
	backup := events + ".backup"
	if err := pt.CopyFile(backup, events); err != nil {
		t.Fatal(err)
	}

	// After the backup: hostnames the restored store will not have.
	n = startDev(t, dir)
	const later = 3
	for i := range later {
		n.hostname("acme", fmt.Sprintf("h%d.acme.example", i), origin.URL)
	}
	eventually(t, "the edge serves the hostnames after the backup", func() bool {
		code, _ := n.get(fmt.Sprintf("h%d.acme.example", later-1), "/", good)
		return code == 200
	})
	n.stop()
	p := lastPosition(t, events)

	// The restore, as docs/storage.md says: the store from the backup, the read model and the
	// ledger moved aside; the edge's saved configuration is left as it is.
	if err := pt.CopyFile(events, backup); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{projectionsFile, ledgerFile} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(dir, f+".old")); err != nil {
			t.Fatal(err)
		}
	}
	n = startDev(t, dir)
	if code, _ := n.rest("POST", "/v1/tenants/acme/certificateAuthorities/devices/revocations", n.token, map[string]any{"serialNumber": good.Cert.SerialNumber.Text(16)}); code != 200 {
		t.Fatal("create revocation")
	}
	for i := range 2*later + 2 { // tokens change no hostname; each is one event
		if code, _ := n.rest("POST", "/v1/tenants/acme/tokens", n.token, map[string]any{"displayName": fmt.Sprintf("t%d", i), "role": "ROLE_AUDITOR"}); code != 200 {
			t.Fatal("create token")
		}
	}
	eventually(t, "the revocation is enforced", func() bool { code, _ := n.get("pay.acme.example", "/", good); return code == 403 })
	if code, _ := n.get("h0.acme.example", "/", good); code != -1 {
		t.Errorf("a hostname of the old history only: %d, want a failed handshake", code)
	}
	n.stop()
	if q := lastPosition(t, events); q <= p {
		t.Fatalf("test setup: the new history ends at %d, not past the edge's position %d", q, p)
	}
}

// lastPosition returns the last position of the closed bolt store at path.
func lastPosition(t *testing.T, path string) uint64 {
	t.Helper()
	store, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	last, err := store.LastPosition(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return uint64(last)
}
