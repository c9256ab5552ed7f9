//go:build linux

// Command bench measures the edge (enforce.Server) against baselines run in the same
// invocation, on loopback only, with bounded load. Two comparisons:
//
//   - keepalive: requests per second over keep-alive connections through the edge and through
//     nginx (ssl_verify_client on, proxy_pass with upstream keep-alive, TLS 1.3, access_log off,
//     worker_processes = the edge's GOMAXPROCS), both forwarding to the same trivial origin, in
//     alternating rounds; with the server-side CPU time per request, read from
//     /proc/<pid>/stat of the edge process and of nginx's master and workers. With
//     -nginx-same-headers, also an nginx that sends the origin the header lines the edge
//     forwards (captured from the edge before the rounds, set as fixed values), so that the
//     origin does the same work behind both.
//   - scale: an edge holding 100,000 hostnames against one holding 10: heap per hostname, time to
//     apply the snapshot and to load the saved state file, and full mTLS handshakes per second
//     (new connection and one request each) to hostnames picked at random, in alternating
//     rounds. Add -run memory for the load figures alone (e.g. at 1,000,000 hostnames).
//
// The origin and every edge run in child processes (this program run again with -role), so that
// their CPU time is theirs alone; nginx runs in the foreground (daemon off) as a child too. With
// -origin nginx the trivial origin is an nginx of its own instead (worker_processes 1, return
// 200 "ok"), its master's and worker's CPU time counted as the origin's. With -origin-cpu N the
// origin runs alone on CPU N and everything else on the other CPUs, as an origin on a machine of
// its own would (its work then takes no CPU from the servers compared). The
// load generator is this process. Every certificate is made for the run: ECDSA P-256 client roots
// and leaves, the edge's and nginx's server certificates from the edge's servercert CA. Everything
// started is stopped before the program returns; children get a signal if it dies.
//
// From the repository root (scripts/bench-edge installs nginx when missing and runs this):
//
//	go run ./edge/enforce/bench -run all
//
// See docs/benchmarks.md, section "Edge", for the figures and how to read them.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"guestlist.dev/edge/servercert"
)

