package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/certid"
)

func rule(name string, action Action, expr string) Rule {
	return Rule{Name: name, Action: action, Expression: expr}
}

func TestCompile(t *testing.T) {
	tests := []struct {
		name    string
		rules   []Rule
		wantErr string // substring of the error
		// for *CompileError
		index        int
		field        string
		line, column int
	}{
		{name: "ok/bool", rules: []Rule{rule("r", Allow, `cert.verified`)}},
		{name: "ok/all-variables", rules: []Rule{rule("r", Allow, `cert.presented && cert.verified && cert.error == "" &&
			cert.subject.common_name == "a" && "ou" in cert.subject.organizational_unit && "o" in cert.subject.organization &&
			cert.issuer.common_name == "ca" && cert.serial_number == "1" && cert.fingerprint_sha256.size() == 64 &&
			"a.example" in cert.dns_names && "a@example.com" in cert.email_addresses && "spiffe://x/y" in cert.uris &&
			cert.not_before < cert.not_after && request.host == "pay.example.com" && request.method == "GET" &&
			request.path.startsWith("/") && request.headers["x-env"] == "prod"`)}},
		{name: "ok/two-rules", rules: []Rule{rule("deny-contractors", Deny, `"contractors" in cert.subject.organizational_unit`), rule("allow-verified", Allow, `cert.verified`)}},
		{name: "ok/optional-header", rules: []Rule{rule("r", Allow, `request.headers[?"x-env"].orValue("") == "prod"`)}},
		{name: "ok/has", rules: []Rule{rule("r", Allow, `has(cert.subject.common_name) && has(request.headers.accept)`)}},
		{name: "ok/strings-ext", rules: []Rule{rule("r", Allow, `request.path.lowerAscii().split("/")[1] == "api"`)}},
		{name: "ok/sets-ext", rules: []Rule{rule("r", Allow, `sets.intersects(cert.subject.organizational_unit, ["ops", "sre"])`)}},
		{name: "ok/regex", rules: []Rule{rule("r", Allow, `request.path.matches("^/api/v[0-9]+/")`)}},
		{name: "ok/timestamps", rules: []Rule{rule("r", Allow, `cert.not_after - cert.not_before <= duration("8760h") && cert.not_after > timestamp("2026-01-01T00:00:00Z")`)}},
		{name: "ok/san-regex", rules: []Rule{rule("r", Allow, `cert.dns_names.exists(n, n.matches("^device-[0-9]+\\.acme\\.example$"))`)}},
		// Ordinary regular expressions stay well within the limits priced by their automaton.
		{name: "ok/regex-counted-repetition", rules: []Rule{rule("r", Allow, `cert.subject.common_name.matches('^device-[0-9]{1,8}$')`)}},
		{name: "ok/regex-path", rules: []Rule{rule("r", Allow, `request.path.matches('^/v1/(payments|refunds)/[a-z0-9-]+$')`)}},
		{name: "ok/regex-path-wildcard", rules: []Rule{rule("r", Deny, `request.path.matches('^/api/.*/admin$')`)}},
		{name: "ok/regex-global-function", rules: []Rule{rule("r", Deny, `matches(request.path, '\\.(php|aspx?)$')`)}},
		{name: "ok/regex-unicode", rules: []Rule{rule("r", Allow, `cert.subject.common_name.matches('^\\pL+( \\pL+)*$')`)}},
		{name: "ok/regex-san-suffix", rules: []Rule{rule("r", Allow, `cert.dns_names.exists(n, n.matches('\\.acme\\.example$'))`)}},
		{name: "ok/regex-email", rules: []Rule{rule("r", Allow, `cert.email_addresses.exists(e, e.matches('^[a-z0-9._%+-]+@acme\\.example$'))`)}},
		{name: "ok/regex-ou", rules: []Rule{rule("r", Allow, `cert.subject.organizational_unit.exists(o, o.matches('^team-[a-z]+$'))`)}},
		{name: "ok/regex-policy", rules: []Rule{
			rule("device", Allow, `cert.subject.common_name.matches('^device-[0-9]{1,8}$')`),
			rule("payments", Allow, `request.path.matches('^/v1/(payments|refunds)/[a-z0-9-]+$')`),
			rule("san", Allow, `cert.dns_names.exists(n, n.matches('^device-[0-9]+\\.acme\\.example$'))`),
			rule("host", Allow, `request.host.matches('^[a-z0-9-]+\\.pay\\.example\\.com$')`),
			rule("method", Deny, `request.method.matches('^(PUT|PATCH|DELETE)$')`),
		}},
		{name: "ok/san-suffix", rules: []Rule{rule("r", Deny, `cert.dns_names.exists(n, n.endsWith(".blocked.example"))`)}},
		{name: "ok/header-names", rules: []Rule{rule("r", Allow, `request.headers.exists(k, k.startsWith("x-debug-"))`)}},
		{name: "ok/name-chars", rules: []Rule{rule("Allow_ops-2", Allow, `true`)}},
		{name: "ok/max-rules", rules: manyRules(MaxRules, `cert.verified`)},

		{name: "fail/no-rules", rules: nil, wantErr: "no rules"},
		// The policy of regular expressions of the review (11-15 ms per request with cel-go's
		// pricing by the pattern's length, which accepted it at a cost of 9,842).
		{name: "fail/regex-too-expensive", rules: []Rule{rule("a", Allow, `true`), rule("rx", Allow, `  request.path.matches("`+strings.Repeat(".*", 95)+`z")`)},
			wantErr: `rule "rx" (rules[1].expression): line 1, column 3: the expression is too expensive: its estimated worst-case cost`, index: 1, field: "expression", line: 1, column: 3},
		{name: "fail/regex-too-expensive-folded", rules: []Rule{rule("rx", Allow, `request.path.matches("(?i)`+strings.Repeat("k*", 20)+`!")`)},
			wantErr: "too expensive", field: "expression"},
		{name: "fail/regex-too-expensive-in-list", rules: []Rule{rule("rx", Allow, `cert.dns_names.exists(n, n.matches(".*.*.*.*.*.*z"))`)},
			wantErr: "too expensive", field: "expression"},
		{name: "fail/regex-too-expensive-counted", rules: []Rule{rule("rx", Allow, `request.headers["x-a"].matches("(.*){50}z")`)},
			wantErr: "too expensive", field: "expression"},
		// A pattern that is not a constant is priced as the largest program, compiled at each call.
		{name: "fail/regex-pattern-not-constant", rules: []Rule{rule("rx", Allow, `request.path.matches(request.method)`)},
			wantErr: "too expensive", field: "expression"},
		{name: "fail/regex-program-too-large", rules: []Rule{rule("rx", Allow, `request.method.matches("^(?:ab){600}$")`)},
			wantErr: "the regular expression compiles to 1204 instructions; at most 1000 are allowed", field: "expression", line: 1, column: 24},
		{name: "fail/too-many-rules", rules: manyRules(MaxRules+1, `true`), wantErr: "too many rules"},
		{name: "fail/undeclared", rules: []Rule{rule("a", Allow, `true`), rule("b", Deny, `false`), rule("allow-ops", Allow, `cert.verified && cret.x`)},
			wantErr: `rule "allow-ops" (rules[2].expression): line 1, column 18: undeclared reference to 'cret'`, index: 2, field: "expression", line: 1, column: 18},
		{name: "fail/undefined-field", rules: []Rule{rule("r", Allow, `cert.subject.common_nam == "x"`)},
			wantErr: "undefined field 'common_nam'", field: "expression", line: 1, column: 13},
		{name: "fail/issuer-has-no-organization", rules: []Rule{rule("r", Allow, `cert.issuer.organization == "x"`)},
			wantErr: "undefined field 'organization'", field: "expression", line: 1, column: 12},
		{name: "fail/syntax", rules: []Rule{rule("r", Allow, "cert.verified &&\n  (request.path ==")},
			wantErr: "Syntax error", field: "expression", line: 2, column: 19},
		{name: "fail/type", rules: []Rule{rule("r", Allow, `request.path == 1`)},
			wantErr: "no matching overload", field: "expression", line: 1, column: 14},
		{name: "fail/not-bool", rules: []Rule{rule("r", Allow, `request.path`)},
			wantErr: "yields string; it must yield bool", field: "expression", line: 1, column: 1},
		{name: "fail/dyn", rules: []Rule{rule("r", Allow, `dyn(true)`)},
			wantErr: "it must yield bool", field: "expression", line: 1, column: 1},
		{name: "fail/not-bool-indented", rules: []Rule{rule("r", Allow, "\n   request.headers")},
			wantErr: "it must yield bool", field: "expression", line: 2, column: 4},
		{name: "fail/empty-expression", rules: []Rule{rule("r", Allow, ``)},
			wantErr: "the expression is empty", field: "expression", line: 1, column: 1},
		{name: "fail/expression-too-long", rules: []Rule{rule("r", Allow, strings.Repeat(" ", MaxExpressionBytes-4)+"true ")},
			wantErr: "4097 bytes long", field: "expression", line: 1, column: 1},
		{name: "fail/invalid-regex", rules: []Rule{rule("r", Allow, `request.path.matches("(")`)},
			wantErr: "invalid matches argument", field: "expression", line: 1, column: 22},
		{name: "fail/too-deep", rules: []Rule{rule("r", Allow, strings.Repeat("(", 40)+"true"+strings.Repeat(")", 40))},
			wantErr: "", field: "expression"},
		{name: "fail/too-many-nodes", rules: []Rule{rule("r", Allow, "["+strings.Repeat("1,", 1500)+"1].size() > 0")},
			wantErr: "", field: "expression"},
		{name: "fail/comprehension-nesting", rules: []Rule{rule("r", Allow, `[1].exists(a, [1].exists(b, [1].exists(c, true)))`)},
			wantErr: "nesting", field: "expression"},
		{name: "fail/too-expensive", rules: []Rule{rule("r", Allow, `cert.dns_names.exists(a, cert.uris.exists(b, a == b))`)},
			wantErr: "the expression is too expensive: its estimated worst-case cost", field: "expression", line: 1, column: 1},
		{name: "fail/unbounded-split", rules: []Rule{rule("r", Allow, `request.path.split("/").exists(s, s == "x")`)},
			wantErr: "too expensive", field: "expression"},
		{name: "fail/upper-case-header-index", rules: []Rule{rule("r", Allow, `request.headers["X-Env"] == "prod"`)},
			wantErr: `header names in request.headers are lower case; write "x-env" instead of "X-Env"`, field: "expression", line: 1, column: 17},
		{name: "fail/upper-case-header-in", rules: []Rule{rule("r", Allow, `"X-Env" in request.headers`)},
			wantErr: `write "x-env"`, field: "expression", line: 1, column: 1},
		{name: "fail/upper-case-header-optional", rules: []Rule{rule("r", Allow, `request.headers[?"X-Env"].hasValue()`)},
			wantErr: `write "x-env"`, field: "expression", line: 1, column: 18},
		{name: "fail/upper-case-header-select", rules: []Rule{rule("r", Allow, `has(request.headers.Accept)`)},
			wantErr: `write "accept"`, field: "expression"},
		{name: "fail/construct-input-type", rules: []Rule{rule("r", Allow, `request.host == "x" || guestlist.policy.Request{host: "x"}.host == "x"`)},
			wantErr: "values of type guestlist.policy.Request cannot be constructed", field: "expression", line: 1, column: 48},
		{name: "fail/empty-name", rules: []Rule{rule("", Allow, `true`)},
			wantErr: `rule "" (rules[0].name): a rule name is 1 to 63 letters`, field: "name"},
		{name: "fail/bad-name", rules: []Rule{rule("allow ops", Allow, `true`)},
			wantErr: `rule "allow ops" (rules[0].name)`, field: "name"},
		{name: "fail/long-name", rules: []Rule{rule(strings.Repeat("a", 64), Allow, `true`)},
			wantErr: "1 to 63", field: "name"},
		{name: "fail/duplicate-name", rules: []Rule{rule("a", Allow, `true`), rule("a", Deny, `true`)},
			wantErr: `rule "a" (rules[1].name): rules[0] has the same name`, index: 1, field: "name"},
		{name: "fail/unspecified-action", rules: []Rule{rule("a", 0, `true`)},
			wantErr: `rule "a" (rules[0].action): the action must be ALLOW or DENY, not 0`, field: "action"},
		{name: "fail/unknown-action", rules: []Rule{rule("a", 3, `true`)},
			wantErr: "not 3", field: "action"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.rules)
			if strings.HasPrefix(tt.name, "ok/") {
				if err != nil {
					t.Fatalf("Compile: %v", err)
				}
				if p.Len() != len(tt.rules) || p.Rule(0) != tt.rules[0] {
					t.Fatalf("Compile returned %d rules", p.Len())
				}
				return
			}
			if err == nil {
				t.Fatalf("Compile succeeded; want an error containing %q", tt.wantErr)
			}
			if p != nil {
				t.Fatal("Compile returned a program with an error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
			if tt.field == "" {
				return
			}
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *CompileError", err)
			}
			if ce.Index != tt.index || ce.Field != tt.field || ce.Rule != tt.rules[tt.index].Name {
				t.Fatalf("CompileError = %+v; want index %d, field %s", ce, tt.index, tt.field)
			}
			if tt.field == "expression" && (ce.Line < 1 || ce.Column < 1) {
				t.Fatalf("CompileError %+v has no position", ce)
			}
			if tt.line != 0 && (ce.Line != tt.line || ce.Column != tt.column) {
				t.Fatalf("position = line %d, column %d; want line %d, column %d (%v)", ce.Line, ce.Column, tt.line, tt.column, err)
			}
			if ce.FieldPath() != fmt.Sprintf("rules[%d].%s", tt.index, tt.field) {
				t.Fatalf("FieldPath = %q", ce.FieldPath())
			}
		})
	}
}

