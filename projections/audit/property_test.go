package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/projector"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/eventstore"
)

// pki is the certificates of the property test: three roots, an intermediate, and clients with
// every outcome the decision knows (trusted directly and through the intermediate, expired,
// server-only key usage, untrusted).
type pki struct {
	roots []*pkitest.CA
	certs [][]byte // DER of every certificate, for fingerprint revocations
	// chains are what clients send (leaf first); nil is no certificate.
	chains [][]*pkitest.Leaf
	inter  *pkitest.CA
}

func newPKI(t *testing.T) *pki {
	p := &pki{}
	for i := range 3 {
		p.roots = append(p.roots, pkitest.NewCA(t, fmt.Sprintf("root-%d", i)))
	}
	p.inter = p.roots[0].Intermediate(t, "inter")
	now := time.Now()
	leaves := []*pkitest.Leaf{
		p.roots[0].Client(t, "leaf-0"),
		p.roots[1].Client(t, "leaf-1"),
		p.inter.Client(t, "leaf-inter"),
		p.roots[0].Client(t, "leaf-old", pkitest.Validity(now.Add(-3*time.Hour), now.Add(-2*time.Hour))),
		p.roots[2].Server(t, []string{"server.example"}),
		pkitest.NewCA(t, "stranger").Client(t, "leaf-0"),
	}
	p.chains = append(p.chains, nil)
	for _, l := range leaves {
		p.chains = append(p.chains, []*pkitest.Leaf{l})
		p.certs = append(p.certs, l.Cert.Raw)
	}
	for _, r := range p.roots {
		p.certs = append(p.certs, r.Cert.Raw)
	}
	p.certs = append(p.certs, p.inter.Cert.Raw)
	return p
}

func (p *pki) chainPEM(i int) string {
	var b strings.Builder
	for _, l := range p.chains[i] {
		b.WriteString(pkitest.PEM(l.Cert))
		if l.Cert.Issuer.CommonName == "inter" {
			b.WriteString(pkitest.PEM(p.inter.Cert))
		}
	}
	return b.String()
}

// histGen makes random valid histories of a few tenants over the pki.
type histGen struct {
	rnd    *mrand.Rand
	p      *pki
	states map[string]*fold.Tenant
	seq    int
}

var ruleExprs = []string{
	"cert.verified",
	"request.path.startsWith('/admin')",
	"cert.subject.common_name == 'leaf-0'",
	"!cert.presented && request.path == '/healthz'",
	"request.method == 'POST'",
	"cert.issuer.common_name == 'inter'",
}

// next returns one valid event for tenant tid (its creation first).
func (g *histGen) next(tid string) proto.Message {
	st := g.states[tid]
	if !st.Exists {
		return &eventsv1.TenantCreated{TenantId: tid}
	}
	hosts := []string{"h0." + tid + ".example", "h1." + tid + ".example", "h2." + tid + ".example"}
	for {
		g.seq++
		switch g.rnd.IntN(12) {
		case 0, 1:
			i := g.rnd.IntN(len(g.p.roots))
			id := fmt.Sprintf("ca%d", i)
			if _, ok := st.CAs[id]; !ok {
				der := g.p.roots[i].Cert.Raw
				sum := sha256.Sum256(der)
				return &eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: id, CertificateDer: der, FingerprintSha256: hex.EncodeToString(sum[:])}
			}
		case 2:
			for id := range st.CAs {
				if !slices.ContainsFunc(mapValues(st.Hostnames), func(h *fold.Hostname) bool { return slices.Contains(h.CertificateAuthorityIDs, id) }) {
					return &eventsv1.CertificateAuthorityRemoved{CertificateAuthorityId: id}
				}
			}
		case 3:
			for id := range st.CAs {
				m := &eventsv1.RevocationAdded{CertificateAuthorityId: id, RevocationId: fmt.Sprintf("rev-%d", g.seq)}
				if g.rnd.IntN(2) == 0 {
					c := g.p.chains[1+g.rnd.IntN(len(g.p.chains)-1)][0].Cert
					m.Target = &eventsv1.RevocationAdded_SerialNumber{SerialNumber: c.SerialNumber.Text(16)}
				} else {
					sum := sha256.Sum256(g.p.certs[g.rnd.IntN(len(g.p.certs))])
					m.Target = &eventsv1.RevocationAdded_FingerprintSha256{FingerprintSha256: hex.EncodeToString(sum[:])}
				}
				return m
			}
		case 4:
			for k := range st.Revocations {
				return &eventsv1.RevocationRemoved{CertificateAuthorityId: k.CA, RevocationId: k.ID}
			}
		case 5:
			id := fmt.Sprintf("pol%d", g.rnd.IntN(2))
			if _, ok := st.Policies[id]; ok {
				return &eventsv1.PolicyUpdated{PolicyId: id, Rules: g.rules()}
			}
			return &eventsv1.PolicyCreated{PolicyId: id, Rules: g.rules()}
		case 6:
			for id := range st.Policies {
				if !slices.ContainsFunc(mapValues(st.Hostnames), func(h *fold.Hostname) bool { return h.PolicyID == id }) {
					return &eventsv1.PolicyDeleted{PolicyId: id}
				}
			}
		case 7, 8, 9, 10:
			name := hosts[g.rnd.IntN(len(hosts))]
			mtls := &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode(1 + g.rnd.IntN(3)), RejectInHandshake: g.rnd.IntN(4) == 0}
			for id := range st.CAs {
				if g.rnd.IntN(3) > 0 {
					mtls.CertificateAuthorityIds = append(mtls.CertificateAuthorityIds, id)
				}
			}
			slices.Sort(mtls.CertificateAuthorityIds)
			policy := ""
			for id := range st.Policies {
				if g.rnd.IntN(2) == 0 {
					policy = id
				}
			}
			state := eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE
			if g.rnd.IntN(5) == 0 {
				state = eventsv1.HostnameState_HOSTNAME_STATE_PENDING
			}
			origin := fmt.Sprintf("http://origin-%d.internal", g.seq)
			if _, ok := st.Hostnames[name]; ok {
				return &eventsv1.HostnameUpdated{Hostname: name, OriginUrl: origin, Mtls: mtls, PolicyId: policy, State: state}
			}
			return &eventsv1.HostnameCreated{Hostname: name, OriginUrl: origin, Mtls: mtls, PolicyId: policy, State: state}
		case 11:
			for name := range st.Hostnames {
				return &eventsv1.HostnameDeleted{Hostname: name}
			}
		}
	}
}

