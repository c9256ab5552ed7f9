// Package policy is the CEL environment of guestlist's access policies: the control plane compiles
// every rule with [Compile] when a policy is written, and the edge compiles the same rules with the
// same environment and evaluates them per request with [Program.Evaluate].
//
// # Variables
//
//	cert.presented            bool       the client sent a certificate
//	cert.verified             bool       it verified against the hostname's CAs (chain, time, usage, revocation)
//	cert.error                string     why it did not verify ("" otherwise)
//	cert.subject.common_name  string
//	cert.subject.organizational_unit  list(string)
//	cert.subject.organization list(string)
//	cert.issuer.common_name   string
//	cert.serial_number        string     lower-case hex, no leading zeros (certid.SerialNumber)
//	cert.fingerprint_sha256   string     lower-case hex SHA-256 of the DER (certid.FingerprintSHA256)
//	cert.dns_names, cert.email_addresses, cert.uris  list(string)  subject alternative names
//	cert.not_before, cert.not_after  timestamp
//	request.host              string     the normalised hostname
//	request.method            string     e.g. "GET"
//	request.path              string     the percent-decoded URL path, without the query, ";params" or repeated slashes
//	request.headers           map(string, string)  lower-case names; repeated headers joined by ", "
//
// Without a certificate, cert's strings and lists are empty, its timestamps are
// 0001-01-01T00:00:00Z, and has(cert.subject) is false. Indexing a header that was not sent is an
// evaluation error (the edge then denies with reason policy_error); test with
// `"x-env" in request.headers` or use `request.headers[?"x-env"].orValue("")`.
//
// Besides the CEL standard library the environment offers optional types and the cel-go
// extension libraries strings (version 5: lowerAscii, split, replace, indexOf, ...) and sets
// (sets.contains, sets.intersects, sets.equivalent); matches() (RE2 syntax, Go's regexp) is the
// only function that runs a regular expression. Time functions use UTC unless given a time
// zone. There is no variable for the current time: the verdict depends only on the request and
// the certificate (whose validity at the time of the request is part of cert.verified).
//
// # Limits
//
// A policy has 1 to [MaxRules] rules of at most [MaxExpressionBytes] bytes each. Expressions are
// limited in nesting depth, node count, comprehension nesting (2) and regular expression size (a
// compiled program of at most 1000 instructions; counted repetitions such as [0-9]{1,8} count as
// written out). Every rule's estimated worst-case cost must stay within [MaxRuleCost], and the sum
// over the policy's rules within [MaxPolicyCost]; the estimate uses cel-go's cost model (which
// sizes strings in code points; join() is sized by the length of its entries, which cel-go does
// not do), plus a size-linear cost for size() of strings, this package's price of matches()
// (below), and its prices of the calls whose work cel-go does not see (prices.go: conversions from
// a string by its length, indexOf() and lastIndexOf() by the string's conversion to runes,
// strings.quote() by its copies, a time zone given by name by its loading, about 40 µs, and the
// equality of lists and maps by their entries and strings), and assumes these bounds on the input
// (a bound in bytes bounds the code points too):
//
//	lists of cert (dns_names, email_addresses, uris, organizational_unit, organization)   32 entries
//	cert.dns_names entries 253 bytes, email_addresses 320, uris 2048
//	cert.subject/issuer names, organizational units, organizations                         256 bytes
//	cert.error 1024, cert.serial_number 130, cert.fingerprint_sha256 64
//	request.host 253, request.method 32, request.path 2048
//	request.headers: 64 names of up to 64 bytes, values (joined) up to 4096 bytes
//
// Evaluation within these bounds needs no run-time cost tracking, except for a rule that calls
// format(): the length of its result, by which it costs, is not known before it runs (an argument
// may be request.headers), so such a rule is always tracked, and counts MaxRuleCost toward the
// policy's limit, as a rule over the limits does. A value beyond them is never
// shown to the untracked program: reading it makes [Program.Evaluate] evaluate that rule again, and
// the remaining rules, with run-time cost tracking (a tracked rule that reads it is evaluated
// again too, seeing it): a rule whose actual cost then exceeds
// [MaxRuleCost], or an evaluation whose cost (estimated for the untracked rules, actual for the
// tracked ones) exceeds [MaxPolicyCost], fails with an evaluation error. The tracker sees a call's
// cost once the call has returned, so a regular expression is not run at all, and the call fails,
// when its cost on the input at hand would take the rule's regular expressions past MaxRuleCost.
// So one evaluation costs at most MaxPolicyCost + MaxRuleCost units whatever the input (up to
// MaxRuleCost more when the rule that exhausts the budget spends MaxRuleCost on other operations
// before its regular expressions).
//
// [Compile] enforces the limits on a policy being written. A policy of the history was checked by
// the version that accepted it, whose prices may have been lower; [CompileStored], which the edge
// and the audit use, compiles it all the same and evaluates the rules over the limits (or all of
// them, when their sum is over) with run-time cost tracking, so the bound above still holds.
//
// # Regular expressions
//
// cel-go prices matches() by the pattern's length, but Go's regexp (one-pass, backtracking or
// Pike VM, all RE2-style) visits at each position of the input every instruction of the compiled
// pattern that an automaton state there holds: (?i)k*k*k*k*! keeps nine instructions busy at
// every position. This package prices a call of matches() with a constant pattern at
//
//	(200 ns + (input length + 1) × work) / 40 ns
//
// units, rounded up, where the input length is in code points (the steps Go's regexp takes; an
// invalid byte is one, as U+FFFD), work is the largest set of instructions of the pattern's automaton over
// all the states any input reaches (zero-width assertions taken as true), each instruction
// weighted by what a visit costs (8 to 15 ns, more for a class of many ranges or a case-folded
// rune, measured on the machine of docs/benchmarks.md), plus the backtracker's set-up. A pattern
// anchored at the start whose automaton has no cycle (^/admin, ^device-[0-9]{1,8}$) only counts
// the positions it can reach. So a unit of a regular expression is about 40 ns at most, against
// 20 to 55 ns for a step of a comprehension over the headers: a policy of regular expressions at
// MaxPolicyCost takes about as long as the slowest other policies. Typical costs at the bounds:
// request.path.matches('^/v1/(payments|refunds)/[a-z0-9-]+$') 2,261;
// cert.subject.common_name.matches('^device-[0-9]{1,8}$') 21;
// cert.dns_names.exists(n, n.matches('^device-[0-9]+\.acme\.example$')) 5,219. A pattern that
// is not a constant (request.path.matches(request.method)) is compiled at every evaluation and
// priced as the largest program allowed plus its compilation (25 µs a code point), which refuses it
// on all but the shortest inputs.
package policy

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