func manyRules(n int, expr string) []Rule {
	rules := make([]Rule, n)
	for i := range rules {
		rules[i] = rule(fmt.Sprintf("rule-%d", i), Allow, expr)
	}
	return rules
}

func TestCompilePolicyTooExpensive(t *testing.T) {
	const expr = `request.path.matches("^/api/v[0-9]+/(payments|refunds)/[a-z0-9-]+$")`
	p, err := Compile([]Rule{rule("r", Allow, expr)})
	if err != nil {
		t.Fatal(err)
	}
	cost := p.EstimatedCost(0)
	if cost == 0 || cost > MaxRuleCost {
		t.Fatalf("cost %d", cost)
	}
	n := int(MaxPolicyCost/cost) + 1
	if n > MaxRules {
		t.Fatalf("cost %d too low to exceed the policy limit", cost)
	}
	if _, err := Compile(manyRules(n-1, expr)); err != nil {
		t.Fatalf("%d rules: %v", n-1, err)
	}
	if _, err := Compile(manyRules(n, expr)); !errors.Is(err, ErrPolicyTooExpensive) {
		t.Fatalf("%d rules: %v", n, err)
	}
}

func TestCompileErrorFormat(t *testing.T) {
	e := &CompileError{Rule: "allow-ops", Index: 2, Field: "expression", Line: 1, Column: 14, Message: "undeclared reference to 'cret'"}
	want := `rule "allow-ops" (rules[2].expression): line 1, column 14: undeclared reference to 'cret'`
	if e.Error() != want {
		t.Fatalf("Error() = %q", e.Error())
	}
}

