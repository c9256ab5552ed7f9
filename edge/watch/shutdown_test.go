package watch

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestShutdownSavesTheLastAppliedResponse: Run saves once more before it returns, and that save
// must hold every response it applied. A response whose Apply was in progress
// when the context ended (a large change: here, many hostnames with policies of their own to
// compile) was applied after the saver's last save, so the edge restarted from the position
// before it: without the control plane, it served a configuration older than the one it had
// applied.
func TestShutdownSavesTheLastAppliedResponse(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	var change []*configv1.HostnameConfig
	for i := range 1500 {
		c := hostCfg(fmt.Sprintf("h%d.example.com", i), 2, ca, "http://127.0.0.1:1")
		c.Policy = &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{{
			Name: "path", Action: configv1.Action_ACTION_ALLOW,
			Expression: fmt.Sprintf(`cert.verified && request.path.startsWith("/%d/") && request.method in ["GET", "HEAD"]`, i),
		}}}
		change = append(change, c)
	}
	sent := make(chan struct{})
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 1, ca, "http://127.0.0.1:1")}})
		s.recv()
		s.send(&configv1.WatchResponse{Position: 2, Upserts: change})
		close(sent)
		<-s.stream.Context().Done()
		return nil
	})
	store := configset.NewStore()
	state := filepath.Join(t.TempDir(), "edge-config.bin")
	stop := runWatch(t, dial(t, addr), store, Options{StatePath: state, Logger: quietLogger(t)})
	waitFor(t, "the snapshot saved", func() bool {
		saved := configset.NewStore()
		return saved.LoadFile(state) == nil && saved.Load().Position() == 1
	})
	<-sent
	time.Sleep(100 * time.Millisecond) // the change is received; its Apply compiles the policies
	if store.Load().Position() != 1 {
		t.Log("the change was applied within 100 ms: the test does not end Run during its Apply")
	}
	stop()
	if pos := store.Load().Position(); pos != 2 {
		t.Fatalf("the store is at position %d after Run returned, want 2", pos)
	}
	saved := configset.NewStore()
	if err := saved.LoadFile(state); err != nil {
		t.Fatal(err)
	}
	if pos := saved.Load().Position(); pos != 2 {
		t.Errorf("the saved configuration is at position %d, the store at 2: the last applied response was not saved", pos)
	}
}

