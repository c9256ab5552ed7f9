// Package enforce is the edge's TLS server: it terminates TLS for every configured hostname,
// checks client certificates against that hostname's CAs only, decides every request with
// guestlist.dev/edge/decision on the hostname's current configuration, writes the decision log,
// and either refuses the request (403) or forwards it to the hostname's origin.
//
// # Handshake
//
// The hostname is the TLS server name (SNI), normalised with dnsname.NormalizeSNI. A ClientHello
// without a server name, or naming a hostname that is not configured or not active, fails the
// handshake (fail closed). Per hostname: mode OFF asks for no client certificate; ENFORCE and
// REPORT ask for one (tls.RequestClientCert, naming the hostname's CAs in the CertificateRequest)
// without letting crypto/tls verify it: verification is the decision package's, against that
// hostname's CAs and revocations. With reject_in_handshake (ENFORCE only; REPORT always forwards),
// a missing or invalid certificate fails the handshake, and the refusal is logged as a decision
// with an empty request. TLS 1.2 is the minimum; ALPN offers h2 and http/1.1.
//
// # Requests
//
// For every request, not once per connection: the Host header (without port and trailing dot)
// must name the connection's SNI hostname, or the answer is 421 Misdirected Request; this is what
// keeps a certificate accepted for one hostname from reaching another hostname through the Host
// header, connection reuse or HTTP/2 connection coalescing. The hostname's configuration is then
// looked up again in the current configuration set (a change applies to the next request on an
// open connection; a hostname removed meanwhile gets 421 and the connection is closed), the
// request is decided from the connection's peer certificates, and one decision log line is
// written with config_revision = the set's position. ENFORCE denials get 403 with a JSON body
// naming the reason and the decision id; everything else is forwarded.
//
// Certificate verification is done once per connection and reused while it holds for the
// hostname's current configuration and the moment of the request (decision.Verification.Holds);
// a new configuration of the hostname (new CAs, a revocation) or the certificate reaching its
// expiry makes the next request verify again. Recent verifications are also shared across
// connections, keyed by the DER of the chain the client sent (verifycache.go), under the same
// condition, so that a device reconnecting is not verified again.
//
// # Session resumption
//
// Session tickets stay enabled (resumption saves a full handshake), and are bound to the hostname
// they were issued for: the server writes the SNI hostname into every ticket (WrapSession) and
// refuses to resume a ticket under another server name (UnwrapSession), so a session established
// with hostname A is never resumed on hostname B, which gets a full handshake with its own
// CertificateRequest. A ticket also records whether the client presented a certificate; a
// certless session is not resumed on a hostname that asks for one (its mode went from OFF to
// ENFORCE or REPORT), so that the client is asked for its certificate. Independently of that, a resumed session carries the client certificate of
// its original handshake, and every request is decided from that certificate against the CURRENT
// configuration of the connection's hostname, so a resumed session can never carry an earlier
// acceptance over: not across hostnames, nor across configuration changes.
//
// # Connections
//
// The server accepts and handshakes connections itself. HTTP/2 connections are served by
// net/http. HTTP/1.1 connections (ALPN http/1.1 or none) are served by the edge's own HTTP/1.1
// loop (h1.go): requests parsed in place from a reused buffer, decided as above, forwarded
// through the lean proxy's pool and answered with one write for a small response, without
// net/http's per-request machinery (background read, response writer, header maps). Its parser
// accepts only a strict subset of HTTP/1.1, refuses request-smuggling material itself (400:
// Content-Length with Transfer-Encoding, differing Content-Lengths, obs-fold, control
// characters, a missing or repeated Host), and hands the connection, with the bytes already
// read, over to net/http for the rest of its life at the first request outside the subset
// (chunked or large bodies, Expect, Upgrade, HTTP/1.0, absolute-form targets, CONNECT, ...),
// which then serves it as described here.
//
// # Forwarding
//
// See [Server] for the headers the origin receives. Requests without a body (the bulk of API
// traffic) go through a lean HTTP/1.1 proxy with its own keep-alive pool per origin (up to 1024
// idle connections, closed after 90 s idle): the request is written straight to a pooled
// connection and the response copied back, without http.Transport's per-request goroutine
// hand-offs or httputil.ReverseProxy's request cloning (see lean.go for what it guarantees:
// hop-by-hop headers, streaming, trailers, cancellation, one retry of idempotent requests on a
// stale pooled connection). Requests with a body, Expect: 100-continue or Upgrade go through
// httputil.ReverseProxy (Rewrite hook, shared buffer pool) over a tuned http.Transport (HTTP/1.1,
// keep-alive, no compression, 64 KiB buffers). Origin errors are 502; an origin failing after its
// response header was sent aborts the client's request.
package enforce

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"guestlist.dev/edge/configset"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/egress"
)

