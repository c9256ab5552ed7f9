package command

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

func newService(t testing.TB, grace time.Duration) (*Service, eventstore.Store) {
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

// createTenants creates the tenants ids.
func createTenants(t testing.TB, s *Service, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := s.Tenants().CreateTenant(admin, &guestlistv1.CreateTenantRequest{TenantId: id, Tenant: &guestlistv1.Tenant{DisplayName: id}}); err != nil {
			t.Fatal(err)
		}
	}
}

func createHostname(s *Service, tenant, name string) error {
	return createHostnameCtx(admin, s, tenant, name)
}

func createHostnameCtx(ctx context.Context, s *Service, tenant, name string) error {
	_, err := s.Hostnames().CreateHostname(ctx, &guestlistv1.CreateHostnameRequest{TenantId: tenant, Hostname: &guestlistv1.Hostname{
		Hostname: name, OriginUrl: "http://o.example", Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
	}})
	return err
}

// TestAbandonedReservation: a reservation left by a creation that never completed (the process died
// between the two appends) is taken over once it is older than the grace period, but a hostname
// its tenant really has is never taken.
func TestAbandonedReservation(t *testing.T) {
	const grace = time.Hour
	for _, tc := range []struct {
		name     string
		age      time.Duration // of acme's reservation when globex claims
		created  bool          // acme really created the hostname
		wantCode codes.Code
	}{
		{"ok/abandoned reservation is taken over", 2 * grace, false, codes.OK},
		{"fail/young reservation is respected", 0, false, codes.AlreadyExists},
		{"fail/hostname its tenant has is never taken", 2 * grace, true, codes.AlreadyExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, err := boltstore.Open(filepath.Join(t.TempDir(), "events.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { store.Close() })
			var later atomic.Int64 // the service's clock runs this far ahead of the store's
			s, err := New(Config{Store: store, ReservationGrace: grace, Now: func() time.Time { return time.Now().Add(time.Duration(later.Load())) }})
			if err != nil {
				t.Fatal(err)
			}
			createTenants(t, s, "acme", "globex")
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
			later.Store(int64(tc.age))
			err = createHostname(s, "globex", "pay.example.com")
			if status.Code(err) != tc.wantCode {
				t.Fatalf("globex claim: %v, want %v", err, tc.wantCode)
			}
		})
	}
}

// gatedService returns a service s on a store with the tenants acme and globex, and a service
// gs on the same store through g, whose appends to tenant streams wait for permits.
func gatedService(t *testing.T, grace time.Duration) (s, gs *Service, g *gatedStore) {
	t.Helper()
	s, store := newService(t, time.Hour)
	createTenants(t, s, "acme", "globex")
	g = &gatedStore{Store: store, waiting: make(chan struct{}), permits: make(chan struct{})}
	gs, err := New(Config{Store: g, ReservationGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	return s, gs, g
}

// gatedStore is a real store whose appends to tenant streams each wait for a permit: a slow disk
// under commands whose callers give up meanwhile.
type gatedStore struct {
	eventstore.Store
	waiting chan struct{} // receives when an append starts waiting
	permits chan struct{} // an append goes on when it takes one
}

func (g *gatedStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if strings.HasPrefix(stream, fold.TenantStreamPrefix) {
		g.waiting <- struct{}{}
		<-g.permits
	}
	return g.Store.Append(ctx, stream, expected, events...)
}

// TestCreateGivenUpKeepsItsReservation: a creation whose caller gives up while its events are
// being stored returns the context's error but is stored all the same; its reservation must stay,
// or another tenant could create the same hostname (two tenants owning one name, and the edges
// given the last writer's origin and CAs).
func TestCreateGivenUpKeepsItsReservation(t *testing.T) {
	_, gs, g := gatedService(t, time.Hour)
	// The creation queues behind a command of acme whose append waits, goes into the next batch,
	// and its caller gives up while that batch is being stored.
	ctx, cancel := context.WithCancel(admin)
	createErr := make(chan error, 1)
	unstall := queueBehindAStalledBatch(t, gs, g, func() { createErr <- createHostnameCtx(ctx, gs, "acme", "pay.example.com") })
	g.permits <- struct{}{}
	<-g.waiting
	cancel()
	if err := <-createErr; status.Code(err) != codes.Canceled {
		t.Fatalf("creation given up: %v, want Canceled", err)
	}
	unstall()
	// The creation was stored after all.
	if _, err := gs.Hostnames().GetHostname(admin, &guestlistv1.GetHostnameRequest{TenantId: "acme", Hostname: "pay.example.com"}); err != nil {
		t.Fatalf("acme's creation was not stored: %v", err)
	}
	if err := createHostname(gs, "globex", "pay.example.com"); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("globex claims acme's hostname: %v, want AlreadyExists", err)
	}
}

// TestDeleteDoesNotReleaseANewerReservation: a tenant deletes its hostname while a creation of
// the same name by the same tenant is in flight (it reserved after the deletion was decided).
// The deletion must not release the newer reservation, or the tenant would have the hostname
// with no reservation behind it and another tenant could create it too.
func TestDeleteDoesNotReleaseANewerReservation(t *testing.T) {
	s, store := newService(t, time.Hour)
	createTenants(t, s, "acme", "globex")
	if err := createHostname(s, "acme", "pay.example.com"); err != nil {
		t.Fatal(err)
	}
	// Deleted; before its release runs, the re-creation reserves (the interleaving the race
	// produces): played step by step through the same calls.
	var reservationID string
	if _, err := s.execute(admin, "acme", eventstore.Metadata{}, func(st *fold.Tenant) (decision, error) {
		reservationID = st.Hostnames["pay.example.com"].ReservationEventID
		return decision{events: []protoMessage{&eventsv1.HostnameDeleted{Hostname: "pay.example.com"}}, result: emptyResult}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if reservationID == "" {
		t.Fatal("the hostname's creation recorded no reservation")
	}
	newID, fresh, err := s.reserve(admin, "pay.example.com", "acme", eventstore.Metadata{})
	if err != nil || fresh || newID == reservationID {
		t.Fatalf("re-creation's reservation: %q fresh=%v %v; want a new one over acme's own", newID, fresh, err)
	}
	if err := s.release(admin, "pay.example.com", "acme", reservationID, eventstore.Metadata{}); err != nil {
		t.Fatal(err)
	}
	if _, holder, held, err := s.reservation(admin, "pay.example.com"); err != nil || !held || holder != "acme" {
		t.Fatalf("after the deletion's release: held=%v by %q (%v); want still held by acme", held, holder, err)
	}
	_ = store
	// Then the whole race, through the API: after every round the owner must hold the name.
	for i := range 200 {
		name := fmt.Sprintf("h%d.example.com", i)
		if err := createHostname(s, "acme", name); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, _ = s.Hostnames().DeleteHostname(admin, &guestlistv1.DeleteHostnameRequest{TenantId: "acme", Hostname: name})
		}()
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i%7) * 100 * time.Microsecond)
			_ = createHostname(s, "acme", name)
		}()
		wg.Wait()
		if _, err := s.Hostnames().GetHostname(admin, &guestlistv1.GetHostnameRequest{TenantId: "acme", Hostname: name}); err != nil {
			continue // deleted last
		}
		if err := createHostname(s, "globex", name); status.Code(err) != codes.AlreadyExists {
			t.Fatalf("round %d: acme has %s, and globex's claim gave %v, want AlreadyExists", i, name, err)
		}
	}
}