// Action is what a matching rule decides. Its values are those of guestlist.v1.Action.
type Action uint8

const (
	// Allow lets the request through.
	Allow Action = 1
	// Deny refuses the request.
	Deny Action = 2
)

// String returns "allow" or "deny" (as written to the decision log), or "Action(n)".
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Rule is one step of a policy.
type Rule struct {
	// Name identifies the rule in errors and decisions: 1 to 63 letters, digits, '-' and '_',
	// unique within the policy.
	Name string
	// Action is applied when Expression is true.
	Action Action
	// Expression is a CEL expression over `cert` and `request` that yields a bool.
	Expression string
}

// Sentinel errors for problems of the policy as a whole (not of one rule).
var (
	// ErrNoRules: a policy needs at least one rule.
	ErrNoRules = errors.New("policy has no rules; at least one is required")
	// ErrTooManyRules: a policy has more than MaxRules rules.
	ErrTooManyRules = fmt.Errorf("policy has too many rules; at most %d are allowed", MaxRules)
	// ErrPolicyTooExpensive: the summed estimated cost of the rules exceeds MaxPolicyCost.
	ErrPolicyTooExpensive = fmt.Errorf("policy is too expensive to evaluate; the estimated costs of its rules add up to more than %d", MaxPolicyCost)
	// ErrHeadersUnknown: a rule's outcome depends on request.headers, which the input does not
	// know (RequestInput.HeadersUnknown).
	ErrHeadersUnknown = errors.New("the rule reads request.headers, which are not known here")
)

// CompileError reports a rule that cannot be compiled. Field is "expression" for syntax, type and
// cost errors (Line and Column then give the 1-based position in the expression, Column counting
// Unicode code points), or "name" or "action" for an invalid name or action (Line and Column are
// then 0).
type CompileError struct {
	// Rule is the rule's name as given.
	Rule string
	// Index is the rule's position in the policy, from 0.
	Index int
	// Field is the rule's field at fault: "expression", "name" or "action".
	Field string
	// Line and Column locate the problem in the expression (1-based), when Field is "expression".
	Line, Column int
	// Message says what is wrong.
	Message string
}

