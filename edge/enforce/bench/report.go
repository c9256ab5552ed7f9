//go:build linux

package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// printMachine prints where the run took place.
func printMachine(w io.Writer, res *results) {
	m := res.Machine
	fmt.Fprintf(w, "\nMachine: nproc %d, %s, %s RAM, Linux %s, %s", m.NProc, m.CPU, m.MemTotal, m.Kernel, m.Go)
	if m.Nginx != "" {
		fmt.Fprintf(w, ", nginx %s", m.Nginx)
	}
	fmt.Fprintf(w, "\nDate: %s; load average at start %q, at end %q\n", m.Date, m.LoadStart, m.LoadEnd)
}

// summary is the mean of a server's rounds.
type summary struct {
	rate, server, origin, client float64 // per second; µs per operation
	serverSys                    float64 // µs per operation in the kernel
	idle, others                 float64 // CPUs
	rates                        []float64
	errors, reconnects           int64
}

func summarize(rounds []loadStats) summary {
	var s summary
	var tot loadStats
	for _, r := range rounds {
		s.rates = append(s.rates, r.Rate())
		tot.OK += r.OK
		tot.Elapsed += r.Elapsed
		tot.ServerCPU += r.ServerCPU
		tot.ServerSys += r.ServerSys
		tot.OriginCPU += r.OriginCPU
		tot.ClientCPU += r.ClientCPU
		tot.MachineBusy += r.MachineBusy
		tot.MachineIdle += r.MachineIdle
		s.errors += r.Errors
		s.reconnects += r.Reconnects
	}
	s.rate = tot.Rate()
	s.server, s.origin, s.client = us(tot.per(tot.ServerCPU)), us(tot.per(tot.OriginCPU)), us(tot.per(tot.ClientCPU))
	s.idle, s.others = tot.idle(), tot.others()
	s.serverSys = us(tot.per(tot.ServerSys))
	return s
}

func joinRates(rates []float64) string {
	parts := make([]string, len(rates))
	for i, r := range rates {
		parts[i] = fmt.Sprintf("%.0f", r)
	}
	return strings.Join(parts, " · ")
}

