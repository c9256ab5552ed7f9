package ledger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"guestlist.dev/projections/fold"
	"guestlist.dev/services/eventstore"
)

// Result is the outcome of a verification.
type Result struct {
	// Valid is true when every event matches the hash chain and every signed checkpoint.
	Valid bool
	// Checked is how many events were checked.
	Checked uint64
	// FirstBadPosition is the global position of the first event that does not match (0: none, or
	// not known, as for events removed from the end).
	FirstBadPosition uint64
	// Problem says what is wrong, in words (empty when Valid).
	Problem string
	// Tenant, FirstPosition and LastPosition say what VerifyExport checked: the tenant whose
	// history the export is, and the positions of the first and the last event checked (0 when
	// none). VerifyExport takes the tenant from the export, so a genuine export of another tenant
	// verifies too: the auditor checks that it is the one they meant, or uses VerifyExportTenant.
	Tenant                      string
	FirstPosition, LastPosition uint64
	// CheckpointTime is, for a valid export, when the signed checkpoint that covers its last event
	// was made (VerifyExport only). A file cut short at an earlier checkpoint, or an old export
	// served again, is a genuine history of that time and verifies: the time is what tells the
	// auditor how recent the history they verified is.
	CheckpointTime time.Time
}

func bad(checked, pos uint64, format string, args ...any) Result {
	return Result{Checked: checked, FirstBadPosition: pos, Problem: fmt.Sprintf(format, args...)}
}

// verifiedCheckpoints verifies every signed checkpoint and returns them in the order given, which
// must be increasing size.
func verifiedCheckpoints(pub ed25519.PublicKey, tenant string, signed []SignedCheckpoint) ([]Checkpoint, error) {
	out := make([]Checkpoint, 0, len(signed))
	for i, s := range signed {
		cp, err := VerifyCheckpoint(pub, s)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %d: %w", i+1, err)
		}
		if cp.Tenant != tenant {
			return nil, fmt.Errorf("checkpoint %d is for tenant %q", i+1, cp.Tenant)
		}
		if len(out) > 0 && cp.Size <= out[len(out)-1].Size {
			return nil, fmt.Errorf("checkpoint %d: size %d after size %d", i+1, cp.Size, out[len(out)-1].Size)
		}
		out = append(out, cp)
	}
	return out, nil
}

var positionInError = regexp.MustCompile(`position (\d+)`)

// VerifyStore recomputes tenant's hash chain and Merkle roots from the events in store and compares
// them with the chain hashes ledger recorded after every event and with every signed checkpoint of
// ledger (whose signatures must verify with pub). Events the ledger has not recorded yet are fine;
// fewer events than the ledger recorded are reported as events removed. For a changed, removed or
// inserted event, FirstBadPosition is the position of the first event whose chain hash no longer
// matches; revision gaps, duplicates and disorder are named as such.
func VerifyStore(ctx context.Context, store eventstore.Store, ledger *Ledger, pub ed25519.PublicKey, tenant string) Result {
	signed, err := ledger.Checkpoints(tenant)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return bad(0, 0, "read checkpoints: %v", err)
	}
	cps, err := verifiedCheckpoints(pub, tenant, signed)
	if err != nil {
		return bad(0, 0, "%v", err)
	}
	recorded, err := ledger.Size(tenant)
	if err != nil {
		return bad(0, 0, "%v", err)
	}
	stream := fold.TenantStream(tenant)
	var (
		n          uint64
		chain      [32]byte
		rng        = rangeFactory.NewEmptyRange(0)
		lastPos    uint64
		windowPos  uint64 // position of the first event after the last matching checkpoint
		buf        []byte
		next       int
		ledgerPage [][32]byte
		ledgerFrom uint64
	)
	const page = 1000
	for {
		evs, err := store.ReadStream(ctx, stream, eventstore.Forwards, n, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			evs, err = nil, nil
		}
		if err != nil {
			var pos uint64
			if m := positionInError.FindStringSubmatch(err.Error()); m != nil {
				pos, _ = strconv.ParseUint(m[1], 10, 64)
			}
			return bad(n, pos, "store cannot read %s from revision %d: %v", stream, n, err)
		}
		if len(evs) == 0 {
			break
		}
		for i := range evs {
			ev := &evs[i]
			switch {
			case ev.Revision > n:
				return bad(n, uint64(ev.Position), "revision gap: revision %d at position %d where %d was expected (events removed)", ev.Revision, ev.Position, n)
			case ev.Revision < n:
				return bad(n, uint64(ev.Position), "duplicate or out-of-order revision %d at position %d where %d was expected", ev.Revision, ev.Position, n)
			case uint64(ev.Position) <= lastPos:
				return bad(n, uint64(ev.Position), "out of order: revision %d at position %d after position %d", ev.Revision, ev.Position, lastPos)
			}
			lastPos = uint64(ev.Position)
			if windowPos == 0 {
				windowPos = lastPos
			}
			buf = appendCanonical(buf[:0], tenant, ev.Revision, uint64(ev.Position), ev.Type, ev.Time.UnixNano(), ev.Metadata.Actor, ev.Metadata.RequestID, ev.Data)
			chain = Chain(chain, buf)
			lh := LeafHash(buf)
			if err := rng.Append(lh[:], nil); err != nil {
				return bad(n, 0, "merkle append: %v", err)
			}
			if n < recorded {
				if n >= ledgerFrom+uint64(len(ledgerPage)) {
					ledgerFrom = n
					if ledgerPage, err = ledger.chainHashes(tenant, n, 4096); err != nil {
						return bad(n, 0, "%v", err)
					}
				}
				if k := n - ledgerFrom; k >= uint64(len(ledgerPage)) || ledgerPage[k] != chain {
					return bad(n, lastPos, "event at revision %d (position %d) does not match the recorded hash chain: it was changed, or an event before it was inserted or removed", n, lastPos)
				}
			}
			n++
			for next < len(cps) && cps[next].Size == n {
				cp := cps[next]
				root, err := rootOf(rng)
				if err != nil {
					return bad(n, 0, "%v", err)
				}
				if !bytes.Equal(root, cp.Root) || chain != cp.Chain {
					return bad(n, windowPos, "events up to revision %d do not match the signed checkpoint at size %d", n-1, cp.Size)
				}
				next++
				windowPos = 0
			}
		}
	}
	if n < recorded {
		return bad(n, 0, "events removed: the store has %d events of %s, the ledger recorded %d", n, stream, recorded)
	}
	if next < len(cps) {
		return bad(n, 0, "events removed: the store has %d events of %s, a signed checkpoint covers %d", n, stream, cps[next].Size)
	}
	return Result{Valid: true, Checked: n}
}
