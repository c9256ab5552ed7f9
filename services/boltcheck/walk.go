package boltcheck

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/bits"
	"strconv"
	"strings"
)

// The file format of bbolt v1.4 (go.etcd.io/bbolt/internal/common), in the machine's byte order:
//
//	page header (16 bytes)   id uint64, flags uint16, count uint16, overflow uint32
//	branch element (16)      pos uint32, ksize uint32, pgid uint64   (key at element + pos)
//	leaf element (16)        flags uint32, pos uint32, ksize uint32, vsize uint32
//	                         (key at element + pos, the value right after it)
//	meta (after the header)  magic, version, pageSize, flags uint32; root bucket {root pgid,
//	                         sequence uint64}; freelist, pgid (high-water mark), txid, checksum
//	                         uint64; checksum = FNV-64a of the 56 bytes before it
//	bucket value             {root pgid, sequence uint64}, then, when root is 0 (an inline
//	                         bucket), a leaf page of its own
//	freelist page            count page ids (uint64); count 0xFFFF: the first id is the count
const (
	pageHeaderSize  = 16
	elementSize     = 16
	bucketHeaderLen = 16
	metaLen         = 64
	metaSumLen      = 56

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10

	leafFlagBucket = 0x01

	magic         = 0xED0CDAED
	formatVersion = 2
	noFreelist    = ^uint64(0)

	// The page sizes bbolt tries when the first meta page is unreadable: 1 KiB << 0..14.
	minPageSize = 1 << 10
	maxPageSize = 1 << 24
)

var order = binary.NativeEndian

// problem is a damage found by the walk; Check turns it into a *DamageError.
type problem struct{ msg string }

func (p *problem) Error() string { return p.msg }

func damagef(format string, args ...any) error {
	return &problem{msg: fmt.Sprintf(format, args...)}
}

// meta is a decoded meta page.
type meta struct {
	magic, version, pageSize uint32
	root, freelist, hwm      uint64
	txid, checksum           uint64
	sum                      uint64 // the checksum computed over the page
}

func decodeMeta(b []byte) meta {
	m := meta{
		magic:    order.Uint32(b[0:]),
		version:  order.Uint32(b[4:]),
		pageSize: order.Uint32(b[8:]),
		root:     order.Uint64(b[16:]),
		freelist: order.Uint64(b[32:]),
		hwm:      order.Uint64(b[40:]),
		txid:     order.Uint64(b[48:]),
		checksum: order.Uint64(b[56:]),
	}
	h := fnv.New64a()
	_, _ = h.Write(b[:metaSumLen])
	m.sum = h.Sum64()
	return m
}

// invalid says why bbolt would refuse m (Meta.Validate), or "" when it would not.
func (m meta) invalid() string {
	switch {
	case m.magic != magic:
		return "no bbolt magic number"
	case m.version != formatVersion:
		return fmt.Sprintf("format version %d, not %d", m.version, formatVersion)
	case m.checksum != m.sum:
		return "checksum mismatch"
	}
	return ""
}

// metaAt decodes the meta page at byte offset off of data; ok is false when data ends before it.
func metaAt(data []byte, off uint64) (m meta, ok bool) {
	if off > uint64(len(data)) || uint64(len(data))-off < pageHeaderSize+metaLen {
		return meta{}, false
	}
	return decodeMeta(data[off+pageHeaderSize:]), true
}

// pageSize finds the page size as bbolt does (getPageSize): from the first meta page, else from a
// valid second meta page at 1 KiB << i.
func pageSize(data []byte) (uint64, bool) {
	// bbolt reads 4 KiB at offset 0 and needs all of it.
	if len(data) >= 0x1000 {
		if m, _ := metaAt(data, 0); m.invalid() == "" {
			return uint64(m.pageSize), true
		}
	}
	size := uint64(len(data))
	for i := range 15 {
		pos := uint64(1024) << i
		if pos+1024 >= size {
			break
		}
		if m, ok := metaAt(data, pos); ok && m.invalid() == "" {
			return uint64(m.pageSize), true
		}
	}
	return 0, false
}

