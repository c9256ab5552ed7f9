package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"

	"guestlist.dev/projections/ledger"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/auth"
)

// runLedger opens a real ledger over f.store, signing a checkpoint every 2 events, and runs it for
// the test.
func runLedger(t *testing.T, f *fixture) (*ledger.Ledger, *ledger.Signer) {
	t.Helper()
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
	return l, signer
}

// waitForCheckpoint waits until the ledger has signed a checkpoint of tenant at size and returns it.
func waitForCheckpoint(t *testing.T, l *ledger.Ledger, tenant string, size uint64) ledger.SignedCheckpoint {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if sc, err := l.Latest(tenant); err == nil {
			if cp, _ := ledger.ParseCheckpoint(sc); cp.Size == size {
				return sc
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of %s at size %d", tenant, size)
		}
	}
}

// forge returns sc with its root's first byte changed, signed by signer (nil: keeping the old,
// now wrong, signature).
func forge(t *testing.T, sc ledger.SignedCheckpoint, signer *ledger.Signer) ledger.SignedCheckpoint {
	t.Helper()
	cp, err := ledger.ParseCheckpoint(sc)
	if err != nil {
		t.Fatal(err)
	}
	cp.Root = append([]byte(nil), cp.Root...)
	cp.Root[0] ^= 1
	if signer != nil {
		return signer.Sign(cp)
	}
	_, sig, _ := strings.Cut(string(sc), "\n\n")
	return ledger.SignedCheckpoint(string(cp.Body()) + "\n" + sig)
}

