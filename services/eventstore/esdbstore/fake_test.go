package esdbstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	api "github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fakeESDB is a small in-memory stand-in for the gRPC Streams service of EventStoreDB, for
// tests that need no server: the real client talks to it over loopback gRPC, so the client's
// own request building, response parsing and error values are exercised. It models what
// esdbstore relies on, as the server behaves since 22.10 (see the package documentation):
// sparse $all positions with commit == prepare for every event of an append; an append's
// answer carries the last event's commit position (as prepare position too, as the server's
// request manager does);
// $all reads forwards include the event at their start position, backwards ones exclude it;
// backwards stream reads from past the end start at the last event; subscriptions start after
// their position; filtered subscriptions send checkpoints at the position after the last record
// looked at, with prepare 0; the expected-version check with deduplication only for a retry with
// the first attempt's expected version (and with Any for ids it finds), answered with the
// retry's last event's revision and position; deleted streams answered with the
// "stream-deleted" trailer. It does not model
// clusters, ACLs or explicit transactions.
type fakeESDB struct {
	api.UnimplementedStreamsServer

	mu      sync.Mutex
	log     []fakeRec
	heads   map[string]uint64
	deleted map[string]bool
	next    uint64
	changed chan struct{} // closed and replaced on every append
	down    bool          // every call fails with Unavailable
	drop    chan struct{} // closed to drop every running subscription
	// checkpointEvery is how many considered events a filtered subscription sends a checkpoint
	// after (the server: window × multiplier).
	checkpointEvery int
	// subscribed counts subscriptions started.
	subscribed int
	// readsWithoutPosition makes stream reads leave the positions out, as servers before 22.10.
	readsWithoutPosition bool
	// splitNext makes the next append's events have commit != prepare.
	splitNext bool

	addr string
	srv  *grpc.Server
}

type fakeRec struct {
	stream  string
	rev     uint64
	id      uuid.UUID
	typ     string
	data    []byte
	meta    []byte
	created int64 // .NET ticks since the Unix epoch
	commit  uint64
	prepare uint64
}

func newFakeESDB() *fakeESDB {
	f := &fakeESDB{
		heads:           map[string]uint64{},
		deleted:         map[string]bool{},
		next:            4096, // the log starts with the epoch record
		changed:         make(chan struct{}),
		drop:            make(chan struct{}),
		checkpointEvery: 8,
	}
	// The server's own events: statistics and settings, before and among guestlist's.
	f.system("$stats-127.0.0.1:2113", "$statsCollected")
	f.system("$settings", "$settings")
	return f
}

// system appends an EventStoreDB event.
func (f *fakeESDB) system(stream, typ string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rev, ok := f.heads[stream]
	if ok {
		rev++
	}
	f.write(stream, rev, []fakeRec{{id: uuid.New(), typ: typ, data: []byte("{}")}}, false)
}

// write adds recs to stream from revision rev; split gives them commit != prepare, as an
// explicit transaction would.
func (f *fakeESDB) write(stream string, rev uint64, recs []fakeRec, split bool) (first, last uint64) {
	now := time.Now().UnixNano() / 100
	for i := range recs {
		r := recs[i]
		r.stream, r.rev, r.created = stream, rev+uint64(i), now
		r.commit, r.prepare = f.next, f.next
		if split {
			r.prepare = f.next - 1
		}
		if i == 0 {
			first = r.commit
		}
		last = r.commit
		f.next += 97 + uint64(len(r.data))
		f.log = append(f.log, r)
		f.heads[stream] = r.rev
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return first, last
}

// serve runs the fake on a loopback port and returns its connection string.
func (f *fakeESDB) serve(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	f.start(lis)
	t.Cleanup(func() {
		f.mu.Lock()
		srv := f.srv
		f.mu.Unlock()
		srv.Stop()
	})
	return "esdb://" + f.addr + "?tls=false"
}

func (f *fakeESDB) start(lis net.Listener) {
	srv := grpc.NewServer()
	api.RegisterStreamsServer(f.srv0(srv), f)
	go func() { _ = srv.Serve(lis) }()
}

func (f *fakeESDB) srv0(srv *grpc.Server) *grpc.Server {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.srv = srv
	return srv
}

// stop stops serving, as a server that went down: connections and calls end.
func (f *fakeESDB) stop() {
	f.mu.Lock()
	srv := f.srv
	f.mu.Unlock()
	srv.Stop()
}

// restart serves again on the same address, with the same data.
func (f *fakeESDB) restart(t *testing.T) {
	t.Helper()
	var lis net.Listener
	var err error
	for range 100 {
		if lis, err = net.Listen("tcp", f.addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen again on %s: %v", f.addr, err)
	}
	f.start(lis)
}

func (f *fakeESDB) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

// dropSubscriptions ends every running subscription with Unavailable, as a server restart does.
func (f *fakeESDB) dropSubscriptions() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.drop)
	f.drop = make(chan struct{})
}

