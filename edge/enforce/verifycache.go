package enforce

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"guestlist.dev/edge/decision"
)

// maxVerified bounds the cache of verifications; beyond it the cache is cleared. An entry keeps
// a client's parsed certificates (a few KiB).
const maxVerified = 4096

// verifyCache keeps the latest verification of each client certificate chain, so that a client
// reconnecting without session resumption is not verified again (two ECDSA signature checks for
// a chain with an intermediate, about 15 % of the edge's CPU per full handshake). The key is the
// SHA-256 of the chain's DER certificates as the client sent them; an entry is used only when it
// holds for the hostname's current prepared configuration at the moment of the request
// (decision.Verification.Holds: same *decision.Hostname, no validity boundary crossed), so a
// configuration change or an expiry is never missed. Reusing the outcome for another connection
// is sound because the outcome depends only on the certificates, the configuration and the time,
// and each connection's handshake proved possession of the leaf's key.
type verifyCache struct {
	m   sync.Map // [32]byte -> *decision.Verification
	n   atomic.Int64
	max int64 // 0 means maxVerified
}

// verify returns a verification of peer for h that holds at now, from the cache or new.
func (c *verifyCache) verify(h *decision.Hostname, peer []*x509.Certificate, now time.Time) *decision.Verification {
	if len(peer) == 0 || len(peer) > decision.MaxPeerCertificates {
		return h.VerifyClient(peer, now)
	}
	key := chainKey(peer)
	if v, ok := c.m.Load(key); ok {
		if v := v.(*decision.Verification); v.Holds(h, now) {
			return v
		}
	}
	v := h.VerifyClient(peer, now)
	limit := c.max
	if limit == 0 {
		limit = maxVerified
	}
	if _, loaded := c.m.Swap(key, v); !loaded && c.n.Add(1) > limit {
		c.m.Clear()
		c.n.Store(0)
	}
	return v
}

// chainKey hashes the DER of each certificate with its length.
func chainKey(peer []*x509.Certificate) [32]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range peer {
		if c == nil {
			binary.BigEndian.PutUint32(n[:], 0xffffffff)
			h.Write(n[:])
			continue
		}
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
