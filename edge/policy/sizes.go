package policy

import (
	"unicode/utf8"

	"cel.dev/cel-go/checker"
	"cel.dev/cel-go/common"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
)

// Sizes of strings in the cost estimate, and the bytes they stand for.
//
// The cost estimate sizes strings in code points, as cel-go does (constants, and the results of
// its functions: strings.quote at most 2n + 2, a code point escaped or not and an invalid byte
// becoming one U+FFFD; lowerAscii, upperAscii and reverse n; substring(i, j) j - i; replace
// (n+1)·(r+1)) and as CEL's size() counts them; the bounds of the input's fields are in bytes,
// which bound their code points too. The run-time trackers of this package count the same:
// matches() is charged by the code points of its input, the steps Go's regexp takes (see "The
// cost of matches()" in regex.go), and size() of a string by its code points. Where bytes matter
// (the backtracker's set-up clears a bit per byte and instruction), stringBytes bounds them: a
// field's bound, or 4 bytes a code point.
//
// The trackers used to count bytes, of which strings.quote(x) has up to 3 for each byte of x (an
// invalid byte becomes U+FFFD, 3 bytes) where the estimate counts at most 2 code points, and so
// have lowerAscii(), upperAscii(), reverse() and substring() (which convert to runes): a tracked
// evaluation was charged up to 1.5 and 3 times what the estimate allowed for matches() and size()
// on such strings (the time of a match goes by code points, so it stayed within the estimate).
//
// cel-go's estimate of join() is wrong: it takes the number of entries of the list for the
// length of each (32 DNS names of 253 bytes joined with ',' gave 65, not 8,127), for the
// result's size and the allocation it charges, so that cert.dns_names.join(',').matches(...) was
// priced at a 125th of its work. estimateJoin replaces it. format() has no bound (cel-go prices
// what reads it at the maximum); cel-go's other estimates of strings bound their code points.
// TestStringSizesBoundTheResult and TestDerivedStringsTrackedWithinEstimate check them on input
// built to make them as long as possible.

// stringBytes bounds the bytes of the string n, of sz code points: a field of the input (a node
// with a path: its bound is in bytes) has at most sz bytes, any other string 4 bytes a code point.
func stringBytes(n checker.AstNode, sz checker.SizeEstimate) checker.SizeEstimate {
	if len(n.Path()) > 0 {
		return sz
	}
	return checker.SizeEstimate{Min: sz.Min, Max: cost.SafeMultiply(sz.Max, utf8.UTFMax)}
}

// joinEstimators replace cel-go's estimates of join().
func joinEstimators() []checker.CostOption {
	return []checker.CostOption{
		checker.OverloadCostEstimate("list_join", estimateJoin),
		checker.OverloadCostEstimate("list_join_string", estimateJoin),
	}
}

// estimateJoin is join() and join(separator) of a list of strings: cel-go's traversal of the list
// and the call, and an allocation of the result (as cel-go's run-time tracker charges it), of at
// most the entries times the longest entry, plus a separator between each two. The longest entry
// is known for a list of cert (the bounds of the package documentation) and for a list literal of
// string constants; for other lists it is not, and neither is the result's size (what reads it
// is then priced at its maximum: Compile refuses it, CompileStored tracks its cost).
func estimateJoin(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	if target == nil || len(args) > 1 {
		return nil
	}
	entries := sizeEstimate(est, *target)
	sep := checker.FixedSizeEstimate(0)
	if len(args) == 1 {
		sep = sizeEstimate(est, args[0])
	}
	entry := listEntrySize(est, *target)
	out := checker.SizeEstimate{Min: 0, Max: cost.SafeMultiply(entries.Max, entry)}
	if entries.Max > 0 {
		out.Max = cost.SafeAdd(out.Max, cost.SafeMultiply(entries.Max-1, sep.Max))
	}
	c := entries.Add(checker.FixedSizeEstimate(1)).MultiplyByCostFactor(common.StringTraversalCostFactor).Add(out.AsCost()).Add(checker.FixedCostEstimate(1))
	return &checker.CallEstimate{CostEstimate: c, ResultSize: &out}
}

// listEntrySize bounds the size of each entry of a list: for a list of the input (a field of
// cert, or of a comprehension over one), its bound; for a list literal of string constants, the
// longest; otherwise unknown (math.MaxUint64). (The entries of a list literal such as
// [request.host, request.path] are not looked up: a comprehension variable may shadow request.)
func listEntrySize(est checker.CostEstimator, list checker.AstNode) uint64 {
	if p := list.Path(); len(p) > 0 {
		if sz := est.EstimateSize(pathNode(append(p[:len(p):len(p)], "@items"))); sz != nil {
			return sz.Max
		}
	}
	e := list.Expr()
	if e.Kind() != celast.ListKind {
		return unknownSize
	}
	var largest uint64
	for _, el := range e.AsList().Elements() {
		s, ok := stringLiteral(el)
		if !ok {
			return unknownSize
		}
		largest = max(largest, uint64(utf8.RuneCountInString(s)))
	}
	return largest
}

// unknownSize is the size of a value whose size is not known.
const unknownSize = ^uint64(0)

// pathNode is an AstNode that is only a path, for asking the estimator the size of a field. Its
// methods Path, Type, Expr and ComputedSize implement checker.AstNode.
type pathNode []string

func (p pathNode) Path() []string                    { return p }
func (pathNode) Type() *types.Type                   { return types.DynType }
func (pathNode) Expr() celast.Expr                   { return nil }
func (pathNode) ComputedSize() *checker.SizeEstimate { return nil }
