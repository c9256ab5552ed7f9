package audit

import (
	"context"
	"encoding/base64"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
	"guestlist.dev/services/eventstore/storetest"
)

func openStore(t *testing.T) eventstore.Store {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// appendTo appends ms to the tenant's stream and returns the position of the last one.
func appendTo(t *testing.T, store eventstore.Store, tenant string, ms ...proto.Message) uint64 {
	t.Helper()
	evs := make([]eventstore.EventData, len(ms))
	for i, m := range ms {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		evs[i] = eventstore.EventData{ID: storetest.NewEventID(), Type: fold.TypeOf(m), Data: data, Metadata: eventstore.Metadata{Actor: "admin", RequestID: "req-" + fold.TypeOf(m)}}
	}
	res, err := store.Append(context.Background(), fold.TenantStream(tenant), eventstore.Any(), evs...)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(res.Position)
}

func as(role auth.Role, tenant string) context.Context {
	return auth.NewContext(context.Background(), auth.Principal{Role: role, TenantID: tenant, TokenID: "tok"})
}

var admin = as(auth.RoleAdmin, "")

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: %v, want %v", what, err, want)
	}
}

// fixture is a small history of tenant acme, interleaved with tenant globex's events.
type fixture struct {
	store                                 eventstore.Store
	svc                                   *Service
	ca                                    *pkitest.CA
	good, other                           *pkitest.Leaf
	created, caAdded, hostOn, revoked, up uint64
	globex                                uint64
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{store: openStore(t)}
	f.svc = New(f.store)
	f.ca = pkitest.NewCA(t, "acme devices")
	f.good = f.ca.Client(t, "terminal-1")
	f.other = pkitest.NewCA(t, "elsewhere").Client(t, "stranger")
	f.created = appendTo(t, f.store, "acme", &eventsv1.TenantCreated{TenantId: "acme", DisplayName: "Acme"})
	appendTo(t, f.store, "globex", &eventsv1.TenantCreated{TenantId: "globex"})
	f.caAdded = appendTo(t, f.store, "acme", &eventsv1.CertificateAuthorityAdded{CertificateAuthorityId: "devices", CertificateDer: f.ca.Cert.Raw, FingerprintSha256: "00"})
	f.hostOn = appendTo(t, f.store, "acme", &eventsv1.HostnameCreated{Hostname: "pay.acme.example", OriginUrl: "http://a", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
		Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"devices"}}})
	f.revoked = appendTo(t, f.store, "acme", &eventsv1.RevocationAdded{CertificateAuthorityId: "devices", RevocationId: "r1", Target: &eventsv1.RevocationAdded_SerialNumber{SerialNumber: f.good.Cert.SerialNumber.Text(16)}})
	f.globex = appendTo(t, f.store, "globex", &eventsv1.TokenCreated{TokenId: "x"})
	f.up = appendTo(t, f.store, "acme",
		&eventsv1.RevocationRemoved{CertificateAuthorityId: "devices", RevocationId: "r1"},
		&eventsv1.PolicyCreated{PolicyId: "p", Rules: []*eventsv1.PolicyRule{{Name: "no-admin", Action: eventsv1.Action_ACTION_DENY, Expression: "request.path.startsWith('/admin')"}, {Name: "all", Action: eventsv1.Action_ACTION_ALLOW, Expression: "cert.verified"}}},
		&eventsv1.HostnameUpdated{Hostname: "pay.acme.example", OriginUrl: "http://b", PolicyId: "p", State: eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
			Mtls: &eventsv1.MtlsSettings{Mode: eventsv1.MtlsMode_MTLS_MODE_ENFORCE, CertificateAuthorityIds: []string{"devices"}}})
	return f
}

