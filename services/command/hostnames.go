package command

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	edgedecision "guestlist.dev/edge/decision"
	"guestlist.dev/edge/dnsname"
	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
)

// HostnameServer implements guestlist.v1.HostnameService.
type HostnameServer struct {
	guestlistv1.UnimplementedHostnameServiceServer
	s *Service
}

// Hostnames returns the HostnameService implementation.
func (s *Service) Hostnames() *HostnameServer { return &HostnameServer{s: s} }

// hostnameSpec is a validated hostname configuration, before the tenant's state is consulted.
type hostnameSpec struct {
	prefix string // the request field of the Hostname message, for error messages
	field  string // prefix + ".hostname"
	name   string
	ev     *eventsv1.HostnameCreated
	// fresh: the reservation (ev.reservation_event_id) is the first of this tenant in force, so
	// a creation that certainly failed may release it (see reservations.go).
	fresh bool
}

// checkOrigin validates an origin URL: absolute http(s), a host, no user info, query or fragment.
func checkOrigin(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return "required"
	case err != nil:
		return "not a URL: " + err.Error()
	case u.Scheme != "http" && u.Scheme != "https":
		return "scheme must be http or https"
	case u.Host == "" || u.Hostname() == "":
		return "a host is required"
	case u.User != nil:
		return "user information is not allowed"
	case u.RawQuery != "" || u.ForceQuery:
		return "a query is not allowed"
	case u.Fragment != "":
		return "a fragment is not allowed"
	}
	return ""
}

func checkMtls(field string, m *guestlistv1.MtlsSettings) []apistatus.Violation {
	if m == nil {
		return []apistatus.Violation{{Field: field, Reason: "required"}}
	}
	if m.GetMode() == guestlistv1.MtlsMode_MTLS_MODE_UNSPECIFIED {
		return []apistatus.Violation{{Field: field + ".mode", Reason: "required: one of MTLS_MODE_OFF, MTLS_MODE_ENFORCE, MTLS_MODE_REPORT"}}
	}
	if m.GetMode() != guestlistv1.MtlsMode_MTLS_MODE_OFF && len(m.GetCertificateAuthorityIds()) == 0 {
		return []apistatus.Violation{{Field: field + ".certificate_authority_ids", Reason: "at least one certificate authority is required unless mode is MTLS_MODE_OFF"}}
	}
	return nil
}

func mtlsEvent(m *guestlistv1.MtlsSettings) *eventsv1.MtlsSettings {
	return &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode(m.GetMode()), CertificateAuthorityIds: m.GetCertificateAuthorityIds(), RejectInHandshake: m.GetRejectInHandshake()}
}

// specFor validates a hostname for creation. prefix is the request field of the Hostname message.
func specFor(prefix string, h *guestlistv1.Hostname) (hostnameSpec, []apistatus.Violation) {
	var v []apistatus.Violation
	name, err := dnsname.Normalize(h.GetHostname())
	if err != nil {
		v = append(v, apistatus.Violation{Field: prefix + ".hostname", Reason: err.Error()})
	}
	if reason := checkOrigin(h.GetOriginUrl()); reason != "" {
		v = append(v, apistatus.Violation{Field: prefix + ".origin_url", Reason: reason})
	}
	v = append(v, checkMtls(prefix+".mtls", h.GetMtls())...)
	return hostnameSpec{prefix: prefix, field: prefix + ".hostname", name: name, ev: &eventsv1.HostnameCreated{
		Hostname: name, OriginUrl: h.GetOriginUrl(), Mtls: mtlsEvent(h.GetMtls()), PolicyId: h.GetPolicyId(),
		State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
	}}, v
}

// checkReferences verifies that a hostname only references CAs and a policy of its own tenant.
func checkReferences(st *fold.Tenant, prefix string, m *eventsv1.MtlsSettings, policyID string) []apistatus.Violation {
	var v []apistatus.Violation
	for i, id := range m.GetCertificateAuthorityIds() {
		if _, ok := st.CAs[id]; !ok {
			v = append(v, apistatus.Violation{Field: fmt.Sprintf("%s.mtls.certificate_authority_ids[%d]", prefix, i), Reason: fmt.Sprintf("certificate authority %q not found in this tenant", id)})
		}
	}
	if policyID != "" {
		if _, ok := st.Policies[policyID]; !ok {
			v = append(v, apistatus.Violation{Field: prefix + ".policy_id", Reason: fmt.Sprintf("policy %q not found in this tenant", policyID)})
		}
	}
	return v
}

