package enforce

import (
	"encoding/json"
	"net/http"
	"testing"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// pathnormEnv is an edge with a policy denying /admin and allowing the rest, forwarding to a
// recording origin.
func pathnormEnv(t *testing.T) (*env, *recordingOrigin, *pkitest.Leaf) {
	ca := pkitest.NewCA(t, "Acme Root")
	origin := newRecordingOrigin(t)
	h := host(hostA, "acme", ca)
	h.OriginUrl = origin.url
	h.Policy = &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{
		{Name: "no-admin", Action: configv1.Action_ACTION_DENY, Expression: `request.path.startsWith("/admin")`},
		{Name: "rest", Action: configv1.Action_ACTION_ALLOW, Expression: `cert.verified`},
	}}
	return newEnv(t, h), origin, ca.Client(t, "device-1")
}

// pathnormGet sends GET target (exactly as given) over HTTP/1.1 (the fast path) or HTTP/2.
func pathnormGet(t *testing.T, e *env, c *http.Client, target string, h2 bool) *result {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://"+hostA+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Opaque = target // sent as the request target (:path) unchanged
	r, err := e.do(c, req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	if want := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]; r.proto != want {
		t.Fatalf("GET %s: protocol %s, want %s", target, r.proto, want)
	}
	return r
}

// TestPathNormPolicySeesWhatOriginsServe: a path that origins read differently (dot segments,
// also encoded or followed by ";params", backslashes) is refused with 400 before any decision; a
// ";params" path is decided without the parameters, so a deny rule on /admin catches what
// Tomcat-like origins serve as /admin. None of these reaches the origin. The same on the fast
// HTTP/1.1 path and on net/http's (HTTP/2; a raw backslash, outside the fast path's subset, is
// handed over to net/http on HTTP/1.1 too).
func TestPathNormPolicySeesWhatOriginsServe(t *testing.T) {
	cases := []struct {
		name, target string
		status       int
		reason       string // the 400's reason, or the logged path of a deny
	}{
		{name: "fail/dot-dot", target: "/admin/../public", status: 400, reason: "path_dot_segment"},
		{name: "fail/encoded dot-dot", target: "/admin/%2e%2e/public", status: 400, reason: "path_dot_segment"},
		{name: "fail/dot-dot before an encoded slash", target: "/admin/..%2Fpublic", status: 400, reason: "path_dot_segment"},
		{name: "fail/dot-dot with params", target: "/x/..;/admin", status: 400, reason: "path_dot_segment"},
		{name: "fail/empty segment with params", target: "/;/admin", status: 403, reason: "/admin"},
		{name: "fail/dot-dot before an encoded backslash", target: "/x/..%5Cadmin", status: 400, reason: "path_backslash"},
		{name: "fail/encoded dot-dot with encoded params", target: "/x/%2E%2E%3Bx/admin", status: 400, reason: "path_dot_segment"},
		{name: "fail/dot with params", target: "/x/.;y/admin", status: 400, reason: "path_dot_segment"},
		{name: "fail/encoded dot", target: "/%2e/admin", status: 400, reason: "path_dot_segment"},
		{name: "fail/dot-dot at the end", target: "/admin/x/..", status: 400, reason: "path_dot_segment"},
		{name: "fail/encoded backslash", target: "/admin%5cx", status: 400, reason: "path_backslash"},
		{name: "fail/raw backslash", target: `/x\admin`, status: 400, reason: "path_backslash"},
		{name: "fail/params on the denied segment", target: "/admin;x", status: 403, reason: "/admin"},
		{name: "fail/params before the rest", target: "/admin;jsessionid=1/users", status: 403, reason: "/admin/users"},
		{name: "fail/encoded name", target: "/%61dmin", status: 403, reason: "/admin"},
	}
	pathnormEachProto(t, func(t *testing.T, e *env, origin *recordingOrigin, c *http.Client, h2 bool) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				before := len(e.logLines())
				r := pathnormGet(t, e, c, tc.target, h2)
				if r.status != tc.status {
					t.Fatalf("GET %s: status %d, want %d; body %s", tc.target, r.status, tc.status, r.body)
				}
				lines := e.logLines()[before:]
				switch tc.status {
				case 400:
					var b struct{ Error, Reason string }
					if err := json.Unmarshal(r.body, &b); err != nil || b.Error != "bad_request" || b.Reason != tc.reason {
						t.Errorf("body %s, want reason %s", r.body, tc.reason)
					}
					if len(lines) != 0 {
						t.Errorf("a refused path was logged as a decision: %v", lines)
					}
				case 403:
					if _, reason := r.decision(); reason != decision.ReasonRuleDeny {
						t.Errorf("403 reason %q, want %s", reason, decision.ReasonRuleDeny)
					}
					if len(lines) != 1 {
						t.Fatalf("decision log lines %v, want one", lines)
					}
					req := lines[0]["request"].(map[string]any)
					if lines[0]["verdict"] != "deny" || lines[0]["rule"] != "no-admin" || req["path"] != tc.reason {
						t.Errorf("decision log: verdict %v rule %v path %v; want deny no-admin %s", lines[0]["verdict"], lines[0]["rule"], req["path"], tc.reason)
					}
				}
			})
		}
		if got := origin.requests(); len(got) != 0 {
			t.Errorf("the origin received %q", got)
		}
	})
}

