package policy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// benchRules is a realistic five-rule policy; with benchInput the first four rules are false and
// the fifth is true, so every rule is evaluated.
var benchRules = []Rule{
	{Name: "allow-ops-admin", Action: Allow, Expression: `"ops" in cert.subject.organizational_unit && request.path.startsWith("/admin/")`},
	{Name: "deny-blocked-devices", Action: Deny, Expression: `cert.dns_names.exists(n, n.endsWith(".blocked.acme.example"))`},
	{Name: "deny-internal", Action: Deny, Expression: `request.path.startsWith("/internal/")`},
	{Name: "deny-writes", Action: Deny, Expression: `request.method in ["DELETE", "PUT", "PATCH"] && !("admin" in cert.subject.organizational_unit)`},
	{Name: "allow-prod", Action: Allow, Expression: `cert.verified && request.headers[?"x-env"].orValue("") == "prod"`},
}

func benchInput() *Input {
	h := http.Header{}
	h.Set("Accept", "application/json")
	h.Set("User-Agent", "device-agent/1.2")
	h.Set("X-Env", "prod")
	h.Set("X-Request-Id", "4bf92f3577b34da6a3ce929d0e0e4736")
	return &Input{
		Cert: CertInput{
			Presented: true,
			Verified:  true,
			Subject: SubjectInput{
				CommonName:         "device-42",
				OrganizationalUnit: []string{"devices", "eu-west"},
				Organization:       []string{"Acme Corp"},
			},
			Issuer:            IssuerInput{CommonName: "Acme Device CA"},
			SerialNumber:      "1a2b3c4d",
			FingerprintSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			DNSNames:          []string{"device-42.devices.acme.example", "device-42.eu-west.acme.example"},
			NotBefore:         time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			NotAfter:          time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		},
		Request: RequestInput{
			Host:    "pay.example.com",
			Method:  "GET",
			Path:    "/api/v1/payments/123",
			Headers: h,
		},
	}
}

