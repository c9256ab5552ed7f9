//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// cpuSet returns the set of cpus.
func cpuSet(cpus []int) *unix.CPUSet {
	var set unix.CPUSet
	set.Zero()
	for _, c := range cpus {
		set.Set(c)
	}
	return &set
}

// pinTasks sets the CPU affinity of every thread of process pid to set. Threads a pinned thread
// creates later inherit its affinity; the threads are listed again until a pass finds no new one,
// so that a thread created during a pass by one not yet pinned is pinned too.
func pinTasks(pid int, set *unix.CPUSet) error {
	done := map[int]bool{}
	for {
		tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
		if err != nil {
			return fmt.Errorf("pin process %d: %w", pid, err)
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("pin thread %d of process %d: %w", tid, pid, err)
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
}

// otherCPUs returns the CPUs 0..n-1 except cpu.
func otherCPUs(n, cpu int) []int {
	var out []int
	for c := range n {
		if c != cpu {
			out = append(out, c)
		}
	}
	return out
}