func TestListEventsPaging(t *testing.T) {
	f := newFixture(t)
	var got []*guestlistv1.AuditEvent
	tok := ""
	for pages := 0; ; pages++ {
		resp, err := f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "acme", PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEvents()) > 2 || pages > 10 {
			t.Fatalf("page of %d", len(resp.GetEvents()))
		}
		got = append(got, resp.GetEvents()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			break
		}
	}
	if len(got) != 7 {
		t.Fatalf("%d events, want 7", len(got))
	}
	for i, ev := range got {
		if ev.GetRevision() != uint64(i) || (i > 0 && ev.GetPosition() <= got[i-1].GetPosition()) || ev.GetActor() != "admin" || ev.GetTime() == nil || ev.GetHash() != "" {
			t.Errorf("event %d: %v", i, ev)
		}
		m, err := ev.GetData().UnmarshalNew()
		if err != nil || fold.TypeOf(m) != ev.GetType() || ev.GetRequestId() != "req-"+ev.GetType() {
			t.Errorf("event %d data: %v %v", i, m, err)
		}
	}
	if m, _ := got[0].GetData().UnmarshalNew(); m.(*eventsv1.TenantCreated).GetDisplayName() != "Acme" {
		t.Errorf("first event: %v", m)
	}

	// from_position: only later events, whatever tenant the position belongs to.
	for _, from := range []uint64{0, f.created, f.hostOn, f.globex, f.up, f.up + 5} {
		resp, err := f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "acme", FromPosition: from})
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, ev := range got {
			if ev.GetPosition() > from {
				want++
			}
		}
		if len(resp.GetEvents()) != want || (want > 0 && resp.GetEvents()[0].GetPosition() <= from) {
			t.Errorf("from %d: %d events, want %d", from, len(resp.GetEvents()), want)
		}
	}
	_, err := f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "acme", PageToken: "garbage"})
	wantCode(t, "bad page token", err, codes.InvalidArgument)

	// A page token continues only the history of the tenant it came from: on another tenant's it
	// would go on from this tenant's revision, skipping that history's events before it. Tokens
	// of earlier versions ("e1:" + revision), which named no tenant, still continue.
	first, err := f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "acme", PageSize: 1})
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("first page: %v, %v", first, err)
	}
	_, err = f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "globex", PageToken: first.GetNextPageToken()})
	wantCode(t, "another tenant's page token", err, codes.InvalidArgument)
	if err != nil && !strings.Contains(err.Error(), "another tenant") {
		t.Errorf("another tenant's page token: %v", err)
	}
	for _, tok := range []string{first.GetNextPageToken(), base64.RawURLEncoding.EncodeToString([]byte("e1:0"))} {
		resp, err := f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "acme", PageToken: tok})
		if err != nil || len(resp.GetEvents()) != 6 || resp.GetEvents()[0].GetRevision() != 1 {
			t.Errorf("token %q: %d events, %v; want the 6 after revision 0", tok, len(resp.GetEvents()), err)
		}
	}
	for _, tok := range []string{base64.RawURLEncoding.EncodeToString([]byte("e2:0")), base64.RawURLEncoding.EncodeToString([]byte("e2:acme\nx"))} {
		_, err = f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "acme", PageToken: tok})
		wantCode(t, "malformed page token "+tok, err, codes.InvalidArgument)
	}
	_, err = f.svc.ListEvents(admin, &guestlistv1.ListEventsRequest{TenantId: "nobody"})
	wantCode(t, "unknown tenant", err, codes.NotFound)
}