func (f *fakeESDB) tombstone(stream string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted[stream] = true
}

var errFakeDown = status.Error(codes.Unavailable, "fake: server unavailable")

func streamDeleted(ctx context.Context, stream string) error {
	_ = grpc.SetTrailer(ctx, metadata.Pairs("exception", "stream-deleted", "stream-name", stream))
	return status.Error(codes.FailedPrecondition, "fake: stream deleted")
}

func uuidOf(u *shared.UUID) (uuid.UUID, error) {
	if s := u.GetStructured(); s != nil {
		var b [16]byte
		for i := range 8 {
			b[i] = byte(uint64(s.MostSignificantBits) >> (56 - 8*i))
			b[8+i] = byte(uint64(s.LeastSignificantBits) >> (56 - 8*i))
		}
		return uuid.UUID(b), nil
	}
	return uuid.Parse(u.GetString_())
}

func protoUUID(u uuid.UUID) *shared.UUID {
	var most, least uint64
	for i := range 8 {
		most = most<<8 | uint64(u[i])
		least = least<<8 | uint64(u[8+i])
	}
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits: int64(most), LeastSignificantBits: int64(least)}}}
}

func (f *fakeESDB) Append(srv api.Streams_AppendServer) error {
	req, err := srv.Recv()
	if err != nil {
		return err
	}
	opts := req.GetOptions()
	if opts == nil {
		return status.Error(codes.InvalidArgument, "fake: options first")
	}
	stream := string(opts.GetStreamIdentifier().GetStreamName())
	var recs []fakeRec
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		m := req.GetProposedMessage()
		id, err := uuidOf(m.GetId())
		if err != nil {
			return status.Error(codes.InvalidArgument, "fake: bad id")
		}
		recs = append(recs, fakeRec{id: id, typ: m.GetMetadata()["type"], data: m.GetData(), meta: m.GetCustomMetadata()})
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errFakeDown
	}
	if f.deleted[stream] {
		return streamDeleted(srv.Context(), stream)
	}
	cur, exists := f.heads[stream]
	// expected: -1 no stream, -2 any, -4 stream exists, else a revision.
	var expected int64
	switch v := opts.GetExpectedStreamRevision().(type) {
	case *api.AppendReq_Options_Revision:
		expected = int64(v.Revision)
	case *api.AppendReq_Options_NoStream:
		expected = -1
	case *api.AppendReq_Options_Any:
		expected = -2
	case *api.AppendReq_Options_StreamExists:
		expected = -4
	}
	wrong := func() error {
		w := &api.AppendResp_WrongExpectedVersion{}
		if exists {
			w.CurrentRevisionOption = &api.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: cur}
		} else {
			w.CurrentRevisionOption = &api.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		}
		switch expected {
		case -1:
			w.ExpectedRevisionOption = &api.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
		case -2:
			w.ExpectedRevisionOption = &api.AppendResp_WrongExpectedVersion_ExpectedAny{ExpectedAny: &shared.Empty{}}
		case -4:
			w.ExpectedRevisionOption = &api.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
		default:
			w.ExpectedRevisionOption = &api.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: uint64(expected)}
		}
		return srv.SendAndClose(&api.AppendResp{Result: &api.AppendResp_WrongExpectedVersion_{WrongExpectedVersion: w}})
	}
	// idempotent reports whether recs are the events of the stream from revision from on.
	idempotent := func(from uint64) bool {
		i := 0
		for _, r := range f.log {
			if r.stream == stream && r.rev >= from && r.rev < from+uint64(len(recs)) {
				if r.id != recs[r.rev-from].id {
					return false
				}
				i++
			}
		}
		return i == len(recs)
	}
	// dedup answers as the server's AlreadyCommitted does: the revision of the retry's last
	// event and that event's log position as commit and prepare position.
	dedup := func(from uint64) error {
		last := from + uint64(len(recs)) - 1
		pos := &api.AppendResp_Success_Position{Position: &api.AppendResp_Position{}}
		for _, r := range f.log {
			if r.stream == stream && r.rev == last {
				pos.Position.CommitPosition, pos.Position.PreparePosition = r.commit, r.commit
			}
		}
		return srv.SendAndClose(&api.AppendResp{Result: &api.AppendResp_Success_{Success: &api.AppendResp_Success{
			CurrentRevisionOption: &api.AppendResp_Success_CurrentRevision{CurrentRevision: last},
			PositionOption:        pos,
		}}})
	}
	next := uint64(0)
	if exists {
		next = cur + 1
	}
	switch {
	case expected == -2 || expected == -4:
		if expected == -4 && !exists {
			return wrong()
		}
		for _, r := range f.log {
			if r.stream == stream && r.id == recs[0].id {
				if idempotent(r.rev) {
					return dedup(r.rev)
				}
				return wrong()
			}
		}
	case expected == -1 && exists, expected >= 0 && (!exists || uint64(expected) != cur):
		if from := uint64(expected + 1); expected < 0 || uint64(expected) < cur {
			if expected < 0 {
				from = 0
			}
			if idempotent(from) {
				return dedup(from)
			}
		}
		return wrong()
	}
	_, last := f.write(stream, next, recs, f.splitNext)
	f.splitNext = false
	return srv.SendAndClose(&api.AppendResp{Result: &api.AppendResp_Success_{Success: &api.AppendResp_Success{
		CurrentRevisionOption: &api.AppendResp_Success_CurrentRevision{CurrentRevision: next + uint64(len(recs)) - 1},
		PositionOption:        &api.AppendResp_Success_Position{Position: &api.AppendResp_Position{CommitPosition: last, PreparePosition: last}},
	}}})
}

