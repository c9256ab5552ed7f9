package policy

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/checker"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
)

// estimatedSize returns the size of the string expr as the cost estimator sees it where
// matches() reads it (the estimator of matches() replaced by one that records it).
func estimatedSize(t *testing.T, expr string) checker.SizeEstimate {
	t.Helper()
	base, err := environment()
	if err != nil {
		t.Fatal(err)
	}
	var got checker.SizeEstimate
	record := func(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
		got = sizeEstimate(est, *target)
		return &checker.CallEstimate{}
	}
	env, err := base.Extend(cel.CostEstimatorOptions(checker.OverloadCostEstimate(overloads.MatchesString, record)))
	if err != nil {
		t.Fatal(err)
	}
	ast, iss := env.Compile("(" + expr + ").matches('x')")
	if iss.Err() != nil {
		t.Fatalf("%s: %v", expr, iss.Err())
	}
	if _, err := env.EstimateCost(ast, estimator{}); err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return got
}

// evaluated returns the string expr evaluates to on in.
func evaluated(t *testing.T, expr string, in *Input) string {
	t.Helper()
	env, err := environment()
	if err != nil {
		t.Fatal(err)
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		t.Fatalf("%s: %v", expr, iss.Err())
	}
	prg, err := env.Program(ast)
	if err != nil {
		t.Fatal(err)
	}
	st := acquireState(in)
	defer st.release()
	out, _, err := prg.Eval(&st.frame)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	s, ok := out.(types.String)
	if !ok {
		t.Fatalf("%s: %v, not a string", expr, out)
	}
	return string(s)
}

// adversarial returns input at the bounds built to make derived strings as long as possible:
// header x-a and the common name are made of s, the DNS names are full of invalid UTF-8 (which
// quote and the functions that convert to runes turn into U+FFFD, 3 bytes each), the path is full.
func adversarial(s string) *Input {
	names := make([]string, boundListItems)
	for i := range names {
		names[i] = strings.Repeat("\xff", boundDNSName)
	}
	cn := s
	for len(cn) > boundName {
		_, w := utf8.DecodeLastRuneInString(cn)
		cn = cn[:len(cn)-w]
	}
	return &Input{
		Cert:    CertInput{Presented: true, DNSNames: names, Subject: SubjectInput{CommonName: cn}},
		Request: RequestInput{Method: "GET", Path: strings.Repeat("a", boundPath), Headers: http.Header{"X-A": {s}}},
	}
}

var (
	invalidHeader = strings.Repeat("\xff", boundHeaderValue)         // each byte becomes U+FFFD, 3 bytes
	wideHeader    = strings.Repeat("\U0001F600", boundHeaderValue/4) // 4 bytes a code point
	quotesHeader  = strings.Repeat("\"", boundHeaderValue)           // each character escaped
)

// TestStringSizesBoundTheResult: the size the cost estimate gives a string that a function makes
// is at least its code points, and the bytes it stands for (stringBytes) at least its bytes, on
// input at the bounds built to make it as long as possible. (Found by review: cel-go sized
// cert.dns_names.join(',') at 65, not 8,127, so matches() on it was priced at a 125th of its work.)
func TestStringSizesBoundTheResult(t *testing.T) {
	for _, tc := range []struct {
		expr   string
		header string
	}{
		{"strings.quote(request.headers['x-a'])", invalidHeader},
		{"strings.quote(request.headers['x-a'])", quotesHeader},
		{"strings.quote(strings.quote(request.headers['x-a']))", quotesHeader},
		{"request.headers['x-a'].lowerAscii()", invalidHeader},
		{"request.headers['x-a'].upperAscii()", invalidHeader},
		{"request.headers['x-a'].reverse()", invalidHeader},
		{"request.headers['x-a'].substring(1)", invalidHeader},
		{"request.headers['x-a'].substring(0, 10)", wideHeader},
		{"request.headers['x-a'].charAt(0)", wideHeader},
		{"cert.dns_names.join(',')", ""},
		{"cert.dns_names.join()", ""},
		{"cert.dns_names.join(request.headers['x-a'])", invalidHeader},
		{"['ab', 'cde'].join('-')", ""},
		{"request.path.replace('a', 'bcd')", ""},
		{"request.path.replace('', '\\u00ff')", ""},
		{"request.headers['x-a'].trim()", invalidHeader},
		{"request.headers['x-a'] + request.path", wideHeader},
		{"request.path + '\\U0001F600\\U0001F600'", ""},
	} {
		est := estimatedSize(t, tc.expr)
		got := evaluated(t, tc.expr, adversarial(tc.header))
		if n := uint64(utf8.RuneCountInString(got)); est.Max < n {
			t.Errorf("%s: estimated at most %d code points, but it made %d", tc.expr, est.Max, n)
		}
		if b := stringBytes(pathNode(nil), est); b.Max < uint64(len(got)) {
			t.Errorf("%s: estimated at most %d bytes, but it made %d", tc.expr, b.Max, len(got))
		}
	}
}

// TestDerivedStringsTrackedWithinEstimate: on input at the bounds built to make derived strings as
// long as possible, the tracked cost of rules that call matches() or size() on them stays within
// their estimate, as TestRegexTrackedWithinEstimate checks for the fields themselves. (Found by
// review: the trackers counted bytes, of which strings.quote(x) of invalid UTF-8 has 3 for each
// byte of x where the estimate counts 2 code points, and cel-go sized join() by the number of
// entries.)
func TestDerivedStringsTrackedWithinEstimate(t *testing.T) {
	rules := []Rule{
		rule("quote", Allow, `strings.quote(cert.subject.common_name).matches("[^x]*y")`),
		rule("quote2", Allow, `strings.quote(strings.quote(cert.subject.common_name)).matches("[^x]*y")`),
		rule("lower", Allow, `cert.subject.common_name.lowerAscii().matches("[^x]*y")`),
		rule("reverse", Allow, `cert.subject.common_name.reverse().matches("[^x]*y")`),
		rule("size", Allow, `size(strings.quote(request.headers["x-a"])) == 0`),
		rule("join", Allow, `size(cert.dns_names.join(",")) == 0`),
	}
	p, err := Compile(rules) // each within the limits: evaluated untracked on input within the bounds
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{invalidHeader, wideHeader, quotesHeader} {
		in := adversarial(s)
		for i := range rules {
			st := acquireState(in)
			st.guarded, st.regexLeft = true, MaxRuleCost
			_, det, err := p.rules[i].guarded.Eval(st)
			st.release()
			if err != nil {
				t.Errorf("%s on %q...: %v (estimate %d)", rules[i].Name, s[:4], err, p.EstimatedCost(i))
				continue
			}
			if c := *det.ActualCost(); c > p.EstimatedCost(i) || c == 0 {
				t.Errorf("%s on %q...: tracked cost %d, estimate %d", rules[i].Name, s[:4], c, p.EstimatedCost(i))
			}
		}
	}
}
