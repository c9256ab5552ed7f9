package policy

import (
	"fmt"
	"maps"
	"math/bits"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// evalState is the activation of one Evaluate call. It is pooled, and it holds the CEL values of
// the input's objects, lists and header map inline, so that selecting `cert.subject` or
// `cert.dns_names` allocates nothing; strings and timestamps are boxed at most once per call.
//
// Input bounds: while guarded is false, every getter checks that the value it hands to CEL is
// within the bounds the cost estimate assumes. A value beyond them is never handed out: the getter
// sets oob and returns an error instead, and Evaluate evaluates the rule again, and the remaining
// rules, with the cost-tracking programs (guarded). So the unguarded programs only ever see input
// within the bounds, and their cost stays within the estimate, without any up-front scan of the
// input.
type evalState struct {
	in                             *Input
	cert, subject, issuer, request objVal
	lists                          [numLists]stringList
	headers                        headerMap
	cache                          [numCached]ref.Val
	listsChecked                   uint8 // bit i: lists[i] was found within bounds
	guarded, oob                   bool
	// headersGot, headersTested: the current rule read request.headers, or tested it with
	// has(), while they are unknown (RequestInput.HeadersUnknown).
	headersGot, headersTested bool
	cached                    uint16        // bit i: cache[i] is set
	iters                     [4]stringIter // handed out by stringList.Iterator
	nIters, itersUsed         int           // in use by the current rule; high-water mark
	// frame is the execution frame of the untracked programs; passing it to Eval spares the
	// interpreter taking one from its pool for every rule.
	frame interpreter.ExecutionFrame
	// regexLeft is what the regular expressions of the current guarded rule may still cost.
	regexLeft uint64
}

var statePool = sync.Pool{New: func() any {
	st := &evalState{}
	st.cert = objVal{st: st, t: certType}
	st.subject = objVal{st: st, t: subjectType}
	st.issuer = objVal{st: st, t: issuerType}
	st.request = objVal{st: st, t: requestType}
	for i := range st.lists {
		st.lists[i].st = st
	}
	st.headers.st = st
	st.frame.Activation = st
	return st
}}

func acquireState(in *Input) *evalState {
	st := statePool.Get().(*evalState)
	st.in = in
	st.lists[listDNS].s = in.Cert.DNSNames
	st.lists[listEmail].s = in.Cert.EmailAddresses
	st.lists[listURI].s = in.Cert.URIs
	st.lists[listOU].s = in.Cert.Subject.OrganizationalUnit
	st.lists[listOrg].s = in.Cert.Subject.Organization
	st.headers.h = in.Request.Headers
	return st
}

func (st *evalState) release() {
	st.in = nil
	for i := range st.lists {
		st.lists[i].s = nil
	}
	st.headers.h, st.headers.keys, st.headers.longest, st.headers.low, st.headers.joined, st.headers.count = nil, nil, 0, nil, nil, 0
	// Clear only what was used: clearing pointers costs write barriers while the GC runs.
	for m := st.cached; m != 0; m &= m - 1 {
		st.cache[bits.TrailingZeros16(m)] = nil
	}
	st.cached = 0
	clear(st.iters[:st.itersUsed])
	st.nIters, st.itersUsed = 0, 0
	st.listsChecked = 0
	st.guarded, st.oob = false, false
	st.headersGot, st.headersTested = false, false
	statePool.Put(st)
}

// outOfBounds records that the input exceeds the bounds of the cost estimate and returns the
// error that the unguarded evaluation sees instead of the value.
func (st *evalState) outOfBounds() ref.Val {
	st.oob = true
	return types.NewErr("input exceeds the bounds assumed by the cost estimate")
}

// ResolveName implements interpreter.Activation.
func (st *evalState) ResolveName(name string) (any, bool) {
	switch name {
	case "cert":
		return &st.cert, true
	case "request":
		return &st.request, true
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (st *evalState) Parent() interpreter.Activation { return nil }

func listWithin(l []string, item int) bool {
	if len(l) > boundListItems {
		return false
	}
	for _, s := range l {
		if len(s) > item {
			return false
		}
	}
	return true
}

// objVal is the CEL value of `cert`, `cert.subject`, `cert.issuer` and `request`.
type objVal struct {
	st *evalState
	t  *objType
}

var (
	_ traits.Indexer     = (*objVal)(nil)
	_ traits.FieldTester = (*objVal)(nil)
)

// ConvertToNative implements ref.Val.
func (o *objVal) ConvertToNative(typeDesc reflect.Type) (any, error) {
	return nil, fmt.Errorf("type conversion error from '%s' to '%v'", o.t.name, typeDesc)
}

// ConvertToType implements ref.Val.
func (o *objVal) ConvertToType(typeVal ref.Type) ref.Val {
	if typeVal == types.TypeType {
		return o.t.celType
	}
	return types.NewErr("type conversion error from '%s' to '%s'", o.t.name, typeVal.TypeName())
}

// Equal implements ref.Val: an input object equals only itself.
func (o *objVal) Equal(other ref.Val) ref.Val {
	p, ok := other.(*objVal)
	return types.Bool(ok && p == o)
}

// Type implements ref.Val.
func (o *objVal) Type() ref.Type { return o.t.celType }

// Value implements ref.Val. The field getters receive this value.
func (o *objVal) Value() any { return o }

// Get implements traits.Indexer (dynamic field access).
func (o *objVal) Get(index ref.Val) ref.Val {
	name, ok := index.(types.String)
	if !ok {
		return types.ValOrErr(index, "no such overload")
	}
	f, ok := o.t.fields[string(name)]
	if !ok {
		return types.NewErr("no such field '%s' on type %s", string(name), o.t.name)
	}
	return f.get(o.st)
}

// IsSet implements traits.FieldTester.
func (o *objVal) IsSet(index ref.Val) ref.Val {
	name, ok := index.(types.String)
	if !ok {
		return types.ValOrErr(index, "no such overload")
	}
	f, ok := o.t.fields[string(name)]
	if !ok {
		return types.NewErr("no such field '%s' on type %s", string(name), o.t.name)
	}
	return types.Bool(f.isSet(o.st))
}

// stringList is a CEL list(string) over a []string of the input, without copying or boxing the
// elements up front. Membership tests compare strings directly.
type stringList struct {
	st *evalState
	s  []string
}

var _ traits.Lister = (*stringList)(nil)

func (l *stringList) generic() traits.Lister {
	return types.NewStringList(types.DefaultTypeAdapter, l.s)
}

// Add implements traits.Adder (list concatenation).
func (l *stringList) Add(other ref.Val) ref.Val { return l.generic().Add(other) }

// Contains implements traits.Container.
func (l *stringList) Contains(v ref.Val) ref.Val {
	s, ok := v.(types.String)
	if !ok {
		return l.generic().Contains(v)
	}
	for _, e := range l.s {
		if e == string(s) {
			return types.True
		}
	}
	return types.False
}

// Get implements traits.Indexer.
func (l *stringList) Get(index ref.Val) ref.Val {
	if i, ok := index.(types.Int); ok && i >= 0 && int64(i) < int64(len(l.s)) {
		return types.String(l.s[i])
	}
	return l.generic().Get(index)
}

// Iterator implements traits.Iterable.
func (l *stringList) Iterator() traits.Iterator {
	if st := l.st; st != nil && st.nIters < len(st.iters) {
		it := &st.iters[st.nIters]
		st.nIters++
		st.itersUsed = max(st.itersUsed, st.nIters)
		*it = stringIter{s: l.s}
		return it
	}
	return &stringIter{s: l.s}
}

// Size implements traits.Sizer.
func (l *stringList) Size() ref.Val { return types.Int(len(l.s)) }

// ConvertToNative implements ref.Val.
func (l *stringList) ConvertToNative(typeDesc reflect.Type) (any, error) {
	return l.generic().ConvertToNative(typeDesc)
}

// ConvertToType implements ref.Val.
func (l *stringList) ConvertToType(typeVal ref.Type) ref.Val {
	return l.generic().ConvertToType(typeVal)
}

// Equal implements ref.Val.
func (l *stringList) Equal(other ref.Val) ref.Val { return l.generic().Equal(other) }

// Type implements ref.Val.
func (l *stringList) Type() ref.Type { return types.ListType }

// Value implements ref.Val.
func (l *stringList) Value() any { return l.s }

// stringIter iterates over a []string.
type stringIter struct {
	s []string
	i int
}

func (it *stringIter) ConvertToNative(reflect.Type) (any, error) {
	return nil, fmt.Errorf("type conversion on iterators not supported")
}
func (it *stringIter) ConvertToType(ref.Type) ref.Val { return types.NewErr("no such overload") }
func (it *stringIter) Equal(ref.Val) ref.Val          { return types.NewErr("no such overload") }
func (it *stringIter) Type() ref.Type                 { return types.IteratorType }
func (it *stringIter) Value() any                     { return nil }
func (it *stringIter) HasNext() ref.Val               { return types.Bool(it.i < len(it.s)) }
func (it *stringIter) Next() ref.Val {
	if it.i >= len(it.s) {
		return nil
	}
	s := it.s[it.i]
	it.i++
	return types.String(s)
}

// lowerASCII lower-cases ASCII letters, allocating only when there is one to change.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			var b strings.Builder
			b.Grow(len(s))
			b.WriteString(s[:i])
			for j := i; j < len(s); j++ {
				c := s[j]
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				b.WriteByte(c)
			}
			return b.String()
		}
	}
	return s
}

