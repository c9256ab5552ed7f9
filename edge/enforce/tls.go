package enforce

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/decisionlog"
	"guestlist.dev/edge/dnsname"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// maxHostTLS bounds the cache of per-hostname TLS configurations; beyond it the cache is cleared
// (entries are rebuilt on the next handshake).
const maxHostTLS = 1 << 16

var (
	errNoSNI           = errors.New("enforce: the client sent no server name (SNI)")
	errUnknownHostname = errors.New("enforce: hostname is not configured")
	errInactive        = errors.New("enforce: hostname is not active")
	// errClientCertRejected fails the handshake of a reject_in_handshake hostname.
	errClientCertRejected = errors.New("enforce: client certificate refused")
	// errServerCertUnavailable fails a handshake for which no server certificate could be had.
	errServerCertUnavailable = errors.New("enforce: no server certificate")
)

// hostTLS is the TLS configuration of one prepared hostname configuration.
type hostTLS struct {
	h   *decision.Hostname
	cfg *tls.Config
}

// ticketTag prefixes what WrapSession writes into a session ticket's Extra: the hostname, "\x00",
// the id of the tenant that had it, then "\x00c" when the client presented a certificate in the
// session's handshake or "\x00n" when not. The tenant: a hostname deleted and created again by
// another tenant is another hostname, whose clients' sessions must not carry the first tenant's
// certificates to it.
var ticketTag = []byte("guestlist-sni\x00")

// ticketExtra is the Extra entry binding a session to hostname name of tenant.
func ticketExtra(name, tenant string, withCert bool) []byte {
	b := make([]byte, 0, len(ticketTag)+len(name)+len(tenant)+3)
	b = append(append(b, ticketTag...), name...)
	b = append(append(b, 0), tenant...)
	if withCert {
		return append(b, 0, 'c')
	}
	return append(b, 0, 'n')
}

// handshakeNote is what getConfigForClient tells serveConn about a handshake it refused, through
// the handshake's context.
type handshakeNote struct {
	refused error
}

// handshakeNoteKey is the context key of a handshake's *handshakeNote.
type handshakeNoteKey struct{}

// refuseTLS is the configuration getConfigForClient gives a handshake it refuses for its server
// name (none, unknown, inactive): without a certificate, crypto/tls fails the handshake with the
// unrecognized_name alert (RFC 6066, section 3), which says to the client what is wrong, where an
// error returned from GetConfigForClient gives internal_error. Session tickets are off, so that
// no session (of another hostname, or of this one before it was removed) can be resumed on it
// without a certificate.
var refuseTLS = &tls.Config{MinVersion: tls.VersionTLS12, SessionTicketsDisabled: true}

// getConfigForClient picks the hostname's TLS configuration by SNI, failing the handshake for a
// missing, unknown or inactive hostname (with unrecognized_name when the handshake carries a
// handshakeNote, see refuseTLS).
func (s *Server) getConfigForClient(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	refuse := func(cause int, err error) (*tls.Config, error) {
		s.metrics.handshakeFailed(cause)
		if n, ok := chi.Context().Value(handshakeNoteKey{}).(*handshakeNote); ok {
			n.refused = err
			return refuseTLS, nil
		}
		return nil, err
	}
	if chi.ServerName == "" {
		return refuse(causeNoSNI, errNoSNI)
	}
	name, ok := dnsname.NormalizeSNI(chi.ServerName)
	if !ok {
		return refuse(causeUnknownHostname, fmt.Errorf("%w: %q", errUnknownHostname, shorten(chi.ServerName)))
	}
	h, ok := s.configs.Load().Lookup(name)
	if !ok {
		return refuse(causeUnknownHostname, fmt.Errorf("%w: %s", errUnknownHostname, name))
	}
	if !h.Active() {
		return refuse(causeInactiveHostname, fmt.Errorf("%w: %s", errInactive, name))
	}
	if v, ok := s.hostTLS.Load(name); ok {
		if e := v.(*hostTLS); e.h == h {
			return e.cfg, nil
		}
	}
	e := &hostTLS{h: h, cfg: s.newHostTLSConfig(name, h)}
	if _, loaded := s.hostTLS.Swap(name, e); !loaded {
		if s.nHostTLS.Add(1) > maxHostTLS {
			s.hostTLS.Clear()
			s.nHostTLS.Store(0)
		}
	}
	return e.cfg, nil
}

