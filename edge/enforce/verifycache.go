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

const (
	// maxVerified bounds the number of cached verifications.
	maxVerified = 4096
	// maxVerifiedBytes bounds what the cached verifications keep reachable, as retainedSize
	// counts it. A usual entry (a leaf and an intermediate) counts about 7 KiB.
	maxVerifiedBytes = 32 << 20
	// maxVerifiedEntryBytes: a chain counted larger is verified on each connection, not cached.
	// Real client chains are far smaller; a chain padded toward crypto/tls's 256 KiB certificate
	// message would take the room of dozens of real clients.
	maxVerifiedEntryBytes = 64 << 10
)

// verifyCache keeps the latest successful verification of each client certificate chain, so that
// a client reconnecting without session resumption is not verified again (two ECDSA signature
// checks for a chain with an intermediate, about 15 % of the edge's CPU per full handshake). The
// key is the SHA-256 of the chain's DER certificates as the client sent them; an entry is used
// only when it holds for the hostname's current prepared configuration at the moment of the
// request (decision.Verification.Holds: same *decision.Hostname, no validity boundary crossed), so
// a configuration change or an expiry is never missed. Reusing the outcome for another connection
// is sound because the outcome depends only on the certificates, the configuration and the time,
// and each connection's handshake proved possession of the leaf's key.
//
// Failed verifications are not cached: a decision.Verification keeps the client's certificates
// (and a crypto/x509 error keeps the one it is about), so any client, unauthenticated, could make
// the cache hold what it likes (a different self-signed chain padded to 256 KiB on each
// connection: about 1 GiB at 4,096 entries), and push real clients' entries out. Verifying a
// failing chain again costs no more than the handshake that brought it; the connection keeps its
// own verification for its requests (connState). So only a chain that verified, one a hostname's
// CA issued, takes room here.
//
// The cache is bounded by entries and by retained bytes (retainedSize), and evicts one entry at a
// time with the CLOCK algorithm (second chance): a hit only sets the entry's used flag, without
// locking, and eviction passes over entries used since it last looked, clearing their flag. So a
// flood of new chains (a tenant minting certificates from its own CA) evicts mostly its own
// entries, not those of clients that keep reconnecting.
type verifyCache struct {
	m sync.Map // [32]byte -> *verifyEntry; written under mu, read without it

	mu    sync.Mutex
	ring  []*verifyEntry // every entry, in no order; entry.slot is its index
	hand  int            // the CLOCK hand: the next entry eviction looks at
	bytes int64          // retained bytes of the entries

	max      int   // entries; 0 means maxVerified
	maxBytes int64 // retained bytes; 0 means maxVerifiedBytes
}

// verifyEntry is one cached verification. Only used changes once it is in the map.
type verifyEntry struct {
	key  [32]byte
	v    *decision.Verification
	size int64
	slot int // index in ring, under mu
	used atomic.Bool
}

// verify returns a verification of peer for h that holds at now, from the cache or new.
func (c *verifyCache) verify(h *decision.Hostname, peer []*x509.Certificate, now time.Time) *decision.Verification {
	if len(peer) == 0 || len(peer) > decision.MaxPeerCertificates {
		return h.VerifyClient(peer, now)
	}
	key := chainKey(peer)
	if e, ok := c.m.Load(key); ok {
		if e := e.(*verifyEntry); e.v.Holds(h, now) {
			if !e.used.Load() {
				e.used.Store(true)
			}
			return e.v
		}
	}
	v := h.VerifyClient(peer, now)
	if v.Verified() {
		c.add(key, v, retainedSize(peer))
	}
	return v
}

// add caches v under key, in place of the entry there, evicting others to stay within bounds.
func (c *verifyCache) add(key [32]byte, v *decision.Verification, size int64) {
	maxEntries, maxBytes := c.max, c.maxBytes
	if maxEntries <= 0 {
		maxEntries = maxVerified
	}
	if maxBytes <= 0 {
		maxBytes = maxVerifiedBytes
	}
	if size > min(maxBytes, maxVerifiedEntryBytes) {
		return
	}
	e := &verifyEntry{key: key, v: v, size: size}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m.Load(key); ok {
		o := old.(*verifyEntry)
		e.slot = o.slot
		c.ring[e.slot] = e
		c.bytes += size - o.size
	} else {
		e.slot = len(c.ring)
		c.ring = append(c.ring, e)
		c.bytes += size
	}
	c.m.Store(key, e)
	for (len(c.ring) > maxEntries || c.bytes > maxBytes) && len(c.ring) > 1 {
		c.evictOne(e)
	}
}

