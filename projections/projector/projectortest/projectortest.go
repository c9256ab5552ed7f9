// Package projectortest helps test the projector and its consumers: it generates random event
// histories that the control plane would accept, appends them to a real event store, and computes
// the read model that a fold from scratch gives.
package projectortest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore"
)

// Append is one append to one stream.
type Append struct {
	Stream string
	Events []proto.Message
}

// Gen generates random valid histories over a few tenants: CAs added and removed, revocations
// added and removed, policies created, updated and deleted, hostnames created, updated and deleted
// (with their reservations in the hostname streams), and tokens, which no hostname depends on. It
// keeps the rules the control plane enforces: a hostname belongs to one tenant at a time and
// references only its tenant's CAs and policy, and a CA or policy in use cannot be removed.
type Gen struct {
	rnd       *mrand.Rand
	tenants   []string
	hostnames []string
	states    map[string]*fold.Tenant
	owner     map[string]string // hostname -> tenant
	seq       int
	pos       uint64
}

// NewGen returns a generator of histories over tenants tenants and a pool of hostnames hostnames,
// deterministic for seed.
func NewGen(seed uint64, tenants, hostnames int) *Gen {
	g := &Gen{rnd: mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), states: map[string]*fold.Tenant{}, owner: map[string]string{}}
	for i := range tenants {
		g.tenants = append(g.tenants, fmt.Sprintf("t%d", i))
	}
	for i := range hostnames {
		g.hostnames = append(g.hostnames, fmt.Sprintf("h%d.example.com", i))
	}
	return g
}

// Next returns the appends of one or a few commands.
func (g *Gen) Next() []Append {
	tid := g.tenants[g.rnd.IntN(len(g.tenants))]
	st := g.states[tid]
	if st == nil {
		st = fold.NewTenant(tid)
		g.states[tid] = st
		return []Append{{Stream: fold.TenantStream(tid), Events: g.apply(st, &eventsv1.TenantCreated{TenantId: tid, DisplayName: "Tenant " + tid})}}
	}
	// Sometimes several commands in one append, as a batch call or group commit makes them.
	var out []Append
	tenant := Append{Stream: fold.TenantStream(tid)}
	n := 1
	if g.rnd.IntN(5) == 0 {
		n = 2 + g.rnd.IntN(3)
	}
	for range n {
		ms, side := g.command(st)
		tenant.Events = append(tenant.Events, g.apply(st, ms...)...)
		out = append(out, side...)
	}
	if len(tenant.Events) == 0 {
		return out
	}
	return append(out, tenant)
}

