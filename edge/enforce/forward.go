package enforce

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/egress"
)

// maxOrigins bounds the cache of origin proxies; beyond it the cache is cleared.
const maxOrigins = 1 << 14

// NewTransport returns the transport the edge forwards with when Config.Transport is nil: HTTP/1.1
// keep-alive to origins (up to 1024 idle connections per origin), no proxy from the environment,
// no compression, 64 KiB buffers; connections only to the addresses policy allows (see
// Config.Egress; nil allows public addresses only).
func NewTransport(policy *egress.Policy) *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, ControlContext: policy.Control}
	return &http.Transport{
		DialContext:           d.DialContext,
		MaxIdleConns:          0, // no global limit
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        64 << 10,
	}
}

// bufferPool is the ReverseProxy's copy buffer pool.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// origin forwards to one origin URL.
type origin struct {
	s     *Server
	proxy *httputil.ReverseProxy // requests with bodies, upgrades; all with Config.Transport
	lean  *leanPool              // requests without a body; nil with Config.Transport
	err   error                  // the origin URL is unusable
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case o.err != nil:
		badGateway(w)
	case o.lean != nil && leanEligible(r):
		o.s.serveLean(o.lean, w, r)
	default:
		if d := o.s.bodyIdle; d > 0 && r.Body != nil && r.Body != http.NoBody {
			b := &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: d}
			if rt := o.s.http.ReadTimeout; rt > 0 {
				b.limit = time.Now().Add(rt)
			}
			r = r.WithContext(context.WithValue(r.Context(), idleBodyKey{}, b))
			r.Body = b
		}
		o.proxy.ServeHTTP(w, r)
	}
}

// idleBody is a request body read by net/http (HTTP/2, and HTTP/1.1 bodies the fast path hands
// over) whose reads each wait at most idle for the next bytes, as the fast path's (bodyProgress):
// the connection's (or HTTP/2 stream's) read deadline is set to idle from now for each read, and
// taken off when the read returns. So only a client that stops sending is cut, never an origin
// that stops taking the body: on HTTP/2 the deadline is a timer that would fire whether or not a
// read is waiting, and the client is held back by flow control meanwhile. When the body ends or is
// closed, the deadline stays off, so that net/http's own reads of the connection (its watch for
// the client going away, the next request) are not cut by it.
//
// When a read's deadline passes, net/http fails the read, and for HTTP/1.1 also cancels the
// request's context, so the proxy may see either first; stalled tells the error handler it was
// the body.
type idleBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	idle  time.Duration
	limit time.Time // never a deadline past this (ReadTimeout's); zero: none

	mu       sync.Mutex // Read, Close and stalled may be called from different goroutines
	deadline time.Time  // the deadline of the read waiting now; zero when none waits
	timedOut bool       // a read failed on its deadline
	ended    bool       // the body's end (or an error) was read, or it was closed
}

// Read reads from the body with the idle deadline.
func (b *idleBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.ended {
		b.mu.Unlock()
		return b.ReadCloser.Read(p)
	}
	d := time.Now().Add(b.idle)
	if !b.limit.IsZero() && b.limit.Before(d) {
		d = b.limit
	}
	if b.rc.SetReadDeadline(d) == nil {
		b.deadline = d
	}
	b.mu.Unlock()
	n, err := b.ReadCloser.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		// The deadline stays: net/http reads the rest of a short HTTP/1.1 body when it is closed,
		// which must fail at once too.
		b.timedOut, b.ended = true, true
		return n, fmt.Errorf("the request body stalled (no bytes for %v): %w", b.idle, err)
	case err != nil:
		b.ended = true
	}
	if !b.deadline.IsZero() {
		_ = b.rc.SetReadDeadline(b.limit)
		b.deadline = time.Time{}
	}
	return n, err
}

// Close closes the body; the deadline stays off.
func (b *idleBody) Close() error {
	err := b.ReadCloser.Close()
	b.mu.Lock()
	b.ended = true
	b.mu.Unlock()
	return err
}

