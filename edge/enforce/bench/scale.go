//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"slices"
	"time"
)

// scaleResults are the scale comparison's figures.
type scaleResults struct {
	Edges  []scaleEdge      `json:"edges"`
	Rounds []handshakeRound `json:"rounds,omitempty"`
}

// scaleEdge is one edge of the scale comparison and what it measured while loading.
type scaleEdge struct {
	Name  string     `json:"name"`
	Desc  string     `json:"desc"`
	Ready edgeReady  `json:"ready"`
	Total *loadStats `json:"total,omitempty"` // the rounds summed
}

// handshakeRound is one measured round of one edge.
type handshakeRound struct {
	Round int    `json:"round"`
	Edge  string `json:"edge"`
	loadStats
}

// runScale compares an edge of -scale-hosts hostnames with one of -scale-base: what they
// measured while loading (see edgeReady), and full handshakes per second to random hostnames in
// -hs-rounds alternating rounds. With -run memory it only loads the edges, one after the other.
func runScale(ctx context.Context, e *env) (*scaleResults, error) {
	o := e.o
	dir := filepath.Join(e.dir, "scale")
	if err := mkdirs(dir); err != nil {
		return nil, err
	}
	t0 := time.Now()
	cas, err := newRootCAs(o.scaleCAs, "Tenant Root")
	if err != nil {
		return nil, err
	}
	casFile := filepath.Join(dir, "cas.pem")
	ders := make([][]byte, len(cas))
	for i, ca := range cas {
		ders[i] = ca.cert.Raw
	}
	if err := writePEM(casFile, "CERTIFICATE", ders...); err != nil {
		return nil, err
	}
	fmt.Printf("scale: %d client CAs made in %v\n", len(cas), time.Since(t0).Round(time.Millisecond))

	type spec struct {
		name, desc string
		hosts      int
		extra      []string
	}
	specs := []spec{
		{"small", fmt.Sprintf("%d hostnames", o.scaleBase), o.scaleBase, []string{"-warm-certs"}},
		{"large", fmt.Sprintf("%d hostnames, server leaves issued before serving", o.scaleHosts), o.scaleHosts,
			[]string{"-warm-certs", "-cert-cache", fmt.Sprint(o.scaleHosts + 1024)}},
	}
	if o.run == "memory" {
		// The configuration alone: server leaves are measured with the handshakes (issuing a
		// million of them would take minutes and gigabytes).
		specs[1].desc, specs[1].extra = fmt.Sprintf("%d hostnames", o.scaleHosts), nil
	}
	if o.lazyCerts && o.run != "memory" {
		specs = append(specs, spec{"large-lazy", fmt.Sprintf("%d hostnames, servercert's default leaf cache, leaves issued on demand", o.scaleHosts), o.scaleHosts, nil})
	}
	for i := range specs {
		specs[i].extra = append(slices.Clip(specs[i].extra), "-rules", fmt.Sprint(o.scaleRules), "-revocations", fmt.Sprint(o.scaleRevs))
	}
	res := &scaleResults{}
	var targets []*handshakeTarget
	var children []*child
	leafPools := map[int][][]tls.Certificate{} // by the number of CAs used
	for _, s := range specs {
		if o.profile != "" {
			s.extra = append(slices.Clip(s.extra), "-cpuprofile", o.profile+"."+s.name)
		}
		timeout := 2*time.Minute + time.Duration(s.hosts)*time.Millisecond // generous: 1M hostnames and their leaves
		c, r, err := e.startEdge(ctx, s.name, e.edgeArgs(s.hosts, casFile, filepath.Join(dir, s.name+".state"), s.extra...), timeout)
		if err != nil {
			return nil, err
		}
		fmt.Printf("scale: edge %-10s %8d hostnames: apply %v (warm %v), heap %.0f B/hostname (apply) %.0f B/hostname (loaded, peak %.0f), save %v (%d bytes), load file %v, %d leaves in %v (%.0f B each)\n",
			s.name, r.Hostnames, r.ApplyCold.Round(time.Millisecond), r.ApplyWarm.Round(time.Millisecond),
			float64(r.HeapApply)/float64(r.Hostnames), float64(r.HeapLoad)/float64(r.Hostnames), float64(r.PeakLoad)/float64(r.Hostnames),
			r.Save.Round(time.Millisecond), r.StateBytes, r.LoadFile.Round(time.Millisecond),
			r.CertsIssued, r.CertsTime.Round(time.Millisecond), perItem(r.HeapCerts, r.CertsIssued))
		res.Edges = append(res.Edges, scaleEdge{Name: s.name, Desc: s.desc, Ready: *r})
		if o.run == "memory" {
			if err := c.stop(); err != nil {
				return nil, err
			}
			continue
		}
		children = append(children, c)
		k := min(o.scaleCAs, s.hosts)
		pool, ok := leafPools[k]
		if !ok {
			t0 := time.Now()
			perCA := (o.clientLeaves + k - 1) / k
			p, err := leafPool(cas[:k], perCA)
			if err != nil {
				return nil, err
			}
			pool = p
			leafPools[k] = pool
			fmt.Printf("scale: %d client leaves (%d per CA) made in %v\n", perCA*k, perCA, time.Since(t0).Round(time.Millisecond))
		}
		t := &handshakeTarget{addr: r.Addr, n: s.hosts, leaves: pool, roots: e.clientConfig()}
		for _, i := range []int{0, s.hosts - 1} {
			cfg := t.roots.Clone()
			cfg.ServerName = hostname(i)
			cfg.Certificates = t.leaves[caIndex(i, k)][:1]
			if err := oneShot(ctx, t.addr, cfg, bufio.NewReader(nil)); err != nil {
				return nil, fmt.Errorf("%s: a first request to %s: %w", s.name, hostname(i), err)
			}
		}
		targets = append(targets, t)
	}
	if o.run == "memory" {
		return res, nil
	}

	for r := range o.hsRounds {
		for j := range targets {
			i := (r + j) % len(targets)
			pid := children[i].pid()
			st, err := window(ctx, cpuSources{server: func() ([]int, error) { return []int{pid}, nil }, origin: e.originPids},
				o.hsWarmup, o.hsDuration, o.hsConns, handshakeWork(targets[i]))
			if err != nil {
				return nil, fmt.Errorf("%s, round %d: %w", specs[i].name, r+1, err)
			}
			fmt.Printf("handshake round %d %-10s %7.0f handshakes/s  server %6.0f µs/handshake  client %6.0f µs/handshake  idle %.2f CPUs  others %.2f CPUs  errors %d %s\n",
				r+1, specs[i].name, st.Rate(), us(st.per(st.ServerCPU)), us(st.per(st.ClientCPU)), st.idle(), st.others(), st.Errors, st.FirstError)
			res.Rounds = append(res.Rounds, handshakeRound{Round: r + 1, Edge: specs[i].name, loadStats: st})
			tot := res.Edges[i].Total
			if tot == nil {
				tot = &loadStats{}
				res.Edges[i].Total = tot
			}
			tot.OK += st.OK
			tot.Errors += st.Errors
			tot.Elapsed += st.Elapsed
			tot.ServerCPU += st.ServerCPU
			tot.ServerSys += st.ServerSys
			tot.OriginCPU += st.OriginCPU
			tot.ClientCPU += st.ClientCPU
			tot.MachineBusy += st.MachineBusy
			tot.MachineIdle += st.MachineIdle
		}
	}
	return res, nil
}

// perItem returns total/n as a float (0 for n = 0).
func perItem(total uint64, n int) float64 {
	if n == 0 {
		return 0
	}
	return float64(total) / float64(n)
}
