package policy

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/checker"
	"cel.dev/cel-go/common"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"
)

// CEL type names of the variables and their nested messages.
const (
	certTypeName    = "guestlist.policy.Cert"
	subjectTypeName = "guestlist.policy.Subject"
	issuerTypeName  = "guestlist.policy.Issuer"
	requestTypeName = "guestlist.policy.Request"
)

// Limits on policies and expressions. They bound the work a tenant's policy can cause at the edge.
const (
	// MaxRules is the maximum number of rules in a policy.
	MaxRules = 64
	// MaxExpressionBytes is the maximum length of one expression.
	MaxExpressionBytes = 4096
	// MaxRuleCost is the maximum estimated worst-case cost of one rule, in CEL cost units
	// (roughly one unit per elementary operation or comprehension step; string operations cost
	// 0.1 per character; a regular expression one unit per 40 ns of matching, see the package
	// documentation). The estimate assumes the input bounds listed in the package
	// documentation; a rule evaluated on input beyond them has its actual cost tracked against the
	// same limit.
	MaxRuleCost = 10_000
	// MaxPolicyCost is the maximum of the summed estimated costs of all rules of a policy, and the
	// budget of one evaluation of the whole policy.
	MaxPolicyCost = 50_000

	maxASTNodes          = 1000
	maxNesting           = 32
	maxComprehensionNest = 2
	maxRegexProgramSize  = 1000 // instructions of a regular expression's compiled program
)

// Input bounds assumed by the cost estimate (see the package documentation), in bytes unless
// noted. They cover ordinary requests and certificates; inputs beyond them are evaluated with
// run-time cost tracking.
const (
	boundListItems   = 32   // entries of each list of cert
	boundError       = 1024 // cert.error
	boundName        = 256  // common names, organizational units and organizations (X.509 allows 64 characters)
	boundSerial      = 130  // cert.serial_number
	boundFingerprint = 64   // cert.fingerprint_sha256
	boundDNSName     = 253  // each of cert.dns_names
	boundEmail       = 320  // each of cert.email_addresses
	boundURI         = 2048 // each of cert.uris
	boundHost        = 253
	boundMethod      = 32
	boundPath        = 2048
	boundHeaderCount = 64   // entries of request.headers
	boundHeaderName  = 64   // each header name
	boundHeaderValue = 4096 // each header value, after joining repeated headers with ", "
)

// field describes one field of a CEL object type.
type field struct {
	name  string
	typ   *types.Type
	get   func(st *evalState) ref.Val
	isSet func(st *evalState) bool
	// size bounds the field's size (string length or list/map entries) for the cost estimate;
	// item bounds list items (and map values); key bounds map keys.
	size, item, key uint64
}

// objType is a CEL object type backed by the evaluation state. It is registered with the CEL type
// registry as a ref.Type and types.StructTypeDescriptor, so that field selection compiles to a
// direct getter (no reflection, no maps).
type objType struct {
	name    string
	celType *types.Type
	fields  map[string]*field
	names   []string
	ftypes  map[string]*types.FieldType
}

func newObjType(name string, fields ...*field) *objType {
	t := &objType{
		name:    name,
		celType: types.NewObjectType(name, traits.FieldTesterType, traits.IndexerType),
		fields:  map[string]*field{},
		ftypes:  map[string]*types.FieldType{},
	}
	for _, f := range fields {
		f := f
		t.fields[f.name] = f
		t.names = append(t.names, f.name)
		t.ftypes[f.name] = &types.FieldType{
			Type: f.typ,
			IsSet: func(target any) bool {
				o, ok := target.(*objVal)
				return ok && f.isSet(o.st)
			},
			GetFrom: func(target any) (any, error) {
				o, ok := target.(*objVal)
				if !ok {
					return nil, fmt.Errorf("field %s.%s: unexpected value of type %T", name, f.name, target)
				}
				return f.get(o.st), nil
			},
		}
	}
	return t
}

// HasTrait implements ref.Type.
func (t *objType) HasTrait(trait int) bool { return t.celType.HasTrait(trait) }