// options are the orchestrator's flags.
type options struct {
	run      string
	workdir  string
	keep     bool
	procs    int
	jsonOut  string
	dlogMode string
	profile  string
	origin   string
	// originCPU is the CPU the origin runs on alone (-origin-cpu), or -1.
	originCPU int

	// keepalive
	nginx        string
	conns        int
	duration     time.Duration
	warmup       time.Duration
	rounds       int
	nginxHeaders bool
	nginxReuse   bool
	nginxSame    bool

	// scale
	scaleHosts   int
	scaleBase    int
	scaleCAs     int
	scaleRules   int
	scaleRevs    int
	hsConns      int
	hsDuration   time.Duration
	hsWarmup     time.Duration
	hsRounds     int
	clientLeaves int
	lazyCerts    bool
	edgeBEnv     string
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-role" {
		var err error
		switch os.Args[2] {
		case "origin":
			err = runOrigin()
		case "raw-origin":
			err = runRawOrigin()
		case "edge":
			err = runEdge(os.Args[3:])
		default:
			err = fmt.Errorf("unknown role %q", os.Args[2])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}

	var o options
	flag.StringVar(&o.run, "run", "all", "what to measure: all, keepalive, scale, or memory (the scale edges' load figures, no handshakes)")
	flag.StringVar(&o.workdir, "workdir", "", "directory for certificates, configurations and state files (default: a new temporary directory, removed at the end)")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory")
	flag.IntVar(&o.procs, "procs", 2, "the edge's GOMAXPROCS and nginx's worker_processes")
	flag.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&o.dlogMode, "decisionlog", "discard", "the edge's decision log: discard (entries encoded, written to io.Discard), off, or a file path")
	flag.StringVar(&o.profile, "edge-cpuprofile", "", "write CPU profiles of the edges (for go tool pprof) to this file, for the keep-alive edge, and to <file>.<edge> for the scale edges")
	flag.StringVar(&o.origin, "origin", "go", "the trivial origin behind every server: go (a net/http server, this program run with -role origin), nginx (an nginx of its own, worker_processes 1, return 200 \"ok\"), or raw (this program run with -role raw-origin: no HTTP library, a fixed answer to each request head, whatever its headers)")
	flag.IntVar(&o.originCPU, "origin-cpu", -1, "run the origin alone on this CPU, and the load generator, the edges and nginx on the other CPUs, as with an origin on a machine of its own (-procs then defaults to the number of the other CPUs); -1: every process on every CPU")
	flag.StringVar(&o.nginx, "nginx", "nginx", "the nginx binary")
	flag.IntVar(&o.conns, "conns", 64, "keep-alive connections")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured time of a keep-alive round")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "warm-up before each keep-alive round (connections opened, requests sent, not counted)")
	flag.IntVar(&o.rounds, "rounds", 3, "keep-alive rounds per server")
	flag.BoolVar(&o.nginxHeaders, "nginx-headers", false, "also measure nginx setting the headers the edge adds (certificate details, X-Forwarded-*)")
	flag.StringVar(&o.edgeBEnv, "edge-b-env", "", "also measure a second edge, edge-b, with these environment variables added (KEY=VALUE, comma-separated; e.g. GODEBUG settings): an A/B comparison in the same rounds")
	flag.BoolVar(&o.nginxReuse, "nginx-reuseport", false, "also measure nginx with reuseport on its listen line (each worker its own listening socket, connections spread evenly over the workers)")
	flag.BoolVar(&o.nginxSame, "nginx-same-headers", false, "also measure nginx sending the origin the same header lines as the edge, as fixed values captured from the edge before the rounds (nginx computes none of them): the same origin work behind both servers")
	flag.IntVar(&o.scaleHosts, "scale-hosts", 100_000, "hostnames of the large edge")
	flag.IntVar(&o.scaleBase, "scale-base", 10, "hostnames of the small edge")
	flag.IntVar(&o.scaleCAs, "scale-cas", 1000, "distinct client CAs over the hostnames (hostname i trusts CA i mod this)")
	flag.IntVar(&o.scaleRules, "scale-rules", 0, "rules in the policy of each CA's hostnames in the scale comparison, one policy per CA (0: no policy)")
	flag.IntVar(&o.scaleRevs, "scale-revocations", 0, "revocations filed under each CA in the scale comparison (every hostname of the CA carries them)")
	flag.IntVar(&o.hsConns, "hs-conns", 8, "concurrent handshake workers")
	flag.DurationVar(&o.hsDuration, "hs-duration", 10*time.Second, "measured time of a handshake round")
	flag.DurationVar(&o.hsWarmup, "hs-warmup", time.Second, "warm-up before each handshake round")
	flag.IntVar(&o.hsRounds, "hs-rounds", 3, "handshake rounds per edge")
	flag.IntVar(&o.clientLeaves, "client-leaves", 32768, "distinct client certificates per edge in the handshake test (more than the edge's verification cache holds, so that devices look like a fleet, not one device reconnecting)")
	flag.BoolVar(&o.lazyCerts, "lazy-certs", true, "also measure the large edge with servercert's default leaf cache (leaves issued during the handshakes)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, &o)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// results are everything a run measured.
type results struct {
	Machine   machine          `json:"machine"`
	Options   map[string]any   `json:"options"`
	KeepAlive []keepAliveRound `json:"keepalive,omitempty"`
	Scale     *scaleResults    `json:"scale,omitempty"`
}

// machine describes where the run took place.
type machine struct {
	NProc     int    `json:"nproc"`
	CPU       string `json:"cpu"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Nginx     string `json:"nginx,omitempty"`
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
	Date      string `json:"date"`
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func memTotal() string {
	for line := range strings.SplitSeq(readTrim("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// env is what the parts of a run share.
type env struct {
	o          *options
	dir        string
	edgeCA     *servercert.CA
	originIP   string                // host:port
	originPids func() ([]int, error) // the origin's processes, for their CPU time
	cleanup    []func() error
}

// atEnd registers a function to run when the run ends, in reverse order.
func (e *env) atEnd(f func() error) { e.cleanup = append(e.cleanup, f) }

func run(ctx context.Context, o *options) (err error) {
	switch o.run {
	case "all", "keepalive", "scale", "memory":
	default:
		return fmt.Errorf("-run %q: want all, keepalive, scale or memory", o.run)
	}
	switch o.origin {
	case "go", "nginx", "raw":
	default:
		return fmt.Errorf("-origin %q: want go, nginx or raw", o.origin)
	}
	if o.originCPU != -1 {
		var allowed unix.CPUSet
		if err := unix.SchedGetaffinity(0, &allowed); err != nil {
			return fmt.Errorf("-origin-cpu: %w", err)
		}
		others, err := splitCPUs(&allowed, o.originCPU)
		if err != nil {
			return fmt.Errorf("-origin-cpu %d: %w", o.originCPU, err)
		}
		explicit := false
		flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "procs" })
		if !explicit {
			o.procs = len(others)
		}
		// This process first: the edges and nginx it starts inherit its affinity.
		if err := pinTasks(os.Getpid(), cpuSet(others)); err != nil {
			return fmt.Errorf("-origin-cpu: %w", err)
		}
		runtime.GOMAXPROCS(len(others))
	}
	res := &results{
		Machine: machine{
			NProc: runtime.NumCPU(), CPU: cpuModel(), MemTotal: memTotal(),
			Kernel: readTrim("/proc/sys/kernel/osrelease"), Go: runtime.Version(),
			LoadStart: readTrim("/proc/loadavg"), Date: time.Now().UTC().Format(time.RFC3339),
		},
		Options: map[string]any{},
	}
	flag.VisitAll(func(f *flag.Flag) { res.Options[f.Name] = f.Value.String() })

	e := &env{o: o}
	defer func() {
		for i := len(e.cleanup) - 1; i >= 0; i-- {
			if cerr := e.cleanup[i](); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	if e.dir = o.workdir; e.dir == "" {
		if e.dir, err = os.MkdirTemp("", "guestlist-bench-edge-"); err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
		if !o.keep {
			e.atEnd(func() error { return os.RemoveAll(e.dir) })
		}
	} else if err := os.MkdirAll(e.dir, 0o755); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	// nginx's workers (user nobody) need to traverse the directory (they open nothing in it
	// after start, but keep it usable for temporary files).
	if err := os.Chmod(e.dir, 0o755); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if e.edgeCA, err = servercert.LoadOrCreateCA(filepath.Join(e.dir, "edgeca")); err != nil {
		return err
	}
	if o.run == "all" || o.run == "keepalive" || o.origin == "nginx" {
		if res.Machine.Nginx, err = nginxVersion(o.nginx); err != nil {
			return err
		}
	}
	if err := e.startOrigin(ctx); err != nil {
		return err
	}

	if o.run == "all" || o.run == "keepalive" {
		if res.KeepAlive, err = runKeepAlive(ctx, e); err != nil {
			return fmt.Errorf("keep-alive comparison: %w", err)
		}
		printKeepAlive(os.Stdout, res)
	}
	if o.run == "all" || o.run == "scale" || o.run == "memory" {
		if res.Scale, err = runScale(ctx, e); err != nil {
			return fmt.Errorf("scale comparison: %w", err)
		}
		printScale(os.Stdout, res)
	}
	res.Machine.LoadEnd = readTrim("/proc/loadavg")
	printMachine(os.Stdout, res)
	if o.jsonOut != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return fmt.Errorf("encode results: %w", err)
		}
		if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
	}
	return nil
}

// startOrigin starts the trivial origin (-origin: go or nginx); it is stopped when the run ends.
func (e *env) startOrigin(ctx context.Context) error {
	if e.o.origin == "nginx" {
		n, err := startNginxOrigin(ctx, e.o.nginx, "origin", filepath.Join(e.dir, "origin"))
		if err != nil {
			return err
		}
		e.atEnd(n.stop)
		e.originIP, e.originPids = n.addr, n.pids
		return e.pinOrigin()
	}
	role := "origin"
	if e.o.origin == "raw" {
		role = "raw-origin"
	}
	var or originReady
	c, err := startChild(ctx, "origin", []string{"-role", role}, nil, 10*time.Second, &or)
	if err != nil {
		return err
	}
	e.atEnd(c.stop)
	e.originIP, e.originPids = or.Addr, func() ([]int, error) { return []int{c.pid()}, nil }
	return e.pinOrigin()
}

// pinOrigin moves every thread of the origin's processes to -origin-cpu, when given.
func (e *env) pinOrigin() error {
	if e.o.originCPU < 0 {
		return nil
	}
	pids, err := e.originPids()
	if err != nil {
		return fmt.Errorf("-origin-cpu: %w", err)
	}
	for _, pid := range pids {
		if err := pinTasks(pid, cpuSet([]int{e.o.originCPU})); err != nil {
			return fmt.Errorf("-origin-cpu: %w", err)
		}
	}
	return nil
}

// edgeArgs returns the arguments of an edge child.
func (e *env) edgeArgs(hosts int, casFile, state string, extra ...string) []string {
	return append([]string{"-role", "edge",
		"-hosts", fmt.Sprint(hosts), "-cas", casFile, "-origin", "http://" + e.originIP,
		"-certdir", filepath.Join(e.dir, "edgeca"), "-state", state, "-decisionlog", e.o.dlogMode,
	}, extra...)
}

// startEdge starts an edge child with GOMAXPROCS = -procs; it is stopped when the run ends.
// Extra environment variables (KEY=VALUE) are added to its environment.
func (e *env) startEdge(ctx context.Context, name string, args []string, timeout time.Duration, env ...string) (*child, *edgeReady, error) {
	var r edgeReady
	c, err := startChild(ctx, name, args, append([]string{fmt.Sprintf("GOMAXPROCS=%d", e.o.procs)}, env...), timeout, &r)
	if err != nil {
		return nil, nil, err
	}
	e.atEnd(c.stop)
	return c, &r, nil
}

// clientConfig returns the load generator's TLS configuration: TLS 1.3, HTTP/1.1, the edge CA
// as the only root, no session cache (every connection is a full handshake).
func (e *env) clientConfig() *tls.Config {
	return &tls.Config{
		RootCAs:    e.edgeCA.Pool(),
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
	}
}
