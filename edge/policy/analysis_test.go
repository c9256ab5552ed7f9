package policy

import (
	"fmt"
	"strings"
	"testing"
)

// TestPolicyAnalysisBudget: the exploration of automata is bounded over a whole policy, not per
// pattern, and a pattern analysed after the policy's budget is spent is priced as its whole
// program, never below the exact analysis. (Found by review: a policy of many distinct cheap
// calls of matches() spent up to regexAnalysisBudget on each and took 2.8-8.8 s to compile, at
// the control plane, on every edge and on every audit explain; 0.30 s since, measured by
// BenchmarkCompileManyPatterns.)
func TestPolicyAnalysisBudget(t *testing.T) {
	a := newRegexAnalysis()
	var first, later *regexInfo
	for i := range 200 {
		ri, err := a.analyze(fmt.Sprintf("(?:a|b)*a(?:a|b){8}%c%c", 'A'+i%26, 'A'+i/26))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = ri
		}
		later = ri
	}
	if a.budget != 0 {
		t.Fatalf("after 200 patterns that each exhaust regexAnalysisBudget, %d of the policy's budget is left; want 0", a.budget)
	}
	exact, err := analyzeRegex("(?:a|b)*a(?:a|b){8}HH")
	if err != nil {
		t.Fatal(err)
	}
	if later.posNs < exact.posNs || later.posNs < first.posNs {
		t.Fatalf("a pattern priced after the budget was spent: %d ns a position; the exact analysis gives %d (the first pattern %d): the fallback must not be cheaper", later.posNs, exact.posNs, first.posNs)
	}
	// A pattern seen again is not analysed again.
	before := a.budget
	a.budget = 1 << 30
	if _, err := a.analyze("(?:a|b)*a(?:a|b){8}AA"); err != nil || a.budget != 1<<30 {
		t.Fatalf("a pattern analysed before was analysed again (budget %d, %v)", a.budget, err)
	}
	a.budget = before
}

// BenchmarkCompileManyPatterns compiles a policy of 45 rules, each holding as many distinct calls
// of matches() on an empty string as fit in an expression (about 110): the compile time a tenant
// can cause with one write, and every edge and audit explain with it.
//
//	go test -run XXX -bench CompileManyPatterns -benchtime 3x guestlist.dev/edge/policy
func BenchmarkCompileManyPatterns(b *testing.B) {
	var rules []Rule
	for r := range 45 {
		var parts []string
		for i := 0; ; i++ {
			part := fmt.Sprintf("''.matches('(?:a|b)*a(?:a|b){8}%c%c%c')", 'A'+i%26, 'A'+i/26, 'a'+r%26)
			if len(strings.Join(append(parts, part), "||")) > MaxExpressionBytes {
				break
			}
			parts = append(parts, part)
		}
		rules = append(rules, Rule{Name: fmt.Sprintf("r%d", r), Action: Allow, Expression: strings.Join(parts, "||")})
	}
	for b.Loop() {
		_, _ = Compile(rules)
	}
}
