package projector

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/boltcheck/boltchecktest"
)

// TestDamagedReadModelIsRefused damages copies of a real read model in every way of
// boltchecktest.Damages. Open refuses each with an error that names the file and says that moving
// it aside rebuilds it, writes nothing to it, and does not crash the process (bbolt's own free
// list walk panicked in a goroutine of its own). A damaged meta page falls back to the other one,
// with every configuration and the checkpoint.
func TestDamagedReadModelIsRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	write := tenantWriter(t, store, "acme")
	write(&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: []byte{1, 2, 3}})
	const hosts = 300 // enough for the hostnames bucket's root to be a branch page
	var last uint64
	for i := range hosts {
		last = write(hostnameCreated(fmt.Sprintf("h%d.example.com", i), eventsv1.MtlsMode_MTLS_MODE_ENFORCE, "ca1"))
	}
	p := openProjector(t, dir, store)
	catchUp(t, ctx, p, last)
	_, want, err := p.Snapshot()
	if err != nil || len(want) != hosts {
		t.Fatalf("Snapshot: %d configurations, %v", len(want), err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// Once more: the file's last transaction then changes nothing.
	if err := openProjector(t, dir, store).Close(); err != nil {
		t.Fatal(err)
	}

	boltchecktest.Each(t, filepath.Join(dir, "projection.db"), func(t *testing.T, path string, d boltchecktest.Damage) {
		if !d.Recoverable {
			boltchecktest.RefusedByOpen(t, path, "projector: open "+path+": projection.db: the file is damaged (", "move the file aside",
				func() (io.Closer, error) { return Open(path, store, WithLogger(quiet), WithLockTimeout(time.Second)) })
			return
		}
		p, err := Open(path, store, WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		pos, got, err := p.Snapshot()
		if err != nil || pos != last || len(got) != len(want) {
			t.Fatalf("after the meta page fallback: position %d, %d configurations, %v; want %d, %d", pos, len(got), err, last, len(want))
		}
	})
}
