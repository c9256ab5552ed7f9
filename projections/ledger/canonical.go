// Package ledger makes each tenant's history tamper-evident. It follows the event store and keeps,
// per tenant (the stream "tenant-<id>", revisions 0..n-1):
//
//   - a hash chain: Chain(prev, Canonical(event)), prev of revision 0 being 32 zero bytes; the value
//     after each event is what the audit API shows as the event's hash (lower-case hex);
//   - a Merkle log with RFC 6962 hashing whose leaves are the events' canonical bytes in revision
//     order, so that auditors can get inclusion and consistency proofs;
//   - signed checkpoints: Ed25519 signatures over (tenant, tree size, root hash, chain hash, time).
//
// VerifyStore checks a store against the ledger; VerifyExport checks an export (NDJSON, see
// WriteExport) offline with only the checkpoint public key.
package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"guestlist.dev/services/eventstore"
)

// CanonicalVersion is the version byte of the canonical encoding produced by Canonical.
const CanonicalVersion = 1

// canonicalMagic starts every canonical encoding, followed by CanonicalVersion.
const canonicalMagic = "guestlist-event"

// Canonical returns the canonical bytes of ev as an event of tenant tenantID: the leaf of the
// tenant's Merkle log and the input of its hash chain. The encoding (version 1) is, in order:
//
//	magic     the 15 ASCII bytes "guestlist-event"
//	version   1 byte, CanonicalVersion (1)
//	tenant    4-byte big-endian length, then the tenant id's bytes
//	revision  8 bytes, big-endian, the event's revision in the tenant's stream
//	position  8 bytes, big-endian, the event's global position
//	type      4-byte big-endian length, then the event type's bytes
//	time      8 bytes, big-endian two's complement int64, UTC Unix nanoseconds
//	actor     4-byte big-endian length, then bytes (metadata actor)
//	request   4-byte big-endian length, then bytes (metadata request id)
//	data      4-byte big-endian length, then the event's payload bytes exactly as stored
//
// Nothing follows. The encoding is deterministic: equal inputs give equal bytes, and distinct inputs
// give distinct bytes. A change of layout gets a new version byte.
func Canonical(tenantID string, ev eventstore.RecordedEvent) []byte {
	return appendCanonical(nil, tenantID, uint64(ev.Revision), uint64(ev.Position), ev.Type,
		ev.Time.UnixNano(), ev.Metadata.Actor, ev.Metadata.RequestID, ev.Data)
}

// CheckTime reports whether t is a time the canonical encoding holds exactly: Unix nanoseconds in
// an int64, from 1677-09-21T00:12:43.145224192Z to 2262-04-11T23:47:16.854775807Z. Any other time
// wraps around (time.Time.UnixNano) to one in that range, 2^64 ns (about 584.5 years) away: an
// export or a proof showing such a time would show a time other than the one the hash chain and
// the checkpoints commit to. Event times are the store's, so every genuine event's time is in range.
func CheckTime(t time.Time) error {
	if !time.Unix(0, t.UnixNano()).Equal(t) {
		return fmt.Errorf("%s is outside the times the canonical encoding holds (Unix nanoseconds in an int64, years 1677 to 2262)", t.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// canonicalSize is the size of the encoding of the given variable fields' total length.
func canonicalSize(variable int) int { return len(canonicalMagic) + 1 + 5*4 + 3*8 + variable }

func appendCanonical(dst []byte, tenant string, revision, position uint64, typ string, unixNano int64, actor, requestID string, data []byte) []byte {
	if dst == nil {
		dst = make([]byte, 0, canonicalSize(len(tenant)+len(typ)+len(actor)+len(requestID)+len(data)))
	}
	dst = append(dst, canonicalMagic...)
	dst = append(dst, CanonicalVersion)
	dst = appendField(dst, tenant)
	dst = binary.BigEndian.AppendUint64(dst, revision)
	dst = binary.BigEndian.AppendUint64(dst, position)
	dst = appendField(dst, typ)
	dst = binary.BigEndian.AppendUint64(dst, uint64(unixNano))
	dst = appendField(dst, actor)
	dst = appendField(dst, requestID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(data)))
	return append(dst, data...)
}

func appendField(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

// Chain returns the hash chain value after an event: SHA-256(prev || canonical). For revision 0,
// prev is 32 zero bytes.
func Chain(prev [32]byte, canonical []byte) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write(canonical)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// HashHex returns a chain value as the audit API shows it: lower-case hex.
func HashHex(h [32]byte) string { return hex.EncodeToString(h[:]) }
