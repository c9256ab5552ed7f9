package projector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/history"
	pt "guestlist.dev/projections/projector/projectortest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openStore(t testing.TB, dir string) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openProjector(t testing.TB, dir string, store eventstore.Store, opts ...Option) *Projector {
	t.Helper()
	p, err := Open(filepath.Join(dir, "projection.db"), store, append([]Option{WithLogger(quiet), WithBackoff(time.Millisecond, 20*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// running runs p in the background; stop cancels it and returns Run's error.
func running(p *Projector) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	return func() error {
		cancel()
		return <-errc
	}
}

// catchUp runs p until it has applied the event at pos, then stops it; an error of either fails
// the test.
func catchUp(t testing.TB, ctx context.Context, p *Projector, pos uint64) {
	t.Helper()
	stop := running(p)
	if err := p.WaitFor(ctx, pos); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// check compares p's read model with a fold from scratch of store, once p has caught up.
func check(t *testing.T, p *Projector, store eventstore.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want, last, err := pt.Expected(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitFor(ctx, last); err != nil {
		t.Fatalf("projector at %d did not reach %d: %v", p.Position(), last, err)
	}
	pos, configs, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if pos != last {
		t.Errorf("snapshot position %d, want %d", pos, last)
	}
	if d := pt.Diff(pt.Index(configs), want); d != "" {
		t.Fatalf("read model differs from a fold from scratch:\n%s", d)
	}
	for h, w := range want {
		_, got, err := p.Lookup(h)
		if err != nil || !proto.Equal(got, w) {
			t.Fatalf("Lookup(%s) = %v, %v; want %v", h, got, err, w)
		}
	}
}

// follower rebuilds a model from p's changes, starting from a snapshot, as an edge would.
type follower struct {
	mu    sync.Mutex
	model pt.Model
	err   error
	snaps int
}

func follow(ctx context.Context, p *Projector) *follower {
	f := &follower{}
	go func() {
		need := true
		for {
			if need {
				pos, configs, err := p.Snapshot()
				if err != nil {
					f.fail(err)
					return
				}
				f.mu.Lock()
				f.model = pt.Model{}
				f.model.Apply(pos, configs, nil)
				f.snaps++
				f.mu.Unlock()
				need = false
			}
			cs, err := p.Changes(ctx, f.position(), 10)
			if errors.Is(err, ErrCompacted) {
				need = true
				continue
			}
			if err != nil {
				if ctx.Err() == nil {
					f.fail(err)
				}
				return
			}
			f.mu.Lock()
			for _, c := range cs {
				if c.Position <= f.model.Position {
					f.err = fmt.Errorf("change at %d after position %d", c.Position, f.model.Position)
				}
				f.model.Apply(c.Position, c.Upserts, c.Removals)
			}
			f.mu.Unlock()
		}
	}()
	return f
}

func (f *follower) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *follower) position() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.model.Position
}

// await waits until the follower has every change up to pos and returns its model.
func (f *follower) await(t *testing.T, p *Projector, pos uint64) pt.Model {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.mu.Lock()
		m, err := f.model, f.err
		f.mu.Unlock()
		if err != nil {
			t.Fatalf("follower: %v", err)
		}
		if m.Position >= pos {
			return m
		}
		if p.Position() >= pos {
			p.mu.Lock()
			cs, _ := p.ring.after(m.Position, 1)
			p.mu.Unlock()
			if len(cs) == 0 || cs[0].Position > pos {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower stuck at %d, want %d", m.Position, pos)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestReadModelEqualsFoldFromScratch is the property: for random valid histories, applied in
// catch-up, live, or through a store whose subscriptions keep failing, the read model (and the
// model rebuilt from the published changes) equals a fold of every tenant's stream from scratch.
func TestReadModelEqualsFoldFromScratch(t *testing.T) {
	ctx := context.Background()
	for seed := range uint64(9) {
		mode := []string{"catch-up", "live", "flaky"}[seed%3]
		t.Run(fmt.Sprintf("seed=%d/%s", seed, mode), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			bs := openStore(t, dir)
			defer bs.Close()
			var store eventstore.Store = bs
			if mode == "flaky" {
				store = pt.NewFlaky(bs, seed, 25)
			}
			rnd := mrand.New(mrand.NewPCG(seed, 1))
			gen := pt.NewGen(seed, 1+int(seed%4), 12)
			events := 150 + rnd.IntN(100)
			write := func(n int) {
				for range n {
					if err := pt.WriteAll(ctx, bs, gen.Next()); err != nil {
						t.Fatal(err)
					}
				}
			}
			p := openProjector(t, dir, store, WithBatch(1+rnd.IntN(40), 0))
			defer p.Close()
			if mode != "live" {
				write(events)
			}
			f := follow(t.Context(), p)
			stop := running(p)
			if mode == "live" {
				write(events)
			}
			check(t, p, bs)
			for deadline := time.Now().Add(2 * time.Second); !p.Ready() && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			if !p.Ready() {
				t.Errorf("caught up but not ready: %+v", p.Stats())
			}
			want, last, _ := pt.Expected(ctx, bs)
			m := f.await(t, p, last)
			if d := pt.Diff(m.Configs, want); d != "" {
				t.Fatalf("model rebuilt from changes differs:\n%s", d)
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
		})
	}
}

// TestCrashAndRestart stops the projector at random moments (cancelling Run, closing its file
// under it, failing a commit), appends more, and restarts it: the read model always ends equal to
// the fold from scratch, and no event is applied twice (which the fold would refuse).
func TestCrashAndRestart(t *testing.T) {
	ctx := context.Background()
	for seed := range uint64(5) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			store := openStore(t, dir)
			defer store.Close()
			rnd := mrand.New(mrand.NewPCG(seed, 2))
			gen := pt.NewGen(seed+100, 3, 10)
			restarts := 0
			for round := range 8 {
				for range 20 + rnd.IntN(40) {
					if err := pt.WriteAll(ctx, store, gen.Next()); err != nil {
						t.Fatal(err)
					}
				}
				var fails int
				var hookMu sync.Mutex
				failAt := rnd.IntN(10)
				p := openProjector(t, dir, store, WithBatch(1+rnd.IntN(8), 0), withCommitHook(func(uint64) error {
					hookMu.Lock()
					defer hookMu.Unlock()
					fails++
					if fails == failAt {
						return errors.New("injected commit failure")
					}
					return nil
				}))
				errc := make(chan error, 1)
				rctx, cancel := context.WithCancel(ctx)
				defer cancel()
				go func() { errc <- p.Run(rctx) }()
				how := round % 3
				pt.Sleep(rnd, 15*time.Millisecond)
				var err error
				switch how {
				case 0: // cancel
					cancel()
					err = <-errc
				case 1: // the file goes away under the projector
					if cerr := p.db.Close(); cerr != nil {
						t.Fatal(cerr)
					}
					select {
					case err = <-errc: // it tried to commit
						t.Logf("round %d: Run returned %v", round, err)
					case <-time.After(100 * time.Millisecond): // it was idle, caught up
						cancel()
						err = <-errc
					}
					cancel()
					if err != nil && !errors.Is(err, bolt.ErrDatabaseNotOpen) {
						t.Fatalf("Run after the file closed: %v", err)
					}
					err = nil
				case 2: // runs to the end (surviving the injected failure), then stops
					check(t, p, store)
					cancel()
					err = <-errc
				}
				if err != nil {
					t.Fatalf("round %d: Run: %v", round, err)
				}
				hookMu.Lock()
				t.Logf("round %d: stopped by %s at %d after %d commits (failure injected at %d)", round, []string{"cancel", "closing the file", "cancel after catching up"}[how], p.Position(), fails, failAt)
				hookMu.Unlock()
				if err := p.Close(); err != nil && how != 1 {
					t.Fatal(err)
				}
				restarts++
			}
			p := openProjector(t, dir, store)
			defer p.Close()
			stop := running(p)
			check(t, p, store)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRevocationAcrossRestart: a revocation added before a restart and removed after it is
// applied exactly once each way.
func TestRevocationAcrossRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	write := tenantWriter(t, store, "acme")
	write(&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "ca1", CertificateDer: []byte{1, 2, 3}},
		&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://o", Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"ca1"}}, State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE})
	added := write(&eventsv1.RevocationAdded{RevocationId: "r1", CertificateAuthorityId: "ca1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "abc"}})

	p := openProjector(t, dir, store)
	stop := running(p)
	if err := p.WaitFor(ctx, added); err != nil {
		t.Fatal(err)
	}
	_, cfg, err := p.Lookup("pay.example.com")
	if err != nil || len(cfg.GetRevocations()) != 1 || cfg.GetVersion() != added {
		t.Fatalf("after add: %v, %v", cfg, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	removed := write(&eventsv1.RevocationRemoved{RevocationId: "r1", CertificateAuthorityId: "ca1"})
	p = openProjector(t, dir, store)
	defer p.Close()
	if p.Position() != added {
		t.Fatalf("checkpoint after reopen = %d, want %d", p.Position(), added)
	}
	stop = running(p)
	defer stop()
	if err := p.WaitFor(ctx, removed); err != nil {
		t.Fatal(err)
	}
	_, cfg, err = p.Lookup("pay.example.com")
	if err != nil || len(cfg.GetRevocations()) != 0 || cfg.GetVersion() != removed {
		t.Fatalf("after remove: %v, %v", cfg, err)
	}
	cs, err := p.Changes(ctx, added, 10)
	if err != nil || len(cs) != 1 || cs[0].Position != removed || len(cs[0].Upserts) != 1 {
		t.Fatalf("changes after %d = %+v, %v", added, cs, err)
	}
	check(t, p, store)
}

// TestStopsOnInconsistentEvent: an event the fold refuses stops Run with an error, after
// everything before it is committed; it is not skipped.
func TestStopsOnInconsistentEvent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	good, err := pt.Write(ctx, store, pt.Append{Stream: fold.TenantStream("acme"), Events: []proto.Message{
		&eventsv1.TenantCreated{TenantId: "acme"},
		&eventsv1.HostnameCreated{Hostname: "a.example.com", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pt.Write(ctx, store, pt.Append{Stream: fold.TenantStream("acme"), Events: []proto.Message{&eventsv1.HostnameUpdated{Hostname: "nope.example.com"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := pt.Write(ctx, store, pt.Append{Stream: fold.TenantStream("other"), Events: []proto.Message{&eventsv1.TenantCreated{TenantId: "other"}}}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	p, err := Open(filepath.Join(dir, "projection.db"), store, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = p.Run(rctx)
	if !errors.Is(err, fold.ErrInconsistent) {
		t.Fatalf("Run = %v, want fold.ErrInconsistent", err)
	}
	if p.Position() != uint64(good.Position) {
		t.Errorf("position = %d, want %d (everything before the bad event)", p.Position(), good.Position)
	}
	if _, cfg, _ := p.Lookup("a.example.com"); cfg == nil {
		t.Error("event before the bad one not applied")
	}
	if !strings.Contains(logs.String(), "cannot fold event") {
		t.Errorf("no error logged: %s", logs.String())
	}
	// Again from the checkpoint: same refusal, nothing skipped.
	if err := p.Run(rctx); !errors.Is(err, fold.ErrInconsistent) {
		t.Fatalf("second Run = %v", err)
	}
}

// TestLazyRebuildAfterRestart: a tenant whose earlier events were applied before a restart is
// rebuilt from its stream when its next event arrives.
func TestLazyRebuildAfterRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	gen := pt.NewGen(42, 2, 6)
	for range 80 {
		if err := pt.WriteAll(ctx, store, gen.Next()); err != nil {
			t.Fatal(err)
		}
	}
	p := openProjector(t, dir, store)
	stop := running(p)
	check(t, p, store)
	_ = stop()
	_ = p.Close()
	for range 80 {
		if err := pt.WriteAll(ctx, store, gen.Next()); err != nil {
			t.Fatal(err)
		}
	}
	p = openProjector(t, dir, store)
	defer p.Close()
	stop = running(p)
	check(t, p, store)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Run has returned: its tenant states can be looked at.
	if n := len(p.tenants); n == 0 || n > 2 {
		t.Errorf("%d tenant states in memory, want the 1 or 2 tenants written to since the restart", n)
	}
}

// withCommitHook makes fn run inside every commit's transaction; an error aborts the commit.
func withCommitHook(fn func(last uint64) error) Option {
	return func(o *options) { o.commitHook = fn }
}

// TestChangesRetention: the ring keeps the configured number of changes; older positions get
// ErrCompacted and are not Retained; Changes waits for new ones.
func TestChangesRetention(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	p := openProjector(t, dir, store, WithRetention(3, 0))
	defer p.Close()
	stop := running(p)
	defer stop()
	stream := fold.TenantStream("acme")
	var positions []uint64
	for i := range 6 {
		var ms []proto.Message
		if i == 0 {
			ms = append(ms, &eventsv1.TenantCreated{TenantId: "acme"})
		}
		ms = append(ms, &eventsv1.HostnameCreated{Hostname: fmt.Sprintf("h%d.example.com", i), State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE})
		res, err := pt.Write(ctx, store, pt.Append{Stream: stream, Events: ms})
		if err != nil {
			t.Fatal(err)
		}
		positions = append(positions, uint64(res.Position))
		if err := p.WaitFor(ctx, uint64(res.Position)); err != nil {
			t.Fatal(err)
		}
	}
	if p.Retains(positions[1]) || !p.Retains(positions[2]) {
		t.Errorf("Retains(%d) = %v, Retains(%d) = %v", positions[1], p.Retains(positions[1]), positions[2], p.Retains(positions[2]))
	}
	if _, err := p.Changes(ctx, positions[1], 10); !errors.Is(err, ErrCompacted) {
		t.Errorf("Changes from a compacted position: %v", err)
	}
	cs, err := p.Changes(ctx, positions[2], 10)
	if err != nil || len(cs) != 3 || cs[0].Position != positions[3] || cs[2].Position != positions[5] {
		t.Fatalf("Changes(%d) = %+v, %v", positions[2], cs, err)
	}
	// Waiting for the next change.
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := p.Changes(wctx, positions[5], 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Changes at the head = %v, want to wait", err)
	}
	if s := p.Stats(); s.Position != positions[5] || s.Changes != 3 || !s.Ready || s.Events != 7 {
		t.Errorf("stats = %+v", s)
	}
}

// TestLivePropagation: once caught up, an appended event reaches the read model and the changes
// promptly (one commit, no batching delay).
func TestLivePropagation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	p := openProjector(t, dir, store, WithBatch(0, time.Second)) // a long batch delay must not matter when live
	defer p.Close()
	stop := running(p)
	defer stop()
	stream := fold.TenantStream("acme")
	if _, err := pt.Write(ctx, store, pt.Append{Stream: stream, Events: []proto.Message{&eventsv1.TenantCreated{TenantId: "acme"}}}); err != nil {
		t.Fatal(err)
	}
	var worst time.Duration
	for i := range 20 {
		start := time.Now()
		res, err := pt.Write(ctx, store, pt.Append{Stream: stream, Events: []proto.Message{&eventsv1.HostnameCreated{Hostname: fmt.Sprintf("h%d.example.com", i)}}})
		if err != nil {
			t.Fatal(err)
		}
		cs, err := p.Changes(ctx, uint64(res.Position)-1, 1)
		if err != nil || len(cs) != 1 || cs[0].Position != uint64(res.Position) {
			t.Fatalf("changes = %+v, %v", cs, err)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("worst append -> change: %v", worst)
	if worst > 500*time.Millisecond {
		t.Errorf("worst append -> change took %v", worst)
	}
}

// TestOpenLockedAndRunTwice covers Open's and Run's refusals.
func TestOpenLockedAndRunTwice(t *testing.T) {
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	p := openProjector(t, dir, store)
	if _, err := Open(filepath.Join(dir, "projection.db"), store, WithLockTimeout(50*time.Millisecond)); err == nil {
		t.Fatal("second Open of a locked file succeeded")
	}
	stop := running(p)
	deadline := time.Now().Add(5 * time.Second)
	for !p.Ready() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := p.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Errorf("Run after Close = %v", err)
	}
	if err := p.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v", err)
	}
	if _, err := p.Changes(context.Background(), 0, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Changes after Close = %v", err)
	}
}

// TestKill9 kills a projector process (kill -9) at random moments while it catches up, and
// restarts it: the read model ends equal to the fold from scratch.
func TestKill9(t *testing.T) {
	if dir := os.Getenv("PROJECTOR_TEST_CHILD_DIR"); dir != "" {
		runChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("kills subprocesses")
	}
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	gen := pt.NewGen(7, 4, 40)
	for range 40 {
		var batch []pt.Append
		for range 25 {
			batch = append(batch, gen.Next()...)
		}
		if err := pt.WriteAll(ctx, store, batch); err != nil {
			t.Fatal(err)
		}
	}
	_, last, err := pt.Expected(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	rnd := mrand.New(mrand.NewPCG(7, 7))
	var seen []uint64
	for kill := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$")
		cmd.Env = append(os.Environ(), "PROJECTOR_TEST_CHILD_DIR="+dir, "PROJECTOR_TEST_BATCH="+strconv.Itoa(1+rnd.IntN(3)))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pt.Sleep(rnd, 80*time.Millisecond)
		time.Sleep(10 * time.Millisecond)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		// Peek at the checkpoint the killed process left.
		store := openStore(t, dir)
		p := openProjector(t, dir, store)
		seen = append(seen, p.Position())
		_ = p.Close()
		_ = store.Close()
		t.Logf("kill %d: checkpoint %d of %d", kill, seen[len(seen)-1], last)
	}
	store = openStore(t, dir)
	defer store.Close()
	p := openProjector(t, dir, store)
	defer p.Close()
	stop := running(p)
	check(t, p, store)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func runChild(dir string) {
	batch, _ := strconv.Atoi(os.Getenv("PROJECTOR_TEST_BATCH"))
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	p, err := Open(filepath.Join(dir, "projection.db"), store, WithLogger(quiet), WithBatch(batch, 0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := p.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// TestChangesFromAnotherProjectorsPosition: an edge holding the read model as of a position that
// is not a batch boundary of this projector (it got it from another projector of the same store,
// or from this one before its read model was rebuilt) catches up exactly with the changes after
// it: a hostname that existed at that position and was deleted in the same batch as it was
// created here is removed too.
func TestChangesFromAnotherProjectorsPosition(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	write := tenantWriter(t, store, "acme")
	active := eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE
	write(&eventsv1.TenantCreated{TenantId: "acme"})
	write(&eventsv1.HostnameCreated{Hostname: "kept.example.com", State: active})
	held := write(&eventsv1.HostnameCreated{Hostname: "gone.example.com", State: active})

	// Projector a, one event a transaction: the edge holds a's read model as of held.
	a := openProjector(t, filepath.Join(dir, "a"), store, WithBatch(1, 0))
	catchUp(t, ctx, a, held)
	pos, configs, err := a.Snapshot()
	_ = a.Close()
	if err != nil || pos != held {
		t.Fatalf("a's snapshot at %d, want %d: %v", pos, held, err)
	}
	edge := pt.Model{Position: pos, Configs: pt.Index(configs)}
	if _, ok := edge.Configs["gone.example.com"]; !ok {
		t.Fatal("the edge does not hold gone.example.com")
	}

	write(&eventsv1.HostnameDeleted{Hostname: "gone.example.com"})
	write(&eventsv1.HostnameCreated{Hostname: "new.example.com", State: active})

	// Projector b applies everything in one transaction, so held is inside its only batch.
	b := openProjector(t, filepath.Join(dir, "b"), store, WithBatch(1000, 10*time.Second))
	defer b.Close()
	stopB := running(b)
	defer stopB()
	check(t, b, store)
	if s := b.Stats(); s.Batches != 1 {
		t.Fatalf("b committed %d batches, want 1", s.Batches)
	}
	if !b.Retains(held) {
		t.Fatalf("b does not retain the changes after %d", held)
	}
	cs, err := b.Changes(ctx, held, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		edge.Apply(c.Position, c.Upserts, c.Removals)
	}
	want, _, err := pt.Expected(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	if d := pt.Diff(edge.Configs, want); d != "" {
		t.Fatalf("the edge resumed from %d differs from the read model:\n%s", held, d)
	}
}

// tenantWriter returns a function that appends events to tenant's stream and returns the
// position of the last.
func tenantWriter(t *testing.T, store eventstore.Store, tenant string) func(ms ...proto.Message) uint64 {
	return func(ms ...proto.Message) uint64 {
		t.Helper()
		res, err := pt.Write(context.Background(), store, pt.Append{Stream: fold.TenantStream(tenant), Events: ms})
		if err != nil {
			t.Fatal(err)
		}
		return uint64(res.Position)
	}
}

// TestSecondClaimantDoesNotReachTheEdges: should two tenants' histories both create one hostname
// (the control plane's reservations are there to prevent it), the edges keep the configuration of
// the tenant that had it first until that tenant deletes it, whatever the second one writes; in
// one batch or across batches alike.
func TestSecondClaimantDoesNotReachTheEdges(t *testing.T) {
	for _, tc := range []struct {
		name  string
		batch Option
	}{
		{"ok/one event a batch", WithBatch(1, 0)},
		{"ok/one batch", WithBatch(1000, time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			store := openStore(t, dir)
			defer store.Close()
			acme, evil := tenantWriter(t, store, "acme"), tenantWriter(t, store, "evil")
			active := eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE
			acme(&eventsv1.TenantCreated{TenantId: "acme"})
			evil(&eventsv1.TenantCreated{TenantId: "evil"})
			acme(&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://acme.example", State: active})
			evil(&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://evil.example", State: active})
			evil(&eventsv1.HostnameUpdated{Hostname: "pay.example.com", OriginUrl: "http://evil.example/2", State: active})
			pos := evil(&eventsv1.HostnameDeleted{Hostname: "pay.example.com"})
			evil(&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://evil.example/3", State: active})

			p := openProjector(t, dir, store, tc.batch)
			defer p.Close()
			stop := running(p)
			defer stop()
			lookup := func(at uint64) *configv1.HostnameConfig {
				t.Helper()
				if err := p.WaitFor(ctx, at); err != nil {
					t.Fatal(err)
				}
				_, cfg, err := p.Lookup("pay.example.com")
				if err != nil {
					t.Fatal(err)
				}
				return cfg
			}
			if cfg := lookup(pos + 1); cfg.GetTenantId() != "acme" || cfg.GetOriginUrl() != "http://acme.example" {
				t.Fatalf("the edges get tenant %q origin %q, want acme's", cfg.GetTenantId(), cfg.GetOriginUrl())
			}
			// Once acme deletes it, the hostname is gone; the second claimant's configuration
			// reaches the edges with its next change only.
			pos = acme(&eventsv1.HostnameDeleted{Hostname: "pay.example.com"})
			if cfg := lookup(pos); cfg != nil {
				t.Fatalf("after acme's deletion the edges get tenant %q origin %q, want nothing", cfg.GetTenantId(), cfg.GetOriginUrl())
			}
			pos = evil(&eventsv1.HostnameUpdated{Hostname: "pay.example.com", OriginUrl: "http://evil.example/4", State: active})
			if cfg := lookup(pos); cfg.GetTenantId() != "evil" || cfg.GetOriginUrl() != "http://evil.example/4" {
				t.Fatalf("the edges get tenant %q origin %q, want evil's latest", cfg.GetTenantId(), cfg.GetOriginUrl())
			}
		})
	}
}

// TestFormat1IsRebuilt: a read model of format 1 (before fe371d3) may hold the last writer's
// configuration of a hostname two tenants' histories claimed; opening it rebuilds it from the
// store, so it ends as a fresh read model does (the first claimant's) and not as that file had it.
func TestFormat1IsRebuilt(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	acme, evil := tenantWriter(t, store, "acme"), tenantWriter(t, store, "evil")
	active := eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE
	acme(&eventsv1.TenantCreated{TenantId: "acme"})
	evil(&eventsv1.TenantCreated{TenantId: "evil"})
	acme(&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://acme.example", State: active})
	last := evil(&eventsv1.HostnameCreated{Hostname: "pay.example.com", OriginUrl: "http://evil.example", State: active})

	p := openProjector(t, dir, store)
	catchUp(t, ctx, p, last)
	_ = p.Close()
	// What format 1 left: the last writer's configuration, and the checkpoint at the end.
	db, err := bolt.Open(filepath.Join(dir, "projection.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(&configv1.HostnameConfig{Hostname: "pay.example.com", TenantId: "evil", Active: true, OriginUrl: "http://evil.example", Version: last})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketMeta).Put(keyFormat, []byte{1}); err != nil {
			return err
		}
		return tx.Bucket(bucketHostnames).Put([]byte("pay.example.com"), data)
	}); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	p = openProjector(t, dir, store)
	defer p.Close()
	if pos := p.Position(); pos != 0 {
		t.Fatalf("a format-1 file opens at position %d, want 0 (rebuilt)", pos)
	}
	stop := running(p)
	defer stop()
	if err := p.WaitFor(ctx, last); err != nil {
		t.Fatal(err)
	}
	if _, cfg, err := p.Lookup("pay.example.com"); err != nil || cfg.GetTenantId() != "acme" || cfg.GetOriginUrl() != "http://acme.example" {
		t.Fatalf("after the rebuild the edges get %v (%v), want acme's configuration", cfg, err)
	}
}

// TestCheckpointMovedByAnOlderVersion: a version before keyCheckpointEvent, run on the file after
// a newer one (a rollback), moves the checkpoint and leaves the checkpoint's event as it was. The
// file then opens as one that does not know its checkpoint's event (no history token, rather than
// a token of another position, or refusing to open as corrupt), and the next commit records the
// event again. Before, Open failed: "corrupt checkpoint event: it is at position 2, the checkpoint
// at 3".
func TestCheckpointMovedByAnOlderVersion(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := openStore(t, dir)
	defer store.Close()
	acme := tenantWriter(t, store, "acme")
	acme(&eventsv1.TenantCreated{TenantId: "acme"})
	first := acme(hostnameCreated("a.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))
	p := openProjector(t, dir, store)
	catchUp(t, ctx, p, first)
	_ = p.Close()

	// The older version folds one more event: the configuration and the checkpoint, nothing else.
	second := acme(hostnameCreated("b.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))
	db, err := bolt.Open(filepath.Join(dir, "projection.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(&configv1.HostnameConfig{Hostname: "b.example.com", TenantId: "acme", Active: true, Version: second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketHostnames).Put([]byte("b.example.com"), data); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyCheckpoint, binary.BigEndian.AppendUint64(nil, second))
	}); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	p = openProjector(t, dir, store)
	defer p.Close()
	pos, token, _, err := p.SnapshotWithHistory()
	if err != nil || pos != second || token != nil {
		t.Fatalf("SnapshotWithHistory = position %d, token %x, %v; want %d, no token", pos, token, err, second)
	}
	stop := running(p)
	defer stop()
	third := acme(hostnameCreated("c.example.com", eventsv1.MtlsMode_MTLS_MODE_OFF))
	if err := p.WaitFor(ctx, third); err != nil {
		t.Fatal(err)
	}
	pos, token, _, err = p.SnapshotWithHistory()
	if err != nil || pos != third {
		t.Fatalf("SnapshotWithHistory = position %d, %v; want %d", pos, err, third)
	}
	ref, err := history.Decode(token)
	if err != nil || ref.Position != third {
		t.Fatalf("after the next commit the token is %+v (%v); want the event at %d", ref, err, third)
	}
}
