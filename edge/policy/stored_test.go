package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestCompileStored: a policy the control plane accepted under an earlier, lower price of its
// rules is refused by Compile today, but the edge and the audit compile the history's policies
// with CompileStored, which evaluates the rules over the limits with run-time cost tracking
// instead of dropping their hostnames; the verdicts on ordinary input are those of the rules, and
// input that makes a tracked rule exceed its limit fails the evaluation (the caller fails closed).
func TestCompileStored(t *testing.T) {
	// Priced at 4,387 before matches() was priced by Go's regexp; over MaxRuleCost since.
	unanchoredEmail := rule("email", Allow, `cert.email_addresses.exists(e, e.matches('@acme\\.example$'))`)
	// Five rules at 9,571 each: within MaxRuleCost each, over MaxPolicyCost together.
	anchoredEmail := `cert.email_addresses.exists(e, e.matches('^[a-z0-9._%+-]+@acme\\.example$'))`
	var overSum []Rule
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		overSum = append(overSum, rule(name, Deny, strings.Replace(anchoredEmail, "acme", "other-"+name, 1)))
	}
	overSum = append(overSum, rule("ok", Allow, anchoredEmail))

	manyEmails := testInput()
	// No address of acme's, which exists() would stop at: the rule goes through them all, beyond
	// its limit. (With it first, as testInput has it, the rule matches within its limit.)
	manyEmails.Cert.EmailAddresses = nil
	for range 2000 {
		manyEmails.Cert.EmailAddresses = append(manyEmails.Cert.EmailAddresses, strings.Repeat("x", 300)+"@elsewhere.example")
	}
	otherEmail := testInput()
	otherEmail.Cert.EmailAddresses = []string{"device-42@elsewhere.example"}

	for _, tc := range []struct {
		name       string
		rules      []Rule
		compileErr string // what Compile says
		in         *Input
		matched    bool
		index      int
		wantErr    string
	}{
		{name: "ok/rule-over-the-limit", rules: []Rule{unanchoredEmail}, compileErr: "too expensive", in: testInput(), matched: true, index: 0},
		{name: "ok/rule-over-the-limit-no-match", rules: []Rule{unanchoredEmail}, compileErr: "too expensive", in: otherEmail, index: -1},
		{name: "fail/rule-over-the-limit-on-large-input", rules: []Rule{unanchoredEmail}, compileErr: "too expensive", in: manyEmails, index: 0, wantErr: "email"},
		{name: "ok/policy-over-the-sum", rules: overSum, compileErr: ErrPolicyTooExpensive.Error(), in: testInput(), matched: true, index: 6},
		{name: "ok/policy-over-the-sum-no-match", rules: overSum, compileErr: ErrPolicyTooExpensive.Error(), in: otherEmail, index: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Compile(tc.rules); err == nil || !strings.Contains(err.Error(), tc.compileErr) {
				t.Fatalf("Compile: %v; want an error containing %q (else this case tests nothing)", err, tc.compileErr)
			}
			p, err := CompileStored(tc.rules)
			if err != nil {
				t.Fatalf("CompileStored: %v", err)
			}
			matched, index, action, err := p.Evaluate(tc.in)
			if tc.wantErr != "" {
				var ee *EvalError
				if !errors.As(err, &ee) || ee.Rule != tc.wantErr || matched || !strings.Contains(err.Error(), "cost limit") {
					t.Fatalf("Evaluate: %v, %v, %d; want an evaluation error of rule %q", matched, err, index, tc.wantErr)
				}
				return
			}
			if err != nil || matched != tc.matched || index != tc.index || (matched && action != tc.rules[index].Action) {
				t.Fatalf("Evaluate: matched %v, index %d, action %v, err %v; want matched %v at %d", matched, index, action, err, tc.matched, tc.index)
			}
		})
	}

	// CompileStored refuses everything else Compile refuses.
	for _, rules := range [][]Rule{
		nil,
		{rule("bad name!", Allow, "true")},
		{rule("x", Allow, "cert.nope")},
		{rule("x", Allow, `request.path`)},
	} {
		if _, err := CompileStored(rules); err == nil {
			t.Errorf("CompileStored(%v) compiled; want the error Compile gives", rules)
		}
	}
	// Within the limits, the two compile the same program: untracked.
	p, err := CompileStored([]Rule{rule("x", Allow, anchoredEmail)})
	if err != nil || p.rules[0].tracked || p.EstimatedCost(0) > MaxRuleCost {
		t.Fatalf("CompileStored within the limits: %v, tracked %v", err, err == nil && p.rules[0].tracked)
	}
}

// TestTooExpensiveRegexSaysWhatToDo: a rule refused for its cost because of matches() says how to
// write it within the limit, and the rewrite it suggests compiles.
func TestTooExpensiveRegexSaysWhatToDo(t *testing.T) {
	_, err := Compile([]Rule{rule("ou", Allow, `cert.subject.organizational_unit.exists(u, u.matches('dev(ice|elopment)s?$'))`)})
	if err == nil || !strings.Contains(err.Error(), "anchor the pattern with ^") {
		t.Fatalf("Compile: %v; want the cost error with its hint", err)
	}
	if _, err := Compile([]Rule{rule("ou", Allow, `cert.subject.organizational_unit.exists(u, u.matches('^dev(ice|elopment)s?$'))`)}); err != nil {
		t.Fatalf("the anchored rewrite: %v", err)
	}
}

// TestTrackedRuleSeesInputBeyondTheBounds: a rule evaluated with run-time cost tracking (over the
// limits, compiled by CompileStored, or calling format()) is evaluated on input beyond the bounds
// of the estimate as the other rules are, seeing the values, within its limit; it does not fail
// because a value is beyond the bounds that only the untracked programs assume. (Found by review:
// the tracked program ran with the untracked programs' view of the input, in which such a value is
// an error, so the request was denied with policy_error however cheap the rule was on it.)
func TestTrackedRuleSeesInputBeyondTheBounds(t *testing.T) {
	stored, err := CompileStored([]Rule{
		rule("first", Deny, `request.method == "DELETE"`),
		rule("email", Allow, `cert.email_addresses.exists(e, e.matches('@acme\\.example$'))`),
	})
	if err != nil || !stored.rules[1].tracked {
		t.Fatalf("CompileStored: %v (tracked %v)", err, err == nil && stored.rules[1].tracked)
	}
	format, err := Compile([]Rule{rule("api", Allow, `'%s %s'.format([request.method, request.path]).startsWith('GET /api/')`)})
	if err != nil || !format.rules[0].tracked {
		t.Fatalf("Compile: %v", err)
	}
	manyEmails := testInput() // 40 addresses: more than the bounds' 32
	for i := range 40 {
		manyEmails.Cert.EmailAddresses = append(manyEmails.Cert.EmailAddresses, fmt.Sprintf("d%d@elsewhere.example", i))
	}
	manyEmails.Cert.EmailAddresses = append(manyEmails.Cert.EmailAddresses, "device-42@acme.example")
	longPath := testInput()
	longPath.Request.Path = "/api/" + strings.Repeat("x", boundPath)
	for _, tc := range []struct {
		name string
		p    *Program
		in   *Input
		rule int
	}{
		{"stored rule over the limit, 41 addresses", stored, manyEmails, 1},
		{"format(), a path of 2 KiB", format, longPath, 0},
	} {
		matched, i, _, err := tc.p.Evaluate(tc.in)
		if err != nil || !matched || i != tc.rule {
			t.Errorf("%s: Evaluate = %v, rule %d, %v; want rule %d to match", tc.name, matched, i, err, tc.rule)
		}
	}
}