// caCerts holds the tenant's CA certificates parsed for the checks of one decision, so that a
// batch referencing the same CAs from many hostnames parses each once.
type caCerts map[*fold.CertificateAuthority]*x509.Certificate

// parse returns ca's certificate, or an error when its DER does not parse (events older than
// the upload checks).
func (c caCerts) parse(ca *fold.CertificateAuthority) (*x509.Certificate, error) {
	if cert, ok := c[ca]; ok {
		return cert, nil
	}
	cert, err := x509.ParseCertificate(ca.DER)
	if err != nil {
		return nil, err
	}
	c[ca] = cert
	return cert, nil
}

// checkTrustedCAs applies to the CAs that m references the rules the edge applies to a hostname's
// CAs (decision.Prepare refuses a configuration that breaks them, and the edge the hostname):
// each CA's key is one decision.CheckCAKey accepts (a CA uploaded before the rule may have
// another), and at most decision.MaxCAsPerSubject distinct CA certificates share a subject name.
// References to CAs the tenant does not have are checkReferences's.
func checkTrustedCAs(st *fold.Tenant, prefix string, m *eventsv1.MtlsSettings, certs caCerts) []apistatus.Violation {
	var v []apistatus.Violation
	type group struct {
		name string
		ids  []string
		fps  []string
	}
	var order []string
	groups := map[string]*group{}
	for i, id := range m.GetCertificateAuthorityIds() {
		ca, ok := st.CAs[id]
		if !ok {
			continue
		}
		field := fmt.Sprintf("%s.mtls.certificate_authority_ids[%d]", prefix, i)
		cert, err := certs.parse(ca)
		if err != nil {
			v = append(v, apistatus.Violation{Field: field, Reason: fmt.Sprintf("the certificate of certificate authority %q does not parse (%v); the edge would refuse the hostname", id, err)})
			continue
		}
		if err := edgedecision.CheckCAKey(cert); err != nil {
			v = append(v, apistatus.Violation{Field: field, Reason: fmt.Sprintf("certificate authority %q has a key the edge does not accept, so it would refuse the hostname: %v", id, err)})
		}
		g := groups[string(cert.RawSubject)]
		if g == nil {
			g = &group{name: cert.Subject.String()}
			groups[string(cert.RawSubject)] = g
			order = append(order, string(cert.RawSubject))
		}
		g.ids = append(g.ids, id)
		if !slices.Contains(g.fps, ca.FingerprintSHA256) {
			g.fps = append(g.fps, ca.FingerprintSHA256)
		}
	}
	for _, subject := range order {
		if g := groups[subject]; len(g.fps) > edgedecision.MaxCAsPerSubject {
			ids := make([]string, len(g.ids))
			for i, id := range g.ids {
				ids[i] = strconv.Quote(id)
			}
			v = append(v, apistatus.Violation{Field: prefix + ".mtls.certificate_authority_ids", Reason: fmt.Sprintf(
				"certificate authorities %s share the subject %q; a hostname may trust at most %d certificate authorities of one subject (2 cover a renewal; each more multiplies the signature checks that a forged client certificate costs the edge)",
				strings.Join(ids, ", "), g.name, edgedecision.MaxCAsPerSubject)})
		}
	}
	return v
}

// CreateHostname implements guestlistv1.HostnameServiceServer.
func (hs *HostnameServer) CreateHostname(ctx context.Context, req *guestlistv1.CreateHostnameRequest) (*guestlistv1.Hostname, error) {
	if req.GetTenantId() == "" {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "tenant_id", Reason: "required"})
	}
	out, err := hs.create(ctx, req.GetTenantId(), req.GetRequestId(), []*guestlistv1.CreateHostnameRequest{req}, "hostname")
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// BatchCreateHostnames implements guestlistv1.HostnameServiceServer: all of the hostnames are
// created, or none. The batch's request_id makes the whole batch idempotent; request_ids inside
// the individual requests are ignored.
func (hs *HostnameServer) BatchCreateHostnames(ctx context.Context, req *guestlistv1.BatchCreateHostnamesRequest) (*guestlistv1.BatchCreateHostnamesResponse, error) {
	for i, r := range req.GetRequests() {
		if r.GetTenantId() != "" && r.GetTenantId() != req.GetTenantId() {
			if _, err := auth.AuthorizeWrite(ctx, req.GetTenantId()); err != nil {
				return nil, err
			}
			return nil, apistatus.InvalidArgument(apistatus.Violation{Field: fmt.Sprintf("requests[%d].tenant_id", i), Reason: "must be empty or equal to the batch's tenant_id"})
		}
	}
	out, err := hs.create(ctx, req.GetTenantId(), req.GetRequestId(), req.GetRequests(), "")
	if err != nil {
		return nil, err
	}
	return &guestlistv1.BatchCreateHostnamesResponse{Hostnames: out}, nil
}