// TestPathNormLegitimatePaths: paths that browsers and API clients send still pass; the policy
// (and the decision log) sees them decoded, without ";params" and repeated slashes, and the
// origin gets the target exactly as sent.
func TestPathNormLegitimatePaths(t *testing.T) {
	cases := []struct {
		name, target, policyPath string
	}{
		{name: "ok/plain", target: "/pay/x", policyPath: "/pay/x"},
		{name: "ok/encoded space", target: "/a%20b", policyPath: "/a b"},
		{name: "ok/matrix parameter", target: "/v1/items;v=2", policyPath: "/v1/items"},
		{name: "ok/session id parameter", target: "/shop;jsessionid=AB12/cart", policyPath: "/shop/cart"},
		{name: "ok/trailing slash", target: "/pay/x/", policyPath: "/pay/x/"},
		{name: "ok/repeated slashes", target: "/pay//x", policyPath: "/pay/x"},
		{name: "ok/dot-led segment", target: "/.well-known/acme-challenge/t", policyPath: "/.well-known/acme-challenge/t"},
		{name: "ok/dots inside names", target: "/files/a..b/v1.2/...", policyPath: "/files/a..b/v1.2/..."},
		{name: "ok/dot segment in the query only", target: "/pay?next=/../admin", policyPath: "/pay"},
	}
	pathnormEachProto(t, func(t *testing.T, e *env, origin *recordingOrigin, c *http.Client, h2 bool) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				before, seen := len(e.logLines()), len(origin.requests())
				r := pathnormGet(t, e, c, tc.target, h2)
				lines := e.logLines()[before:]
				if len(lines) != 1 {
					t.Fatalf("decision log lines %v, want one", lines)
				}
				if p := lines[0]["request"].(map[string]any)["path"]; p != tc.policyPath {
					t.Errorf("decision log path %q, want %q", p, tc.policyPath)
				}
				expectStatus(t, r, 200)
				if lines[0]["verdict"] != "allow" {
					t.Errorf("verdict %v", lines[0]["verdict"])
				}
				got := origin.requests()[seen:]
				if len(got) != 1 || got[0] != "GET "+tc.target {
					t.Errorf("the origin received %q, want %q", got, "GET "+tc.target)
				}
			})
		}
	})
}

// pathnormEachProto runs f on a fresh pathnormEnv over HTTP/1.1 (the fast path) and over HTTP/2
// (net/http's), with a client holding the device's certificate.
func pathnormEachProto(t *testing.T, f func(t *testing.T, e *env, origin *recordingOrigin, c *http.Client, h2 bool)) {
	for _, proto := range []string{"http1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			e, origin, leaf := pathnormEnv(t)
			opts := []clientOpts{withCert(leaf)}
			if proto == "h2" {
				opts = append(opts, withH2())
			}
			f(t, e, origin, e.client(opts...), proto == "h2")
		})
	}
}
