package ledger

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/projector/projectortest"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
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
			e.replaceStore(func() error { return os.Remove(e.storePath) })
			if write {
				e.generate(3, 5)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = e.ledger.Run(ctx)
			if !errors.Is(err, ErrStoreBehind) {
				t.Fatalf("Run = %v; want ErrStoreBehind", err)
			}
			if !strings.Contains(err.Error(), "move "+e.ledger.db.Path()+" aside") {
				t.Errorf("Run = %v; want it to say what to do to go on with this store", err)
			}
			t.Logf("ledger at %d: %v", pos, err)
			if after, _ := e.ledger.Position(); after != pos {
				t.Fatalf("the ledger's position moved from %d to %d", pos, after)
			}
		})
	}
}

// replaceStore closes the ledger and the store, runs replace on the closed store file, and opens
// both again.
func (e *env) replaceStore(replace func() error) {
	e.t.Helper()
	if err := e.ledger.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := e.store.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := replace(); err != nil {
		e.t.Fatal(err)
	}
	var err error
	if e.store, err = boltstore.Open(e.storePath); err != nil {
		e.t.Fatal(err)
	}
	if e.ledger, err = Open(filepath.Join(e.dir, "ledger.db"), e.store, e.signer); err != nil {
		e.t.Fatal(err)
	}
}

// TestLedgerHistoryDiverged: the store restored from a copy older than the ledger and written to
// past the ledger's position, with as many events in the tenant's stream as the lost ones (the
// revisions the ledger expects next): Run stops with ErrHistoryDiverged, naming the ledger's last
// event and what the store holds. Before, positions and revisions matched, and the ledger chained
// the new history's events after its position onto the old history, silently.
func TestLedgerHistoryDiverged(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	write := func(n int) (last eventstore.Position) {
		t.Helper()
		for range n {
			res, err := projectortest.Write(ctx, e.store, projectortest.Append{Stream: fold.TenantStream("acme"),
				Events: []proto.Message{&eventsv1.TokenCreated{TokenId: projectortest.NewID(), DisplayName: "t", Role: eventsv1.Role_ROLE_AUDITOR, SecretSha256: make([]byte, 32)}}})
			if err != nil {
				t.Fatal(err)
			}
			last = res.Position
		}
		return last
	}
	write(3)
	e.start() // opens the ledger
	backup := e.storePath + ".backup"
	e.stop()
	e.replaceStore(func() error { return projectortest.CopyFile(backup, e.storePath) })
	e.start()
	p := write(5)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if pos, err := e.ledger.Position(); err == nil && pos == p {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ledger never reached position %d", p)
		}
	}
	e.stop()
	e.replaceStore(func() error { return projectortest.CopyFile(e.storePath, backup) })
	if last := write(6); last != p+1 {
		t.Fatalf("test setup: the new history's events end at %d, want %d", last, p+1)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := e.ledger.Run(ctx)
	if !errors.Is(err, ErrHistoryDiverged) {
		t.Fatalf("Run = %v; want ErrHistoryDiverged", err)
	}
	for _, want := range []string{fmt.Sprintf("at position %d", p), "older backup", "move " + filepath.Join(e.dir, "ledger.db") + " aside"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Run = %q; want it to say %q", err, want)
		}
	}
	if after, _ := e.ledger.Position(); uint64(after) != uint64(p) {
		t.Fatalf("the ledger's position moved from %d to %d", p, after)
	}
}