func TestActionString(t *testing.T) {
	if Allow.String() != "allow" || Deny.String() != "deny" || Action(7).String() != "Action(7)" {
		t.Fatal("Action.String is wrong")
	}
}

// testInput is a verified client certificate and a GET request.
func testInput() *Input {
	in := benchInput()
	in.Cert.EmailAddresses = []string{"device-42@acme.example"}
	in.Cert.URIs = []string{"spiffe://acme.example/device/42"}
	in.Request.Headers.Add("Accept-Encoding", "gzip")
	in.Request.Headers.Add("Accept-Encoding", "br")
	return in
}

func TestEvaluate(t *testing.T) {
	noCert := testInput()
	noCert.Cert = CertInput{}
	bigHeader := testInput()
	bigHeader.Request.Headers.Set("X-Big", strings.Repeat("a", 50_000)+"needle")
	hugeHeader := testInput()
	hugeHeader.Request.Headers.Set("X-Big", strings.Repeat("a", 10*MaxRuleCost)+"needle")
	manySANs := testInput()
	for i := 0; i < 150; i++ {
		manySANs.Cert.DNSNames = append(manySANs.Cert.DNSNames, fmt.Sprintf("san-%d.acme.example", i))
	}
	manyHeaders := testInput()
	for i := 0; i < 150; i++ {
		manyHeaders.Request.Headers.Set(fmt.Sprintf("X-H-%d", i), "v")
	}
	longPath := testInput()
	longPath.Request.Path = "/api/" + strings.Repeat("x", 20_000)
	longName := testInput()
	longName.Request.Headers.Set("X-"+strings.Repeat("n", 300), "long")
	nilHeaders := testInput()
	nilHeaders.Request.Headers = nil
	hugePath := testInput()
	hugePath.Request.Path = "/" + strings.Repeat("a", 1<<20)

	tests := []struct {
		name      string
		rules     []Rule
		in        *Input
		matched   bool
		index     int
		action    Action
		wantErr   string
		errorRule string
	}{
		{name: "ok/first-match-wins", in: testInput(), rules: []Rule{
			rule("deny-contractors", Deny, `"contractors" in cert.subject.organizational_unit`),
			rule("allow-devices", Allow, `"devices" in cert.subject.organizational_unit`),
			rule("deny-all", Deny, `true`),
		}, matched: true, index: 1, action: Allow},
		{name: "ok/deny", in: testInput(), rules: []Rule{rule("deny-get", Deny, `request.method == "GET"`)}, matched: true, index: 0, action: Deny},
		{name: "ok/no-match", in: testInput(), rules: []Rule{rule("a", Allow, `false`), rule("b", Allow, `request.method == "POST"`)}, index: -1},
		{name: "ok/fields", in: testInput(), rules: []Rule{rule("r", Allow, `cert.presented && cert.verified && cert.error == "" &&
			cert.subject.common_name == "device-42" && cert.subject.organization == ["Acme Corp"] &&
			cert.subject.organizational_unit[1] == "eu-west" && cert.subject.organizational_unit.size() == 2 &&
			cert.issuer.common_name == "Acme Device CA" && cert.serial_number == "1a2b3c4d" &&
			cert.fingerprint_sha256.startsWith("9f86d0") && cert.email_addresses == ["device-42@acme.example"] &&
			cert.uris[0] == "spiffe://acme.example/device/42" &&
			cert.not_before == timestamp("2026-01-01T00:00:00Z") && cert.not_after.getFullYear() == 2027 &&
			request.host == "pay.example.com" && request.path == "/api/v1/payments/123"`)}, matched: true, index: 0, action: Allow},
		{name: "ok/san-exists", in: testInput(), rules: []Rule{rule("r", Allow, `cert.dns_names.exists(n, n.endsWith(".eu-west.acme.example"))`)}, matched: true, index: 0, action: Allow},
		{name: "ok/san-all", in: testInput(), rules: []Rule{rule("r", Allow, `cert.dns_names.all(n, n.startsWith("device-42."))`)}, matched: true, index: 0, action: Allow},
		{name: "ok/san-filter", in: testInput(), rules: []Rule{rule("r", Allow, `cert.dns_names.filter(n, n.contains("eu-west")).size() == 1`)}, matched: true, index: 0, action: Allow},
		{name: "ok/list-concat", in: testInput(), rules: []Rule{rule("r", Allow, `(cert.dns_names + cert.uris).size() == 3`)}, matched: true, index: 0, action: Allow},
		{name: "ok/sets", in: testInput(), rules: []Rule{rule("r", Allow, `sets.intersects(cert.subject.organizational_unit, ["ops", "eu-west"])`)}, matched: true, index: 0, action: Allow},
		{name: "ok/header-lower-case", in: testInput(), rules: []Rule{rule("r", Allow, `request.headers["x-env"] == "prod" && request.headers["user-agent"] == "device-agent/1.2"`)}, matched: true, index: 0, action: Allow},
		{name: "ok/header-joined", in: testInput(), rules: []Rule{rule("r", Allow, `request.headers["accept-encoding"] == "gzip, br"`)}, matched: true, index: 0, action: Allow},
		{name: "ok/header-in", in: testInput(), rules: []Rule{rule("r", Allow, `"x-env" in request.headers && !("x-missing" in request.headers)`)}, matched: true, index: 0, action: Allow},
		{name: "ok/header-optional-missing", in: testInput(), rules: []Rule{rule("r", Allow, `request.headers[?"x-missing"].orValue("none") == "none"`)}, matched: true, index: 0, action: Allow},
		{name: "ok/header-has", in: testInput(), rules: []Rule{rule("r", Allow, `has(request.headers.accept) && !has(request.headers.missing)`)}, matched: true, index: 0, action: Allow},
		{name: "ok/header-keys", in: testInput(), rules: []Rule{rule("r", Allow, `request.headers.exists(k, k == "x-request-id") && request.headers.size() == 5`)}, matched: true, index: 0, action: Allow},
		{name: "ok/header-map-equality", in: nilHeaders, rules: []Rule{rule("r", Allow, `request.headers == {} && request.headers.size() == 0 && !has(request.headers.x)`)}, matched: true, index: 0, action: Allow},
		{name: "ok/no-cert", in: noCert, rules: []Rule{rule("r", Allow, `!cert.presented && !cert.verified && cert.subject.common_name == "" &&
			cert.dns_names.size() == 0 && !has(cert.subject) && !has(cert.not_after) &&
			cert.not_after == timestamp("0001-01-01T00:00:00Z")`)}, matched: true, index: 0, action: Allow},
		{name: "ok/has-cert-fields", in: testInput(), rules: []Rule{rule("r", Allow, `has(cert.subject) && has(cert.subject.common_name) && has(cert.dns_names) && !has(cert.error)`)}, matched: true, index: 0, action: Allow},
		{name: "ok/guarded-big-header", in: bigHeader, rules: []Rule{rule("r", Allow, `request.headers["x-big"].endsWith("needle")`), rule("s", Allow, `request.method == "GET"`)}, matched: true, index: 0, action: Allow},
		{name: "ok/guarded-many-sans", in: manySANs, rules: []Rule{rule("r", Allow, `cert.dns_names.exists(n, n == "san-149.acme.example")`)}, matched: true, index: 0, action: Allow},
		{name: "ok/guarded-many-headers", in: manyHeaders, rules: []Rule{rule("r", Allow, `request.headers["x-h-149"] == "v"`)}, matched: true, index: 0, action: Allow},
		{name: "ok/guarded-long-path", in: longPath, rules: []Rule{rule("r", Deny, `request.path.startsWith("/admin")`), rule("s", Allow, `request.path.startsWith("/api/")`)}, matched: true, index: 1, action: Allow},
		{name: "ok/guarded-long-header-name", in: longName, rules: []Rule{rule("r", Allow, `request.headers.exists(k, k.size() > 256 && request.headers[k] == "long")`)}, matched: true, index: 0, action: Allow},
		{name: "ok/regex-counted-repetition", in: testInput(), rules: []Rule{rule("r", Allow, `cert.subject.common_name.matches('^device-[0-9]{1,8}$')`)}, matched: true, index: 0, action: Allow},
		{name: "ok/regex-global-function", in: testInput(), rules: []Rule{rule("r", Allow, `matches(request.path, '^/api/v1/')`)}, matched: true, index: 0, action: Allow},
		{name: "ok/regex-san", in: testInput(), rules: []Rule{rule("r", Allow, `cert.dns_names.exists(n, n.matches('^device-[0-9]+\\.eu-west\\.acme\\.example$'))`)}, matched: true, index: 0, action: Allow},
		{name: "ok/regex-no-match", in: testInput(), rules: []Rule{rule("r", Allow, `request.path.matches('^/v1/(payments|refunds)/[a-z0-9-]+$')`)}, index: -1},
		{name: "ok/regex-pattern-not-constant", in: testInput(), rules: []Rule{rule("r", Allow, `"a".matches("a" + "{1}")`)}, matched: true, index: 0, action: Allow},
		{name: "ok/regex-guarded-long-path", in: longPath, rules: []Rule{rule("r", Deny, `request.path.matches('^/admin')`), rule("s", Allow, `request.path.matches('^/api/')`)}, matched: true, index: 1, action: Allow},
		{name: "ok/error-absorbed-then-guarded", in: bigHeader, rules: []Rule{rule("r", Allow, `request.headers["x-big"] == "x" || request.method == "GET"`)}, matched: true, index: 0, action: Allow},

		{name: "fail/missing-header", in: testInput(), rules: []Rule{rule("a", Allow, `false`), rule("needs-env", Allow, `request.headers["x-missing"] == "prod"`)},
			index: 1, wantErr: `rule "needs-env" (rules[1]): evaluation failed: no such key: x-missing`, errorRule: "needs-env"},
		{name: "fail/index-out-of-range", in: noCert, rules: []Rule{rule("first-san", Allow, `cert.dns_names[0] == "x"`)},
			index: 0, wantErr: "index", errorRule: "first-san"},
		{name: "fail/division-by-zero", in: testInput(), rules: []Rule{rule("div", Allow, `1 / (request.path.size() - 20) == 1`)},
			index: 0, wantErr: "division by zero", errorRule: "div"},
		{name: "fail/regex-pattern-not-constant", in: testInput(), rules: []Rule{rule("rx", Allow, `"a".matches("(" + "")`)},
			index: 0, wantErr: "missing closing )", errorRule: "rx"},
		// Beyond the bounds, a regular expression is not run on an input on which it would exceed
		// the rule's limit (the tracker would see its cost only once it had run).
		{name: "fail/regex-guarded-not-run", in: hugePath, rules: []Rule{rule("a", Deny, `request.path.matches('^/admin')`), rule("rx", Allow, `request.path.matches('(?i)k*k*k*!')`)},
			index: 1, wantErr: "matches() on an input of 1048577 bytes would exceed the cost limit of 10000", errorRule: "rx"},
		{name: "fail/guarded-cost-limit", in: hugeHeader, rules: []Rule{rule("scan", Allow, `request.headers["x-big"].contains("needle")`)},
			index: 0, wantErr: "cost limit exceeded", errorRule: "scan"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.rules)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			matched, index, action, err := p.Evaluate(tt.in)
			if strings.HasPrefix(tt.name, "ok/") {
				if err != nil {
					t.Fatalf("Evaluate error: %v", err)
				}
			} else {
				var ee *EvalError
				if !errors.As(err, &ee) {
					t.Fatalf("Evaluate error %v is not an *EvalError", err)
				}
				if ee.Rule != tt.errorRule || ee.Index != tt.index || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Evaluate error %q (%+v); want rule %q and %q", err, ee, tt.errorRule, tt.wantErr)
				}
			}
			if matched != tt.matched || index != tt.index || action != tt.action {
				t.Fatalf("Evaluate = %v, %d, %v; want %v, %d, %v", matched, index, action, tt.matched, tt.index, tt.action)
			}
		})
	}
}

func TestEvaluateAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count")
	}
	p, err := Compile(benchRules)
	if err != nil {
		t.Fatal(err)
	}
	in := benchInput()
	allocs := testing.AllocsPerRun(1000, func() {
		if ok, _, _, err := p.Evaluate(in); !ok || err != nil {
			t.Fatal("no match")
		}
	})
	if allocs > 10 {
		t.Fatalf("Evaluate of the benchmark policy allocates %v times; the budget is 10", allocs)
	}
}

func TestEvaluateConcurrent(t *testing.T) {
	p, err := Compile(append(benchRules[:4:4],
		rule("header", Allow, `request.headers[?"x-env"].orValue("") == "prod" && request.path.startsWith("/api/")`)))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				in := testInput()
				env := "prod"
				if (g+i)%2 == 1 {
					env = "dev"
				}
				in.Request.Headers.Set("X-Env", env)
				matched, _, _, err := p.Evaluate(in)
				if err != nil || matched != (env == "prod") {
					t.Errorf("Evaluate = %v, %v for env %s", matched, err, env)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestNewCertInput(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://acme.example/device/42")
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(0x1a2b),
		Subject:        pkix.Name{CommonName: "device-42", OrganizationalUnit: []string{"devices"}, Organization: []string{"Acme"}},
		NotBefore:      time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:       time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		DNSNames:       []string{"device-42.acme.example"},
		EmailAddresses: []string{"d@acme.example"},
		URIs:           []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ci := NewCertInput(c)
	ci.Verified = true
	p, err := Compile([]Rule{rule("r", Allow, fmt.Sprintf(`cert.presented && cert.subject.common_name == "device-42" &&
		cert.issuer.common_name == "device-42" && cert.serial_number == "1a2b" && cert.fingerprint_sha256 == %q &&
		cert.uris == ["spiffe://acme.example/device/42"] && cert.email_addresses == ["d@acme.example"] &&
		"devices" in cert.subject.organizational_unit && cert.not_after == timestamp("2027-01-01T00:00:00Z")`,
		certid.FingerprintSHA256(der)))})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, _, err := p.Evaluate(&Input{Cert: ci}); !ok || err != nil {
		t.Fatalf("Evaluate = %v, %v", ok, err)
	}
}

func TestEnvironment(t *testing.T) {
	env, err := Environment()
	if err != nil || env == nil {
		t.Fatalf("Environment: %v", err)
	}
}

func FuzzCompile(f *testing.F) {
	for _, s := range []string{
		`cert.verified`, `"ops" in cert.subject.organizational_unit`, `cret.x`, `1 +`, `request.path`,
		`request.headers["X-Env"] == "a"`, `cert.dns_names.exists(a, cert.uris.exists(b, a == b))`,
		"cert.verified &&\n request.path == 1", `request.path.matches("(")`, `[1].exists(a, [1].exists(b, [1].exists(c, true)))`,
		`request.headers[?"x-env"].orValue("") == "prod"`, `has(cert.subject)`, `"\u00e9" == request.path`,
		`request.path.matches("a{2,3}")`, `cert.dns_names.exists(n, n.matches("^[a-z]+\\.example$"))`, `matches(request.host, "(?i)^PAY")`,
		`"a".matches("a" + "{1}")`,
	} {
		f.Add("r", uint8(Allow), s)
	}
	f.Add("", uint8(0), "true")
	in := testInput()
	f.Fuzz(func(t *testing.T, name string, action uint8, expr string) {
		rules := []Rule{rule("first", Deny, `request.method == "DELETE"`), {Name: name, Action: Action(action), Expression: expr}}
		p, err := Compile(rules)
		if err != nil {
			if p != nil {
				t.Fatal("program together with an error")
			}
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *CompileError", err)
			}
			if ce.Index < 0 || ce.Index >= len(rules) || ce.Rule != rules[ce.Index].Name || ce.Message == "" {
				t.Fatalf("CompileError %+v does not name the rule", ce)
			}
			shown := ce.Rule
			if len(shown) > 80 {
				shown = shown[:80] + "..."
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("rule %q (rules[%d].%s)", shown, ce.Index, ce.Field)) {
				t.Fatalf("error %q does not name the rule", err)
			}
			switch ce.Field {
			case "expression":
				if ce.Line < 1 || ce.Column < 1 {
					t.Fatalf("CompileError %+v has no position", ce)
				}
			case "name", "action":
			default:
				t.Fatalf("CompileError %+v has field %q", ce, ce.Field)
			}
			return
		}
		_, idx, act, err := p.Evaluate(in)
		if err != nil {
			var ee *EvalError
			if !errors.As(err, &ee) || ee.Index != idx || ee.Rule != rules[idx].Name {
				t.Fatalf("Evaluate error %v does not name the rule", err)
			}
		} else if idx >= 0 && act != rules[idx].Action {
			t.Fatalf("action %v of rule %d", act, idx)
		}
	})
}

// TestOutOfBounds checks that an input beyond the bounds of the cost estimate is never handed to
// the unguarded program: the getter records it, and Evaluate switches to the guarded programs.
func TestOutOfBounds(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name   string
		expr   string
		modify func(in *Input)
	}{
		{name: "fail/error", expr: `cert.error == ""`, modify: func(in *Input) { in.Cert.Error = long(boundError + 1) }},
		{name: "fail/subject-cn", expr: `cert.subject.common_name == ""`, modify: func(in *Input) { in.Cert.Subject.CommonName = long(boundName + 1) }},
		{name: "fail/issuer-cn", expr: `cert.issuer.common_name == ""`, modify: func(in *Input) { in.Cert.Issuer.CommonName = long(boundName + 1) }},
		{name: "fail/serial", expr: `cert.serial_number == ""`, modify: func(in *Input) { in.Cert.SerialNumber = long(boundSerial + 1) }},
		{name: "fail/fingerprint", expr: `cert.fingerprint_sha256 == ""`, modify: func(in *Input) { in.Cert.FingerprintSHA256 = long(boundFingerprint + 1) }},
		{name: "fail/ou-count", expr: `"x" in cert.subject.organizational_unit`, modify: func(in *Input) { in.Cert.Subject.OrganizationalUnit = make([]string, boundListItems+1) }},
		{name: "fail/o-item", expr: `"x" in cert.subject.organization`, modify: func(in *Input) { in.Cert.Subject.Organization = []string{long(boundName + 1)} }},
		{name: "fail/dns-item", expr: `"x" in cert.dns_names`, modify: func(in *Input) { in.Cert.DNSNames = []string{long(boundDNSName + 1)} }},
		{name: "fail/email-item", expr: `"x" in cert.email_addresses`, modify: func(in *Input) { in.Cert.EmailAddresses = []string{long(boundEmail + 1)} }},
		{name: "fail/uri-item", expr: `"x" in cert.uris`, modify: func(in *Input) { in.Cert.URIs = []string{long(boundURI + 1)} }},
		{name: "fail/host", expr: `request.host == ""`, modify: func(in *Input) { in.Request.Host = long(boundHost + 1) }},
		{name: "fail/method", expr: `request.method == ""`, modify: func(in *Input) { in.Request.Method = long(boundMethod + 1) }},
		{name: "fail/path", expr: `request.path == ""`, modify: func(in *Input) { in.Request.Path = long(boundPath + 1) }},
		{name: "fail/header-count", expr: `"x" in request.headers`, modify: func(in *Input) {
			for i := 0; i <= boundHeaderCount; i++ {
				in.Request.Headers.Set(fmt.Sprintf("X-%d", i), "v")
			}
		}},
		{name: "fail/header-value", expr: `request.headers["x-env"] == ""`, modify: func(in *Input) { in.Request.Headers.Set("X-Env", long(boundHeaderValue+1)) }},
		{name: "fail/header-joined-value", expr: `request.headers[?"x-env"].orValue("") == ""`, modify: func(in *Input) {
			in.Request.Headers.Add("X-Env", long(boundHeaderValue-2))
		}},
		{name: "fail/header-name", expr: `request.headers.exists(k, k == "")`, modify: func(in *Input) { in.Request.Headers.Set(long(boundHeaderName+1), "v") }},
		{name: "fail/header-map-equality", expr: `request.headers == {"a": "b"}`, modify: func(in *Input) { in.Request.Headers.Set("X-Env", long(boundHeaderValue+1)) }},
		{name: "ok/at-bounds", expr: `cert.error == "" && cert.subject.common_name == "" && request.path == "" && request.headers["x-env"] == "" && "x" in cert.dns_names`,
			modify: func(in *Input) {
				in.Cert.Error = long(boundError)
				in.Cert.Subject.CommonName = long(boundName)
				in.Request.Path = long(boundPath)
				in.Request.Headers.Set("X-Env", long(boundHeaderValue))
				in.Cert.DNSNames = make([]string, boundListItems)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := testInput()
			tt.modify(in)
			p, err := Compile([]Rule{rule("r", Allow, tt.expr)})
			if err != nil {
				t.Fatal(err)
			}
			st := acquireState(in)
			defer st.release()
			_, _, _ = p.rules[0].fast.Eval(st)
			if st.oob != strings.HasPrefix(tt.name, "fail/") {
				t.Fatalf("oob = %v", st.oob)
			}
			// Evaluate succeeds either way (guarded when out of bounds).
			if _, _, _, err := p.Evaluate(in); err != nil {
				t.Fatalf("Evaluate: %v", err)
			}
		})
	}
}