// TestSavesAppendChanges: after the first save, a change to one hostname appends to the file
// instead of writing the whole configuration again, so the file keeps its first bytes; a restart
// at any moment (the file read while Run goes on) loads the last change saved; and the save as
// Run returns writes the whole set, as Store.Save does.
func TestSavesAppendChanges(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	var hosts []*configv1.HostnameConfig
	for i := range 300 {
		hosts = append(hosts, hostCfg(fmt.Sprintf("h%d.example.com", i), 1, ca, "http://127.0.0.1:1"))
	}
	const last = 21
	next := make(chan struct{})
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: hosts})
		s.recv()
		for pos := uint64(2); pos <= last; pos++ {
			<-next
			s.send(&configv1.WatchResponse{Position: pos, Upserts: []*configv1.HostnameConfig{hostCfg(fmt.Sprintf("h%d.example.com", pos), pos, ca, "http://127.0.0.1:2")}})
			s.recv()
		}
		<-s.stream.Context().Done()
		return nil
	})
	store := configset.NewStore()
	state := filepath.Join(t.TempDir(), "edge-config.bin")
	reader := sdkmetric.NewManualReader()
	stop := runWatch(t, dial(t, addr), store, Options{StatePath: state, Logger: quietLogger(t),
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	savedAt := func(pos uint64) func() bool {
		return func() bool {
			saved := configset.NewStore()
			return saved.LoadFile(state) == nil && saved.Load().Position() == pos
		}
	}
	waitFor(t, "the snapshot saved", savedAt(1))
	first, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	for pos := uint64(2); pos <= last; pos++ {
		next <- struct{}{}
		waitFor(t, fmt.Sprintf("change %d saved", pos), savedAt(pos))
	}
	now, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(now, first) || len(now) == len(first) {
		t.Fatalf("the file (%d bytes) does not start with the whole set first saved (%d bytes): the changes were not appended", len(now), len(first))
	}
	if grew := len(now) - len(first); grew > (last-1)*1024 {
		t.Fatalf("%d changes of one hostname grew the file by %d bytes", last-1, grew)
	}
	restarted := configset.NewStore()
	if err := restarted.LoadFile(state); err != nil {
		t.Fatal(err)
	}
	if h, ok := restarted.Load().Lookup("h21.example.com"); !ok || h.Config.GetOriginUrl() != "http://127.0.0.1:2" || restarted.Load().Len() != 300 {
		t.Fatalf("the file loads to %d hostnames, h21: %v", restarted.Load().Len(), ok)
	}
	// Each change was saved before the next was sent: one append each.
	if m := collect(t, reader); m["guestlist.edge.config.saves|result=appended"] != last-1 || m["guestlist.edge.config.saves|result=whole"] != 1 || m["guestlist.edge.config.saves|result=failed"] != 0 {
		t.Errorf("saves counted before the stop: %v", m)
	}
	stop()
	if m := collect(t, reader); m["guestlist.edge.config.saves|result=whole"] != 2 {
		t.Errorf("saves counted after the stop (the whole set written once more): %v", m)
	}
	whole := filepath.Join(t.TempDir(), "whole")
	if err := store.Save(whole); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(whole)
	if got, _ := os.ReadFile(state); !bytes.Equal(got, want) {
		t.Fatalf("after Run returned, the file (%d bytes) is not the whole set (%d bytes)", len(got), len(want))
	}
}

// TestRestartFromAppendedFile: an edge restarted from a file with changes appended (as a crash
// leaves it) appends its next change to that file rather than writing the whole set first, and
// the save as Run returns writes the whole set, also when no change came at all.
func TestRestartFromAppendedFile(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	var hosts []*configv1.HostnameConfig
	for i := range 300 {
		hosts = append(hosts, hostCfg(fmt.Sprintf("h%d.example.com", i), 1, ca, "http://127.0.0.1:1"))
	}
	change := func(pos uint64) *configv1.WatchResponse {
		return &configv1.WatchResponse{Position: pos, Upserts: []*configv1.HostnameConfig{hostCfg(fmt.Sprintf("h%d.example.com", pos), pos, ca, "http://127.0.0.1:2")}}
	}
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: hosts})
		s.recv()
		for pos := uint64(2); pos <= 4; pos++ {
			s.send(change(pos))
			s.recv()
		}
		<-s.stream.Context().Done()
		return nil
	})
	dir := t.TempDir()
	state := filepath.Join(dir, "edge-config.bin")
	first := configset.NewStore()
	stop := runWatch(t, dial(t, addr), first, Options{StatePath: state, Logger: quietLogger(t)})
	savedAt := func(path string, pos uint64) func() bool {
		return func() bool {
			saved := configset.NewStore()
			return saved.LoadFile(path) == nil && saved.Load().Position() == pos
		}
	}
	waitFor(t, "the changes saved", savedAt(state, 4))
	crashed, err := os.ReadFile(state) // the file as a crash now would leave it: changes appended
	if err != nil {
		t.Fatal(err)
	}
	stop()

	whole := func(store *configset.Store) []byte {
		p := filepath.Join(t.TempDir(), "whole")
		if err := store.Save(p); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(p)
		return b
	}
	if bytes.Equal(crashed, whole(first)) {
		t.Fatal("the file had no changes appended")
	}
	for _, tc := range []struct {
		name   string
		change bool // the control plane sends a change after the restart
		file   []byte
		resume uint64
	}{
		{"no change", false, crashed, 4},
		{"a change", true, crashed, 4},
		// The last change cut short: the file ends with a tail LoadFile leaves out.
		{"no change, torn tail", false, crashed[:len(crashed)-1], 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "edge-config.bin")
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.resume == 0 { // where the file stands without its last change
				torn := configset.NewStore()
				var tail *configset.TailError
				if err := torn.LoadFile(path); !errors.As(err, &tail) {
					t.Fatalf("LoadFile = %v, want a tail left out", err)
				}
				tc.resume = torn.Load().Position()
			}
			hello := make(chan *configv1.WatchRequest, 1)
			_, addr := startServer(t, func(s *session) error {
				hello <- s.hello
				if tc.change {
					s.send(change(5))
					s.recv()
				}
				<-s.stream.Context().Done()
				return nil
			})
			store := configset.NewStore()
			stop := runWatch(t, dial(t, addr), store, Options{StatePath: path, Logger: quietLogger(t)})
			if h := <-hello; h.GetResumePosition() != tc.resume {
				t.Fatalf("resumed at %d, want %d", h.GetResumePosition(), tc.resume)
			}
			if tc.change {
				waitFor(t, "the change saved", savedAt(path, 5))
				now, _ := os.ReadFile(path)
				if !bytes.HasPrefix(now, crashed) || len(now) == len(crashed) {
					t.Fatalf("the file (%d bytes) does not start with the one loaded (%d bytes): the change was not appended to it", len(now), len(crashed))
				}
			}
			stop()
			if got := mustReadFile(t, path); !bytes.Equal(got, whole(store)) {
				t.Fatalf("after Run returned, the file (%d bytes) is not the whole set", len(got))
			}
		})
	}
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSaverLogsAFailedAppendOnce: an append that fails (the file replaced since the saver wrote
// it) is logged once, by the save that tried it, not again by the save as Run returns, which
// tries none (Compact writes the whole set).
func TestSaverLogsAFailedAppendOnce(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	next := make(chan struct{})
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 1, ca, "http://127.0.0.1:1")}})
		s.recv()
		<-next
		s.send(&configv1.WatchResponse{Position: 2, Upserts: []*configv1.HostnameConfig{hostCfg("b.example.com", 2, ca, "http://127.0.0.1:1")}})
		s.recv()
		<-s.stream.Context().Done()
		return nil
	})
	var logs lockedBuffer
	store := configset.NewStore()
	state := filepath.Join(t.TempDir(), "edge-config.bin")
	stop := runWatch(t, dial(t, addr), store, Options{StatePath: state, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	savedAt := func(pos uint64) func() bool {
		return func() bool {
			saved := configset.NewStore()
			return saved.LoadFile(state) == nil && saved.Load().Position() == pos
		}
	}
	waitFor(t, "the snapshot saved", savedAt(1))
	// The same bytes, another file: the saver's next append is refused.
	if err := os.WriteFile(state+".copy", mustReadFile(t, state), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(state+".copy", state); err != nil {
		t.Fatal(err)
	}
	next <- struct{}{}
	waitFor(t, "the change saved", savedAt(2))
	stop()
	if n := strings.Count(logs.String(), "could not append"); n != 1 {
		t.Fatalf("the failed append was logged %d times, want once:\n%s", n, logs.String())
	}
}

// lockedBuffer is a bytes.Buffer that a logger may write from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestFailedSavesCounted: a save that fails (here, into a directory that does not exist) is
// counted as failed, so that an edge that would restart with an older configuration can be
// noticed by its metrics, not only its logs.
func TestFailedSavesCounted(t *testing.T) {
	ca := pkitest.NewCA(t, "Acme Root")
	_, addr := startServer(t, func(s *session) error {
		s.send(&configv1.WatchResponse{Position: 1, Snapshot: true, Upserts: []*configv1.HostnameConfig{hostCfg("a.example.com", 1, ca, "http://127.0.0.1:1")}})
		s.recv()
		<-s.stream.Context().Done()
		return nil
	})
	reader := sdkmetric.NewManualReader()
	store := configset.NewStore()
	runWatch(t, dial(t, addr), store, Options{StatePath: filepath.Join(t.TempDir(), "missing", "edge-config.bin"), Logger: quietLogger(t),
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	waitFor(t, "the failed save counted", func() bool {
		m := collect(t, reader)
		return m["guestlist.edge.config.saves|result=failed"] == 1 && m["guestlist.edge.config.saves|result=whole"] == 0
	})
}
