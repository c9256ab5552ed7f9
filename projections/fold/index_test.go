package fold_test

import (
	mrand "math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/projector/projectortest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// TestIndexesFollowTheMaps folds random histories (projectortest.Gen: CAs, revocations, policies
// and hostnames added, changed and removed) and checks after every event that the fold's indexes
// are what its maps give, also after a Rollback, and that AffectedHostnames and HostnameConfig,
// which read the indexes, give what reading every hostname and revocation gives. Tenants keep the
// indexes from the start, from a point in their history (Index), or never.
func TestIndexesFollowTheMaps(t *testing.T) {
	for seed := range uint64(12) {
		g := projectortest.NewGen(seed, 3, 40)
		rnd := mrand.New(mrand.NewPCG(seed, 1))
		states := map[string]*fold.Tenant{}
		var pos uint64
		for range 300 {
			for _, a := range g.Next() {
				tid, ok := strings.CutPrefix(a.Stream, fold.TenantStreamPrefix)
				if !ok {
					continue // a hostname reservation
				}
				st := states[tid]
				if st == nil {
					st = fold.NewTenant(tid)
					states[tid] = st
					if seed%3 == 0 {
						st.Index()
					}
				}
				if seed%3 == 1 && rnd.IntN(40) == 0 {
					st.Index() // from here on, maybe inside a recording undone below
				}
				var evs []fold.Event
				for i, m := range a.Events {
					data, err := proto.Marshal(m)
					if err != nil {
						t.Fatal(err)
					}
					rev := uint64(i)
					if st.Exists {
						rev += st.Revision + 1
					}
					pos++
					evs = append(evs, fold.Event{Type: fold.TypeOf(m), Data: data, Revision: rev, Position: pos})
				}
				if rnd.IntN(3) == 0 { // decided on provisional state, then undone, as the control plane does
					before := st.Clone()
					st.Begin()
					if rnd.IntN(4) == 0 {
						st.Index()
					}
					for _, ev := range evs {
						if err := fold.Apply(st, ev); err != nil {
							t.Fatal(err)
						}
					}
					st.Rollback()
					if !reflect.DeepEqual(st, before) {
						t.Fatalf("seed %d: the state after Rollback differs from the state before Begin", seed)
					}
				}
				for _, ev := range evs {
					if got, want := sorted(fold.AffectedHostnames(st, ev)), affectedByScan(t, st, ev); want != nil && !slices.Equal(got, want) {
						t.Fatalf("seed %d, %s: AffectedHostnames %v, a scan gives %v", seed, ev.Type, got, want)
					}
					if err := fold.Apply(st, ev); err != nil {
						t.Fatal(err)
					}
					if err := fold.CheckIndexes(st); err != nil {
						t.Fatalf("seed %d, after %s: %v", seed, ev.Type, err)
					}
				}
				for name, h := range st.Hostnames {
					got := fold.HostnameConfig(st, name, 1).GetRevocations()
					if want := revocationsByScan(st, h); !slices.EqualFunc(got, want, func(a, b *configv1.Revocation) bool { return proto.Equal(a, b) }) {
						t.Fatalf("seed %d, %s: revocations %v, a scan gives %v", seed, name, got, want)
					}
				}
			}
		}
	}
}

// affectedByScan returns the hostnames of st that name the CA or policy ev is about, read from
// every hostname (nil for other events).
func affectedByScan(t *testing.T, st *fold.Tenant, ev fold.Event) []string {
	var ca, policy string
	var m proto.Message
	switch ev.Type {
	case fold.TypeCertificateAuthorityRemoved:
		m = &eventsv1.CertificateAuthorityRemoved{}
	case fold.TypeRevocationAdded:
		m = &eventsv1.RevocationAdded{}
	case fold.TypeRevocationRemoved:
		m = &eventsv1.RevocationRemoved{}
	case fold.TypePolicyUpdated:
		m = &eventsv1.PolicyUpdated{}
	case fold.TypePolicyDeleted:
		m = &eventsv1.PolicyDeleted{}
	default:
		return nil
	}
	if err := proto.Unmarshal(ev.Data, m); err != nil {
		t.Fatal(err)
	}
	if c, ok := m.(interface{ GetCertificateAuthorityId() string }); ok {
		ca = c.GetCertificateAuthorityId()
	} else {
		policy = m.(interface{ GetPolicyId() string }).GetPolicyId()
	}
	out := []string{}
	for name, h := range st.Hostnames {
		if ca != "" && slices.Contains(h.CertificateAuthorityIDs, ca) || policy != "" && h.PolicyID == policy {
			out = append(out, name)
		}
	}
	return sorted(out)
}

// revocationsByScan returns the revocations under h's CAs, read from every revocation of st, in
// HostnameConfig's order.
func revocationsByScan(st *fold.Tenant, h *fold.Hostname) []*configv1.Revocation {
	var out []*configv1.Revocation
	for k, r := range st.Revocations {
		if slices.Contains(h.CertificateAuthorityIDs, k.CA) {
			out = append(out, &configv1.Revocation{CertificateAuthorityId: k.CA, RevocationId: k.ID, SerialNumber: r.SerialNumber, FingerprintSha256: r.FingerprintSHA256})
		}
	}
	slices.SortFunc(out, func(a, b *configv1.Revocation) int {
		return strings.Compare(a.GetCertificateAuthorityId()+"\x00"+a.GetRevocationId(), b.GetCertificateAuthorityId()+"\x00"+b.GetRevocationId())
	})
	return out
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	if out == nil {
		out = []string{}
	}
	slices.Sort(out)
	return out
}
