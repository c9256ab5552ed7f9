// Package configset is the edge's in-memory set of prepared hostname configurations: a [Store]
// holds the current [Set], an immutable snapshot that the TLS handshake and the request path read
// without locks, and replaces it atomically with each response of the control plane's Watch
// stream ([Store.Apply]). [Store.Save] and [Store.LoadFile] keep a copy on disk, so that an edge
// restarts with its last configuration when the control plane is unreachable.
//
// # Scale
//
// A Set is built for a million hostnames. It is a persistent hash trie (see trie.go): applying a
// delta of k changes copies O(k log32 n) small nodes and shares the rest with the previous Set,
// instead of copying a map of n entries; readers of the previous Set are unaffected. Preparing the
// hostnames ([decision.Prepare]) goes through one [decision.Cache] per Store, so that hostnames
// with the same CAs, revocations or policy share one parsed and compiled copy, and one copy of the
// lists of CAs, revocations and rules their configurations carry ([decision.Hostname.ShareLists]:
// Apply and LoadFile own the configurations they are given); large responses are prepared on all
// CPUs. A response sent in parts is prepared part by part as it arrives ([Store.Prepare], then
// [Store.ApplyPrepared]; LoadFile does so too), so that a large snapshot is never held whole
// with a copy of every shared list per hostname; a [PartPreparer] does so on a goroutine of its
// own while the next part is received or read.
//
// The package does no network I/O; Save and LoadFile read and write the one file they are given.
package configset

