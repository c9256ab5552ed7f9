package command

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
)

func newService(t *testing.T, grace time.Duration) (*Service, eventstore.Store) {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	s, err := New(Config{Store: store, ReservationGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	return s, store
}

var admin = auth.NewContext(context.Background(), auth.Principal{Role: auth.RoleAdmin})

func createHostname(s *Service, tenant, name string) error {
	_, err := s.Hostnames().CreateHostname(admin, &guestlistv1.CreateHostnameRequest{TenantId: tenant, Hostname: &guestlistv1.Hostname{
		Hostname: name, OriginUrl: "http://o.example", Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
	}})
	return err
}

// TestAbandonedReservation: a reservation left by a creation that never completed (the process died
// between the two appends) is taken over once it is older than the grace period, but a hostname
// its tenant really has is never taken.
func TestAbandonedReservation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		grace    time.Duration
		created  bool // acme really created the hostname
		wantCode codes.Code
	}{
		{"ok/abandoned reservation is taken over", time.Nanosecond, false, codes.OK},
		{"fail/young reservation is respected", time.Hour, false, codes.AlreadyExists},
		{"fail/hostname its tenant has is never taken", time.Nanosecond, true, codes.AlreadyExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, store := newService(t, tc.grace)
			for _, id := range []string{"acme", "globex"} {
				if _, err := s.Tenants().CreateTenant(admin, &guestlistv1.CreateTenantRequest{TenantId: id, Tenant: &guestlistv1.Tenant{DisplayName: id}}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.created {
				if err := createHostname(s, "acme", "pay.example.com"); err != nil {
					t.Fatal(err)
				}
			} else {
				data, _ := proto.Marshal(&eventsv1.HostnameReserved{Hostname: "pay.example.com", TenantId: "acme"})
				if _, err := store.Append(context.Background(), fold.HostnameStream("pay.example.com"), eventstore.NoStream(),
					eventstore.EventData{ID: uuid.NewString(), Type: fold.TypeHostnameReserved, Data: data}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(2 * time.Millisecond)
			err := createHostname(s, "globex", "pay.example.com")
			if status.Code(err) != tc.wantCode {
				t.Fatalf("globex claim: %v, want %v", err, tc.wantCode)
			}
		})
	}
}

// TestTwoWritersOneStore: two control-plane instances on one store (as two API processes on one
// EventStoreDB) write to the same tenant at once; expected revisions make them retry on each other's
// results, so every command lands exactly once and both end with the same state.
func TestTwoWritersOneStore(t *testing.T) {
	a, store := newService(t, time.Minute)
	b, err := New(Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Tenants().CreateTenant(admin, &guestlistv1.CreateTenantRequest{TenantId: "acme", Tenant: &guestlistv1.Tenant{DisplayName: "x"}}); err != nil {
		t.Fatal(err)
	}
	const perWriter = 40
	errs := make(chan error, 2*perWriter)
	for w, s := range []*Service{a, b} {
		for i := range perWriter {
			go func() {
				_, err := s.Policies().CreatePolicy(admin, &guestlistv1.CreatePolicyRequest{TenantId: "acme", PolicyId: fmtID(w, i), Policy: &guestlistv1.Policy{
					Rules: []*guestlistv1.Rule{{Name: "a", Action: guestlistv1.Action_ACTION_ALLOW, Expression: "true"}},
				}})
				errs <- err
			}()
		}
	}
	for range 2 * perWriter {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, s := range []*Service{a, b} {
		resp, err := s.Policies().ListPolicies(admin, &guestlistv1.ListPoliciesRequest{TenantId: "acme", PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetPolicies()) != 2*perWriter {
			t.Errorf("a writer sees %d policies, want %d", len(resp.GetPolicies()), 2*perWriter)
		}
	}
}

func fmtID(w, i int) string {
	return "p" + string(rune('a'+w)) + "-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
}
