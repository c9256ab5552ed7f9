//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// keepAliveRound is one measured round of one server.
type keepAliveRound struct {
	Round  int    `json:"round"`
	Server string `json:"server"`
	loadStats
}

// kaServer is a server of the keep-alive comparison.
type kaServer struct {
	name string
	addr string
	pids func() ([]int, error)
}

// runKeepAlive compares the edge with nginx over keep-alive connections: -rounds rounds each, the
// servers alternating (the first server of a round rotates), every round opening -conns new
// connections, warming up for -warmup and counting 200 responses for -duration.
func runKeepAlive(ctx context.Context, e *env) ([]keepAliveRound, error) {
	o := e.o
	dir := filepath.Join(e.dir, "keepalive")
	if err := mkdirs(dir, "nginx", "nginx-headers", "nginx-reuseport", "nginx-same-headers"); err != nil {
		return nil, err
	}

	// Certificates: a client root and a client leaf; the server certificate nginx presents is
	// the edge CA's leaf for the hostname, as the edge's.
	clientCA, err := newRootCA("Bench Client Root")
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	leaf, err := clientCA.clientLeaf("bench-device", key)
	if err != nil {
		return nil, err
	}
	host := hostname(0)
	serverCert, err := e.edgeCA.GetCertificate(host)
	if err != nil {
		return nil, err
	}
	files := nginxFiles{
		Cert:     filepath.Join(dir, "server.pem"),
		Key:      filepath.Join(dir, "server.key"),
		ClientCA: filepath.Join(dir, "client-ca.pem"),
	}
	if err := writePEM(files.Cert, "CERTIFICATE", serverCert.Certificate...); err != nil {
		return nil, err
	}
	if err := writeKey(files.Key, serverCert.PrivateKey); err != nil {
		return nil, err
	}
	if err := writePEM(files.ClientCA, "CERTIFICATE", clientCA.cert.Raw); err != nil {
		return nil, err
	}
	cfg := e.clientConfig()
	cfg.ServerName = host
	cfg.Certificates = []tls.Certificate{leaf}
	// The same handshake with both (nginx's OpenSSL 3.0 has no X25519MLKEM768); handshakes are
	// outside the measured windows anyway.
	cfg.CurvePreferences = []tls.CurveID{tls.X25519}

	// The servers.
	var extra []string
	if o.profile != "" {
		extra = append(extra, "-cpuprofile", o.profile)
	}
	var static []staticHeader
	if o.nginxSame {
		if static, err = nginxSameHeaders(ctx, e, e.edgeArgs(1, files.ClientCA, filepath.Join(dir, "edge-capture.state")), cfg); err != nil {
			return nil, fmt.Errorf("nginx-same-headers: %w", err)
		}
	}
	edge, er, err := e.startEdge(ctx, "edge", e.edgeArgs(1, files.ClientCA, filepath.Join(dir, "edge.state"), extra...), 30*time.Second)
	if err != nil {
		return nil, err
	}
	servers := []kaServer{{name: "edge", addr: er.Addr, pids: func() ([]int, error) { return []int{edge.pid()}, nil }}}
	if o.edgeBEnv != "" {
		env := strings.Split(o.edgeBEnv, ",")
		for _, kv := range env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				return nil, fmt.Errorf("-edge-b-env: %q is not KEY=VALUE", kv)
			}
		}
		edgeB, br, err := e.startEdge(ctx, "edge-b", e.edgeArgs(1, files.ClientCA, filepath.Join(dir, "edge-b.state")), 30*time.Second, env...)
		if err != nil {
			return nil, err
		}
		servers = append(servers, kaServer{name: "edge-b", addr: br.Addr, pids: func() ([]int, error) { return []int{edgeB.pid()}, nil }})
	}
	type variant struct {
		name               string
		headers, reuseport bool
		static             []staticHeader
	}
	variants := []variant{{name: "nginx"}}
	if o.nginxHeaders {
		variants = append(variants, variant{name: "nginx-headers", headers: true})
	}
	if o.nginxReuse {
		variants = append(variants, variant{name: "nginx-reuseport", reuseport: true})
	}
	if o.nginxSame {
		variants = append(variants, variant{name: "nginx-same-headers", static: static})
	}
	for _, v := range variants {
		n, err := startNginx(ctx, o.nginx, v.name, filepath.Join(dir, v.name), files, e.originIP, o.procs, max(64, o.conns), v.headers, v.reuseport, v.static, cfg)
		if err != nil {
			return nil, err
		}
		e.atEnd(n.stop)
		servers = append(servers, kaServer{name: v.name, addr: n.addr, pids: n.pids})
	}
	for _, s := range servers {
		if err := oneShot(ctx, s.addr, cfg, bufio.NewReader(nil)); err != nil {
			return nil, fmt.Errorf("%s: a first request: %w", s.name, err)
		}
		desc, err := describeTLS(ctx, s.addr, cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Printf("keepalive: %s on %s: %s\n", s.name, s.addr, desc)
	}

	var out []keepAliveRound
	for r := range o.rounds {
		for j := range servers {
			s := servers[(r+j)%len(servers)]
			var reconnects atomic.Int64
			st, err := window(ctx, cpuSources{server: s.pids, origin: e.originPids}, o.warmup, o.duration, o.conns,
				keepAliveWork(s.addr, host, cfg, &reconnects))
			if err != nil {
				return nil, fmt.Errorf("%s, round %d: %w", s.name, r+1, err)
			}
			st.Reconnects = reconnects.Load()
			fmt.Printf("keepalive round %d %-14s %9.0f req/s  server %6.1f µs/req (kernel %4.1f)  origin %5.1f µs/req  client %5.1f µs/req  idle %.2f CPUs  others %.2f CPUs  errors %d %s\n",
				r+1, s.name, st.Rate(), us(st.per(st.ServerCPU)), us(st.per(st.ServerSys)), us(st.per(st.OriginCPU)), us(st.per(st.ClientCPU)), st.idle(), st.others(), st.Errors, st.FirstError)
			out = append(out, keepAliveRound{Round: r + 1, Server: s.name, loadStats: st})
		}
	}
	return out, nil
}

// us returns d in microseconds.
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
