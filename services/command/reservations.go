package command

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/eventstore"
)

// A hostname belongs to at most one tenant. Before a tenant's stream records HostnameCreated, the
// hostname's own stream "hostname-<name>" records HostnameReserved for that tenant, appended with an
// expected revision: of two tenants claiming one name at the same moment exactly one append wins.
//
// Every creation appends a reservation of its own, also when its tenant holds the name already,
// and HostnameCreated names it (reservation_event_id). Deleting the hostname appends
// HostnameReleased only while that reservation is still the last event of the hostname's stream:
// a creation of the same tenant in flight at the same moment (it reserved after the hostname was
// created) keeps the name reserved for the hostname it is about to create.
//
// A creation that fails releases its reservation only when all of these hold: the creation was
// certainly not stored (it was never submitted, its caller gave up while it still waited for its
// batch, or its decision refused it; not when its caller gave up later or the store failed, since
// it may still be stored); its reservation was fresh (no reservation of its tenant was in force
// before it, so no other creation of the tenant can be in flight under an older one); and it is
// still the last event. Any other leftover is taken over by another tenant once it is older than
// the grace period and the holder's stream does not have the hostname; its own tenant may reserve
// it again at any time. So that a takeover cannot meet a creation still on its way, a creation
// decided more than half the grace period after it reserved is refused (ABORTED; retry).
//
// A hostname created before creations recorded their reservation (an empty reservation_event_id)
// is released on deletion unless its tenant's last reservation follows another of its own: the
// versions that wrote such hostnames never reserved over their tenant's own reservation, so the
// last one then belongs to a newer creation.

// reserve reserves hostname for tenantID and returns the id of the HostnameReserved event it
// appended, which the creation records. fresh is false when tenantID held the hostname already. It
// returns ALREADY_EXISTS if another tenant holds the hostname (and its reservation is not
// abandoned).
func (s *Service) reserve(ctx context.Context, hostname, tenantID string, md eventstore.Metadata) (reservationID string, fresh bool, err error) {
	stream := fold.HostnameStream(hostname)
	// Most hostnames were never claimed: try that first, without a read.
	reserved := encodeAll([]proto.Message{&eventsv1.HostnameReserved{Hostname: hostname, TenantId: tenantID}}, md)
	_, err = s.store.Append(ctx, stream, eventstore.NoStream(), reserved...)
	if err == nil {
		return reserved[0].ID, true, nil
	}
	if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		return "", false, status.Errorf(codes.Unavailable, "reserving hostname %q failed: %v", hostname, err)
	}
	for attempt := 0; attempt < 8; attempt++ {
		expected := eventstore.NoStream()
		var events []proto.Message
		last, holder, held, err := s.reservation(ctx, hostname)
		if err != nil {
			return "", false, err
		}
		if last != nil {
			expected = eventstore.Exact(last.Revision)
		}
		if held && holder != tenantID {
			abandoned, err := s.abandoned(ctx, hostname, holder, last)
			if err != nil {
				return "", false, err
			}
			if !abandoned {
				return "", false, apistatus.AlreadyExists("hostname", hostname)
			}
			s.log.Warn("command: taking over an abandoned hostname reservation", "hostname", hostname, "holder", holder, "tenant", tenantID)
			events = append(events, &eventsv1.HostnameReleased{Hostname: hostname, TenantId: holder})
		}
		events = append(events, &eventsv1.HostnameReserved{Hostname: hostname, TenantId: tenantID})
		data := encodeAll(events, md)
		_, err = s.store.Append(ctx, stream, expected, data...)
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			continue
		}
		if err != nil {
			return "", false, status.Errorf(codes.Unavailable, "reserving hostname %q failed: %v", hostname, err)
		}
		return data[len(data)-1].ID, !held || holder != tenantID, nil
	}
	return "", false, apistatus.Aborted("hostname", hostname, "too much contention; retry")
}