func (f *fakeESDB) event(r fakeRec, withPosition bool) *api.ReadResp {
	commit, prepare := r.commit, r.prepare
	if !withPosition {
		commit, prepare = math.MaxUint64, math.MaxUint64
	}
	return &api.ReadResp{Content: &api.ReadResp_Event{Event: &api.ReadResp_ReadEvent{
		Event: &api.ReadResp_ReadEvent_RecordedEvent{
			Id:               protoUUID(r.id),
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(r.stream)},
			StreamRevision:   r.rev,
			CommitPosition:   commit,
			PreparePosition:  prepare,
			Metadata: map[string]string{
				"type":         r.typ,
				"content-type": "application/octet-stream",
				"created":      strconv.FormatInt(r.created, 10),
			},
			Data:           r.data,
			CustomMetadata: r.meta,
		},
		Position: &api.ReadResp_ReadEvent_CommitPosition{CommitPosition: commit},
	}}}
}

// before reports whether (c1, p1) < (c2, p2) in the $all order.
func before(c1, p1, c2, p2 uint64) bool { return c1 < c2 || (c1 == c2 && p1 < p2) }

func (f *fakeESDB) Read(req *api.ReadReq, srv api.Streams_ReadServer) error {
	o := req.GetOptions()
	f.mu.Lock()
	if f.down {
		f.mu.Unlock()
		return errFakeDown
	}
	if o.GetSubscription() != nil {
		f.subscribed++
		f.mu.Unlock()
		return f.subscribe(o, srv)
	}
	var out []*api.ReadResp
	count := o.GetCount()
	if s := o.GetStream(); s != nil {
		stream := string(s.GetStreamIdentifier().GetStreamName())
		if f.deleted[stream] {
			f.mu.Unlock()
			return streamDeleted(srv.Context(), stream)
		}
		last, exists := f.heads[stream]
		if !exists {
			f.mu.Unlock()
			return srv.Send(&api.ReadResp{Content: &api.ReadResp_StreamNotFound_{StreamNotFound: &api.ReadResp_StreamNotFound{
				StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(stream)}}}})
		}
		var recs []fakeRec
		for _, r := range f.log {
			if r.stream == stream {
				recs = append(recs, r)
			}
		}
		if o.GetReadDirection() == api.ReadReq_Options_Forwards {
			from := s.GetRevision() // 0 for Start
			for _, r := range recs {
				if r.rev >= from && uint64(len(out)) < count {
					out = append(out, f.event(r, !f.readsWithoutPosition))
				}
			}
		} else {
			from := last
			if _, ok := s.GetRevisionOption().(*api.ReadReq_Options_StreamOptions_Revision); ok {
				from = s.GetRevision()
			}
			// As the server: its read enumerator pages on from the index's next event number,
			// min(start-1, last), until it has count events; from past the end is the last event.
			from = min(from, last)
			low := uint64(0)
			if from+1 > count {
				low = from + 1 - count
			}
			for i := len(recs) - 1; i >= 0; i-- {
				if r := recs[i]; r.rev <= from && r.rev >= low {
					out = append(out, f.event(r, !f.readsWithoutPosition))
				}
			}
		}
	} else {
		a := o.GetAll()
		forwards := o.GetReadDirection() == api.ReadReq_Options_Forwards
		c, p := uint64(0), uint64(0)
		switch {
		case a.GetPosition() != nil:
			c, p = a.GetPosition().GetCommitPosition(), a.GetPosition().GetPreparePosition()
		case a.GetEnd() != nil:
			c, p = math.MaxUint64, math.MaxUint64
		}
		if forwards {
			for _, r := range f.log {
				if !before(r.commit, r.prepare, c, p) && uint64(len(out)) < count {
					out = append(out, f.event(r, true))
				}
			}
		} else {
			for i := len(f.log) - 1; i >= 0; i-- {
				if r := f.log[i]; before(r.commit, r.prepare, c, p) && uint64(len(out)) < count {
					out = append(out, f.event(r, true))
				}
			}
		}
	}
	f.mu.Unlock()
	for _, m := range out {
		if err := srv.Send(m); err != nil {
			return err
		}
	}
	return nil
}