// headerMap is the CEL map(string, string) `request.headers` over an http.Header: keys are seen in
// lower case, several values of one header are joined by ", ".
type headerMap struct {
	st   *evalState
	h    http.Header
	keys []string // the lower-case names, once iterated
	// longest is 1 + the length of the longest name, once a key was looked up (0: not yet).
	longest int
	// low is lowered's result, built once per evaluation and guard (lowGuarded: m.guarded() when
	// it was built): comparing the map (request.headers == {}) builds it, which takes up to
	// 100 µs for 64 headers of 4 KiB, and a rule may compare it hundreds of times.
	low        map[string]string
	lowGuarded bool
	// joined holds the values of the headers sent more than once that were looked up, joined.
	joined map[string]string
	// count is 1 + the number of headers with a value, once counted (0: not yet).
	count int
}

var _ traits.Mapper = (*headerMap)(nil)

// values returns the values of the header whose lower-case name is key. Keys with upper-case
// letters never match: the CEL map has lower-case keys only.
func (m *headerMap) values(key string) []string {
	if len(m.h) == 0 || key == "" {
		return nil
	}
	if m.longest == 0 {
		for k := range m.h {
			m.longest = max(m.longest, len(k)+1)
		}
	}
	if len(key) >= m.longest {
		// No name is that long: do not copy and hash a key that may be a header's value (up to
		// 4 KiB within the bounds, 64 KiB beyond), which `in` and indexing charge one unit.
		return nil
	}
	var buf [256]byte
	var b []byte
	if len(key) <= len(buf) {
		b = buf[:len(key)]
	} else {
		b = make([]byte, len(key)) // only for names beyond the bounds (guarded evaluation)
	}
	upper := true
	for i := 0; i < len(key); i++ {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			return nil
		}
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		b[i] = c
		upper = c == '-'
	}
	// The conversion in the index expression does not allocate.
	if vs, ok := m.h[string(b)]; ok {
		return vs
	}
	// Non-canonical keys (names with characters textproto leaves alone, or a Header built by hand).
	return m.h[key]
}

