package boltstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/services/eventstore"
)

// Deferred indexing.
//
// The log and the stream heads are written by every commit. The stream and eventid indexes are
// derived from the log, and writing them with every commit would cost two B+tree leaves per
// append (each stream's entries sit in their own leaves), which is most of a commit's work.
// So a commit keeps the index entries of its appends in memory (the overlay), and every
// indexFlush-th entry or so, one commit writes all of them to the index buckets together with
// the meta key "indexed", the position up to which the index buckets are complete. Close writes
// what is left. After a crash, Open indexes the log after "indexed" before anything else. The
// log, which is fsynced with every commit, stays the only source of truth.
//
// Readers of the indexes (ReadStream) hold overlayMu for reading while their read transaction
// runs; the committer changes the overlay under overlayMu after its commit. So a reader whose
// transaction does not see a flush also sees the overlay from before it, and a reader may see
// an entry in both, which ReadStream tolerates.

// indexEntry is the index entry of one event.
type indexEntry struct {
	stream string
	rev    uint64
	pos    eventstore.Position
	id     eventstore.UUID
}

type idKey struct {
	stream string
	id     eventstore.UUID
}

// streamTail is the overlay of one stream: the positions of revisions first, first+1, ...
type streamTail struct {
	first uint64
	pos   []eventstore.Position
}

// memIndex holds index entries in memory.
type memIndex struct {
	entries []indexEntry
	ids     map[idKey]idEntry
	tails   map[string]*streamTail
}

func newMemIndex() *memIndex {
	return &memIndex{ids: make(map[idKey]idEntry), tails: make(map[string]*streamTail)}
}

func (m *memIndex) add(e indexEntry) {
	m.entries = append(m.entries, e)
	m.ids[idKey{e.stream, e.id}] = idEntry{pos: e.pos, rev: e.rev}
	t := m.tails[e.stream]
	if t == nil {
		t = &streamTail{first: e.rev}
		m.tails[e.stream] = t
	}
	t.pos = append(t.pos, e.pos)
}

func (m *memIndex) lookup(stream string, id eventstore.UUID) (idEntry, bool) {
	e, ok := m.ids[idKey{stream, id}]
	return e, ok
}

func (m *memIndex) reset() {
	clear(m.entries)
	m.entries = m.entries[:0]
	clear(m.ids)
	clear(m.tails)
}

// writeIndex writes the index entries es to the index buckets. It sorts es.
func (s *Store) writeIndex(b buckets, es []indexEntry) error {
	slices.SortFunc(es, func(a, b indexEntry) int {
		return cmp.Or(cmp.Compare(a.stream, b.stream), cmp.Compare(a.rev, b.rev))
	})
	for i := range es {
		e := &es[i]
		s.key = slices.Grow(streamPrefix(s.key[:0], e.stream), 16)
		plen := len(s.key)
		off := len(s.arena)
		s.arena = posKey(s.arena, e.pos)
		s.arena = binary.BigEndian.AppendUint64(s.arena, e.rev)
		posRev := s.arena[off:]
		if err := b.stream.Put(binary.BigEndian.AppendUint64(s.key[:plen], e.rev), posRev[:8]); err != nil {
			return fmt.Errorf("write stream index: %w", err)
		}
		if err := b.eventID.Put(append(s.key[:plen], e.id[:]...), posRev); err != nil {
			return fmt.Errorf("write event id index: %w", err)
		}
	}
	return nil
}

// catchUpIndex indexes the log after the position in the meta key "indexed" (what a crash left
// unindexed) and moves "indexed" to the end of the log.
func catchUpIndex(tx *bolt.Tx, last eventstore.Position) (int, error) {
	meta := tx.Bucket(bucketMeta)
	var indexed eventstore.Position
	if v := meta.Get(keyIndexed); v != nil {
		p, err := readUint64(v, "indexed position")
		if err != nil {
			return 0, err
		}
		indexed = eventstore.Position(p)
	}
	if indexed > last {
		return 0, fmt.Errorf("indexed position %d past the end of the log %d: %w", indexed, last, errCorrupt)
	}
	if indexed == last && meta.Get(keyIndexed) != nil {
		return 0, nil
	}
	s := &Store{}
	b := buckets{stream: tx.Bucket(bucketStream), eventID: tx.Bucket(bucketEventID)}
	c := tx.Bucket(bucketLog).Cursor()
	var es []indexEntry
	for k, v := c.Seek(posKey(nil, indexed+1)); k != nil; k, v = c.Next() {
		p, err := readUint64(k, "log key")
		if err != nil {
			return 0, err
		}
		h, err := decodeHeader(v)
		if err != nil {
			return 0, fmt.Errorf("position %d: %w", p, err)
		}
		es = append(es, indexEntry{stream: string(h.stream), rev: h.revision, pos: eventstore.Position(p), id: h.id})
	}
	if err := s.writeIndex(b, es); err != nil {
		return 0, err
	}
	if err := meta.Put(keyIndexed, posKey(nil, last)); err != nil {
		return 0, fmt.Errorf("write indexed position: %w", err)
	}
	return len(es), nil
}

// streamPositions returns the positions of up to n events of stream from revision from in
// direction dir, from the index bucket c and the overlay tail t (which may be nil), up to
// position limit.
func streamPositions(c *bolt.Cursor, stream string, t *streamTail, dir eventstore.Direction, from uint64, n int, limit eventstore.Position) ([]eventstore.Position, error) {
	var out []eventstore.Position
	prefix := streamPrefix(nil, stream)
	key := func(rev uint64) []byte { return binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), rev) }
	revOf := func(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(prefix):]) }
	ok := func(k []byte) bool { return len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix) }

	if dir == eventstore.Forwards {
		next := from // the next revision wanted
		for k, v := c.Seek(key(from)); ok(k) && len(out) < n; k, v = c.Next() {
			p, err := readUint64(v, "stream index value")
			if err != nil {
				return nil, err
			}
			if eventstore.Position(p) > limit {
				return out, nil
			}
			out = append(out, eventstore.Position(p))
			next = revOf(k) + 1
		}
		if t != nil {
			for rev := max(next, t.first); rev-t.first < uint64(len(t.pos)) && len(out) < n; rev++ {
				p := t.pos[rev-t.first]
				if p > limit {
					break
				}
				out = append(out, p)
			}
		}
		return out, nil
	}

	// Backwards: the overlay holds the newest revisions.
	next := from // the next revision wanted, downwards
	if t != nil && len(t.pos) > 0 {
		top := t.first + uint64(len(t.pos)) - 1
		for rev := min(from, top); rev >= t.first && len(out) < n; rev-- {
			if p := t.pos[rev-t.first]; p <= limit {
				out = append(out, p)
			}
			if rev == 0 {
				return out, nil
			}
		}
		if from >= t.first {
			if t.first == 0 {
				return out, nil
			}
			next = t.first - 1
		}
	}
	k, v := c.Seek(key(next))
	switch {
	case k == nil:
		k, v = c.Last()
	case !bytes.Equal(k, key(next)):
		k, v = c.Prev()
	}
	for ; ok(k) && len(out) < n; k, v = c.Prev() {
		p, err := readUint64(v, "stream index value")
		if err != nil {
			return nil, err
		}
		if eventstore.Position(p) <= limit {
			out = append(out, eventstore.Position(p))
		}
	}
	return out, nil
}
