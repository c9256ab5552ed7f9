package ledger

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"guestlist.dev/services/boltcheck/boltchecktest"
)

// TestDamagedLedgerIsRefused damages copies of a real ledger file in every way of
// boltchecktest.Damages. Open refuses each with an error that names the file and says what to do,
// writes nothing to it, and does not crash the process. A damaged meta page falls back to the
// other one, with the position and every checkpoint. And what the error says holds: moved aside,
// the ledger is rebuilt from the event store, and checkpoints kept from before still verify
// against it.
func TestDamagedLedgerIsRefused(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.start()
	sizes := e.generate(5, 400) // enough for a tenant's chain bucket to have a branch root
	e.waitCheckpointed(sizes)
	e.stop()
	last, err := e.ledger.Position()
	if err != nil {
		t.Fatal(err)
	}
	latest := map[string]SignedCheckpoint{}
	for tn := range sizes {
		if latest[tn], err = e.ledger.Latest(tn); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.ledger.Close(); err != nil {
		t.Fatal(err)
	}
	e.ledger = nil
	src := filepath.Join(e.dir, "ledger.db")
	// Once more: the file's last transaction then changes nothing.
	l, err := Open(src, e.store, e.signer)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	boltchecktest.Each(t, src, func(t *testing.T, path string, d boltchecktest.Damage) {
		if !d.Recoverable {
			boltchecktest.RefusedByOpen(t, path, "ledger: open "+path+": ledger.db: the file is damaged (", "move it aside",
				func() (io.Closer, error) { return Open(path, e.store, e.signer) })
			return
		}
		l, err := Open(path, e.store, e.signer)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if pos, err := l.Position(); err != nil || pos != last {
			t.Errorf("after the meta page fallback: position %d, %v; want %d", pos, err, last)
		}
		for tn, want := range latest {
			if got, err := l.Latest(tn); err != nil || got != want {
				t.Errorf("%s: latest checkpoint after the meta page fallback: %v", tn, err)
			}
		}
	})

	t.Run("moved aside and rebuilt", func(t *testing.T) {
		if err := os.Rename(src, src+".damaged"); err != nil {
			t.Fatal(err)
		}
		e.start()
		e.waitCheckpointed(sizes)
		e.stop()
		pub := e.signer.PublicKey()
		for tn, n := range sizes {
			if r := VerifyStore(ctx, e.store, e.ledger, pub, tn); !r.Valid || r.Checked != n {
				t.Errorf("%s: the rebuilt ledger: %+v", tn, r)
			}
			old, err := VerifyCheckpoint(pub, latest[tn])
			if err != nil {
				t.Fatal(err)
			}
			s, err := e.ledger.Latest(tn)
			if err != nil {
				t.Fatal(err)
			}
			cur, err := VerifyCheckpoint(pub, s)
			if err != nil {
				t.Fatal(err)
			}
			if cur.Size != old.Size || string(cur.Root) != string(old.Root) || cur.Chain != old.Chain {
				t.Errorf("%s: the rebuilt ledger's checkpoint %d/%x differs from the one kept, %d/%x", tn, cur.Size, cur.Root, old.Size, old.Root)
			}
		}
	})
}