func TestAuthorization(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"admin", admin, codes.OK},
		{"auditor", as(auth.RoleAuditor, "acme"), codes.OK},
		{"tenant admin", as(auth.RoleTenantAdmin, "acme"), codes.OK},
		{"all-tenant auditor", as(auth.RoleAuditor, ""), codes.OK},
		{"other tenant's auditor", as(auth.RoleAuditor, "globex"), codes.PermissionDenied},
		{"other tenant's admin", as(auth.RoleTenantAdmin, "globex"), codes.PermissionDenied},
		{"edge", as(auth.RoleEdge, ""), codes.PermissionDenied},
		{"nobody", context.Background(), codes.Unauthenticated},
	} {
		_, err := f.svc.ListEvents(tc.ctx, &guestlistv1.ListEventsRequest{TenantId: "acme"})
		wantCode(t, tc.name+" ListEvents", err, tc.want)
		_, err = f.svc.GetSnapshot(tc.ctx, &guestlistv1.GetSnapshotRequest{TenantId: "acme"})
		wantCode(t, tc.name+" GetSnapshot", err, tc.want)
		_, err = f.svc.Explain(tc.ctx, &guestlistv1.ExplainRequest{TenantId: "acme", Hostname: "pay.acme.example"})
		wantCode(t, tc.name+" Explain", err, tc.want)
	}
	// Denied the same way whether or not the other tenant exists.
	_, err := f.svc.ListEvents(as(auth.RoleAuditor, "globex"), &guestlistv1.ListEventsRequest{TenantId: "nobody"})
	wantCode(t, "other tenant that does not exist", err, codes.PermissionDenied)
	// The ledger's calls say they are not there yet.
	_, err = f.svc.Verify(admin, &guestlistv1.VerifyRequest{TenantId: "acme"})
	wantCode(t, "Verify", err, codes.Unimplemented)
	_, err = f.svc.GetCheckpointKey(admin, &guestlistv1.GetCheckpointKeyRequest{})
	wantCode(t, "GetCheckpointKey", err, codes.Unimplemented)
}

