//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The load generator: HTTP/1.1 over TLS 1.3 with a client certificate, one request at a time per
// connection, written by hand and read with a small response parser, so that it spends as little
// of the shared CPUs as it can (the same for every server it loads).

// counter is a per-worker count, padded to its own cache line.
type counter struct {
	n atomic.Int64
	_ [56]byte
}

// loadStats is what one measured window of load gave.
type loadStats struct {
	OK         int64         `json:"ok"`         // 200 responses completed in the window
	Errors     int64         `json:"errors"`     // failed requests or connections, whole round
	Reconnects int64         `json:"reconnects"` // connections reopened after the server closed one
	Elapsed    time.Duration `json:"elapsed"`
	ServerCPU  time.Duration `json:"server_cpu"` // CPU of the server's processes in the window
	ServerSys  time.Duration `json:"server_sys"` // the part of ServerCPU in system mode (the kernel)
	OriginCPU  time.Duration `json:"origin_cpu"`
	ClientCPU  time.Duration `json:"client_cpu"` // CPU of this process (the load generator)
	// MachineBusy and MachineIdle are the whole machine's CPU time busy and idle (all CPUs):
	// what the three processes above did not use of MachineBusy, other processes did.
	MachineBusy time.Duration `json:"machine_busy"`
	MachineIdle time.Duration `json:"machine_idle"`
	FirstError  string        `json:"first_error,omitempty"`
}

// Rate returns completed responses per second.
func (s loadStats) Rate() float64 { return float64(s.OK) / s.Elapsed.Seconds() }

// others returns the CPUs (in cores) that other processes kept busy during the window.
func (s loadStats) others() float64 {
	return max(0, float64(s.MachineBusy-s.ServerCPU-s.OriginCPU-s.ClientCPU)) / float64(s.Elapsed)
}

// idle returns the CPUs (in cores) left idle during the window.
func (s loadStats) idle() float64 { return float64(s.MachineIdle) / float64(s.Elapsed) }

// per returns d per completed response.
func (s loadStats) per(d time.Duration) time.Duration {
	if s.OK == 0 {
		return 0
	}
	return d / time.Duration(s.OK)
}

// cpuSources name the processes whose CPU a window reads.
type cpuSources struct {
	server func() ([]int, error)
	origin func() ([]int, error) // the Go origin's process, or nginx's master and worker
}

// cpuSnapshot is the CPU time of the server, the origin, this process and the machine at one
// moment.
type cpuSnapshot struct{ server, serverSys, origin, self, busy, idle time.Duration }

func (src cpuSources) read() (cpuSnapshot, error) {
	pids, err := src.server()
	if err != nil {
		return cpuSnapshot{}, err
	}
	var s cpuSnapshot
	user, sys, err := processCPU(pids)
	if err != nil {
		return s, err
	}
	s.server, s.serverSys = user+sys, sys
	if pids, err = src.origin(); err != nil {
		return s, err
	}
	if user, sys, err = processCPU(pids); err != nil {
		return s, err
	}
	s.origin = user + sys
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return s, fmt.Errorf("getrusage: %w", err)
	}
	s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	s.busy, s.idle, err = machineCPU()
	return s, err
}

// window runs workers until warm-up and measurement are over and returns what the measurement
// saw: the counters and CPU times are read when the warm-up ends and when the window ends.
func window(ctx context.Context, src cpuSources, warmup, dur time.Duration, workers int, work func(ctx context.Context, c *counter, fail func(error))) (loadStats, error) {
	var (
		counts = make([]counter, workers)
		errs   atomic.Int64
		mu     sync.Mutex
		first  error
		wg     sync.WaitGroup
	)
	fail := func(err error) {
		errs.Add(1)
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	for i := range workers {
		wg.Go(func() { work(wctx, &counts[i], fail) })
	}
	sum := func() int64 {
		var t int64
		for i := range counts {
			t += counts[i].n.Load()
		}
		return t
	}
	var st loadStats
	measure := func() error {
		if err := sleep(ctx, warmup); err != nil {
			return err
		}
		c0, err := src.read()
		if err != nil {
			return err
		}
		n0, t0 := sum(), time.Now()
		if err := sleep(ctx, dur); err != nil {
			return err
		}
		c1, err := src.read()
		if err != nil {
			return err
		}
		st.OK, st.Elapsed = sum()-n0, time.Since(t0)
		st.ServerCPU, st.OriginCPU, st.ClientCPU = c1.server-c0.server, c1.origin-c0.origin, c1.self-c0.self
		st.ServerSys = c1.serverSys - c0.serverSys
		st.MachineBusy, st.MachineIdle = c1.busy-c0.busy, c1.idle-c0.idle
		return nil
	}
	err := measure()
	stop()
	wg.Wait()
	st.Errors = errs.Load()
	if first != nil {
		st.FirstError = first.Error()
	}
	return st, err
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dialTLS opens a TLS connection to addr and completes the handshake.
func dialTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, cfg)
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("handshake with %s: %w", addr, err)
	}
	return conn, nil
}

// request returns a GET request for host, keeping the connection open or not.
func request(host string, keepAlive bool) []byte {
	r := "GET /ping HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: guestlist-bench\r\n"
	if !keepAlive {
		r += "Connection: close\r\n"
	}
	return []byte(r + "\r\n")
}