// FieldPath returns the path of the field at fault, e.g. "rules[2].expression".
func (e *CompileError) FieldPath() string {
	return fmt.Sprintf("rules[%d].%s", e.Index, e.Field)
}

// Error implements error, e.g.
// `rule "allow-ops" (rules[2].expression): line 1, column 14: undeclared reference to 'cret'`.
// A rule name longer than 80 bytes is shortened in the message.
func (e *CompileError) Error() string {
	name := e.Rule
	if len(name) > 80 {
		name = name[:80] + "..."
	}
	if e.Line > 0 {
		return fmt.Sprintf("rule %q (%s): line %d, column %d: %s", name, e.FieldPath(), e.Line, e.Column, e.Message)
	}
	return fmt.Sprintf("rule %q (%s): %s", name, e.FieldPath(), e.Message)
}

// EvalError reports a rule whose evaluation failed. The edge fails closed on it: deny, with
// reason policy_error.
type EvalError struct {
	// Rule is the rule's name.
	Rule string
	// Index is the rule's position in the policy, from 0.
	Index int
	// Err is the CEL evaluation error, e.g. "no such key: x-env".
	Err error
}

// Error implements error.
func (e *EvalError) Error() string {
	return fmt.Sprintf("rule %q (rules[%d]): evaluation failed: %v", e.Rule, e.Index, e.Err)
}

// Unwrap returns the CEL evaluation error.
func (e *EvalError) Unwrap() error { return e.Err }

// Program is a compiled policy. It is safe for concurrent use.
type Program struct {
	rules []compiledRule
	size  int64 // SizeEstimate
}

type compiledRule struct {
	Rule
	cost uint64
	// tracked: evaluate with guarded always (CompileStored, for a rule or policy over the limits).
	tracked bool
	// fast is evaluated when the input is within the bounds the cost estimate assumes;
	// guarded tracks the cost at run time and is used otherwise.
	fast, guarded cel.Program
}

var ruleName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)

// Compile checks and compiles the rules of a policy in order. The first problem found is
// returned: a *[CompileError] for a rule (bad name, duplicate name, bad action, syntax or type
// error, a result other than bool, an expression too large, too deep or too expensive), or one of
// [ErrNoRules], [ErrTooManyRules] and [ErrPolicyTooExpensive] for the policy as a whole.
func Compile(rules []Rule) (*Program, error) {
	return compile(rules, false)
}

// CompileStored compiles a policy that was accepted when it was written, for evaluation: what the
// edge and the audit do with the policies of the history. It refuses what [Compile] refuses,
// except cost: a rule whose estimated cost exceeds [MaxRuleCost] is compiled all the same and
// always evaluated with run-time cost tracking, and so is every rule of a policy whose summed
// estimate exceeds [MaxPolicyCost]. Such a rule costs at most what any rule costs on input beyond
// the bounds (see Limits in the package documentation); one that exceeds a limit on the input at
// hand fails with an evaluation error, which the caller fails closed on.
//
// This keeps the hostnames of a policy written under an earlier, lower pricing serving (a
// regular expression over a list of SANs priced higher since, say), where Compile would refuse it
// and the edge would drop its hostnames. The control plane uses Compile, so a policy written now
// stays within the limits and is evaluated untracked.
func CompileStored(rules []Rule) (*Program, error) {
	return compile(rules, true)
}