// create creates hostnames all or nothing. prefix is the field of the hostname message for a single
// create ("hostname"), or "" for a batch (fields are then "requests[i].hostname").
func (hs *HostnameServer) create(ctx context.Context, tenantID, requestID string, reqs []*guestlistv1.CreateHostnameRequest, prefix string) ([]*guestlistv1.Hostname, error) {
	p, err := auth.AuthorizeWrite(ctx, tenantID)
	if err != nil {
		return nil, err
	}
	s := hs.s
	specs := make([]hostnameSpec, len(reqs))
	var violations []apistatus.Violation
	seen := map[string]int{}
	for i, r := range reqs {
		field := prefix
		if field == "" {
			field = fmt.Sprintf("requests[%d].hostname", i)
		}
		if r.GetHostname() == nil {
			violations = append(violations, apistatus.Violation{Field: field, Reason: "required"})
			continue
		}
		spec, v := specFor(field, r.GetHostname())
		violations = append(violations, v...)
		if j, dup := seen[spec.name]; dup && spec.name != "" {
			violations = append(violations, apistatus.Violation{Field: spec.field, Reason: fmt.Sprintf("hostname %q appears twice in the batch (also requests[%d])", spec.name, j)})
		}
		seen[spec.name] = i
		specs[i] = spec
	}
	if len(violations) > 0 {
		return nil, apistatus.InvalidArgument(violations...)
	}
	var digest []byte
	if requestID != "" {
		digest = hostnamesDigest(prefix == "", specs)
		for i := range specs {
			specs[i].ev.RequestDigest = digest
		}
	}
	md := metadata(ctx, p, requestID)
	// Cheap check first: a replayed request or a bad reference should not reserve anything. The
	// command checks all of it again when it is decided. With a request id, on the stored state
	// rather than on this process's last view of it: a repeat, or a request id used for another
	// request, must be recognised before anything is reserved, also when another process made
	// the first create.
	look := s.peek
	if requestID != "" {
		look = s.read
	}
	var replay []string
	err = look(ctx, tenantID, func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		refs, err := replayRefs(st, requestID, fold.KindHostname, digest, nil)
		if err != nil {
			return err
		}
		if len(refs) > 0 {
			replay = refNames(refs)
			return nil
		}
		var v []apistatus.Violation
		certs := caCerts{}
		for _, spec := range specs {
			if _, ok := st.Hostnames[spec.name]; ok {
				return apistatus.AlreadyExists("hostname", spec.name)
			}
			v = append(v, checkReferences(st, spec.prefix, spec.ev.GetMtls(), spec.ev.GetPolicyId())...)
			v = append(v, checkTrustedCAs(st, spec.prefix, spec.ev.GetMtls(), certs)...)
		}
		if len(v) > 0 {
			return apistatus.InvalidArgument(v...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(replay) > 0 {
		return hs.render(ctx, tenantID, replay)
	}
	reservedAt := s.now()
	if err := s.reserveAll(ctx, specs, tenantID, md); err != nil {
		s.releaseFresh(context.WithoutCancel(ctx), specs, tenantID, md) // nothing was submitted
		return nil, err
	}
	names := make([]string, len(specs))
	for i, spec := range specs {
		names[i] = spec.name
	}
	// refused is the error the decision last refused the creation with: when execute returns it,
	// nothing was stored. Any other error (the caller gave up, the store failed) leaves that open.
	var refused atomic.Pointer[error]
	res, err := s.execute(ctx, tenantID, md, func(st *fold.Tenant) (d decision, err error) {
		defer func() {
			if err != nil {
				refused.Store(&err)
			}
		}()
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		if refs, err := replayRefs(st, requestID, fold.KindHostname, digest, nil); err != nil {
			return decision{}, err
		} else if len(refs) > 0 {
			return decision{result: hostnamesResult(refNames(refs))}, nil
		}
		if waited := s.now().Sub(reservedAt); waited > s.grace/2 {
			// Another tenant may take over a reservation older than the grace period whose
			// hostname its holder does not have; this creation is about to give it one.
			return decision{}, apistatus.Aborted("hostname", names[0], fmt.Sprintf("the creation waited %s for its turn, too close to the reservations' grace period (%s); retry", waited.Round(time.Millisecond), s.grace))
		}
		var v []apistatus.Violation
		events := make([]protoMessage, 0, len(specs))
		certs := caCerts{}
		for _, spec := range specs {
			if _, ok := st.Hostnames[spec.name]; ok {
				return decision{}, apistatus.AlreadyExists("hostname", spec.name)
			}
			v = append(v, checkReferences(st, spec.prefix, spec.ev.GetMtls(), spec.ev.GetPolicyId())...)
			v = append(v, checkTrustedCAs(st, spec.prefix, spec.ev.GetMtls(), certs)...)
			events = append(events, spec.ev)
		}
		if len(v) > 0 {
			return decision{}, apistatus.InvalidArgument(v...)
		}
		return decision{events: events, result: hostnamesResult(names)}, nil
	})
	if err != nil {
		if r := refused.Load(); r != nil && *r == err || certainlyNotStored(err) {
			s.releaseFresh(context.WithoutCancel(ctx), specs, tenantID, md)
		}
		return nil, err
	}
	return res.([]*guestlistv1.Hostname), nil
}

// refNames returns the ids of refs.
func refNames(refs []fold.Ref) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.ID
	}
	return out
}

func hostnamesResult(names []string) func(*fold.Tenant) (any, error) {
	return func(st *fold.Tenant) (any, error) {
		out := make([]*guestlistv1.Hostname, 0, len(names))
		for _, n := range names {
			h, ok := st.Hostnames[n]
			if !ok {
				return nil, apistatus.NotFound("hostname", n)
			}
			out = append(out, renderHostname(h))
		}
		return out, nil
	}
}

func (hs *HostnameServer) render(ctx context.Context, tenantID string, names []string) ([]*guestlistv1.Hostname, error) {
	var out []*guestlistv1.Hostname
	err := hs.s.read(ctx, tenantID, func(st *fold.Tenant) error {
		r, err := hostnamesResult(names)(st)
		if err == nil {
			out = r.([]*guestlistv1.Hostname)
		}
		return err
	})
	return out, err
}

// reserveAll reserves every hostname, concurrently so that the store commits them together, and
// records each reservation's id in its HostnameCreated. It returns the first error; the caller
// releases what it reserved (releaseFresh).
func (s *Service) reserveAll(ctx context.Context, specs []hostnameSpec, tenantID string, md eventstore.Metadata) error {
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	// One goroutine per hostname (at most 1,000): the store commits their appends together.
	for i := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			specs[i].ev.ReservationEventId, specs[i].fresh, errs[i] = s.reserve(ctx, specs[i].name, tenantID, md)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// releaseFresh releases the fresh reservations of a creation that certainly failed.
func (s *Service) releaseFresh(ctx context.Context, specs []hostnameSpec, tenantID string, md eventstore.Metadata) {
	var wg sync.WaitGroup
	for _, spec := range specs {
		if !spec.fresh || spec.ev.GetReservationEventId() == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.release(ctx, spec.name, tenantID, spec.ev.GetReservationEventId(), md); err != nil {
				s.log.Error("command: releasing a hostname reservation failed; it will be taken over after the grace period", "hostname", spec.name, "tenant", tenantID, "err", err)
			}
		}()
	}
	wg.Wait()
}

// GetHostname implements guestlistv1.HostnameServiceServer.
func (hs *HostnameServer) GetHostname(ctx context.Context, req *guestlistv1.GetHostnameRequest) (*guestlistv1.Hostname, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	name, err := dnsname.Normalize(req.GetHostname())
	if err != nil {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "hostname", Reason: err.Error()})
	}
	var out *guestlistv1.Hostname
	err = hs.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		h, ok := st.Hostnames[name]
		if !ok {
			return apistatus.NotFound("hostname", name)
		}
		out = renderHostname(h)
		return nil
	})
	return out, err
}