// TestFailedCreationReleases: a creation that certainly failed gives back what it reserved
// fresh, so that another tenant may claim the name at once; a creation that reserved over its
// tenant's own reservation gives back nothing.
func TestFailedCreationReleases(t *testing.T) {
	s, _ := newService(t, time.Hour)
	createTenants(t, s, "acme", "globex")
	if err := createHostname(s, "globex", "taken.example.com"); err != nil {
		t.Fatal(err)
	}
	batch := &guestlistv1.BatchCreateHostnamesRequest{TenantId: "acme"}
	for _, n := range []string{"free.example.com", "taken.example.com"} {
		batch.Requests = append(batch.Requests, &guestlistv1.CreateHostnameRequest{Hostname: &guestlistv1.Hostname{
			Hostname: n, OriginUrl: "http://o.example", Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
		}})
	}
	if _, err := s.Hostnames().BatchCreateHostnames(admin, batch); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("batch with a taken name: %v", err)
	}
	if err := createHostname(s, "globex", "free.example.com"); err != nil {
		t.Fatalf("globex claims the name acme's failed batch reserved: %v", err)
	}
	// acme holds a reservation of its own without the hostname (left by an earlier creation);
	// a creation over it that fails must not give it back: another creation may be in flight.
	if _, _, err := s.reserve(admin, "mine.example.com", "acme", eventstore.Metadata{}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Hostnames().CreateHostname(admin, &guestlistv1.CreateHostnameRequest{TenantId: "acme", Hostname: &guestlistv1.Hostname{
		Hostname: "mine.example.com", OriginUrl: "http://o.example", PolicyId: "none",
		Mtls: &guestlistv1.MtlsSettings{Mode: guestlistv1.MtlsMode_MTLS_MODE_OFF},
	}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("creation with a missing policy: %v", err)
	}
	if _, holder, held, err := s.reservation(admin, "mine.example.com"); err != nil || !held || holder != "acme" {
		t.Fatalf("after the failed creation: held=%v by %q (%v); want still held by acme", held, holder, err)
	}
}

// legacyHostname writes what a version before reservation_event_id left for tenant's hostname:
// its reservation, and HostnameCreated without the reservation's id.
func legacyHostname(t *testing.T, store eventstore.Store, tenant, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := store.Append(ctx, fold.HostnameStream(name), eventstore.NoStream(),
		encodeAll([]proto.Message{&eventsv1.HostnameReserved{Hostname: name, TenantId: tenant}}, eventstore.Metadata{})...); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, fold.TenantStream(tenant), eventstore.Any(),
		encodeAll([]proto.Message{&eventsv1.HostnameCreated{Hostname: name, OriginUrl: "http://o.example", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE}}, eventstore.Metadata{})...); err != nil {
		t.Fatal(err)
	}
}

