package ledger

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/projector/projectortest"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
)

type env struct {
	t         *testing.T
	dir       string
	storePath string
	store     *boltstore.Store
	signer    *Signer
	ledger    *Ledger
	cancel    context.CancelFunc
	done      chan error
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, storePath: filepath.Join(dir, "events.db")}
	var err error
	if e.store, err = boltstore.Open(e.storePath); err != nil {
		t.Fatal(err)
	}
	if e.signer, err = LoadOrCreateKey(filepath.Join(dir, "keys")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.stop()
		if e.ledger != nil {
			_ = e.ledger.Close()
		}
		if e.store != nil {
			_ = e.store.Close()
		}
	})
	return e
}

// start opens the ledger (if needed) and runs it.
func (e *env) start(opts ...Option) {
	e.t.Helper()
	if e.ledger == nil {
		l, err := Open(filepath.Join(e.dir, "ledger.db"), e.store, e.signer, append([]Option{WithQuiet(20 * time.Millisecond)}, opts...)...)
		if err != nil {
			e.t.Fatal(err)
		}
		e.ledger = l
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan error, 1)
	go func() { e.done <- e.ledger.Run(ctx) }()
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	if err := <-e.done; err != nil {
		e.t.Errorf("Run: %v", err)
	}
	e.cancel = nil
}

// generate appends n generator steps and returns the tenants' stream sizes.
func (e *env) generate(seed uint64, steps int) map[string]uint64 {
	e.t.Helper()
	g := projectortest.NewGen(seed, 3, 20)
	for range steps {
		if err := projectortest.WriteAll(context.Background(), e.store, g.Next()); err != nil {
			e.t.Fatal(err)
		}
	}
	return e.sizes()
}

func (e *env) sizes() map[string]uint64 {
	e.t.Helper()
	out := map[string]uint64{}
	for _, tn := range []string{"t0", "t1", "t2"} {
		evs, err := e.store.ReadStream(context.Background(), fold.TenantStream(tn), eventstore.Backwards, eventstore.End, 1)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		out[tn] = evs[0].Revision + 1
	}
	return out
}