// ListHostnames implements guestlistv1.HostnameServiceServer.
func (hs *HostnameServer) ListHostnames(ctx context.Context, req *guestlistv1.ListHostnamesRequest) (*guestlistv1.ListHostnamesResponse, error) {
	if _, err := auth.AuthorizeRead(ctx, req.GetTenantId()); err != nil {
		return nil, err
	}
	out := &guestlistv1.ListHostnamesResponse{}
	err := hs.s.read(ctx, req.GetTenantId(), func(st *fold.Tenant) error {
		if err := requireTenant(st); err != nil {
			return err
		}
		keys, next, err := page(st.Hostnames, "hostnames/"+req.GetTenantId(), req.GetPageToken(), req.GetPageSize())
		for _, k := range keys {
			out.Hostnames = append(out.Hostnames, renderHostname(st.Hostnames[k]))
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

// UpdateHostname implements guestlistv1.HostnameServiceServer. An update that would leave the
// hostname as it is writes nothing and answers the hostname as it stands, etag unchanged.
func (hs *HostnameServer) UpdateHostname(ctx context.Context, req *guestlistv1.UpdateHostnameRequest) (*guestlistv1.Hostname, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.GetHostname()
	name, err := dnsname.Normalize(in.GetHostname())
	if err != nil {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "hostname.hostname", Reason: err.Error()})
	}
	// The mask's paths: the REST gateway derives them from the body's fields when the request has
	// none, so a body with only "mtls": {"mode": ...} changes the mode alone.
	setOrigin, setPolicy := true, true
	setMode, setCAs, setReject := true, true, true
	if paths := req.GetUpdateMask().GetPaths(); len(paths) > 0 {
		setOrigin, setPolicy = false, false
		setMode, setCAs, setReject = false, false, false
		for i, path := range paths {
			switch maskPath(path) {
			case "origin_url":
				setOrigin = true
			case "mtls":
				setMode, setCAs, setReject = true, true, true
			case "mtls.mode":
				setMode = true
			case "mtls.certificate_authority_ids":
				setCAs = true
			case "mtls.reject_in_handshake":
				setReject = true
			case "policy_id":
				setPolicy = true
			case "hostname", "etag":
				// The name and the etag say which version of what to update; they are not changed.
			default:
				return nil, apistatus.InvalidArgument(apistatus.Violation{Field: fmt.Sprintf("update_mask.paths[%d]", i), Reason: fmt.Sprintf("%q cannot be updated; use origin_url, mtls (or mtls.mode, mtls.certificate_authority_ids, mtls.reject_in_handshake) or policy_id", path)})
			}
		}
	}
	setMtls := setMode || setCAs || setReject
	wholeMtls := setMode && setCAs && setReject
	var v []apistatus.Violation
	if setOrigin {
		if reason := checkOrigin(in.GetOriginUrl()); reason != "" {
			v = append(v, apistatus.Violation{Field: "hostname.origin_url", Reason: reason})
		}
	}
	if wholeMtls {
		v = append(v, checkMtls("hostname.mtls", in.GetMtls())...)
	}
	if len(v) > 0 {
		return nil, apistatus.InvalidArgument(v...)
	}
	res, err := hs.s.execute(ctx, req.GetTenantId(), metadata(ctx, p, ""), func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		old, ok := st.Hostnames[name]
		if !ok {
			return decision{}, apistatus.NotFound("hostname", name)
		}
		if err := checkEtag("hostname", name, in.GetEtag(), old.Revision); err != nil {
			return decision{}, err
		}
		ev := &eventsv1.HostnameUpdated{
			Hostname: name, OriginUrl: old.OriginURL, PolicyId: old.PolicyID, State: old.State,
			Mtls: &eventsv1.MtlsSettings{Mode: old.Mode, CertificateAuthorityIds: old.CertificateAuthorityIDs, RejectInHandshake: old.RejectInHandshake},
		}
		if setOrigin {
			ev.OriginUrl = in.GetOriginUrl()
		}
		var v []apistatus.Violation
		switch {
		case wholeMtls:
			ev.Mtls = mtlsEvent(in.GetMtls())
		case setMtls:
			m := in.GetMtls()
			if setMode {
				ev.Mtls.Mode = eventsv1.MtlsMode(m.GetMode())
			}
			if setCAs {
				ev.Mtls.CertificateAuthorityIds = m.GetCertificateAuthorityIds()
			}
			if setReject {
				ev.Mtls.RejectInHandshake = m.GetRejectInHandshake()
			}
			// What the hostname will have must hold together (ENFORCE needs a CA).
			v = append(v, checkMtls("hostname.mtls", &guestlistv1.MtlsSettings{
				Mode: guestlistv1.MtlsMode(ev.Mtls.GetMode()), CertificateAuthorityIds: ev.Mtls.GetCertificateAuthorityIds(),
			})...)
		}
		if setPolicy {
			ev.PolicyId = in.GetPolicyId()
		}
		v = append(v, checkReferences(st, "hostname", ev.GetMtls(), ev.GetPolicyId())...)
		if setMtls {
			// Only a change of the CAs is checked against the rules for them: a hostname whose
			// CAs break them from before the rules (the edge refuses it) may still change
			// anything else, and get its CAs fixed.
			v = append(v, checkTrustedCAs(st, "hostname", ev.GetMtls(), caCerts{})...)
		}
		if len(v) > 0 {
			return decision{}, apistatus.InvalidArgument(v...)
		}
		result := func(st *fold.Tenant) (any, error) {
			r, err := hostnamesResult([]string{name})(st)
			if err != nil {
				return nil, err
			}
			return r.([]*guestlistv1.Hostname)[0], nil
		}
		if hostnameUnchanged(old, ev) {
			return decision{result: result}, nil
		}
		return decision{events: []protoMessage{ev}, result: result}, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*guestlistv1.Hostname), nil
}

// hostnameUnchanged reports whether ev would leave hostname h as it is. Such an update writes no
// event: the answer is the hostname as it stands, its etag unchanged, so that the history holds
// changes only and a client holding the etag is not made stale by a write that changed nothing.
func hostnameUnchanged(h *fold.Hostname, ev *eventsv1.HostnameUpdated) bool {
	m := ev.GetMtls()
	return ev.GetOriginUrl() == h.OriginURL && ev.GetPolicyId() == h.PolicyID && ev.GetState() == h.State &&
		m.GetMode() == h.Mode && m.GetRejectInHandshake() == h.RejectInHandshake &&
		slices.Equal(m.GetCertificateAuthorityIds(), h.CertificateAuthorityIDs)
}

// DeleteHostname implements guestlistv1.HostnameServiceServer. Once the deletion is stored, the
// reservation the hostname was created under is released, so that any tenant may claim the name;
// not when a creation of the same tenant has reserved it since (see reservations.go).
func (hs *HostnameServer) DeleteHostname(ctx context.Context, req *guestlistv1.DeleteHostnameRequest) (*emptypb.Empty, error) {
	p, err := auth.AuthorizeWrite(ctx, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	name, err := dnsname.Normalize(req.GetHostname())
	if err != nil {
		return nil, apistatus.InvalidArgument(apistatus.Violation{Field: "hostname", Reason: err.Error()})
	}
	md := metadata(ctx, p, "")
	var reservationID string
	_, err = hs.s.execute(ctx, req.GetTenantId(), md, func(st *fold.Tenant) (decision, error) {
		if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		old, ok := st.Hostnames[name]
		if !ok {
			return decision{}, apistatus.NotFound("hostname", name)
		}
		if err := checkEtag("hostname", name, req.GetEtag(), old.Revision); err != nil {
			return decision{}, err
		}
		reservationID = old.ReservationEventID
		return decision{events: []protoMessage{&eventsv1.HostnameDeleted{Hostname: name}}, result: emptyResult}, nil
	})
	if err != nil {
		return nil, err
	}
	if err := hs.s.release(context.WithoutCancel(ctx), name, req.GetTenantId(), reservationID, md); err != nil {
		hs.s.log.Error("command: releasing a deleted hostname failed; it will be taken over after the grace period", "hostname", name, "err", err)
	}
	return &emptypb.Empty{}, nil
}