// match applies a subscription's server-side filter.
func match(fo *api.ReadReq_Options_FilterOptions, r fakeRec) bool {
	if fo == nil {
		return true
	}
	var e *api.ReadReq_Options_FilterOptions_Expression
	subject := r.typ
	if s := fo.GetStreamIdentifier(); s != nil {
		e, subject = s, r.stream
	} else {
		e = fo.GetEventType()
	}
	if e.GetRegex() != "" {
		if e.GetRegex() != `^[^\$].*` {
			panic("fake: unsupported regex " + e.GetRegex())
		}
		return !strings.HasPrefix(subject, "$")
	}
	for _, p := range e.GetPrefix() {
		if strings.HasPrefix(subject, p) {
			return true
		}
	}
	return false
}

func (f *fakeESDB) subscribe(o *api.ReadReq_Options, srv api.Streams_ReadServer) error {
	if err := srv.Send(&api.ReadResp{Content: &api.ReadResp_Confirmation{Confirmation: &api.ReadResp_SubscriptionConfirmation{SubscriptionId: uuid.NewString()}}}); err != nil {
		return err
	}
	a := o.GetAll()
	fo := o.GetFilter()
	f.mu.Lock()
	c, p := uint64(0), uint64(0)
	next := 0 // index in the log of the next record to look at
	switch {
	case a.GetPosition() != nil:
		c, p = a.GetPosition().GetCommitPosition(), a.GetPosition().GetPreparePosition()
		for next < len(f.log) && !before(c, p, f.log[next].commit, f.log[next].prepare) {
			next++
		}
	case a.GetEnd() != nil:
		next = len(f.log)
	}
	drop := f.drop
	f.mu.Unlock()
	considered := 0
	for {
		f.mu.Lock()
		batch := append([]fakeRec(nil), f.log[next:]...)
		nextPos := f.next // after the last record
		changed := f.changed
		f.mu.Unlock()
		for i, r := range batch {
			if fo == nil || match(fo, r) {
				if err := srv.Send(f.event(r, true)); err != nil {
					return err
				}
			}
			considered++
			if fo != nil && considered%f.checkpointEvery == 0 {
				after := nextPos
				if i+1 < len(batch) {
					after = batch[i+1].commit
				}
				if err := srv.Send(&api.ReadResp{Content: &api.ReadResp_Checkpoint_{Checkpoint: &api.ReadResp_Checkpoint{CommitPosition: after, PreparePosition: 0}}}); err != nil {
					return err
				}
			}
		}
		next += len(batch)
		select {
		case <-changed:
		case <-drop:
			return status.Error(codes.Unavailable, "fake: subscription dropped")
		case <-srv.Context().Done():
			return srv.Context().Err()
		}
	}
}

// quiet drops the log lines of stores on the fake (every induced failure logs a warning).
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeStoreFor opens a Store on a running fake.
func fakeStoreFor(t *testing.T, f *fakeESDB, opts ...Option) *Store {
	t.Helper()
	conn := f.serve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, conn, append([]Option{WithLogger(quiet), WithReconnectBackoff(5*time.Millisecond, 50*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("Open(%s): %v", conn, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// String describes the fake's log, for failure messages.
func (f *fakeESDB) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, r := range f.log {
		fmt.Fprintf(&b, "%d/%d %s@%d %s\n", r.commit, r.prepare, r.stream, r.rev, r.typ)
	}
	return b.String()
}