func BenchmarkEvaluate5Rules(b *testing.B) {
	p, err := Compile(benchRules)
	if err != nil {
		b.Fatal(err)
	}
	in := benchInput()
	matched, i, action, err := p.Evaluate(in)
	if err != nil || !matched || i != 4 || action != Allow {
		b.Fatalf("Evaluate = %v, %d, %v, %v", matched, i, action, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _, _, _ = p.Evaluate(in)
	}
}

// costlyInput is a request at the bounds of the cost estimate: 64 headers with 64-byte names and
// 4096-byte values.
func costlyInput(headers int) *Input {
	in := benchInput()
	in.Request.Headers = http.Header{}
	for i := 0; i < headers; i++ {
		in.Request.Headers.Set(fmt.Sprintf("X-%s-%04d", strings.Repeat("h", boundHeaderName-7), i), strings.Repeat("a", boundHeaderValue))
	}
	return in
}

// costlyRules fills a policy up to MaxPolicyCost with rules that iterate over the headers, the
// slowest kind of step per cost unit.
func costlyRules(tb testing.TB) []Rule {
	const expr = `request.headers.exists(k, k.contains("debug"))`
	p, err := Compile([]Rule{rule("r", Allow, expr)})
	if err != nil {
		tb.Fatal(err)
	}
	n := min(int(MaxPolicyCost/p.EstimatedCost(0)), MaxRules)
	return manyRules(n, expr)
}

// BenchmarkEvaluateAtCostLimit is the worst case within the bounds: a policy at MaxPolicyCost
// on a request at the bounds of the estimate, every rule false.
func BenchmarkEvaluateAtCostLimit(b *testing.B) {
	p, err := Compile(costlyRules(b))
	if err != nil {
		b.Fatal(err)
	}
	in := costlyInput(boundHeaderCount)
	b.ReportAllocs()
	for b.Loop() {
		if matched, _, _, err := p.Evaluate(in); matched || err != nil {
			b.Fatal(matched, err)
		}
	}
}

// BenchmarkEvaluateBeyondBounds is the same policy on a request beyond the bounds (1000
// headers): evaluation is tracked and stops at the budget with an error.
func BenchmarkEvaluateBeyondBounds(b *testing.B) {
	p, err := Compile(costlyRules(b))
	if err != nil {
		b.Fatal(err)
	}
	in := costlyInput(1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := p.Evaluate(in); err == nil {
			b.Fatal("no error")
		}
	}
}

// regexExpr is a rule whose regular expression makes the engines visit 2m+1 instructions at every
// position of a path of a's: m repetitions of k*, matched without regard to case (an alternation
// and a case-folded rune each, the rune tested against the whole of its case orbit, which an 'a'
// fails), before a rune the path lacks, so that no match ends the search early. Per cost unit it
// is among the slowest rules under cel-go's pricing (by the pattern's length), and the slowest
// found under this package's.
func regexExpr(m int) string {
	return fmt.Sprintf("request.path.matches(%q)", "(?i)"+strings.Repeat("k*", m)+"!")
}

// costliestRegexRule returns the regexExpr with the most repetitions whose estimated cost is at
// most limit, and that cost.
func costliestRegexRule(tb testing.TB, limit uint64) (string, uint64) {
	expr, cost := "", uint64(0)
	for m := 1; m <= maxRegexProgramSize/2; m++ {
		p, err := Compile([]Rule{rule("r", Allow, regexExpr(m))})
		if err != nil || p.EstimatedCost(0) > limit {
			break
		}
		expr, cost = regexExpr(m), p.EstimatedCost(0)
	}
	if expr == "" {
		tb.Fatal("no regular expression rule compiles")
	}
	return expr, cost
}

// regexPolicy fills a policy up to MaxPolicyCost with copies of the costliest regexExpr.
func regexPolicy(tb testing.TB) *Program {
	expr, cost := costliestRegexRule(tb, MaxRuleCost)
	p, err := Compile(manyRules(min(int(MaxPolicyCost/cost), MaxRules), expr))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func regexInput(pathLen int) *Input {
	in := benchInput()
	in.Request.Path = "/" + strings.Repeat("a", pathLen-1)
	return in
}

// BenchmarkEvaluateRegexAtCostLimit is the worst case of regular expressions within the bounds:
// a policy at MaxPolicyCost of the costliest regexExpr the compiler accepts, on a path at the bound.
func BenchmarkEvaluateRegexAtCostLimit(b *testing.B) {
	p := regexPolicy(b)
	in := regexInput(boundPath)
	b.ReportAllocs()
	for b.Loop() {
		if matched, _, _, err := p.Evaluate(in); matched || err != nil {
			b.Fatal(matched, err)
		}
	}
	b.ReportMetric(float64(p.Len()), "rules")
}

// BenchmarkEvaluateRegexBeyondBounds is the same policy on a path eight times the bound: the
// evaluation is tracked, and stops at the budget with an error.
func BenchmarkEvaluateRegexBeyondBounds(b *testing.B) {
	p := regexPolicy(b)
	in := regexInput(8 * boundPath)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := p.Evaluate(in); err == nil {
			b.Fatal("no error")
		}
	}
}

// BenchmarkEvaluateRegexBeyondBoundsAtBudget is the worst case of tracked regular expressions:
// six rules of the costliest regexExpr estimated at most MaxPolicyCost/6 each, on the longest path
// beyond the bound on which one such rule still evaluates within MaxRuleCost: each rule runs tracked
// at nearly MaxRuleCost until the policy's budget stops the evaluation with an error.
func BenchmarkEvaluateRegexBeyondBoundsAtBudget(b *testing.B) {
	expr, _ := costliestRegexRule(b, MaxPolicyCost/6)
	one, err := Compile([]Rule{rule("r", Allow, expr)})
	if err != nil {
		b.Fatal(err)
	}
	lo, hi := boundPath+1, 64*boundPath // one evaluates within its limit at lo, not at hi
	if _, _, _, err := one.Evaluate(regexInput(lo)); err != nil {
		b.Fatal(err)
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if _, _, _, err := one.Evaluate(regexInput(mid)); err == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	p, err := Compile(manyRules(6, expr))
	if err != nil {
		b.Fatal(err)
	}
	in := regexInput(lo)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := p.Evaluate(in); err == nil {
			b.Fatal("no error")
		}
	}
	b.ReportMetric(float64(lo), "path-bytes")
}
