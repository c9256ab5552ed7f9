package policy

import (
	"errors"
	"regexp"
	"regexp/syntax"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestRegexOnePassDetected: the cost model reads whether regexp runs a pattern with its one-pass
// engine from an unexported field; if a Go release renames it, every pattern is priced as if it
// were not one-pass (more expensive), and this test says so.
func TestRegexOnePassDetected(t *testing.T) {
	for pattern, want := range map[string]bool{
		`^device-[0-9]+$`:                     true,
		`^/v1/(payments|refunds)/[a-z0-9-]+$`: true,
		`device-[0-9]+`:                       false, // not anchored
		`^(.*)(.*)$`:                          false, // ambiguous
		`^spiffe://acme\.example/(device|user)/[^/]+$`: true,
	} {
		if got := isOnePass(regexp.MustCompile(pattern)); got != want {
			t.Errorf("isOnePass(%q) = %v, want %v", pattern, got, want)
		}
	}
}

// TestRegexPositions: a pattern anchored at the start whose automaton has no cycle costs the same
// on any input length (the engines stop once no thread is left); others grow with the input.
func TestRegexPositions(t *testing.T) {
	tests := []struct {
		pattern   string
		positions uint64 // 0: grows with the input
	}{
		{`^/admin`, 7},
		{`^(GET|HEAD)$`, 5},
		{`^device-[0-9]{1,8}$`, 16},
		{`^/api/.*`, 0},
		{`^device-[0-9]+$`, 0},
		{`/admin`, 0},
		{`(?i)^/(wp-admin|phpmyadmin)`, 12},
	}
	for _, tt := range tests {
		ri, err := analyzeRegex(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if ri.positions != tt.positions {
			t.Errorf("%q: positions = %d, want %d", tt.pattern, ri.positions, tt.positions)
		}
		// (The backtracker's set-up still grows with the input, up to a bound.)
		short, long := ri.cost(boundPath, boundPath), ri.cost(100*boundPath, 100*boundPath)
		clearUnits := uint64(backtrackMaxBits/backtrackClearBitsPerNs/regexNsPerUnit + 1)
		if tt.positions != 0 && long > short+clearUnits || tt.positions == 0 && long < 10*short {
			t.Errorf("%q: cost %d on %d bytes, %d on %d", tt.pattern, short, boundPath, long, 100*boundPath)
		}
	}
}

// TestRegexBudget: beyond the bounds, regular expressions stop at the rule's limit and at the
// policy's budget with an evaluation error, never running one whose cost would exceed what is left.
func TestRegexBudget(t *testing.T) {
	// Six rules of at most MaxPolicyCost/6, on the longest path on which one evaluates within its
	// limit: the rules run tracked until the budget stops them (the fifth or the sixth, the first
	// having counted its estimate too, for its untracked start).
	expr, _ := costliestRegexRule(t, MaxPolicyCost/6)
	one, err := Compile([]Rule{rule("r", Allow, expr)})
	if err != nil {
		t.Fatal(err)
	}
	n := boundPath + 1
	for {
		if _, _, _, err := one.Evaluate(regexInput(n + 64)); err != nil {
			break
		}
		n += 64
	}
	p, err := Compile(manyRules(6, expr))
	if err != nil {
		t.Fatal(err)
	}
	_, i, _, err := p.Evaluate(regexInput(n))
	if i < 4 || err == nil || !strings.Contains(err.Error(), "exceeded its evaluation budget") {
		t.Fatalf("on %d bytes: rule %d, %v; want rule 4 or 5 and the budget", n, i, err)
	}
	// A path on which the first rule would exceed its limit: not run.
	_, i, _, err = p.Evaluate(regexInput(2 * n))
	if i != 0 || !errors.Is(err, errRegexNotRun) {
		t.Fatalf("on %d bytes: rule %d, %v; want rule 0, not run", 2*n, i, err)
	}
	// Two calls in one rule share its limit: each fits alone, the second does not fit after the first.
	ri, _ := analyzeRegex("(?i)k*k*!")
	half := int(MaxRuleCost / 2 * regexNsPerUnit / ri.posNs)
	two, err := Compile([]Rule{rule("two", Allow, `cert.subject.common_name.matches("(?i)k*k*!") || cert.subject.common_name.matches("(?i)k*k*!!")`)})
	if err != nil {
		t.Fatal(err)
	}
	cn := func(n int) *Input {
		in := testInput()
		in.Cert.Subject.CommonName = strings.Repeat("a", n)
		return in
	}
	if _, _, _, err := two.Evaluate(cn(half * 3 / 2)); !errors.Is(err, errRegexNotRun) {
		t.Fatalf("two calls on %d bytes: %v; want the second not run", half*3/2, err)
	}
	if _, _, _, err := two.Evaluate(cn(half * 3 / 4)); err != nil {
		t.Fatalf("two calls on %d bytes: %v", half*3/4, err)
	}
}

// TestRegexTrackedWithinEstimate: on input at the bounds, the tracked cost of rules with regular
// expressions stays within their estimate (the run-time cost is the estimate's counterpart).
func TestRegexTrackedWithinEstimate(t *testing.T) {
	rules := []Rule{
		rule("cn", Allow, `cert.subject.common_name.matches('^device-[0-9]{1,8}$')`),
		rule("path", Allow, `request.path.matches('^/v1/(payments|refunds)/[a-z0-9-]+$')`),
		rule("wild", Allow, `matches(request.path, '^/api/.*/admin$')`),
		rule("san", Allow, `cert.dns_names.exists(n, n.matches('\\.acme\\.example$'))`),
		rule("email", Allow, `cert.email_addresses.exists(e, e.matches('^[a-z0-9._%+-]+@acme\\.example$'))`),
		rule("ou", Allow, `cert.subject.organizational_unit.exists(o, o.matches('^team-[a-z]+$'))`),
		rule("header", Allow, `request.headers["x-a"].matches("(?i)k*!")`),
		rule("dynamic", Allow, `"a".matches("a" + "{1}") && false`),
	}
	p, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	long := func(n int) string { return strings.Repeat("a", n) }
	list := func(item int) []string {
		l := make([]string, boundListItems)
		for i := range l {
			l[i] = long(item)
		}
		return l
	}
	in := testInput()
	in.Cert.Subject.CommonName = long(boundName)
	in.Request.Path = long(boundPath)
	in.Cert.DNSNames = list(boundDNSName)
	in.Cert.EmailAddresses = list(boundEmail)
	in.Cert.Subject.OrganizationalUnit = list(boundName)
	in.Request.Headers.Set("X-A", long(boundHeaderValue))
	for i := range rules {
		st := acquireState(in)
		st.guarded, st.regexLeft = true, MaxRuleCost
		_, det, err := p.rules[i].guarded.Eval(st)
		st.release()
		if err != nil {
			t.Fatalf("%s: %v", rules[i].Name, err)
		}
		if c := *det.ActualCost(); c > p.EstimatedCost(i) || c == 0 {
			t.Errorf("%s: tracked cost %d, estimate %d", rules[i].Name, c, p.EstimatedCost(i))
		}
	}
}

// simulateSets runs the Pike VM's thread sets over an input, with zero-width assertions as Go
// evaluates them, and returns the largest weighted set and the number of positions with a thread.
func simulateSets(prog *syntax.Prog, onePass bool, input string) (maxWork, active uint64) {
	anchored := prog.StartCond()&syntax.EmptyBeginText != 0
	mark := make([]bool, len(prog.Inst))
	var set []uint32
	var add func(pc uint32, flag syntax.EmptyOp)
	add = func(pc uint32, flag syntax.EmptyOp) {
		if mark[pc] {
			return
		}
		mark[pc] = true
		set = append(set, pc)
		i := &prog.Inst[pc]
		switch i.Op {
		case syntax.InstAlt, syntax.InstAltMatch:
			add(i.Out, flag)
			add(i.Arg, flag)
		case syntax.InstCapture, syntax.InstNop:
			add(i.Out, flag)
		case syntax.InstEmptyWidth:
			if syntax.EmptyOp(i.Arg)&^flag == 0 {
				add(i.Out, flag)
			}
		}
	}
	var carried []uint32
	prev := rune(-1)
	for pos := 0; ; {
		r, w := rune(-1), 0
		if pos < len(input) {
			r, w = utf8.DecodeRuneInString(input[pos:])
		}
		flag := syntax.EmptyOpContext(prev, r)
		set = set[:0]
		clear(mark)
		for _, pc := range carried {
			add(pc, flag)
		}
		if !anchored || pos == 0 {
			add(uint32(prog.Start), flag)
		}
		if len(set) == 0 {
			break
		}
		active++
		var work uint64
		carried = carried[:0]
		for _, pc := range set {
			i := &prog.Inst[pc]
			work += instNs(i, onePass)
			if r >= 0 && consumesRune(i.Op) && matchesRune(i, r) {
				carried = append(carried, i.Out)
			}
		}
		maxWork = max(maxWork, work)
		if r < 0 {
			break
		}
		prev, pos = r, pos+w
	}
	return maxWork, active
}

// FuzzRegexWork: the work the analysis finds bounds the sets of instructions the Pike VM holds at
// every position of any input, and, when it bounds the positions, the positions with work.
func FuzzRegexWork(f *testing.F) {
	for _, s := range [][2]string{
		{`^/v1/(payments|refunds)/[a-z0-9-]+$`, "/v1/payments/abc-1"}, {`(?i)k*k*k*!`, "kKK\u212aa!"},
		{`\.acme\.example$`, "a.acme.example.acme.example"}, {`^.*\.internal$`, "x.internal.internal"},
		{`(a|b)*a(a|b)(a|b)(a|b)z`, "abababababbbaaaz"}, {`^(?:\pL\pN)*$`, "a1b2\u00e93"}, {`\bfoo\b|^bar$`, "foo bar\nbar"},
		{`^device-[0-9]{1,8}$`, "device-123456789"}, {`(?s).*x(?-s).y`, "ax\ny\nxzy"}, {`^/admin`, "/admin/x"},
		{`(?i)(bot|crawler|spider)`, "Crawler spider BOT"}, {`[^a-c\x{10000}-\x{10FFFF}]+z`, "dd\U0001F600z"},
		{`(?:(?:a*)*b*)*c`, "aababbbac"}, {`^(?:ab|ac|ad)*$`, "abacadab\xff"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, input string) {
		if len(pattern) > 200 || len(input) > 500 {
			return
		}
		ri, err := analyzeRegex(pattern)
		if err != nil {
			return
		}
		prog, err := regexProgram(pattern)
		if err != nil {
			t.Fatal(err)
		}
		work, active := simulateSets(prog, ri.onePass, input)
		if work > ri.posNs {
			t.Fatalf("%q on %q: a set of %d ns; the analysis found %d", pattern, input, work, ri.posNs)
		}
		if ri.positions != 0 && active > ri.positions {
			t.Fatalf("%q on %q: %d positions with work; the analysis found %d", pattern, input, active, ri.positions)
		}
	})
}

// TestRegexDocumentedCosts: the costs the package documentation gives.
func TestRegexDocumentedCosts(t *testing.T) {
	for expr, want := range map[string]uint64{
		`request.path.matches('^/v1/(payments|refunds)/[a-z0-9-]+$')`:             2261,
		`cert.subject.common_name.matches('^device-[0-9]{1,8}$')`:                 21,
		`cert.dns_names.exists(n, n.matches('^device-[0-9]+\\.acme\\.example$'))`: 5219,
	} {
		p, err := Compile([]Rule{rule("r", Allow, expr)})
		if err != nil {
			t.Fatal(err)
		}
		if got := p.EstimatedCost(0); got != want {
			t.Errorf("%s: cost %d, documented %d", expr, got, want)
		}
	}
}