// stalled reports whether a read of the body failed on its deadline, or is waiting past it (on
// HTTP/1.1 the request's context may end before the read returns).
func (b *idleBody) stalled() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.timedOut || !b.deadline.IsZero() && !time.Now().Before(b.deadline)
}

// origin returns the proxy for origin URL raw.
func (s *Server) origin(raw string) *origin {
	if v, ok := s.origins.Load(raw); ok {
		return v.(*origin)
	}
	o := s.newOrigin(raw)
	if v, loaded := s.origins.LoadOrStore(raw, o); loaded {
		return v.(*origin)
	}
	if s.nOrigins.Add(1) > maxOrigins {
		s.origins.Clear()
		s.nOrigins.Store(0)
	}
	return o
}

func (s *Server) newOrigin(raw string) *origin {
	target, err := url.Parse(raw)
	switch {
	case err != nil:
	case target.Scheme != "http" && target.Scheme != "https":
		err = fmt.Errorf("scheme %q is not http or https", target.Scheme)
	case target.Host == "":
		err = errors.New("no host")
	case target.User != nil:
		err = errors.New("user information is not supported")
	}
	if err != nil {
		err = fmt.Errorf("enforce: origin URL %q: %w", raw, err)
		s.logger.Error("unusable origin", "origin_url", raw, "error", err)
		return &origin{s: s, err: err}
	}
	target.Fragment, target.RawFragment = "", ""
	logger := s.logger
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // the hostname, set by ServeHTTP
			// Trailers the client announced must not carry what the edge tells the origin either.
			for k := range pr.Out.Trailer {
				if isReserved(k) || isForwarding(k) {
					delete(pr.Out.Trailer, k)
				}
			}
			pr.SetXForwarded()
			// ReverseProxy removed the headers the client listed in Connection from Out; ours
			// (set on In by ServeHTTP) are restored, whatever the client listed.
			for _, k := range decisionHeaders {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
		},
		Transport:  s.transport,
		BufferPool: &s.bufs,
		ErrorLog:   slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// (r is ReverseProxy's outgoing request, its body wrapped.)
			if b, ok := r.Context().Value(idleBodyKey{}).(*idleBody); ok && b.stalled() {
				logger.Info("request body stalled", "origin_url", raw, "hostname", r.Host, "error", err)
				w.Header()["Content-Type"] = jsonContentType
				if r.ProtoMajor == 1 {
					w.Header()["Connection"] = []string{"close"} // the rest of the body is not coming
				}
				w.WriteHeader(http.StatusRequestTimeout)
				_, _ = w.Write(bodyStalledBody)
				return
			}
			if errors.Is(err, context.Canceled) {
				logger.Debug("request canceled while forwarding", "origin_url", raw, "error", err)
			} else {
				logger.Warn("forwarding to the origin failed", "origin_url", raw, "hostname", r.Host, "error", err)
			}
			badGateway(w)
		},
	}
	o := &origin{s: s, proxy: rp}
	if s.cfg.Transport == nil {
		o.lean = newLeanPool(target, s.egress)
	}
	return o
}

// sweepOrigins closes idle origin connections past their idle timeout every interval until ctx
// is done, then closes all idle origin connections.
func (s *Server) sweepOrigins(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	each := func(f func(*leanPool)) {
		s.origins.Range(func(_, v any) bool {
			if o := v.(*origin); o.lean != nil {
				f(o.lean)
			}
			return true
		})
	}
	for {
		select {
		case <-ctx.Done():
			each((*leanPool).closeIdle)
			return
		case <-t.C:
			each((*leanPool).sweep)
		}
	}
}

// idleBodyKey is the request context's key of its idleBody.
type idleBodyKey struct{}

// bodyStalledBody answers a request whose body stopped coming (idleBody).
var bodyStalledBody = []byte(`{"error":"request_timeout","message":"the request body stopped coming; send it without pausing"}` + "\n")