// compile is Compile, or CompileStored when stored.
func compile(rules []Rule, stored bool) (*Program, error) {
	if len(rules) == 0 {
		return nil, ErrNoRules
	}
	if len(rules) > MaxRules {
		return nil, ErrTooManyRules
	}
	env, err := environment()
	if err != nil {
		return nil, fmt.Errorf("policy: CEL environment: %w", err)
	}
	p := &Program{rules: make([]compiledRule, len(rules))}
	seen := make(map[string]int, len(rules))
	analysis := newRegexAnalysis()
	var total uint64
	for i, r := range rules {
		fail := func(field string, line, col int, format string, args ...any) error {
			return &CompileError{Rule: r.Name, Index: i, Field: field, Line: line, Column: col, Message: fmt.Sprintf(format, args...)}
		}
		if !ruleName.MatchString(r.Name) {
			return nil, fail("name", 0, 0, "a rule name is 1 to 63 letters, digits, '-' and '_'")
		}
		if j, dup := seen[r.Name]; dup {
			return nil, fail("name", 0, 0, "rules[%d] has the same name; rule names must be unique within a policy", j)
		}
		seen[r.Name] = i
		if r.Action != Allow && r.Action != Deny {
			return nil, fail("action", 0, 0, "the action must be ALLOW or DENY, not %d", uint8(r.Action))
		}
		cr, err := compileRule(env, r, stored, analysis)
		if err != nil {
			err.Rule, err.Index = r.Name, i
			return nil, err
		}
		total += cr.cost
		p.rules[i] = *cr
		p.size += sizePerRule + sizePerExpressionByte*int64(len(r.Expression))
	}
	for _, ri := range analysis.done {
		p.size += sizePerRegexInst*int64(ri.insts) + sizePerRegexRune*int64(ri.runes)
	}
	if total > MaxPolicyCost {
		if !stored {
			return nil, ErrPolicyTooExpensive
		}
		// Untracked rules add their estimates to the evaluation's budget, which they would
		// exhaust: track them all.
		for i := range p.rules {
			p.rules[i].tracked = true
		}
	}
	return p, nil
}

// compileRule compiles one rule; the returned CompileError lacks Rule and Index. stored: a rule
// over MaxRuleCost is compiled to be tracked (CompileStored). analysis holds the policy's
// patterns analysed so far.
func compileRule(env *cel.Env, r Rule, stored bool, analysis *regexAnalysis) (*compiledRule, *CompileError) {
	expr := r.Expression
	fail := func(loc common.Location, format string, args ...any) *CompileError {
		line, col := 1, 1
		if loc != nil && loc.Line() > 0 {
			line, col = loc.Line(), max(loc.Column()+1, 1)
		}
		return &CompileError{Field: "expression", Line: line, Column: col, Message: fmt.Sprintf(format, args...)}
	}
	if expr == "" {
		return nil, fail(nil, "the expression is empty")
	}
	if len(expr) > MaxExpressionBytes {
		return nil, fail(nil, "the expression is %d bytes long; at most %d are allowed", len(expr), MaxExpressionBytes)
	}
	ast, iss, perr := envCompile(env, expr)
	if perr != nil {
		return nil, fail(expressionStart(expr), "the expression cannot be compiled: %v", perr)
	}
	if iss.Err() != nil {
		errs := iss.Errors()
		first := errs[0]
		msg := strings.TrimSuffix(first.Message, " (in container '')")
		if len(errs) > 1 {
			msg = fmt.Sprintf("%s (and %d more)", msg, len(errs)-1)
		}
		return nil, fail(first.Location, "%s", msg)
	}
	native := ast.NativeRep()
	start := expressionStart(expr)
	if !ast.OutputType().IsExactType(types.BoolType) {
		return nil, fail(start, "the expression yields %s; it must yield bool", ast.OutputType())
	}
	if loc, msg, bad := checkAST(native); bad {
		return nil, fail(loc, "%s", msg)
	}
	regexes, regexCalls, badRegex, err := constantRegexes(native, analysis)
	if err != nil {
		return nil, fail(native.SourceInfo().GetStartLocation(badRegex.ID()), "%v", err)
	}
	est, err := env.EstimateCost(ast, estimator{regexes: regexes})
	if err != nil {
		return nil, fail(start, "cannot estimate the cost: %v", err)
	}
	cost, tracked := est.Max, false
	if cost > MaxRuleCost {
		if !stored {
			hint := ""
			if regexCalls {
				// The usual cause, and what to do about it.
				hint = "; matches() costs what Go's regexp takes on the longest input the rule allows (a list of the certificate at its bound, e.g. 32 organizational units of 256 bytes), so prefer startsWith(), endsWith() or contains(), or anchor the pattern with ^ and avoid unbounded repetition (* or +)"
			}
			return nil, fail(start, "the expression is too expensive: its estimated worst-case cost %d exceeds the limit of %d%s", est.Max, MaxRuleCost, hint)
		}
		cost, tracked = MaxRuleCost, true
	}
	if !tracked && callsFormat(ast) {
		// The length of format()'s result is not known before it runs (an argument may be
		// request.headers), and its work goes by it: the rule is tracked, and counts MaxRuleCost
		// toward the policy's limit as a rule over the limit does (see prices.go).
		cost, tracked = MaxRuleCost, true
	}
	fast, err := env.Program(ast, append(regexProgramOptions(regexCalls, regexes, false), cel.EvalOptions(cel.OptOptimize))...)
	if err != nil {
		return nil, fail(start, "%v", err)
	}
	guarded, err := env.Program(ast, append(regexProgramOptions(regexCalls, regexes, true), cel.EvalOptions(cel.OptOptimize), cel.CostLimit(MaxRuleCost), costTrackers(regexes), cel.CostTracking(dynamicCalls{}))...)
	if err != nil {
		return nil, fail(start, "%v", err)
	}
	return &compiledRule{Rule: r, cost: cost, tracked: tracked, fast: fast, guarded: guarded}, nil
}

