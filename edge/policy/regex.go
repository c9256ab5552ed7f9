package policy

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"reflect"
	"regexp"
	"regexp/syntax"
	"slices"
	"unicode"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/checker"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"
)

// The cost of matches().
//
// cel-go charges a match as the input's length times the pattern's length times a small factor,
// which underprices Go's regexp: its engines (one-pass, backtracker, Pike VM; all RE2-style) visit,
// at each position of the input, up to every instruction of the compiled program that an
// automaton state at that position holds, so that the time grows with the input's length times the
// number of threads alive at once. For a constant pattern this package computes that number: it
// explores the pattern's automaton (the sets of instructions the Pike VM holds after each input
// rune, over every reachable set, with zero-width assertions taken as always true) and takes the
// largest set, weighting each instruction by what a visit of it costs. That bounds the work of all
// three engines: the Pike VM does this work at each position, the backtracker visits each
// (instruction, position) pair of these sets at most once, and the one-pass engine follows one
// path through the same instructions. For a pattern anchored at the start whose automaton has no
// cycle, the work also stops after as many positions as its longest path has states. A match then
// costs
//
//	(regexCallNs + positions × work + backtracker set-up) / regexNsPerUnit
//
// cost units, rounded up, where positions is the input's length in code points + 1 (or that
// bound): the engines step a code point at a time (an invalid byte is one step). A step over a
// code point of several bytes, or an invalid byte, costs up to about twice one over an ASCII
// byte, and stayed within the work per step the analysis prices (at most 0.71 of it; 8 patterns
// of classes, case-folded or not, on 4,096 code points of é, U+212A, U+FFFD, U+1F600 and
// invalid bytes). The backtracker's set-up goes by bytes (see sizes.go for how the estimate
// bounds them). A pattern that is not a constant is priced as the largest program allowed
// (maxRegexProgramSize instructions, all of the most expensive kind), plus its compilation (which
// happens at every evaluation) by its length in code points.
//
// The nanosecond figures are upper bounds of what a visit costs, per engine and kind of
// instruction, measured on the machine of docs/benchmarks.md (2 vCPU AMD EPYC, Go 1.26; the slowest
// of the engines over inputs of 1 to 4096 bytes and programs of 3 to 600 instructions, with a
// margin for the noise of a shared machine). A test of a rune against a class of ranges is a
// linear search of up to four ranges, a binary search of more; the one-pass engine also searches
// the ranges of the branches at each alternation. regexNsPerUnit converts them into cost units so
// that a policy of regular expressions at MaxPolicyCost takes about as long as the documented worst
// case of other policies.
const (
	// regexVisitNs is a visit by the backtracker or the Pike VM of an instruction that tests no
	// class: control flow, captures, zero-width assertions, a single rune, any rune, one range.
	regexVisitNs = 15
	// regexOnePassVisitNs is the same for the one-pass engine.
	regexOnePassVisitNs = 8
	// regexRangeNs is the cost of each range tested by a linear search, or of each step of a
	// binary search (twice that for the one-pass engine).
	regexRangeNs = 2
	// regexFoldNs is the extra cost of a rune matched without regard to case.
	regexFoldNs = 16
	// regexCallNs is a call's fixed cost (taking a matcher from its pool, setting it up).
	regexCallNs = 200
	// regexCompileNsPerByte is the compilation of a pattern that is not a constant (parsed twice:
	// once to check its size, once by regexp), per byte of the pattern; the slowest measured is
	// about 20 µs a byte (a pattern of Unicode classes).
	regexCompileNsPerByte = 25_000
	// regexNsPerUnit is what a cost unit of a regular expression stands for.
	regexNsPerUnit = 40

	// backtrackMaxProg and backtrackMaxBits are regexp's limits for its backtracker, which clears
	// a bit vector of one bit per instruction and input position at each match.
	backtrackMaxProg = 500
	backtrackMaxBits = 256 * 1024
	// backtrackClearBitsPerNs is how fast that vector is cleared (a conservative 8 bytes a ns).
	backtrackClearBitsPerNs = 64

	// regexMaxInput is the largest input length priced exactly; beyond it the cost is infinite.
	regexMaxInput = 1 << 32
	// regexAnalysisBudget bounds the work of exploring a pattern's automaton (instruction visits
	// and class tests); beyond it, or beyond regexAnalysisStates states, the work at a position is
	// taken to be that of the whole program.
	regexAnalysisBudget = 500_000
	regexAnalysisStates = 1024
	// regexPolicyAnalysisBudget bounds that work over all the patterns of one policy (about 20 ms
	// here): the patterns analysed once it is spent are priced as their whole programs. Without
	// it, a policy of many distinct cheap calls of matches() took seconds to compile, at the
	// control plane, on every edge and on every audit explain.
	regexPolicyAnalysisBudget = 8_000_000
)

