//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// procStat is what the bench reads of /proc/<pid>/stat.
type procStat struct {
	ppid      int
	user, sys time.Duration // utime, stime
}

// readProcStat reads /proc/<pid>/stat.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, fmt.Errorf("read stat of process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: fields count from the
	// last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("stat of process %d: no ')' in %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("stat of process %d: %d fields after the name", pid, len(f))
	}
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	ppid, err1 := strconv.Atoi(f[1])
	utime, err2 := strconv.ParseInt(f[11], 10, 64)
	stime, err3 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procStat{}, fmt.Errorf("stat of process %d: %w", pid, err)
	}
	return procStat{ppid: ppid, user: time.Duration(utime) * clockTick, sys: time.Duration(stime) * clockTick}, nil
}

// processCPU returns the CPU time in user and system mode of the processes pids, summed.
func processCPU(pids []int) (user, sys time.Duration, err error) {
	for _, pid := range pids {
		st, err := readProcStat(pid)
		if err != nil {
			return 0, 0, err
		}
		user += st.user
		sys += st.sys
	}
	return user, sys, nil
}

// machineCPU reads the first line of /proc/stat: the CPU time of all CPUs spent busy (user,
// nice, system, irq, softirq, steal) and idle (idle, iowait).
func machineCPU() (busy, idle time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var v [8]int64
	for i := range v {
		if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
	}
	// user nice system idle iowait irq softirq steal
	busy = time.Duration(v[0]+v[1]+v[2]+v[5]+v[6]+v[7]) * clockTick
	idle = time.Duration(v[3]+v[4]) * clockTick
	return busy, idle, nil
}

// childrenOf returns the processes whose parent is pid (nginx's workers).
func childrenOf(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readProcStat(p)
		if err != nil {
			continue // exited meanwhile
		}
		if st.ppid == pid {
			out = append(out, p)
		}
	}
	return out, nil
}

// cpuModel returns the CPU model name from /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// child is a process of the bench (origin or edge): the bench binary run again with -role. It
// prints one line "READY <json>" on its standard output when it serves, and exits when its
// standard input is closed.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error // receives cmd.Wait's result, once

	stopOnce sync.Once
	stopErr  error
}

// readyPrefix starts the line a child prints when it is ready.
const readyPrefix = "READY "

// startChild runs this program again with args and env, waits for its READY line (up to
// timeout) and decodes the JSON after it into ready. The child gets SIGKILL if this process dies
// (Pdeathsig), so that nothing outlives the bench.
func startChild(ctx context.Context, name string, args, env []string, timeout time.Duration, ready any) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start %s: find this program: %w", name, err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = prefixWriter(os.Stderr, name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		sent := false
		for sc.Scan() {
			if line := sc.Text(); !sent && strings.HasPrefix(line, readyPrefix) {
				lines <- line
				sent = true
			} else {
				fmt.Fprintf(os.Stderr, "%s: %s\n", name, line)
			}
		}
		if !sent {
			close(lines)
		}
		c.done <- cmd.Wait()
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case line, ok := <-lines:
		if !ok {
			err := <-c.done
			return nil, fmt.Errorf("%s exited before it was ready: %v", name, err)
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, readyPrefix)), ready); err != nil {
			c.stop()
			return nil, fmt.Errorf("%s: decode its READY line: %w", name, err)
		}
		return c, nil
	case <-timer.C:
		c.stop()
		return nil, fmt.Errorf("%s: not ready after %v", name, timeout)
	case <-ctx.Done():
		c.stop()
		return nil, fmt.Errorf("%s: %w", name, ctx.Err())
	}
}

// pid returns the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// stop closes the child's standard input, which asks it to exit, and kills it when it has not
// exited after 10 s. Later calls return the first one's result.
func (c *child) stop() error {
	c.stopOnce.Do(func() {
		_ = c.stdin.Close()
		select {
		case err := <-c.done:
			if err != nil {
				c.stopErr = fmt.Errorf("%s: %w", c.name, err)
			}
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
			c.stopErr = fmt.Errorf("%s: killed after not exiting for 10 s", c.name)
		}
	})
	return c.stopErr
}

// waitStdinClosed returns a channel closed when the standard input reaches its end (the
// parent closed it, or died).
func waitStdinClosed() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(ch)
	}()
	return ch
}

// printReady prints the READY line of a child.
func printReady(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode READY line: %w", err)
	}
	_, err = fmt.Printf("%s%s\n", readyPrefix, b)
	return err
}

// prefixWriter returns a writer that prefixes each write to w with "name: ".
func prefixWriter(w io.Writer, name string) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		for line := range strings.SplitSeq(strings.TrimRight(string(p), "\n"), "\n") {
			if _, err := fmt.Fprintf(w, "%s: %s\n", name, line); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// mkdirs creates dir and directories under it.
func mkdirs(dir string, names ...string) error {
	for _, n := range append([]string{""}, names...) {
		if err := os.MkdirAll(filepath.Join(dir, n), 0o755); err != nil {
			return fmt.Errorf("create directory: %w", err)
		}
	}
	return nil
}
