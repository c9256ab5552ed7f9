package audit

import (
	"container/list"
	"context"
	"crypto/sha256"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/decision"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// Default bounds of the prepared configurations a Service keeps (WithPreparedConfigs).
const (
	defaultPreparedEntries = 64
	defaultPreparedBytes   = 128 << 20
)

// preparedCache keeps hostname configurations prepared by decision.Prepare for Explain, so that
// explaining many decisions made on one configuration compiles its policy once (up to seconds and
// 100 MiB for the largest stored policies) instead of on every call.
//
// An entry is keyed by the tenant, the hostname and a SHA-256 of the configuration as Prepare
// reads it (deterministic encoding, version cleared): everything Prepare's result depends on,
// since it reads nothing else (no clock, no state: the certificate's validity is judged by
// Decide, at the time Explain is given). Positions and revisions are not in the key: two of them
// with the same configuration of the hostname prepare alike, and share the entry. The tenant is
// in the key besides the configuration (which names it too), so that one tenant's explanation
// never finds another's entry. Failures are kept as well: Prepare is deterministic, and a policy
// that fails to compile may take as long as one that compiles.
//
// Its memory is bounded by a count of entries and by the sum of their estimated sizes
// (decision.Hostname.SizeEstimate), over all tenants; a configuration larger than the whole
// budget is prepared for each call and not kept. The bounds are shared fairly between tenants:
// each tenant's entries are in a least-recently-used list of its own, and when an entry takes the
// cache over a bound, the entry dropped is the least recently used one of the tenant that then
// holds the most under that bound (entries for the count, estimated bytes for the size; between
// tenants holding as much, the one whose least recently used entry is the oldest). So a tenant
// alone has the whole cache, and a tenant explaining many configurations (to push the others'
// out) only evicts its own entries once it holds the most: another tenant's entries go only while
// that tenant holds at least as many entries (or bytes) as it does, down to an equal share. The
// entry being admitted can be the one dropped (its tenant holding the most, and nothing older):
// it is then prepared for that call only.
//
// Callers asking for a configuration being prepared wait for it (or for their context) instead
// of preparing it again. Entries being prepared count towards the bound of entries, and towards
// their tenant's holding, but are not evicted: while the tenant holding the most has only such
// entries, the cache stays beyond its bound of entries (by as many as are being prepared at
// once) rather than evict another tenant's. It is safe for concurrent use.
type preparedCache struct {
	prepare func(*configv1.HostnameConfig) (*decision.Hostname, error)

	mu       sync.Mutex
	entries  map[preparedKey]*list.Element // of *preparedEntry, in its tenant's list
	tenants  map[string]*tenantEntries     // the tenants with entries (prepared or being prepared)
	maxCount int
	maxBytes int64
	bytes    int64  // sum of the sizes of the counted entries
	tick     uint64 // the last preparedEntry.used given
}

// tenantEntries are one tenant's entries in a preparedCache.
type tenantEntries struct {
	lru     list.List // of *preparedEntry, most recently used first
	counted int       // entries whose size is counted (prepared)
	bytes   int64     // sum of their sizes
}

type preparedKey struct {
	tenant, hostname string
	config           [32]byte
}

type preparedEntry struct {
	key   preparedKey
	ready chan struct{} // closed once h, err and size are set
	h     *decision.Hostname
	err   error
	size  int64
	// counted: size is in preparedCache.bytes and its tenant's (under preparedCache.mu).
	counted bool
	// used orders the last uses of entries across tenants (under preparedCache.mu).
	used uint64
}

// errPreparedSize is the estimated size of a kept failure.
const errPreparedSize = 1024

// newPreparedCache returns a cache of at most maxCount entries and maxBytes of estimated size,
// whose entries prepare calls; nil (no cache) when either bound is not positive.
func newPreparedCache(maxCount int, maxBytes int64, prepare func(*configv1.HostnameConfig) (*decision.Hostname, error)) *preparedCache {
	if maxCount <= 0 || maxBytes <= 0 {
		return nil
	}
	return &preparedCache{prepare: prepare, entries: make(map[preparedKey]*list.Element), tenants: make(map[string]*tenantEntries), maxCount: maxCount, maxBytes: maxBytes}
}

// configKey returns the key of cfg, a configuration of tenant. It clears cfg's version for the
// time of the encoding, so cfg must be the caller's own (Explain's, fresh from the fold).
func configKey(tenant string, cfg *configv1.HostnameConfig) (preparedKey, error) {
	// The version (the position asked for) is not read by Prepare or Decide; the Hostname
	// returned carries the caller's configuration, version included (see get).
	version := cfg.Version
	cfg.Version = 0
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cfg)
	cfg.Version = version
	if err != nil {
		return preparedKey{}, err
	}
	return preparedKey{tenant: tenant, hostname: cfg.GetHostname(), config: sha256.Sum256(b)}, nil
}