// regexAnalysis is the analysis of the patterns of one policy: those analysed so far, and what is
// left of regexPolicyAnalysisBudget, shared by all of the policy's rules.
type regexAnalysis struct {
	budget int
	done   map[string]*regexInfo
}

func newRegexAnalysis() *regexAnalysis {
	return &regexAnalysis{budget: regexPolicyAnalysisBudget, done: map[string]*regexInfo{}}
}

// analyze is analyzeRegex within the policy's budget, once per pattern.
func (a *regexAnalysis) analyze(pattern string) (*regexInfo, error) {
	if ri, ok := a.done[pattern]; ok {
		return ri, nil
	}
	ri, err := analyzeRegexWithin(pattern, &a.budget)
	if err != nil {
		return nil, err
	}
	a.done[pattern] = ri
	return ri, nil
}

// regexInfo is what the cost of a pattern depends on.
type regexInfo struct {
	re *regexp.Regexp // nil when the pattern is not a constant
	// insts is the number of instructions of the compiled program.
	insts int
	// runes is the number of runes of the instructions' classes (Inst.Rune), for
	// Program.SizeEstimate.
	runes int
	// posNs is the work at one input position, in ns.
	posNs uint64
	// positions, if not 0, bounds the input positions at which there is work.
	positions uint64
	// onePass: regexp runs the program with its one-pass engine.
	onePass bool
	// compileNs is the compilation at each call (a pattern that is not a constant);
	// math.MaxUint64 for a pattern of unknown length.
	compileNs uint64
}

// cost returns the cost in units of matching an input of n code points and b bytes (at most; b
// >= n). The engines step over the input a code point at a time, whatever its bytes (an invalid
// byte is one step, as U+FFFD), so the work is by code points; the backtracker clears a bit per
// instruction and byte.
func (ri *regexInfo) cost(n, b uint64) uint64 {
	if n >= regexMaxInput || b >= regexMaxInput || ri.compileNs == math.MaxUint64 {
		return math.MaxUint64
	}
	pos := n + 1
	work := pos
	if ri.positions != 0 {
		work = min(pos, ri.positions)
	}
	ns := regexCallNs + ri.compileNs + work*ri.posNs
	if !ri.onePass && ri.insts <= backtrackMaxProg {
		ns += min((b+1)*uint64(ri.insts), backtrackMaxBits) / backtrackClearBitsPerNs
	}
	return (ns + regexNsPerUnit - 1) / regexNsPerUnit
}

// costOf returns the cost in units of matching s.
func (ri *regexInfo) costOf(s string) uint64 {
	return ri.cost(uint64(utf8.RuneCountInString(s)), uint64(len(s)))
}

// dynamicRegex is the cost model of a pattern that is not a constant, of at most patternLen code
// points (regexp/syntax parses a code point at a time; the costly constructs are ASCII).
func dynamicRegex(patternLen uint64) *regexInfo {
	if patternLen >= regexMaxInput {
		return &regexInfo{insts: maxRegexProgramSize, compileNs: math.MaxUint64}
	}
	return &regexInfo{
		insts:     maxRegexProgramSize,
		posNs:     maxRegexProgramSize * maxInstNs,
		compileNs: patternLen * regexCompileNsPerByte,
	}
}

