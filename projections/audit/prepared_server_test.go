package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/projections/audit"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	"guestlist.dev/services/api/server"
	"guestlist.dev/services/controlplane"
	"guestlist.dev/services/eventstore/boltstore"
)

const adminToken = "gla_prepared-cache-test-admin"

// preparedNode is a control plane on a real bolt file with real gRPC and HTTP listeners, whose
// AuditService counts its calls of decision.Prepare, per tenant.
type preparedNode struct {
	t     *testing.T
	base  string
	store *boltstore.Store

	mu       sync.Mutex
	prepared map[string]int // tenant id -> calls of decision.Prepare
}

func startPreparedNode(t *testing.T, opts ...audit.Option) *preparedNode {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	n := &preparedNode{t: t, store: store, prepared: map[string]int{}}
	count := audit.WithPrepare(func(cfg *configv1.HostnameConfig) (*decision.Hostname, error) {
		n.mu.Lock()
		n.prepared[cfg.GetTenantId()]++
		n.mu.Unlock()
		return decision.Prepare(cfg)
	})
	cp, err := controlplane.New(controlplane.Config{Store: store, AdminToken: adminToken, Logger: slog.New(slog.DiscardHandler), AuditOptions: append([]audit.Option{count}, opts...)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Authenticator: cp.Authenticator(), Services: cp.Services(), Ready: cp.Ready, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		store.Close()
	})
	n.base = "http://" + srv.HTTPAddr().String()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if resp, err := http.Get(n.base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the control plane never became ready")
		}
	}
	return n
}

// call sends a REST call with token and a JSON body, and fails the test unless it answers want.
func (n *preparedNode) call(want int, method, path, token string, body any) map[string]any {
	n.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		n.t.Fatal(err)
	}
	req, err := http.NewRequest(method, n.base+path, bytes.NewReader(b))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		n.t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, raw)
	}
	out := map[string]any{}
	_ = json.Unmarshal(raw, &out)
	return out
}

// prepares returns the calls of decision.Prepare so far for tenant's configurations.
func (n *preparedNode) prepares(tenant string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.prepared[tenant]
}

// position returns the store's last position.
func (n *preparedNode) position() uint64 {
	n.t.Helper()
	p, err := n.store.LastPosition(context.Background())
	if err != nil {
		n.t.Fatal(err)
	}
	return uint64(p)
}

// tenant creates a tenant with an auditor token, a CA "devices" (ca) and a policy "p", and
// returns the auditor's token.
func (n *preparedNode) tenant(id string, ca *pkitest.CA) string {
	n.t.Helper()
	n.call(200, "POST", "/v1/tenants?tenantId="+id, adminToken, map[string]any{"displayName": id})
	tok := n.call(200, "POST", "/v1/tenants/"+id+"/tokens", adminToken, map[string]any{"displayName": "auditor", "role": "ROLE_AUDITOR"})
	n.call(200, "POST", "/v1/tenants/"+id+"/certificateAuthorities?certificateAuthorityId=devices", adminToken, map[string]any{"certificatePem": pkitest.PEM(ca.Cert)})
	n.call(200, "POST", "/v1/tenants/"+id+"/policies?policyId=p", adminToken, map[string]any{"rules": []map[string]any{
		{"name": "no-admin", "action": "ACTION_DENY", "expression": "request.path.startsWith('/admin')"},
		{"name": "devices", "action": "ACTION_ALLOW", "expression": "cert.verified"},
	}})
	secret, _ := tok["secret"].(string)
	return secret
}

// hostname creates name in tenant id: ENFORCE, CA "devices", policy "p".
func (n *preparedNode) hostname(id, name string) {
	n.t.Helper()
	n.call(200, "POST", "/v1/tenants/"+id+"/hostnames", adminToken, map[string]any{
		"hostname": name, "originUrl": "http://127.0.0.1:1",
		"mtls": map[string]any{"mode": "MTLS_MODE_ENFORCE", "certificateAuthorityIds": []string{"devices"}}, "policyId": "p",
	})
}

