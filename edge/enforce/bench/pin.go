//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"unsafe"

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

// splitCPUs checks that cpu is one of the CPUs allowed (this process's affinity, which may be
// any CPUs, e.g. 2-3 in a container) and that at least one more is, and returns the others.
func splitCPUs(allowed *unix.CPUSet, cpu int) ([]int, error) {
	if cpu < 0 || cpu >= 8*int(unsafe.Sizeof(*allowed)) || !allowed.IsSet(cpu) {
		return nil, fmt.Errorf("CPU %d is not one this process may run on (%v)", cpu, cpuList(allowed))
	}
	var out []int
	for _, c := range cpuList(allowed) {
		if c != cpu {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("CPU %d is the only one this process may run on: none left for the others", cpu)
	}
	return out, nil
}

// cpuList returns the CPUs in set, in order.
func cpuList(set *unix.CPUSet) []int {
	var out []int
	for c := range 8 * int(unsafe.Sizeof(*set)) {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	return out
}