// release gives up tenantID's reservation reservationID of hostname if it is still the last event
// of the hostname's stream: after the hostname created under it was deleted, or after its creation
// failed (see above for when). An empty reservationID (a hostname created before creations
// recorded theirs) releases tenantID's last reservation unless the one before it is tenantID's
// too (then the last is a newer creation's).
func (s *Service) release(ctx context.Context, hostname, tenantID, reservationID string, md eventstore.Metadata) error {
	for attempt := 0; attempt < 8; attempt++ {
		last, holder, held, err := s.reservation(ctx, hostname)
		if err != nil {
			return err
		}
		if !held || holder != tenantID || reservationID != "" && last.ID != reservationID {
			return nil
		}
		if reservationID == "" {
			// A hostname created before creations recorded their reservation: that one was
			// written by a version that never reserved over its tenant's own reservation, so a
			// reservation of the tenant right before the last means the last is a newer
			// creation's; leave it.
			if newer, err := s.reservedTwice(ctx, hostname, tenantID, last); err != nil || newer {
				return err
			}
		}
		_, err = s.store.Append(ctx, fold.HostnameStream(hostname), eventstore.Exact(last.Revision),
			encodeAll([]proto.Message{&eventsv1.HostnameReleased{Hostname: hostname, TenantId: tenantID}}, md)...)
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			continue
		}
		if err != nil {
			return fmt.Errorf("releasing hostname %q: %w", hostname, err)
		}
		return nil
	}
	return fmt.Errorf("releasing hostname %q: too much contention", hostname)
}

// reservedTwice reports whether the event before last (hostname's last) is also a reservation by
// tenantID.
func (s *Service) reservedTwice(ctx context.Context, hostname, tenantID string, last *eventstore.RecordedEvent) (bool, error) {
	if last.Revision == 0 {
		return false, nil
	}
	evs, err := s.store.ReadStream(ctx, fold.HostnameStream(hostname), eventstore.Backwards, last.Revision-1, 1)
	if err != nil || len(evs) == 0 {
		return false, status.Errorf(codes.Unavailable, "reading hostname %q reservations failed: %v", hostname, err)
	}
	if evs[0].Type != fold.TypeHostnameReserved {
		return false, nil
	}
	var m eventsv1.HostnameReserved
	if err := proto.Unmarshal(evs[0].Data, &m); err != nil {
		return false, status.Errorf(codes.Internal, "hostname %q reservation is unreadable", hostname)
	}
	return m.GetTenantId() == tenantID, nil
}

// reservation reads the last event of hostname's stream: who holds it, if anyone.
func (s *Service) reservation(ctx context.Context, hostname string) (last *eventstore.RecordedEvent, holder string, held bool, err error) {
	evs, err := s.store.ReadStream(ctx, fold.HostnameStream(hostname), eventstore.Backwards, eventstore.End, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || err == nil && len(evs) == 0 {
		return nil, "", false, nil
	}
	if err != nil {
		return nil, "", false, status.Errorf(codes.Unavailable, "reading hostname %q reservations failed: %v", hostname, err)
	}
	ev := &evs[0]
	switch ev.Type {
	case fold.TypeHostnameReserved:
		var m eventsv1.HostnameReserved
		if err := proto.Unmarshal(ev.Data, &m); err != nil {
			return nil, "", false, status.Errorf(codes.Internal, "hostname %q reservation is unreadable", hostname)
		}
		return ev, m.GetTenantId(), true, nil
	case fold.TypeHostnameReleased:
		return ev, "", false, nil
	}
	return nil, "", false, status.Errorf(codes.Internal, "hostname %q reservation stream holds %s", hostname, ev.Type)
}

// abandoned reports whether holder's reservation (last) is older than the grace period while
// holder's configuration does not have the hostname.
func (s *Service) abandoned(ctx context.Context, hostname, holder string, last *eventstore.RecordedEvent) (bool, error) {
	if s.now().Sub(last.Time) < s.grace {
		return false, nil
	}
	has := false
	err := s.read(ctx, holder, func(st *fold.Tenant) error {
		_, has = st.Hostnames[hostname]
		return nil
	})
	return !has, err
}

func encodeAll(msgs []proto.Message, md eventstore.Metadata) []eventstore.EventData {
	out := make([]eventstore.EventData, len(msgs))
	for i, m := range msgs {
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			panic(fmt.Sprintf("command: encoding %T: %v", m, err)) // generated messages always encode
		}
		out[i] = eventstore.EventData{ID: uuid.NewString(), Type: fold.TypeOf(m), Data: data, Metadata: md}
	}
	return out
}