// explain explains a request of leaf's to name as tenant id's configuration stood at position at,
// over REST with token, and returns verdict, reason and rule.
func (n *preparedNode) explain(token, id, name string, at uint64, leaf *pkitest.Leaf, path string) string {
	n.t.Helper()
	resp := n.call(200, "POST", "/v1/tenants/"+id+":explain", token, map[string]any{
		"hostname": name, "method": "GET", "path": path, "clientCertificateChainPem": pkitest.PEM(leaf.Cert),
		"atPosition": strconv.FormatUint(at, 10), "requestTime": time.Now().UTC().Format(time.RFC3339Nano),
	})
	return resp["verdict"].(string) + " " + resp["reason"].(string) + " " + func() string { s, _ := resp["rule"].(string); return s }()
}

// TestExplainPreparesAConfigurationOnce: an auditor explaining many decision log lines made on one
// configuration (at the positions they were logged at, for different requests and certificates)
// has the configuration prepared (its policy compiled) once, not at every call. Without the cache
// of prepared configurations, decision.Prepare ran for every explanation (6 here); a policy at
// the compile-time worst case costs about 0.4 s a call (BenchmarkExplainExpensivePolicy).
func TestExplainPreparesAConfigurationOnce(t *testing.T) {
	n := startPreparedNode(t)
	ca := pkitest.NewCA(t, "acme devices")
	good, stranger := ca.Client(t, "terminal-1"), pkitest.NewCA(t, "elsewhere").Client(t, "stranger")
	auditor := n.tenant("acme", ca)
	n.hostname("acme", "pay.acme.example")
	first := n.position()
	// Later events that leave the hostname's configuration as it was: the decision log's
	// config_revision moves on, the configuration does not.
	n.call(200, "POST", "/v1/tenants/acme/tokens", adminToken, map[string]any{"displayName": "ci", "role": "ROLE_TENANT_ADMIN"})
	n.call(200, "POST", "/v1/tenants/acme/policies?policyId=unused", adminToken, map[string]any{"rules": []map[string]any{{"name": "all", "action": "ACTION_ALLOW", "expression": "true"}}})
	second := n.position()

	for _, tc := range []struct {
		at   uint64
		leaf *pkitest.Leaf
		path string
		want string
	}{
		{first, good, "/", "allow rule_allow devices"},
		{first, good, "/admin/users", "deny rule_deny no-admin"},
		{first, stranger, "/", "deny " + decision.ReasonCertificateUntrusted + " "},
		{second, good, "/", "allow rule_allow devices"},
		{second, good, "/admin", "deny rule_deny no-admin"},
		{second + 1000, good, "/", "allow rule_allow devices"},
	} {
		if got := n.explain(auditor, "acme", "pay.acme.example", tc.at, tc.leaf, tc.path); got != tc.want {
			t.Errorf("at %d, %s: %q, want %q", tc.at, tc.path, got, tc.want)
		}
	}
	if got := n.prepares("acme"); got != 1 {
		t.Errorf("decision.Prepare ran %d times for 6 explanations on one configuration; want 1", got)
	}

	// A change of the configuration is prepared anew, and the old one is still kept.
	n.call(200, "PATCH", "/v1/tenants/acme/policies/p", adminToken, map[string]any{"rules": []map[string]any{{"name": "nobody", "action": "ACTION_DENY", "expression": "true"}}})
	if got := n.explain(auditor, "acme", "pay.acme.example", n.position(), good, "/"); got != "deny rule_deny nobody" {
		t.Errorf("after the policy changed: %q", got)
	}
	if got := n.explain(auditor, "acme", "pay.acme.example", first, good, "/"); got != "allow rule_allow devices" {
		t.Errorf("before the policy changed, again: %q", got)
	}
	if got := n.prepares("acme"); got != 2 {
		t.Errorf("decision.Prepare ran %d times for two configurations; want 2", got)
	}

	// Without the cache, every explanation prepares: the count above is the cache's doing.
	plain := startPreparedNode(t, audit.WithPreparedConfigs(0, 0))
	auditor = plain.tenant("acme", ca)
	plain.hostname("acme", "pay.acme.example")
	for range 3 {
		if got := plain.explain(auditor, "acme", "pay.acme.example", plain.position(), good, "/"); got != "allow rule_allow devices" {
			t.Errorf("without the cache: %q", got)
		}
	}
	if got := plain.prepares("acme"); got != 3 {
		t.Errorf("without the cache, decision.Prepare ran %d times for 3 explanations; want 3", got)
	}
}