// command picks a valid command for st and returns its tenant events and any appends to other
// streams that go with it (hostname reservations).
func (g *Gen) command(st *fold.Tenant) ([]proto.Message, []Append) {
	for {
		switch g.rnd.IntN(14) {
		case 0:
			id := g.id("tok")
			return one(&eventsv1.TokenCreated{TokenId: id, DisplayName: id, Role: eventsv1.Role_ROLE_TENANT_ADMIN, SecretSha256: g.bytes(32)}), nil
		case 1:
			if id, ok := pick(g, keys(st.Tokens)); ok {
				return one(&eventsv1.TokenDeleted{TokenId: id}), nil
			}
		case 2, 3:
			if len(st.CAs) >= 4 {
				continue
			}
			der := g.bytes(40 + g.rnd.IntN(200))
			return one(&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: g.id("ca"), DisplayName: "CA", CertificateDer: der, FingerprintSha256: hex.EncodeToString(der[:16])}), nil
		case 4:
			var free []string
			for id := range st.CAs {
				if !slices.ContainsFunc(values(st.Hostnames), func(h *fold.Hostname) bool { return slices.Contains(h.CertificateAuthorityIDs, id) }) {
					free = append(free, id)
				}
			}
			if id, ok := pick(g, free); ok {
				return one(&eventsv1.CertificateAuthorityRemoved{CertificateAuthorityId: id}), nil
			}
		case 5, 6:
			if ca, ok := pick(g, keys(st.CAs)); ok {
				m := &eventsv1.RevocationAdded{RevocationId: g.id("rev"), CertificateAuthorityId: ca, Reason: "keyCompromise"}
				if g.rnd.IntN(2) == 0 {
					m.Target = &eventsv1.RevocationAdded_SerialNumber{SerialNumber: fmt.Sprintf("%x", 1+g.rnd.Uint64()>>8)}
				} else {
					m.Target = &eventsv1.RevocationAdded_FingerprintSha256{FingerprintSha256: hex.EncodeToString(g.bytes(32))}
				}
				return one(m), nil
			}
		case 7:
			var ks []fold.RevocationKey
			for k := range st.Revocations {
				ks = append(ks, k)
			}
			slices.SortFunc(ks, func(a, b fold.RevocationKey) int {
				if a.CA != b.CA {
					return strings.Compare(a.CA, b.CA)
				}
				return strings.Compare(a.ID, b.ID)
			})
			if len(ks) > 0 {
				k := ks[g.rnd.IntN(len(ks))]
				return one(&eventsv1.RevocationRemoved{RevocationId: k.ID, CertificateAuthorityId: k.CA}), nil
			}
		case 8:
			if len(st.Policies) >= 3 {
				continue
			}
			return one(&eventsv1.PolicyCreated{PolicyId: g.id("pol"), DisplayName: "policy", Rules: g.rules()}), nil
		case 9:
			if id, ok := pick(g, keys(st.Policies)); ok {
				return one(&eventsv1.PolicyUpdated{PolicyId: id, DisplayName: "policy " + g.id("v"), Rules: g.rules()}), nil
			}
		case 10:
			var free []string
			for id := range st.Policies {
				if !slices.ContainsFunc(values(st.Hostnames), func(h *fold.Hostname) bool { return h.PolicyID == id }) {
					free = append(free, id)
				}
			}
			if id, ok := pick(g, free); ok {
				return one(&eventsv1.PolicyDeleted{PolicyId: id}), nil
			}
		case 11:
			var free []string
			for _, h := range g.hostnames {
				if _, owned := g.owner[h]; !owned {
					free = append(free, h)
				}
			}
			if h, ok := pick(g, free); ok {
				g.owner[h] = st.ID
				m := &eventsv1.HostnameCreated{Hostname: h}
				m.OriginUrl, m.Mtls, m.PolicyId, m.State = g.hostnameSettings(st)
				reserve := Append{Stream: fold.HostnameStream(h), Events: []proto.Message{&eventsv1.HostnameReserved{Hostname: h, TenantId: st.ID}}}
				return one(m), []Append{reserve}
			}
		case 12:
			if h, ok := pick(g, keys(st.Hostnames)); ok {
				m := &eventsv1.HostnameUpdated{Hostname: h}
				m.OriginUrl, m.Mtls, m.PolicyId, m.State = g.hostnameSettings(st)
				return one(m), nil
			}
		case 13:
			if h, ok := pick(g, keys(st.Hostnames)); ok {
				delete(g.owner, h)
				release := Append{Stream: fold.HostnameStream(h), Events: []proto.Message{&eventsv1.HostnameReleased{Hostname: h, TenantId: st.ID}}}
				return one(&eventsv1.HostnameDeleted{Hostname: h}), []Append{release}
			}
		}
	}
}

func (g *Gen) hostnameSettings(st *fold.Tenant) (string, *eventsv1.MtlsSettings, string, eventsv1.HostnameState) {
	origin := fmt.Sprintf("http://origin-%d.internal:%d", g.rnd.IntN(3), 8000+g.rnd.IntN(100))
	m := &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode(1 + g.rnd.IntN(3)), RejectInHandshake: g.rnd.IntN(2) == 0}
	for _, ca := range keys(st.CAs) {
		if g.rnd.IntN(2) == 0 {
			m.CertificateAuthorityIds = append(m.CertificateAuthorityIds, ca)
		}
	}
	g.rnd.Shuffle(len(m.CertificateAuthorityIds), func(i, j int) {
		m.CertificateAuthorityIds[i], m.CertificateAuthorityIds[j] = m.CertificateAuthorityIds[j], m.CertificateAuthorityIds[i]
	})
	policy := ""
	if p, ok := pick(g, keys(st.Policies)); ok && g.rnd.IntN(3) > 0 {
		policy = p
	}
	state := eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE
	if g.rnd.IntN(4) == 0 {
		state = eventsv1.HostnameState_HOSTNAME_STATE_PENDING
	}
	return origin, m, policy, state
}

