package policy

import (
	"math"
	"strings"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/checker"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// Prices of the calls whose work cel-go's cost model does not see.
//
// cel-go charges one unit for a call it has no price for, and several calls of its standard
// library and of the strings extension do work that grows with their input: they parse it,
// convert it to runes, copy it, or load a file. Measured on the machine of docs/benchmarks.md (ns
// a byte of input, the slowest input found, best of 5): duration() 8.8 (a string of "0s"
// repeated), double() 3.5, int() and uint() 1.2, timestamp() 1.3 (a fraction of 4,000 digits);
// indexOf() and lastIndexOf() 3.2 a code point, as they convert the whole string to runes even to
// find the empty string (cel-go priced them at the string's length times the needle's, 0 for the
// empty string); strings.quote() 28 (invalid UTF-8, replaced by U+FFFD twice over), priced by
// cel-go at 0.1 a byte; a time zone given by name (getHours('Europe/Paris')), which Go's
// time.LoadLocation reads from the zone database at every call, 11 µs (31 µs for a name that is not
// in it); the equality of lists and maps, priced by cel-go at 0.1 an entry, which compares their
// strings, and first built request.headers as a map of lower-case names and joined values at every
// comparison (21 µs for 64 headers of 4 KiB, 104 µs when each was sent twice);
// format(), priced by its format string, whose result may hold all of request.headers. A policy
// filled to MaxPolicyCost with such calls took 24 to 183 ms a request on input within the bounds
// (2.1 s for format() of the headers), against about 1 ms for the slowest policies the limits were
// set for, and up to 2.7 s on a header of 60 KB beyond the bounds, where the trackers charged one
// unit a call whatever its length.
//
// They are priced here, in the estimate and the trackers alike, by what they do: a conversion from
// a string parseUnits units a byte of it; indexOf() and lastIndexOf() 0.1 a code point of the
// string for its conversion to runes besides cel-go's price of the search (the needle counted as
// at least one code point); strings.quote() 1.6 a byte of its input; a time zone given by name
// timeZoneUnits; the equality of lists and maps 0.1 a unit of their measure (see equalityCost),
// request.headers built once per evaluation for it (headerMap.lowered).
// format(), whose result's length the estimate cannot bound, is tracked at run time (see
// compileRule), and its tracker charges its result. On the slowest input found, a policy of each
// filled to MaxPolicyCost now takes 0.3 to 1.2 ms within the bounds and at most 2.8 ms beyond them
// (TestPricedPoliciesAreFast).
const (
	// timeZoneUnits is the price of loading a time zone by name (about 40 µs at the 40 ns a unit
	// of regular expressions; 11 to 31 µs measured).
	timeZoneUnits = 1000
)

// parseUnits are the prices of the conversions from a string, in units a byte of the string.
var parseUnits = map[string]float64{
	overloads.StringToDuration:  0.5,
	overloads.StringToDouble:    0.25,
	overloads.StringToInt:       0.1,
	overloads.StringToUint:      0.1,
	overloads.StringToTimestamp: 0.1,
}

// runeSearches are the calls of indexOf() and lastIndexOf(), which convert the string to runes.
var runeSearches = []string{
	"string_index_of_string", "string_index_of_string_int",
	"string_last_index_of_string", "string_last_index_of_string_int",
}

// timeZoneCalls are the calls of the timestamp functions given a time zone.
var timeZoneCalls = []string{
	overloads.TimestampToYearWithTz, overloads.TimestampToMonthWithTz,
	overloads.TimestampToDayOfYearWithTz, overloads.TimestampToDayOfMonthZeroBasedWithTz,
	overloads.TimestampToDayOfMonthOneBasedWithTz, overloads.TimestampToDayOfWeekWithTz,
	overloads.TimestampToHoursWithTz, overloads.TimestampToMinutesWithTz,
	overloads.TimestampToSecondsWithTz, overloads.TimestampToMillisecondsWithTz,
}

// priceEstimators are the estimates of the calls priced here. They are registered after
// ext.Strings, whose estimates of indexOf() and lastIndexOf() they replace.
func priceEstimators() []checker.CostOption {
	var opts []checker.CostOption
	for id, perByte := range parseUnits {
		opts = append(opts, checker.OverloadCostEstimate(id, estimateParse(perByte)))
	}
	for _, id := range runeSearches {
		opts = append(opts, checker.OverloadCostEstimate(id, estimateRuneSearch))
	}
	for _, id := range timeZoneCalls {
		opts = append(opts, checker.OverloadCostEstimate(id, estimateTimeZone))
	}
	return append(opts,
		checker.OverloadCostEstimate(overloads.ExtQuoteString, estimateQuote),
		checker.OverloadCostEstimate(overloads.Equals, estimateEquality),
		checker.OverloadCostEstimate(overloads.NotEquals, estimateEquality))
}

// priceTrackers are the run-time counterparts of priceEstimators, and the tracker of format().
func priceTrackers() []interpreter.CostTrackerOption {
	var opts []interpreter.CostTrackerOption
	for id, perByte := range parseUnits {
		opts = append(opts, interpreter.OverloadCostTracker(id, trackParse(perByte)))
	}
	for _, id := range runeSearches {
		opts = append(opts, interpreter.OverloadCostTracker(id, trackRuneSearch))
	}
	for _, id := range timeZoneCalls {
		opts = append(opts, interpreter.OverloadCostTracker(id, trackTimeZone))
	}
	return append(opts,
		interpreter.OverloadCostTracker(overloads.ExtQuoteString, trackQuote),
		interpreter.OverloadCostTracker(overloads.ExtFormatString, trackFormat),
		interpreter.OverloadCostTracker(overloads.Equals, trackEquality),
		interpreter.OverloadCostTracker(overloads.NotEquals, trackEquality))
}

// units returns ⌈n × factor⌉, saturating.
func units(n uint64, factor float64) uint64 {
	f := math.Ceil(float64(n) * factor)
	if f >= math.MaxUint64 {
		return math.MaxUint64
	}
	return uint64(f)
}

// stringArg returns the string argument i of a tracked call ("" when it is not a string).
func stringArg(args []ref.Val, i int) string {
	if i < len(args) {
		if s, ok := args[i].(types.String); ok {
			return string(s)
		}
	}
	return ""
}

// estimateParse prices a conversion from a string (int(), uint(), double(), duration(),
// timestamp()) at perByte units a byte of the string, besides the call.
func estimateParse(perByte float64) checker.FunctionEstimator {
	return func(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
		if target != nil || len(args) != 1 {
			return nil
		}
		b := stringBytes(args[0], sizeEstimate(est, args[0]))
		c := checker.CostEstimate{Min: cost.SafeAdd(1, units(b.Min, perByte)), Max: cost.SafeAdd(1, units(b.Max, perByte))}
		return &checker.CallEstimate{CostEstimate: c}
	}
}

func trackParse(perByte float64) interpreter.FunctionTracker {
	return func(args []ref.Val, _ ref.Val) *uint64 {
		c := cost.SafeAdd(1, units(uint64(len(stringArg(args, 0))), perByte))
		return &c
	}
}

// runeSearchCost is the price of indexOf() or lastIndexOf() on a string of n code points for a
// needle of m: cel-go's price of the search (0.1 × n × m), with the needle counted as at least one
// code point, and 0.1 × n for the conversion of the string to runes, besides the call.
func runeSearchCost(n, m uint64) uint64 {
	return cost.SafeAdd(1, units(cost.SafeMultiply(n, max(m, 1)), 0.1), units(n, 0.1))
}

func estimateRuneSearch(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	if target == nil || len(args) < 1 {
		return nil
	}
	n, m := sizeEstimate(est, *target), sizeEstimate(est, args[0])
	c := checker.CostEstimate{Min: runeSearchCost(n.Min, m.Min), Max: runeSearchCost(n.Max, m.Max)}
	return &checker.CallEstimate{CostEstimate: c}
}

func trackRuneSearch(args []ref.Val, _ ref.Val) *uint64 {
	n := uint64(utf8.RuneCountInString(stringArg(args, 0)))
	m := uint64(utf8.RuneCountInString(stringArg(args, 1)))
	c := runeSearchCost(n, m)
	return &c
}

// loadsTimeZone reports whether a time zone argument is a name that time.LoadLocation reads from
// the zone database: not an offset ("+01:00", which holds a colon) and not UTC (the empty name,
// "UTC" and "Local" are answered without reading anything).
func loadsTimeZone(tz string) bool {
	switch tz {
	case "", "UTC", "Local":
		return false
	}
	return !strings.Contains(tz, ":")
}

// timeZoneCost is the price of a timestamp function given the time zone tz (of b bytes): the
// call, 0.1 a byte of tz (an offset is parsed), and timeZoneUnits when loads.
func timeZoneCost(b uint64, loads bool) uint64 {
	c := cost.SafeAdd(1, units(b, 0.1))
	if loads {
		c = cost.SafeAdd(c, timeZoneUnits)
	}
	return c
}

func estimateTimeZone(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	if target == nil || len(args) != 1 {
		return nil
	}
	if tz, ok := stringLiteral(args[0].Expr()); ok {
		c := timeZoneCost(uint64(len(tz)), loadsTimeZone(tz))
		return &checker.CallEstimate{CostEstimate: checker.FixedCostEstimate(c)}
	}
	b := stringBytes(args[0], sizeEstimate(est, args[0]))
	return &checker.CallEstimate{CostEstimate: checker.CostEstimate{Min: timeZoneCost(b.Min, false), Max: timeZoneCost(b.Max, true)}}
}

func trackTimeZone(args []ref.Val, _ ref.Val) *uint64 {
	tz := stringArg(args, 1)
	c := timeZoneCost(uint64(len(tz)), loadsTimeZone(tz))
	return &c
}

// quoteCost is the price of strings.quote() of b bytes: the call and 1.6 units a byte (cel-go's 0.1
// for reading it, and the copy that replaces invalid UTF-8 and the one that escapes: 28 ns a byte
// of invalid UTF-8, each byte then 3 bytes twice over, 12 ns a byte of quotes, each escaped).
func quoteCost(b uint64) uint64 {
	return cost.SafeAdd(1, units(b, 1.6))
}

// estimateQuote keeps cel-go's size of the result (at most 2n + 2 code points: every one escaped,
// and the quotes).
func estimateQuote(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	if target != nil || len(args) != 1 {
		return nil
	}
	sz := sizeEstimate(est, args[0])
	b := stringBytes(args[0], sz)
	out := checker.SizeEstimate{Min: cost.SafeAdd(sz.Min, 2), Max: cost.SafeAdd(cost.SafeMultiply(sz.Max, 2), 2)}
	c := checker.CostEstimate{Min: quoteCost(b.Min), Max: quoteCost(b.Max)}
	return &checker.CallEstimate{CostEstimate: c, ResultSize: &out}
}

func trackQuote(args []ref.Val, _ ref.Val) *uint64 {
	c := quoteCost(uint64(len(stringArg(args, 0))))
	return &c
}

// trackFormat charges format() its format string as cel-go does (0.1 a code point), and its result
// (1 a code point): the work of formatting the arguments, which may be whole lists and maps of the
// input, is in proportion to it.
func trackFormat(args []ref.Val, result ref.Val) *uint64 {
	out, _ := result.(types.String)
	c := cost.SafeAdd(1, units(uint64(utf8.RuneCountInString(stringArg(args, 0))), 0.1), uint64(utf8.RuneCountInString(string(out))))
	return &c
}

// callsFormat reports whether an expression calls format(), whose result the estimate cannot
// bound: such a rule is evaluated with run-time cost tracking (compileRule).
func callsFormat(a *cel.Ast) bool {
	for _, r := range a.NativeRep().ReferenceMap() {
		for _, id := range r.OverloadIDs {
			if id == overloads.ExtFormatString {
				return true
			}
		}
	}
	return false
}

// The equality of lists and maps: cel-go charges 0.1 an entry of the smaller (as for the code
// points of strings), but comparing them compares their entries, strings of up to 4 KiB. Their
// measure is their entries plus the code points of their strings (keys and values), nested lists
// and maps likewise; equality costs 0.1 a unit of the smaller measure besides the call, as the
// comparison of strings does. (request.headers is compared as a map of lower-case names and
// joined values, built once per evaluation: see headerMap.lowered.)

// equalityCost is the price of comparing containers of measures ml and mr.
func equalityCost(ml, mr uint64) uint64 {
	return cost.SafeAdd(1, units(min(ml, mr), 0.1))
}

// mayBeContainer reports whether a value of type t may be a list or a map.
func mayBeContainer(t *types.Type) bool {
	switch t.Kind() {
	case types.ListKind, types.MapKind, types.DynKind, types.AnyKind:
		return true
	}
	return false
}

func estimateEquality(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	if target != nil || len(args) != 2 || !mayBeContainer(args[0].Type()) || !mayBeContainer(args[1].Type()) {
		return nil // the default: 0.1 a code point of the shorter string, 1 for other values
	}
	ml, mr := nodeMeasure(est, args[0]), nodeMeasure(est, args[1])
	return &checker.CallEstimate{CostEstimate: checker.CostEstimate{Min: 1, Max: equalityCost(ml, mr)}}
}

// nodeMeasure bounds the measure of the value of n (unknownSize when it cannot): for a field of
// the input, by its bounds; for a literal, exactly.
func nodeMeasure(est checker.CostEstimator, n checker.AstNode) uint64 {
	if p := n.Path(); len(p) > 0 {
		entries := sizeEstimate(est, n).Max
		item := func(which string) uint64 {
			if sz := est.EstimateSize(pathNode(append(p[:len(p):len(p)], which))); sz != nil {
				return sz.Max
			}
			return unknownSize
		}
		switch n.Type().Kind() {
		case types.ListKind:
			return cost.SafeMultiply(entries, cost.SafeAdd(1, item("@items")))
		case types.MapKind:
			return cost.SafeMultiply(entries, cost.SafeAdd(1, item("@keys"), item("@values")))
		case types.StringKind:
			return entries
		}
		return unknownSize
	}
	return literalMeasure(n.Expr(), 0)
}

// literalMeasure is the measure of a literal, list literal or map literal of literals;
// unknownSize for other expressions.
func literalMeasure(e celast.Expr, depth int) uint64 {
	if e == nil || depth > maxNesting {
		return unknownSize
	}
	switch e.Kind() {
	case celast.LiteralKind:
		if s, ok := e.AsLiteral().(types.String); ok {
			return uint64(utf8.RuneCountInString(string(s)))
		}
		return 1
	case celast.ListKind:
		m := uint64(0)
		for _, el := range e.AsList().Elements() {
			m = cost.SafeAdd(m, 1, literalMeasure(el, depth+1))
		}
		return m
	case celast.MapKind:
		m := uint64(0)
		for _, entry := range e.AsMap().Entries() {
			if entry.Kind() != celast.MapEntryKind {
				return unknownSize
			}
			me := entry.AsMapEntry()
			m = cost.SafeAdd(m, 1, literalMeasure(me.Key(), depth+1), literalMeasure(me.Value(), depth+1))
		}
		return m
	}
	return unknownSize
}

// valueMeasure is the measure of a value, and whether it is a list or a map.
func valueMeasure(v ref.Val, depth int) (uint64, bool) {
	switch v := v.(type) {
	case types.String:
		return uint64(utf8.RuneCountInString(string(v))), false
	case *stringList:
		m := uint64(len(v.s))
		for _, s := range v.s {
			m = cost.SafeAdd(m, uint64(utf8.RuneCountInString(s)))
		}
		return m, true
	case *headerMap:
		m := uint64(0)
		for k, vs := range v.h {
			if len(vs) == 0 {
				continue
			}
			m = cost.SafeAdd(m, 1, uint64(utf8.RuneCountInString(k)), uint64(2*(len(vs)-1)))
			for _, s := range vs {
				m = cost.SafeAdd(m, uint64(utf8.RuneCountInString(s)))
			}
		}
		return m, true
	case traits.Lister:
		n, _ := v.Size().(types.Int)
		m := uint64(max(n, 0))
		for i := types.Int(0); i < n; i++ {
			em, _ := valueMeasure(v.Get(i), depth+1)
			m = cost.SafeAdd(m, em)
		}
		return m, true
	case traits.Mapper:
		n, _ := v.Size().(types.Int)
		m := uint64(max(n, 0))
		for it := v.Iterator(); it.HasNext() == types.True; {
			k := it.Next()
			km, _ := valueMeasure(k, depth+1)
			vm, _ := valueMeasure(v.Get(k), depth+1)
			m = cost.SafeAdd(m, km, vm)
		}
		return m, true
	}
	return 1, false
}

func trackEquality(args []ref.Val, _ ref.Val) *uint64 {
	if len(args) != 2 {
		return nil
	}
	ml, lc := valueMeasure(args[0], 0)
	mr, rc := valueMeasure(args[1], 0)
	if !lc || !rc {
		return nil // the default
	}
	c := equalityCost(ml, mr)
	return &c
}

// Calls whose overload is chosen at run time: when the checker leaves more than one candidate (an
// argument of type dyn: int(dyn(x)), dyn(x) + dyn(y), size(dyn(x)), x in dyn(l)), cel-go's cost
// tracker sees no overload id, so neither the trackers above nor cel-go's own apply, and it
// charges one unit whatever the call does (the estimate takes the largest of the candidates'
// prices). dynamicCalls charges such a call by its arguments and result instead:
// dynamicUnitsPerByte a byte of its strings (the dearest parse of a string above), 0.1 a unit of
// the measure of its lists and maps (as their equality), the code points of a string it makes,
// and timeZoneUnits for a time zone it loads, besides the call.
const dynamicUnitsPerByte = 0.5

// dynamicCalls is the run-time price of calls whose overload is chosen at run time (see above),
// for the tracked programs (cel.CostTracking). It prices no other call.
type dynamicCalls struct{}

// timestampAccessors are the timestamp functions that take a time zone.
var timestampAccessors = map[string]bool{
	"getFullYear": true, "getMonth": true, "getDayOfYear": true, "getDayOfMonth": true, "getDate": true,
	"getDayOfWeek": true, "getHours": true, "getMinutes": true, "getSeconds": true, "getMilliseconds": true,
}

// CallCost implements interpreter.ActualCostEstimator.
func (dynamicCalls) CallCost(function, overloadID string, args []ref.Val, result ref.Val) *uint64 {
	if overloadID != "" {
		return nil // a tracker above, or cel-go's own price
	}
	c := uint64(1)
	for _, a := range args {
		switch a := a.(type) {
		case types.String:
			c = cost.SafeAdd(c, units(uint64(len(a)), dynamicUnitsPerByte))
		case types.Bytes:
			c = cost.SafeAdd(c, units(uint64(len(a)), dynamicUnitsPerByte))
		default:
			if m, container := valueMeasure(a, 0); container {
				c = cost.SafeAdd(c, units(m, 0.1))
			}
		}
	}
	if s, ok := result.(types.String); ok {
		c = cost.SafeAdd(c, uint64(utf8.RuneCountInString(string(s))))
	}
	if timestampAccessors[function] && len(args) == 2 {
		if tz, ok := args[1].(types.String); ok && loadsTimeZone(string(tz)) {
			c = cost.SafeAdd(c, timeZoneUnits)
		}
	}
	return &c
}