// envCompile is env.Compile, with a panic turned into an error. cel-go's own check of a regular
// expression's program size (cel.RegexProgramSizeLimit, which this package no longer uses: see
// regexSizeValidator) compiled the pattern without simplifying it, and regexp/syntax panicked on a
// counted repetition such as a{2}; a panic of the checker is a compile error, not a crash of the
// caller.
func envCompile(env *cel.Env, expr string) (ast *cel.Ast, iss *cel.Issues, perr error) {
	defer func() {
		if r := recover(); r != nil {
			ast, iss, perr = nil, nil, fmt.Errorf("%v", r)
		}
	}()
	ast, iss = env.Compile(expr)
	return ast, iss, nil
}

// expressionStart locates the first character of an expression that is not white space.
func expressionStart(expr string) common.Location {
	line, col := 1, 0
	for _, r := range expr {
		switch r {
		case '\n':
			line, col = line+1, 0
		case ' ', '\t', '\r':
			col++
		default:
			return common.NewLocation(line, col)
		}
	}
	return common.NewLocation(1, 0)
}

// checkAST rejects what type-checks but could never work at the edge: constructing the input
// types (which cannot be constructed), and constant header names with upper-case letters used as
// keys of request.headers (whose keys are lower case, so the lookup could never succeed).
func checkAST(a *celast.AST) (loc common.Location, msg string, bad bool) {
	info := a.SourceInfo()
	isHeaders := func(e celast.Expr) bool {
		if e.Kind() != celast.SelectKind {
			return false
		}
		sel := e.AsSelect()
		op := sel.Operand()
		return sel.FieldName() == "headers" && op.Kind() == celast.IdentKind && op.AsIdent() == "request"
	}
	report := func(id int64, name string) {
		if bad {
			return
		}
		for i := 0; i < len(name); i++ {
			if c := name[i]; 'A' <= c && c <= 'Z' {
				loc, bad = info.GetStartLocation(id), true
				msg = fmt.Sprintf("header names in request.headers are lower case; write %q instead of %q", strings.ToLower(name), name)
				return
			}
		}
	}
	literal := func(e celast.Expr) {
		if e.Kind() == celast.LiteralKind {
			if k, ok := e.AsLiteral().(types.String); ok {
				report(e.ID(), string(k))
			}
		}
	}
	celast.PostOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.CallKind:
			call := e.AsCall()
			args := call.Args()
			if len(args) != 2 {
				return
			}
			switch call.FunctionName() {
			case operators.Index, operators.OptIndex, operators.OptSelect:
				if isHeaders(args[0]) {
					literal(args[1])
				}
			case operators.In:
				if isHeaders(args[1]) {
					literal(args[0])
				}
			}
		case celast.SelectKind:
			if sel := e.AsSelect(); isHeaders(sel.Operand()) {
				report(e.ID(), sel.FieldName())
			}
		case celast.StructKind:
			if !bad {
				loc, bad = info.GetStartLocation(e.ID()), true
				msg = fmt.Sprintf("values of type %s cannot be constructed in an expression", e.AsStruct().TypeName())
			}
		}
	}))
	return loc, msg, bad
}

// Len returns the number of rules.
func (p *Program) Len() int { return len(p.rules) }

// What a compiled policy holds, for [Program.SizeEstimate]: upper bounds of the heap that policies
// kept after compilation (runtime.MemStats.HeapAlloc after a GC, go1.26 on amd64), checked by
// TestSizeEstimate: 64 rules of a few bytes (3.6 to 5.7 KiB a rule), 64 rules of 4,096 bytes of
// comparisons or calls of matches() with small patterns (29 to 52 bytes a byte of expression),
// and patterns of 200 to 990 instructions, with classes of many ranges or case-folded (up to 44
// bytes an instruction and 8 a rune of its class, besides the expressions' 64 bytes a byte).
const (
	sizePerRule           = 8192
	sizePerExpressionByte = 64
	sizePerRegexInst      = 64
	sizePerRegexRune      = 8 // of an instruction's class (regexp/syntax.Inst.Rune)
)