import (
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"iter"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/edge/decision"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// Set is an immutable snapshot of the edge's configuration: the prepared hostnames and the
// event-store position they reflect. It is safe for concurrent use. The zero Set and a nil *Set
// are empty.
type Set struct {
	root     *node
	n        int
	position uint64
	seed     maphash.Seed
	// complete: the set was made from a snapshot (or a file), so it is the whole configuration at
	// its position, and changes may apply to it.
	complete bool
	// refused are the hostnames of the configuration at this position that the set leaves out
	// because their configuration could not be prepared (see Store.Apply), sorted.
	refused []string
	// historyToken is the history token of position (see HistoryToken).
	historyToken []byte
}

// Lookup returns the prepared configuration of a hostname, given in normal form (see
// dnsname.NormalizeSNI), and whether there is one. Inactive hostnames are found too: the edge
// treats them as unknown (h.Active() is false), and decision.Decide denies them.
func (s *Set) Lookup(hostname string) (*decision.Hostname, bool) {
	if s == nil || s.root == nil {
		return nil, false
	}
	h := lookup(s.root, maphash.String(s.seed, hostname), hostname)
	return h, h != nil
}

// Position returns the event-store position the set reflects (0 for none).
func (s *Set) Position() uint64 {
	if s == nil {
		return 0
	}
	return s.position
}

// HistoryToken returns the history token of the set's position, as the response that brought the
// set there carried it (configv1.WatchResponse.history_token), or nil when it carried none. It is
// opaque to the edge, which sends it back when it resumes (WatchRequest.history_token). The slice
// must not be modified.
func (s *Set) HistoryToken() []byte {
	if s == nil {
		return nil
	}
	return s.historyToken
}

// Len returns the number of hostnames.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Complete reports whether the set is a whole configuration: made from a snapshot of the control
// plane (possibly followed by changes) or loaded from a file. A new Store's set is not complete.
func (s *Set) Complete() bool { return s != nil && s.complete }

// Refused returns the hostnames that the configuration at the set's position has but the set
// leaves out, because their configuration could not be prepared (Store.Apply), sorted. They are
// kept until a later response brings a configuration of theirs that can be prepared, or removes
// them; a snapshot starts the list afresh. The slice must not be modified.
func (s *Set) Refused() []string {
	if s == nil {
		return nil
	}
	return s.refused
}

// All yields every hostname and its prepared configuration, in no particular order.
func (s *Set) All() iter.Seq2[string, *decision.Hostname] {
	return func(yield func(string, *decision.Hostname) bool) {
		if s != nil {
			walk(s.root, yield)
		}
	}
}

// Store holds the edge's current Set. Load is lock-free; Apply and LoadFile are serialised among
// themselves and publish a new Set atomically, so a reader sees either the old or the new
// configuration, never a mix. A Store is safe for concurrent use.
type Store struct {
	mu    sync.Mutex // held by writers
	cur   atomic.Pointer[Set]
	cache *decision.Cache
	seed  maphash.Seed
	edits uint64 // the last Apply's edit number (trie.go); guarded by mu
	// loaded is the file the last LoadFile loaded whole, holding exactly the set loaded (for
	// StateFile), or one it loaded leaving a tail out (torn); nil when that LoadFile did neither
	// (it failed, found no file, or refused a hostname); guarded by mu.
	loaded *loadedFile
}

// NewStore returns a store holding an empty, incomplete set at position 0.
func NewStore() *Store {
	st := &Store{cache: decision.NewCache(), seed: maphash.MakeSeed()}
	st.cur.Store(&Set{seed: st.seed})
	return st
}

// Load returns the current set. It does not lock and does not allocate.
func (st *Store) Load() *Set { return st.cur.Load() }

// Apply applies a Watch response to the current set and publishes the result, atomically.
//
// An upsert whose configuration cannot be prepared ([decision.Cache.Prepare]: a policy this
// edge's version cannot compile, a CA that does not parse) does not hold up the others: its
// hostname is left out of the set (and removed, if the set had it), so that the edge refuses it as
// it refuses an unknown hostname rather than serve a configuration its tenant has replaced (say,
// one trusting a CA since removed); the rest is applied, and Apply returns a *RefusedError naming
// each hostname left out, the set being at the response's position. Any other error leaves the set
// as it was (the edge then sends a NACK and keeps its last good configuration).
//
// A snapshot replaces the whole set; a change (snapshot = false) upserts and removes hostnames
// in the current set. A response sent in parts (more = true on all but the last) must be joined
// with [Merge] first. Refused: a position lower than the current set's (equal is accepted: the
// same configuration again), unless the response is a snapshot marked replaces_history (the event
// store no longer has the set's history: the watch lets it through only in answer to its hello),
// replaces_history on a change, a change before any snapshot, removals in a snapshot, a hostname
// upserted twice or both upserted and removed, an upsert whose version is beyond the response's
// position.
//
// Apply takes resp over: the caller must not modify it afterwards, nor read it while Apply runs.
// Apply may replace an upsert's certificate_authorities, revocations and policy rules with equal
// lists it already holds ([decision.Hostname.ShareLists]), so that hostnames of the same CAs and
// policies share one copy of them. A hostname whose configuration the set holds already, equal
// ([proto.Equal]), keeps its prepared entry, and the upsert is replaced in resp by the equal
// configuration the entry holds: what preparing makes of a configuration depends on its content
// alone, and a snapshot that repeats the set then costs a comparison a hostname rather than a
// preparation, with the new set sharing the old one's entries.
func (st *Store) Apply(resp *configv1.WatchResponse) error {
	return st.ApplyPrepared(resp, nil)
}

// Prepare prepares the upserts of one part of a response sent in parts, as the parts arrive,
// and returns them prepared, for [Store.ApplyPrepared] of the whole response. Preparing shares the
// lists of CAs, revocations and rules between hostnames that have the same ones
// ([decision.Hostname.ShareLists]), so that the copies each part brings are garbage at once,
// instead of when the whole response has arrived: a snapshot of many hostnames is then never held
// whole and unshared. Prepare takes the upserts over, as Apply does; it changes nothing of the set.
// Like Apply, it keeps the entry of a hostname whose configuration the current set holds, equal,
// and replaces that upsert in the slice with the entry's equal configuration, so that
// ApplyPrepared of the joined response (joined after Prepare returned) takes the entry as that
// upsert's without comparing again. The result holds nil for an upsert that could not be
// prepared (ApplyPrepared says why).
func (st *Store) Prepare(upserts []*configv1.HostnameConfig) []*decision.Hostname {
	out, _ := st.prepare(upserts, nil)
	return out
}

// PartPreparer prepares the parts of one response sent in parts with [Store.Prepare], in the
// order they are given, on a goroutine of its own, so that a part is prepared while the caller
// receives or reads the next one. Add returns once the part is queued; at most two parts wait, so
// that a caller faster than the preparing holds no more than that. Wait returns what was
// prepared, for [Store.ApplyPrepared] of the joined response. Wait must be called once, after the
// last Add, also for a response given up half way: it ends the goroutine. A PartPreparer is used
// by one goroutine.
type PartPreparer struct {
	parts    chan []*configv1.HostnameConfig
	done     chan struct{}
	prepared []*decision.Hostname // written by the preparing goroutine until done is closed
}

// NewPartPreparer starts preparing the parts of one response for st.
func (st *Store) NewPartPreparer() *PartPreparer {
	p := &PartPreparer{parts: make(chan []*configv1.HostnameConfig, 2), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for upserts := range p.parts {
			p.prepared = append(p.prepared, st.Prepare(upserts)...)
		}
	}()
	return p
}

// Add queues one part's upserts, which it takes over as [Store.Prepare] does (it may replace
// some in the slice: join the parts only after Wait); it blocks while two parts wait.
func (p *PartPreparer) Add(upserts []*configv1.HostnameConfig) {
	p.parts <- upserts
}

// Wait waits until every part added is prepared, ends the preparing goroutine, and returns the
// prepared hostnames of all parts in order.
func (p *PartPreparer) Wait() []*decision.Hostname {
	close(p.parts)
	<-p.done
	return p.prepared
}

// ApplyPrepared is Apply, for a response whose upserts were prepared by [Store.Prepare]:
// prepared[i] is resp's upserts[i] prepared (for a response joined with [Merge], the results of
// Prepare for its parts, in order). An entry that is nil, or is not that upsert's (a prepared
// hostname is used only for the configuration it was prepared from: its Config is the upsert),
// is prepared again, or kept from the set as Apply keeps one.
func (st *Store) ApplyPrepared(resp *configv1.WatchResponse, prepared []*decision.Hostname) error {
	if resp == nil {
		return errors.New("configset: no response to apply")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.apply(resp, nil, prepared)
}

// RefusedError is Apply's report of the hostnames it left out of a response it applied.
type RefusedError struct {
	// Position is the response's position, where the set now is.
	Position uint64
	// Refused are the hostnames left out, in the order of the response's upserts.
	Refused []RefusedHostname
}

// RefusedHostname is a hostname Apply left out, and why.
type RefusedHostname struct {
	// Hostname is the name the upsert gave.
	Hostname string
	// Index is the upsert's index in the response.
	Index int
	// Err is why its configuration could not be prepared.
	Err error
}

// Error names the response's position and the first hostnames left out, each with its index
// among the upserts and why.
func (e *RefusedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "configset: response at position %d applied without %d hostname(s) whose configuration could not be prepared:", e.Position, len(e.Refused))
	const named = 10 // the message names the first ones
	for i, r := range e.Refused[:min(len(e.Refused), named)] {
		if i > 0 {
			b.WriteByte(';')
		}
		fmt.Fprintf(&b, " upserts[%d] (%q): %v", r.Index, r.Hostname, r.Err)
	}
	if n := len(e.Refused) - named; n > 0 {
		fmt.Fprintf(&b, "; and %d more", n)
	}
	return b.String()
}

// apply is Apply, with st.mu held; refusedBefore are the hostnames a saved set had left out
// (LoadFile), which a snapshot keeps refused; ready are upserts prepared before (see
// ApplyPrepared).
func (st *Store) apply(resp *configv1.WatchResponse, refusedBefore []string, ready []*decision.Hostname) error {
	next, err := st.applyTo(st.cur.Load(), resp, refusedBefore, ready)
	if next != nil {
		st.cur.Store(next)
	}
	return err
}

// applyTo returns the set that applying resp to cur makes, without publishing it, with st.mu
// held (it numbers the edit): the set and nil, or the set and a *RefusedError naming the
// hostnames it leaves out, or nil and why resp cannot be applied. LoadFile applies a file's
// changes so, publishing only the last set.
func (st *Store) applyTo(cur *Set, resp *configv1.WatchResponse, refusedBefore []string, ready []*decision.Hostname) (*Set, error) {
	pos := resp.GetPosition()
	fail := func(format string, args ...any) error {
		return fmt.Errorf("configset: response at position %d: %s", pos, fmt.Sprintf(format, args...))
	}
	switch {
	case resp.GetMore():
		return nil, fail("it is a part of a larger response (more = true); join the parts with Merge and apply the result")
	case resp.GetReplacesHistory() && !resp.GetSnapshot():
		return nil, fail("a change marked replaces_history; only a snapshot can replace the history")
	case pos < cur.position && !resp.GetReplacesHistory():
		return nil, fail("the position goes backwards: the configuration is at position %d", cur.position)
	case !resp.GetSnapshot() && !cur.complete:
		return nil, fail("a change, but no snapshot was applied before")
	case resp.GetSnapshot() && len(resp.GetRemovals()) > 0:
		return nil, fail("a snapshot with %d removals", len(resp.GetRemovals()))
	}
	upserts := resp.GetUpserts()
	for i, u := range upserts {
		if u == nil {
			return nil, fail("upserts[%d] is empty", i)
		}
		if u.GetVersion() > pos {
			return nil, fail("upserts[%d] (%q) has version %d, beyond the response's position", i, u.GetHostname(), u.GetVersion())
		}
	}
	if !resp.GetSnapshot() {
		// A snapshot's duplicates are found while building it (below); a change's here, as
		// replacing an existing entry is what a change does.
		seen := make(map[string]int, len(upserts))
		for i, u := range upserts {
			if j, dup := seen[u.GetHostname()]; dup {
				return nil, fail("upserts[%d] and upserts[%d] are both %q", j, i, u.GetHostname())
			}
			seen[u.GetHostname()] = i
		}
		for i, name := range resp.GetRemovals() {
			if j, dup := seen[name]; dup {
				return nil, fail("%q is both upserted (upserts[%d]) and removed (removals[%d])", name, j, i)
			}
		}
	}
	prepared, errs := st.prepare(upserts, ready)
	var refused []RefusedHostname
	refusedNames := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			if refusedNames[upserts[i].GetHostname()] {
				// Both copies of a hostname left out: a duplicate all the same.
				return nil, fail("hostname %q is upserted twice (again at upserts[%d])", upserts[i].GetHostname(), i)
			}
			refused = append(refused, RefusedHostname{Hostname: upserts[i].GetHostname(), Index: i, Err: err})
			refusedNames[upserts[i].GetHostname()] = true
		}
	}

	st.edits++
	t := &txn{edit: st.edits, seed: st.seed}
	next := &Set{position: pos, seed: st.seed, complete: true, historyToken: resp.GetHistoryToken()}
	if !resp.GetSnapshot() {
		next.root, next.n = cur.root, cur.n
	}
	remove := func(name string) {
		var removed bool
		next.root, removed = t.remove(next.root, 0, t.hash(name), name)
		if removed {
			next.n--
		}
	}
	for _, name := range resp.GetRemovals() {
		remove(name)
	}
	for _, r := range refused {
		remove(r.Hostname)
	}
	for i, h := range prepared {
		if h == nil {
			continue // refused
		}
		name := h.Name()
		var added bool
		next.root, added = t.insert(next.root, 0, t.hash(name), h)
		if added {
			next.n++
		}
		if resp.GetSnapshot() && (!added || refusedNames[name]) {
			// (A change's duplicates were refused above, before anything was prepared.)
			return nil, fail("hostname %q is upserted twice (again at upserts[%d])", name, i)
		}
	}
	next.refused = nextRefused(cur, resp, refusedBefore, refusedNames)
	if len(refused) > 0 {
		return next, &RefusedError{Position: pos, Refused: refused}
	}
	return next, nil
}

