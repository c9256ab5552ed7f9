package audit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/edge/decision"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// countingPrepare is decision.Prepare, counting its calls.
type countingPrepare struct{ calls atomic.Int64 }

func (c *countingPrepare) prepare(cfg *configv1.HostnameConfig) (*decision.Hostname, error) {
	c.calls.Add(1)
	return decision.Prepare(cfg)
}

// offConfig is a configuration of tenant's hostname name in mode OFF, with a one-rule policy whose
// rule is named rule.
func offConfig(tenant, name, rule string) *configv1.HostnameConfig {
	return &configv1.HostnameConfig{Hostname: name, TenantId: tenant, Active: true, Mode: configv1.MtlsMode_MTLS_MODE_OFF,
		Policy: &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{{Name: rule, Action: configv1.Action_ACTION_ALLOW, Expression: "true"}}}}
}

// TestPreparedCacheKey: equal configurations of one tenant at different versions share an entry,
// and the Hostname returned carries the caller's configuration; the same configuration asked for
// by two tenants (whatever tenant_id it names) is prepared for each; a failure is kept too.
func TestPreparedCacheKey(t *testing.T) {
	ctx := context.Background()
	var cp countingPrepare
	c := newPreparedCache(8, 1<<30, cp.prepare)
	for v := range uint64(3) {
		cfg := offConfig("acme", "pay.acme.example", "all")
		cfg.Version = 100 + v
		h, err := c.get(ctx, "acme", cfg)
		if err != nil {
			t.Fatal(err)
		}
		if h.Config != cfg || h.Name() != "pay.acme.example" {
			t.Errorf("version %d: the Hostname returned has the configuration %v", cfg.Version, h.Config)
		}
	}
	if n := cp.calls.Load(); n != 1 {
		t.Errorf("3 versions of one configuration prepared %d times; want 1", n)
	}
	if _, err := c.get(ctx, "globex", offConfig("acme", "pay.acme.example", "all")); err != nil {
		t.Fatal(err)
	}
	if n := cp.calls.Load(); n != 2 {
		t.Errorf("the same configuration for another tenant: %d calls of Prepare; want 2 (tenants share no entry)", n)
	}
	bad := offConfig("acme", "pay.acme.example", "all")
	bad.Mode = configv1.MtlsMode(99)
	for range 2 {
		if _, err := c.get(ctx, "acme", bad); err == nil {
			t.Fatal("a configuration Prepare refuses was prepared")
		}
	}
	if n := cp.calls.Load(); n != 3 {
		t.Errorf("a refused configuration asked for twice: %d calls of Prepare in all; want 3", n)
	}
}

// TestPreparedCacheBounds: beyond its count of entries or its bytes, the cache drops the least
// recently used entries; a configuration larger than all its bytes is not kept.
func TestPreparedCacheBounds(t *testing.T) {
	ctx := context.Background()
	get := func(c *preparedCache, rule string) {
		t.Helper()
		if _, err := c.get(ctx, "acme", offConfig("acme", "pay.acme.example", rule)); err != nil {
			t.Fatal(err)
		}
	}
	var cp countingPrepare
	c := newPreparedCache(2, 1<<30, cp.prepare)
	for _, rule := range []string{"a", "b", "a", "c", "a", "b"} {
		get(c, rule)
	}
	// a, b; a (kept, most recent); c drops b; a (kept); b again.
	if n := cp.calls.Load(); n != 4 {
		t.Errorf("count bound 2: %d calls of Prepare; want 4", n)
	}
	if len(c.entries) != 2 || c.tenants["acme"].lru.Len() != 2 {
		t.Errorf("count bound 2: %d entries (%d in acme's list)", len(c.entries), c.tenants["acme"].lru.Len())
	}

	h, err := decision.Prepare(offConfig("acme", "pay.acme.example", "a"))
	if err != nil {
		t.Fatal(err)
	}
	one := h.SizeEstimate()
	cp = countingPrepare{}
	c = newPreparedCache(100, 2*one+one/2, cp.prepare) // two entries fit, not three
	for _, rule := range []string{"a", "b", "a", "c", "a", "b"} {
		get(c, rule)
	}
	if n := cp.calls.Load(); n != 4 || len(c.entries) != 2 || c.bytes > c.maxBytes {
		t.Errorf("bytes for 2 entries: %d calls of Prepare (want 4), %d entries, %d bytes of %d", n, len(c.entries), c.bytes, c.maxBytes)
	}

	cp = countingPrepare{}
	c = newPreparedCache(100, one-1, cp.prepare)
	get(c, "a")
	get(c, "a")
	if n := cp.calls.Load(); n != 2 || len(c.entries) != 0 || c.bytes != 0 {
		t.Errorf("an entry larger than the cache: %d calls of Prepare (want 2), %d entries, %d bytes", n, len(c.entries), c.bytes)
	}
	if newPreparedCache(0, 1, cp.prepare) != nil || newPreparedCache(1, 0, cp.prepare) != nil {
		t.Error("a bound of 0 made a cache")
	}
}

