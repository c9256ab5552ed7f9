// Package dnsname normalises and validates the hostnames that guestlist stores and matches.
//
// A hostname is stored in one canonical form, the one [Normalize] returns:
//
//   - ASCII only: internationalised labels are converted to A-labels ("bücher" -> "xn--bcher-kva")
//     with IDNA2008 as profiled by UTS #46 (non-transitional lookup mapping, STD3 ASCII rules,
//     hyphen and joiner checks, the Bidi rule, DNS length limits);
//   - lower case, without the trailing dot of a fully qualified name;
//   - at most 253 characters, labels of 1 to 63 characters from [a-z0-9-] that neither start nor end
//     with a hyphen and that carry "--" in their third and fourth positions only as "xn--";
//   - at least two labels, and a last label that is not numeric, so that it can never be read as an
//     IPv4 address (WHATWG URL parsing treats "1.2.3.4", "10.1" and "0x7f.1" as IPv4);
//   - no IP address literals, no wildcards ("*.example.com"; not supported yet), no underscores.
//
// [NormalizeSNI] is the cheap variant for the TLS handshake: it accepts only what [Normalize] accepts
// and returns the same form, without allocating when the server name is already normal.
//
// The package does no I/O.
package dnsname

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// MaxLength is the maximum length of a normalised hostname in characters (bytes), without a
// trailing dot (RFC 1035 section 2.3.4, as presented by resolvers).
const MaxLength = 253

// MaxLabelLength is the maximum length of one label in characters (bytes).
const MaxLabelLength = 63

// maxInputBytes bounds the raw input before any IDNA processing. The A-label form of a label is
// at least as many characters as the label has code points, and a code point takes at most 4
// bytes; 1024 leaves room for a few characters that IDNA maps to nothing.
const maxInputBytes = 1024

// profile is the IDNA profile: UTS #46 lookup mapping (case folding, width mapping), non-transitional
// processing (so "ß" stays "ß" and becomes "xn--zca"), STD3 rules (letters, digits, hyphen only),
// hyphen and joiner checks, the Bidi rule and the DNS length limits.
var profile = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.BidiRule(),
	idna.StrictDomainName(true),
	idna.ValidateLabels(true),
	idna.CheckHyphens(true),
	idna.CheckJoiners(true),
	idna.VerifyDNSLength(true),
)

// Error is the error that [Normalize] returns. Reason is a complete sentence fragment naming what is
// wrong, e.g. `label "-ab" starts with a hyphen`.
type Error struct {
	// Name is the hostname as given (possibly shortened for very long input).
	Name string
	// Reason says what is wrong with it.
	Reason string
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("invalid hostname %q: %s", e.Name, e.Reason)
}

func fail(name string, format string, args ...any) error {
	if len(name) > 100 {
		name = name[:100] + "..."
		for !utf8.ValidString(name) && len(name) > 3 {
			// Don't cut a multi-byte character in half.
			name = name[:len(name)-4] + "..."
		}
	}
	return &Error{Name: name, Reason: fmt.Sprintf(format, args...)}
}

// Normalize returns the canonical form of a hostname (see the package documentation) or an *[Error]
// naming what is wrong with it. It is idempotent: Normalize(Normalize(x)) == Normalize(x).
//
// Examples: "Pay.Example.COM." -> "pay.example.com", "bücher.example" -> "xn--bcher-kva.example".
func Normalize(name string) (string, error) {
	if name == "" {
		return "", fail(name, "hostname is empty")
	}
	if len(name) > maxInputBytes {
		return "", fail(name, "hostname is %d bytes long; at most %d characters are allowed", len(name), MaxLength)
	}
	if err := checkAddress(name); err != nil {
		return "", err
	}
	s := trimRootDot(name)
	if s == "" {
		return "", fail(name, "hostname is only the root label %q", ".")
	}
	if s == "*" || strings.HasPrefix(s, "*.") {
		return "", fail(name, "wildcard hostnames are not supported yet; register each hostname on its own")
	}
	if isASCII(s) {
		return normalizeASCII(name, s)
	}
	return normalizeUnicode(name, s)
}