func TestProofs(t *testing.T) {
	f := newFixture(t)
	l, signer := runLedger(t, f)
	pub := signer.PublicKey()
	svc := New(f.store, WithLedger(l, signer))
	auditor := as(auth.RoleAuditor, "acme")

	old := waitForCheckpoint(t, l, "acme", 7)
	oldCP, _ := ledger.ParseCheckpoint(old)
	// More changes, then a newer checkpoint.
	appendTo(t, f.store, "acme",
		&eventsv1.RevocationAdded{CertificateAuthorityId: "devices", RevocationId: "r2", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "0a"}},
		&eventsv1.PolicyDeleted{PolicyId: "p"},
		&eventsv1.RevocationRemoved{CertificateAuthorityId: "devices", RevocationId: "r2"})
	latest := waitForCheckpoint(t, l, "acme", 10)

	// Consistency: from the old checkpoint to the latest (to_size 0), and to the old one itself.
	cp, err := svc.GetConsistencyProof(auditor, &guestlistv1.GetConsistencyProofRequest{TenantId: "acme", FromSize: oldCP.Size})
	if err != nil {
		t.Fatal(err)
	}
	if cp.GetCheckpoint() != string(latest) || cp.GetFromSize() != 7 || cp.GetToSize() != 10 || len(cp.GetHashes()) == 0 {
		t.Fatalf("consistency proof %v", cp)
	}
	if newer, err := VerifyConsistencyProof(pub, old, cp); err != nil || newer.Size != 10 {
		t.Fatalf("VerifyConsistencyProof: %v %v", newer, err)
	}
	same, err := svc.GetConsistencyProof(auditor, &guestlistv1.GetConsistencyProofRequest{TenantId: "acme", FromSize: 7, ToSize: 7})
	if err != nil || same.GetCheckpoint() != string(old) {
		t.Fatalf("consistency proof at the same size: %v %v", same, err)
	}
	if _, err := VerifyConsistencyProof(pub, old, same); err != nil {
		t.Errorf("VerifyConsistencyProof at the same size: %v", err)
	}
	// Every checkpoint the ledger signed is extended by the latest one.
	all, _ := l.Checkpoints("acme")
	for _, sc := range all {
		c, _ := ledger.ParseCheckpoint(sc)
		p, err := svc.GetConsistencyProof(auditor, &guestlistv1.GetConsistencyProofRequest{TenantId: "acme", FromSize: c.Size})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyConsistencyProof(pub, sc, p); err != nil {
			t.Errorf("from size %d: %v", c.Size, err)
		}
	}

	// What must not verify: forged old checkpoints, and a proof altered on its way.
	other, err := ledger.LoadOrCreateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, forged := range map[string]ledger.SignedCheckpoint{
		"an altered root, not re-signed":          forge(t, old, nil),
		"an altered root, re-signed by other key": forge(t, old, other),
	} {
		if _, err := VerifyConsistencyProof(pub, forged, cp); !errors.Is(err, ledger.ErrBadSignature) {
			t.Errorf("%s: %v, want a bad signature", name, err)
		}
	}
	// Signed with the right key but another root (a fork): the proof fails.
	if _, err := VerifyConsistencyProof(pub, forge(t, old, signer), cp); !errors.Is(err, ledger.ErrProof) {
		t.Errorf("a forked old checkpoint: %v, want ErrProof", err)
	}
	tamper := func(edit func(p *guestlistv1.ConsistencyProof)) *guestlistv1.ConsistencyProof {
		p := proto.Clone(cp).(*guestlistv1.ConsistencyProof)
		edit(p)
		return p
	}
	for name, p := range map[string]*guestlistv1.ConsistencyProof{
		"a flipped hash byte":    tamper(func(p *guestlistv1.ConsistencyProof) { p.Hashes[0][5] ^= 0x80 }),
		"a dropped hash":         tamper(func(p *guestlistv1.ConsistencyProof) { p.Hashes = p.Hashes[1:] }),
		"another from size":      tamper(func(p *guestlistv1.ConsistencyProof) { p.FromSize = 6 }),
		"a checkpoint re-signed": tamper(func(p *guestlistv1.ConsistencyProof) { p.Checkpoint = string(forge(t, latest, other)) }),
	} {
		if _, err := VerifyConsistencyProof(pub, old, p); err == nil {
			t.Errorf("a consistency proof with %s verifies", name)
		}
	}
	if _, err := VerifyConsistencyProof(other.PublicKey(), old, cp); err == nil {
		t.Error("verifies with another key")
	}

	// Sizes without a signed checkpoint are refused, naming those signed.
	signed := map[uint64]bool{}
	for _, sc := range all {
		c, _ := ledger.ParseCheckpoint(sc)
		signed[c.Size] = true
	}
	unsigned := uint64(1)
	for signed[unsigned] {
		unsigned++
	}
	if unsigned >= 7 {
		t.Fatalf("every size signed: %v", signed)
	}
	_, err = svc.GetConsistencyProof(auditor, &guestlistv1.GetConsistencyProofRequest{TenantId: "acme", FromSize: 0, ToSize: unsigned})
	wantCode(t, "to_size without a checkpoint", err, codes.FailedPrecondition)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "10") || !strings.Contains(msg, "7") {
		t.Errorf("to_size %d: %q does not name the sizes signed", unsigned, msg)
	}
	_, err = svc.GetConsistencyProof(auditor, &guestlistv1.GetConsistencyProofRequest{TenantId: "acme", FromSize: 11})
	wantCode(t, "from_size beyond the latest", err, codes.FailedPrecondition)

	// Inclusion of every event in the latest checkpoint, and in the old one.
	for rev := uint64(0); rev < 10; rev++ {
		ip, err := svc.GetInclusionProof(auditor, &guestlistv1.GetInclusionProofRequest{TenantId: "acme", Revision: rev})
		if err != nil {
			t.Fatal(err)
		}
		if ip.GetSize() != 10 || ip.GetCheckpoint() != string(latest) || ip.GetEvent().GetRevision() != rev {
			t.Fatalf("inclusion proof of %d: %v", rev, ip)
		}
		if _, err := VerifyInclusionProof(pub, "acme", ip); err != nil {
			t.Errorf("revision %d: %v", rev, err)
		}
	}
	ip, err := svc.GetInclusionProof(auditor, &guestlistv1.GetInclusionProofRequest{TenantId: "acme", Revision: 3, Size: 7})
	if err != nil || ip.GetCheckpoint() != string(old) {
		t.Fatalf("inclusion at size 7: %v %v", ip, err)
	}
	if _, err := VerifyInclusionProof(pub, "acme", ip); err != nil {
		t.Errorf("inclusion at size 7: %v", err)
	}
	itamper := func(edit func(p *guestlistv1.InclusionProof)) *guestlistv1.InclusionProof {
		p := proto.Clone(ip).(*guestlistv1.InclusionProof)
		edit(p)
		return p
	}
	decoded, _ := anypb.New(&eventsv1.HostnameCreated{Hostname: "pay.acme.example"})
	for name, p := range map[string]*guestlistv1.InclusionProof{
		"the actor":          itamper(func(p *guestlistv1.InclusionProof) { p.Event.Actor = "mallory" }),
		"the time":           itamper(func(p *guestlistv1.InclusionProof) { p.Event.Time.Nanos++ }),
		"the position":       itamper(func(p *guestlistv1.InclusionProof) { p.Event.Position++ }),
		"the type":           itamper(func(p *guestlistv1.InclusionProof) { p.Event.Type = "guestlist.events.v1.HostnameDeleted" }),
		"a byte of the data": itamper(func(p *guestlistv1.InclusionProof) { p.Event.Data = mustAny(t, flipLast(t, p.Event.Data)) }),
		"the decoded data":   itamper(func(p *guestlistv1.InclusionProof) { p.Event.Data = decoded }),
		"no event":           itamper(func(p *guestlistv1.InclusionProof) { p.Event = nil }),
		"the revision":       itamper(func(p *guestlistv1.InclusionProof) { p.Revision, p.Event.Revision = 4, 4 }),
		"a hash":             itamper(func(p *guestlistv1.InclusionProof) { p.Hashes[1][0] ^= 1 }),
		"a dropped hash":     itamper(func(p *guestlistv1.InclusionProof) { p.Hashes = p.Hashes[:len(p.Hashes)-1] }),
		"the checkpoint":     itamper(func(p *guestlistv1.InclusionProof) { p.Checkpoint = string(forge(t, old, nil)) }),
		"the event's time": itamper(func(p *guestlistv1.InclusionProof) {
			p.Event.Time = timestamppb.New(p.Event.Time.AsTime().Add(time.Second))
		}),
		// 2^64 ns (about 584.5 years) later: time.Time.UnixNano wraps around to the genuine
		// time's, so the leaf was the genuine one while verify --revision printed the year 2610.
		"the time by 2^64 ns": itamper(func(p *guestlistv1.InclusionProof) {
			p.Event.Time = &timestamppb.Timestamp{Seconds: p.Event.Time.Seconds + 18446744073, Nanos: p.Event.Time.Nanos + 709551616}
			if p.Event.Time.Nanos >= 1e9 {
				p.Event.Time.Seconds, p.Event.Time.Nanos = p.Event.Time.Seconds+1, p.Event.Time.Nanos-1e9
			}
			if p.Event.Time.AsTime().UnixNano() != ip.Event.Time.AsTime().UnixNano() {
				t.Fatal("the shifted time does not wrap to the genuine one: the case shows nothing")
			}
		}),
	} {
		if _, err := VerifyInclusionProof(pub, "acme", p); err == nil {
			t.Errorf("an inclusion proof with %s altered verifies", name)
		}
	}
	if _, err := VerifyInclusionProof(pub, "globex", ip); err == nil {
		t.Error("the inclusion proof verifies for another tenant")
	}
	_, err = svc.GetInclusionProof(auditor, &guestlistv1.GetInclusionProofRequest{TenantId: "acme", Revision: 8, Size: 7})
	wantCode(t, "revision beyond the checkpoint", err, codes.FailedPrecondition)
	_, err = svc.GetInclusionProof(auditor, &guestlistv1.GetInclusionProofRequest{TenantId: "acme", Revision: 0, Size: unsigned})
	wantCode(t, "size without a checkpoint", err, codes.FailedPrecondition)

	// Authorization, unknown tenants, no ledger.
	_, err = svc.GetConsistencyProof(as(auth.RoleAuditor, "globex"), &guestlistv1.GetConsistencyProofRequest{TenantId: "acme"})
	wantCode(t, "consistency of another tenant", err, codes.PermissionDenied)
	_, err = svc.GetInclusionProof(as(auth.RoleAuditor, "globex"), &guestlistv1.GetInclusionProofRequest{TenantId: "acme"})
	wantCode(t, "inclusion of another tenant", err, codes.PermissionDenied)
	_, err = svc.GetConsistencyProof(admin, &guestlistv1.GetConsistencyProofRequest{TenantId: "nobody"})
	wantCode(t, "consistency of an unknown tenant", err, codes.NotFound)
	_, err = svc.GetInclusionProof(admin, &guestlistv1.GetInclusionProofRequest{TenantId: "nobody"})
	wantCode(t, "inclusion of an unknown tenant", err, codes.NotFound)
	_, err = New(f.store).GetInclusionProof(admin, &guestlistv1.GetInclusionProofRequest{TenantId: "acme"})
	wantCode(t, "inclusion without a ledger", err, codes.Unimplemented)
	_, err = New(f.store).GetConsistencyProof(admin, &guestlistv1.GetConsistencyProofRequest{TenantId: "acme"})
	wantCode(t, "consistency without a ledger", err, codes.Unimplemented)
}

func flipLast(t *testing.T, a *anypb.Any) []byte {
	t.Helper()
	var b wrapperspb.BytesValue
	if err := a.UnmarshalTo(&b); err != nil || len(b.Value) == 0 {
		t.Fatalf("data %v: %v", a, err)
	}
	out := append([]byte(nil), b.Value...)
	out[len(out)-1] ^= 1
	return out
}

func mustAny(t *testing.T, b []byte) *anypb.Any {
	t.Helper()
	a, err := anypb.New(wrapperspb.Bytes(b))
	if err != nil {
		t.Fatal(err)
	}
	return a
}