// TypeName implements ref.Type.
func (t *objType) TypeName() string { return t.name }

// ReflectType implements types.StructTypeDescriptor; the values are not reflected.
func (t *objType) ReflectType() reflect.Type { return nil }

// FieldNames implements types.StructTypeDescriptor.
func (t *objType) FieldNames() []string { return slices.Clone(t.names) }

// FindFieldType implements types.StructTypeDescriptor.
func (t *objType) FindFieldType(name string) (*types.FieldType, bool) {
	ft, ok := t.ftypes[name]
	return ft, ok
}

// NewValue implements types.StructTypeDescriptor: the input types cannot be constructed in CEL.
func (t *objType) NewValue(types.Adapter, map[string]ref.Val) ref.Val {
	return types.NewErr("type %s cannot be constructed in an expression", t.name)
}

// Adapt implements types.StructTypeDescriptor.
func (t *objType) Adapt(_ types.Adapter, value any) ref.Val {
	if v, ok := value.(ref.Val); ok {
		return v
	}
	return types.NewErr("cannot adapt %T to %s", value, t.name)
}

// Indexes of values that are boxed at most once per evaluation (see evalState.cache).
const (
	cacheCertError = iota
	cacheSerial
	cacheFingerprint
	cacheNotBefore
	cacheNotAfter
	cacheSubjectCN
	cacheIssuerCN
	cacheHost
	cacheMethod
	cachePath
	numCached
)

// evalState.cached has a bit for each cached value.
const _ = uint(16 - numCached)

// Indexes of the string lists of the evaluation state.
const (
	listDNS = iota
	listEmail
	listURI
	listOU
	listOrg
	numLists
)

func stringField(name string, idx int, bound int, v func(in *Input) string) *field {
	return &field{
		name: name,
		typ:  types.StringType,
		size: uint64(bound),
		get: func(st *evalState) ref.Val {
			if c := st.cache[idx]; c != nil {
				return c
			}
			s := v(st.in)
			if len(s) > bound && !st.guarded {
				return st.outOfBounds()
			}
			c := ref.Val(types.String(s))
			st.cache[idx] = c
			st.cached |= 1 << idx
			return c
		},
		isSet: func(st *evalState) bool { return v(st.in) != "" },
	}
}

func boolField(name string, v func(in *Input) bool) *field {
	return &field{
		name:  name,
		typ:   types.BoolType,
		get:   func(st *evalState) ref.Val { return types.Bool(v(st.in)) },
		isSet: func(st *evalState) bool { return v(st.in) },
	}
}

func listField(name string, idx int, item int) *field {
	return &field{
		name: name,
		typ:  types.NewListType(types.StringType),
		size: boundListItems,
		item: uint64(item),
		get: func(st *evalState) ref.Val {
			l := &st.lists[idx]
			if !st.guarded && st.listsChecked&(1<<idx) == 0 {
				if !listWithin(l.s, item) {
					return st.outOfBounds()
				}
				st.listsChecked |= 1 << idx
			}
			return l
		},
		isSet: func(st *evalState) bool { return len(st.lists[idx].s) > 0 },
	}
}

func timeField(name string, idx int, v func(in *Input) time.Time) *field {
	return &field{
		name: name,
		typ:  types.TimestampType,
		get: func(st *evalState) ref.Val {
			if c := st.cache[idx]; c != nil {
				return c
			}
			c := ref.Val(types.Timestamp{Time: v(st.in)})
			st.cache[idx] = c
			st.cached |= 1 << idx
			return c
		},
		isSet: func(st *evalState) bool { return !v(st.in).IsZero() },
	}
}

