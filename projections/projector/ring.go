package projector

import "sort"

// ring keeps the most recent changes, oldest first. Every change after start is in it.
type ring struct {
	entries []ringEntry // entries[head:] are live
	head    int
	bytes   int
	// start is the position before the oldest retained change: the checkpoint at Open, or the
	// position of the last evicted change.
	start      uint64
	maxChanges int
	maxBytes   int
}

type ringEntry struct {
	change Change
	size   int
}

func (r *ring) len() int { return len(r.entries) - r.head }

// push appends c (whose position is beyond every retained change's) and evicts the oldest changes
// beyond the limits, always keeping c.
func (r *ring) push(c Change, size int) {
	r.entries = append(r.entries, ringEntry{change: c, size: size})
	r.bytes += size
	for r.len() > 1 && (r.len() > r.maxChanges || r.bytes > r.maxBytes) {
		e := &r.entries[r.head]
		r.start = e.change.Position
		r.bytes -= e.size
		*e = ringEntry{}
		r.head++
	}
	if r.head > 64 && r.head > len(r.entries)/2 {
		n := copy(r.entries, r.entries[r.head:])
		clear(r.entries[n:])
		r.entries, r.head = r.entries[:n], 0
	}
}

// after returns up to max changes after position pos, or ErrCompacted.
func (r *ring) after(pos uint64, max int) ([]Change, error) {
	if pos < r.start {
		return nil, ErrCompacted
	}
	live := r.entries[r.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].change.Position > pos })
	n := min(len(live)-i, max)
	if n <= 0 {
		return nil, nil
	}
	out := make([]Change, n)
	for j := range out {
		out[j] = live[i+j].change
	}
	return out, nil
}