// nextRefused returns the refused hostnames of the set that applying resp to cur makes: for a
// snapshot, those it refused (and, from a file, those the saved set had); for a change, cur's,
// less those the change upserted or removed, plus those it refused.
func nextRefused(cur *Set, resp *configv1.WatchResponse, before []string, refused map[string]bool) []string {
	var names []string
	if resp.GetSnapshot() {
		names = append(names, before...)
	} else if len(cur.refused) > 0 {
		touched := make(map[string]bool, len(resp.GetUpserts())+len(resp.GetRemovals()))
		for _, u := range resp.GetUpserts() {
			touched[u.GetHostname()] = true
		}
		for _, r := range resp.GetRemovals() {
			touched[r] = true
		}
		for _, name := range cur.refused {
			if !touched[name] {
				names = append(names, name)
			}
		}
	}
	for name := range refused {
		names = append(names, name)
	}
	if len(names) == 0 {
		return nil
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// prepareChunk is how many upserts a worker prepares at a time; responses up to this size are
// prepared on the calling goroutine.
const prepareChunk = 256

// prepare prepares the upserts, on all CPUs when there are many: out[i] is upserts[i] prepared,
// or nil and errs[i] why it could not be (errs is nil when every upsert was prepared). ready[i],
// when it is upserts[i] prepared before, is used as it is.
func (st *Store) prepare(upserts []*configv1.HostnameConfig, ready []*decision.Hostname) (out []*decision.Hostname, errs []error) {
	out = make([]*decision.Hostname, len(upserts))
	var failed atomic.Bool
	all := make([]error, len(upserts))
	// A hostname whose configuration the current set holds already, equal, keeps its prepared
	// entry: a snapshot that repeats most of the set (after a reconnection the control plane
	// could not serve with changes) costs a lookup and a comparison a hostname, not a
	// preparation, and the new set shares the old one's entries instead of holding a second copy
	// of everything while it is built. What Prepare makes of a configuration depends on its
	// content alone, so the entry is the one it would make.
	cur := st.cur.Load()
	reused := make([]bool, len(upserts))
	one := func(i int) {
		if i < len(ready) && ready[i] != nil && ready[i].Config == upserts[i] {
			out[i] = ready[i]
			return
		}
		if old, ok := cur.Lookup(upserts[i].GetHostname()); ok && proto.Equal(old.Config, upserts[i]) {
			// The upsert becomes the entry's equal configuration, so that a later ApplyPrepared
			// with this result recognises the entry as the upsert's.
			out[i], reused[i], upserts[i] = old, true, old.Config
			return
		}
		h, err := st.cache.Prepare(upserts[i])
		if err != nil {
			all[i] = err
			failed.Store(true)
			return
		}
		out[i] = h
	}
	chunks := (len(upserts) + prepareChunk - 1) / prepareChunk
	workers := min(runtime.GOMAXPROCS(0), chunks)
	if workers <= 1 {
		for i := range upserts {
			one(i)
		}
	} else {
		// Each chunk is claimed by one worker, which alone writes its indexes of out and all.
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for {
					c := int(next.Add(1) - 1)
					if c >= chunks {
						return
					}
					for i := c * prepareChunk; i < min((c+1)*prepareChunk, len(upserts)); i++ {
						one(i)
					}
				}
			})
		}
		wg.Wait()
	}
	// On this goroutine alone: configurations of one response may share messages (a caller's
	// Policy given to several, say), which ShareLists writes.
	for i, h := range out {
		if h != nil && !reused[i] { // a reused entry is in use, its lists shared already
			h.ShareLists()
		}
	}
	if failed.Load() {
		return out, all
	}
	return out, nil
}

