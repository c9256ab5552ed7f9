package configset

import (
	"hash/maphash"
	"maps"
	"math/bits"
	"slices"

	"guestlist.dev/edge/decision"
)

// The set's map from hostname to *decision.Hostname is a persistent hash array mapped trie
// (HAMT, Bagwell 2001): a tree of nodes with up to 32 slots, indexed by 5 bits of the hostname's
// 64-bit hash at each level (shifts 0, 5, ..., 60), holding either an entry or a child node.
// A node stores only its occupied slots, located through a 32-bit bitmap.
//
// Updates copy the path from the root to the changed slot (at most about log32(n) nodes: 4 for a
// million hostnames) and share everything else with the previous version, which stays valid and
// unchanged for its readers. Within one Apply, nodes created by that Apply (marked with its edit
// number) are modified in place instead of copied again, so a snapshot of n hostnames is built
// with O(n) allocations and a delta of k changes costs O(k log32 n), whatever the set's size.
//
// Hostnames whose 64-bit hashes are equal (hashes are seeded per Store, so this is chance, about
// n²/2⁶⁵) end up below the last level, in a collision node searched linearly.

const (
	levelBits = 5
	levelMask = 1<<levelBits - 1
	maxShift  = 60 // the last level (bits 60 to 63)
)

type node struct {
	edit   uint64 // the Apply that made this node: only it may modify the node in place
	bitmap uint32 // bit i: slot for index i is present (unused in a collision node)
	coll   bool   // a collision node: entries with equal hashes, searched linearly
	slots  []slot
}

// slot is a child node (sub != nil) or an entry (h != nil), named h.Name(). It is kept small (two
// words) because an update copies the slots of the nodes on its path.
type slot struct {
	sub *node
	h   *decision.Hostname
}

func index(hash uint64, shift uint) uint32 { return uint32(hash>>shift) & levelMask }

// position returns where index i's slot is (or would be) in n.slots, and whether it is present.
func (n *node) position(i uint32) (int, bool) {
	bit := uint32(1) << i
	return bits.OnesCount32(n.bitmap & (bit - 1)), n.bitmap&bit != 0
}

// lookup returns the entry for name, or nil.
func lookup(n *node, hash uint64, name string) *decision.Hostname {
	for shift := uint(0); n != nil; shift += levelBits {
		if n.coll {
			for i := range n.slots {
				if n.slots[i].h.Name() == name {
					return n.slots[i].h
				}
			}
			return nil
		}
		pos, ok := n.position(index(hash, shift))
		if !ok {
			return nil
		}
		s := &n.slots[pos]
		if s.sub == nil {
			if s.h.Name() == name {
				return s.h
			}
			return nil
		}
		n = s.sub
	}
	return nil
}

// walk calls yield for every entry, until it returns false; it reports whether to go on.
func walk(n *node, yield func(string, *decision.Hostname) bool) bool {
	if n == nil {
		return true
	}
	for i := range n.slots {
		s := &n.slots[i]
		if s.sub != nil {
			if !walk(s.sub, yield) {
				return false
			}
		} else if !yield(s.h.Name(), s.h) {
			return false
		}
	}
	return true
}

// txn modifies a trie for one Apply.
type txn struct {
	edit   uint64
	seed   maphash.Seed             // the set's hash seed
	hashOf func(name string) uint64 // replaces the seeded hash in tests
}

// hash returns the hash of a hostname.
func (t *txn) hash(name string) uint64 {
	if t.hashOf != nil {
		return t.hashOf(name)
	}
	return maphash.String(t.seed, name)
}

// editable returns n itself if this Apply made it, else a copy that this Apply may modify.
func (t *txn) editable(n *node) *node {
	if n.edit == t.edit {
		return n
	}
	return &node{edit: t.edit, bitmap: n.bitmap, coll: n.coll, slots: slices.Clone(n.slots)}
}

// insert sets the entry h, whose name's hash is hash, in the trie n at level shift, returning the
// new trie and whether the entry is new (rather than replacing one of the same name).
func (t *txn) insert(n *node, shift uint, hash uint64, h *decision.Hostname) (*node, bool) {
	s := slot{h: h}
	if n == nil {
		return &node{edit: t.edit, bitmap: 1 << index(hash, shift), slots: []slot{s}}, true
	}
	if n.coll {
		n = t.editable(n)
		for i := range n.slots {
			if n.slots[i].h.Name() == h.Name() {
				n.slots[i] = s
				return n, false
			}
		}
		n.slots = append(n.slots, s)
		return n, true
	}
	i := index(hash, shift)
	pos, ok := n.position(i)
	if !ok {
		n = t.editable(n)
		n.bitmap |= 1 << i
		n.slots = slices.Insert(n.slots, pos, s)
		return n, true
	}
	cur := n.slots[pos]
	switch {
	case cur.sub != nil:
		sub, added := t.insert(cur.sub, shift+levelBits, hash, h)
		if sub != cur.sub {
			n = t.editable(n)
			n.slots[pos].sub = sub
		}
		return n, added
	case cur.h.Name() == h.Name():
		n = t.editable(n)
		n.slots[pos] = s
		return n, false
	default:
		n = t.editable(n)
		n.slots[pos] = slot{sub: t.pair(cur, t.hash(cur.h.Name()), s, hash, shift+levelBits)}
		return n, true
	}
}