// normalizeASCII handles an ASCII hostname without its trailing dot.
func normalizeASCII(name, s string) (string, error) {
	s = lowerASCII(s)
	hasACE, err := validate(name, s)
	if err != nil {
		return "", err
	}
	if !hasACE {
		return s, nil
	}
	// "xn--" labels must be valid A-labels, and the name as a whole must satisfy the Bidi rule.
	out, err := profile.ToASCII(s)
	if err != nil {
		return "", idnaFailure(name, strings.Split(s, "."), err)
	}
	if out != s {
		// An A-label is case-insensitive and already lower case here, so this does not happen
		// with a correct IDNA implementation; refuse rather than store two forms of one name.
		return "", fail(name, "IDNA processing changed the hostname to %q", out)
	}
	return s, nil
}

// normalizeUnicode handles a hostname with non-ASCII characters (without its trailing dot).
func normalizeUnicode(name, s string) (string, error) {
	if !utf8.ValidString(s) {
		return "", fail(name, "hostname is not valid UTF-8")
	}
	labels := splitUnicodeLabels(s)
	for i, l := range labels {
		if l == "" {
			return "", emptyLabel(name, i, len(labels))
		}
	}
	out, err := profile.ToASCII(s)
	if err != nil {
		return "", idnaFailure(name, labels, err)
	}
	// The mapping may end the name with a dot (e.g. a trailing U+3002 IDEOGRAPHIC FULL STOP
	// after a regular one); the result is checked with the ASCII rules like any other name.
	if strings.HasSuffix(out, ".") {
		return "", emptyLabel(name, len(labels), len(labels)+1)
	}
	if !isASCII(out) {
		return "", fail(name, "IDNA conversion did not produce an ASCII name")
	}
	if _, err := validate(name, out); err != nil {
		return "", err
	}
	return out, nil
}

// splitUnicodeLabels splits at the full stops that UTS #46 maps to "." (U+002E, U+3002, U+FF0E,
// U+FF61).
func splitUnicodeLabels(s string) []string {
	return strings.Split(dotReplacer.Replace(s), ".")
}

// trimRootDot removes one trailing full stop (any of the forms UTS #46 maps to ".").
func trimRootDot(s string) string {
	if strings.HasSuffix(s, ".") {
		return s[:len(s)-1]
	}
	for _, d := range []string{"\u3002", "\uff0e", "\uff61"} {
		if strings.HasSuffix(s, d) {
			return s[:len(s)-len(d)]
		}
	}
	return s
}

var dotReplacer = strings.NewReplacer("\u3002", ".", "\uff0e", ".", "\uff61", ".")

// idnaFailure builds an error for a failed IDNA conversion, naming the first label that fails on
// its own, or the Bidi rule when every label passes alone.
func idnaFailure(name string, labels []string, err error) error {
	for _, l := range labels {
		if l == "" {
			continue
		}
		if _, lerr := profile.ToASCII(l); lerr != nil {
			return fail(name, "label %q is not a valid internationalised label (%v)", l, lerr)
		}
	}
	if strings.Contains(err.Error(), "invalid label") {
		return fail(name, "labels violate the IDNA Bidi rule for right-to-left names (RFC 5893)")
	}
	return fail(name, "not a valid internationalised hostname (%v)", err)
}

