package ledger

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"guestlist.dev/services/eventstore/boltstore"
)

// TestStoreBehindTheLedger: a ledger whose position is past the event store's end (the store
// emptied, or an older copy restored) stops Run with ErrStoreBehind naming both positions, rather
// than skip the store's events up to its position; with events written to the new store too
// (which a subscription from the ledger's position would skip, and then chain onto the old
// history). Without the check Run kept following and recorded nothing of the new store.
func TestStoreBehindTheLedger(t *testing.T) {
	for _, write := range []bool{false, true} {
		name := "store emptied"
		if write {
			name = "store emptied, new events written"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.start()
			sizes := e.generate(2, 60)
			e.waitCheckpointed(sizes)
			e.stop()
			pos, err := e.ledger.Position()
			if err != nil {
				t.Fatal(err)
			}
			if err := e.ledger.Close(); err != nil {
				t.Fatal(err)
			}
			if err := e.store.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(e.storePath); err != nil {
				t.Fatal(err)
			}
			if e.store, err = boltstore.Open(e.storePath); err != nil {
				t.Fatal(err)
			}
			if write {
				e.generate(3, 5)
			}
			if e.ledger, err = Open(filepath.Join(e.dir, "ledger.db"), e.store, e.signer); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = e.ledger.Run(ctx)
			if !errors.Is(err, ErrStoreBehind) {
				t.Fatalf("Run = %v; want ErrStoreBehind", err)
			}
			t.Logf("ledger at %d: %v", pos, err)
			if after, _ := e.ledger.Position(); after != pos {
				t.Fatalf("the ledger's position moved from %d to %d", pos, after)
			}
		})
	}
}