// TestLegacyDeletion: deleting a hostname created before creations recorded their reservation
// releases the name; but not when a creation of the same tenant has reserved it since (the race of
// TestDeleteDoesNotReleaseANewerReservation, for hostnames of older versions).
func TestLegacyDeletion(t *testing.T) {
	for _, tc := range []struct {
		name       string
		recreating bool // a creation of acme reserves before the deletion releases
		wantHeld   bool
	}{
		{"ok/released", false, false},
		{"ok/a newer creation's reservation is left", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, store := newService(t, time.Hour)
			if _, err := s.Tenants().CreateTenant(admin, &guestlistv1.CreateTenantRequest{TenantId: "acme", Tenant: &guestlistv1.Tenant{DisplayName: "acme"}}); err != nil {
				t.Fatal(err)
			}
			legacyHostname(t, store, "acme", "pay.example.com")
			var reservationID string
			if _, err := s.execute(admin, "acme", eventstore.Metadata{}, func(st *fold.Tenant) (decision, error) {
				reservationID = st.Hostnames["pay.example.com"].ReservationEventID
				return decision{events: []protoMessage{&eventsv1.HostnameDeleted{Hostname: "pay.example.com"}}, result: emptyResult}, nil
			}); err != nil {
				t.Fatal(err)
			}
			if reservationID != "" {
				t.Fatalf("a legacy hostname has reservation %q", reservationID)
			}
			if tc.recreating {
				if _, fresh, err := s.reserve(admin, "pay.example.com", "acme", eventstore.Metadata{}); err != nil || fresh {
					t.Fatalf("re-creation's reservation: fresh=%v %v", fresh, err)
				}
			}
			if err := s.release(admin, "pay.example.com", "acme", "", eventstore.Metadata{}); err != nil {
				t.Fatal(err)
			}
			if _, _, held, err := s.reservation(admin, "pay.example.com"); err != nil || held != tc.wantHeld {
				t.Fatalf("after the deletion's release: held=%v (%v), want %v", held, err, tc.wantHeld)
			}
		})
	}
}