func (g *Gen) rules() []*eventsv1.PolicyRule {
	var out []*eventsv1.PolicyRule
	for i := range 1 + g.rnd.IntN(3) {
		out = append(out, &eventsv1.PolicyRule{Name: fmt.Sprintf("r%d", i), Action: eventsv1.Action(1 + g.rnd.IntN(2)), Expression: fmt.Sprintf("request.path.startsWith('/%s')", g.id("p"))})
	}
	return out
}

// apply folds the generated events into the generator's own state.
func (g *Gen) apply(st *fold.Tenant, ms ...proto.Message) []proto.Message {
	for _, m := range ms {
		data, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		rev := uint64(0)
		if st.Exists {
			rev = st.Revision + 1
		}
		g.pos++
		if err := fold.Apply(st, fold.Event{Type: fold.TypeOf(m), Data: data, Revision: rev, Position: g.pos}); err != nil {
			panic(fmt.Sprintf("projectortest: generated an invalid event: %v", err))
		}
	}
	return ms
}

func (g *Gen) id(prefix string) string {
	g.seq++
	return fmt.Sprintf("%s-%d", prefix, g.seq)
}

func (g *Gen) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.rnd.Uint32())
	}
	return b
}

func one(m proto.Message) []proto.Message { return []proto.Message{m} }