// regexProgram compiles a pattern as regexp.Compile does (Perl syntax, simplified), to the program
// that regexp runs.
func regexProgram(pattern string) (*syntax.Prog, error) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil, err
	}
	return syntax.Compile(re.Simplify())
}

// analyzeRegex compiles a constant pattern and computes its cost model.
func analyzeRegex(pattern string) (*regexInfo, error) {
	budget := regexAnalysisBudget
	return analyzeRegexWithin(pattern, &budget)
}

// analyzeRegexWithin is analyzeRegex exploring the automaton within *budget (at most
// regexAnalysisBudget of it), which it decreases by the work done.
func analyzeRegexWithin(pattern string, budget *int) (*regexInfo, error) {
	prog, err := regexProgram(pattern)
	if err != nil {
		return nil, err
	}
	if len(prog.Inst) > maxRegexProgramSize {
		return nil, fmt.Errorf("the regular expression compiles to %d instructions; at most %d are allowed", len(prog.Inst), maxRegexProgramSize)
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, err
	}
	onePass := isOnePass(re)
	posNs, positions := positionWork(prog, onePass, budget)
	runes := 0
	for i := range prog.Inst {
		runes += len(prog.Inst[i].Rune)
	}
	return &regexInfo{re: re, insts: len(prog.Inst), runes: runes, posNs: posNs, positions: positions, onePass: onePass}, nil
}

// isOnePass reports whether regexp runs re with its one-pass engine. regexp does not export this;
// it is read from the unexported field, and taken as false (the more expensive case) should the
// field not be found (TestRegexOnePassDetected fails then).
func isOnePass(re *regexp.Regexp) bool {
	f := reflect.ValueOf(re).Elem().FieldByName("onepass")
	return f.IsValid() && f.Kind() == reflect.Pointer && !f.IsNil()
}

// instNs is the cost of visiting an instruction.
func instNs(i *syntax.Inst, onePass bool) uint64 {
	ns, step := uint64(regexVisitNs), uint64(regexRangeNs)
	if onePass {
		ns, step = regexOnePassVisitNs, 2*regexRangeNs
	}
	if i.Op != syntax.InstRune {
		return ns
	}
	ranges := uint64(len(i.Rune) / 2)
	switch {
	case len(i.Rune) == 1 && syntax.Flags(i.Arg)&syntax.FoldCase != 0:
		ns += regexFoldNs
	case ranges <= 1:
	case ranges <= 4:
		ns += step * ranges
	default:
		ns += step * uint64(bits.Len64(ranges))
	}
	return ns
}

// maxInstNs bounds instNs: a binary search of all of Unicode's ranges.
const maxInstNs = regexVisitNs + regexRangeNs*2*22

func consumesRune(op syntax.InstOp) bool {
	switch op {
	case syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
		return true
	}
	return false
}

func matchesRune(i *syntax.Inst, r rune) bool {
	switch i.Op {
	case syntax.InstRune:
		return i.MatchRune(r)
	case syntax.InstRune1:
		return r == i.Rune[0]
	case syntax.InstRuneAny:
		return true
	case syntax.InstRuneAnyNotNL:
		return r != '\n'
	}
	return false
}