// checkAddress rejects IP address literals with a precise reason.
func checkAddress(name string) error {
	s := strings.TrimSuffix(name, ".")
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	if addr, err := netip.ParseAddr(s); err == nil {
		if addr.Is4() {
			return fail(name, "this is an IPv4 address; a hostname is required")
		}
		return fail(name, "this is an IPv6 address; a hostname is required")
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.Contains(name[:i], ":") && isPort(name[i+1:]) {
		return fail(name, "contains a port (%q); give the hostname alone", name[i:])
	}
	return nil
}

func isPort(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func emptyLabel(name string, i, n int) error {
	switch {
	case i == 0:
		return fail(name, "hostname starts with a dot (empty first label)")
	case i == n-1:
		return fail(name, "hostname ends with two dots (empty last label)")
	default:
		return fail(name, "hostname has an empty label (two dots in a row)")
	}
}

// validate checks a lower-case ASCII hostname without trailing dot against the rules of the package
// documentation. It reports whether any label is an "xn--" label, which needs IDNA validation.
func validate(name, s string) (hasACE bool, err error) {
	if len(s) > MaxLength {
		return false, fail(name, "hostname is %d characters long; at most %d are allowed", len(s), MaxLength)
	}
	n := strings.Count(s, ".") + 1
	if n < 2 {
		return false, fail(name, "hostname has a single label; at least two are required (like %q)", "example.com")
	}
	i := 0
	last := ""
	for l := range strings.SplitSeq(s, ".") {
		if err := validateLabel(name, l, i, n); err != nil {
			return false, err
		}
		if strings.HasPrefix(l, "xn--") {
			hasACE = true
		}
		last = l
		i++
	}
	if isNumeric(last) {
		return false, fail(name, "last label %q is numeric; such names are read as IPv4 addresses", last)
	}
	return hasACE, nil
}

func validateLabel(name, l string, i, n int) error {
	if l == "" {
		return emptyLabel(name, i, n)
	}
	if len(l) > MaxLabelLength {
		return fail(name, "label %q is %d characters long; at most %d are allowed", l, len(l), MaxLabelLength)
	}
	for j := 0; j < len(l); j++ {
		c := l[j]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case c == '_':
			return fail(name, "label %q contains an underscore, which hostnames must not contain", l)
		case c == '*':
			return fail(name, "label %q contains %q; wildcard hostnames are not supported", l, "*")
		default:
			return fail(name, "label %q contains the character %q, which hostnames must not contain", l, rune(c))
		}
	}
	if l[0] == '-' {
		return fail(name, "label %q starts with a hyphen", l)
	}
	if l[len(l)-1] == '-' {
		return fail(name, "label %q ends with a hyphen", l)
	}
	if len(l) >= 4 && l[2] == '-' && l[3] == '-' && !strings.HasPrefix(l, "xn--") {
		return fail(name, "label %q has hyphens in its third and fourth positions, which are reserved for IDNA %q labels", l, "xn--")
	}
	return nil
}

// isNumeric reports whether a label would make the WHATWG URL host parser read the name as IPv4:
// decimal digits only, or "0x" followed by hexadecimal digits.
func isNumeric(l string) bool {
	if l == "" {
		return false
	}
	digits := l
	hex := false
	if len(l) >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X') {
		digits, hex = l[2:], true
	}
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		switch {
		case '0' <= c && c <= '9':
		case hex && ('a' <= c && c <= 'f' || 'A' <= c && c <= 'F'):
		default:
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// lowerASCII lower-cases ASCII letters, allocating only when something changes.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + ('a' - 'A')
				}
			}
			return string(b)
		}
	}
	return s
}

// NormalizeSNI is the fast path for a TLS server name: it lower-cases ASCII letters and removes one
// trailing dot, and reports false for anything [Normalize] would reject or change otherwise
// (non-ASCII names, IP addresses, invalid labels). When it reports true the result equals
// Normalize(serverName). It does not allocate when serverName is already in normal form.
func NormalizeSNI(serverName string) (string, bool) {
	s := serverName
	if n := len(s); n > 0 && s[n-1] == '.' {
		s = s[:n-1]
	}
	if len(s) == 0 || len(s) > MaxLength {
		return "", false
	}
	upper, ace := false, false
	labels := 0
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
			case 'A' <= c && c <= 'Z':
				upper = true
			default:
				return "", false
			}
			continue
		}
		l := s[start:i]
		if len(l) == 0 || len(l) > MaxLabelLength || l[0] == '-' || l[len(l)-1] == '-' {
			return "", false
		}
		if len(l) >= 4 && l[2] == '-' && l[3] == '-' {
			if (l[0] != 'x' && l[0] != 'X') || (l[1] != 'n' && l[1] != 'N') {
				return "", false
			}
			ace = true
		}
		if i == len(s) && isNumeric(l) {
			return "", false
		}
		labels++
		start = i + 1
	}
	if labels < 2 {
		return "", false
	}
	if ace {
		out, err := Normalize(serverName)
		return out, err == nil
	}
	if upper {
		s = lowerASCII(s)
	}
	return s, true
}

// IsNormalized reports whether name is already in the form [Normalize] returns.
func IsNormalized(name string) bool {
	out, err := Normalize(name)
	return err == nil && out == name
}