// TestEvaluateHeadersUnknown: with the headers unknown (the audit replaying a decision log line),
// a rule whose outcome depends on them stops the evaluation with ErrHeadersUnknown, naming the
// rule, instead of a verdict the edge may not have given; a rule whose outcome does not depend on
// them, or that is never reached, evaluates as with the headers. And the same rules with the
// headers known give the edge's verdicts.
func TestEvaluateHeadersUnknown(t *testing.T) {
	unknown := func() *Input {
		in := testInput()
		in.Request.HeadersUnknown = true
		return in
	}
	noCert := unknown()
	noCert.Cert = CertInput{}
	tests := []struct {
		name    string
		in      *Input
		rules   []Rule
		matched bool
		index   int
		unknown bool // the evaluation stops at index with ErrHeadersUnknown
	}{
		{name: "ok/a rule before decides", in: unknown(), rules: []Rule{rule("devices", Allow, `cert.verified`), rule("env", Allow, `request.headers["x-env"] == "prod"`)}, matched: true, index: 0},
		{name: "ok/the headers' error absorbed by a true", in: unknown(), rules: []Rule{rule("r", Allow, `request.headers["x-env"] == "prod" || cert.verified`)}, matched: true, index: 0},
		{name: "ok/the headers' error absorbed by a false", in: noCert, rules: []Rule{rule("r", Allow, `cert.verified && request.headers["x-env"] == "prod"`)}, index: -1},
		{name: "ok/not read", in: unknown(), rules: []Rule{rule("r", Deny, `request.path.startsWith("/admin")`)}, index: -1},
		{name: "fail/read", in: unknown(), rules: []Rule{rule("a", Deny, `false`), rule("env", Allow, `request.headers["x-env"] == "prod"`)}, index: 1, unknown: true},
		{name: "fail/read optionally", in: unknown(), rules: []Rule{rule("env", Allow, `request.headers[?"x-env"].orValue("") == "prod"`)}, index: 0, unknown: true},
		{name: "fail/in", in: unknown(), rules: []Rule{rule("env", Deny, `!("x-env" in request.headers)`)}, index: 0, unknown: true},
		{name: "fail/size", in: unknown(), rules: []Rule{rule("n", Deny, `request.headers.size() > 3`)}, index: 0, unknown: true},
		{name: "fail/has", in: unknown(), rules: []Rule{rule("h", Deny, `!has(request.headers.authorization)`)}, index: 0, unknown: true},
		{name: "ok/has of a header, absorbed by a true", in: unknown(), rules: []Rule{rule("h", Allow, `has(request.headers.authorization) || cert.verified`)}, matched: true, index: 0},
		{name: "fail/has of the headers themselves, whatever it gave", in: unknown(), rules: []Rule{rule("h", Allow, `has(request.headers) || cert.verified`)}, index: 0, unknown: true},
		{name: "fail/a header-reading rule left unmatched, before the one that matches", in: unknown(), rules: []Rule{rule("env", Deny, `request.headers["x-env"] == "dev"`), rule("devices", Allow, `cert.verified`)}, index: 0, unknown: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			matched, index, _, err := p.Evaluate(tt.in)
			if got := errors.Is(err, ErrHeadersUnknown); got != tt.unknown {
				t.Fatalf("Evaluate error %v; want ErrHeadersUnknown: %v", err, tt.unknown)
			}
			if !tt.unknown && err != nil {
				t.Fatalf("Evaluate error %v", err)
			}
			if matched != tt.matched || index != tt.index {
				t.Fatalf("Evaluate = %v, %d; want %v, %d", matched, index, tt.matched, tt.index)
			}
			// The same input with the headers known is decided.
			known := *tt.in
			known.Request.HeadersUnknown = false
			if _, _, _, err := p.Evaluate(&known); errors.Is(err, ErrHeadersUnknown) {
				t.Fatalf("with the headers known: %v", err)
			}
		})
	}
}