// positionWork returns the largest weighted set of instructions that the Pike VM visits at one
// input position, over the automaton states reachable on any input (see the comment on the cost
// constants), or the weight of the whole program if exploring the states takes too long; and, for
// a pattern anchored at the start whose automaton has no cycle (^/admin, ^(GET|HEAD)$), the
// number of input positions at which there is any work (0: no such bound).
func positionWork(prog *syntax.Prog, onePass bool, shared *int) (posNs, positions uint64) {
	n := len(prog.Inst)
	weight := make([]uint64, n)
	var whole uint64
	var runeInsts []uint32
	for pc := range prog.Inst {
		weight[pc] = instNs(&prog.Inst[pc], onePass)
		whole += weight[pc]
		if consumesRune(prog.Inst[pc].Op) {
			runeInsts = append(runeInsts, uint32(pc))
		}
	}
	budget := min(*shared, regexAnalysisBudget)
	budgetAtStart := budget
	defer func() { *shared -= budgetAtStart - max(budget, 0) }()

	// Partition the runes into classes that every instruction treats alike: the starts of the
	// ranges (and the case-folded variants of single runes) cut the code space into segments,
	// and segments that the same instructions match form one class. Instructions that test the
	// same runes (a class repeated in the pattern) are grouped, and tested once.
	type group struct {
		inst *syntax.Inst
		pcs  []uint32
	}
	type groupKey struct {
		op          syntax.InstOp
		fold        bool
		n           int
		first, last rune
	}
	var groups []group
	byKey := map[groupKey][]int{}
	bounds := []rune{0}
runes:
	for _, pc := range runeInsts {
		i := &prog.Inst[pc]
		fold := i.Op == syntax.InstRune && len(i.Rune) == 1 && syntax.Flags(i.Arg)&syntax.FoldCase != 0
		key := groupKey{op: i.Op, fold: fold, n: len(i.Rune)}
		if len(i.Rune) > 0 {
			key.first, key.last = i.Rune[0], i.Rune[len(i.Rune)-1]
		}
		for _, g := range byKey[key] {
			budget -= len(i.Rune)
			if slices.Equal(groups[g].inst.Rune, i.Rune) {
				groups[g].pcs = append(groups[g].pcs, pc)
				continue runes
			}
		}
		byKey[key] = append(byKey[key], len(groups))
		groups = append(groups, group{inst: i, pcs: []uint32{pc}})
		switch i.Op {
		case syntax.InstRune:
			if len(i.Rune) == 1 {
				r0 := i.Rune[0]
				bounds = append(bounds, r0, r0+1)
				if fold {
					for r := unicode.SimpleFold(r0); r != r0; r = unicode.SimpleFold(r) {
						bounds = append(bounds, r, r+1)
					}
				}
				break
			}
			for j := 0; j+1 < len(i.Rune); j += 2 {
				bounds = append(bounds, i.Rune[j], i.Rune[j+1]+1)
			}
		case syntax.InstRune1:
			bounds = append(bounds, i.Rune[0], i.Rune[0]+1)
		case syntax.InstRuneAnyNotNL:
			bounds = append(bounds, '\n', '\n'+1)
		}
		if len(bounds) > budget {
			return whole, 0
		}
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)
	for len(bounds) > 0 && bounds[len(bounds)-1] > unicode.MaxRune {
		bounds = bounds[:len(bounds)-1]
	}
	budget -= len(bounds) * len(groups)
	if budget < 0 {
		return whole, 0
	}
	var classes [][]uint32 // the rune instructions that match each class
	seenClass := map[string]bool{}
	sig := make([]byte, (len(groups)+7)/8)
	var members []uint32
	for _, r := range bounds {
		clear(sig)
		members = members[:0]
		for j, g := range groups {
			if matchesRune(g.inst, r) {
				sig[j/8] |= 1 << (j % 8)
				members = append(members, g.pcs...)
			}
		}
		if len(members) == 0 || seenClass[string(sig)] {
			continue
		}
		seenClass[string(sig)] = true
		classes = append(classes, slices.Clone(members))
	}

	// Explore the sets of instructions, breadth first.
	anchored := prog.StartCond()&syntax.EmptyBeginText != 0
	mark := make([]bool, n)
	var stack []uint32
	closure := func(set []uint32, pc uint32) []uint32 {
		stack = append(stack[:0], pc)
		for len(stack) > 0 {
			pc := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if mark[pc] {
				continue
			}
			mark[pc] = true
			set = append(set, pc)
			budget--
			i := &prog.Inst[pc]
			switch i.Op {
			case syntax.InstAlt, syntax.InstAltMatch:
				stack = append(stack, i.Arg, i.Out)
			case syntax.InstCapture, syntax.InstEmptyWidth, syntax.InstNop:
				stack = append(stack, i.Out)
			}
		}
		return set
	}
	finish := func(set []uint32) (key string, work uint64) {
		// Sorting the set and keying the state cost about this much again.
		budget -= len(set) * bits.Len(uint(len(set)))
		for _, pc := range set {
			mark[pc] = false
			work += weight[pc]
		}
		slices.Sort(set)
		b := make([]byte, 0, 2*len(set))
		for _, pc := range set {
			b = append(b, byte(pc), byte(pc>>8))
		}
		return string(b), work
	}
	start := closure(nil, uint32(prog.Start))
	key, best := finish(start)
	ids := map[string]int{key: 0}
	var edges [][]int // edges[i]: the states that state i leads to
	queue := [][]uint32{start}
	inCur := make([]bool, n)
	for id := 0; id < len(queue) && best < whole; id++ {
		cur := queue[id]
		edges = append(edges, nil)
		for _, pc := range cur {
			inCur[pc] = true
		}
		for _, cl := range classes {
			var next []uint32
			advanced := false
			for _, pc := range cl {
				budget--
				if inCur[pc] {
					next = closure(next, prog.Inst[pc].Out)
					advanced = true
				}
			}
			if !advanced {
				// No thread survives this rune: the set is empty, or the start set again.
				for _, pc := range next {
					mark[pc] = false
				}
				if !anchored {
					edges[id] = append(edges[id], 0)
				}
				continue
			}
			if !anchored {
				next = closure(next, uint32(prog.Start))
			}
			key, work := finish(next)
			if budget < 0 {
				return whole, 0
			}
			to, ok := ids[key]
			if !ok {
				to = len(queue)
				ids[key] = to
				best = max(best, work)
				queue = append(queue, next)
			}
			edges[id] = append(edges[id], to)
		}
		for _, pc := range cur {
			inCur[pc] = false
		}
		if budget < 0 || len(queue) > regexAnalysisStates {
			return whole, 0
		}
	}
	if !anchored || len(edges) < len(queue) {
		return best, 0
	}
	return best, longestPath(edges)
}

