package projector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
)

// withApplyHook makes fn run after every event is folded into its tenant's state, before the
// batch records it; an error stands for any failure at that point.
func withApplyHook(fn func(pos uint64) error) Option {
	return func(o *options) { o.applyHook = fn }
}

// runFor runs p until it returns or d passes, and returns Run's error.
func runFor(t *testing.T, p *Projector, d time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := p.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run was still running after %v (returned %v), want it to stop on its own", d, err)
	}
	return err
}

// hostnameCreated is an active hostname of mode mode trusting cas.
func hostnameCreated(name string, mode eventsv1.MtlsMode, cas ...string) *eventsv1.HostnameCreated {
	return &eventsv1.HostnameCreated{Hostname: name, OriginUrl: "http://origin.example",
		Mtls:  &eventsv1.MtlsSettings{Mode: mode, CertificateAuthorityIds: cas},
		State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE}
}

// damageConfiguration overwrites the stored configuration of hostname in dir's read model (closed)
// with bytes that do not decode.
func damageConfiguration(t *testing.T, dir, hostname string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "projection.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHostnames).Put([]byte(hostname), []byte{0xff, 0xff})
	}); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedConfigurationStopsBeforeTheEvent: a stored configuration that does not decode, met
// while looking up which tenant has a hostname on the edges, stops Run before the event changes
// its tenant's state, with an error that says the read model is damaged. Nothing of the event is
// committed (before, the other hostnames it affects were stored with it under a checkpoint before
// it, and the resubscription then refused the event as an inconsistent history), every event before
// it is, and a Run again stops on the same event. Deleting the file rebuilds it from the store.
func TestDamagedConfigurationStopsBeforeTheEvent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	write := tenantWriter(t, store, "acme")
	write(&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: []byte{1, 2, 3}},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca2", CertificateDer: []byte{4, 5, 6}})
	const hosts = 10
	var last uint64
	for i := range hosts {
		last = write(hostnameCreated(fmt.Sprintf("h%d.example.com", i), eventsv1.MtlsMode_MTLS_MODE_ENFORCE, "ca1"))
	}
	p := openProjector(t, dir, store)
	catchUp(t, ctx, p, last)
	_ = p.Close()

	const damaged = "h7.example.com"
	damageConfiguration(t, dir, damaged)
	// One batch: an event that affects no hostname, then a revocation that affects all ten.
	before := write(&eventsv1.RevocationAdded{RevocationId: "r0", CertificateAuthorityId: "ca2", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "1"}})
	revoke := write(&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "abc"}})

	p = openProjector(t, dir, store, WithBatch(1000, time.Second))
	for attempt := 1; attempt <= 2; attempt++ {
		err := runFor(t, p, 10*time.Second)
		if err == nil || errors.Is(err, fold.ErrInconsistent) {
			t.Fatalf("Run %d = %v, want an error about the damaged read model", attempt, err)
		}
		for _, want := range []string{"read model", "damaged", damaged, "delete the file"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Run %d = %q, want it to mention %q", attempt, err, want)
			}
		}
		if pos := p.Position(); pos != before {
			t.Fatalf("after Run %d the checkpoint is %d, want %d: the events before the revocation (at %d), not it", attempt, pos, before, revoke)
		}
		for i := range hosts {
			h := fmt.Sprintf("h%d.example.com", i)
			if h == damaged {
				continue
			}
			_, cfg, err := p.Lookup(h)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.GetVersion() > before || len(cfg.GetRevocations()) > 0 {
				t.Errorf("after Run %d %s is stored at version %d with %d revocations, beyond the checkpoint %d", attempt, h, cfg.GetVersion(), len(cfg.GetRevocations()), before)
			}
		}
	}
	_ = p.Close()

	// What the error says to do: the file is rebuilt from the store.
	if err := os.Remove(filepath.Join(dir, "projection.db")); err != nil {
		t.Fatal(err)
	}
	p = openProjector(t, dir, store)
	defer p.Close()
	stop := running(p)
	check(t, p, store)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestErrorAfterApplyDropsTheBatch: should anything fail after an event was folded into its