// TestPreparedConfigsAreTenantsOwn: a hostname that moved from one tenant to another, with the
// same CA certificate and the same policy in both (configurations equal but for the tenant), is
// prepared once for each tenant, each tenant's explanation answers from its own history, and one
// tenant's auditor cannot explain (nor reach the cached configurations of) the other.
func TestPreparedConfigsAreTenantsOwn(t *testing.T) {
	n := startPreparedNode(t)
	ca := pkitest.NewCA(t, "shared devices")
	good := ca.Client(t, "terminal-1")
	acme, globex := n.tenant("acme", ca), n.tenant("globex", ca)
	n.hostname("acme", "moving.example")
	atAcme := n.position()
	if got := n.explain(acme, "acme", "moving.example", atAcme, good, "/"); got != "allow rule_allow devices" {
		t.Fatalf("acme: %q", got)
	}
	n.call(200, "DELETE", "/v1/tenants/acme/hostnames/moving.example", adminToken, nil)
	n.hostname("globex", "moving.example")
	atGlobex := n.position()

	for _, tc := range []struct {
		token, tenant string
		at            uint64
		want          string
	}{
		// globex did not hold the hostname then: acme's configuration, cached, is not globex's.
		{globex, "globex", atAcme, "deny " + decision.ReasonHostnameUnknown + " "},
		{globex, "globex", atGlobex, "allow rule_allow devices"},
		{globex, "globex", atGlobex, "allow rule_allow devices"},
		{acme, "acme", atGlobex, "deny " + decision.ReasonHostnameUnknown + " "},
		{acme, "acme", atAcme, "allow rule_allow devices"},
	} {
		if got := n.explain(tc.token, tc.tenant, "moving.example", tc.at, good, "/"); got != tc.want {
			t.Errorf("%s at %d: %q, want %q", tc.tenant, tc.at, got, tc.want)
		}
	}
	if a, g := n.prepares("acme"), n.prepares("globex"); a != 1 || g != 1 {
		t.Errorf("decision.Prepare ran %d times for acme and %d for globex; want once each (equal configurations of two tenants are not shared)", a, g)
	}
	// Another tenant's auditor is refused before anything is prepared or looked up.
	n.call(403, "POST", "/v1/tenants/acme:explain", globex, map[string]any{"hostname": "moving.example", "method": "GET", "path": "/", "atPosition": strconv.FormatUint(atAcme, 10)})
	if a, g := n.prepares("acme"), n.prepares("globex"); a != 1 || g != 1 {
		t.Errorf("after a refused explanation: %d and %d calls of decision.Prepare", a, g)
	}
}

// TestPreparedConfigsAreSharedFairly: a tenant's auditor explaining more configurations than
// the cache holds (to push the others' out, or merely many hostnames) evicts only its own
// entries: another tenant's prepared configuration stays, and its explanations stay cheap. With
// one LRU for all tenants, globex's configuration was prepared again after acme's explanations.
func TestPreparedConfigsAreSharedFairly(t *testing.T) {
	n := startPreparedNode(t, audit.WithPreparedConfigs(3, 128<<20))
	ca := pkitest.NewCA(t, "devices")
	good := ca.Client(t, "terminal-1")
	acme, globex := n.tenant("acme", ca), n.tenant("globex", ca)
	n.hostname("globex", "shop.globex.example")
	for i := range 6 {
		n.hostname("acme", fmt.Sprintf("h%d.acme.example", i))
	}
	at := n.position()
	explain := func(token, id, name string) {
		t.Helper()
		if got := n.explain(token, id, name, at, good, "/"); got != "allow rule_allow devices" {
			t.Fatalf("%s, %s: %q", id, name, got)
		}
	}
	explain(globex, "globex", "shop.globex.example")
	for i := range 6 {
		explain(acme, "acme", fmt.Sprintf("h%d.acme.example", i))
	}
	explain(globex, "globex", "shop.globex.example")
	explain(acme, "acme", "h5.acme.example")
	if a, g := n.prepares("acme"), n.prepares("globex"); a != 6 || g != 1 {
		t.Errorf("decision.Prepare ran %d times for acme's 6 hostnames and %d for globex's one; want 6 and 1 (acme's explanations evict only acme's configurations)", a, g)
	}
}
