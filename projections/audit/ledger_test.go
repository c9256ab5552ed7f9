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

// exportStream collects what ExportEvents sends, as the REST gateway writes it.
type exportStream struct {
	grpc.ServerStream
	ctx context.Context
	buf bytes.Buffer
}

func (e *exportStream) Context() context.Context { return e.ctx }

func (e *exportStream) Send(ev *guestlistv1.AuditEvent) error {
	b, err := protojson.Marshal(ev)
	if err != nil {
		return err
	}
	fmt.Fprintf(&e.buf, "{\"result\":%s}\n", b)
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

	// The export, as the REST gateway streams it, verifies offline with the key.
	st := &exportStream{ctx: admin}
	if err := svc.ExportEvents(&guestlistv1.ExportEventsRequest{TenantId: "acme"}, st); err != nil {
		t.Fatal(err)
	}
	if r := ledger.VerifyExportTenant(bytes.NewReader(st.buf.Bytes()), pub, "acme"); !r.Valid || r.Checked != uint64(len(evs)) {
		t.Errorf("VerifyExport: %+v\n%s", r, st.buf.String())
	}
	tampered := bytes.Replace(st.buf.Bytes(), []byte(`"actor":"admin"`), []byte(`"actor":"mallory"`), 1)
	if r := ledger.VerifyExportTenant(bytes.NewReader(tampered), pub, "acme"); r.Valid {
		t.Error("a tampered export verifies")
	}
	err = svc.ExportEvents(&guestlistv1.ExportEventsRequest{TenantId: "acme"}, &exportStream{ctx: as(auth.RoleAuditor, "globex")})
	wantCode(t, "export of another tenant", err, codes.PermissionDenied)
}