// errStatus is a response other than 200.
type errStatus struct {
	code int
	head string
}

func (e *errStatus) Error() string { return fmt.Sprintf("status %d: %q", e.code, e.head) }

// readResponse reads one HTTP/1.1 response (status line, header, body framed by Content-Length
// or chunked) and discards its body. It reports whether the server will close the connection.
// A status other than 200 is an *errStatus, after the response was read.
func readResponse(br *bufio.Reader) (closing bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return true, fmt.Errorf("read status line: %w", err)
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return true, fmt.Errorf("bad status line %q", line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return true, fmt.Errorf("bad status line %q", line)
	}
	head := string(bytes.TrimSpace(line))
	length, chunked := int64(-1), false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return true, fmt.Errorf("read header: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return true, fmt.Errorf("bad header line %q", line)
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.ParseInt(string(v), 10, 64); err != nil {
				return true, fmt.Errorf("bad Content-Length %q", v)
			}
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(v, []byte("chunked"))
		case bytes.EqualFold(k, []byte("Connection")):
			closing = bytes.EqualFold(v, []byte("close"))
		}
	}
	switch {
	case chunked:
		err = discardChunked(br)
	case length >= 0:
		_, err = br.Discard(int(length))
	case code == 204 || code == 304:
	default:
		_, err = io.Copy(io.Discard, br)
		closing = true
	}
	if err != nil {
		return true, fmt.Errorf("read body: %w", err)
	}
	if code != 200 {
		return closing, &errStatus{code: code, head: head}
	}
	return closing, nil
}

// discardChunked reads and discards a chunked body and its trailer.
func discardChunked(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		sz, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		n, err := strconv.ParseInt(string(sz), 16, 64)
		if err != nil {
			return fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			for { // trailer
				line, err := br.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(line, "\r\n")) == 0 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(n) + 2); err != nil {
			return err
		}
	}
}

// keepAliveWork returns a worker that keeps one connection to addr and sends requests on it one
// after the other, reconnecting when the server closes it; reconnects are counted in reconnects.
func keepAliveWork(addr, host string, cfg *tls.Config, reconnects *atomic.Int64) func(ctx context.Context, c *counter, fail func(error)) {
	req := request(host, true)
	return func(ctx context.Context, c *counter, fail func(error)) {
		var (
			conn *tls.Conn
			br   *bufio.Reader
		)
		defer func() {
			if conn != nil {
				conn.Close()
			}
		}()
		for ctx.Err() == nil {
			if conn == nil {
				var err error
				if conn, err = dialTLS(ctx, addr, cfg); err != nil {
					if ctx.Err() == nil {
						fail(err)
						_ = sleep(ctx, 100*time.Millisecond)
					}
					continue
				}
				br = bufio.NewReaderSize(conn, 16<<10)
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(req); err != nil {
				fail(fmt.Errorf("write request: %w", err))
				conn.Close()
				conn = nil
				continue
			}
			closing, err := readResponse(br)
			var es *errStatus
			switch {
			case err == nil:
				c.n.Add(1)
			case errors.As(err, &es):
				fail(err)
			default:
				if ctx.Err() == nil {
					fail(err)
				}
			}
			if closing || (err != nil && es == nil) {
				conn.Close()
				conn = nil
				if err == nil {
					reconnects.Add(1)
				}
			}
		}
	}
}

// handshakeTarget is what a handshake worker connects to: n hostnames, hostname i trusting CA
// caIndex(i, len(leaves)), whose client leaves are leaves[k].
type handshakeTarget struct {
	addr   string
	n      int
	leaves [][]tls.Certificate
	roots  *tls.Config // RootCAs and the rest; ServerName and Certificates are set per connection
}

// handshakeWork returns a worker that, again and again, picks a hostname at random and a client
// leaf of its CA at random, opens a new connection (a full TLS 1.3 handshake: no session cache),
// sends one request with Connection: close, reads the response and closes.
func handshakeWork(t *handshakeTarget) func(ctx context.Context, c *counter, fail func(error)) {
	return func(ctx context.Context, c *counter, fail func(error)) {
		br := bufio.NewReaderSize(nil, 4<<10)
		for ctx.Err() == nil {
			i := rand.IntN(t.n)
			k := caIndex(i, len(t.leaves))
			cfg := t.roots.Clone()
			cfg.ServerName = hostname(i)
			cfg.Certificates = []tls.Certificate{t.leaves[k][rand.IntN(len(t.leaves[k]))]}
			if err := oneShot(ctx, t.addr, cfg, br); err != nil {
				if ctx.Err() == nil {
					fail(err)
				}
				continue
			}
			c.n.Add(1)
		}
	}
}

// oneShot opens a connection, sends one request, reads the response and closes.
func oneShot(ctx context.Context, addr string, cfg *tls.Config, br *bufio.Reader) error {
	conn, err := dialTLS(ctx, addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(request(cfg.ServerName, false)); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	br.Reset(conn)
	_, err = readResponse(br)
	return err
}

// describeTLS opens a connection to addr and returns the version, cipher suite and key exchange
// it negotiated.
func describeTLS(ctx context.Context, addr string, cfg *tls.Config) (string, error) {
	conn, err := dialTLS(ctx, addr, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	return fmt.Sprintf("%s, %s, %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cs.CurveID), nil
}
