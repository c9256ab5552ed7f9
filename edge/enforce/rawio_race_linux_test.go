//go:build linux && race

package enforce

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestRawIORaceAnnotations: with -race, a goroutine that touches the buffer a rawTCPConn's Read
// fills, or its Write sends, with no synchronization is reported, as it is through syscall.Read
// and syscall.Write (which tell the race detector what the kernel reads and writes;
// syscall.RawSyscall does not). Each case runs in a child process, whose race report is the
// expected outcome.
func TestRawIORaceAnnotations(t *testing.T) {
	if mode := os.Getenv("ENFORCE_RAWIO_RACE_CHILD"); mode != "" {
		rawIORaceChild(t, mode)
		return
	}
	for _, tc := range []struct {
		name, mode, syscalls string
		race                 bool
	}{
		{"fail/raw: a goroutine writes the buffer a Read fills", "read", "", true},
		{"fail/raw: a goroutine writes the buffer a Write sends", "write", "", true},
		{"fail/runtime: a goroutine writes the buffer a Read fills", "read", "runtime", true},
		{"fail/runtime: a goroutine writes the buffer a Write sends", "write", "runtime", true},
		{"ok/raw: the buffer is handed over through a channel", "sync", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestRawIORaceAnnotations$", "-test.count=1")
			cmd.Env = append(os.Environ(), "ENFORCE_RAWIO_RACE_CHILD="+tc.mode,
				"GUESTLIST_EDGE_SYSCALLS="+tc.syscalls, "GORACE=halt_on_error=1 atexit_sleep_ms=0")
			out, _ := cmd.CombinedOutput()
			if got := strings.Contains(string(out), "WARNING: DATA RACE"); got != tc.race {
				t.Fatalf("race reported: %v, want %v; the child's output:\n%s", got, tc.race, out)
			}
		})
	}
}

// rawIORaceChild runs one case of TestRawIORaceAnnotations, rawIO as the environment sets it.
func rawIORaceChild(t *testing.T, mode string) {
	peer, c := rawPair(t)
	buf := make([]byte, 8)
	handed := make(chan struct{})
	go func() {
		buf[3] = 'x' // the racing (or, for "sync", handed-over) access
		if mode == "sync" {
			close(handed)
		}
	}()
	if mode == "sync" {
		<-handed
	} else {
		time.Sleep(20 * time.Millisecond) // the goroutine has run: no synchronization with it
	}
	switch mode {
	case "read", "sync":
		if _, err := peer.Write([]byte("abcdefgh")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	case "write":
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
}
