package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/bits"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"guestlist.dev/projections/fold"
	"guestlist.dev/services/eventstore"
)

// ErrProof is wrapped by the errors of VerifyInclusion and VerifyConsistency.
var ErrProof = errors.New("ledger: proof does not verify")

// hasher is the RFC 6962 hasher of every tenant log.
var hasher = rfc6962.DefaultHasher

// rangeFactory makes compact ranges with RFC 6962 hashing.
var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

// LeafHash returns the RFC 6962 leaf hash of an event's canonical bytes: SHA-256(0x00 || canonical).
func LeafHash(canonical []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte{rfc6962.RFC6962LeafHashPrefix})
	h.Write(canonical)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// rootOf returns the Merkle root of a compact range starting at 0 (the empty root for none).
func rootOf(r *compact.Range) ([]byte, error) {
	if r.End() == 0 {
		return hasher.EmptyRoot(), nil
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		return nil, fmt.Errorf("ledger: merkle root: %w", err)
	}
	return root, nil
}

// subtreeHash returns the RFC 6962 Merkle tree hash of leaf hashes hs (not empty).
func subtreeHash(hs [][32]byte) []byte {
	if len(hs) == 1 {
		return append([]byte(nil), hs[0][:]...)
	}
	k := 1 << (bits.Len(uint(len(hs)-1)) - 1) // largest power of two < len(hs)
	return hasher.HashChildren(subtreeHash(hs[:k]), subtreeHash(hs[k:]))
}

// RootFromLeafHashes returns the RFC 6962 Merkle root over leaf hashes hs.
func RootFromLeafHashes(hs [][32]byte) []byte {
	if len(hs) == 0 {
		return hasher.EmptyRoot()
	}
	return subtreeHash(hs)
}

// buildProof fills in the hashes of nodes from the leaf hashes of the tree.
func buildProof(nodes proof.Nodes, leaves [][32]byte) ([][]byte, error) {
	hs := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		b, e := id.Coverage()
		if e > uint64(len(leaves)) || b >= e {
			return nil, fmt.Errorf("ledger: proof node %+v outside %d leaves", id, len(leaves))
		}
		hs[i] = subtreeHash(leaves[b:e])
	}
	out, err := nodes.Rehash(hs, hasher.HashChildren)
	if err != nil {
		return nil, fmt.Errorf("ledger: build proof: %w", err)
	}
	return out, nil
}

// InclusionProofFromLeaves returns the RFC 6962 inclusion proof of leaf index in the tree over the
// first size of leaves.
func InclusionProofFromLeaves(leaves [][32]byte, index, size uint64) ([][]byte, error) {
	if size > uint64(len(leaves)) {
		return nil, fmt.Errorf("ledger: inclusion proof at size %d: only %d events", size, len(leaves))
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("ledger: inclusion proof: %w", err)
	}
	return buildProof(nodes, leaves[:size])
}

// ConsistencyProofFromLeaves returns the RFC 6962 consistency proof between the trees over the
// first oldSize and newSize of leaves.
func ConsistencyProofFromLeaves(leaves [][32]byte, oldSize, newSize uint64) ([][]byte, error) {
	if newSize > uint64(len(leaves)) {
		return nil, fmt.Errorf("ledger: consistency proof to size %d: only %d events", newSize, len(leaves))
	}
	nodes, err := proof.Consistency(oldSize, newSize)
	if err != nil {
		return nil, fmt.Errorf("ledger: consistency proof: %w", err)
	}
	return buildProof(nodes, leaves[:newSize])
}

// readLeaves returns the leaf hashes of the first n events of tenant's stream in store.
func readLeaves(ctx context.Context, store eventstore.Store, tenant string, n uint64) ([][32]byte, error) {
	leaves := make([][32]byte, 0, n)
	stream := fold.TenantStream(tenant)
	for uint64(len(leaves)) < n {
		page := min(n-uint64(len(leaves)), 1000)
		evs, err := store.ReadStream(ctx, stream, eventstore.Forwards, uint64(len(leaves)), int(page))
		if err != nil {
			return nil, fmt.Errorf("ledger: read %s from revision %d: %w", stream, len(leaves), err)
		}
		if len(evs) == 0 {
			return nil, fmt.Errorf("ledger: %s has %d events, want %d", stream, len(leaves), n)
		}
		for _, ev := range evs {
			if ev.Revision != uint64(len(leaves)) {
				return nil, fmt.Errorf("ledger: %s: revision %d where %d was expected", stream, ev.Revision, len(leaves))
			}
			leaves = append(leaves, LeafHash(Canonical(tenant, ev)))
		}
	}
	return leaves[:n], nil
}

// InclusionProof returns the inclusion proof of tenant's event at revision in the tree of size
// size, computed from the events in the store.
func (l *Ledger) InclusionProof(ctx context.Context, tenant string, revision, size uint64) ([][]byte, error) {
	if revision >= size {
		return nil, fmt.Errorf("ledger: inclusion proof of revision %d at size %d: out of range", revision, size)
	}
	leaves, err := readLeaves(ctx, l.store, tenant, size)
	if err != nil {
		return nil, err
	}
	return InclusionProofFromLeaves(leaves, revision, size)
}

// ConsistencyProof returns the proof that tenant's tree of size newSize extends the one of size
// oldSize, computed from the events in the store.
func (l *Ledger) ConsistencyProof(ctx context.Context, tenant string, oldSize, newSize uint64) ([][]byte, error) {
	if oldSize > newSize {
		return nil, fmt.Errorf("ledger: consistency proof from size %d to %d: sizes out of order", oldSize, newSize)
	}
	leaves, err := readLeaves(ctx, l.store, tenant, newSize)
	if err != nil {
		return nil, err
	}
	return ConsistencyProofFromLeaves(leaves, oldSize, newSize)
}

// VerifyInclusion checks that canonical (the canonical bytes of an event) is the leaf at revision
// of the log that cp commits to. cp should come from VerifyCheckpoint.
func VerifyInclusion(cp Checkpoint, canonical []byte, revision uint64, p [][]byte) error {
	lh := LeafHash(canonical)
	if err := proof.VerifyInclusion(hasher, revision, cp.Size, lh[:], p, cp.Root); err != nil {
		return fmt.Errorf("%w: inclusion of revision %d at size %d of %s: %v", ErrProof, revision, cp.Size, cp.Tenant, err)
	}
	return nil
}

// VerifyConsistency checks that the log of checkpoint newer extends the one of older (same tenant,
// older.Size <= newer.Size). Both should come from VerifyCheckpoint.
func VerifyConsistency(older, newer Checkpoint, p [][]byte) error {
	if older.Tenant != newer.Tenant {
		return fmt.Errorf("%w: checkpoints of tenants %q and %q", ErrProof, older.Tenant, newer.Tenant)
	}
	if older.Size > newer.Size {
		return fmt.Errorf("%w: old size %d > new size %d", ErrProof, older.Size, newer.Size)
	}
	if older.Size == newer.Size && !bytes.Equal(older.Root, newer.Root) {
		return fmt.Errorf("%w: two roots at size %d of %s", ErrProof, older.Size, older.Tenant)
	}
	if err := proof.VerifyConsistency(hasher, older.Size, newer.Size, p, older.Root, newer.Root); err != nil {
		return fmt.Errorf("%w: consistency of %s from size %d to %d: %v", ErrProof, older.Tenant, older.Size, newer.Size, err)
	}
	return nil
}