// tenant's state and before the batch records it, the batch is not committed (it would store the
// configurations of that state under a checkpoint before the event) and the tenant states are
// dropped, as after a failed commit; Run resubscribes from the checkpoint and the read model ends
// as a fold from scratch. Before, the batch was committed and the resubscription folded the event
// into the state a second time, which the fold refused: Run stopped, blaming the history.
func TestErrorAfterApplyDropsTheBatch(t *testing.T) {
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	write := tenantWriter(t, store, "acme")
	write(&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: []byte{1, 2, 3}})
	for i := range 5 {
		write(hostnameCreated(fmt.Sprintf("h%d.example.com", i), eventsv1.MtlsMode_MTLS_MODE_ENFORCE, "ca1"))
	}
	// The revocation changes the five hostnames the batch recorded before it.
	failAt := write(&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "abc"}})
	write(hostnameCreated("after.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))

	var (
		mu       sync.Mutex
		attempts int
	)
	hook := withApplyHook(func(pos uint64) error {
		mu.Lock()
		defer mu.Unlock()
		if pos != failAt {
			return nil
		}
		attempts++
		if attempts == 1 {
			return errors.New("injected failure")
		}
		return nil
	})
	p := openProjector(t, dir, store, WithBatch(1000, time.Second), hook)
	defer p.Close()
	stop := running(p)
	check(t, p, store)
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want it to resubscribe and go on", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts != 2 {
		t.Errorf("the event at %d was folded %d times, want 2 (failed, then again from the checkpoint)", failAt, attempts)
	}
	if n := p.Stats().Events; n != uint64(failAt)+1 {
		t.Errorf("%d events committed, want %d: each once", n, failAt+1)
	}
}

