package boltstore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/storetest"
)

// crashChildEnv, when set, makes TestKill9 the child: it appends to the store at that path
// until it is killed.
const crashChildEnv = "BOLTSTORE_KILL9_CHILD"

// crashData is the data of the event at revision rev of stream, so that the parent can check it.
func crashData(stream string, rev uint64) []byte {
	return fmt.Appendf(nil, "%s/%d/%s", stream, rev, strings.Repeat("x", 150))
}

// TestKill9 runs a child process that appends from several goroutines and prints every
// acknowledged append, kills it with SIGKILL, and checks that every acknowledged append is in
// the reopened store, with its data, and that the store is consistent.
func TestKill9(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	const wantAcks = 400
	path := filepath.Join(t.TempDir(), "events.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type ack struct {
		stream   string
		firstRev uint64
		lastRev  uint64
		lastPos  eventstore.Position
		ids      []string
	}
	var acks []ack
	lines := bufio.NewScanner(stdout)
	deadline := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	for len(acks) < wantAcks && lines.Scan() {
		f := strings.Fields(lines.Text())
		if len(f) != 6 || f[0] != "ACK" {
			continue
		}
		first, err1 := strconv.ParseUint(f[2], 10, 64)
		last, err2 := strconv.ParseUint(f[3], 10, 64)
		pos, err3 := strconv.ParseUint(f[4], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("bad ack line %q", lines.Text())
		}
		acks = append(acks, ack{f[1], first, last, eventstore.Position(pos), strings.Split(f[5], ",")})
	}
	deadline.Stop()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill: %v", err)
	}
	_ = cmd.Wait()
	if len(acks) < wantAcks {
		t.Fatalf("child acknowledged %d appends before it ended, want %d; stderr:\n%s", len(acks), wantAcks, stderr.String())
	}

	s, err := Open(path)
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer s.Close()
	ctx := t.Context()
	for _, a := range acks {
		n := int(a.lastRev - a.firstRev + 1)
		got, err := s.ReadStream(ctx, a.stream, eventstore.Forwards, a.firstRev, n)
		if err != nil || len(got) != n {
			t.Errorf("acknowledged append %s@%d..%d: read %d events, %v", a.stream, a.firstRev, a.lastRev, len(got), err)
			continue
		}
		for i, ev := range got {
			rev := a.firstRev + uint64(i)
			if ev.ID != a.ids[i] || ev.Revision != rev || !bytes.Equal(ev.Data, crashData(a.stream, rev)) {
				t.Errorf("acknowledged event %s@%d: read id %s revision %d data %.40q", a.stream, rev, ev.ID, ev.Revision, ev.Data)
			}
		}
		if got[n-1].Position != a.lastPos {
			t.Errorf("acknowledged append %s@%d at position %d, read at %d", a.stream, a.lastRev, a.lastPos, got[n-1].Position)
		}
	}
	// The log is dense, and each stream's revisions run from 0 without gaps.
	last, err := s.LastPosition(ctx)
	if err != nil {
		t.Fatal(err)
	}
	revs := map[string]uint64{}
	for from := eventstore.Start; from < last; {
		evs, err := s.ReadAll(ctx, from, 1000, eventstore.Filter{})
		if err != nil {
			t.Fatalf("ReadAll: %v", err)
		}
		for _, ev := range evs {
			if ev.Position != from+1 {
				t.Fatalf("log jumps from %d to %d", from, ev.Position)
			}
			if ev.Revision != revs[ev.Stream] || !bytes.Equal(ev.Data, crashData(ev.Stream, ev.Revision)) {
				t.Fatalf("event at %d: %s@%d, want revision %d and its data", ev.Position, ev.Stream, ev.Revision, revs[ev.Stream])
			}
			revs[ev.Stream]++
			from = ev.Position
		}
	}
	t.Logf("%d acknowledged appends checked; the store holds %d events", len(acks), last)
	// And it goes on.
	if _, err := s.Append(ctx, "after-crash", eventstore.NoStream(), ev("T", "x")); err != nil {
		t.Errorf("append after reopening: %v", err)
	}
}

func crashChild(path string) {
	// Never outlive a parent that failed to kill us.
	time.AfterFunc(60*time.Second, func() { os.Exit(3) })
	// Flush the index now and then, so that the parent finds some of it flushed and some not.
	s, err := Open(path, WithIndexFlush(100))
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	var out sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			stream := fmt.Sprintf("crash-%d", g)
			exp := eventstore.NoStream()
			var rev uint64
			for i := 0; ; i++ {
				n := 1 + i%3
				evs := make([]eventstore.EventData, n)
				ids := make([]string, n)
				for j := range evs {
					ids[j] = storetest.NewEventID()
					evs[j] = eventstore.EventData{ID: ids[j], Type: "Crash", Data: crashData(stream, rev+uint64(j))}
				}
				res, err := s.Append(context.Background(), stream, exp, evs...)
				if err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(2)
				}
				line := fmt.Sprintf("ACK %s %d %d %d %s\n", stream, rev, res.NextExpectedRevision, res.Position, strings.Join(ids, ","))
				out.Lock()
				_, _ = os.Stdout.WriteString(line)
				out.Unlock()
				rev = res.NextExpectedRevision + 1
				exp = eventstore.Exact(res.NextExpectedRevision)
			}
		})
	}
	wg.Wait()
}