// queueBehindAStalledBatch starts a command of acme on gs whose append waits on g, and then run
// (a command of acme) queued behind it; it returns once run's command waits for its batch, and a
// function that lets the stalled append go on and waits for that command.
func queueBehindAStalledBatch(t *testing.T, gs *Service, g *gatedStore, run func()) (unstall func()) {
	t.Helper()
	policyErr := make(chan error, 1)
	go func() {
		_, err := gs.Policies().CreatePolicy(admin, &guestlistv1.CreatePolicyRequest{TenantId: "acme", PolicyId: "p", Policy: &guestlistv1.Policy{
			Rules: []*guestlistv1.Rule{{Name: "a", Action: guestlistv1.Action_ACTION_ALLOW, Expression: "true"}},
		}})
		policyErr <- err
	}()
	<-g.waiting
	go run()
	e := gs.entry("acme")
	for queued := false; !queued; {
		e.qmu.Lock()
		queued = len(e.pending) == 1
		e.qmu.Unlock()
		time.Sleep(time.Millisecond)
	}
	return func() {
		close(g.permits)
		go func() {
			for range g.waiting { // later appends go through
			}
		}()
		if err := <-policyErr; err != nil {
			t.Error(err)
		}
	}
}

// TestCreationGivenUpWhileQueued: a creation whose caller gives up while it still waits for its
// batch is certainly not stored, and gives back its reservation at once.
func TestCreationGivenUpWhileQueued(t *testing.T) {
	s, gs, g := gatedService(t, time.Hour)
	ctx, cancel := context.WithCancel(admin)
	createErr := make(chan error, 1)
	unstall := queueBehindAStalledBatch(t, gs, g, func() { createErr <- createHostnameCtx(ctx, gs, "acme", "pay.example.com") })
	cancel()
	if err := <-createErr; status.Code(err) != codes.Canceled {
		t.Fatalf("creation given up: %v, want Canceled", err)
	}
	if err := createHostname(s, "globex", "pay.example.com"); err != nil {
		t.Fatalf("globex claims the name acme's given-up creation reserved: %v", err)
	}
	unstall()
	if _, err := gs.Hostnames().GetHostname(admin, &guestlistv1.GetHostnameRequest{TenantId: "acme", Hostname: "pay.example.com"}); status.Code(err) != codes.NotFound {
		t.Fatalf("acme's given-up creation: %v, want NotFound", err)
	}
}

// TestCreationPastHalfTheGraceIsAborted: a creation decided more than half the grace period after
// it reserved is refused, so that no takeover of its reservation (possible after the grace period)
// can meet it on its way; its fresh reservation is given back.
func TestCreationPastHalfTheGraceIsAborted(t *testing.T) {
	const grace = 200 * time.Millisecond
	s, gs, g := gatedService(t, grace)
	createErr := make(chan error, 1)
	unstall := queueBehindAStalledBatch(t, gs, g, func() { createErr <- createHostname(gs, "acme", "pay.example.com") })
	time.Sleep(grace/2 + 20*time.Millisecond)
	unstall()
	if err := <-createErr; status.Code(err) != codes.Aborted {
		t.Fatalf("creation decided after %s: %v, want Aborted", grace/2, err)
	}
	if err := createHostname(s, "globex", "pay.example.com"); err != nil {
		t.Fatalf("globex claims the name acme's aborted creation reserved: %v", err)
	}
}
