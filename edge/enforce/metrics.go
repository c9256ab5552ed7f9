package enforce

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"guestlist.dev/edge/decision"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// The edge's metrics (Prometheus names; instruments of Config.MeterProvider):
//
//	guestlist_edge_decisions_total{stage, mode, verdict, reason}
//	    every decision: stage "request" (one per HTTP request decided: the edge's requests by
//	    verdict and reason) or "handshake" (reject_in_handshake refusals); mode off, enforce or
//	    report; verdict allow, deny or report_deny; reason one of the decision package's Reason*
//	    constants.
//	guestlist_edge_handshake_failures_total{cause}
//	    TLS handshakes the edge failed or saw fail, by cause (HandshakeCause*).
//	guestlist_edge_request_duration_seconds{code}
//	    a histogram of the time from a request's head to the end of its answer (forwarded or
//	    the edge's own 403, 421 or 502), by status class: 1xx, 2xx, 3xx, 4xx, 5xx or other. Its
//	    _count is the edge's requests by status class.
//
// Every label takes its values from a closed set (unknown values are counted as "other"), so the
// number of series is bounded; hostnames, tenant ids, rule names and certificate fields are never
// labels. The request path only increments an atomic counter per series (no allocation, no lock);
// the counters are observed, with attribute sets built once in newMetrics, when metrics are
// collected. The duration histogram is recorded with prepared options (no allocation).

// Causes of a failed handshake, the values of guestlist_edge_handshake_failures_total's cause.
const (
	// HandshakeCauseNoSNI: the ClientHello named no server.
	HandshakeCauseNoSNI = "no_sni"
	// HandshakeCauseUnknownHostname: the server name is not configured (or not a hostname).
	HandshakeCauseUnknownHostname = "unknown_hostname"
	// HandshakeCauseInactiveHostname: the hostname is configured but not active.
	HandshakeCauseInactiveHostname = "inactive_hostname"
	// HandshakeCauseClientCertificateRejected: reject_in_handshake refused a missing or invalid
	// client certificate.
	HandshakeCauseClientCertificateRejected = "client_certificate_rejected"
	// HandshakeCauseServerCertificateUnavailable: the edge had no server certificate for the
	// hostname.
	HandshakeCauseServerCertificateUnavailable = "server_certificate_unavailable"
	// HandshakeCauseClientAlert: the client aborted the handshake with a TLS alert (for example
	// it does not trust the edge's certificate).
	HandshakeCauseClientAlert = "client_alert"
	// HandshakeCauseNotTLS: the client did not speak TLS (e.g. plain HTTP to the HTTPS port).
	HandshakeCauseNotTLS = "not_tls"
	// HandshakeCauseClientClosed: the connection was closed or reset during the handshake.
	HandshakeCauseClientClosed = "client_closed"
	// HandshakeCauseTimeout: the handshake did not complete in time.
	HandshakeCauseTimeout = "timeout"
	// HandshakeCauseProtocol: any other TLS protocol error (no common version or cipher suite,
	// malformed messages, ...).
	HandshakeCauseProtocol = "tls_protocol"
)

// handshakeCauses lists the causes in index order.
var handshakeCauses = [...]string{
	HandshakeCauseNoSNI, HandshakeCauseUnknownHostname, HandshakeCauseInactiveHostname,
	HandshakeCauseClientCertificateRejected, HandshakeCauseServerCertificateUnavailable,
	HandshakeCauseClientAlert, HandshakeCauseNotTLS, HandshakeCauseClientClosed, HandshakeCauseTimeout,
	HandshakeCauseProtocol,
}

const (
	causeNoSNI = iota
	causeUnknownHostname
	causeInactiveHostname
	causeClientCertRejected
	causeServerCertUnavailable
	causeClientAlert
	causeNotTLS
	causeClientClosed
	causeTimeout
	causeProtocol
	numCauses
)