// lookup returns the (joined) value of a header. With checkSize, a value beyond the bounds of
// the cost estimate is replaced by the out-of-bounds error (unless guarded).
func (m *headerMap) lookup(key string, checkSize bool) (ref.Val, bool) {
	vs := m.values(key)
	switch len(vs) {
	case 0:
		return nil, false
	case 1:
		if checkSize && len(vs[0]) > boundHeaderValue && !m.guarded() {
			return m.st.outOfBounds(), true
		}
		return types.String(vs[0]), true
	}
	if !checkSize {
		return nil, true // Contains: found, whatever the value
	}
	n := 2 * (len(vs) - 1)
	for _, v := range vs {
		n += len(v)
	}
	if n > boundHeaderValue && !m.guarded() {
		return m.st.outOfBounds(), true
	}
	// Joined once per evaluation: a rule may look the header up hundreds of times, each charged
	// one unit, and joining copies up to 4 KiB (64 KiB beyond the bounds).
	v, ok := m.joined[key]
	if !ok {
		v = strings.Join(vs, ", ")
		if m.joined == nil {
			m.joined = make(map[string]string)
		}
		m.joined[key] = v
	}
	return types.String(v), true
}

func (m *headerMap) guarded() bool { return m.st == nil || m.st.guarded }

func (m *headerMap) size() int {
	if m.count == 0 {
		// Counted once per evaluation: size() and has() are charged one unit, and a request
		// beyond the bounds may have thousands of headers.
		m.count = 1
		for _, vs := range m.h {
			if len(vs) > 0 {
				m.count++
			}
		}
	}
	return m.count - 1
}

