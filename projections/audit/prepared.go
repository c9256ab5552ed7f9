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
// (decision.Hostname.SizeEstimate); the least recently used entries go first, and a configuration
// larger than the whole budget is prepared for each call and not kept. Callers asking for a
// configuration being prepared wait for it (or for their context) instead of preparing it again.
// It is safe for concurrent use.
type preparedCache struct {
	prepare func(*configv1.HostnameConfig) (*decision.Hostname, error)

	mu       sync.Mutex
	entries  map[preparedKey]*list.Element // of *preparedEntry
	lru      list.List                     // most recently used first
	maxCount int
	maxBytes int64
	bytes    int64 // sum of the sizes of the counted entries
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
	// counted: size is in preparedCache.bytes (under preparedCache.mu).
	counted bool
}

// errPreparedSize is the estimated size of a kept failure.
const errPreparedSize = 1024

// newPreparedCache returns a cache of at most maxCount entries and maxBytes of estimated size,
// whose entries prepare calls; nil (no cache) when either bound is not positive.
func newPreparedCache(maxCount int, maxBytes int64, prepare func(*configv1.HostnameConfig) (*decision.Hostname, error)) *preparedCache {
	if maxCount <= 0 || maxBytes <= 0 {
		return nil
	}
	return &preparedCache{prepare: prepare, entries: make(map[preparedKey]*list.Element), maxCount: maxCount, maxBytes: maxBytes}
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
	if found {
		c.lru.MoveToFront(el)
	} else {
		el = c.lru.PushFront(&preparedEntry{key: key, ready: make(chan struct{})})
		c.entries[key] = el
	}
	e := el.Value.(*preparedEntry)
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

// admit counts the size of e, ready now, and evicts the least recently used counted entries
// until the cache is within its bounds; e itself, when it is larger than the whole budget.
// Entries being prepared are not counted yet, and stay.
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
	e.counted = true
	c.bytes += e.size
	for back := c.lru.Back(); back != nil && (c.lru.Len() > c.maxCount || c.bytes > c.maxBytes); {
		prev := back.Prev()
		if old := back.Value.(*preparedEntry); old != e && old.counted {
			c.remove(back)
		}
		back = prev
	}
}

// remove drops el from the cache; c.mu is held. Callers waiting for it still get its result.
func (c *preparedCache) remove(el *list.Element) {
	e := el.Value.(*preparedEntry)
	c.lru.Remove(el)
	delete(c.entries, e.key)
	if e.counted {
		c.bytes -= e.size
		e.counted = false
	}
}
