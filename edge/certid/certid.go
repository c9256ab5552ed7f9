// Package certid defines the textual identifiers of certificates that guestlist uses everywhere
// (API, forwarded headers, decision log, revocations):
//
//   - the SHA-256 fingerprint of the DER certificate: 64 lower-case hexadecimal digits, no separators;
//   - the serial number: lower-case hexadecimal without separators or leading zeros, "0" for zero.
//
// [NormalizeFingerprint] and [NormalizeSerial] turn user input (upper case, ':' separators as printed
// by openssl and browsers, leading zeros) into that form, or explain why they cannot.
//
// The package does no I/O.
package certid

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
)

// FingerprintLength is the length of a fingerprint in hexadecimal digits.
const FingerprintLength = 2 * sha256.Size

// MaxSerialDigits is the maximum number of significant hexadecimal digits [NormalizeSerial]
// accepts: 32 octets. RFC 5280 limits serials to 20 octets, but non-conforming CAs exist and a
// certificate must stay revocable by its serial.
const MaxSerialDigits = 64

// maxEcho bounds how much of a rejected input an error repeats.
const maxEcho = 80

// Error reports input that is not a valid fingerprint or serial number.
type Error struct {
	// Kind is "fingerprint" or "serial number".
	Kind string
	// Input is the rejected input, shortened when long.
	Input string
	// Reason says what is wrong.
	Reason string
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("invalid %s %q: %s", e.Kind, e.Input, e.Reason)
}

func fail(kind, input, format string, args ...any) error {
	if len(input) > maxEcho {
		input = input[:maxEcho] + "..."
	}
	return &Error{Kind: kind, Input: input, Reason: fmt.Sprintf(format, args...)}
}

// FingerprintSHA256 returns the lower-case hexadecimal SHA-256 of a DER-encoded certificate
// (64 characters).
func FingerprintSHA256(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// SerialNumber returns a certificate serial number in lower-case hexadecimal without leading
// zeros; zero is "0". A negative serial (which RFC 5280 forbids, and which crypto/x509 refuses to
// parse by default) is the hexadecimal of its absolute value prefixed with "-". A nil serial is "".
func SerialNumber(serial *big.Int) string {
	if serial == nil {
		return ""
	}
	// big.Int's 'x' verb is lower case, without leading zeros, "0" for zero and "-" for negatives.
	return serial.Text(16)
}

// NormalizeSerial normalises a serial number typed by a user: hexadecimal digits in either case,
// optionally separated by ':' ("01:AB:CD"), optionally preceded by "-" for a negative serial.
// Leading zeros are removed ("00ff" -> "ff", "00" -> "0"). Anything else is an *[Error]: empty
// input, a "0x" prefix, spaces, other characters, empty groups ("ab::cd", ":ab") or more than
// [MaxSerialDigits] significant digits.
func NormalizeSerial(s string) (string, error) {
	const kind = "serial number"
	if s == "" {
		return "", fail(kind, s, "it is empty")
	}
	neg := false
	body := s
	if body[0] == '-' {
		neg, body = true, body[1:]
		if body == "" {
			return "", fail(kind, s, "no digits after %q", "-")
		}
	}
	if len(body) >= 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'X') {
		return "", fail(kind, s, "remove the %q prefix; serial numbers are always hexadecimal", body[:2])
	}
	digits, err := hexDigits(kind, s, body)
	if err != nil {
		return "", err
	}
	trimmed := strings.TrimLeft(digits, "0")
	if trimmed == "" {
		return "0", nil // "-0" is zero as well
	}
	if len(trimmed) > MaxSerialDigits {
		return "", fail(kind, s, "%d significant hexadecimal digits; at most %d (%d octets) are accepted",
			len(trimmed), MaxSerialDigits, MaxSerialDigits/2)
	}
	if neg {
		return "-" + trimmed, nil
	}
	return trimmed, nil
}

// NormalizeFingerprint normalises a SHA-256 fingerprint typed by a user: 64 hexadecimal digits in
// either case, either without separators or as 32 ':'-separated pairs ("AB:CD:..."). Anything
// else is an *[Error] saying why.
func NormalizeFingerprint(s string) (string, error) {
	const kind = "fingerprint"
	if s == "" {
		return "", fail(kind, s, "it is empty")
	}
	if strings.Contains(s, ":") {
		groups := strings.Split(s, ":")
		for i, g := range groups {
			if len(g) != 2 {
				return "", fail(kind, s, "':'-separated form needs pairs of hexadecimal digits; group %d is %q", i+1, g)
			}
		}
		if len(groups) != sha256.Size {
			return "", fail(kind, s, "%d pairs of hexadecimal digits; a SHA-256 fingerprint has %d", len(groups), sha256.Size)
		}
	}
	digits, err := hexDigits(kind, s, s)
	if err != nil {
		return "", err
	}
	if len(digits) != FingerprintLength {
		return "", fail(kind, s, "%d hexadecimal digits; a SHA-256 fingerprint has %d", len(digits), FingerprintLength)
	}
	return digits, nil
}

// hexDigits returns the lower-cased hexadecimal digits of body with ':' separators removed, or an
// error naming the first offending character. Separators must sit between digits.
func hexDigits(kind, input, body string) (string, error) {
	var b strings.Builder
	b.Grow(len(body))
	prevColon := true // a leading ':' is an empty group
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
			b.WriteByte(c)
			prevColon = false
		case 'A' <= c && c <= 'F':
			b.WriteByte(c + ('a' - 'A'))
			prevColon = false
		case c == ':':
			if prevColon {
				return "", fail(kind, input, "empty group before the ':' at offset %d", i+len(input)-len(body))
			}
			prevColon = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			return "", fail(kind, input, "contains whitespace at offset %d", i+len(input)-len(body))
		default:
			return "", fail(kind, input, "character %q at offset %d is not a hexadecimal digit", body[i:i+1], i+len(input)-len(body))
		}
	}
	if prevColon {
		return "", fail(kind, input, "ends with ':'")
	}
	return b.String(), nil
}
