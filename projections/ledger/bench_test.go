package ledger

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
)

// writeBenchExport writes an export of n events of one tenant (about 200 bytes of data each) with
// a checkpoint every 1000 events to a file in dir.
func writeBenchExport(b *testing.B, dir string, n int) (string, ed25519.PublicKey) {
	b.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer := NewSigner(priv)
	path := filepath.Join(dir, "export.ndjson")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	ew, err := NewExportWriter(f, "acme")
	if err != nil {
		b.Fatal(err)
	}
	rng := rangeFactory.NewEmptyRange(0)
	var chain [32]byte
	data := make([]byte, 200)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		_, _ = rand.Read(data)
		ev := eventstore.RecordedEvent{
			Type: "guestlist.events.v1.HostnameUpdated", Stream: "tenant-acme", Data: data,
			Metadata: eventstore.Metadata{Actor: "token:acme/ci", RequestID: "req-1234"},
			Time:     t0.Add(time.Duration(i)*time.Millisecond + 123), Revision: uint64(i), Position: eventstore.Position(2*i + 1),
		}
		if err := ew.WriteEvent(ev); err != nil {
			b.Fatal(err)
		}
		c := Canonical("acme", ev)
		chain = Chain(chain, c)
		lh := LeafHash(c)
		_ = rng.Append(lh[:], nil)
		if (i+1)%1000 == 0 || i == n-1 {
			root, _ := rootOf(rng)
			if err := ew.WriteCheckpoint(signer.Sign(Checkpoint{Tenant: "acme", Size: uint64(i + 1), Root: root, Chain: chain, Time: t0})); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := ew.Flush(); err != nil {
		b.Fatal(err)
	}
	return path, signer.PublicKey()
}

func BenchmarkVerifyExport1M(b *testing.B) {
	const n = 1_000_000
	path, pub := writeBenchExport(b, b.TempDir(), n)
	st, _ := os.Stat(path)
	b.SetBytes(st.Size())
	b.ResetTimer()
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		r := VerifyExport(f, pub)
		f.Close()
		if !r.Valid || r.Checked != n {
			b.Fatalf("%+v", r)
		}
	}
}
