package decision

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/dnsname"
	"guestlist.dev/edge/policy"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// Hostname is a prepared, immutable hostname configuration: built once per configuration change
// by [Prepare] (or [Cache.Prepare]) and shared by all connections and requests. It is safe for
// concurrent use.
type Hostname struct {
	// Config is the configuration it was prepared from. It must not be modified.
	Config *configv1.HostnameConfig

	name    string
	active  bool
	mode    configv1.MtlsMode
	trust   *trust          // shared between hostnames with the same CAs and revocations
	program *policy.Program // nil without a policy; compiled.Program, kept apart for Decide
	// compiled holds program and keeps it in the Cache; nil without a policy.
	compiled *compiled
}

// compiled is a compiled policy, shared between hostnames with the same rules.
type compiled struct {
	*policy.Program
	// rules is the list of rules it was compiled from, nil if a rule there has unknown fields.
	// ShareLists gives it to the configurations of the same rules, so that they hold one copy
	// of the rules (see trust.cas).
	rules []*configv1.Rule
}

// trust is what certificate verification needs of a hostname: its CAs and revocations, prepared.
// It is immutable once built, but for the parsed form of its CAs, which it keeps only while it is
// in use (see trust.parsed).
type trust struct {
	// ders are the CA certificates (DER), in configuration order, one for each id; the bytes are
	// those of the configuration (or of the Cache's list of these CAs), not a copy. ids[i] is the
	// id of ders[i].
	ders [][]byte
	ids  []string
	// live points to the parsed CAs while something uses them (see trust.parsed): a parsed CA
	// certificate costs about 2.4 KB and its pool about 0.9 KB, which the many hostnames an edge
	// holds but nobody connects to need not pay. mu serialises parsing them again.
	mu   sync.Mutex
	live atomic.Pointer[weak.Pointer[rootSet]]
	// unkeep, set with live (under mu), takes the parsed CAs out of rootKeeper once the trust is
	// unreachable, so that they go with the last hostname that uses them.
	unkeep runtime.Cleanup
	// serials maps a CA (its subject and key, not one certificate of it) to the serial numbers
	// (certid form) revoked under it, each with the id of the first CA it was filed under. A
	// revocation filed under any certificate of the CA applies through all of them.
	serials map[caKey]map[string]string
	// fingerprints maps the SHA-256 of a certificate revoked by fingerprint (under any of the
	// hostname's CAs) to the id of the first CA it was filed under.
	fingerprints map[[32]byte]string
	// above maps each of the hostname's CAs (by caKey) to the CAs above it: the issuers of all
	// its certificates among the hostname's CAs, theirs, and so on; never the CA itself. Set
	// only when serials is not empty.
	above map[caKey][]caKey
	// issuers maps a CA certificate of the hostname (its DER, as a string) to the CAs above that
	// one certificate: the hostname's CA that signed it, and the CAs above that one; never its own
	// CA. Set only when serials is not empty.
	issuers map[string][]caKey
	// linkChecks is how many signature checks linkCAs made.
	linkChecks int
	// size is an estimate of the memory the trust holds (Hostname.SizeEstimate).
	size int64
	// cas is the list of CAs it was built from, shared through the Cache by the trusts of the
	// same CAs (whatever their revocations), or nil (built without a Cache, or a CA there has
	// unknown fields). ShareLists gives it to the configurations of these CAs, so that they
	// hold one copy of the certificates. Holding it here keeps it in the Cache while a hostname
	// uses it.
	cas *caList
	// revs is the list of revocations it was built from, nil without a Cache or if a revocation
	// there has unknown fields. ShareLists gives it to the configurations of this trust (trustKey
	// covers every field of every revocation).
	revs []*configv1.Revocation
}

// rootSet is a trust's CA certificates, parsed, and their pool. It is immutable but for its pool,
// built on first use.
type rootSet struct {
	// certs are the parsed CA certificates, in configuration order (the roots of verification).
	certs []*x509.Certificate
	// poolOnce builds pool, certs as the only roots verification accepts, on first use (the
	// handshake's TLS configuration names the acceptable CAs from it).
	poolOnce sync.Once
	pool     *x509.CertPool
	// kept is the number of the keep (rootKeeper.uses) at which rootKeeper last kept it, or 0.
	kept atomic.Uint64
}

// noRoots is the rootSet of a trust of no CAs (mode OFF).
var noRoots = &rootSet{}

// parseRoots parses ders, which Prepare parsed and checked before, so it cannot fail; if it did,
// the set would be empty, failing closed (no client certificate verifies).
func parseRoots(ders [][]byte) *rootSet {
	rs := &rootSet{certs: make([]*x509.Certificate, 0, len(ders))}
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return &rootSet{}
		}
		rs.certs = append(rs.certs, c)
	}
	return rs
}