// walker checks the pages of one file in memory (data, mapped by Check).
type walker struct {
	data []byte
	ps   uint64 // page size
	hwm  uint64 // pages below this id are the file's

	used  []uint64 // bitmap: pages reached from the meta page
	freed []uint64 // bitmap: pages the stored free list names (files with a synced free list)

	buckets []string // names of the buckets being walked, for messages
	depth   int      // pages and buckets being walked, nested
	rep     *Report
}

// maxDepth bounds the nesting of pages and buckets the walk follows. A B+tree of bbolt's is at
// most a few levels deep and guestlist nests three buckets; a damaged file could chain pages
// without end.
const maxDepth = 1000

func newBitmap(n uint64) []uint64 { return make([]uint64, (n+63)/64) }
func bitSet(b []uint64, i uint64) bool {
	return b != nil && b[i/64]&(1<<(i%64)) != 0
}
func setBit(b []uint64, i uint64) { b[i/64] |= 1 << (i % 64) }

// run checks the whole file and fills rep.
func (w *walker) run() error {
	size := uint64(len(w.data))
	ps, ok := pageSize(w.data)
	if !ok {
		if size < 2*minPageSize {
			return damagef("the file is %d bytes, too short to be a bbolt file", size)
		}
		m, ok := metaAt(w.data, 0)
		if ok && m.invalid() == "" {
			// A valid first meta page in a file shorter than the 4 KiB bbolt reads to find the
			// page size (pageSize trusts it from 4 KiB on).
			return damagef("the file is %d bytes, shorter than the 4,096 bytes bbolt reads for its first meta page (a truncated copy?)", size)
		}
		why := "unreadable"
		if ok {
			why = m.invalid()
		}
		return damagef("neither meta page is valid (page 0: %s; no valid page 1 at any page size)", why)
	}
	if ps < minPageSize || ps > maxPageSize {
		return damagef("meta page: page size %d is out of range", ps)
	}
	if size < 2*ps {
		return damagef("the file is %d bytes, shorter than its two meta pages of %d bytes", size, ps)
	}
	w.ps = ps
	m0, _ := metaAt(w.data, 0)
	m1, _ := metaAt(w.data, ps)
	// bbolt's choice (DB.meta): the valid one of the higher transaction id, else the other.
	newer, older, newerID, olderID := m0, m1, 0, 1
	if m1.txid > m0.txid {
		newer, older, newerID, olderID = m1, m0, 1, 0
	}
	m := newer
	switch bad0, bad1 := newer.invalid(), older.invalid(); {
	case bad0 == "" && bad1 != "":
		w.rep.MetaFallback = fmt.Sprintf("meta page %d is invalid (%s); using meta page %d (transaction %d)", olderID, bad1, newerID, newer.txid)
	case bad0 != "" && bad1 == "":
		m = older
		w.rep.MetaFallback = fmt.Sprintf("the newest meta page, %d, is invalid (%s); using meta page %d (transaction %d): "+
			"the last transaction written before it is lost", newerID, bad0, olderID, older.txid)
	case bad0 != "" && bad1 != "":
		return damagef("neither meta page is valid (page %d: %s; page %d: %s)", newerID, bad0, olderID, bad1)
	}
	if uint64(m.pageSize) != ps {
		return damagef("meta page: page size %d, but the file's first valid meta page says %d", m.pageSize, ps)
	}
	w.rep.Txid = m.txid
	w.hwm = m.hwm
	w.rep.Pages = m.hwm
	if m.hwm < 3 {
		return damagef("meta page: high-water mark %d is below the first data page", m.hwm)
	}
	if m.hwm > size/ps {
		return damagef("the file is %d bytes, shorter than the %d pages of %d bytes its meta page counts (a truncated copy?)",
			size, m.hwm, ps)
	}
	w.used = newBitmap(w.hwm)
	setBit(w.used, 0)
	setBit(w.used, 1)
	w.rep.InUse = 2
	if m.freelist != noFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return err
		}
	}
	if err := w.tree(m.root, nil, nil, "the meta page", true); err != nil {
		return err
	}
	return nil
}