// DefaultShutdownTimeout is how long Serve waits for open requests when its context ends.
const DefaultShutdownTimeout = 10 * time.Second

// DefaultBodyIdleTimeout is how long a request body may go without a byte arriving (nginx's
// client_body_timeout).
const DefaultBodyIdleTimeout = 60 * time.Second

// Config configures a Server.
type Config struct {
	// Addr is the TCP address to listen on, e.g. "127.0.0.1:8443" (":0" picks a free port; see
	// Server.Addr).
	Addr string
	// Configs holds the hostnames' configurations. Required.
	Configs *configset.Store
	// Certificates returns the server certificate for a normalised hostname (e.g.
	// servercert.CA.GetCertificate). It is called for every full handshake and should cache.
	// Required.
	Certificates func(hostname string) (*tls.Certificate, error)
	// Log receives one entry per decision; nil discards them.
	Log *decisionlog.Log
	// EdgeID names this edge in the decision log.
	EdgeID string
	// Logger receives operational logs; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock decisions are made with; nil means time.Now.
	Now func() time.Time
	// ShutdownTimeout bounds the graceful shutdown of Serve; 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// BodyIdleTimeout is how long the edge waits for the next bytes of a request body (HTTP/1.1
	// and HTTP/2) before it ends the request: a client that sends its body slowly, or stops,
	// cannot keep a connection to the origin for longer. A body has no limit in total as long as
	// it keeps coming. 0 means DefaultBodyIdleTimeout; negative means no limit (net/http's way
	// with ReadTimeout 0).
	BodyIdleTimeout time.Duration
	// Egress says which addresses origins may be at. The edge connects only to public unicast
	// addresses, and to what its entries allow; a request whose origin is elsewhere (the
	// operator's own network, loopback, a cloud metadata service), by its URL or by what its name
	// resolves to, gets a 502 and the log names the address. nil allows public addresses only.
	// The edge's own listening address is always denied (an origin there would loop requests
	// back to the edge without end): when it listens on all addresses, its port on all of
	// loopback and on every local interface's address.
	// It does not apply to a Config.Transport, which must make its own checks.
	Egress *egress.Policy
	// Transport, when set, forwards every request with httputil.ReverseProxy over it (no lean
	// proxy); nil means the lean proxy plus a transport tuned for the edge (see the package
	// documentation).
	Transport http.RoundTripper
	// MeterProvider makes the edge's metrics (see metrics.go: decisions by stage, mode, verdict and
	// reason; handshake failures by cause); nil means the global provider.
	MeterProvider metric.MeterProvider
}

