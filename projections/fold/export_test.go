package fold

import (
	"fmt"
	"maps"
	"slices"
)

// CheckIndexes returns an error when t's indexes are not what its maps give (nil when t keeps
// none).
func CheckIndexes(t *Tenant) error {
	if t.revsByCA == nil && t.hostsByCA == nil && t.hostsByPolicy == nil {
		return nil // not kept
	}
	revs, byCA, byPolicy := indexesOf(t)
	switch {
	case !maps.EqualFunc(revs, t.revsByCA, maps.Equal):
		return fmt.Errorf("revocations by CA: %v, the map gives %v", t.revsByCA, revs)
	case !maps.EqualFunc(byCA, t.hostsByCA, maps.Equal):
		return fmt.Errorf("hostnames by CA: %v, the map gives %v", slices.Sorted(maps.Keys(t.hostsByCA)), slices.Sorted(maps.Keys(byCA)))
	case !maps.EqualFunc(byPolicy, t.hostsByPolicy, maps.Equal):
		return fmt.Errorf("hostnames by policy: %v, the map gives %v", slices.Sorted(maps.Keys(t.hostsByPolicy)), slices.Sorted(maps.Keys(byPolicy)))
	}
	return nil
}