// lowered returns the map as CEL sees it. Unless guarded, a map beyond the bounds of the cost
// estimate records that and yields an empty map (the evaluation is then repeated, guarded).
func (m *headerMap) lowered() map[string]string {
	if m.low != nil && m.lowGuarded == m.guarded() {
		return m.low
	}
	m.low, m.lowGuarded = m.lower(), m.guarded()
	return m.low
}

// lower builds the map lowered returns.
func (m *headerMap) lower() map[string]string {
	out := make(map[string]string, len(m.h))
	// In the order of the names, so that of two names differing only in case (a Header built by
	// hand) the same one wins every time: the canonical one, which sorts first, as in values.
	for _, k := range slices.Sorted(maps.Keys(m.h)) {
		lk := lowerASCII(k)
		if _, dup := out[lk]; dup {
			continue
		}
		if vs := m.h[k]; len(vs) > 0 {
			out[lk] = strings.Join(vs, ", ")
		}
	}
	if !m.guarded() {
		for k, v := range out {
			if len(k) > boundHeaderName || len(v) > boundHeaderValue {
				m.st.oob = true
				return map[string]string{}
			}
		}
	}
	return out
}

func (m *headerMap) generic() traits.Mapper {
	return types.NewStringStringMap(types.DefaultTypeAdapter, m.lowered())
}

// Find implements traits.Mapper.
func (m *headerMap) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return m.generic().Find(key)
	}
	return m.lookup(string(k), true)
}

// Contains implements traits.Container.
func (m *headerMap) Contains(key ref.Val) ref.Val {
	k, ok := key.(types.String)
	if !ok {
		return m.generic().Contains(key)
	}
	_, found := m.lookup(string(k), false)
	return types.Bool(found)
}

// Get implements traits.Indexer.
func (m *headerMap) Get(key ref.Val) ref.Val {
	if v, found := m.Find(key); found {
		return v
	}
	return types.ValOrErr(key, "no such key: %v", key)
}

// Iterator implements traits.Iterable; it yields the lower-case header names, sorted and each
// once. The order must not be the map's: a tracked evaluation that stops at its cost limit part-way
// through a comprehension would then allow or fail a request at random, and the audit could not
// re-derive the edge's verdict. Unless guarded, a name beyond the bounds of the cost estimate
// records that and yields nothing (the evaluation is then repeated, guarded).
func (m *headerMap) Iterator() traits.Iterator {
	if m.keys == nil {
		keys := make([]string, 0, len(m.h))
		for k, vs := range m.h {
			if len(k) > boundHeaderName && !m.guarded() {
				m.st.oob = true
				return &stringIter{}
			}
			if len(vs) > 0 {
				keys = append(keys, lowerASCII(k))
			}
		}
		slices.Sort(keys)
		m.keys = slices.Compact(keys)
	}
	return &stringIter{s: m.keys}
}

// Size implements traits.Sizer.
func (m *headerMap) Size() ref.Val { return types.Int(m.size()) }

// ConvertToNative implements ref.Val.
func (m *headerMap) ConvertToNative(typeDesc reflect.Type) (any, error) {
	return m.generic().ConvertToNative(typeDesc)
}

// ConvertToType implements ref.Val.
func (m *headerMap) ConvertToType(typeVal ref.Type) ref.Val {
	return m.generic().ConvertToType(typeVal)
}

// Equal implements ref.Val.
func (m *headerMap) Equal(other ref.Val) ref.Val { return m.generic().Equal(other) }

// Type implements ref.Val.
func (m *headerMap) Type() ref.Type { return types.MapType }

// Value implements ref.Val.
func (m *headerMap) Value() any { return m.lowered() }