// longestPath returns the number of states on the longest path from state 0 of an automaton whose
// threads all start at the beginning of the input (an anchored pattern), or 0 if the automaton has
// a cycle. It bounds the input positions at which the engines do any work: once no thread is left,
// an anchored search stops.
func longestPath(edges [][]int) uint64 {
	const (
		unvisited = iota
		onPath
		done
	)
	state := make([]uint8, len(edges))
	depth := make([]uint64, len(edges)) // states on the longest path from each state
	type frame struct{ s, next int }
	stack := []frame{{0, 0}}
	state[0] = onPath
	for len(stack) > 0 {
		f := &stack[len(stack)-1]
		if f.next < len(edges[f.s]) {
			t := edges[f.s][f.next]
			f.next++
			switch state[t] {
			case onPath:
				return 0
			case unvisited:
				state[t] = onPath
				stack = append(stack, frame{t, 0})
			}
			continue
		}
		d := uint64(0)
		for _, t := range edges[f.s] {
			d = max(d, depth[t])
		}
		depth[f.s] = d + 1
		state[f.s] = done
		stack = stack[:len(stack)-1]
	}
	return depth[0]
}

// regexPattern returns the pattern argument of a call of matches(), and whether the call is one.
func regexPattern(e celast.Expr) (celast.Expr, bool) {
	if e.Kind() != celast.CallKind {
		return nil, false
	}
	call := e.AsCall()
	if call.FunctionName() != overloads.Matches {
		return nil, false
	}
	args := call.Args()
	switch {
	case call.IsMemberFunction() && len(args) == 1:
		return args[0], true
	case !call.IsMemberFunction() && len(args) == 2:
		return args[1], true
	}
	return nil, false
}

// stringLiteral returns the value of a string literal.
func stringLiteral(e celast.Expr) (string, bool) {
	if e == nil || e.Kind() != celast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

// constantRegexes analyzes the constant patterns of the calls of matches() in an expression, and
// reports whether there is any call of matches().
func constantRegexes(a *celast.AST, analysis *regexAnalysis) (infos map[string]*regexInfo, calls bool, badExpr celast.Expr, bad error) {
	celast.PostOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		arg, ok := regexPattern(e)
		if !ok || bad != nil {
			return
		}
		calls = true
		pattern, ok := stringLiteral(arg)
		if !ok {
			return
		}
		if _, done := infos[pattern]; done {
			return
		}
		ri, err := analysis.analyze(pattern)
		if err != nil {
			badExpr, bad = arg, err
			return
		}
		if infos == nil {
			infos = map[string]*regexInfo{}
		}
		infos[pattern] = ri
	}))
	return infos, calls, badExpr, bad
}