// get returns c.prepare(cfg) (decision.Prepare) for tenant's configuration cfg, prepared once for
// all equal configurations of the tenant while it stays in the cache. The Hostname returned is the
// cached one with cfg as its Config, so that it is what Prepare(cfg) returns in every field. An
// error is Prepare's, or the context's while waiting for another call to prepare cfg.
func (c *preparedCache) get(ctx context.Context, tenant string, cfg *configv1.HostnameConfig) (*decision.Hostname, error) {
	key, err := configKey(tenant, cfg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "audit: encode the configuration of %s: %v", cfg.GetHostname(), err)
	}
	c.mu.Lock()
	el, found := c.entries[key]
	t := c.tenants[tenant]
	if found {
		t.lru.MoveToFront(el)
	} else {
		if t == nil {
			t = &tenantEntries{}
			c.tenants[tenant] = t
		}
		el = t.lru.PushFront(&preparedEntry{key: key, ready: make(chan struct{})})
		c.entries[key] = el
	}
	e := el.Value.(*preparedEntry)
	c.tick++
	e.used = c.tick
	c.mu.Unlock()

	if found {
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	} else {
		c.fill(el, e, cfg)
	}
	if e.err != nil {
		return nil, e.err
	}
	h := *e.h
	h.Config = cfg
	return &h, nil
}

// fill prepares cfg into e, the entry el that this call added, and admits it. Should Prepare
// panic, the entry is dropped and its waiters get an error before the panic goes on.
func (c *preparedCache) fill(el *list.Element, e *preparedEntry, cfg *configv1.HostnameConfig) {
	done := false
	defer func() {
		if done {
			return
		}
		e.h, e.err = nil, status.Errorf(codes.Internal, "audit: preparing the configuration of %s failed", cfg.GetHostname())
		close(e.ready)
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.entries[e.key] == el {
			c.remove(el)
		}
	}()
	e.h, e.err = c.prepare(cfg)
	e.size = errPreparedSize
	if e.err == nil {
		e.size = e.h.SizeEstimate()
	}
	close(e.ready)
	done = true
	c.admit(el, e)
}

// admit counts the size of e, ready now, and, while the cache is beyond a bound, evicts the least
// recently used prepared entry of the tenant holding the most under that bound (see victim), e
// included; e alone when it is larger than the whole budget.
func (c *preparedCache) admit(el *list.Element, e *preparedEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[e.key] != el {
		return // evicted meanwhile
	}
	if e.size > c.maxBytes {
		c.remove(el)
		return
	}
	t := c.tenants[e.key.tenant]
	e.counted = true
	c.bytes += e.size
	t.counted++
	t.bytes += e.size
	for {
		overCount := len(c.entries) > c.maxCount
		if !overCount && c.bytes <= c.maxBytes {
			return
		}
		victim := c.victim(!overCount)
		if victim == nil {
			return // the tenant holding the most has only entries being prepared
		}
		c.remove(victim)
	}
}

// victim returns the least recently used prepared entry of the tenant holding the most: entries
// (prepared or being prepared: both count towards the bound of entries), or estimated bytes with
// byBytes; between tenants holding as much, the one whose least recently used entry is the
// oldest. It returns nil when that tenant has only entries being prepared, which stay: another
// tenant's are not evicted for them. c.mu is held.
func (c *preparedCache) victim(byBytes bool) *list.Element {
	var best *tenantEntries
	var bestHeld int64
	var bestUsed uint64
	for _, t := range c.tenants {
		held := int64(t.lru.Len())
		if byBytes {
			held = t.bytes
		}
		used := t.lru.Back().Value.(*preparedEntry).used
		if best != nil && (held < bestHeld || held == bestHeld && used >= bestUsed) {
			continue
		}
		best, bestHeld, bestUsed = t, held, used
	}
	if best == nil || best.counted == 0 {
		return nil
	}
	return best.oldestCounted()
}

// oldestCounted returns t's least recently used counted entry; t.counted must not be 0.
func (t *tenantEntries) oldestCounted() *list.Element {
	el := t.lru.Back()
	for !el.Value.(*preparedEntry).counted {
		el = el.Prev()
	}
	return el
}

// remove drops el from the cache; c.mu is held. Callers waiting for it still get its result.
func (c *preparedCache) remove(el *list.Element) {
	e := el.Value.(*preparedEntry)
	t := c.tenants[e.key.tenant]
	t.lru.Remove(el)
	delete(c.entries, e.key)
	if e.counted {
		c.bytes -= e.size
		t.counted--
		t.bytes -= e.size
		e.counted = false
	}
	if t.lru.Len() == 0 {
		delete(c.tenants, e.key.tenant)
	}
}