// page returns the bytes of page id (with its overflow pages), referenced from `from`, after
// checking that it lies in the file, that its header names it, and that nothing else references it.
func (w *walker) page(id uint64, from string) (body []byte, flags uint16, count int, err error) {
	if id < 2 || id >= w.hwm {
		return nil, 0, 0, damagef("page %d: %s points to it, outside the data pages 2..%d", id, from, w.hwm-1)
	}
	off := id * w.ps
	hdr := w.data[off : off+pageHeaderSize]
	hid, flags, count, overflow := order.Uint64(hdr), order.Uint16(hdr[8:]), int(order.Uint16(hdr[10:])), uint64(order.Uint32(hdr[12:]))
	if hid != id {
		return nil, 0, 0, damagef("page %d: its header says page %d (%s points to it; overwritten or misplaced)", id, hid, from)
	}
	if overflow >= w.hwm-id {
		return nil, 0, 0, damagef("page %d: %d overflow pages run past the high-water mark %d", id, overflow, w.hwm)
	}
	for p := id; p <= id+overflow; p++ {
		if bitSet(w.used, p) {
			return nil, 0, 0, damagef("page %d: referenced twice (again by %s)", p, from)
		}
		if bitSet(w.freed, p) {
			return nil, 0, 0, damagef("page %d: in use (by %s) and also in the free list", p, from)
		}
		setBit(w.used, p)
	}
	w.rep.InUse += overflow + 1
	return w.data[off : off+(overflow+1)*w.ps], flags, count, nil
}

// freelist checks the stored free list at page id and records the pages it names.
func (w *walker) freelist(id uint64) error {
	body, flags, count, err := w.page(id, "the meta page's free list")
	if err != nil {
		return err
	}
	if flags != flagFreelist {
		return damagef("page %d: %s where the free list belongs", id, aPage(flags))
	}
	start := uint64(pageHeaderSize)
	n := uint64(count)
	if count == 0xFFFF {
		if uint64(len(body)) < start+8 {
			return damagef("page %d: free list count past the page", id)
		}
		n = order.Uint64(body[start:])
		start += 8
	}
	if n > (uint64(len(body))-start)/8 {
		return damagef("page %d: free list of %d ids does not fit its page", id, n)
	}
	w.freed = newBitmap(w.hwm)
	for i := range n {
		f := order.Uint64(body[start+8*i:])
		if f < 2 || f >= w.hwm {
			return damagef("page %d: the free list names page %d, outside the data pages 2..%d", id, f, w.hwm-1)
		}
		if bitSet(w.freed, f) {
			return damagef("page %d: the free list names page %d twice", id, f)
		}
		if bitSet(w.used, f) {
			return damagef("page %d: the free list names page %d, which is in use", id, f)
		}
		setBit(w.freed, f)
	}
	return nil
}

// where names the bucket being walked.
func (w *walker) where() string {
	if len(w.buckets) == 0 {
		return "the root bucket"
	}
	return "bucket " + strings.Join(w.buckets, "/")
}

// aPage names a page of type flags: "a leaf page".
func aPage(flags uint16) string {
	switch flags {
	case flagBranch:
		return "a branch page"
	case flagLeaf:
		return "a leaf page"
	case flagMeta:
		return "a meta page"
	case flagFreelist:
		return "a free-list page"
	}
	return fmt.Sprintf("a page of unknown type %#x", flags)
}

// branchElem is one element of a branch page.
type branchElem struct {
	key   []byte
	child uint64
}