// TestStoreBehindTheReadModel: a read model whose checkpoint is past the event store's last
// event (the store emptied, or replaced by an older copy, new events written since or not) makes
// Run stop at once with ErrStoreBehind, naming both positions and what to do, without becoming
// Ready and without touching the read model. Before, the projector reported Ready and skipped every
// new event up to its old checkpoint. An older copy written to past the checkpoint (positions alone
// look fine) makes it stop likewise with ErrHistoryDiverged, naming the checkpoint's event and what
// the store holds; before, the projector applied the other history's events after its checkpoint.
func TestStoreBehindTheReadModel(t *testing.T) {
	emptied := func(t *testing.T, dir string, _ []byte) { writeFile(t, filepath.Join(dir, "events.db"), nil) }
	olderCopy := func(t *testing.T, dir string, old []byte) { writeFile(t, filepath.Join(dir, "events.db"), old) }
	nothing := func(func(...proto.Message) uint64) {}
	for _, tc := range []struct {
		name string
		// replace replaces the closed store file of dir; old is a copy of it taken after its first
		// event, when the read model was at position 1.
		replace func(t *testing.T, dir string, old []byte)
		// then writes to the replaced store.
		then func(write func(...proto.Message) uint64)
		// want is the error Run wraps: ErrStoreBehind when the replaced store ends before the
		// checkpoint, ErrHistoryDiverged when it has passed it.
		want error
	}{
		{"emptied", emptied, nothing, ErrStoreBehind},
		{"emptied then written to", emptied, func(write func(...proto.Message) uint64) {
			write(&eventsv1.TenantCreated{TenantId: "acme"}, hostnameCreated("new.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))
		}, ErrStoreBehind},
		{"older copy", olderCopy, nothing, ErrStoreBehind},
		{"older copy then written to", olderCopy, func(write func(...proto.Message) uint64) {
			write(hostnameCreated("new.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))
		}, ErrStoreBehind},
		{"older copy then written past the checkpoint", olderCopy, func(write func(...proto.Message) uint64) {
			write(hostnameCreated("new.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))
			for i := range 25 {
				write(hostnameCreated(fmt.Sprintf("n%d.example.com", i), eventsv1.MtlsMode_MTLS_MODE_OFF))
			}
		}, ErrHistoryDiverged},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			store := openStore(t, dir)
			write := tenantWriter(t, store, "acme")
			write(&eventsv1.TenantCreated{TenantId: "acme"})
			_ = store.Close()
			old, err := os.ReadFile(filepath.Join(dir, "events.db"))
			if err != nil {
				t.Fatal(err)
			}
			store = openStore(t, dir)
			write = tenantWriter(t, store, "acme")
			var last uint64
			for i := range 20 {
				last = write(hostnameCreated(fmt.Sprintf("h%d.example.com", i), eventsv1.MtlsMode_MTLS_MODE_OFF))
			}
			p := openProjector(t, dir, store)
			catchUp(t, ctx, p, last)
			_ = p.Close()
			_ = store.Close()

			tc.replace(t, dir, old)
			store = openStore(t, dir)
			defer store.Close()
			tc.then(tenantWriter(t, store, "acme"))
			end, err := store.LastPosition(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if past := uint64(end) >= last; past != (tc.want == ErrHistoryDiverged) {
				t.Fatalf("test setup: the replaced store ends at %d, the checkpoint is at %d", end, last)
			}

			p = openProjector(t, dir, store)
			defer p.Close()
			_, before, err := p.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			err = runFor(t, p, 10*time.Second)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Run = %v, want %v", err, tc.want)
			}
			for _, want := range []string{
				fmt.Sprintf("at position %d", last),
				fmt.Sprintf("last position is %d", end),
				"older backup",
				filepath.Join(dir, "projection.db"),
			} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Run = %q, want it to mention %q", err, want)
				}
			}
			if p.Ready() {
				t.Error("the projector reports Ready")
			}
			pos, after, err := p.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			if pos != last || len(after) != len(before) {
				t.Errorf("the read model changed: position %d with %d hostnames, was %d with %d", pos, len(after), last, len(before))
			}
			if _, cfg, _ := p.Lookup("new.example.com"); cfg != nil {
				t.Error("an event of the replaced store reached the read model")
			}
		})
	}
}

// rewoundStore is a store whose subscriptions start at the beginning whatever position they are
// asked for, as a store replaced while the projector follows it could deliver positions already
// applied.
type rewoundStore struct{ eventstore.Store }

// Subscribe implements eventstore.Store, from Start.
func (s rewoundStore) Subscribe(ctx context.Context, _ eventstore.Position, f eventstore.Filter) (eventstore.Subscription, error) {
	return s.Store.Subscribe(ctx, eventstore.Start, f)
}

// TestEventAtOrBeforeTheCheckpointStopsRun: a subscription that delivers an event at or before the
// read model's position (positions only grow in a store) stops Run with ErrStoreBehind instead of
// folding the event again and moving the checkpoint back.
func TestEventAtOrBeforeTheCheckpointStopsRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	write := tenantWriter(t, store, "acme")
	write(&eventsv1.TenantCreated{TenantId: "acme"})
	last := write(hostnameCreated("a.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))
	p := openProjector(t, dir, store)
	catchUp(t, ctx, p, last)
	_ = p.Close()
	write(hostnameCreated("b.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))

	p = openProjector(t, dir, rewoundStore{store})
	defer p.Close()
	err := runFor(t, p, 10*time.Second)
	if !errors.Is(err, ErrStoreBehind) {
		t.Fatalf("Run = %v, want ErrStoreBehind", err)
	}
	if want := fmt.Sprintf("has applied position %d, but the event store delivered the event at position 1", last); !strings.Contains(err.Error(), want) {
		t.Errorf("Run = %q, want it to say %q", err, want)
	}
	if pos := p.Position(); pos != last {
		t.Errorf("the checkpoint moved from %d to %d", last, pos)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