// Label values of decisions, in index order.
var (
	stageNames   = [...]string{"request", "handshake"}
	modeNames    = [...]string{"unspecified", "off", "enforce", "report"}
	verdictNames = [...]string{string(decision.Allow), string(decision.Deny), string(decision.ReportDeny), "other"}
	reasonNames  = [...]string{
		decision.ReasonHostnameUnknown, decision.ReasonHostnameInactive, decision.ReasonMTLSOff,
		decision.ReasonCertificateVerified, decision.ReasonCertificateMissing, decision.ReasonCertificateUntrusted,
		decision.ReasonCertificateExpired, decision.ReasonCertificateNotYetValid, decision.ReasonCertificateWrongKeyUsage,
		decision.ReasonCertificateRevoked, decision.ReasonRuleAllow, decision.ReasonRuleDeny, decision.ReasonNoRuleMatched,
		decision.ReasonPolicyError, "other",
	}
)

const scope = "guestlist.dev/edge/enforce"

// metrics counts the edge's decisions and failed handshakes, and reports them to the meter
// provider's instruments when it collects. A nil *metrics counts nothing.
type metrics struct {
	// decisions[stage][mode][verdict][reason] and handshakes[cause] are the counts of each
	// series; decisionOpts and causeOpts their attribute options, built once.
	decisions    [len(stageNames)][len(modeNames)][len(verdictNames)][len(reasonNames)]atomic.Int64
	handshakes   [numCauses]atomic.Int64
	decisionOpts [len(stageNames)][len(modeNames)][len(verdictNames)][len(reasonNames)]metric.ObserveOption
	causeOpts    [numCauses]metric.ObserveOption
	reg          metric.Registration

	duration     metric.Float64Histogram
	durationOpts [len(codeClasses)][]metric.RecordOption
}

// codeClasses are the values of the request duration's code label, indexed by status/100 (0 and
// anything above 5: "other").
var codeClasses = [...]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// durationBuckets are the request duration histogram's bucket boundaries, in seconds: the edge
// adds well under a millisecond; the rest is the origin.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// newMetrics creates the instruments on mp (nil: the global MeterProvider).
func newMetrics(mp metric.MeterProvider) (*metrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(scope)
	decisions, err := meter.Int64ObservableCounter("guestlist.edge.decisions", metric.WithUnit("{decision}"),
		metric.WithDescription("Decisions of the edge, by stage (request or handshake), mode, verdict and reason."))
	if err != nil {
		return nil, err
	}
	handshakes, err := meter.Int64ObservableCounter("guestlist.edge.handshake.failures", metric.WithUnit("{handshake}"),
		metric.WithDescription("Failed TLS handshakes, by cause."))
	if err != nil {
		return nil, err
	}
	duration, err := meter.Float64Histogram("guestlist.edge.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a request's head to the end of the edge's answer, by status class."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	if err != nil {
		return nil, err
	}
	m := &metrics{duration: duration}
	for i := range codeClasses {
		m.durationOpts[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("code", codeClasses[i])))}
	}
	for s := range stageNames {
		for md := range modeNames {
			for v := range verdictNames {
				for r := range reasonNames {
					m.decisionOpts[s][md][v][r] = metric.WithAttributeSet(attribute.NewSet(
						attribute.String("stage", stageNames[s]), attribute.String("mode", modeNames[md]),
						attribute.String("verdict", verdictNames[v]), attribute.String("reason", reasonNames[r])))
				}
			}
		}
	}
	for c := range m.causeOpts {
		m.causeOpts[c] = metric.WithAttributeSet(attribute.NewSet(attribute.String("cause", handshakeCauses[c])))
	}
	m.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for s := range m.decisions {
			for md := range m.decisions[s] {
				for v := range m.decisions[s][md] {
					for r := range m.decisions[s][md][v] {
						if n := m.decisions[s][md][v][r].Load(); n > 0 {
							o.ObserveInt64(decisions, n, m.decisionOpts[s][md][v][r])
						}
					}
				}
			}
		}
		// Every cause is reported, zeros too, so that alerts on a cause work before its first
		// failure (10 series); decisions are reported once seen (up to 480 series).
		for c := range m.handshakes {
			o.ObserveInt64(handshakes, m.handshakes[c].Load(), m.causeOpts[c])
		}
		return nil
	}, decisions, handshakes)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// close stops reporting to the meter provider.
