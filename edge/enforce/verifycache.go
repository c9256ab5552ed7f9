package enforce

import (
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"guestlist.dev/edge/decision"
)

const (
	// maxVerified bounds the number of cached verifications.
	maxVerified = 4096
	// maxVerifiedBytes bounds what the cached verifications keep reachable: retainedSize counts
	// at least the heap an entry keeps (besides the prepared configuration it was made for). A
	// usual entry (a P-256 leaf and an intermediate) counts about 13 KiB (4 KiB of them the
	// hostname's CA, which the entry usually shares with the hostname) and keeps about 6.5 KiB,
	// so about 3,700 of them fit.
	maxVerifiedBytes = 48 << 20
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
		c.add(key, v, retainedSize(peer, v))
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

// certKeyOverhead is at least what a parsed certificate's public key structure, its numbers'
// big.Int structures and its serial number's big.Int take (the numbers themselves are counted from
// their encoding).
const certKeyOverhead = 512

// retainedSize estimates, as an upper bound, what caching v, a verification of peer, keeps
// reachable on the heap:
//
//   - the arrays the certificates' DER is in: crypto/tls parses the client's certificates from one
//     copy of its certificate message, and each certificate's Raw (with the Raw* fields, the
//     extensions' values, key identifiers, addresses) keeps that copy reachable. Each backing
//     array is counted once, from the first certificate in it to its end (cap), which covers
//     padding outside the certificates (TLS 1.3 entry extensions);
//   - what parsing made (certSize): the x509.Certificate, every string copied out of the DER
//     (name attributes, SANs, URLs, name constraints), object identifiers (8 bytes per arc,
//     against 1 or 2 in DER), the public key's numbers, and the slices of items (extensions,
//     names...) with their room for growth, which a certificate made of many tiny extensions or
//     names would multiply;
//   - what the verification adds (decision.Verification): the leaf's subject and issuer in RFC
//     2253 form (Cert), which can be twice the names' length (escapes, and "#" and hex for an
//     attribute of a type without a name), its serial number and fingerprint, the policy input's
//     URIs formatted again, and the verified chain. The policy input's other strings are the
//     parsed certificate's. The hostname's CA that ends the chain is parsed from the DER of the
//     hostname's configuration, which the entry does not count; its parsed form is counted
//     (certSize), as the entry may be all that keeps it: decision parses a hostname's CAs again
//     once they have been idle and collected, and entries made before hold the earlier copy.
//
// A long name thus takes about three times its length (DER, parsed string, Subject in Cert), a
// long URI up to five. Every allocation is counted with its size class's rounding bounded above
// (heapBytes). Measured with Go 1.26 (TestVerifyCacheEstimateIsAnUpperBound), the estimate is 1.25
// to 2 times the heap an entry keeps, for usual chains and for chains made of long names and
// URIs, many names, extensions or URIs, long object identifiers, RSA and Ed25519 keys.
func retainedSize(peer []*x509.Certificate, v *decision.Verification) int64 {
	size := heapBytes(int(unsafe.Sizeof(verifyEntry{}))) + heapBytes(int(unsafe.Sizeof(decision.Verification{}))) + heapBytes(8*cap(peer))
	vc := v.Cert()
	size += heapBytes(len(vc.Subject)) + heapBytes(len(vc.Issuer)) + heapBytes(len(vc.SerialNumber)) + heapBytes(len(vc.FingerprintSHA256))
	size += heapBytes(8 * cap(v.Chain()))
	if len(peer) > 0 && peer[0] != nil && len(peer[0].URIs) > 0 { // policy.NewCertInput formats each (u.String())
		size += heapBytes(16 * len(peer[0].URIs))
		for _, u := range peer[0].URIs {
			size += heapBytes(len(u.String()))
		}
	}
	for _, c := range v.Chain() {
		if c != nil && !slices.Contains(peer, c) {
			size += certSize(c) // a CA of the hostname (its DER is the configuration's)
		}
	}
	var ends [decision.MaxPeerCertificates]*byte
	var caps [decision.MaxPeerCertificates]int
	n := 0
	for _, c := range peer {
		if c == nil {
			continue
		}
		size += certSize(c)
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
		size += heapBytes(c)
	}
	return size
}

// oidSAN is the subject alternative name extension's identifier.
var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// certSize bounds what a parsed certificate keeps on the heap besides its DER (see retainedSize).
// Each slice parsing built counts its backing array (cap, as append grew it), then what its
// elements point to.
func certSize(c *x509.Certificate) int64 {
	size := heapBytes(int(unsafe.Sizeof(*c))) + certKeyOverhead
	if c.SerialNumber != nil {
		size += heapBytes(8 * len(c.SerialNumber.Bits()))
	}
	// The key's numbers or point are copied from its encoding (some key types keep two forms); a
	// signature whose bit string has unused bits is copied shifted.
	size += 2*heapBytes(len(c.RawSubjectPublicKeyInfo)) + heapBytes(len(c.Signature))
	size += nameSize(&c.Subject) + nameSize(&c.Issuer)
	size += sliceSize(c.Extensions)
	for _, e := range c.Extensions {
		size += oidSize(e.Id)
		if len(c.URIs) > 0 && e.Id.Equal(oidSAN) {
			// url.Parse keeps the string of each URI, copied from the extension, and may add an
			// unescaped copy of some of its parts (each no longer than the part): at most twice
			// the extension, in at most six allocations per URI (counted below).
			size += 2 * heapBytes(len(e.Value))
		}
	}
	size += sliceSize(c.UnhandledCriticalExtensions) // the extensions' identifiers
	size += sliceSize(c.ExtKeyUsage) + sliceSize(c.UnknownExtKeyUsage) + sliceSize(c.PolicyIdentifiers) + sliceSize(c.Policies) + sliceSize(c.PolicyMappings)
	for _, oid := range c.UnknownExtKeyUsage {
		size += oidSize(oid)
	}
	for _, oid := range c.PolicyIdentifiers {
		size += oidSize(oid)
	}
	size += sliceSize(c.IPAddresses) + sliceSize(c.PermittedIPRanges) + sliceSize(c.ExcludedIPRanges)
	size += int64(len(c.PermittedIPRanges)+len(c.ExcludedIPRanges)) * heapBytes(int(unsafe.Sizeof(net.IPNet{})))
	for _, list := range [...][]string{c.DNSNames, c.EmailAddresses, c.OCSPServer, c.IssuingCertificateURL, c.CRLDistributionPoints,
		c.PermittedDNSDomains, c.ExcludedDNSDomains, c.PermittedEmailAddresses, c.ExcludedEmailAddresses, c.PermittedURIDomains, c.ExcludedURIDomains} {
		size += stringsSize(list)
	}
	size += sliceSize(c.URIs)
	size += int64(len(c.URIs)) * (heapBytes(int(unsafe.Sizeof(url.URL{}))) + heapBytes(int(unsafe.Sizeof(url.Userinfo{}))) + 6*16)
	return size
}

// nameSize bounds what a parsed name keeps: its attributes (each a type, and a string value in an
// interface), and the slices of its fields, whose strings are the attributes'.
func nameSize(n *pkix.Name) int64 {
	size := sliceSize(n.Names)
	for _, atv := range n.Names {
		size += oidSize(atv.Type)
		if s, ok := atv.Value.(string); ok {
			size += 16 + heapBytes(len(s))
		} else {
			size += 256 // crypto/x509 parses every value as a string
		}
	}
	for _, f := range [...][]string{n.Country, n.Organization, n.OrganizationalUnit, n.Locality, n.Province, n.StreetAddress, n.PostalCode} {
		size += sliceSize(f)
	}
	return size
}

// stringsSize is what a slice of strings takes with its strings.
func stringsSize(list []string) int64 {
	size := sliceSize(list)
	for _, s := range list {
		size += heapBytes(len(s))
	}
	return size
}

// sliceSize is what the backing array of s takes.
func sliceSize[T any](s []T) int64 {
	var zero T
	return heapBytes(cap(s) * int(unsafe.Sizeof(zero)))
}

// oidSize is what an object identifier parsed from DER takes: one int per arc (cryptobyte makes
// room for one per byte of the DER, so cap).
func oidSize(oid asn1.ObjectIdentifier) int64 { return sliceSize(oid) }

// heapBytes bounds the heap an allocation of n bytes takes: up to 32 KiB its size class, at most
// a quarter more (and the 16-byte blocks of tiny allocations); past that, whole 8 KiB pages.
func heapBytes(n int) int64 {
	switch {
	case n <= 0:
		return 0
	case n <= 32<<10:
		return int64(n + n/4 + 16)
	default:
		return int64(n+8<<10-1) &^ (8<<10 - 1)
	}
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