// pair returns a trie at level shift holding the two entries a and b (of different names, whose
// hashes are ha and hb).
func (t *txn) pair(a slot, ha uint64, b slot, hb uint64, shift uint) *node {
	if shift > maxShift { // all 64 bits are equal
		return &node{edit: t.edit, coll: true, slots: []slot{a, b}}
	}
	ia, ib := index(ha, shift), index(hb, shift)
	if ia == ib {
		return &node{edit: t.edit, bitmap: 1 << ia, slots: []slot{{sub: t.pair(a, ha, b, hb, shift+levelBits)}}}
	}
	if ia > ib {
		a, b = b, a
	}
	return &node{edit: t.edit, bitmap: 1<<ia | 1<<ib, slots: []slot{a, b}}
}

// remove deletes the entry for name from the trie n at level shift, returning the new trie (nil
// when empty) and whether there was such an entry.
func (t *txn) remove(n *node, shift uint, hash uint64, name string) (*node, bool) {
	if n == nil {
		return nil, false
	}
	if n.coll {
		i := slices.IndexFunc(n.slots, func(s slot) bool { return s.h.Name() == name })
		if i < 0 {
			return n, false
		}
		if len(n.slots) == 1 {
			return nil, true
		}
		n = t.editable(n)
		n.slots = slices.Delete(n.slots, i, i+1)
		return n, true
	}
	i := index(hash, shift)
	pos, ok := n.position(i)
	if !ok {
		return n, false
	}
	cur := n.slots[pos]
	if cur.sub != nil {
		sub, removed := t.remove(cur.sub, shift+levelBits, hash, name)
		if !removed {
			return n, false
		}
		n = t.editable(n)
		switch {
		case sub == nil:
			n.bitmap &^= 1 << i
			n.slots = slices.Delete(n.slots, pos, pos+1)
		case !sub.coll && len(sub.slots) == 1 && sub.slots[0].sub == nil:
			// A lone entry moves up, so that the trie stays as shallow as its content needs.
			n.slots[pos] = sub.slots[0]
		default:
			n.slots[pos].sub = sub
		}
	} else {
		if cur.h.Name() != name {
			return n, false
		}
		n = t.editable(n)
		n.bitmap &^= 1 << i
		n.slots = slices.Delete(n.slots, pos, pos+1)
	}
	if len(n.slots) == 0 {
		return nil, true
	}
	return n, true
}

// diff calls changed for every entry of trie b that trie a lacks or holds as another entry (a
// different *decision.Hostname), and gone for every name of a that b lacks, until one of them
// returns false; it reports whether it went to the end. Both tries must hash names with the same
// seed (those of one Store do). Parts that the two tries share (the same node) are skipped, so
// the cost is that of the parts that differ: for b made from a by Applys of k changes in all,
// O(k log32 n), not O(n).
func diff(a, b *node, shift uint, changed func(*decision.Hostname) bool, gone func(string) bool) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil || a.coll || b.coll {
		return diffEntries(slot{sub: a}, slot{sub: b}, changed, gone)
	}
	for both := a.bitmap | b.bitmap; both != 0; both &= both - 1 {
		i := uint32(bits.TrailingZeros32(both))
		var sa, sb slot
		if pos, ok := a.position(i); ok {
			sa = a.slots[pos]
		}
		if pos, ok := b.position(i); ok {
			sb = b.slots[pos]
		}
		var ok bool
		switch {
		case sa.sub != nil && sb.sub != nil:
			ok = diff(sa.sub, sb.sub, shift+levelBits, changed, gone)
		case sa.sub == nil && sb.sub == nil && sa.h == sb.h:
			ok = true // the same entry (or none on either side: not reached)
		default:
			// An entry on one side or both, a subtree or nothing on the other: few entries
			// differ here, or the subtree's entries are changes.
			ok = diffEntries(sa, sb, changed, gone)
		}
		if !ok {
			return false
		}
	}
	return true
}

// diffEntries is diff for the entries of two slots (a zero slot has none), compared by name.
func diffEntries(a, b slot, changed func(*decision.Hostname) bool, gone func(string) bool) bool {
	before := map[string]*decision.Hostname{}
	each := func(s slot, f func(string, *decision.Hostname) bool) bool {
		if s.sub != nil {
			return walk(s.sub, f)
		}
		if s.h != nil {
			return f(s.h.Name(), s.h)
		}
		return true
	}
	each(a, func(name string, h *decision.Hostname) bool { before[name] = h; return true })
	if !each(b, func(name string, h *decision.Hostname) bool {
		old, had := before[name]
		delete(before, name)
		return (had && old == h) || changed(h)
	}) {
		return false
	}
	for _, name := range slices.Sorted(maps.Keys(before)) {
		if !gone(name) {
			return false
		}
	}
	return true
}