func TestSnapshotAtPositionAndTime(t *testing.T) {
	f := newFixture(t)
	snap := func(req *guestlistv1.GetSnapshotRequest) *guestlistv1.Snapshot {
		t.Helper()
		req.TenantId = "acme"
		s, err := f.svc.GetSnapshot(admin, req)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	at := func(p uint64) *guestlistv1.Snapshot {
		return snap(&guestlistv1.GetSnapshotRequest{At: &guestlistv1.GetSnapshotRequest_AtPosition{AtPosition: p}})
	}
	if s := at(f.created - 1); s.GetTenant() != nil || s.GetPosition() != 0 {
		t.Errorf("before creation: %v", s)
	}
	if s := at(f.created); s.GetTenant().GetDisplayName() != "Acme" || len(s.GetCertificateAuthorities()) != 0 || s.GetPosition() != f.created {
		t.Errorf("at creation: %v", s)
	}
	s := at(f.revoked)
	if len(s.GetHostnames()) != 1 || s.GetHostnames()[0].GetOriginUrl() != "http://a" || len(s.GetRevocations()) != 1 || s.GetRevocations()[0].GetCertificateAuthorityId() != "devices" {
		t.Errorf("at revocation: %v", s)
	}
	if s2 := at(f.globex); !proto.Equal(s, s2) {
		t.Errorf("another tenant's event changed the snapshot:\n%v\n%v", s, s2)
	}
	now := snap(&guestlistv1.GetSnapshotRequest{})
	if now.GetPosition() != f.up || len(now.GetPolicies()) != 1 || len(now.GetRevocations()) != 0 || now.GetHostnames()[0].GetOriginUrl() != "http://b" {
		t.Errorf("now: %v", now)
	}
	// At a time: the events stored at or before it.
	evs, err := f.store.ReadStream(context.Background(), fold.TenantStream("acme"), eventstore.Forwards, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		byTime := snap(&guestlistv1.GetSnapshotRequest{At: &guestlistv1.GetSnapshotRequest_AtTime{AtTime: timestamppb.New(ev.Time)}})
		if byTime.GetPosition() < uint64(ev.Position) {
			t.Errorf("at the time of position %d: snapshot at %d", ev.Position, byTime.GetPosition())
		}
		if byPos := at(byTime.GetPosition()); !proto.Equal(byTime, byPos) {
			t.Errorf("at time %v and at position %d differ", ev.Time, byTime.GetPosition())
		}
	}
	if s := snap(&guestlistv1.GetSnapshotRequest{At: &guestlistv1.GetSnapshotRequest_AtTime{AtTime: timestamppb.New(evs[0].Time.Add(-time.Hour))}}); s.GetTenant() != nil {
		t.Errorf("an hour before: %v", s)
	}

	d := Diff(at(f.revoked), now)
	want := []string{
		"revocation r1 under certificate authority devices removed",
		"policy p added",
		"hostname pay.acme.example: origin_url http://a -> http://b",
		"hostname pay.acme.example: policy_id \"\" -> p",
	}
	if !slices.Equal(d, want) {
		t.Errorf("Diff:\n%s\nwant\n%s", strings.Join(d, "\n"), strings.Join(want, "\n"))
	}
	if d := Diff(now, now); len(d) != 0 {
		t.Errorf("Diff of a snapshot with itself: %v", d)
	}
	if d := Diff(nil, at(f.caAdded)); !slices.Equal(d, []string{"tenant acme added", "certificate authority devices added"}) {
		t.Errorf("Diff from nothing: %v", d)
	}
}

func TestExplain(t *testing.T) {
	f := newFixture(t)
	when := time.Now()
	explain := func(req *guestlistv1.ExplainRequest) *guestlistv1.ExplainResponse {
		t.Helper()
		req.TenantId = "acme"
		if req.GetRequestTime() == nil && req.GetAtTime() == nil {
			req.RequestTime = timestamppb.New(when)
		}
		resp, err := f.svc.Explain(admin, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	chain := pkitest.PEM(f.good.Cert)
	for _, tc := range []struct {
		at                   uint64
		cert, path           string
		verdict, reason, rul string
	}{
		{f.caAdded, chain, "/", "deny", decision.ReasonHostnameUnknown, ""},
		{f.hostOn, chain, "/", "allow", decision.ReasonCertificateVerified, ""},
		{f.hostOn, "", "/", "deny", decision.ReasonCertificateMissing, ""},
		{f.hostOn, pkitest.PEM(f.other.Cert), "/", "deny", decision.ReasonCertificateUntrusted, ""},
		{f.revoked, chain, "/", "deny", decision.ReasonCertificateRevoked, ""},
		{f.globex, chain, "/", "deny", decision.ReasonCertificateRevoked, ""},
		{f.up, chain, "/", "allow", decision.ReasonRuleAllow, "all"},
		{f.up, chain, "/admin/x", "deny", decision.ReasonRuleDeny, "no-admin"},
		// The edge's normalisation (decision.PolicyPath): what a Tomcat-like origin would serve
		// as /admin/x is judged as /admin/x, as at the edge.
		{f.up, chain, "/admin;jsessionid=1/x", "deny", decision.ReasonRuleDeny, "no-admin"},
		{f.up, chain, "//admin//x", "deny", decision.ReasonRuleDeny, "no-admin"},
		{f.up, "", "/", "deny", decision.ReasonCertificateMissing, ""},
	} {
		got := explain(&guestlistv1.ExplainRequest{Hostname: "Pay.Acme.Example.", ClientCertificateChainPem: tc.cert, Method: "GET", Path: tc.path, At: &guestlistv1.ExplainRequest_AtPosition{AtPosition: tc.at}})
		if got.GetVerdict() != tc.verdict || got.GetReason() != tc.reason || got.GetRule() != tc.rul || got.GetConfigRevision() != tc.at {
			t.Errorf("at %d, %s: %v, want %s %s %q", tc.at, tc.path, got, tc.verdict, tc.reason, tc.rul)
		}
	}
	// The certificate is judged at the request's time.
	if got := explain(&guestlistv1.ExplainRequest{Hostname: "pay.acme.example", ClientCertificateChainPem: chain, Method: "GET", At: &guestlistv1.ExplainRequest_AtPosition{AtPosition: f.hostOn}, RequestTime: timestamppb.New(when.Add(365 * 24 * time.Hour))}); got.GetReason() != decision.ReasonCertificateExpired {
		t.Errorf("a year later: %v", got)
	}
	// At a time: the configuration then, the certificate then, and the position of that configuration.
	evs, _ := f.store.ReadStream(context.Background(), fold.TenantStream("acme"), eventstore.Forwards, 0, 100)
	var revokedTime time.Time
	for _, ev := range evs {
		if uint64(ev.Position) == f.revoked {
			revokedTime = ev.Time
		}
	}
	got := explain(&guestlistv1.ExplainRequest{Hostname: "pay.acme.example", ClientCertificateChainPem: chain, Method: "GET", At: &guestlistv1.ExplainRequest_AtTime{AtTime: timestamppb.New(revokedTime)}})
	if got.GetReason() != decision.ReasonCertificateRevoked || got.GetConfigRevision() < f.revoked || got.GetConfigRevision() >= f.up-2 {
		t.Errorf("at the revocation's time: %v", got)
	}
	_, err := f.svc.Explain(admin, &guestlistv1.ExplainRequest{TenantId: "acme", Hostname: "pay.acme.example", ClientCertificateChainPem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"})
	wantCode(t, "a key instead of a certificate", err, codes.InvalidArgument)
	_, err = f.svc.Explain(admin, &guestlistv1.ExplainRequest{TenantId: "acme", Hostname: "bad..name"})
	wantCode(t, "a bad hostname", err, codes.InvalidArgument)
	// A path the edge refuses with 400 (deciding nothing) has no verdict to explain.
	for _, p := range []string{"/x/../admin", "/admin\\x"} {
		_, err = f.svc.Explain(admin, &guestlistv1.ExplainRequest{TenantId: "acme", Hostname: "pay.acme.example", Method: "GET", Path: p})
		wantCode(t, "path "+p, err, codes.InvalidArgument)
		named := false
		for _, d := range status.Convert(err).Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					named = named || v.GetField() == "path" && v.GetDescription() != ""
				}
			}
		}
		if !named {
			t.Errorf("path %s: %v has no violation of the field path", p, err)
		}
	}
}

// TestDiffQuotesWhatIsNotPlainText: Diff writes one change a line, so a value that is not plain
// text (a newline, an escape sequence, a bidirectional override: stored before the API refused
// them, or written by any other path) is quoted, and cannot forge or hide a line. Before, a
// policy's display name "x\nhostname pay.acme.example: mtls.mode OFF -> ENFORCE\x1b[8m" showed
// mTLS switched on, and hid the next line on a terminal (switched off).
func TestDiffQuotesWhatIsNotPlainText(t *testing.T) {
	snap := func(policyName, mode string) *guestlistv1.Snapshot {
		return &guestlistv1.Snapshot{
			Policies: []*guestlistv1.Policy{{PolicyId: "pol", DisplayName: policyName}},
			Hostnames: []*guestlistv1.Hostname{{Hostname: "pay.acme.example", Mtls: &guestlistv1.MtlsSettings{
				Mode: guestlistv1.MtlsMode(guestlistv1.MtlsMode_value["MTLS_MODE_"+mode]),
			}}},
		}
	}
	forged := "x\nhostname pay.acme.example: mtls.mode OFF -> ENFORCE\x1b[8m"
	got := Diff(snap("payments", "ENFORCE"), snap(forged, "OFF"))
	want := []string{
		`policy pol: display_name payments -> "x\nhostname pay.acme.example: mtls.mode OFF -> ENFORCE\x1b[8m"`,
		"hostname pay.acme.example: mtls.mode ENFORCE -> OFF",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Diff:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := Diff(snap("payments", "OFF"), snap("devices \u202edevices", "OFF")); !slices.Equal(got, []string{`policy pol: display_name payments -> "devices \u202edevices"`}) {
		t.Errorf("bidirectional override: %q", got)
	}
	if got := Diff(snap("Zahlungsgeräte 決済", "OFF"), snap("Acme Payments", "OFF")); !slices.Equal(got, []string{"policy pol: display_name Zahlungsgeräte 決済 -> Acme Payments"}) {
		t.Errorf("plain text is shown as it is: %q", got)
	}
}
