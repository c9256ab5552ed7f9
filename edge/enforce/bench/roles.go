//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"syscall"
	"time"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/egress"
	"guestlist.dev/edge/enforce"
	"guestlist.dev/edge/enforce/bench/raworigin"
	"guestlist.dev/edge/servercert"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// hostname returns the i-th hostname of a run.
func hostname(i int) string { return fmt.Sprintf("h%07d.bench.example.com", i) }

// caIndex returns the index of the CA that hostname i trusts, among ncas.
func caIndex(i, ncas int) int { return i % ncas }

// childContext returns a context canceled when the standard input closes or on SIGINT/SIGTERM.
func childContext() (context.Context, context.CancelFunc) {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stdin := waitStdinClosed()
	go func() {
		select {
		case <-stdin:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// originReady is the READY line of the origin.
type originReady struct {
	Addr string `json:"addr"`
}

// runOrigin is the trivial origin: a net/http server answering 200 "ok" to everything, on
// keep-alive connections.
func runOrigin() error {
	ctx, cancel := childContext()
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("origin: listen: %w", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = []string{"text/plain"}
			_, _ = io.WriteString(w, "ok\n")
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if err := printReady(originReady{Addr: ln.Addr().String()}); err != nil {
		return err
	}
	select {
	case err := <-errc:
		return fmt.Errorf("origin: serve: %w", err)
	case <-ctx.Done():
	}
	_ = srv.Close()
	return nil
}

// runRawOrigin is the most trivial origin (-origin raw): raworigin.Serve on every connection, a
// fixed 200 "ok" to each request head whatever its headers (a head naming a body is answered
// 400 and the connection closed).
func runRawOrigin() error {
	ctx, cancel := childContext()
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("raw origin: listen: %w", err)
	}
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	if err := printReady(originReady{Addr: ln.Addr().String()}); err != nil {
		return err
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("raw origin: accept: %w", err)
		}
		go raworigin.Serve(conn, nil)
	}
}

// edgeReady is the READY line of an edge: its address and what it measured while loading its
// configuration.
type edgeReady struct {
	Addr       string `json:"addr"`
	Hostnames  int    `json:"hostnames"`
	CAs        int    `json:"cas"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// HeapApply is the heap the set takes after Apply of a snapshot built in memory, the
	// configurations of one CA sharing one DER slice (bytes).
	HeapApply uint64 `json:"heap_apply"`
	// HeapLoad is the heap the set takes after LoadFile into a new store: every configuration
	// with its own copy of its CA's DER, as the Watch stream delivers them (bytes).
	HeapLoad uint64 `json:"heap_load"`
	// PeakLoad is the most heap LoadFile held above what there was before it, sampled every
	// millisecond (bytes).
	PeakLoad uint64 `json:"peak_load"`
	// ApplyCold is the first Apply of the snapshot (every CA parsed once, the trie built).
	ApplyCold time.Duration `json:"apply_cold"`
	// ApplyWarm is the fastest of three further Applys of the same snapshot (CAs cached).
	ApplyWarm time.Duration `json:"apply_warm"`
	// Save is Store.Save of the set; StateBytes the file's size.
	Save       time.Duration `json:"save"`
	StateBytes int64         `json:"state_bytes"`
	// LoadFile is Store.LoadFile of that file into a new store (reading, unmarshalling,
	// preparing with a cold cache, building the trie).
	LoadFile time.Duration `json:"load_file"`
	// CertsIssued is how many server leaves were issued before serving, in CertsTime, and
	// HeapCerts the heap they take (bytes).
	CertsIssued int           `json:"certs_issued"`
	CertsTime   time.Duration `json:"certs_time"`
	HeapCerts   uint64        `json:"heap_certs"`
	CertCache   int           `json:"cert_cache"`
}

// heapAfterGC collects garbage until the heap stops shrinking (cleanups run on a goroutine of
// their own after a collection, and what they hold is freed only by a later one: two collections
// in a row left up to 250 B a hostname of a dropped store reachable), and returns the bytes of
// live heap objects.
func heapAfterGC() uint64 {
	var ms runtime.MemStats
	var last uint64
	for range 20 {
		runtime.GC()
		time.Sleep(20 * time.Millisecond) // for the cleanups queued by that collection
		runtime.ReadMemStats(&ms)
		if last != 0 && ms.HeapAlloc >= last {
			break
		}
		last = ms.HeapAlloc
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// samplePeakHeap samples the heap's live and not yet swept objects every millisecond until the
// function it returns is called, which returns the most it saw.
func samplePeakHeap() func() uint64 {
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var most uint64
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			most = max(most, s[0].Value.Uint64())
			select {
			case <-stop:
				done <- most
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		return <-done
	}
}

// heapGrowth returns the heap grown since before (see heapAfterGC), 0 if it shrank.
func heapGrowth(before uint64) uint64 {
	if after := heapAfterGC(); after > before {
		return after - before
	}
	return 0
}

// snapshotOf returns a snapshot of n hostnames at pos, hostname i trusting CA caIndex(i), in mode
// ENFORCE, forwarding to origin, with a policy of the given number of rules, the same for the
// hostnames of one CA (none for 0), and revs revocations filed under each CA. The configurations
// of one CA share its DER and the text of its rules and revocations, not their messages.
func snapshotOf(n int, cas [][]byte, rules, revs int, origin string, pos uint64) *configv1.WatchResponse {
	ncas := min(len(cas), n)
	exprs := make([][]string, ncas)
	for k := range exprs {
		for r := range rules {
			exprs[k] = append(exprs[k], fmt.Sprintf(`cert.verified && cert.subject.organizational_unit.exists(u, u == "tenant-%04d-unit-%d") && request.path.startsWith("/v%d/")`, k, r, r))
		}
	}
	revIDs, revSerials := make([]string, revs), make([]string, revs)
	for r := range revs {
		revIDs[r], revSerials[r] = fmt.Sprintf("rev-%06d", r), fmt.Sprintf("%x", 0x10000+r)
	}
	ups := make([]*configv1.HostnameConfig, n)
	for i := range ups {
		k := caIndex(i, ncas)
		ups[i] = &configv1.HostnameConfig{
			Hostname:  hostname(i),
			TenantId:  fmt.Sprintf("tenant-%04d", k),
			Active:    true,
			OriginUrl: origin,
			Mode:      configv1.MtlsMode_MTLS_MODE_ENFORCE,
			CertificateAuthorities: []*configv1.TrustedCertificateAuthority{
				{CertificateAuthorityId: fmt.Sprintf("ca-%04d", k), CertificateDer: cas[k]},
			},
			Version: 1,
		}
		for r := range revs {
			ups[i].Revocations = append(ups[i].Revocations, &configv1.Revocation{CertificateAuthorityId: ups[i].CertificateAuthorities[0].CertificateAuthorityId,
				RevocationId: revIDs[r], SerialNumber: revSerials[r]})
		}
		if rules > 0 {
			p := &configv1.Policy{PolicyId: fmt.Sprintf("policy-%04d", k)}
			for r, e := range exprs[k] {
				p.Rules = append(p.Rules, &configv1.Rule{Name: fmt.Sprintf("rule-%d", r), Action: configv1.Action_ACTION_ALLOW, Expression: e})
			}
			ups[i].Policy = p
		}
	}
	return &configv1.WatchResponse{Position: pos, Snapshot: true, Upserts: ups}
}

// loadEdgeConfig builds the edge's configuration and measures it (see edgeReady): Apply of a
// snapshot, cold and warm, Save, and LoadFile into the store it returns.
func loadEdgeConfig(n int, cas [][]byte, rules, revs int, origin, statePath string, r *edgeReady) (*configset.Store, error) {
	before := heapAfterGC()
	st := configset.NewStore()
	resp := snapshotOf(n, cas, rules, revs, origin, 1)
	t0 := time.Now()
	if err := st.Apply(resp); err != nil {
		return nil, fmt.Errorf("apply the snapshot of %d hostnames: %w", n, err)
	}
	r.ApplyCold = time.Since(t0)
	resp = nil
	r.HeapApply = heapGrowth(before)

	for pos := uint64(2); pos <= 4; pos++ {
		resp := snapshotOf(n, cas, rules, revs, origin, pos)
		t0 := time.Now()
		if err := st.Apply(resp); err != nil {
			return nil, fmt.Errorf("apply the snapshot of %d hostnames again: %w", n, err)
		}
		if d := time.Since(t0); r.ApplyWarm == 0 || d < r.ApplyWarm {
			r.ApplyWarm = d
		}
	}

	t0 = time.Now()
	if err := st.Save(statePath); err != nil {
		return nil, fmt.Errorf("save the set: %w", err)
	}
	r.Save = time.Since(t0)
	fi, err := os.Stat(statePath)
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	r.StateBytes = fi.Size()

	st = nil
	before = heapAfterGC()
	loaded := configset.NewStore()
	peak := samplePeakHeap()
	t0 = time.Now()
	if err := loaded.LoadFile(statePath); err != nil {
		return nil, fmt.Errorf("load the state file: %w", err)
	}
	r.LoadFile = time.Since(t0)
	if p := peak(); p > before {
		r.PeakLoad = p - before
	}
	if got := loaded.Load().Len(); got != n {
		return nil, fmt.Errorf("the state file held %d hostnames, want %d", got, n)
	}
	r.HeapLoad = heapGrowth(before)
	return loaded, nil
}

// runEdge is an enforce.Server holding -hosts hostnames (see snapshotOf) loaded from a state
// file, with the server certificates of the servercert CA in -certdir.
func runEdge(args []string) error {
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	var (
		hosts     = fs.Int("hosts", 1, "hostnames to configure")
		casFile   = fs.String("cas", "", "PEM file of the client CAs; hostname i trusts CA i mod min(#CAs, hosts)")
		origin    = fs.String("origin", "", "origin URL of every hostname")
		certDir   = fs.String("certdir", "", "directory of the servercert CA")
		state     = fs.String("state", "", "path of the configset state file to write and load")
		certCache = fs.Int("cert-cache", servercert.DefaultCacheSize, "server leaves kept in memory")
		warmCerts = fs.Bool("warm-certs", false, "issue every hostname's server leaf before serving")
		dlogMode  = fs.String("decisionlog", "discard", "decision log: discard (encoded, written to io.Discard), off, or a file path")
		profile   = fs.String("cpuprofile", "", "write a CPU profile of the serving time to this file")
		rules     = fs.Int("rules", 0, "rules in the policy of each CA's hostnames (0: no policy)")
		revs      = fs.Int("revocations", 0, "revocations filed under each CA")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *casFile == "" || *origin == "" || *certDir == "" || *state == "" || *hosts < 1 {
		return errors.New("edge: -cas, -origin, -certdir, -state and -hosts ≥ 1 are required")
	}
	ctx, cancel := childContext()
	defer cancel()

	cas, err := readCertificates(*casFile)
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	r := edgeReady{Hostnames: *hosts, CAs: min(len(cas), *hosts), GOMAXPROCS: runtime.GOMAXPROCS(0), CertCache: *certCache}
	store, err := loadEdgeConfig(*hosts, cas, *rules, *revs, *origin, *state, &r)
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}

	ca, err := servercert.LoadOrCreateCA(*certDir, servercert.WithCacheSize(*certCache))
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	if *warmCerts {
		before := heapAfterGC()
		t0 := time.Now()
		for i := range *hosts {
			if _, err := ca.GetCertificate(hostname(i)); err != nil {
				return fmt.Errorf("edge: issue the server certificate of %s: %w", hostname(i), err)
			}
		}
		r.CertsTime = time.Since(t0)
		r.CertsIssued = *hosts
		r.HeapCerts = heapGrowth(before)
	}

	var dlog *decisionlog.Log
	switch *dlogMode {
	case "off":
	case "discard":
		dlog = decisionlog.New(io.Discard)
	default:
		if dlog, err = decisionlog.Open(*dlogMode); err != nil {
			return fmt.Errorf("edge: decision log: %w", err)
		}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := enforce.New(enforce.Config{
		Addr:            "127.0.0.1:0",
		Configs:         store,
		Certificates:    ca.GetCertificate,
		Log:             dlog,
		EdgeID:          "bench",
		Logger:          logger,
		ShutdownTimeout: 2 * time.Second,
		Egress:          egress.Loopback(), // the bench's origins run on this machine
	})
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	r.Addr = srv.Addr().String()
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			return fmt.Errorf("edge: CPU profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("edge: CPU profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	if err := printReady(r); err != nil {
		cancel()
		<-errc
		return err
	}
	err = <-errc
	if dlog != nil {
		if cerr := dlog.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("edge: decision log: %w", cerr)
		}
	}
	return err
}
