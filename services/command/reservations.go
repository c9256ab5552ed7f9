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
// Deleting the hostname appends HostnameReleased. A reservation whose creation never completed (the
// process died in between) is taken over by another tenant once it is older than the grace period
// and the holder's stream does not have the hostname.

// reserve reserves hostname for tenantID. acquired is true when this call wrote the reservation
// (and so must release it if the creation fails); false when the tenant already held it.
func (s *Service) reserve(ctx context.Context, hostname, tenantID string, md eventstore.Metadata) (acquired bool, err error) {
	stream := fold.HostnameStream(hostname)
	// Most hostnames were never claimed: try that first, without a read.
	_, err = s.store.Append(ctx, stream, eventstore.NoStream(), encodeAll([]proto.Message{&eventsv1.HostnameReserved{Hostname: hostname, TenantId: tenantID}}, md)...)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		return false, status.Errorf(codes.Unavailable, "reserving hostname %q failed: %v", hostname, err)
	}
	for attempt := 0; attempt < 8; attempt++ {
		expected := eventstore.NoStream()
		var events []proto.Message
		last, holder, held, err := s.reservation(ctx, hostname)
		if err != nil {
			return false, err
		}
		if last != nil {
			expected = eventstore.Exact(last.Revision)
		}
		if held {
			if holder == tenantID {
				return false, nil
			}
			abandoned, err := s.abandoned(ctx, hostname, holder, last)
			if err != nil {
				return false, err
			}
			if !abandoned {
				return false, apistatus.AlreadyExists("hostname", hostname)
			}
			s.log.Warn("command: taking over an abandoned hostname reservation", "hostname", hostname, "holder", holder, "tenant", tenantID)
			events = append(events, &eventsv1.HostnameReleased{Hostname: hostname, TenantId: holder})
		}
		events = append(events, &eventsv1.HostnameReserved{Hostname: hostname, TenantId: tenantID})
		_, err = s.store.Append(ctx, stream, expected, encodeAll(events, md)...)
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			continue
		}
		if err != nil {
			return false, status.Errorf(codes.Unavailable, "reserving hostname %q failed: %v", hostname, err)
		}
		return true, nil
	}
	return false, apistatus.Aborted("hostname", hostname, "too much contention; retry")
}

// release gives up tenantID's reservation of hostname, if it holds it.
func (s *Service) release(ctx context.Context, hostname, tenantID string, md eventstore.Metadata) error {
	for attempt := 0; attempt < 8; attempt++ {
		last, holder, held, err := s.reservation(ctx, hostname)
		if err != nil {
			return err
		}
		if !held || holder != tenantID {
			return nil
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
