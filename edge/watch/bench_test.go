package watch

import (
	"context"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// snapshotServer sends one snapshot, encoded before the benchmark's timer runs, to every stream:
// its parts are encoded when a stream's hello arrives, then encoded is signalled and the parts are
// sent once go_ is. The server's own cost while the timer runs is writing the encoded bytes.
type snapshotServer struct {
	configv1.UnimplementedConfigServiceServer
	parts   []*configv1.WatchResponse
	encoded chan struct{}
	go_     chan struct{}
}

func (s *snapshotServer) Watch(stream grpc.BidiStreamingServer[configv1.WatchRequest, configv1.WatchResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	msgs := make([]*grpc.PreparedMsg, len(s.parts))
	for i, p := range s.parts {
		msgs[i] = new(grpc.PreparedMsg)
		if err := msgs[i].Encode(stream, p); err != nil {
			return err
		}
	}
	s.encoded <- struct{}{}
	select {
	case <-s.go_:
	case <-stream.Context().Done():
		return nil
	}
	for _, m := range msgs {
		if err := stream.SendMsg(m); err != nil {
			return err
		}
	}
	for { // read acks until the edge goes
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

// BenchmarkWatchSnapshot100k measures a new edge receiving a snapshot of 100,000 hostnames over a
// real gRPC stream on loopback and applying it: from the server sending the first part to the
// edge having applied the last. The snapshot is cut as the ConfigService cuts it by default (1,000
// configurations a part); the hostnames trust 1,000 CAs (hostname i trusts CA i mod 1,000), as in
// the edge's scale benchmark (edge/enforce/bench -run memory).
func BenchmarkWatchSnapshot100k(b *testing.B) {
	const hosts, cas, perPart, pos = 100_000, 1000, 1000, 7
	roots := make([]*pkitest.CA, cas)
	for i := range roots {
		roots[i] = pkitest.NewCA(b, fmt.Sprintf("Customer %d Root", i))
	}
	srv := &snapshotServer{encoded: make(chan struct{}), go_: make(chan struct{})}
	for i := 0; i < hosts; i += perPart {
		part := &configv1.WatchResponse{Position: pos, Snapshot: true, More: i+perPart < hosts}
		for j := i; j < min(i+perPart, hosts); j++ {
			c := hostCfg(fmt.Sprintf("h%07d.customers.example.com", j), pos, roots[j%cas], "http://127.0.0.1:8081")
			c.CertificateAuthorities[0].CertificateAuthorityId = fmt.Sprintf("ca%d", j%cas)
			part.Upserts = append(part.Upserts, c)
		}
		srv.parts = append(srv.parts, part)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	configv1.RegisterConfigServiceServer(g, srv)
	go g.Serve(ln)
	b.Cleanup(g.Stop)
	conn := dial(b, ln.Addr().String())

	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	for range b.N {
		store := configset.NewStore()
		applied := make(chan error, 1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, conn, store, Options{Logger: quietLogger(nil), OnStatus: func(err error) { push(applied, err) }})
		}()
		<-srv.encoded
		b.StartTimer()
		srv.go_ <- struct{}{}
		err := <-applied
		b.StopTimer()
		if err != nil || store.Load().Position() != pos || store.Load().Len() != hosts {
			b.Fatalf("not applied: %v, position %d", err, store.Load().Position())
		}
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/hosts, "µs/hostname")
}