// printKeepAlive prints the keep-alive comparison.
func printKeepAlive(w io.Writer, res *results) {
	o := res.Options
	origin := "Go net/http"
	switch o["origin"] {
	case "nginx":
		origin = "nginx, worker_processes 1"
	case "raw":
		origin = "raw (a fixed answer to each request head, no header parsing)"
	}
	if c := fmt.Sprint(o["origin-cpu"]); c != "" && c != "-1" && c != "<nil>" {
		origin += ", alone on CPU " + c + ", everything else on the other CPUs (idle CPUs include the origin's spare time)"
	}
	fmt.Fprintf(w, "\nKeep-alive requests through the edge and nginx (%v connections, %v rounds of %v after %v of warm-up, TLS 1.3, ECDSA P-256, GOMAXPROCS = worker_processes = %v; origin: %s)\n",
		o["conns"], o["rounds"], o["duration"], o["warmup"], o["procs"], origin)
	byServer := map[string][]loadStats{}
	var names []string
	for _, r := range res.KeepAlive {
		if _, ok := byServer[r.Server]; !ok {
			names = append(names, r.Server)
		}
		byServer[r.Server] = append(byServer[r.Server], r.loadStats)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\treq/s (rounds)\tmean req/s\tserver CPU µs/req\tof which kernel\torigin CPU µs/req\tclient CPU µs/req\tidle CPUs\tother processes CPUs\terrors\treconnects\t")
	sums := map[string]summary{}
	for _, n := range names {
		s := summarize(byServer[n])
		sums[n] = s
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%d\t%d\t\n", n, joinRates(s.rates), s.rate, s.server, s.serverSys, s.origin, s.client, s.idle, s.others, s.errors, s.reconnects)
	}
	tw.Flush()
	edge := sums["edge"]
	for _, n := range names {
		if n == "edge" {
			continue
		}
		b := sums[n]
		var perRound []string
		var ratios []float64
		for i := range min(len(edge.rates), len(b.rates)) {
			perRound = append(perRound, fmt.Sprintf("%.2f", edge.rates[i]/b.rates[i]))
			ratios = append(ratios, edge.rates[i]/b.rates[i])
		}
		fmt.Fprintf(w, "edge / %s: %.2f × the requests per second (rounds: %s); %.2f × the server CPU per request (%.1f vs %.1f µs)\n",
			n, edge.rate/b.rate, strings.Join(perRound, " · "), edge.server/b.server, edge.server, b.server)
		if len(ratios) >= 4 {
			q1, med, q3 := quartiles(ratios)
			fmt.Fprintf(w, "edge / %s, per round: median %.2f ×, interquartile range %.2f–%.2f × (%d rounds)\n", n, med, q1, q3, len(ratios))
		}
	}
}

// printScale prints the scale comparison.
func printScale(w io.Writer, res *results) {
	s := res.Scale
	policy := "no policy"
	if n := fmt.Sprint(res.Options["scale-rules"]); n != "" && n != "0" && n != "<nil>" {
		policy = "a policy of " + n + " rules per CA"
	}
	if n := fmt.Sprint(res.Options["scale-revocations"]); n != "" && n != "0" && n != "<nil>" {
		policy += ", " + n + " revocations per CA"
	}
	fmt.Fprintf(w, "\nEdge at scale: loading (%v distinct client CAs over the hostnames, mode ENFORCE, %s)\n", res.Options["scale-cas"], policy)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "edge\thostnames\tCAs\tApply (cold)\tApply (warm)\theap B/hostname, Apply\theap B/hostname, LoadFile\tSave\tstate file\tLoadFile\tserver leaves\tleaf heap B each\t")
	for _, e := range s.Edges {
		r := e.Ready
		leaves := "on demand"
		if r.CertsIssued > 0 {
			leaves = fmt.Sprintf("%d in %v", r.CertsIssued, r.CertsTime.Round(time.Millisecond))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%v\t%v\t%.0f\t%.0f\t%v\t%.1f MB\t%v\t%s\t%.0f\t\n",
			e.Name, r.Hostnames, r.CAs, r.ApplyCold.Round(10*time.Microsecond), r.ApplyWarm.Round(10*time.Microsecond),
			perItem(r.HeapApply, r.Hostnames), perItem(r.HeapLoad, r.Hostnames),
			r.Save.Round(10*time.Microsecond), float64(r.StateBytes)/1e6, r.LoadFile.Round(10*time.Microsecond),
			leaves, perItem(r.HeapCerts, r.CertsIssued))
	}
	tw.Flush()
	if len(s.Rounds) == 0 {
		return
	}
	fmt.Fprintf(w, "\nFull mTLS handshakes (new connection + one request) to random hostnames (%v workers, %v rounds of %v after %v of warm-up, %v distinct client leaves per edge)\n",
		res.Options["hs-conns"], res.Options["hs-rounds"], res.Options["hs-duration"], res.Options["hs-warmup"], res.Options["client-leaves"])
	byEdge := map[string][]loadStats{}
	for _, r := range s.Rounds {
		byEdge[r.Edge] = append(byEdge[r.Edge], r.loadStats)
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "edge\thostnames\thandshakes/s (rounds)\tmean\tserver CPU µs/handshake\tclient CPU µs/handshake\tidle CPUs\tother processes CPUs\terrors\t")
	sums := map[string]summary{}
	for _, e := range s.Edges {
		sm := summarize(byEdge[e.Name])
		sums[e.Name] = sm
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%d\t\n", e.Name, e.Ready.Hostnames, joinRates(sm.rates), sm.rate, sm.server, sm.client, sm.idle, sm.others, sm.errors)
	}
	tw.Flush()
	base := s.Edges[0].Name
	for _, e := range s.Edges[1:] {
		a, b := sums[e.Name], sums[base]
		fmt.Fprintf(w, "%s / %s: %.2f × the handshakes per second; %.2f × the server CPU per handshake\n", e.Name, base, a.rate/b.rate, a.server/b.server)
	}
}

// quartiles returns the first quartile, the median and the third quartile of xs (linear
// interpolation between the closest ranks); xs is not modified.
func quartiles(xs []float64) (q1, med, q3 float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	at := func(p float64) float64 {
		pos := p * float64(len(s)-1)
		i := int(pos)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + (pos-float64(i))*(s[i+1]-s[i])
	}
	return at(0.25), at(0.5), at(0.75)
}
