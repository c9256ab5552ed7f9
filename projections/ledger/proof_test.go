package ledger

import (
	"context"
	"errors"
	"testing"
)

func TestProofs(t *testing.T) {
	e, evs, cps := history(t)
	ctx := context.Background()
	pub := e.signer.PublicKey()
	var all []Checkpoint
	for _, s := range cps {
		cp, err := VerifyCheckpoint(pub, s)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, cp)
	}
	for i := range all {
		for j := i; j < len(all); j++ {
			p, err := e.ledger.ConsistencyProof(ctx, "t0", all[i].Size, all[j].Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(all[i], all[j], p); err != nil {
				t.Fatalf("%d -> %d: %v", all[i].Size, all[j].Size, err)
			}
		}
	}
	old, cur := all[0], all[len(all)-1]
	p, err := e.ledger.ConsistencyProof(ctx, "t0", old.Size, cur.Size)
	if err != nil || len(p) == 0 {
		t.Fatalf("proof: %v", err)
	}
	altered := cloneProof(p)
	altered[0][3] ^= 1
	wrongSize := old
	wrongSize.Size++
	otherTenant := old
	otherTenant.Tenant = "t1"
	for name, f := range map[string]func() error{
		"altered node": func() error { return VerifyConsistency(old, cur, altered) },
		"wrong size":   func() error { return VerifyConsistency(wrongSize, cur, p) },
		"short proof":  func() error { return VerifyConsistency(old, cur, p[:len(p)-1]) },
		"other tenant": func() error { return VerifyConsistency(otherTenant, cur, p) },
		"reversed":     func() error { return VerifyConsistency(cur, old, p) },
		"altered root": func() error {
			c := cur
			c.Root = append([]byte(nil), c.Root...)
			c.Root[0] ^= 1
			return VerifyConsistency(old, c, p)
		},
	} {
		if err := f(); !errors.Is(err, ErrProof) {
			t.Errorf("consistency, %s: %v", name, err)
		}
	}

	for _, rev := range []uint64{0, 1, cur.Size / 2, cur.Size - 1} {
		ip, err := e.ledger.InclusionProof(ctx, "t0", rev, cur.Size)
		if err != nil {
			t.Fatal(err)
		}
		leaf := Canonical("t0", evs[rev])
		if err := VerifyInclusion(cur, leaf, rev, ip); err != nil {
			t.Fatalf("inclusion of %d: %v", rev, err)
		}
		if err := VerifyInclusion(cur, Canonical("t0", evs[(rev+1)%cur.Size]), rev, ip); !errors.Is(err, ErrProof) {
			t.Errorf("wrong leaf accepted: %v", err)
		}
		if err := VerifyInclusion(cur, leaf, rev+1, ip); !errors.Is(err, ErrProof) {
			t.Errorf("wrong index accepted: %v", err)
		}
		// A proof for another tree size does not verify against cur.
		if rev < old.Size {
			op, err := e.ledger.InclusionProof(ctx, "t0", rev, old.Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(cur, leaf, rev, op); !errors.Is(err, ErrProof) {
				t.Errorf("proof for size %d accepted at size %d: %v", old.Size, cur.Size, err)
			}
			if err := VerifyInclusion(old, leaf, rev, op); err != nil {
				t.Errorf("inclusion of %d at size %d: %v", rev, old.Size, err)
			}
		}
		if len(ip) > 0 {
			bad := cloneProof(ip)
			bad[len(bad)-1][0] ^= 1
			if err := VerifyInclusion(cur, leaf, rev, bad); !errors.Is(err, ErrProof) {
				t.Errorf("altered node accepted: %v", err)
			}
		}
	}
	if _, err := e.ledger.InclusionProof(ctx, "t0", cur.Size, cur.Size); err == nil {
		t.Error("inclusion proof out of range")
	}
	if _, err := e.ledger.ConsistencyProof(ctx, "t0", 1, uint64(len(evs))+5); err == nil {
		t.Error("consistency proof beyond the history")
	}
}

func TestMerkleMatchesReference(t *testing.T) {
	// The compact range, the recursive root and the proofs agree for every size up to 70.
	var leaves [][32]byte
	r := rangeFactory.NewEmptyRange(0)
	for n := 1; n <= 70; n++ {
		lh := LeafHash([]byte{byte(n)})
		leaves = append(leaves, lh)
		if err := r.Append(lh[:], nil); err != nil {
			t.Fatal(err)
		}
		root, _ := rootOf(r)
		if string(root) != string(RootFromLeafHashes(leaves)) {
			t.Fatalf("size %d: roots differ", n)
		}
		cp := Checkpoint{Tenant: "x", Size: uint64(n), Root: root}
		for i := range n {
			p, err := InclusionProofFromLeaves(leaves, uint64(i), uint64(n))
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(cp, []byte{byte(i + 1)}, uint64(i), p); err != nil {
				t.Fatalf("inclusion %d/%d: %v", i, n, err)
			}
			old := Checkpoint{Tenant: "x", Size: uint64(i), Root: RootFromLeafHashes(leaves[:i])}
			cpf, err := ConsistencyProofFromLeaves(leaves, uint64(i), uint64(n))
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(old, cp, cpf); err != nil {
				t.Fatalf("consistency %d->%d: %v", i, n, err)
			}
		}
	}
}

func cloneProof(p [][]byte) [][]byte {
	out := make([][]byte, len(p))
	for i, h := range p {
		out[i] = append([]byte(nil), h...)
	}
	return out
}