// tree checks the subtree at page id, whose keys must lie in [lo, hi) (nil: unbounded), and the
// buckets stored in its leaves; root says that the page is a bucket's root page. These are the checks of bbolt's (*Tx).recursivelyCheckBucket (which
// bbolt runs at every open of a file without a stored free list, and whose complaints it turns into
// a panic of another goroutine), plus the bounds of every element, key and value.
func (w *walker) tree(id uint64, lo, hi []byte, from string, root bool) error {
	if w.depth++; w.depth > maxDepth {
		return damagef("page %d: more than %d pages and buckets nested (%s points to it)", id, maxDepth, from)
	}
	defer func() { w.depth-- }()
	body, flags, count, err := w.page(id, from)
	if err != nil {
		return err
	}
	switch flags {
	case flagBranch, flagLeaf:
	default:
		return damagef("page %d: %s where a branch or leaf page of %s belongs", id, aPage(flags), w.where())
	}
	if uint64(count)*elementSize > uint64(len(body))-pageHeaderSize {
		return damagef("page %d: %d elements do not fit the page", id, count)
	}
	if flags == flagBranch {
		w.rep.Branches++
		if count == 0 {
			return damagef("page %d: a branch page of %s without elements", id, w.where())
		}
		if count < 2 && !root {
			// bbolt splits and rebalances so that only a root branch page has fewer than two
			// children; it asserts that when it next rebalances below such a page, a panic in the
			// writer's goroutine.
			return damagef("page %d: a branch page of %s below its root with one element", id, w.where())
		}
		elems := make([]branchElem, count)
		prev := lo
		for i := range elems {
			e := pageHeaderSize + i*elementSize
			pos, ksize := uint64(order.Uint32(body[e:])), uint64(order.Uint32(body[e+4:]))
			key, err := slice(body, uint64(e)+pos, ksize)
			if err != nil {
				return damagef("page %d: element %d's key %v", id, i, err)
			}
			err = keyOrder(key, prev, i == 0)
			if err == nil && i == len(elems)-1 {
				err = keyBelow(key, hi)
			}
			if err != nil {
				return damagef("page %d (a branch page of %s): element %d: %v", id, w.where(), i, err)
			}
			elems[i] = branchElem{key: key, child: order.Uint64(body[e+8:])}
			prev = key
		}
		for i, e := range elems {
			next := hi
			if i+1 < len(elems) {
				next = elems[i+1].key
			}
			if err := w.tree(e.child, e.key, next, "branch page "+strconv.FormatUint(id, 10), false); err != nil {
				return err
			}
		}
		return nil
	}
	w.rep.Leaves++
	if count == 0 && !root {
		// bbolt removes a leaf that becomes empty, unless it is the root; one that has no elements
		// would get a second parent element the next time it is written.
		return damagef("page %d: a leaf page of %s below its root without elements", id, w.where())
	}
	return w.leaf(id, body, count, lo, hi, false)
}

// leaf checks the elements of a leaf page (id 0: an inline bucket's page, body its bytes).
func (w *walker) leaf(id uint64, body []byte, count int, lo, hi []byte, inline bool) error {
	what := fmt.Sprintf("page %d", id)
	if inline {
		what = "the inline page of " + w.where()
	}
	prev := lo
	for i := range count {
		e := uint64(pageHeaderSize + i*elementSize)
		flags, pos := order.Uint32(body[e:]), uint64(order.Uint32(body[e+4:]))
		ksize, vsize := uint64(order.Uint32(body[e+8:])), uint64(order.Uint32(body[e+12:]))
		if flags&^leafFlagBucket != 0 {
			return damagef("%s: element %d has unknown flags %#x", what, i, flags)
		}
		key, err := slice(body, e+pos, ksize)
		if err != nil {
			return damagef("%s: element %d's key %v", what, i, err)
		}
		value, err := slice(body, e+pos+ksize, vsize)
		if err != nil {
			return damagef("%s: element %d's value %v", what, i, err)
		}
		if err := keyOrder(key, prev, i == 0); err != nil {
			return damagef("%s (a leaf of %s): element %d: %v", what, w.where(), i, err)
		}
		if i == count-1 {
			if err := keyBelow(key, hi); err != nil {
				return damagef("%s (a leaf of %s): element %d: %v", what, w.where(), i, err)
			}
		}
		prev = key
		w.rep.Keys++
		if flags&leafFlagBucket == 0 {
			continue
		}
		if inline {
			// bbolt never inlines a bucket that holds buckets, and its own walk skips inline
			// buckets: pages reached only through one would count as free.
			return damagef("%s: element %d is a bucket inside an inline bucket", what, i)
		}
		if err := w.bucket(id, key, value); err != nil {
			return err
		}
	}
	return nil
}