// evictOne removes one entry other than keep (len(c.ring) > 1): the first at or after the hand
// not used since the hand last passed it, clearing the used flags it passes. Hits may set flags
// again meanwhile, so after two turns it takes the next entry whatever its flag. Under mu.
func (c *verifyCache) evictOne(keep *verifyEntry) {
	for step := 0; ; step++ {
		if c.hand >= len(c.ring) {
			c.hand = 0
		}
		e := c.ring[c.hand]
		if e == keep || (e.used.Swap(false) && step < 2*len(c.ring)) {
			c.hand++
			continue
		}
		c.m.Delete(e.key)
		c.bytes -= e.size
		last := len(c.ring) - 1
		moved := c.ring[last]
		c.ring[e.slot], moved.slot = moved, e.slot // the hand looks at moved next
		c.ring[last] = nil
		c.ring = c.ring[:last]
		return
	}
}

// stats returns the number of cached verifications and the bytes they retain.
func (c *verifyCache) stats() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ring), c.bytes
}

// The parts of retainedSize's estimate that are not the certificates' DER.
const (
	verifyEntryOverhead = 2 << 10 // the entry, the Verification, its chain and policy input
	certOverhead        = 1 << 10 // a parsed x509.Certificate and its fixed fields
	certItemOverhead    = 192     // each extension, name, address, policy... parsed from it
	certURIOverhead     = 256     // each URI name (a *url.URL)
)

// retainedSize estimates what caching a verification of peer keeps reachable. crypto/tls parses
// the client's certificates from one copy of its certificate message, and each certificate's Raw
// keeps that copy reachable: each backing array is counted once, from the first certificate in it
// to its end (cap), which covers padding outside the certificates (TLS 1.3 entry extensions).
// Parsing adds a structure for each item of a certificate, which a certificate made of many tiny
// extensions or names would multiply, so items are counted too. (Measured with Go 1.26, the
// estimate is at least the heap an entry keeps: about 6 KiB for a leaf and an intermediate, and
// for chains padded with a large extension or made of thousands of extensions or names.)
func retainedSize(peer []*x509.Certificate) int64 {
	size := int64(verifyEntryOverhead)
	var ends [decision.MaxPeerCertificates]*byte
	var caps [decision.MaxPeerCertificates]int
	n := 0
	for _, c := range peer {
		if c == nil {
			continue
		}
		items := len(c.Extensions) + len(c.UnhandledCriticalExtensions) + len(c.ExtKeyUsage) + len(c.UnknownExtKeyUsage) +
			len(c.OCSPServer) + len(c.IssuingCertificateURL) + len(c.CRLDistributionPoints) +
			len(c.DNSNames) + len(c.EmailAddresses) + len(c.IPAddresses) +
			len(c.PermittedDNSDomains) + len(c.ExcludedDNSDomains) + len(c.PermittedIPRanges) + len(c.ExcludedIPRanges) +
			len(c.PermittedEmailAddresses) + len(c.ExcludedEmailAddresses) + len(c.PermittedURIDomains) + len(c.ExcludedURIDomains) +
			len(c.PolicyIdentifiers) + len(c.Policies) + len(c.PolicyMappings) + len(c.Subject.Names) + len(c.Issuer.Names)
		size += certOverhead + int64(items)*certItemOverhead + int64(len(c.URIs))*certURIOverhead
		if cap(c.Raw) == 0 {
			continue
		}
		full := c.Raw[:cap(c.Raw)]
		end := &full[len(full)-1]
		i := 0
		for i < n && ends[i] != end {
			i++
		}
		if i == n {
			if n == len(ends) {
				continue // not reached: peer has at most MaxPeerCertificates certificates
			}
			ends[i] = end
			n++
		}
		caps[i] = max(caps[i], cap(c.Raw))
	}
	for _, c := range caps[:n] {
		size += int64(c)
	}
	return size
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