// newHostTLSConfig builds the TLS configuration of hostname name, configured as h.
func (s *Server) newHostTLSConfig(name string, h *decision.Hostname) *tls.Config {
	tenant := h.Config.GetTenantId()
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := s.certs(name)
			if err != nil {
				s.logger.Error("no server certificate", "hostname", name, "error", err)
				s.metrics.handshakeFailed(causeServerCertUnavailable)
				return nil, fmt.Errorf("%w for %s: %w", errServerCertUnavailable, name, err)
			}
			return c, nil
		},
		WrapSession: func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			ss.Extra = append(ss.Extra, ticketExtra(name, tenant, len(cs.PeerCertificates) > 0))
			return s.baseTLS.EncryptTicket(cs, ss)
		},
	}
	wantCert := h.Mode() != configv1.MtlsMode_MTLS_MODE_OFF
	withCert, withoutCert := ticketExtra(name, tenant, true), ticketExtra(name, tenant, false)
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := s.baseTLS.DecryptTicket(identity, cs)
		if err != nil || ss == nil {
			return nil, err
		}
		// Resume only a session of this hostname, and not a session without a certificate on a
		// hostname that asks for one (its mode changed from OFF): such a client gets a full
		// handshake with a CertificateRequest rather than a certless session it cannot fix.
		switch {
		case ticketMatches(ss, withCert), ticketMatches(ss, withoutCert) && !wantCert:
			return ss, nil
		}
		return nil, nil
	}
	if h.Mode() == configv1.MtlsMode_MTLS_MODE_OFF {
		cfg.ClientAuth = tls.NoClientCert
		return cfg
	}
	cfg.ClientAuth = tls.RequestClientCert
	cfg.ClientCAs = h.ClientCAs() // only names the acceptable CAs; crypto/tls does not verify
	if h.Config.GetRejectInHandshake() && h.Mode() == configv1.MtlsMode_MTLS_MODE_ENFORCE {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return s.verifyInHandshake(name, cs)
		}
	}
	return cfg
}

// ticketMatches reports whether a session's binding (its first Extra entry with ticketTag) is
// want.
func ticketMatches(ss *tls.SessionState, want []byte) bool {
	for _, e := range ss.Extra {
		if bytes.HasPrefix(e, ticketTag) {
			return bytes.Equal(e, want)
		}
	}
	return false
}

// verifyInHandshake is VerifyConnection for reject_in_handshake: it verifies the client's
// certificate against the hostname's current configuration and fails the handshake (logging a
// decision) when it is missing or does not verify. It runs for resumed sessions too.
func (s *Server) verifyInHandshake(name string, cs tls.ConnectionState) error {
	now := s.now()
	set := s.configs.Load()
	h, ok := set.Lookup(name)
	if !ok || !h.Active() {
		s.metrics.handshakeFailed(causeUnknownHostname)
		return fmt.Errorf("%w: %s", errUnknownHostname, name)
	}
	if !h.RejectsInHandshake() {
		return nil // changed meanwhile: the request decides
	}
	v := s.verified.verify(h, cs.PeerCertificates, now)
	d := h.DecideHandshakeVerified(v, now) // the audit re-derives the logged line with DecideHandshake
	if d.Verdict == decision.Allow {
		return nil
	}
	s.logDecision(now, decisionlog.NewID(now), h, set.Position(), &d, "", "")
	s.metrics.handshakeFailed(causeClientCertRejected)
	return fmt.Errorf("%w for %s: %w", errClientCertRejected, name, v.Err())
}

// logDecision counts one decision and writes its decision log entry. An empty method marks a
// refusal in the handshake.
func (s *Server) logDecision(now time.Time, id string, h *decision.Hostname, rev uint64, d *decision.Decision, method, path string) {
	s.metrics.decided(h.Mode(), d, method == "")
	if s.log == nil {
		return
	}
	e := decisionlog.Entry{
		Time:           now,
		EdgeID:         s.edgeID,
		DecisionID:     id,
		TenantID:       h.Config.GetTenantId(),
		Hostname:       h.Name(),
		ConfigRevision: rev,
		Mode:           modeName(h.Mode()),
		Verdict:        string(d.Verdict),
		Reason:         d.Reason,
		Rule:           d.Rule,
		Cert: decisionlog.Cert{
			Presented:         d.Cert.Presented,
			Verified:          d.Cert.Verified,
			FingerprintSHA256: d.Cert.FingerprintSHA256,
			SerialNumber:      d.Cert.SerialNumber,
			Subject:           d.Cert.Subject,
			Issuer:            d.Cert.Issuer,
			NotAfter:          d.Cert.NotAfter,
		},
		Request: decisionlog.Request{Method: method, Path: path},
	}
	if err := s.log.Write(&e); err != nil {
		s.logger.Error("decision log", "error", err)
	}
}

// modeName is the decision log's form of a mode.
func modeName(m configv1.MtlsMode) string {
	switch m {
	case configv1.MtlsMode_MTLS_MODE_OFF:
		return "off"
	case configv1.MtlsMode_MTLS_MODE_ENFORCE:
		return "enforce"
	case configv1.MtlsMode_MTLS_MODE_REPORT:
		return "report"
	}
	return "unspecified"
}

func shorten(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