// Server is the edge's TLS server. Create it with New, run it with Serve.
//
// What the origin receives, besides the client's request: the Host header is the hostname (the
// connection's SNI, normalised); X-Forwarded-For is the client's address (client-sent
// X-Forwarded-* and Forwarded headers are dropped, the edge being the first hop),
// X-Forwarded-Host the hostname and X-Forwarded-Proto "https"; and the headers below, after every
// client-sent header of these names was removed (case-insensitively, also with '_' in place of
// '-', as some origin frameworks merge the two):
//
//	X-Guestlist-Decision             allow or report_deny
//	X-Guestlist-Decision-Id          the decision id, as in the decision log
//	X-Guestlist-Config-Revision      the configuration's position, as in the decision log
//	X-Client-Cert-Present            true or false
//	X-Client-Cert-Verified           true or false
//	X-Client-Cert-Error              the failure reason (certificate_*), when presented and not verified
//	X-Client-Cert-Fingerprint-Sha256 lower-case hex, when verified
//	X-Client-Cert-Serial-Number      lower-case hex, when verified
//	X-Client-Cert-Subject            RFC 2253 form, when verified
//	X-Client-Cert-Issuer             RFC 2253 form, when verified
//	X-Client-Cert-Not-After          RFC 3339, UTC, when verified
//	Client-Cert                      RFC 9440: the leaf's DER as a structured-field byte sequence, when verified
//	Client-Cert-Chain                RFC 9440: the verified chain's intermediates, when verified and there are any
//
// Bytes of subjects and issuers outside printable ASCII are written as \XX (hex), as RFC 4514
// escapes them, so that a header value never carries control characters.
type Server struct {
	cfg      Config
	configs  *configset.Store
	certs    func(string) (*tls.Certificate, error)
	log      *decisionlog.Log
	logger   *slog.Logger
	now      func() time.Time
	edgeID   string
	shutdown time.Duration
	bodyIdle time.Duration // Config.BodyIdleTimeout resolved; 0 means none

	ln       net.Listener
	http     *http.Server
	baseTLS  *tls.Config
	hostTLS  sync.Map // hostname -> *hostTLS
	nHostTLS atomic.Int64

	egress    *egress.Policy // Config.Egress, denying the edge's own addresses
	transport http.RoundTripper
	origins   sync.Map // origin URL -> *origin
	nOrigins  atomic.Int64
	bufs      bufferPool

	verified verifyCache
	metrics  *metrics

	// fast: HTTP/1.1 connections are served by the fast path (h1.go); false with
	// Config.Transport, whose requests all go through net/http and ReverseProxy.
	fast       bool
	handoff    *handoffListener
	baseCtx    context.Context
	cancelBase context.CancelFunc
	connsMu    sync.Mutex
	conns      map[*h1Conn]struct{}
	inShutdown atomic.Bool
	handoffs   atomic.Int64 // fast-path connections handed over to net/http (for tests)

	served atomic.Bool
}

// New checks cfg and listens on cfg.Addr. Call Serve to accept connections, or Close to give the
// address back without serving.
func New(cfg Config) (*Server, error) {
	if cfg.Configs == nil {
		return nil, errors.New("enforce: Config.Configs is required")
	}
	if cfg.Certificates == nil {
		return nil, errors.New("enforce: Config.Certificates is required")
	}
	s := &Server{
		cfg:       cfg,
		configs:   cfg.Configs,
		certs:     cfg.Certificates,
		log:       cfg.Log,
		logger:    cfg.Logger,
		now:       cfg.Now,
		edgeID:    cfg.EdgeID,
		shutdown:  cfg.ShutdownTimeout,
		transport: cfg.Transport,
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.shutdown <= 0 {
		s.shutdown = DefaultShutdownTimeout
	}
	switch s.bodyIdle = cfg.BodyIdleTimeout; {
	case s.bodyIdle == 0:
		s.bodyIdle = DefaultBodyIdleTimeout
	case s.bodyIdle < 0:
		s.bodyIdle = 0
	}
	var err error
	if s.metrics, err = newMetrics(cfg.MeterProvider); err != nil {
		return nil, fmt.Errorf("enforce: metrics: %w", err)
	}
	s.baseTLS = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2", "http/1.1"},
		GetConfigForClient: s.getConfigForClient,
	}
	s.http = &http.Server{
		Handler:           s,
		TLSConfig:         s.baseTLS,
		ReadHeaderTimeout: 10 * time.Second, // also bounds the TLS handshake
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if hc, ok := c.(*handoffConn); ok {
				return context.WithValue(ctx, connKey{}, hc.cs)
			}
			return context.WithValue(ctx, connKey{}, new(connState))
		},
	}
	s.fast = cfg.Transport == nil
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("enforce: listen on %s: %w", cfg.Addr, err)
	}
	s.ln = ln
	s.egress = cfg.Egress.WithDeny(selfEntries(ln.Addr())...)
	if s.transport == nil {
		s.transport = NewTransport(s.egress)
	}
	s.handoff = newHandoffListener(ln.Addr())
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	return s, nil
}