func pick[T any](g *Gen, xs []T) (T, bool) {
	var zero T
	if len(xs) == 0 {
		return zero, false
	}
	return xs[g.rnd.IntN(len(xs))], true
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func values[V any](m map[string]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// Write appends a to store (expecting any revision) with fresh random event ids, and returns
// where it landed.
func Write(ctx context.Context, store eventstore.Store, a Append) (eventstore.AppendResult, error) {
	evs := make([]eventstore.EventData, len(a.Events))
	for i, m := range a.Events {
		data, err := proto.Marshal(m)
		if err != nil {
			return eventstore.AppendResult{}, fmt.Errorf("projectortest: marshal %s: %w", fold.TypeOf(m), err)
		}
		evs[i] = eventstore.EventData{ID: NewID(), Type: fold.TypeOf(m), Data: data, Metadata: eventstore.Metadata{Actor: "admin"}}
	}
	res, err := store.Append(ctx, a.Stream, eventstore.Any(), evs...)
	if err != nil {
		return res, fmt.Errorf("projectortest: append to %s: %w", a.Stream, err)
	}
	return res, nil
}

// WriteAll writes every append in order.
func WriteAll(ctx context.Context, store eventstore.Store, as []Append) error {
	for _, a := range as {
		if _, err := Write(ctx, store, a); err != nil {
			return err
		}
	}
	return nil
}

// NewID returns a random UUID in canonical form.
func NewID() string {
	var u eventstore.UUID
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u.String()
}

// Expected folds every tenant stream in store from scratch and returns the configuration of every
// hostname, and the position of the last tenant event. A configuration's Version is the position
// of the last event of its tenant's stream that fold.AffectedHostnames names for it, which is
// how the projector defines it too. It assumes each hostname belongs to one tenant, as the
// histories of Gen do; for a hostname two tenants' histories claim, the projector keeps the
// first claimant's configuration (see TestSecondClaimantDoesNotReachTheEdges), which this does
// not model.
func Expected(ctx context.Context, store eventstore.Store) (map[string]*configv1.HostnameConfig, uint64, error) {
	filter := eventstore.Filter{StreamPrefixes: []string{fold.TenantStreamPrefix}, EventTypePrefixes: []string{fold.TypeTenantCreated}}
	var streams []string
	var last uint64
	for from := eventstore.Start; ; {
		evs, err := store.ReadAll(ctx, from, 1000, filter)
		if err != nil {
			return nil, 0, fmt.Errorf("projectortest: list tenants: %w", err)
		}
		if len(evs) == 0 {
			break
		}
		for _, ev := range evs {
			streams = append(streams, ev.Stream)
		}
		from = evs[len(evs)-1].Position
	}
	out := map[string]*configv1.HostnameConfig{}
	for _, stream := range streams {
		st := fold.NewTenant(stream[len(fold.TenantStreamPrefix):])
		version := map[string]uint64{}
		for from := uint64(0); ; {
			evs, err := store.ReadStream(ctx, stream, eventstore.Forwards, from, 1000)
			if err != nil {
				return nil, 0, fmt.Errorf("projectortest: read %s: %w", stream, err)
			}
			if len(evs) == 0 {
				break
			}
			for _, ev := range evs {
				fe := fold.Event{Type: ev.Type, Data: ev.Data, Revision: ev.Revision, Position: uint64(ev.Position), Time: ev.Time, Actor: ev.Metadata.Actor, RequestID: ev.Metadata.RequestID}
				for _, h := range fold.AffectedHostnames(st, fe) {
					version[h] = fe.Position
				}
				if err := fold.Apply(st, fe); err != nil {
					return nil, 0, fmt.Errorf("projectortest: fold %s: %w", stream, err)
				}
				last = max(last, fe.Position)
			}
			from = evs[len(evs)-1].Revision + 1
		}
		for h := range st.Hostnames {
			out[h] = fold.HostnameConfig(st, h, version[h])
		}
	}
	return out, last, nil
}

// Diff describes how got differs from want ("" when they are equal).
func Diff(got, want map[string]*configv1.HostnameConfig) string {
	var out string
	for h, w := range want {
		g, ok := got[h]
		switch {
		case !ok:
			out += fmt.Sprintf("missing %s\n", h)
		case !proto.Equal(g, w):
			out += fmt.Sprintf("%s:\n  got  %v\n  want %v\n", h, g, w)
		}
	}
	for h := range got {
		if _, ok := want[h]; !ok {
			out += fmt.Sprintf("unexpected %s\n", h)
		}
	}
	return out
}

// Index returns configs by hostname.
func Index(configs []*configv1.HostnameConfig) map[string]*configv1.HostnameConfig {
	out := make(map[string]*configv1.HostnameConfig, len(configs))
	for _, c := range configs {
		out[c.GetHostname()] = c
	}
	return out
}

// Model is a read model rebuilt from a stream of changes or Watch responses, as an edge holds it.
type Model struct {
	Position uint64
	Configs  map[string]*configv1.HostnameConfig
	// HistoryToken is the history token of Position, as the response that brought the model there
	// carried it (configv1.WatchResponse.history_token).
	HistoryToken []byte
}

// Apply applies a change: upserts and removals, bringing the model to position.
func (m *Model) Apply(position uint64, upserts []*configv1.HostnameConfig, removals []string) {
	if m.Configs == nil {
		m.Configs = map[string]*configv1.HostnameConfig{}
	}
	for _, c := range upserts {
		m.Configs[c.GetHostname()] = c
	}
	for _, r := range removals {
		delete(m.Configs, r)
	}
	m.Position = position
}

// CopyFile copies the file src to dst (created or truncated, mode 0600): a backup of a closed
// store file, or its restore.
func CopyFile(dst, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("projectortest: copy %s: %w", src, err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		return fmt.Errorf("projectortest: copy %s to %s: %w", src, dst, err)
	}
	return nil
}

// Diverge writes to store, restored from an older copy, a history that the one it was copied from
// did not have, until the store's last position is past (0: one revocation only): a revocation under a CA that a hostname
// trusts (the first such hostname by name), then new tokens of that hostname's tenant, which
// change no hostname. An edge that resumes after past from the other history gets no change, and
// so keeps serving a certificate the store revokes unless it is moved to the store's history. It
// returns the hostname whose configuration the revocation changes and the store's last position.
func Diverge(ctx context.Context, store eventstore.Store, past uint64) (hostname string, last uint64, err error) {
	configs, _, err := Expected(ctx, store)
	if err != nil {
		return "", 0, err
	}
	names := keys(configs)
	slices.Sort(names)
	var target *configv1.HostnameConfig
	for _, n := range names {
		if c := configs[n]; len(c.GetCertificateAuthorities()) > 0 {
			target = c
			break
		}
	}
	if target == nil {
		return "", 0, fmt.Errorf("projectortest: diverge: no hostname trusts a CA among %d", len(configs))
	}
	stream := fold.TenantStreamPrefix + target.GetTenantId()
	revoke := &eventsv1.RevocationAdded{RevocationId: "rev-" + NewID(), CertificateAuthorityId: target.GetCertificateAuthorities()[0].GetCertificateAuthorityId(),
		Reason: "keyCompromise", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: "d1e5e"}}
	res, err := Write(ctx, store, Append{Stream: stream, Events: one(revoke)})
	for err == nil && uint64(res.Position) <= past {
		tok := &eventsv1.TokenCreated{TokenId: "tok-" + NewID(), DisplayName: "diverged", Role: eventsv1.Role_ROLE_TENANT_ADMIN, SecretSha256: make([]byte, 32)}
		res, err = Write(ctx, store, Append{Stream: stream, Events: one(tok)})
	}
	if err != nil {
		return "", 0, err
	}
	return target.GetHostname(), uint64(res.Position), nil
}

// Flaky wraps a store and makes subscriptions and stream reads fail now and then with
// eventstore.ErrUnavailable, as a remote store would.
type Flaky struct {
	eventstore.Store
	// FailEvery: on average one call in FailEvery to Subscribe, Next or ReadStream fails.
	FailEvery int
	rnd       chan *mrand.Rand
}

// NewFlaky wraps store.
func NewFlaky(store eventstore.Store, seed uint64, failEvery int) *Flaky {
	f := &Flaky{Store: store, FailEvery: failEvery, rnd: make(chan *mrand.Rand, 1)}
	f.rnd <- mrand.New(mrand.NewPCG(seed, 7))
	return f
}

func (f *Flaky) fail() bool {
	r := <-f.rnd
	defer func() { f.rnd <- r }()
	return r.IntN(f.FailEvery) == 0
}

// Subscribe implements eventstore.Store.
func (f *Flaky) Subscribe(ctx context.Context, from eventstore.Position, filter eventstore.Filter) (eventstore.Subscription, error) {
	if f.fail() {
		return nil, fmt.Errorf("flaky: subscribe: %w", eventstore.ErrUnavailable)
	}
	sub, err := f.Store.Subscribe(ctx, from, filter)
	if err != nil {
		return nil, err
	}
	return &flakySub{Subscription: sub, f: f}, nil
}

// ReadStream implements eventstore.Store.
func (f *Flaky) ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, max int) ([]eventstore.RecordedEvent, error) {
	if f.fail() {
		return nil, fmt.Errorf("flaky: read stream: %w", eventstore.ErrUnavailable)
	}
	return f.Store.ReadStream(ctx, stream, dir, from, max)
}

type flakySub struct {
	eventstore.Subscription
	f      *Flaky
	failed error
}

// Next implements eventstore.Subscription, failing now and then; once failed, it stays failed.
func (s *flakySub) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	if s.failed != nil {
		return eventstore.RecordedEvent{}, s.failed
	}
	if s.f.fail() {
		s.failed = fmt.Errorf("flaky: subscription: %w", eventstore.ErrUnavailable)
		return eventstore.RecordedEvent{}, s.failed
	}
	return s.Subscription.Next(ctx)
}

// Sleep pauses for a random duration up to max, for tests that stop things at random moments.
func Sleep(rnd *mrand.Rand, max time.Duration) {
	time.Sleep(time.Duration(rnd.Int64N(int64(max) + 1)))
}
