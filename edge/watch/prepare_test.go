package watch

import (
	"runtime"
	"testing"
	"time"
	"weak"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestPartsPreparedAsTheyArriveAndDropped: the watch prepares a part of a response as it arrives
// (before the next part), and keeps nothing it prepared once the response is applied: a hostname
// a later snapshot leaves out is garbage while the session goes on.
func TestPartsPreparedAsTheyArriveAndDropped(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	other := pkitest.NewCA(t, "Other Root")
	acks := make(chan *configv1.WatchRequest, 10)
	release, next := make(chan struct{}), make(chan struct{})
	script := func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, More: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 5, ca, "http://x")}})
		select {
		case <-release:
		case <-s.stream.Context().Done():
			return nil
		}
		s.send(&configv1.WatchResponse{Position: 5, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("b.example.com", 5, other, "http://x")}})
		push(acks, s.recv())
		select {
		case <-next:
		case <-s.stream.Context().Done():
			return nil
		}
		s.send(&configv1.WatchResponse{Position: 6, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("c.example.com", 6, other, "http://x")}})
		push(acks, s.recv())
		<-s.stream.Context().Done()
		return nil
	}
	_, addr := startServer(t, script)
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{Logger: quietLogger(t), Backoff: Backoff{Min: time.Second}})

	// While the last part is withheld, a configuration trusting the first part's CA shares its
	// list with one the watch holds prepared (the test holds none of its own: each is garbage at
	// the next GC, and with it what it alone used in the store's cache).
	waitFor(t, "the first part to be prepared on arrival", func() bool {
		runtime.GC()
		c := hostCfg("probe.example.com", 1, ca, "http://x")
		own := &c.CertificateAuthorities[0]
		if hs := store.Prepare([]*configv1.HostnameConfig{c}); hs[0] == nil {
			t.Fatal("the probe could not be prepared")
		}
		return &c.CertificateAuthorities[0] != own
	})
	close(release)
	if a := <-acks; a.GetAckPosition() != 5 || a.GetError() != "" {
		t.Fatalf("ack %v", a)
	}
	var gone weak.Pointer[decision.Hostname]
	func() {
		h, ok := store.Load().Lookup("a.example.com")
		if !ok {
			t.Fatal("a.example.com not applied")
		}
		gone = weak.Make(h)
	}()
	close(next)
	if a := <-acks; a.GetAckPosition() != 6 || a.GetError() != "" {
		t.Fatalf("ack %v", a)
	}
	waitFor(t, "a.example.com, left out by the next snapshot, to be garbage", func() bool {
		runtime.GC()
		return gone.Value() == nil
	})
}