var (
	subjectType = newObjType(subjectTypeName,
		stringField("common_name", cacheSubjectCN, boundName, func(in *Input) string { return in.Cert.Subject.CommonName }),
		listField("organizational_unit", listOU, boundName),
		listField("organization", listOrg, boundName),
	)
	issuerType = newObjType(issuerTypeName,
		stringField("common_name", cacheIssuerCN, boundName, func(in *Input) string { return in.Cert.Issuer.CommonName }),
	)
	certType = newObjType(certTypeName,
		boolField("presented", func(in *Input) bool { return in.Cert.Presented }),
		boolField("verified", func(in *Input) bool { return in.Cert.Verified }),
		stringField("error", cacheCertError, boundError, func(in *Input) string { return in.Cert.Error }),
		&field{
			name:  "subject",
			typ:   subjectType.celType,
			get:   func(st *evalState) ref.Val { return &st.subject },
			isSet: func(st *evalState) bool { return st.in.Cert.Presented },
		},
		&field{
			name:  "issuer",
			typ:   issuerType.celType,
			get:   func(st *evalState) ref.Val { return &st.issuer },
			isSet: func(st *evalState) bool { return st.in.Cert.Presented },
		},
		stringField("serial_number", cacheSerial, boundSerial, func(in *Input) string { return in.Cert.SerialNumber }),
		stringField("fingerprint_sha256", cacheFingerprint, boundFingerprint, func(in *Input) string { return in.Cert.FingerprintSHA256 }),
		listField("dns_names", listDNS, boundDNSName),
		listField("email_addresses", listEmail, boundEmail),
		listField("uris", listURI, boundURI),
		timeField("not_before", cacheNotBefore, func(in *Input) time.Time { return in.Cert.NotBefore }),
		timeField("not_after", cacheNotAfter, func(in *Input) time.Time { return in.Cert.NotAfter }),
	)
	requestType = newObjType(requestTypeName,
		stringField("host", cacheHost, boundHost, func(in *Input) string { return in.Request.Host }),
		stringField("method", cacheMethod, boundMethod, func(in *Input) string { return in.Request.Method }),
		stringField("path", cachePath, boundPath, func(in *Input) string { return in.Request.Path }),
		&field{
			name: "headers",
			typ:  types.NewMapType(types.StringType, types.StringType),
			size: boundHeaderCount,
			key:  boundHeaderName,
			item: boundHeaderValue,
			get: func(st *evalState) ref.Val {
				if st.in.Request.HeadersUnknown {
					st.headersGot = true
					// A new error each time: the interpreter labels an error with its node id.
					return types.NewErr("request.headers are not known")
				}
				if len(st.headers.h) > boundHeaderCount && !st.guarded {
					return st.outOfBounds()
				}
				return &st.headers
			},
			isSet: func(st *evalState) bool {
				if st.in.Request.HeadersUnknown {
					st.headersTested = true
					return false
				}
				return st.headers.size() > 0
			},
		},
	)
	objTypes = map[string]*objType{
		"cert":    certType,
		"request": requestType,
	}
)

// environment is the CEL environment shared by the control plane and the edge.
var environment = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Types(certType, subjectType, issuerType, requestType),
		cel.Variable("cert", certType.celType),
		cel.Variable("request", requestType.celType),
		cel.OptionalTypes(),
		ext.Strings(ext.StringsVersion(5)),
		ext.Sets(ext.SetsVersion(0)),
		cel.CostEstimatorOptions(append([]checker.CostOption{
			checker.OverloadCostEstimate(overloads.SizeString, estimateStringSize),
			checker.OverloadCostEstimate(overloads.SizeStringInst, estimateStringSize),
			checker.OverloadCostEstimate(overloads.Matches, estimateMatches),
			checker.OverloadCostEstimate(overloads.MatchesString, estimateMatches),
		}, append(joinEstimators(), priceEstimators()...)...)...), // after ext.Strings: they replace its estimators of join(), indexOf() and lastIndexOf()
		cel.DefaultUTCTimeZone(true),
		cel.ExtendedValidations(),
		cel.ASTValidators(cel.ValidateComprehensionNestingLimit(maxComprehensionNest), regexSizeValidator{}),
		cel.ParserExpressionSizeLimit(MaxExpressionBytes),
		cel.ParserRecursionLimit(maxNesting),
		cel.ExpressionNodeLimit(maxASTNodes),
		cel.ExpressionNestingDepthLimit(maxNesting),
		// Not cel.RegexProgramSizeLimit: regexSizeValidator and regexCall check the size of
		// regular expressions (see regexSizeValidator).
	)
})

