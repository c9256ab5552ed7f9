package enforce

import (
	"crypto/x509"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/dnsname"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// connState is what the server keeps per connection.
type connState struct {
	// v is the last verification of the connection's client certificate.
	v atomic.Pointer[decision.Verification]
	// hdr caches the certificate headers derived from the last verified chain.
	hdr atomic.Pointer[certHeaders]
}

// verification returns a verification of peer for h that holds at now: the connection's last
// one when it holds, else one from the server's cache of recent verifications, else a new one.
func (s *Server) verification(cs *connState, h *decision.Hostname, peer []*x509.Certificate, now time.Time) *decision.Verification {
	if cs == nil {
		return s.verified.verify(h, peer, now)
	}
	if v := cs.v.Load(); v != nil && v.Holds(h, now) {
		return v
	}
	v := s.verified.verify(h, peer, now)
	cs.v.Store(v)
	return v
}

// ServeHTTP decides and forwards or refuses one request (see the package documentation).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.metrics == nil {
		s.serveHTTP(w, r)
		return
	}
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	s.serveHTTP(sw, r)
	code := sw.code
	if code == 0 {
		code = http.StatusOK // what net/http sends for a handler that wrote nothing
	}
	s.metrics.requestDone(code, time.Since(start))
}

// statusWriter remembers the status a handler answered, for the request duration metric.
// Unwrap lets http.ResponseController reach the connection's writer (flushes while streaming).
type statusWriter struct {
	http.ResponseWriter
	code int
}

// WriteHeader implements http.ResponseWriter.
func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write implements http.ResponseWriter.
func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap returns the wrapped writer (for http.ResponseController).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveHTTP is ServeHTTP without the metrics.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	if r.Method == http.MethodConnect {
		// The edge is no tunnel: CONNECT would reach the origin as an odd request at best.
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		http.Error(w, "CONNECT is not supported", http.StatusMethodNotAllowed)
		return
	}
	if v, ok := r.Header["Upgrade"]; ok && httpguts.HeaderValuesContainsToken(v, "h2c") {
		// The edge decides each request and tells the origin about its certificate: an h2c
		// upgrade, granted by the origin, would turn the connection to it into an HTTP/2 tunnel
		// whose requests the edge never sees. A server may ignore Upgrade (RFC 9110 7.8), and
		// this one does: the request goes on as HTTP/1.1.
		delete(r.Header, "Upgrade")
		delete(r.Header, "Http2-Settings")
	}
	if r.TLS == nil {
		misdirected(w, false)
		return
	}
	name, ok := dnsname.NormalizeSNI(r.TLS.ServerName)
	if !ok || !hostMatches(r.Host, name) {
		misdirected(w, false)
		return
	}
	set := s.configs.Load()
	h, ok := set.Lookup(name)
	if !ok || !h.Active() {
		misdirected(w, true) // removed or deactivated since the handshake
		return
	}
	rev := set.Position()
	cs, _ := r.Context().Value(connKey{}).(*connState)

	p, reject := policyPath(r.URL.Path)
	if reject != nil {
		badPath(w, reject)
		return
	}
	req := decision.Request{Host: r.Host, Method: r.Method, Path: p, Header: r.Header}
	d, id := s.decideRequest(now, h, rev, cs, r.TLS.PeerCertificates, &req)
	if d.Verdict == decision.Deny {
		forbidden(w, d.Reason, id)
		return
	}
	scrubHeaders(r.Header)
	setDecisionHeaders(r.Header, cs, &d, id, rev)
	r.Host = name
	s.origin(h.Config.GetOriginUrl()).ServeHTTP(w, r)
}

// decideRequest decides one request (HTTP/2, net/http's HTTP/1.x, or the fast HTTP/1.1 path) on
// hostname configuration h at revision rev, from the connection's peer certificates, and writes
// its decision log line.
func (s *Server) decideRequest(now time.Time, h *decision.Hostname, rev uint64, cs *connState, peer []*x509.Certificate, req *decision.Request) (decision.Decision, string) {
	var d decision.Decision
	if h.Mode() == configv1.MtlsMode_MTLS_MODE_OFF {
		d = decision.Decide(h, nil, req, now)
	} else {
		d = h.DecideVerified(s.verification(cs, h, peer, now), req, now)
	}
	id := decisionlog.NewID(now)
	s.logDecision(now, id, h, rev, &d, req.Method, req.Path)
	return d, id
}

// policyPath returns decision.PolicyPath of the percent-decoded request path p (net/http's
// URL.Path; the fast path decodes the same way), or reject: the body of the 400 with which the
// edge refuses the request instead of deciding it.
func policyPath(p string) (clean string, reject []byte) {
	clean, err := decision.PolicyPath(p)
	switch {
	case err == nil:
		return clean, nil
	case errors.Is(err, decision.ErrPathBackslash):
		return "", backslashBody
	default:
		return "", dotSegmentBody
	}
}

// The bodies of the 400 answers to a path policyPath refuses.
var (
	dotSegmentBody = []byte(`{"error":"bad_request","reason":"path_dot_segment","message":"the request path has a \".\" or \"..\" segment (also percent-encoded or followed by \";\"); send the path with dot segments resolved"}` + "\n")
	backslashBody  = []byte(`{"error":"bad_request","reason":"path_backslash","message":"the request path has a backslash (also percent-encoded as %5C)"}` + "\n")
)

// hostMatches reports whether the Host header host names hostname name (normalised): equal
// ignoring ASCII case, a port and one trailing dot. An empty Host (HTTP/1.0) matches.
func hostMatches(host, name string) bool {
	if host == "" {
		return true
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host[i:], ']') < 0 {
		port := host[i+1:]
		for j := 0; j < len(port); j++ {
			if port[j] < '0' || port[j] > '9' {
				return false
			}
		}
		host = host[:i]
	}
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	if len(host) != len(name) {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

var (
	jsonContentType = []string{"application/json"}
	noStore         = []string{"no-store"}
	closeConn       = []string{"close"}
)

// misdirected answers 421 Misdirected Request: the request's Host is not the connection's
// hostname, or the hostname is no longer served (then the connection is closed too).
func misdirected(w http.ResponseWriter, closeConnection bool) {
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Cache-Control"] = noStore
	if closeConnection {
		hdr["Connection"] = closeConn
	}
	w.WriteHeader(http.StatusMisdirectedRequest)
	_, _ = w.Write([]byte(`{"error":"misdirected_request","message":"this connection does not serve the requested hostname; open a new connection with that server name"}` + "\n"))
}

// badPath answers 400 with body, for a path the edge refuses (see policyPath). Like the other
// malformed requests, it is refused before any decision and not logged as one.
func badPath(w http.ResponseWriter, body []byte) {
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Cache-Control"] = noStore
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write(body)
}

// forbidden answers 403 with the reason and the decision id.
func forbidden(w http.ResponseWriter, reason, id string) {
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Cache-Control"] = noStore
	hdr["X-Guestlist-Decision-Id"] = []string{id}
	b := make([]byte, 0, 128)
	b = append(b, `{"error":"forbidden","reason":`...)
	b = strconv.AppendQuote(b, reason) // reasons and ids are ASCII identifiers
	b = append(b, `,"decision_id":`...)
	b = strconv.AppendQuote(b, id)
	b = append(b, "}\n"...)
	w.WriteHeader(http.StatusForbidden)
	_, _ = w.Write(b)
}