func badGateway(w http.ResponseWriter) {
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Cache-Control"] = noStore
	w.WriteHeader(http.StatusBadGateway)
	_, _ = w.Write([]byte(`{"error":"bad_gateway","message":"the origin could not be reached"}` + "\n"))
}

// The headers the edge sets for the origin, in canonical form.
const (
	hClientCert        = "Client-Cert"
	hClientCertChain   = "Client-Cert-Chain"
	hCertPresent       = "X-Client-Cert-Present"
	hCertVerified      = "X-Client-Cert-Verified"
	hCertError         = "X-Client-Cert-Error"
	hCertFingerprint   = "X-Client-Cert-Fingerprint-Sha256"
	hCertSerial        = "X-Client-Cert-Serial-Number"
	hCertSubject       = "X-Client-Cert-Subject"
	hCertIssuer        = "X-Client-Cert-Issuer"
	hCertNotAfter      = "X-Client-Cert-Not-After"
	hDecision          = "X-Guestlist-Decision"
	hDecisionID        = "X-Guestlist-Decision-Id"
	hDecisionRevision  = "X-Guestlist-Config-Revision"
	maxReservedNameLen = len(hCertFingerprint)
)

// decisionHeaders lists them.
var decisionHeaders = [...]string{
	hClientCert, hClientCertChain, hCertPresent, hCertVerified, hCertError, hCertFingerprint,
	hCertSerial, hCertSubject, hCertIssuer, hCertNotAfter, hDecision, hDecisionID, hDecisionRevision,
}

// isReserved reports whether header name k is one of decisionHeaders, ignoring case and treating
// '_' as '-'.
func isReserved(k string) bool {
	if len(k) < len(hClientCert) || len(k) > maxReservedNameLen {
		return false
	}
	var buf [maxReservedNameLen]byte
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case c == '_':
			c = '-'
		}
		buf[i] = c
	}
	switch string(buf[:len(k)]) {
	case "CLIENT-CERT", "CLIENT-CERT-CHAIN", "X-CLIENT-CERT-PRESENT", "X-CLIENT-CERT-VERIFIED",
		"X-CLIENT-CERT-ERROR", "X-CLIENT-CERT-FINGERPRINT-SHA256", "X-CLIENT-CERT-SERIAL-NUMBER",
		"X-CLIENT-CERT-SUBJECT", "X-CLIENT-CERT-ISSUER", "X-CLIENT-CERT-NOT-AFTER",
		"X-GUESTLIST-DECISION", "X-GUESTLIST-DECISION-ID", "X-GUESTLIST-CONFIG-REVISION":
		return true
	}
	return false
}

// scrubHeaders removes every client-sent header that is, or could be taken for, one the edge sets.
// The proxy-chain headers that a client could use to pose as another client address or scheme
// (X-Forwarded-*, X-Real-Ip, Forwarded) go too; the edge sets its own.
func scrubHeaders(h http.Header) {
	for k := range h {
		if isReserved(k) || isForwarding(k) {
			delete(h, k)
		}
	}
}

// isForwarding reports whether k names a proxy-chain header (case-insensitive, '_' for '-').
func isForwarding(k string) bool {
	norm := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
	return strings.HasPrefix(norm, "x-forwarded-") || norm == "x-real-ip" || norm == "forwarded"
}

var (
	valTrue       = []string{"true"}
	valFalse      = []string{"false"}
	valAllow      = []string{string(decision.Allow)}
	valReportDeny = []string{string(decision.ReportDeny)}
)

// certHeaders are the header values derived from one verified chain. They are shared between the
// requests of a connection and never modified.
type certHeaders struct {
	chain0      **x509.Certificate // &Decision.Chain[0]: identifies the verified chain
	chainLen    int
	clientCert  []string
	intermed    []string // nil without intermediates
	fingerprint []string
	serial      []string
	subject     []string
	issuer      []string
	notAfter    []string
	// block is the same as header lines ("Client-Cert: ...\r\n..."), for the fast path.
	block []byte
}