// Environment returns the CEL environment that policies are compiled in, for tools that want to
// check or describe expressions (e.g. editors). [Compile] uses it.
func Environment() (*cel.Env, error) { return environment() }

// costTrackers are the run-time counterparts of the cost estimates this package adds (and the
// tracker of format(): see prices.go), for a rule whose constant regular expressions are regexes.
// They are given to env.Program, after the environment's own, which they replace.
func costTrackers(regexes map[string]*regexInfo) cel.ProgramOption {
	return cel.CostTrackerOptions(append([]interpreter.CostTrackerOption{
		interpreter.OverloadCostTracker(overloads.SizeString, trackStringSize),
		interpreter.OverloadCostTracker(overloads.SizeStringInst, trackStringSize),
		interpreter.OverloadCostTracker(overloads.Matches, trackMatches(regexes)),
		interpreter.OverloadCostTracker(overloads.MatchesString, trackMatches(regexes)),
	}, priceTrackers()...)...)
}

// estimateStringSize makes size() of a string cost like other string traversals: CEL counts the
// code points, which takes time linear in the length, while the standard estimate is constant.
func estimateStringSize(est checker.CostEstimator, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	var n checker.AstNode
	switch {
	case target != nil:
		n = *target
	case len(args) == 1:
		n = args[0]
	default:
		return nil
	}
	c := sizeEstimate(est, n).MultiplyByCostFactor(common.StringTraversalCostFactor).Add(checker.FixedCostEstimate(1))
	return &checker.CallEstimate{CostEstimate: c}
}

// sizeEstimate is the size of a node as the cost estimator sees it (unknown: up to MaxUint64).
func sizeEstimate(est checker.CostEstimator, n checker.AstNode) checker.SizeEstimate {
	if sz := n.ComputedSize(); sz != nil {
		return *sz
	}
	if sz := est.EstimateSize(n); sz != nil {
		return *sz
	}
	return checker.UnknownSizeEstimate()
}

// trackStringSize is the run-time cost of size() of a string, the counterpart of
// estimateStringSize: by its code points, as the estimate counts them (see sizes.go).
func trackStringSize(args []ref.Val, _ ref.Val) *uint64 {
	c := uint64(1)
	if len(args) > 0 {
		if s, ok := args[0].(types.String); ok {
			c += uint64(math.Ceil(float64(utf8.RuneCountInString(string(s))) * common.StringTraversalCostFactor))
		}
	}
	return &c
}

// estimator gives the cost estimator the input bounds, and the cost models of a rule's constant
// regular expressions (for estimateMatches; those not found there are analyzed again).
type estimator struct {
	regexes map[string]*regexInfo
}

// EstimateSize implements checker.CostEstimator.
func (estimator) EstimateSize(n checker.AstNode) *checker.SizeEstimate {
	path := n.Path()
	if len(path) < 2 {
		return nil
	}
	t, ok := objTypes[path[0]]
	if !ok {
		return nil
	}
	var f *field
	for i, p := range path[1:] {
		if strings.HasPrefix(p, "@") {
			if f == nil {
				return nil
			}
			if i != len(path)-2 {
				return nil
			}
			switch p {
			case "@items", "@values":
				return &checker.SizeEstimate{Min: 0, Max: f.item}
			case "@keys":
				return &checker.SizeEstimate{Min: 0, Max: f.key}
			}
			return nil
		}
		if t == nil {
			return nil
		}
		if f = t.fields[p]; f == nil {
			return nil
		}
		t = nil
		switch f.typ {
		case subjectType.celType:
			t = subjectType
		case issuerType.celType:
			t = issuerType
		}
	}
	if f == nil || f.size == 0 {
		return nil
	}
	return &checker.SizeEstimate{Min: 0, Max: f.size}
}

// EstimateCallCost implements checker.CostEstimator; the defaults apply.
func (estimator) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}