func (g *histGen) rules() []*eventsv1.PolicyRule {
	var out []*eventsv1.PolicyRule
	for i := range 1 + g.rnd.IntN(3) {
		out = append(out, &eventsv1.PolicyRule{Name: fmt.Sprintf("r%d", i), Action: eventsv1.Action(1 + g.rnd.IntN(2)), Expression: ruleExprs[g.rnd.IntN(len(ruleExprs))]})
	}
	return out
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestExplainMatchesTheEdge is the audit's promise: for random histories, the edge's decision on
// the configuration the projector distributed at position P (prepared by the edge's configset, as
// the edge holds it) equals Explain at config_revision P, for random requests and certificates at
// random times. Explanations are asked after the whole history is written, so replay has to stop
// at the right event. They are the same with the cache of prepared configurations (as by
// default), with a cache of two entries (dropping them all the time) and without one.
func TestExplainMatchesTheEdge(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := openStore(t)
	svc := New(store)
	others := map[string]*Service{"a cache of 2": New(store, WithPreparedConfigs(2, 1<<30)), "no cache": New(store, WithPreparedConfigs(0, 0))}
	proj, err := projector.Open(filepath.Join(t.TempDir(), "projections.db"), store, projector.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- proj.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		proj.Close()
	})

	p := newPKI(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := mrand.New(mrand.NewPCG(seed, 7))
	tenants := []string{"acme", "globex"}
	g := &histGen{rnd: rnd, p: p, states: map[string]*fold.Tenant{}}
	for _, tid := range tenants {
		g.states[tid] = fold.NewTenant(tid)
	}

	var sets []*configset.Set
	steps := 80
	if testing.Short() {
		steps = 30
	}
	for range steps {
		tid := tenants[rnd.IntN(len(tenants))]
		st := g.states[tid]
		var evs []eventstore.EventData
		for range 1 + rnd.IntN(3) {
			m := g.next(tid)
			data, _ := proto.Marshal(m)
			rev := uint64(0)
			if st.Exists {
				rev = st.Revision + 1
			}
			if err := fold.Apply(st, fold.Event{Type: fold.TypeOf(m), Data: data, Revision: rev}); err != nil {
				t.Fatalf("generated an invalid event: %v", err)
			}
			evs = append(evs, eventstore.EventData{ID: newID(), Type: fold.TypeOf(m), Data: data, Metadata: eventstore.Metadata{Actor: "admin"}})
		}
		res, err := store.Append(ctx, fold.TenantStream(tid), eventstore.Any(), evs...)
		if err != nil {
			t.Fatal(err)
		}
		if err := proj.WaitFor(ctx, uint64(res.Position)); err != nil {
			t.Fatal(err)
		}
		pos, configs, err := proj.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		cs := configset.NewStore()
		if err := cs.Apply(&configv1.WatchResponse{Position: pos, Snapshot: true, Upserts: configs}); err != nil {
			t.Fatalf("the edge refuses the configuration at %d: %v", pos, err)
		}
		sets = append(sets, cs.Load())
	}

	now := time.Now()
	times := []time.Time{now, now.Add(-150 * time.Minute), now.Add(-90 * time.Minute), now.Add(40 * 24 * time.Hour)}
	paths := []string{"/", "/admin/users", "/healthz"}
	methods := []string{"GET", "POST"}
	var names []string
	for _, tid := range tenants {
		for i := range 4 {
			names = append(names, fmt.Sprintf("h%d.%s.example", i, tid))
		}
	}
	rnd.Shuffle(len(sets), func(i, j int) { sets[i], sets[j] = sets[j], sets[i] }) // replays start from cached states before and after
	checked, decided := 0, 0
	reasons := map[string]int{}
	for _, set := range sets {
		for range 8 {
			name := names[rnd.IntN(len(names))]
			ci := rnd.IntN(len(p.chains))
			req := &decision.Request{Host: name, Method: methods[rnd.IntN(len(methods))], Path: paths[rnd.IntN(len(paths))]}
			when := times[rnd.IntN(len(times))]
			chainPEM := p.chainPEM(ci)
			peer, err := ParseChain(chainPEM)
			if err != nil {
				t.Fatal(err)
			}
			h, _ := set.Lookup(name)
			tenant := tenants[rnd.IntN(len(tenants))]
			if h != nil {
				tenant = h.Config.GetTenantId()
				decided++
			}
			want := decision.Decide(h, peer, req, when)
			got, err := svc.Explain(admin, &guestlistv1.ExplainRequest{
				TenantId: tenant, Hostname: name, ClientCertificateChainPem: chainPEM, Method: req.Method, Path: req.Path,
				At: &guestlistv1.ExplainRequest_AtPosition{AtPosition: set.Position()}, RequestTime: timestamppb.New(when),
			})
			if err != nil {
				t.Fatalf("Explain %s at %d: %v", name, set.Position(), err)
			}
			if got.GetVerdict() != string(want.Verdict) || got.GetReason() != want.Reason || got.GetRule() != want.Rule || got.GetConfigRevision() != set.Position() {
				t.Errorf("%s (tenant %s) at %d, chain %d, %s %s at %v: edge %s %s %q, explain %v", name, tenant, set.Position(), ci, req.Method, req.Path, when, want.Verdict, want.Reason, want.Rule, got)
			}
			for what, other := range others {
				o, err := other.Explain(admin, &guestlistv1.ExplainRequest{
					TenantId: tenant, Hostname: name, ClientCertificateChainPem: chainPEM, Method: req.Method, Path: req.Path,
					At: &guestlistv1.ExplainRequest_AtPosition{AtPosition: set.Position()}, RequestTime: timestamppb.New(when),
				})
				if err != nil || !proto.Equal(o, got) {
					t.Errorf("%s (tenant %s) at %d: explain %v, with %s %v (%v)", name, tenant, set.Position(), got, what, o, err)
				}
			}
			checked++
			reasons[want.Reason]++
		}
	}
	t.Logf("%d explanations checked (%d on hostnames the edge held), over %d positions; reasons %v", checked, decided, len(sets), reasons)
	if decided == 0 {
		t.Error("no explanation hit a configured hostname")
	}
}

func newID() string {
	var b [16]byte
	for i := range b {
		b[i] = byte(mrand.Uint32())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return eventstore.UUID(b).String()
}

// TestCachedReplays: snapshots from cached states equal snapshots replayed from scratch, at
// positions and times in random order over a longer history of interleaved tenants.
func TestCachedReplays(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := mrand.New(mrand.NewPCG(seed, 11))
	g := &histGen{rnd: rnd, p: newPKI(t), states: map[string]*fold.Tenant{"acme": fold.NewTenant("acme"), "globex": fold.NewTenant("globex")}}
	var positions []uint64
	for range 400 {
		tid := []string{"acme", "globex"}[rnd.IntN(2)]
		st := g.states[tid]
		m := g.next(tid)
		data, _ := proto.Marshal(m)
		rev := uint64(0)
		if st.Exists {
			rev = st.Revision + 1
		}
		if err := fold.Apply(st, fold.Event{Type: fold.TypeOf(m), Data: data, Revision: rev}); err != nil {
			t.Fatal(err)
		}
		res, err := store.Append(ctx, fold.TenantStream(tid), eventstore.Any(), eventstore.EventData{ID: newID(), Type: fold.TypeOf(m), Data: data})
		if err != nil {
			t.Fatal(err)
		}
		positions = append(positions, uint64(res.Position))
	}
	cached, plain := New(store, WithCachedStates(4)), New(store, WithCachedStates(0))
	for range 300 {
		req := &guestlistv1.GetSnapshotRequest{TenantId: []string{"acme", "globex"}[rnd.IntN(2)], At: &guestlistv1.GetSnapshotRequest_AtPosition{AtPosition: positions[rnd.IntN(len(positions))]}}
		if rnd.IntN(4) == 0 {
			req.At = nil
		}
		a, errA := cached.GetSnapshot(admin, req)
		b, errB := plain.GetSnapshot(admin, req)
		if errA != nil || errB != nil || !proto.Equal(a, b) {
			t.Fatalf("%v: cached %v (%v), from scratch %v (%v)", req, a, errA, b, errB)
		}
	}
}