func (m *metrics) close() {
	if m != nil && m.reg != nil {
		_ = m.reg.Unregister()
	}
}

// decided counts decision d of a hostname in mode; handshake is true for a refusal in the
// handshake.
func (m *metrics) decided(mode configv1.MtlsMode, d *decision.Decision, handshake bool) {
	if m == nil {
		return
	}
	s := 0
	if handshake {
		s = 1
	}
	md := int(mode)
	if md < 0 || md >= len(modeNames) {
		md = 0
	}
	m.decisions[s][md][verdictIndex(d.Verdict)][reasonIndex(d.Reason)].Add(1)
}

// requestDone records a request answered with status code after d.
func (m *metrics) requestDone(code int, d time.Duration) {
	if m == nil {
		return
	}
	c := code / 100
	if c < 1 || c >= len(codeClasses) {
		c = 0
	}
	m.duration.Record(context.Background(), d.Seconds(), m.durationOpts[c]...)
}

// handshakeFailed counts a failed handshake of the given cause (a cause* index).
func (m *metrics) handshakeFailed(cause int) {
	if m == nil {
		return
	}
	m.handshakes[cause].Add(1)
}

// handshakeError counts a handshake that failed with err, unless the edge itself failed it for a
// cause it has already counted (no SNI, unknown or inactive hostname, client certificate rejected,
// no server certificate). Call it where the edge's handshakes fail.
func (m *metrics) handshakeError(err error) {
	if m == nil || err == nil {
		return
	}
	if c := handshakeCause(err); c >= 0 {
		m.handshakeFailed(c)
	}
}

// handshakeCause classifies a handshake error; -1 for the causes counted where they arise.
func handshakeCause(err error) int {
	var (
		re tls.RecordHeaderError
		oe *net.OpError
	)
	switch {
	case errors.Is(err, errNoSNI), errors.Is(err, errUnknownHostname), errors.Is(err, errInactive),
		errors.Is(err, errClientCertRejected), errors.Is(err, errServerCertUnavailable):
		return -1
	case errors.As(err, &oe) && oe.Op == "remote error":
		return causeClientAlert
	case errors.As(err, &re):
		return causeNotTLS
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return causeClientClosed
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return causeTimeout
	}
	return causeProtocol
}

func verdictIndex(v decision.Verdict) int {
	switch v {
	case decision.Allow:
		return 0
	case decision.Deny:
		return 1
	case decision.ReportDeny:
		return 2
	}
	return 3
}

func reasonIndex(r string) int {
	switch r {
	case decision.ReasonHostnameUnknown:
		return 0
	case decision.ReasonHostnameInactive:
		return 1
	case decision.ReasonMTLSOff:
		return 2
	case decision.ReasonCertificateVerified:
		return 3
	case decision.ReasonCertificateMissing:
		return 4
	case decision.ReasonCertificateUntrusted:
		return 5
	case decision.ReasonCertificateExpired:
		return 6
	case decision.ReasonCertificateNotYetValid:
		return 7
	case decision.ReasonCertificateWrongKeyUsage:
		return 8
	case decision.ReasonCertificateRevoked:
		return 9
	case decision.ReasonRuleAllow:
		return 10
	case decision.ReasonRuleDeny:
		return 11
	case decision.ReasonNoRuleMatched:
		return 12
	case decision.ReasonPolicyError:
		return 13
	}
	return len(reasonNames) - 1
}
