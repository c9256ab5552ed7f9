package command

import (
	"context"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"guestlist.dev/projections/fold"
	"guestlist.dev/services/eventstore"
)

// directory is the sorted list of tenant ids, kept by reading the TenantCreated events of the
// global log incrementally.
type directory struct {
	store eventstore.Store

	mu  sync.Mutex
	ids []string // sorted
	pos eventstore.Position
}

// sync reads the TenantCreated events written since the last sync.
func (d *directory) sync(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	filter := eventstore.Filter{StreamPrefixes: []string{fold.TenantStreamPrefix}, EventTypePrefixes: []string{fold.TypeTenantCreated}}
	last, err := d.store.LastPosition(ctx)
	if err != nil {
		return status.Error(codes.Unavailable, "reading the event store failed")
	}
	for d.pos < last {
		evs, err := d.store.ReadAll(ctx, d.pos, 1024, filter)
		if err != nil {
			return status.Error(codes.Unavailable, "reading the event store failed")
		}
		if len(evs) == 0 {
			d.pos = last
			break
		}
		for _, ev := range evs {
			d.insert(ev.Stream[len(fold.TenantStreamPrefix):])
			d.pos = ev.Position
		}
	}
	return nil
}

// add records a tenant created by this process before the next sync sees it.
func (d *directory) add(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.insert(id)
}

func (d *directory) insert(id string) {
	i, found := slices.BinarySearch(d.ids, id)
	if !found {
		d.ids = slices.Insert(d.ids, i, id)
	}
}

// page returns up to n ids after the given one, and whether more follow.
func (d *directory) page(after string, n int) ([]string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, found := slices.BinarySearch(d.ids, after)
	if found {
		i++
	}
	rest := d.ids[i:]
	if len(rest) > n {
		return slices.Clone(rest[:n]), true
	}
	return slices.Clone(rest), false
}
