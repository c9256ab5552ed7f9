//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSplitCPUs: the origin's CPU must be one this process may run on, which need not be
// 0..NumCPU-1 (a container on CPUs 2-3), with at least one more left for the others.
func TestSplitCPUs(t *testing.T) {
	for _, tc := range []struct {
		allowed []int
		cpu     int
		want    []int // nil: an error
	}{
		{[]int{0, 1, 2, 3}, 1, []int{0, 2, 3}},
		{[]int{0, 1}, 1, []int{0}},
		{[]int{2, 3}, 3, []int{2}},
		{[]int{2, 3}, 1, nil}, // NumCPU is 2, but CPU 1 is not allowed
		{[]int{2, 3}, 0, nil},
		{[]int{0}, 0, nil}, // no CPU left for the others
		{[]int{0, 1}, -2, nil},
		{[]int{0, 1}, 1 << 20, nil},
	} {
		got, err := splitCPUs(cpuSet(tc.allowed), tc.cpu)
		if tc.want == nil {
			if err == nil {
				t.Errorf("splitCPUs(%v, %d) = %v, want an error", tc.allowed, tc.cpu, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitCPUs(%v, %d) = %v, %v; want %v", tc.allowed, tc.cpu, got, err, tc.want)
		}
	}
}

// TestPinTasks pins every thread of a child process (this test binary, which runs several
// threads) to one CPU this process may use, and reads each thread's affinity back.
func TestPinTasks(t *testing.T) {
	var mine unix.CPUSet
	if err := unix.SchedGetaffinity(0, &mine); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for c := range 1024 {
		if mine.IsSet(c) {
			cpu = c
			break
		}
	}
	if cpu < 0 {
		t.Fatal("no CPU in this process's affinity")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestHelperSleeps$")
	cmd.Env = append(os.Environ(), "GUESTLIST_BENCH_HELPER_SLEEP=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	if err := pinTasks(pid, cpuSet([]int{cpu})); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		var got unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &got); err != nil {
			t.Fatal(err)
		}
		if got.Count() != 1 || !got.IsSet(cpu) {
			t.Errorf("thread %d of %d: affinity of %d CPUs, CPU %d set: %v; want CPU %d alone", tid, pid, got.Count(), cpu, got.IsSet(cpu), cpu)
		}
	}
	// A set of no CPU the machine has: sched_setaffinity fails (EINVAL), and so must pinTasks.
	if err := pinTasks(pid, cpuSet([]int{1023})); err == nil {
		t.Error("pinTasks to CPU 1023: no error")
	}
	if err := pinTasks(1<<30, cpuSet([]int{cpu})); err == nil {
		t.Error("pinTasks of a process that does not exist: no error")
	}
}

// TestHelperSleeps is the child of TestPinTasks: it waits until its standard input closes.
func TestHelperSleeps(t *testing.T) {
	if os.Getenv("GUESTLIST_BENCH_HELPER_SLEEP") != "1" {
		t.Skip("the child process of TestPinTasks")
	}
	var b [1]byte
	_, _ = os.Stdin.Read(b[:])
}

// TestScriptLeavesProcs: scripts/bench-edge must not pass -procs, or -origin-cpu could not make
// it default to the number of the other CPUs (the bench would run GOMAXPROCS=2 and
// worker_processes 2 on the one CPU left to the servers).
func TestScriptLeavesProcs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "scripts", "bench-edge"))
	if err != nil {
		t.Fatal(err)
	}
	_, cmd, ok := strings.Cut(string(b), "\ngo run ./edge/enforce/bench ")
	if !ok {
		t.Fatal("scripts/bench-edge: no line starting `go run ./edge/enforce/bench`")
	}
	cmd, _, _ = strings.Cut(cmd, `"$@"`)
	for _, f := range strings.Fields(cmd) {
		if f == "-procs" || strings.HasPrefix(f, "-procs=") {
			t.Errorf("scripts/bench-edge passes %s to the bench", f)
		}
	}
}
