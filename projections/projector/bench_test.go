package projector

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/fold"
	pt "guestlist.dev/projections/projector/projectortest"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	"guestlist.dev/services/eventstore/boltstore"
)

// benchHistory writes, per tenant: the tenant, 3 CAs (1 KiB DER each), 2 policies, hostnames
// (each trusting 1 or 2 of the CAs, half with a policy), then revocations and policy updates
// interleaved with hostname updates. It returns the number of events and the last position.
func benchHistory(b *testing.B, store *boltstore.Store, tenants, hostnames int) (int, uint64) {
	b.Helper()
	var events int
	var last uint64
	for t := range tenants {
		tid := fmt.Sprintf("t%d", t)
		ms := []proto.Message{&eventsv1.TenantCreated{TenantId: tid}}
		for c := range 3 {
			ms = append(ms, &eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: fmt.Sprintf("ca%d", c), CertificateDer: make([]byte, 1024)})
		}
		for p := range 2 {
			ms = append(ms, &eventsv1.PolicyCreated{PolicyId: fmt.Sprintf("p%d", p), Rules: []*eventsv1.PolicyRule{{Name: "ou", Action: eventsv1.Action_ACTION_ALLOW, Expression: "cert.subject.organizational_unit == 'x'"}}})
		}
		for h := range hostnames {
			m := &eventsv1.HostnameCreated{Hostname: fmt.Sprintf("h%d.%s.example.com", h, tid), OriginUrl: "http://origin:8080", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
				Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{fmt.Sprintf("ca%d", h%3)}}}
			if h%2 == 0 {
				m.PolicyId = fmt.Sprintf("p%d", h%4/2)
				m.Mtls.CertificateAuthorityIds = append(m.Mtls.CertificateAuthorityIds, fmt.Sprintf("ca%d", (h+1)%3))
			}
			ms = append(ms, m)
		}
		for i := range hostnames / 5 {
			switch i % 3 {
			case 0:
				ms = append(ms, &eventsv1.RevocationAdded{RevocationId: fmt.Sprintf("r%d", i), CertificateAuthorityId: fmt.Sprintf("ca%d", i%3), Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: strconv.Itoa(i + 1)}})
			case 1:
				ms = append(ms, &eventsv1.PolicyUpdated{PolicyId: fmt.Sprintf("p%d", i%2), Rules: []*eventsv1.PolicyRule{{Name: "v" + strconv.Itoa(i), Action: eventsv1.Action_ACTION_DENY, Expression: "false"}}})
			default:
				ms = append(ms, &eventsv1.HostnameUpdated{Hostname: fmt.Sprintf("h%d.%s.example.com", i, tid), OriginUrl: "http://origin2:8080", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE, Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_REPORT}})
			}
		}
		events += len(ms)
		last = writeInChunks(b, store, tid, ms, 200)
	}
	return events, last
}

// writeInChunks appends ms to tenant's stream, chunk events an append, and returns the last
// position.
func writeInChunks(b *testing.B, store *boltstore.Store, tenant string, ms []proto.Message, chunk int) uint64 {
	b.Helper()
	var last uint64
	for len(ms) > 0 {
		n := min(len(ms), chunk)
		res, err := pt.Write(context.Background(), store, pt.Append{Stream: fold.TenantStream(tenant), Events: ms[:n]})
		if err != nil {
			b.Fatal(err)
		}
		last = uint64(res.Position)
		ms = ms[n:]
	}
	return last
}

// BenchmarkProjector measures catch-up: a fresh read model built from a store of 20 tenants with
// 500 hostnames each (about 12,000 events).
func BenchmarkProjector(b *testing.B) {
	dir := b.TempDir()
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	events, last := benchHistory(b, store, 20, 500)
	benchCatchUp(b, dir, store, events, last)
}

// benchCatchUp builds a fresh read model in dir from store, up to last, once a loop, and reports
// the events (events of them) per second.
func benchCatchUp(b *testing.B, dir string, store *boltstore.Store, events int, last uint64) {
	b.Helper()
	i := 0
	var elapsed time.Duration
	for b.Loop() {
		path := filepath.Join(dir, fmt.Sprintf("projection-%d.db", i))
		i++
		start := time.Now()
		p, err := Open(path, store, WithLogger(quiet))
		if err != nil {
			b.Fatal(err)
		}
		stop := running(p)
		if err := p.WaitFor(context.Background(), last); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(start)
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
		_ = os.Remove(path)
	}
	b.ReportMetric(float64(events)*float64(i)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(events), "events/op")
}

// BenchmarkSnapshotRead measures a snapshot read of the read model (what the distribution sends
// an edge that needs a snapshot, and holds while it sends it): 20 tenants with 5,000 hostnames
// each (see benchHistory: 1 KiB CAs, one-rule policies). Besides the time, it reports the heap
// the read holds per hostname (after a GC, the configurations alive).
func BenchmarkSnapshotRead(b *testing.B) {
	dir := b.TempDir()
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	_, last := benchHistory(b, store, 20, 5000)
	p, err := Open(filepath.Join(dir, "projection.db"), store, WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	stop := running(p)
	if err := p.WaitFor(context.Background(), last); err != nil {
		b.Fatal(err)
	}
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	var held, n, revs float64
	for b.Loop() {
		b.StopTimer()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		_, configs, err := p.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		held += float64(after.HeapAlloc) - float64(before.HeapAlloc)
		n += float64(len(configs))
		for _, c := range configs {
			revs += float64(len(c.GetRevocations()))
		}
		runtime.KeepAlive(configs)
		b.StartTimer()
	}
	b.ReportMetric(held/n, "B-held/hostname")
	b.ReportMetric(revs/n, "revocations/hostname")
}

// endpointsHistory writes one tenant of n customer endpoints, each a root CA of its own (1 KiB
// DER) and a hostname trusting it, with a revocation after each endpoint under an earlier one's
// CA: the product's usual shape, at the scale of one large tenant. It returns the number of
// events and the last position.
func endpointsHistory(b *testing.B, store *boltstore.Store, n int) (int, uint64) {
	b.Helper()
	ms := []proto.Message{&eventsv1.TenantCreated{TenantId: "big"}}
	for i := range n {
		ca := fmt.Sprintf("ca%d", i)
		ms = append(ms,
			&eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: ca, CertificateDer: make([]byte, 1024)},
			&eventsv1.HostnameCreated{Hostname: fmt.Sprintf("pay.customer%d.example.com", i), OriginUrl: "http://origin:8080", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
				Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{ca}}},
			&eventsv1.RevocationAdded{RevocationId: fmt.Sprintf("r%d", i), CertificateAuthorityId: fmt.Sprintf("ca%d", i*7919%(i+1)), Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: strconv.Itoa(i + 1)}})
	}
	return len(ms), writeInChunks(b, store, "big", ms, 500)
}

// BenchmarkProjectorEndpoints measures catch-up of a fresh read model from one tenant of 20,000
// customer endpoints (endpointsHistory: 60,001 events), to compare with BenchmarkProjector's many
// small tenants: the events per second should not fall with the size of a tenant.
func BenchmarkProjectorEndpoints(b *testing.B) {
	dir := b.TempDir()
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	events, last := endpointsHistory(b, store, 20_000)
	benchCatchUp(b, dir, store, events, last)
}