func newCertHeaders(d *decision.Decision) *certHeaders {
	leaf := d.Chain[0]
	ch := &certHeaders{
		chain0:      &d.Chain[0],
		chainLen:    len(d.Chain),
		clientCert:  []string{sfBinary(leaf.Raw)},
		fingerprint: []string{d.Cert.FingerprintSHA256},
		serial:      []string{d.Cert.SerialNumber},
		subject:     []string{headerSafe(d.Cert.Subject)},
		issuer:      []string{headerSafe(d.Cert.Issuer)},
		notAfter:    []string{d.Cert.NotAfter.UTC().Format(time.RFC3339)},
	}
	if len(d.Chain) > 2 { // leaf, intermediates..., root
		var b []byte
		for i, c := range d.Chain[1 : len(d.Chain)-1] {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendSFBinary(b, c.Raw)
		}
		ch.intermed = []string{string(b)}
	}
	line := func(k string, v []string) {
		ch.block = append(ch.block, k...)
		ch.block = append(ch.block, ": "...)
		ch.block = append(ch.block, v[0]...)
		ch.block = append(ch.block, "\r\n"...)
	}
	line(hClientCert, ch.clientCert)
	if ch.intermed != nil {
		line(hClientCertChain, ch.intermed)
	}
	line(hCertFingerprint, ch.fingerprint)
	line(hCertSerial, ch.serial)
	line(hCertSubject, ch.subject)
	line(hCertIssuer, ch.issuer)
	line(hCertNotAfter, ch.notAfter)
	return ch
}

// certHeadersFor returns the certificate headers of verified decision d, from the connection's
// cache when they were derived from the same chain.
func certHeadersFor(cs *connState, d *decision.Decision) *certHeaders {
	var ch *certHeaders
	if cs != nil {
		ch = cs.hdr.Load()
	}
	if ch == nil || ch.chain0 != &d.Chain[0] || ch.chainLen != len(d.Chain) {
		ch = newCertHeaders(d)
		if cs != nil {
			cs.hdr.Store(ch)
		}
	}
	return ch
}

// setDecisionHeaders sets the headers for the origin from decision d (after scrubHeaders).
func setDecisionHeaders(h http.Header, cs *connState, d *decision.Decision, id string, rev uint64) {
	if d.Verdict == decision.ReportDeny {
		h[hDecision] = valReportDeny
	} else {
		h[hDecision] = valAllow
	}
	h[hDecisionID] = []string{id}
	h[hDecisionRevision] = []string{strconv.FormatUint(rev, 10)}
	h[hCertPresent] = boolVal(d.Cert.Presented)
	h[hCertVerified] = boolVal(d.Cert.Verified)
	if d.Cert.Error != "" {
		h[hCertError] = []string{d.Cert.Error}
	}
	if !d.Cert.Verified || len(d.Chain) == 0 {
		return
	}
	ch := certHeadersFor(cs, d)
	h[hClientCert] = ch.clientCert
	if ch.intermed != nil {
		h[hClientCertChain] = ch.intermed
	}
	h[hCertFingerprint] = ch.fingerprint
	h[hCertSerial] = ch.serial
	h[hCertSubject] = ch.subject
	h[hCertIssuer] = ch.issuer
	h[hCertNotAfter] = ch.notAfter
}

func boolVal(b bool) []string {
	if b {
		return valTrue
	}
	return valFalse
}

// sfBinary is the RFC 8941 byte sequence form of b (":base64:"), as RFC 9440 sends certificates.
func sfBinary(b []byte) string { return string(appendSFBinary(nil, b)) }

func appendSFBinary(dst, b []byte) []byte {
	dst = append(dst, ':')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	return append(dst, ':')
}

// headerSafe escapes the bytes of s outside printable ASCII as \XX (RFC 4514's hex escape).
func headerSafe(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+16)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			b = append(b, '\\', hex[c>>4], hex[c&0xf])
			continue
		}
		b = append(b, c)
	}
	return string(b)
}