// TestPreparedCacheFair: a tenant alone has the whole cache; another tenant's entry then takes
// the place of its least recently used one, and stays however many configurations the first
// tenant goes on explaining (each of them evicts one of that tenant's own), within the bounds.
// With one LRU for all tenants, the flood pushed the second tenant's entry out.
func TestPreparedCacheFair(t *testing.T) {
	ctx := context.Background()
	h, err := decision.Prepare(offConfig("globex", "shop.globex.example", "g"))
	if err != nil {
		t.Fatal(err)
	}
	one := h.SizeEstimate()
	for _, tc := range []struct {
		name     string
		maxCount int
		maxBytes int64
	}{
		{"ok/count bound", 4, 1 << 30},
		{"ok/byte bound", 100, 4*one + one/2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cp countingPrepare
			c := newPreparedCache(tc.maxCount, tc.maxBytes, cp.prepare)
			get := func(tenant, rule string) int64 {
				t.Helper()
				before := cp.calls.Load()
				if _, err := c.get(ctx, tenant, offConfig(tenant, "pay."+tenant+".example", rule)); err != nil {
					t.Fatal(err)
				}
				return cp.calls.Load() - before
			}
			for i := range 4 {
				get("acme", fmt.Sprint("a", i))
			}
			for i := range 4 {
				if get("acme", fmt.Sprint("a", i)) != 0 {
					t.Errorf("acme alone: a%d was not kept (the cache holds 4)", i)
				}
			}
			get("globex", "g")
			for i := 4; i < 40; i++ { // acme explains many configurations
				get("acme", fmt.Sprint("a", i))
			}
			if get("globex", "g") != 0 {
				t.Error("acme's configurations pushed globex's out of the cache")
			}
			if get("acme", "a39") != 0 {
				t.Error("acme's most recent configuration was not kept")
			}
			if n, a, g := len(c.entries), c.tenants["acme"].counted, c.tenants["globex"].counted; n > tc.maxCount || c.bytes > tc.maxBytes || a != 3 || g != 1 {
				t.Errorf("%d entries (acme %d, globex %d; want 3 and 1), %d bytes of %d", n, a, g, c.bytes, tc.maxBytes)
			}
		})
	}
}

// TestPreparedCacheFairWhilePreparing: a tenant preparing many configurations at once (more
// than the cache holds) does not push another tenant's entry out either: its entries being
// prepared are its own holding, and its admissions evict its own entries.
func TestPreparedCacheFairWhilePreparing(t *testing.T) {
	ctx := context.Background()
	release := make(chan struct{})
	var calls atomic.Int64
	c := newPreparedCache(4, 1<<30, func(cfg *configv1.HostnameConfig) (*decision.Hostname, error) {
		calls.Add(1)
		if cfg.GetTenantId() == "acme" {
			<-release
		}
		return decision.Prepare(cfg)
	})
	if _, err := c.get(ctx, "globex", offConfig("globex", "shop.globex.example", "g")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if _, err := c.get(ctx, "acme", offConfig("acme", "pay.acme.example", fmt.Sprint("a", i))); err != nil {
				t.Error(err)
			}
		})
	}
	for calls.Load() < 9 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if _, err := c.get(ctx, "globex", offConfig("globex", "shop.globex.example", "g")); err != nil || calls.Load() != 9 {
		t.Errorf("8 configurations of acme's prepared at once pushed globex's out (%d calls of Prepare, want 9; %v)", calls.Load(), err)
	}
	if n := len(c.entries); n > 4 {
		t.Errorf("%d entries kept, the bound is 4", n)
	}
}

// TestPreparedCacheConcurrent: callers asking at once for a configuration being prepared wait for
// it rather than prepare it again, a caller whose context ends stops waiting, and a panic of
// Prepare fails the waiting callers instead of leaving them waiting.
func TestPreparedCacheConcurrent(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	c := newPreparedCache(8, 1<<30, func(cfg *configv1.HostnameConfig) (*decision.Hostname, error) {
		calls.Add(1)
		<-release
		if cfg.GetPolicy().GetRules()[0].GetName() == "boom" {
			panic("boom")
		}
		return decision.Prepare(cfg)
	})
	cfg := offConfig("acme", "pay.acme.example", "all")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := c.get(context.Background(), "acme", offConfig("acme", "pay.acme.example", "all"))
			errs <- err
		})
	}
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.get(ctx, "acme", cfg); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("waiting past the context's deadline: %v", err)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("9 concurrent callers: %d calls of Prepare; want 1", n)
	}

}

// TestPreparedCachePanic: when Prepare panics, the caller that prepares panics, a caller waiting
// for the same configuration gets an error instead of waiting for ever, and nothing is kept.
func TestPreparedCachePanic(t *testing.T) {
	var calls atomic.Int64
	started, release := make(chan struct{}), make(chan struct{})
	c := newPreparedCache(8, 1<<30, func(cfg *configv1.HostnameConfig) (*decision.Hostname, error) {
		if calls.Add(1) == 1 {
			close(started)
			<-release
			panic("boom")
		}
		return decision.Prepare(cfg)
	})
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = c.get(context.Background(), "acme", offConfig("acme", "pay.acme.example", "all"))
	}()
	<-started
	waiting := make(chan error, 1)
	go func() {
		_, err := c.get(context.Background(), "acme", offConfig("acme", "pay.acme.example", "all"))
		waiting <- err
	}()
	time.Sleep(20 * time.Millisecond) // the second caller finds the entry and waits
	close(release)
	if r := <-panicked; r != "boom" {
		t.Errorf("the preparing caller recovered %v, want the panic", r)
	}
	select {
	case err := <-waiting:
		// Had it come after the entry was dropped, it would have prepared the configuration itself.
		if err == nil && calls.Load() != 2 {
			t.Error("a caller waiting for a configuration whose preparation panicked got no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a caller waiting for a configuration whose preparation panicked is still waiting")
	}
	key, _ := configKey("acme", offConfig("acme", "pay.acme.example", "all"))
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[key]; e != nil && e.Value.(*preparedEntry).err != nil {
		t.Error("the failed preparation is kept in the cache")
	}
}