// regexSizeValidator refuses a constant pattern whose program exceeds maxRegexProgramSize
// instructions. (cel.RegexProgramSizeLimit counts the instructions without simplifying the
// pattern first, on which regexp/syntax panics at a counted repetition such as a{2}.)
type regexSizeValidator struct{}

// Name implements cel.ASTValidator.
func (regexSizeValidator) Name() string { return "guestlist.policy.regex_program_size" }

// Validate implements cel.ASTValidator.
func (regexSizeValidator) Validate(_ *cel.Env, _ cel.ValidatorConfig, a *celast.AST, iss *cel.Issues) {
	celast.PostOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		arg, ok := regexPattern(e)
		if !ok {
			return
		}
		pattern, ok := stringLiteral(arg)
		if !ok {
			return
		}
		prog, err := regexProgram(pattern)
		if err != nil {
			return // cel's validator of matches() reports it
		}
		if len(prog.Inst) > maxRegexProgramSize {
			iss.ReportErrorAtID(arg.ID(), "the regular expression compiles to %d instructions; at most %d are allowed", len(prog.Inst), maxRegexProgramSize)
		}
	}))
}

// estimateMatches is the cost estimate of matches(); with the estimator of [compileRule], the
// constant patterns are those it analyzed.
func estimateMatches(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	var str, pat checker.AstNode
	switch {
	case target != nil && len(args) == 1:
		str, pat = *target, args[0]
	case target == nil && len(args) == 2:
		str, pat = args[0], args[1]
	default:
		return nil
	}
	var ri *regexInfo
	if pattern, ok := stringLiteral(pat.Expr()); ok {
		if e, ok := est.(estimator); ok {
			ri = e.regexes[pattern]
		}
		if ri == nil {
			ri, _ = analyzeRegex(pattern)
		}
	}
	if ri == nil {
		ri = dynamicRegex(sizeEstimate(est, pat).Max)
	}
	sz := sizeEstimate(est, str)
	b := stringBytes(str, sz)
	return &checker.CallEstimate{CostEstimate: checker.CostEstimate{Min: ri.cost(sz.Min, b.Min), Max: ri.cost(sz.Max, b.Max)}}
}

// errRegexNotRun ends the message of a call of matches() that regexCall did not run.
var errRegexNotRun = errors.New("not run")

// trackMatches is the run-time cost of matches(), the counterpart of estimateMatches.
func trackMatches(regexes map[string]*regexInfo) interpreter.FunctionTracker {
	return func(args []ref.Val, result ref.Val) *uint64 {
		c := uint64(1)
		if err, ok := result.(*types.Err); ok && errors.Is(err, errRegexNotRun) {
			return &c
		}
		if len(args) == 2 {
			s, ok1 := args[0].(types.String)
			p, ok2 := args[1].(types.String)
			if ok1 && ok2 {
				ri := regexes[string(p)]
				if ri == nil {
					ri = dynamicRegex(uint64(utf8.RuneCountInString(string(p))))
				}
				c = ri.costOf(string(s))
			}
		}
		return &c
	}
}