// SizeEstimate returns an estimate of the memory p holds, in bytes: 8 KiB a rule, 64 bytes a byte
// of its expressions, and for the compiled program of each distinct constant regular expression
// 64 bytes an instruction and 8 a rune of the instructions' classes; above what was measured for
// small and large policies. A compiled policy holds from a few KiB to over 100 MiB (thousands of
// patterns of a thousand instructions each, which today's prices refuse but a stored policy may
// hold), so that a cache of programs can bound its memory by this rather than by a count.
func (p *Program) SizeEstimate() int64 { return p.size }

// Rule returns the i-th rule (0 <= i < Len()).
func (p *Program) Rule(i int) Rule { return p.rules[i].Rule }

// EstimatedCost returns the estimated worst-case cost of the i-th rule, in CEL cost units (for a
// rule over MaxRuleCost compiled by CompileStored, and for a rule that calls format(), which are
// tracked at run time, MaxRuleCost).
func (p *Program) EstimatedCost(i int) uint64 { return p.rules[i].cost }

// Evaluate tries the rules in order and reports the first whose expression is true: matched is
// true, ruleIndex its index and action its action. When no rule matches it returns false, -1, 0
// and nil. When a rule's evaluation fails it stops there and returns false, that rule's index, 0
// and an *[EvalError] naming the rule; the caller must fail closed. With in.Request.HeadersUnknown,
// a rule whose outcome depends on the headers stops it the same way, the EvalError wrapping
// [ErrHeadersUnknown].
//
// Evaluate does not retain in or anything it references after it returns.
func (p *Program) Evaluate(in *Input) (matched bool, ruleIndex int, action Action, err error) {
	if in == nil {
		in = &Input{}
	}
	st := acquireState(in)
	defer st.release()
	// spent is what the evaluation may have cost so far: the estimate for untracked runs, the
	// actual cost for tracked ones. It bounds the work on input beyond the bounds of the estimate.
	var spent uint64
	for i := range p.rules {
		r := &p.rules[i]
		st.nIters = 0
		st.headersGot, st.headersTested = false, false
		var out ref.Val
		var det *cel.EvalDetails
		if !st.guarded && !r.tracked {
			out, _, err = r.fast.Eval(&st.frame)
			spent += r.cost
			if st.oob {
				// The input exceeds the bounds of the cost estimate: from here on, track the cost.
				st.guarded = true
				st.nIters = 0
			}
		}
		if st.guarded || r.tracked {
			st.regexLeft = MaxRuleCost
			out, det, err = r.guarded.Eval(st)
			if c := det.ActualCost(); c != nil {
				spent += *c
			}
			if !st.guarded && st.oob {
				// A tracked rule read a value beyond the bounds, which the untracked programs'
				// view of the input (the one it had so far) hides behind an error: evaluate it
				// again seeing the input, as an untracked rule is, and the remaining rules too.
				st.guarded = true
				st.nIters = 0
				st.regexLeft = MaxRuleCost
				out, det, err = r.guarded.Eval(st)
				if c := det.ActualCost(); c != nil {
					spent += *c
				}
			}
		}
		if st.headersTested || (err != nil && st.headersGot) {
			// Without the headers, this rule's outcome is not known: a has() test of them could
			// have gone either way, and an error may stand for the value they would have given.
			// (Read by a rule whose outcome did not depend on them, they left no trace.)
			return false, i, 0, &EvalError{Rule: r.Name, Index: i, Err: ErrHeadersUnknown}
		}
		if err != nil {
			return false, i, 0, &EvalError{Rule: r.Name, Index: i, Err: err}
		}
		if spent > MaxPolicyCost {
			return false, i, 0, &EvalError{Rule: r.Name, Index: i, Err: fmt.Errorf("the policy exceeded its evaluation budget of %d cost units", MaxPolicyCost)}
		}
		switch out {
		case types.True:
			return true, i, r.Action, nil
		case types.False:
			continue
		}
		return false, i, 0, &EvalError{Rule: r.Name, Index: i, Err: fmt.Errorf("the expression yielded %v of type %s, not a bool", out, out.Type().TypeName())}
	}
	return false, -1, 0, nil
}