// rootPool returns rs's pool, built on first use. It is never nil (a nil pool would mean the system's
// roots) and never empty but for a trust of no CAs (mode OFF).
func (rs *rootSet) rootPool() *x509.CertPool {
	rs.poolOnce.Do(func() {
		p := x509.NewCertPool()
		for _, c := range rs.certs {
			p.AddCert(c)
		}
		rs.pool = p
	})
	return rs.pool
}

// keptRootSets is how many rootSets (those kept last) rootKeeper keeps alive at least: a trust
// used again before keptRootSets/2 others have been kept since its last use keeps its parsed CAs
// (a use keeps a set again only when it was kept keptRootSets/2 or more sets before); one idle
// longer may keep them only until the next garbage collection, then parses them again on its
// next use (about 25 µs for a P-256 CA, against about 1 ms of CPU for the full handshake that
// needs them).
const keptRootSets = 1 << 16

// rootKeeper keeps alive the rootSets used last: a ring of keptRootSets strong references, which
// a use refills only when the set's last entry is in the older half of the ring, so that a
// hostname in constant use does not push the others out. It is safe for concurrent use.
var rootKeeper struct {
	uses  atomic.Uint64 // the sets kept (each in slot uses%keptRootSets), not every use
	slots [keptRootSets]atomic.Pointer[rootSet]
}

// keepRoots records a use of rs. Of concurrent uses that would keep rs again, one does, so that
// rs is in the slot of rs.kept alone (see unkeepRoots).
func keepRoots(rs *rootSet) {
	k := rs.kept.Load()
	if k != 0 && rootKeeper.uses.Load()-k < keptRootSets/2 {
		return
	}
	n := rootKeeper.uses.Add(1)
	if !rs.kept.CompareAndSwap(k, n) {
		return // another use kept it meanwhile
	}
	rootKeeper.slots[n%keptRootSets].Store(rs)
	if k != 0 && (n-k)%keptRootSets != 0 {
		// Its previous slot, unless reused meanwhile: rs is then in one slot only.
		rootKeeper.slots[k%keptRootSets].CompareAndSwap(rs, nil)
	}
}

// unkeepRoots takes the set wp points to, if still in memory, out of rootKeeper: its trust is
// unreachable, so no hostname will use it again.
func unkeepRoots(wp weak.Pointer[rootSet]) {
	if rs := wp.Value(); rs != nil {
		rootKeeper.slots[rs.kept.Load()%keptRootSets].CompareAndSwap(rs, nil)
	}
}

