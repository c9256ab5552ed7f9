package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/ledger"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
)

// exportStream collects what ExportEvents sends, as the REST export writes it (buf: one bare
// message a line) and as it wrote it before (old: {"result":...} lines).
type exportStream struct {
	grpc.ServerStream
	ctx      context.Context
	buf, old bytes.Buffer
	msgs     []*guestlistv1.ExportEventsResponse
}

func (e *exportStream) Context() context.Context { return e.ctx }

func (e *exportStream) Send(m *guestlistv1.ExportEventsResponse) error {
	e.msgs = append(e.msgs, m)
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	fmt.Fprintf(&e.buf, "%s\n", b)
	fmt.Fprintf(&e.old, "{\"result\":%s}\n", b)
	return nil
}

func TestLedger(t *testing.T) {
	f := newFixture(t)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer := ledger.NewSigner(priv)
	l, err := ledger.Open(filepath.Join(t.TempDir(), "ledger.db"), f.store, signer, ledger.WithCheckpointEvery(2, time.Millisecond), ledger.WithQuiet(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		l.Close()
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if p, _ := l.Position(); uint64(p) >= f.up {
			if cps, _ := l.Checkpoints("acme"); len(cps) > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the ledger never caught up")
		}
	}
	svc := New(f.store, WithLedger(l, signer))

	resp, err := svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := f.store.ReadStream(context.Background(), fold.TenantStream("acme"), eventstore.Forwards, 0, 100)
	var chain [32]byte
	for i, ev := range evs {
		chain = ledger.Chain(chain, ledger.Canonical("acme", ev))
		if got := resp.GetEvents()[i].GetHash(); got != ledger.HashHex(chain) {
			t.Errorf("event %d: hash %q, want %s", i, got, ledger.HashHex(chain))
		}
	}

	v, err := svc.Verify(as(auth.RoleAuditor, "acme"), &guestlistv1.VerifyRequest{TenantId: "acme"})
	if err != nil || !v.GetValid() || v.GetCheckedEvents() != uint64(len(evs)) {
		t.Errorf("Verify: %v %v", v, err)
	}
	_, err = svc.Verify(admin, &guestlistv1.VerifyRequest{TenantId: "nobody"})
	wantCode(t, "Verify of an unknown tenant", err, codes.NotFound)
	_, err = svc.Verify(as(auth.RoleAuditor, "globex"), &guestlistv1.VerifyRequest{TenantId: "acme"})
	wantCode(t, "Verify of another tenant", err, codes.PermissionDenied)

	key, err := svc.GetCheckpointKey(as(auth.RoleAuditor, "acme"), &guestlistv1.GetCheckpointKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ledger.ParsePublicKeyPEM([]byte(key.GetPublicKeyPem()))
	if err != nil || !pub.Equal(signer.PublicKey()) {
		t.Fatalf("checkpoint key: %v", err)
	}

	// The export: the tenant first, then the events in order, each checkpoint right after the
	// event that completes its size, as ledger.WriteExport writes them.
	cps, err := l.Checkpoints("acme") // (the ledger may sign one more before the export)
	if err != nil {
		t.Fatal(err)
	}
	st := &exportStream{ctx: admin}
	if err := svc.ExportEvents(&guestlistv1.ExportEventsRequest{TenantId: "acme"}, st); err != nil {
		t.Fatal(err)
	}
	if got := st.msgs[0].GetTenantId(); got != "acme" {
		t.Fatalf("first message %v, want the tenant", st.msgs[0])
	}
	var nextRev uint64
	var sent []ledger.SignedCheckpoint
	for _, m := range st.msgs[1:] {
		switch {
		case m.GetEvent() != nil:
			if m.GetEvent().GetRevision() != nextRev {
				t.Fatalf("event at revision %d, want %d", m.GetEvent().GetRevision(), nextRev)
			}
			nextRev++
		case m.GetCheckpoint() != "":
			cp, err := ledger.VerifyCheckpoint(pub, ledger.SignedCheckpoint(m.GetCheckpoint()))
			if err != nil || cp.Size != nextRev {
				t.Fatalf("checkpoint of size %d after %d events: %v", cp.Size, nextRev, err)
			}
			sent = append(sent, ledger.SignedCheckpoint(m.GetCheckpoint()))
		default:
			t.Fatalf("message %v", m)
		}
	}
	if nextRev != uint64(len(evs)) || len(sent) < len(cps) || len(cps) == 0 || sent[len(cps)-1] != cps[len(cps)-1] {
		t.Fatalf("%d events (want %d), %d checkpoints (want at least the %d signed before)", nextRev, len(evs), len(sent), len(cps))
	}
	// As the REST export streams it, it verifies offline with the key alone, signatures included;
	// so does the form of earlier versions.
	if r := ledger.VerifyExport(bytes.NewReader(st.buf.Bytes()), pub); !r.Valid || r.Checked != uint64(len(evs)) {
		t.Errorf("VerifyExport: %+v\n%s", r, st.buf.String())
	}
	if r := ledger.VerifyExport(bytes.NewReader(st.old.Bytes()), pub); !r.Valid || r.Checked != uint64(len(evs)) {
		t.Errorf("VerifyExport of {\"result\":...} lines: %+v\n%s", r, st.old.String())
	}
	if r := ledger.VerifyExportTenant(bytes.NewReader(st.buf.Bytes()), pub, "acme"); !r.Valid || r.Checked != uint64(len(evs)) {
		t.Errorf("VerifyExportTenant: %+v\n%s", r, st.buf.String())
	}
	tampered := bytes.Replace(st.buf.Bytes(), []byte(`"actor":"admin"`), []byte(`"actor":"mallory"`), 1)
	if r := ledger.VerifyExport(bytes.NewReader(tampered), pub); r.Valid {
		t.Error("a tampered export verifies")
	}
	other, err := ledger.LoadOrCreateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if r := ledger.VerifyExport(bytes.NewReader(st.buf.Bytes()), other.PublicKey()); r.Valid {
		t.Error("the export verifies with another key")
	}
	err = svc.ExportEvents(&guestlistv1.ExportEventsRequest{TenantId: "acme"}, &exportStream{ctx: as(auth.RoleAuditor, "globex")})
	wantCode(t, "export of another tenant", err, codes.PermissionDenied)
	err = svc.ExportEvents(&guestlistv1.ExportEventsRequest{TenantId: "nobody"}, &exportStream{ctx: admin})
	wantCode(t, "export of an unknown tenant", err, codes.NotFound)
}