// selfEntries returns the addresses an origin must not be at because they are the edge's own
// listener, addr: its IP and port, or, when it listens on every address, the whole of loopback
// (127.0.0.0/8 and ::1, which such a socket accepts on) and each local interface's address (read
// once, at start), with its port.
func selfEntries(addr net.Addr) []egress.Entry {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return nil
	}
	ap := tcp.AddrPort()
	a := ap.Addr().Unmap()
	prefixes := []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}
	if a.IsUnspecified() {
		prefixes = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
		ifaddrs, _ := net.InterfaceAddrs()
		for _, ia := range ifaddrs {
			if n, ok := ia.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					ip = ip.Unmap()
					prefixes = append(prefixes, netip.PrefixFrom(ip, ip.BitLen()))
				}
			}
		}
	}
	entries := make([]egress.Entry, 0, len(prefixes))
	for _, pre := range prefixes {
		entries = append(entries, egress.Entry{Prefix: pre, Port: ap.Port()})
	}
	return entries
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until ctx is done, then shuts down gracefully: it stops accepting,
// closes idle connections, and waits up to the shutdown timeout for requests in flight before
// closing what is left. It returns nil after a shutdown caused by ctx, and an error when serving
// fails. Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("enforce: Serve called twice")
	}
	defer s.metrics.close()
	defer s.cancelBase()
	httpErr := make(chan error, 1)
	go func() { httpErr <- s.http.Serve(s.handoff) }() // HTTP/2 and handed-over connections
	acceptErr := make(chan error, 1)
	go func() { acceptErr <- s.acceptLoop() }()
	sweepCtx, stopSweep := context.WithCancel(context.WithoutCancel(ctx))
	sweepDone := make(chan struct{})
	go func() { defer close(sweepDone); s.sweepOrigins(sweepCtx, 30*time.Second) }()
	defer func() { stopSweep(); <-sweepDone }()
	s.logger.Info("edge listening", "addr", s.ln.Addr().String(), "edge_id", s.edgeID)
	var failed error
	select {
	case err := <-httpErr:
		httpErr <- err
		failed = fmt.Errorf("enforce: serve: %w", err)
	case err := <-acceptErr:
		acceptErr <- err
		failed = fmt.Errorf("enforce: accept: %w", err)
	case <-ctx.Done():
	}
	_ = s.ln.Close()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdown)
	defer cancel()
	fastDone := make(chan error, 1)
	go func() { fastDone <- s.shutdownFast(sctx) }()
	if err := s.http.Shutdown(sctx); err != nil {
		s.logger.Warn("edge shutdown timed out; closing the remaining connections", "timeout", s.shutdown, "error", err)
		_ = s.http.Close()
	}
	_ = <-fastDone
	if err := <-acceptErr; err != nil && failed == nil {
		failed = fmt.Errorf("enforce: accept: %w", err)
	}
	if err := <-httpErr; err != nil && !errors.Is(err, http.ErrServerClosed) && failed == nil {
		failed = fmt.Errorf("enforce: serve: %w", err)
	}
	if failed != nil {
		return failed
	}
	if t, ok := s.transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	if err := s.log.Flush(); err != nil {
		s.logger.Error("decision log", "error", err)
	}
	return nil
}

// Close closes the listener and every connection at once (no draining). Use it when Serve was
// never called, or to abort.
func (s *Server) Close() error {
	if !s.served.Load() {
		return s.ln.Close()
	}
	_ = s.ln.Close()
	s.cancelBase()
	s.closeFast()
	return s.http.Close()
}

// connKey is the context key of a connection's *connState.
type connKey struct{}