// waitCheckpointed waits until every tenant's latest checkpoint covers its whole stream.
func (e *env) waitCheckpointed(sizes map[string]uint64) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for tn, n := range sizes {
		for {
			s, err := e.ledger.Latest(tn)
			if err == nil {
				cp, err := VerifyCheckpoint(e.signer.PublicKey(), s)
				if err != nil {
					e.t.Fatal(err)
				}
				if cp.Size == n {
					break
				}
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("tenant %s: no checkpoint at size %d (latest %v)", tn, n, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestLedgerFollowsAndVerifies(t *testing.T) {
	e := newEnv(t)
	e.start(WithCheckpointEvery(25, time.Hour))
	sizes := e.generate(1, 150)
	e.waitCheckpointed(sizes)
	pub := e.signer.PublicKey()
	for tn, n := range sizes {
		r := VerifyStore(context.Background(), e.store, e.ledger, pub, tn)
		if !r.Valid || r.Checked != n {
			t.Fatalf("%s: %+v, want valid with %d checked", tn, r, n)
		}
		cps, err := e.ledger.Checkpoints(tn)
		if err != nil {
			t.Fatal(err)
		}
		if len(cps) < 2 {
			t.Errorf("%s: %d checkpoints for %d events", tn, len(cps), n)
		}
		// The chain hashes match an independent computation.
		evs, err := e.store.ReadStream(context.Background(), fold.TenantStream(tn), eventstore.Forwards, 0, int(n))
		if err != nil {
			t.Fatal(err)
		}
		var chain [32]byte
		var leaves [][32]byte
		for _, ev := range evs {
			c := Canonical(tn, ev)
			chain = Chain(chain, c)
			leaves = append(leaves, LeafHash(c))
			got, err := e.ledger.ChainHash(tn, ev.Revision)
			if err != nil || got != chain {
				t.Fatalf("%s: chain hash at %d: %x %v, want %x", tn, ev.Revision, got, err, chain)
			}
		}
		latest, _ := e.ledger.Latest(tn)
		cp, _ := VerifyCheckpoint(pub, latest)
		if string(cp.Root) != string(RootFromLeafHashes(leaves)) || cp.Chain != chain {
			t.Fatalf("%s: latest checkpoint does not match the events", tn)
		}
	}
}

func TestLedgerRestartContinuesChain(t *testing.T) {
	e := newEnv(t)
	e.start()
	sizes := e.generate(2, 60)
	e.waitCheckpointed(sizes)
	e.stop()
	if err := e.ledger.Close(); err != nil {
		t.Fatal(err)
	}
	e.ledger = nil
	// Events written while the ledger is down, then a restart.
	sizes = e.generate(3, 60)
	e.start()
	e.waitCheckpointed(sizes)
	more := e.generate(4, 40)
	e.waitCheckpointed(more)
	for tn, n := range more {
		r := VerifyStore(context.Background(), e.store, e.ledger, e.signer.PublicKey(), tn)
		if !r.Valid || r.Checked != n {
			t.Fatalf("%s: %+v", tn, r)
		}
	}
	pos, err := e.ledger.Position()
	if err != nil {
		t.Fatal(err)
	}
	last, _ := e.store.LastPosition(context.Background())
	if pos != last {
		t.Errorf("ledger position %d, store %d", pos, last)
	}
}

func TestLoadOrCreateKeyReuses(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !a.PublicKey().Equal(b.PublicKey()) {
		t.Fatal("key not reused")
	}
	pub, err := ParsePublicKeyPEM([]byte(a.PublicKeyPEM()))
	if err != nil || !pub.Equal(a.PublicKey()) {
		t.Fatalf("ParsePublicKeyPEM: %v", err)
	}
	cp := Checkpoint{Tenant: "acme", Size: 3, Root: make([]byte, 32), Time: time.Unix(1, 5).UTC()}
	s := a.Sign(cp)
	got, err := VerifyCheckpoint(pub, s)
	if err != nil || got.Size != 3 || got.Tenant != "acme" || !got.Time.Equal(cp.Time) {
		t.Fatalf("VerifyCheckpoint: %+v %v", got, err)
	}
	other, _ := LoadOrCreateKey(t.TempDir())
	_, err = VerifyCheckpoint(other.PublicKey(), s)
	if !errors.Is(err, ErrBadSignature) {
		t.Fatalf("other key: %v", err)
	}
	// The wrong key is named as the likely cause, with both key ids.
	if msg := err.Error(); !strings.Contains(msg, hex.EncodeToString(keyID(pub))) || !strings.Contains(msg, hex.EncodeToString(keyID(other.PublicKey()))) ||
		!strings.Contains(msg, "/v1/checkpointKey") {
		t.Errorf("other key: %q does not name both key ids and where the right key is", msg)
	}
	// A body changed under our own signature is not blamed on the key.
	forged := SignedCheckpoint(strings.Replace(string(s), "acme", "acmf", 1))
	_, err = VerifyCheckpoint(pub, forged)
	if !errors.Is(err, ErrBadSignature) || strings.Contains(err.Error(), "key id") {
		t.Errorf("changed body: %v, want a bad signature not blamed on the key", err)
	}
}

// TestLoadOrCreateKeyConcurrent: processes sharing an empty key directory and starting together
// end up with one key (as api processes sharing --checkpoint-key-dir do), and the public key file
// is that key's.
func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	for round := range 20 {
		dir := filepath.Join(t.TempDir(), "keys")
		const n = 8
		signers := make([]*Signer, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				signers[i], errs[i] = LoadOrCreateKey(dir)
			}()
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("round %d, caller %d: %v", round, i, errs[i])
			}
			if !signers[i].PublicKey().Equal(signers[0].PublicKey()) {
				t.Fatalf("round %d: callers 0 and %d got different keys", round, i)
			}
		}
		b, err := os.ReadFile(filepath.Join(dir, PublicKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		if pub, err := ParsePublicKeyPEM(b); err != nil || !pub.Equal(signers[0].PublicKey()) {
			t.Fatalf("round %d: %s does not hold the key in use (%v)", round, PublicKeyFile, err)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 2 {
			t.Fatalf("round %d: %d files in the key directory, want 2 (no temporary files left)", round, len(entries))
		}
	}
}
