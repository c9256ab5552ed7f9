package audit

import (
	"sync"

	"guestlist.dev/projections/fold"
)

// stateCache keeps recently folded tenant states, so that replaying to a point starts from the
// nearest state at or before it instead of from the tenant's first event. A history is
// append-only, so a state at a revision stays true forever. Cached states are never modified:
// stateAt folds on a copy. Least recently used states are dropped beyond the capacity.
type stateCache struct {
	mu      sync.Mutex
	cap     int
	tick    uint64
	entries []cacheEntry
}

type cacheEntry struct {
	st   *fold.Tenant
	used uint64
}

// defaultCacheStates is how many folded states a Service keeps.
const defaultCacheStates = 64

// minFoldToCache is how many events a replay must have folded for its result to be cached:
// states a few events apart would only push out more useful ones.
const minFoldToCache = 64

// best returns the cached state of tenant with the highest revision that p includes, or nil.
func (c *stateCache) best(tenant string, p point) *fold.Tenant {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *cacheEntry
	for i := range c.entries {
		e := &c.entries[i]
		if e.st.ID != tenant || !p.includesState(e.st) {
			continue
		}
		if best == nil || e.st.Revision > best.st.Revision {
			best = e
		}
	}
	if best == nil {
		return nil
	}
	c.tick++
	best.used = c.tick
	return best.st
}

// add caches st, which must not be modified afterwards.
func (c *stateCache) add(st *fold.Tenant) {
	if c == nil || !st.Exists {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tick++
	for i := range c.entries {
		if e := &c.entries[i]; e.st.ID == st.ID && e.st.Revision == st.Revision {
			e.used = c.tick
			return
		}
	}
	if len(c.entries) < c.cap {
		c.entries = append(c.entries, cacheEntry{st: st, used: c.tick})
		return
	}
	oldest := 0
	for i := range c.entries {
		if c.entries[i].used < c.entries[oldest].used {
			oldest = i
		}
	}
	c.entries[oldest] = cacheEntry{st: st, used: c.tick}
}

// includesState reports whether the last event folded into st is at or before p.
func (p point) includesState(st *fold.Tenant) bool {
	if p.byTime {
		return !st.Time.After(p.time)
	}
	return st.Position <= p.position
}