// FuzzHeadersUnknownIsSound: whatever the policy and the headers, evaluating without the headers
// (RequestInput.HeadersUnknown, as the audit does) either stops with ErrHeadersUnknown or gives
// exactly what the evaluation with the headers gives (as the edge does): the audit never gives a
// verdict that the headers could have changed.
func FuzzHeadersUnknownIsSound(f *testing.F) {
	for _, s := range []string{
		`request.headers["x-env"] == "prod"`, `request.headers[?"x-env"].orValue("") == "prod" || cert.verified`,
		`cert.verified && "x-env" in request.headers`, `!has(request.headers.x) || request.path == "/"`,
		`request.headers.size() > 1 ? cert.verified : !cert.verified`, `request.headers.exists(k, k.startsWith("x-"))`,
		`[request.headers["a"], "b"].exists(v, v == "b")`, `request.headers == {}`, `request.method == "GET"`,
		`cert.verified || request.headers["x"] == "y"`, `has(request.headers) && request.path == "/"`,
		`request.headers.all(k, request.headers[k] != "")`, `{"k": request.headers}.size() == 1`,
	} {
		f.Add(s, "prod", true)
		f.Add(s, "", false)
	}
	f.Fuzz(func(t *testing.T, expr, env string, verified bool) {
		p, err := Compile([]Rule{rule("first", Deny, `request.method == "DELETE"`), {Name: "r", Action: Allow, Expression: expr}, rule("last", Deny, `cert.presented`)})
		if err != nil {
			return
		}
		known := testInput()
		known.Cert.Verified = verified
		if env != "" {
			known.Request.Headers.Set("X-Env", env)
		}
		unknown := *known
		unknown.Request.HeadersUnknown = true
		m1, i1, a1, err1 := p.Evaluate(known)
		m2, i2, a2, err2 := p.Evaluate(&unknown)
		if errors.Is(err2, ErrHeadersUnknown) {
			return
		}
		if m1 != m2 || i1 != i2 || a1 != a2 || (err1 == nil) != (err2 == nil) {
			t.Fatalf("%s: with the headers %v, %d, %v, %v; without %v, %d, %v, %v", expr, m1, i1, a1, err1, m2, i2, a2, err2)
		}
	})
}