// regexProgramOptions make a program run matches() with regexCall: constant patterns compiled
// once (those of regexes), the others compiled and checked for size at each call. In a guarded
// program, a match is not run when its cost would take the regular expressions of the rule past
// MaxRuleCost: the call fails instead (the cost tracker sees a call's cost only after the call).
// Without calls of matches() there is nothing to add (and the plan stays as cel-go makes it).
func regexProgramOptions(calls bool, regexes map[string]*regexInfo, guarded bool) []cel.ProgramOption {
	if !calls {
		return nil
	}
	factory := func(call interpreter.InterpretableCall, pattern string) (interpreter.InterpretableCall, error) {
		ri := regexes[pattern]
		if ri == nil {
			var err error
			if ri, err = analyzeRegex(pattern); err != nil {
				return nil, err
			}
		}
		return &regexCall{id: call.ID(), function: call.Function(), overload: call.OverloadID(), args: call.Args(), rx: ri, guarded: guarded}, nil
	}
	return []cel.ProgramOption{
		cel.OptimizeRegex(
			&interpreter.RegexOptimization{Function: overloads.Matches, OverloadID: overloads.Matches, RegexIndex: 1, Factory: factory},
			&interpreter.RegexOptimization{Function: overloads.Matches, OverloadID: overloads.MatchesString, RegexIndex: 1, Factory: factory},
		),
		// The calls with a pattern that is not a constant (the optimization above takes the
		// others, replacing what this returns for them).
		cel.CustomDecoratorV2(func(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
			call, ok := i.(interpreter.InterpretableCall)
			if !ok || (call.OverloadID() != overloads.Matches && call.OverloadID() != overloads.MatchesString) || len(call.Args()) != 2 {
				return i, nil
			}
			return &regexCall{id: call.ID(), function: call.Function(), overload: call.OverloadID(), args: call.Args(), guarded: guarded}, nil
		}),
	}
}

// regexCall is a call of matches().
type regexCall struct {
	id                 int64
	function, overload string
	args               []interpreter.InterpretableV2
	rx                 *regexInfo // nil: the pattern is not a constant
	guarded            bool
}

var _ interpreter.InterpretableCall = (*regexCall)(nil)

// ID implements interpreter.Interpretable.
func (c *regexCall) ID() int64 { return c.id }

// Function implements interpreter.InterpretableCall.
func (c *regexCall) Function() string { return c.function }

// OverloadID implements interpreter.InterpretableCall.
func (c *regexCall) OverloadID() string { return c.overload }

// Args implements interpreter.InterpretableCall.
func (c *regexCall) Args() []interpreter.InterpretableV2 { return c.args }

// Eval implements interpreter.Interpretable.
func (c *regexCall) Eval(a interpreter.Activation) ref.Val { return c.Exec(interpreter.AsFrame(a)) }

// Exec implements interpreter.InterpretableV2.
func (c *regexCall) Exec(frame *interpreter.ExecutionFrame) ref.Val {
	sv := c.args[0].Exec(frame)
	if types.IsUnknownOrError(sv) {
		return sv
	}
	pv := c.args[1].Exec(frame)
	if types.IsUnknownOrError(pv) {
		return pv
	}
	s, ok1 := sv.(types.String)
	p, ok2 := pv.(types.String)
	if !ok1 || !ok2 {
		return types.NewErrWithNodeID(c.id, "no such overload: %s", c.function)
	}
	ri := c.rx
	if ri == nil {
		ri = dynamicRegex(uint64(utf8.RuneCountInString(string(p))))
	}
	if c.guarded {
		cost := ri.costOf(string(s))
		left := uint64(MaxRuleCost)
		st := stateOf(frame.Activation)
		if st != nil {
			left = st.regexLeft
		}
		if cost > left {
			return types.NewErrWithNodeID(c.id, "matches() on an input of %d bytes would exceed the cost limit of %d (its cost: %d): %w", len(s), MaxRuleCost, cost, errRegexNotRun)
		}
		if st != nil {
			st.regexLeft -= cost
		}
	}
	re := ri.re
	if re == nil {
		prog, err := regexProgram(string(p))
		if err == nil && len(prog.Inst) > maxRegexProgramSize {
			err = fmt.Errorf("the regular expression compiles to %d instructions; at most %d are allowed", len(prog.Inst), maxRegexProgramSize)
		}
		if err == nil {
			re, err = regexp.Compile(string(p))
		}
		if err != nil {
			return types.NewErrWithNodeID(c.id, "%v", err)
		}
	}
	return types.Bool(re.MatchString(string(s)))
}

// stateOf finds the evaluation state among the activations of a frame.
func stateOf(a interpreter.Activation) *evalState {
	for a != nil {
		if st, ok := a.(*evalState); ok {
			return st
		}
		a = a.Parent()
	}
	return nil
}