// parsed returns t's CAs parsed: those of its last use while they are alive (kept by rootKeeper,
// or by a caller that holds them), or else parsed again. Callers use one rootSet for a whole
// verification.
func (t *trust) parsed() *rootSet {
	if len(t.ders) == 0 {
		return noRoots
	}
	if rs := t.alive(); rs != nil {
		keepRoots(rs)
		runtime.KeepAlive(t) // t's cleanup (unkeep) does not run before rs is kept
		return rs
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rs := t.alive()
	if rs == nil {
		rs = parseRoots(t.ders)
		t.adopt(rs)
	}
	keepRoots(rs)
	runtime.KeepAlive(t) // t's cleanup (unkeep) does not run before rs is kept
	return rs
}

// alive returns t's parsed CAs if they are still in memory, or nil.
func (t *trust) alive() *rootSet {
	if wp := t.live.Load(); wp != nil {
		return wp.Value()
	}
	return nil
}

// adopt makes rs the parsed form of t's CAs, held weakly, and taken out of rootKeeper once t is
// unreachable. t.mu is held.
func (t *trust) adopt(rs *rootSet) {
	wp := weak.Make(rs)
	t.live.Store(&wp)
	// The set adopted before is no longer in memory (or t would not parse its CAs again), so
	// neither in rootKeeper.
	t.unkeep.Stop()
	t.unkeep = runtime.AddCleanup(t, unkeepRoots, wp)
}

// roots returns t's CA certificates, parsed, in configuration order.
func (t *trust) roots() []*x509.Certificate { return t.parsed().certs }

// rootPool returns the pool of t's roots (see rootSet.rootPool).
func (t *trust) rootPool() *x509.CertPool { return t.parsed().rootPool() }

// caList is a list of CAs shared by configurations (see trust.cas). It must not be modified.
type caList struct {
	cas []*configv1.TrustedCertificateAuthority
}

// unknownFields reports whether a message of list has fields this version does not know.
func unknownFields[M proto.Message](list []M) bool {
	for _, m := range list {
		if len(m.ProtoReflect().GetUnknown()) > 0 {
			return true
		}
	}
	return false
}

// caKey identifies a CA across its certificates: a SHA-256 of its subject (DER) and of its
// public key (DER SubjectPublicKeyInfo). A CA re-issued with the same name and key (a renewed
// root, a cross-certified intermediate) has one caKey.
type caKey [32]byte

// keyOf returns c's caKey.
func keyOf(c *x509.Certificate) caKey {
	var arr [512]byte
	b := appendField(arr[:0], c.RawSubject)
	b = appendField(b, c.RawSubjectPublicKeyInfo)
	return sha256.Sum256(b)
}

// Prepare checks a hostname configuration and prepares it for [Decide]: it parses and checks the
// CA certificates (keeping their DER, parsed again on use), indexes the revocations and compiles the policy with
// [policy.CompileStored] (so that a policy of the history keeps working when a later version
// prices its rules higher: those rules are then evaluated with run-time cost tracking). The error
// names the problem (a hostname not in normal form, an unknown mode, a
// CA certificate that does not parse, a CA key that [CheckCAKey] refuses, more than
// [MaxCAsPerSubject] CAs with one subject name, a revocation without a valid serial number or
// fingerprint, a policy that does not compile, CAs that take more than 256 signature checks to
// link to one another, which takes more CAs than the API gives a hostname). The edge then refuses
// the hostname as it refuses an unknown one (configset leaves it out of the configuration and
// reports it), and applies the rest of the update.
//
// Prepare shares nothing between calls; an edge holding many hostnames uses [Cache.Prepare], or
// then [Hostname.ShareLists] for configurations it decoded itself.
func Prepare(cfg *configv1.HostnameConfig) (*Hostname, error) {
	return (*Cache)(nil).Prepare(cfg)
}

// Cache shares the expensive parts of prepared hostnames (their CAs, parsed with their pool while
// in use, indexed revocations, compiled policies) between hostnames whose configurations have the same
// content, as the hostnames of one tenant usually do: preparing a million hostnames that use one
// policy compiles it once and keeps one copy ([Hostname.ShareLists] shares the lists of CAs,
// revocations and rules of the configurations too). Entries are keyed by a SHA-256 of their
// content and held by weak pointers, so what an entry shares lives exactly as long as a prepared
// Hostname uses it; the entry itself (a key and a weak pointer) is forgotten at a later sweep,
// amortised over the entries recorded (Cache.recorded). A Cache is safe for concurrent use; the zero value is not usable, create one with
// [NewCache]. Sharing changes nothing of what [Decide] decides.
type Cache struct {
	mu       sync.Mutex
	trusts   map[[32]byte]weak.Pointer[trust]
	programs map[[32]byte]weak.Pointer[compiled]
	caLists  map[[32]byte]weak.Pointer[caList]
	// added is the entries recorded since the last sweep; live, the entries left after it.
	added, live int
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{
		trusts:   make(map[[32]byte]weak.Pointer[trust]),
		programs: make(map[[32]byte]weak.Pointer[compiled]),
		caLists:  make(map[[32]byte]weak.Pointer[caList]),
	}
}

// Prepare is [Prepare], sharing what it can with the other hostnames prepared with c. A nil c
// shares nothing.
func (c *Cache) Prepare(cfg *configv1.HostnameConfig) (*Hostname, error) {
	if cfg == nil {
		return nil, errors.New("decision: no hostname configuration")
	}
	name := cfg.GetHostname()
	if !isNormalized(name) {
		return nil, fmt.Errorf("decision: hostname %q is not in normal form (lower case, A-labels, no trailing dot)", shorten(name))
	}
	fail := func(err error) (*Hostname, error) {
		return nil, fmt.Errorf("decision: hostname %q: %w", name, err)
	}
	switch m := cfg.GetMode(); m {
	case configv1.MtlsMode_MTLS_MODE_OFF, configv1.MtlsMode_MTLS_MODE_ENFORCE, configv1.MtlsMode_MTLS_MODE_REPORT:
	default:
		return fail(fmt.Errorf("mode %v is not OFF, ENFORCE or REPORT", m))
	}
	tr := offTrust
	var err error
	if cfg.GetMode() != configv1.MtlsMode_MTLS_MODE_OFF {
		if tr, err = lookup(c, c.trustMap(), trustKey(cfg), func() (*trust, error) { return c.newTrust(cfg) }); err != nil {
			return fail(err)
		}
	}
	h := &Hostname{Config: cfg, name: name, active: cfg.GetActive(), mode: cfg.GetMode(), trust: tr}
	if p := cfg.GetPolicy(); p != nil {
		h.compiled, err = lookup(c, c.programMap(), programKey(p), func() (*compiled, error) {
			rules, err := policyRules(p)
			if err != nil {
				return nil, err
			}
			prog, err := policy.CompileStored(rules)
			if err != nil {
				return nil, fmt.Errorf("policy %q: %w", p.GetPolicyId(), err)
			}
			out := &compiled{Program: prog}
			if !unknownFields(p.GetRules()) {
				out.rules = slices.Clip(p.GetRules())
			}
			return out, nil
		})
		if err != nil {
			return fail(err)
		}
		h.program = h.compiled.Program
	}
	return h, nil
}

// ShareLists gives h's configuration the lists of CA messages, of revocations and of rule
// messages that the hostnames prepared with the same [Cache] share, where they are equal to its
// own (the same ids and certificates, the same revocations, or the same rules, in the same order;
// lists with fields this version does not know are not shared). Hostnames that trust the same CAs
// then hold one copy of their certificates instead of one each (about 0.45 KB a hostname for one
// ECDSA CA) and of the revocations filed under them (which every configuration carries), and
// hostnames of the same rules one copy of the rules. What the configuration says does not change.
// The shared lists are those of configurations prepared with the same Cache, which must not be
// modified either.
//
// It writes h.Config (its certificate_authorities, its revocations and its policy's rules), so it
// is for a configuration its caller owns, such as one just decoded from the wire or a file: call
// it before h is used, not concurrently with anything that reads h.Config or a message it shares
// with another configuration. It writes nothing where the lists are shared already. A hostname
// prepared without a Cache shares nothing.
func (h *Hostname) ShareLists() {
	cfg := h.Config
	if cas := h.trust.cas; cas != nil && !sameList(cfg.GetCertificateAuthorities(), cas.cas) && !unknownFields(cfg.GetCertificateAuthorities()) {
		// trustKey covers every known field of every CA, in order, and neither list has
		// unknown fields (from a newer projector): cas equals cfg's list.
		cfg.CertificateAuthorities = cas.cas
	}
	if revs := h.trust.revs; revs != nil && !sameList(cfg.GetRevocations(), revs) && !unknownFields(cfg.GetRevocations()) {
		// trustKey covers every known field of every revocation, in order: likewise.
		cfg.Revocations = revs
	}
	if p := cfg.GetPolicy(); h.compiled != nil && h.compiled.rules != nil && !sameList(p.GetRules(), h.compiled.rules) && !unknownFields(p.GetRules()) {
		// programKey covers every known field of every rule, in order: likewise.
		p.Rules = h.compiled.rules
	}
}

// sameList reports whether a and b are the same slice (not only equal).
func sameList[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (c *Cache) trustMap() map[[32]byte]weak.Pointer[trust] {
	if c == nil {
		return nil
	}
	return c.trusts
}

func (c *Cache) programMap() map[[32]byte]weak.Pointer[compiled] {
	if c == nil {
		return nil
	}
	return c.programs
}

// lookup returns the live entry of m under key, or builds, records and returns one. With a nil
// cache it just builds. Two goroutines may build the same entry at once; the first one recorded
// wins, so that equal content stays shared.
func lookup[V any](c *Cache, m map[[32]byte]weak.Pointer[V], key [32]byte, build func() (*V, error)) (*V, error) {
	if c == nil {
		return build()
	}
	c.mu.Lock()
	if v := m[key].Value(); v != nil {
		c.mu.Unlock()
		return v, nil
	}
	c.mu.Unlock()
	v, err := build()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := m[key].Value(); old != nil {
		return old, nil
	}
	m[key] = weak.Make(v)
	c.recorded()
	return v, nil
}

// minSweep is the fewest entries recorded between two sweeps of a Cache.
const minSweep = 1024

// recorded counts an entry recorded in c, and sweeps c once as many have been recorded since the
// last sweep as there were entries left after it (at least minSweep). c.mu is held.
//
// Sweeping is amortised over the entries recorded rather than done by a cleanup on each entry's
// value (runtime.AddCleanup): a cleanup is a record that every garbage collection visits, and
// with two of them a hostname of its own CA (its trust and its list of CAs), they took about a
// third of the CPU of loading 100,000 such hostnames. So an entry whose value is gone stays until
// the next sweep: c holds at most twice the entries live at its last sweep, plus minSweep. That
// is not a bound on the entries live now: the entries of hostnames dropped since (a configuration
// that shrinks) stay until as many new entries as were live then have been recorded, a key and a
// weak pointer each (the slots of a Go map are not freed by a delete either).
func (c *Cache) recorded() {
	if c.added++; c.added >= max(minSweep, c.live) {
		c.sweep()
	}
}

// sweep forgets the entries whose value is gone. c.mu is held.
func (c *Cache) sweep() {
	c.live = sweepMap(c.trusts) + sweepMap(c.programs) + sweepMap(c.caLists)
	c.added = 0
}

// sweepMap deletes m's entries whose value is gone and returns how many are left.
func sweepMap[V any](m map[[32]byte]weak.Pointer[V]) int {
	for k, wp := range m {
		if wp.Value() == nil {
			delete(m, k)
		}
	}
	return len(m)
}

// appendField appends a length-prefixed field, so that different field sequences never give the
// same bytes.
func appendField[T string | []byte](b []byte, field T) []byte {
	b = binary.AppendUvarint(b, uint64(len(field)))
	return append(b, field...)
}

// offTrust is the trust of every hostname in mode OFF, which looks at no certificate: its CAs (the
// projector sends them in every mode) are neither parsed nor held to the rules for CAs, so a CA
// uploaded before a rule, still referenced by a hostname in mode OFF, does not take it down.
var offTrust = &trust{}

// trustKey identifies the content newTrust builds from: the CAs in order and the revocations.
func trustKey(cfg *configv1.HostnameConfig) [32]byte {
	var arr [2048]byte
	b := appendCAs(appendField(arr[:0], "trust"), cfg.GetCertificateAuthorities())
	for _, r := range cfg.GetRevocations() {
		b = appendField(b, r.GetCertificateAuthorityId())
		b = appendField(b, r.GetRevocationId()) // not used, but ShareLists shares the list
		b = appendField(b, r.GetSerialNumber())
		b = appendField(b, r.GetFingerprintSha256())
	}
	return sha256.Sum256(b)
}

// casKey identifies a list of CAs: their ids and certificates, in order.
func casKey(cas []*configv1.TrustedCertificateAuthority) [32]byte {
	var arr [2048]byte
	return sha256.Sum256(appendCAs(appendField(arr[:0], "cas"), cas))
}

// appendCAs appends the number of CAs, then each one's id and certificate, length-prefixed.
func appendCAs(b []byte, cas []*configv1.TrustedCertificateAuthority) []byte {
	b = binary.AppendUvarint(b, uint64(len(cas)))
	for _, ca := range cas {
		b = appendField(b, ca.GetCertificateAuthorityId())
		b = appendField(b, ca.GetCertificateDer())
	}
	return b
}

// programKey identifies a policy's rules.
func programKey(p *configv1.Policy) [32]byte {
	var arr [1024]byte
	b := appendField(arr[:0], "policy")
	for _, r := range p.GetRules() {
		b = appendField(b, r.GetName())
		b = binary.AppendVarint(b, int64(r.GetAction()))
		b = appendField(b, r.GetExpression())
	}
	return sha256.Sum256(b)
}

// newTrust parses the CAs and indexes the revocations of a configuration. With a Cache, the
// trust's list of CAs is the one the Cache holds for these CAs (see trust.cas).
func (c *Cache) newTrust(cfg *configv1.HostnameConfig) (*trust, error) {
	cas := cfg.GetCertificateAuthorities()
	t := &trust{
		ders: make([][]byte, 0, len(cas)),
		ids:  make([]string, 0, len(cas)),
	}
	if c != nil && !unknownFields(cas) {
		// Cannot fail: the build returns no error.
		t.cas, _ = lookup(c, c.caLists, casKey(cas), func() (*caList, error) { return &caList{cas: slices.Clip(cas)}, nil })
		// Parse the shared list's certificates, equal to cfg's: x509.ParseCertificate keeps the
		// bytes it is given, and trusts of these CAs with other revocations then hold no copy of
		// their own.
		cas = t.cas.cas
	}
	// roots[i] is ders[i] parsed; byID maps an id to its certificate.
	roots := make([]*x509.Certificate, 0, len(cas))
	byID := make(map[string]*x509.Certificate, len(cas))
	for i, ca := range cas {
		id := ca.GetCertificateAuthorityId()
		if id == "" {
			return nil, fmt.Errorf("certificate_authorities[%d]: no certificate_authority_id", i)
		}
		cert, err := x509.ParseCertificate(ca.GetCertificateDer())
		if err != nil {
			return nil, fmt.Errorf("certificate_authorities[%d] (%q): certificate_der does not parse: %w", i, id, err)
		}
		if err := CheckCAKey(cert); err != nil {
			return nil, fmt.Errorf("certificate_authorities[%d] (%q): %w", i, id, err)
		}
		if prev, dup := byID[id]; dup {
			if !prev.Equal(cert) {
				return nil, fmt.Errorf("certificate_authorities[%d]: id %q is given twice, with different certificates", i, id)
			}
			continue
		}
		byID[id] = cert
		t.size += sizePerCA + sizePerCAByte*int64(len(cert.Raw))
		roots = append(roots, cert)
		t.ders = append(t.ders, cert.Raw)
		t.ids = append(t.ids, id)
	}
	if err := checkSubjects(roots, t.ids); err != nil {
		return nil, err
	}
	if c != nil && !unknownFields(cfg.GetRevocations()) {
		t.revs = slices.Clip(cfg.GetRevocations())
	}
	for i, r := range cfg.GetRevocations() {
		where := func() string { return fmt.Sprintf("revocations[%d] (%q)", i, r.GetRevocationId()) }
		serial, fp := r.GetSerialNumber(), r.GetFingerprintSha256()
		if serial == "" && fp == "" {
			return nil, fmt.Errorf("%s: neither serial_number nor fingerprint_sha256 is set", where())
		}
		caID := r.GetCertificateAuthorityId()
		ca, ok := byID[caID]
		if !ok {
			continue // under a CA this hostname does not trust: it can never apply
		}
		t.size += sizePerRevocation
		if serial != "" {
			s, err := certid.NormalizeSerial(serial)
			if err != nil {
				return nil, fmt.Errorf("%s: serial_number: %w", where(), err)
			}
			if t.serials == nil {
				t.serials = make(map[caKey]map[string]string)
			}
			k := keyOf(ca)
			if t.serials[k] == nil {
				t.serials[k] = make(map[string]string)
			}
			if _, dup := t.serials[k][s]; !dup {
				t.serials[k][s] = caID
			}
		}
		if fp != "" {
			f, err := certid.NormalizeFingerprint(fp)
			if err != nil {
				return nil, fmt.Errorf("%s: fingerprint_sha256: %w", where(), err)
			}
			var sum [32]byte
			if _, err := hex.Decode(sum[:], []byte(f)); err != nil {
				return nil, fmt.Errorf("%s: fingerprint_sha256: %w", where(), err)
			}
			if t.fingerprints == nil {
				t.fingerprints = make(map[[32]byte]string)
			}
			if _, dup := t.fingerprints[sum]; !dup {
				t.fingerprints[sum] = caID
			}
		}
	}
	if len(t.serials) > 0 {
		if err := t.linkCAs(roots); err != nil {
			return nil, err
		}
	}
	// roots are dropped: the first use parses the CAs again (see trust.parsed), so that a
	// hostname nobody connects to holds neither them nor a weak pointer to them, which every
	// garbage collection would look at.
	return t, nil
}

// MaxCAsPerSubject is the most CA certificates with one subject name that a hostname may trust.
// Renewing a CA needs two for a while (the old certificate and the new); more only multiply the
// signature checks that a client's certificate naming that subject as its issuer, with a junk
// signature, costs the edge (it is checked against every CA of that name). [Prepare] refuses a
// configuration with more, and the control plane a hostname that references more.
const MaxCAsPerSubject = 3

// checkSubjects returns an error when more than MaxCAsPerSubject distinct certificates of roots
// (ids[i] is the id of roots[i]) share a subject name; it names the first such subject, in
// configuration order, and the ids of its CAs. One certificate given under two ids counts once.
func checkSubjects(roots []*x509.Certificate, ids []string) error {
	type group struct {
		certs []*x509.Certificate
		ids   []string
	}
	var order []string
	groups := make(map[string]*group, len(roots))
	for i, c := range roots {
		g := groups[string(c.RawSubject)]
		if g == nil {
			g = &group{}
			groups[string(c.RawSubject)] = g
			order = append(order, string(c.RawSubject))
		}
		g.ids = append(g.ids, ids[i])
		if !slices.ContainsFunc(g.certs, c.Equal) {
			g.certs = append(g.certs, c)
		}
	}
	for _, subject := range order {
		if g := groups[subject]; len(g.certs) > MaxCAsPerSubject {
			return fmt.Errorf("certificate_authorities: %d CAs (%s) share the subject %q; a hostname may trust at most %d CAs of one subject (2 cover a renewal; each more multiplies the signature checks that a forged client certificate costs the edge)",
				len(g.certs), quoteIDs(g.ids), shorten(g.certs[0].Subject.String()), MaxCAsPerSubject)
		}
	}
	return nil
}

// quoteIDs lists ids quoted, separated by commas; the first 8 of them and how many more.
func quoteIDs(ids []string) string {
	const most = 8
	var b strings.Builder
	for i, id := range ids {
		if i == most {
			fmt.Fprintf(&b, " and %d more", len(ids)-most)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(shorten(id)))
	}
	return b.String()
}

// maxLinkSignatureChecks bounds the signature checks linkCAs makes for one hostname, so that the
// work of Prepare (which the edge does for every configuration change, on every edge) stays
// bounded whatever the hostname's CAs are. linkCAs checks a CA certificate only against the
// certificates of other CAs whose subject is the certificate's issuer name, one key (caKey) at a
// time, and stops at the first key that signed it; a certificate that names itself as its issuer
// is first checked against its own key, and when that signed it no other did. With at most
// [MaxCAsPerSubject] CAs of one name (Prepare refuses more before it links them), that is about 4
// checks a certificate, 64 for 16 CAs, the most a hostname has through the API
// (MtlsSettings.certificate_authority_ids), so no configuration the API makes runs out. When the
// checks run out (many more CAs), linkCAs fails and so does [Prepare]: the edge refuses the
// hostname (configset leaves it out of the configuration and reports it) rather than decide with
// the links between its CAs unknown, which could leave out a revocation filed under one of them.
const maxLinkSignatureChecks = 256

// linkCAs sets t.above and t.issuers from the signatures between the hostname's CA
// certificates (roots, parsed from t.ders), whatever their validity. Its lists are in configuration order, so that
// verification, which reports the first revocation it finds, is deterministic. It makes at most
// maxLinkSignatureChecks signature checks (counted in t.linkChecks) and returns an error when it
// would need more; the rest of its work is linear in the CAs and the checks made.
func (t *trust) linkCAs(roots []*x509.Certificate) error {
	keys := make([]caKey, len(roots))
	// The hostname's CAs as groups of the certificates of one CA (one caKey), in configuration
	// order, by subject name and by subject name and subject key id.
	groups := make(map[caKey]*caGroup, len(roots))
	bySubject := make(map[string][]*caGroup, len(roots))
	byKeyID := make(map[string][]*caGroup)
	seen := make(map[string]bool)
	for i, c := range roots {
		k := keyOf(c)
		keys[i] = k
		g := groups[k]
		if g == nil {
			g = &caGroup{key: k}
			groups[k] = g
			bySubject[string(c.RawSubject)] = append(bySubject[string(c.RawSubject)], g)
		}
		g.members = append(g.members, i)
		if len(c.SubjectKeyId) > 0 {
			id := keyIDIndex(c.RawSubject, c.SubjectKeyId)
			if !seen[id+string(k[:])] {
				seen[id+string(k[:])] = true
				byKeyID[id] = append(byKeyID[id], g)
			}
		}
	}
	// signer[i]: the index of a certificate of another CA that signed roots[i]; or -1.
	signer := make([]int, len(roots))
	for i := range roots {
		j, err := t.findSigner(roots, i, keys[i], bySubject, byKeyID)
		if err != nil {
			return err
		}
		signer[i] = j
	}
	// byKey: the direct issuers of all the certificates of a CA.
	byKey := make(map[caKey][]caKey, len(roots))
	for i, k := range keys {
		if j := signer[i]; j >= 0 && !slices.Contains(byKey[k], keys[j]) {
			byKey[k] = append(byKey[k], keys[j])
		}
	}
	// closure returns start and everything above it (breadth first), without self.
	closure := func(self caKey, start []caKey) []caKey {
		var out []caKey
		in := map[caKey]bool{self: true}
		queue := append([]caKey(nil), start...)
		for len(queue) > 0 {
			k := queue[0]
			queue = queue[1:]
			if in[k] {
				continue
			}
			in[k] = true
			out = append(out, k)
			queue = append(queue, byKey[k]...)
		}
		return out
	}
	t.above = make(map[caKey][]caKey, len(byKey))
	t.issuers = make(map[string][]caKey)
	for k, direct := range byKey {
		t.above[k] = closure(k, direct)
	}
	for i, k := range keys {
		if j := signer[i]; j >= 0 {
			t.issuers[string(roots[i].Raw)] = closure(k, []caKey{keys[j]})
		}
	}
	return nil
}

// caGroup is the certificates of one CA (one caKey) among a hostname's, in configuration order.
type caGroup struct {
	key     caKey
	members []int // indexes in roots
	tried   int   // 1 + the index of the certificate findSigner last tried the group for
}

// keyIDIndex is the key of a CA certificate's subject and subject key id in linkCAs's index.
func keyIDIndex(subject, keyID []byte) string {
	return string(appendField(appendField(nil, subject), keyID))
}

// findSigner returns the index among roots of a certificate of another CA than that of
// roots[self] (its caKey is own) that signed it, or -1. A certificate has one signature, made by
// one key, so findSigner tries each candidate CA once (its certificates in order until one may
// sign certificates), stops at the first that signed it, and looks no further when it names
// itself as its issuer and its own key signed it. It tries first the CAs whose subject key id is
// the certificate's authority key id, then the others whose subject is its issuer name (key ids
// order the candidates, they leave none out). Each signature check counts in t.linkChecks.
func (t *trust) findSigner(roots []*x509.Certificate, self int, own caKey, bySubject, byKeyID map[string][]*caGroup) (int, error) {
	c := roots[self]
	candidates := bySubject[string(c.RawIssuer)]
	if len(candidates) == 0 || len(candidates) == 1 && candidates[0].key == own {
		return -1, nil // no other CA has the name c gives as its issuer's
	}
	spend := func() error {
		if t.linkChecks >= maxLinkSignatureChecks {
			return fmt.Errorf("certificate_authorities: linking the %d CA certificates by their signatures (for the serial revocations) takes more than %d signature checks; too many of them share a subject name", len(roots), maxLinkSignatureChecks)
		}
		t.linkChecks++
		return nil
	}
	if bytes.Equal(c.RawIssuer, c.RawSubject) {
		if err := spend(); err != nil {
			return -1, err
		}
		if c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil {
			return -1, nil // signed by its own key, so by no other
		}
	}
	try := func(g *caGroup) (int, error) {
		if g.key == own || g.tried == self+1 {
			return -1, nil
		}
		g.tried = self + 1
		for _, j := range g.members {
			if err := spend(); err != nil {
				return -1, err
			}
			err := c.CheckSignatureFrom(roots[j])
			if err == nil {
				return j, nil
			}
			if !errors.As(err, new(x509.ConstraintViolationError)) {
				break // the CA's key did not sign c (or the signature's algorithm is refused)
			}
			// roots[j] may not sign certificates: another certificate of the CA may.
		}
		return -1, nil
	}
	if len(c.AuthorityKeyId) > 0 {
		for _, g := range byKeyID[keyIDIndex(c.RawIssuer, c.AuthorityKeyId)] {
			if j, err := try(g); j >= 0 || err != nil {
				return j, err
			}
		}
	}
	for _, g := range candidates {
		if j, err := try(g); j >= 0 || err != nil {
			return j, err
		}
	}
	return -1, nil
}

// policyRules converts a configured policy to the rules policy.CompileStored takes.
func policyRules(p *configv1.Policy) ([]policy.Rule, error) {
	rules := make([]policy.Rule, len(p.GetRules()))
	for i, r := range p.GetRules() {
		var a policy.Action
		switch r.GetAction() {
		case configv1.Action_ACTION_ALLOW:
			a = policy.Allow
		case configv1.Action_ACTION_DENY:
			a = policy.Deny
		default:
			return nil, fmt.Errorf("policy %q: rules[%d] (%q): action %v is not ALLOW or DENY", p.GetPolicyId(), i, shorten(r.GetName()), r.GetAction())
		}
		rules[i] = policy.Rule{Name: r.GetName(), Action: a, Expression: r.GetExpression()}
	}
	return rules, nil
}

// isNormalized reports whether name is a hostname in normal form, the fast way when it can.
func isNormalized(name string) bool {
	if s, ok := dnsname.NormalizeSNI(name); ok && s == name {
		return true
	}
	return dnsname.IsNormalized(name)
}

// shorten bounds what an error repeats of its input.
func shorten(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// What a prepared hostname holds besides its configuration's encoding and its policy, for
// [Hostname.SizeEstimate]: upper bounds of the heap that prepared hostnames kept
// (runtime.MemStats.HeapAlloc after a GC, go1.26 on amd64; 1 to 16 P-256 CAs, 4 RSA-4096 CAs,
// 1,000 and 20,000 serial revocations, in modes ENFORCE and OFF; 16 CAs of 46 KB, the largest the
// API accepts, made of the smallest items that parsing turns into slices of their own: up to 15.3
// bytes a byte of DER for 3-byte extended key usages, 13 for certificate policies).
const (
	sizePerHostname   = 2048
	sizePerCA         = 2048
	sizePerCAByte     = 20 // a byte of the CA certificate's DER, parsed (x509.Certificate)
	sizePerRevocation = 256
	// sizePerConfigEntry is what a CA, revocation or rule of the configuration holds in memory
	// beyond its encoded bytes: its message (112 bytes for a revocation), its pointer in the
	// list, and its strings rounded up to the allocator's size classes (153 bytes a revocation of
	// short strings, against 10 of encoding).
	sizePerConfigEntry = 192
)

// SizeEstimate returns an estimate of the memory h holds, in bytes: its configuration (its
// encoded size and the messages of its CAs, revocations and rules), its parsed CAs and indexed
// revocations, and its compiled policy ([policy.Program.SizeEstimate]). It counts in full what h
// shares with other hostnames prepared with the same [Cache]. It is meant for caches of prepared
// hostnames that bound their memory: a hostname holds from a few KiB to over 100 MiB, most of it in
// its policy's regular expressions.
func (h *Hostname) SizeEstimate() int64 {
	cfg := h.Config
	entries := len(cfg.GetCertificateAuthorities()) + len(cfg.GetRevocations()) + len(cfg.GetPolicy().GetRules())
	n := sizePerHostname + int64(proto.Size(cfg)) + sizePerConfigEntry*int64(entries) + h.trust.size
	if h.program != nil {
		n += h.program.SizeEstimate()
	}
	return n
}

// Name returns the hostname (normalised).
func (h *Hostname) Name() string { return h.name }

// Active reports whether the hostname is served. The edge fails the handshake for an inactive
// hostname, as for an unknown one.
func (h *Hostname) Active() bool { return h.active }

// Mode returns the hostname's client-certificate mode (OFF, ENFORCE or REPORT).
func (h *Hostname) Mode() configv1.MtlsMode { return h.mode }

// ClientCAs returns the pool of the hostname's CA certificates, for the edge's TLS configuration
// (tls.Config.ClientCAs, so that the CertificateRequest names the acceptable CAs). It is shared
// and must not be modified. The edge should request the certificate (tls.RequestClientCert) and
// verify it with [Hostname.Verify] or [Hostname.VerifyClient], not let crypto/tls verify it: only
// this package applies revocations and classifies failures as the decision log reports them.
func (h *Hostname) ClientCAs() *x509.CertPool { return h.trust.rootPool() }

// CertificateAuthority returns the certificate of the hostname's CA with the given id, or nil.
func (h *Hostname) CertificateAuthority(id string) *x509.Certificate {
	i := slices.Index(h.trust.ids, id)
	if i < 0 {
		return nil
	}
	if roots := h.trust.roots(); i < len(roots) {
		return roots[i]
	}
	return nil
}