// CheckPart checks that p, part i of a response sent in parts whose part 0 is first, belongs to
// the same response: the same position, snapshot flag, replaces_history flag and history token.
// [Merge] checks every part so; a receiver checks each as it arrives, before it works on it.
func CheckPart(first, p *configv1.WatchResponse, i int) error {
	switch {
	case p == nil:
		return fmt.Errorf("configset: part %d is empty", i)
	case p.GetPosition() != first.GetPosition():
		return fmt.Errorf("configset: part %d is at position %d, part 0 at %d", i, p.GetPosition(), first.GetPosition())
	case p.GetSnapshot() != first.GetSnapshot():
		return fmt.Errorf("configset: part %d has snapshot = %v, part 0 %v", i, p.GetSnapshot(), first.GetSnapshot())
	case p.GetReplacesHistory() != first.GetReplacesHistory():
		return fmt.Errorf("configset: part %d has replaces_history = %v, part 0 %v", i, p.GetReplacesHistory(), first.GetReplacesHistory())
	case !bytes.Equal(p.GetHistoryToken(), first.GetHistoryToken()):
		return fmt.Errorf("configset: part %d has another history token than part 0", i)
	}
	return nil
}

// Merge joins the parts of one Watch response sent in parts (a large snapshot): all have the same
// position, snapshot flag, history token and replaces_history flag, more = true on every part but
// the last. A single complete response is returned as is.
func Merge(parts ...*configv1.WatchResponse) (*configv1.WatchResponse, error) {
	if len(parts) == 0 {
		return nil, errors.New("configset: no parts to merge")
	}
	if len(parts) == 1 && parts[0] != nil && !parts[0].GetMore() {
		return parts[0], nil
	}
	first := parts[0]
	if first == nil {
		return nil, errors.New("configset: part 0 is empty")
	}
	out := &configv1.WatchResponse{Position: first.GetPosition(), Snapshot: first.GetSnapshot(), HistoryToken: first.GetHistoryToken(), ReplacesHistory: first.GetReplacesHistory()}
	for i, p := range parts {
		last := i == len(parts)-1
		if err := CheckPart(first, p, i); err != nil {
			return nil, err
		}
		switch {
		case p.GetMore() && last:
			return nil, fmt.Errorf("configset: the last part (%d) has more = true: parts are missing", i)
		case !p.GetMore() && !last:
			return nil, fmt.Errorf("configset: part %d has more = false but is not the last", i)
		}
		out.Upserts = append(out.Upserts, p.GetUpserts()...)
		out.Removals = append(out.Removals, p.GetRemovals()...)
	}
	return out, nil
}