// bucket checks the bucket named key whose value is value, stored on leaf page parent.
func (w *walker) bucket(parent uint64, key, value []byte) error {
	w.rep.Buckets++
	w.buckets = append(w.buckets, bucketName(key))
	defer func() { w.buckets = w.buckets[:len(w.buckets)-1] }()
	if len(value) < bucketHeaderLen {
		return damagef("page %d: the value of %s is %d bytes, shorter than a bucket header", parent, w.where(), len(value))
	}
	root := order.Uint64(value)
	if root != 0 {
		return w.tree(root, nil, nil, fmt.Sprintf("%s (on page %d)", w.where(), parent), true)
	}
	p := value[bucketHeaderLen:]
	if len(p) < pageHeaderSize {
		return damagef("page %d: the inline page of %s is %d bytes, shorter than a page header", parent, w.where(), len(p))
	}
	flags, count := order.Uint16(p[8:]), int(order.Uint16(p[10:]))
	if flags != flagLeaf {
		return damagef("page %d: the inline page of %s is %s, not a leaf page", parent, w.where(), aPage(flags))
	}
	if uint64(count)*elementSize > uint64(len(p))-pageHeaderSize {
		return damagef("page %d: the inline page of %s: %d elements do not fit it", parent, w.where(), count)
	}
	return w.leaf(0, p, count, nil, nil, true)
}

// slice returns b[off:off+n], or an error when that is not within b.
func slice(b []byte, off, n uint64) ([]byte, error) {
	end, carry := bits.Add64(off, n, 0)
	if carry != 0 || end > uint64(len(b)) {
		return nil, fmt.Errorf("(%d bytes at offset %d) runs past its page of %d bytes", n, off, len(b))
	}
	return b[off:end], nil
}

// keyOrder checks key against the key before it on its page, or, for the first key, against the
// key of the branch element that leads to its page (which it must equal; bbolt's own check only
// wants it not below); keys are never empty. Keys
// in order within a page are below the page's upper bound when the last one is (keyBelow).
func keyOrder(key, prev []byte, first bool) error {
	switch {
	case len(key) == 0:
		return fmt.Errorf("empty key")
	case first && prev != nil && !bytes.Equal(key, prev):
		// bbolt keeps a branch element's key equal to its child's first key, and relies on it: a
		// node it changes finds its element in the parent by that first key, and when it is not
		// there, it adds a second element for the page, whose old copy is then freed twice (a
		// panic in the writer's goroutine).
		return fmt.Errorf("first key %s is not the key %s that leads to its page", hexKey(key), hexKey(prev))
	case !first && bytes.Compare(key, prev) <= 0:
		return fmt.Errorf("key %s does not sort after the key before it, %s", hexKey(key), hexKey(prev))
	}
	return nil
}

// keyBelow checks that key sorts before the upper bound hi (nil: none) of its page.
func keyBelow(key, hi []byte) error {
	if hi != nil && bytes.Compare(key, hi) >= 0 {
		return fmt.Errorf("key %s does not sort before %s, the key of the next page", hexKey(key), hexKey(hi))
	}
	return nil
}

// hexKey shows a key in hex, shortened.
func hexKey(k []byte) string {
	if len(k) > 24 {
		return fmt.Sprintf("%x...", k[:24])
	}
	return fmt.Sprintf("%x", k)
}

// bucketName shows a bucket's name: quoted when printable, else in hex; shortened.
func bucketName(k []byte) string {
	if len(k) > 48 {
		k = k[:48]
	}
	for _, c := range k {
		if c < 0x20 || c > 0x7e {
			return "0x" + hexKey(k)
		}
	}
	return strconv.Quote(string(k))
}
