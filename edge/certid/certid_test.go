package certid

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/big"
	"regexp"
	"strings"
	"testing"
)

func TestFingerprintSHA256(t *testing.T) {
	tests := []struct {
		name string
		der  []byte
		want string
	}{
		{name: "ok/empty", der: nil, want: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{name: "ok/abc", der: []byte("abc"), want: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := FingerprintSHA256(tt.der)
			if got != tt.want || len(got) != FingerprintLength {
				t.Fatalf("FingerprintSHA256 = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSerialNumber(t *testing.T) {
	big20 := new(big.Int).Lsh(big.NewInt(1), 159)
	tests := []struct {
		name string
		in   *big.Int
		want string
	}{
		{name: "ok/zero", in: big.NewInt(0), want: "0"},
		{name: "ok/one", in: big.NewInt(1), want: "1"},
		{name: "ok/255", in: big.NewInt(255), want: "ff"},
		{name: "ok/256", in: big.NewInt(256), want: "100"},
		{name: "ok/20-octets", in: big20, want: "8" + strings.Repeat("0", 39)},
		{name: "ok/negative", in: big.NewInt(-255), want: "-ff"},
		{name: "ok/nil", in: nil, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SerialNumber(tt.in); got != tt.want {
				t.Fatalf("SerialNumber(%v) = %q, want %q", tt.in, got, tt.want)
			}
			if tt.in == nil {
				return
			}
			if got, err := NormalizeSerial(SerialNumber(tt.in)); err != nil || got != tt.want {
				t.Fatalf("NormalizeSerial(SerialNumber(%v)) = %q, %v", tt.in, got, err)
			}
		})
	}
}

func TestNormalizeSerial(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{name: "ok/plain", in: "1a2b", want: "1a2b"},
		{name: "ok/upper", in: "1A2B", want: "1a2b"},
		{name: "ok/leading-zeros", in: "00ff", want: "ff"},
		{name: "ok/zero", in: "0", want: "0"},
		{name: "ok/zeros", in: "0000", want: "0"},
		{name: "ok/colons", in: "01:AB:CD", want: "1abcd"},
		{name: "ok/colons-odd-groups", in: "1:ab:cd", want: "1abcd"},
		{name: "ok/negative", in: "-00FF", want: "-ff"},
		{name: "ok/negative-zero", in: "-0", want: "0"},
		{name: "ok/64-digits", in: strings.Repeat("f", 64), want: strings.Repeat("f", 64)},
		{name: "ok/64-digits-leading-zeros", in: "0000" + strings.Repeat("f", 64), want: strings.Repeat("f", 64)},
		{name: "fail/empty", in: "", wantErr: "empty"},
		{name: "fail/minus-only", in: "-", wantErr: "no digits"},
		{name: "fail/0x", in: "0x1f", wantErr: `"0x" prefix`},
		{name: "fail/space", in: "01 ab", wantErr: "whitespace at offset 2"},
		{name: "fail/trailing-newline", in: "01ab\n", wantErr: "whitespace"},
		{name: "fail/letter", in: "01ag", wantErr: `character "g" at offset 3`},
		{name: "fail/non-ascii", in: "01ä", wantErr: "not a hexadecimal digit"},
		{name: "fail/leading-colon", in: ":01", wantErr: "empty group"},
		{name: "fail/double-colon", in: "01::02", wantErr: "empty group"},
		{name: "fail/trailing-colon", in: "01:", wantErr: "ends with ':'"},
		{name: "fail/too-long", in: strings.Repeat("f", 65), wantErr: "65 significant hexadecimal digits"},
		{name: "fail/double-minus", in: "--1", wantErr: `character "-" at offset 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeSerial(tt.in)
			check(t, tt.name, "NormalizeSerial", tt.in, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestNormalizeFingerprint(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	fp := hex.EncodeToString(sum[:])
	var pairs []string
	for i := 0; i < len(fp); i += 2 {
		pairs = append(pairs, strings.ToUpper(fp[i:i+2]))
	}
	colon := strings.Join(pairs, ":")
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{name: "ok/plain", in: fp, want: fp},
		{name: "ok/upper", in: strings.ToUpper(fp), want: fp},
		{name: "ok/colons", in: colon, want: fp},
		{name: "ok/leading-zero-kept", in: "00" + fp[2:], want: "00" + fp[2:]},
		{name: "fail/empty", in: "", wantErr: "empty"},
		{name: "fail/short", in: fp[:62], wantErr: "62 hexadecimal digits; a SHA-256 fingerprint has 64"},
		{name: "fail/long", in: fp + "00", wantErr: "66 hexadecimal digits"},
		{name: "fail/sha1-colons", in: colon[:59], wantErr: "20 pairs"},
		{name: "fail/colon-group", in: "a" + colon[2:], wantErr: `group 1 is "a"`},
		{name: "fail/letter", in: "g" + fp[1:], wantErr: `character "g" at offset 0`},
		{name: "fail/prefix", in: "sha256:" + fp, wantErr: "pairs"},
		{name: "fail/space", in: fp[:32] + " " + fp[32:], wantErr: "whitespace at offset 32"},
		{name: "fail/trailing-colon", in: colon + ":", wantErr: "group 33"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeFingerprint(tt.in)
			check(t, tt.name, "NormalizeFingerprint", tt.in, got, err, tt.want, tt.wantErr)
		})
	}
}

func check(t *testing.T, name, fn, in, got string, err error, want, wantErr string) {
	t.Helper()
	if strings.HasPrefix(name, "ok/") {
		if err != nil || got != want {
			t.Fatalf("%s(%q) = %q, %v; want %q", fn, in, got, err, want)
		}
		return
	}
	if err == nil {
		t.Fatalf("%s(%q) = %q, want an error containing %q", fn, in, got, wantErr)
	}
	var e *Error
	if !errors.As(err, &e) || e.Reason == "" {
		t.Fatalf("%s(%q): %v is not a *certid.Error with a reason", fn, in, err)
	}
	if !strings.Contains(err.Error(), wantErr) || got != "" {
		t.Fatalf("%s(%q) = %q, %q; want an error containing %q", fn, in, got, err, wantErr)
	}
}

var (
	serialRE      = regexp.MustCompile(`^(0|-?[1-9a-f][0-9a-f]*)$`)
	fingerprintRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

func FuzzNormalizeSerial(f *testing.F) {
	for _, s := range []string{"1a2b", "00:FF", "-0", "0x1", "::", "01 ab", "-00ab", strings.Repeat("f", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizeSerial(in)
		if err != nil {
			if out != "" {
				t.Fatalf("NormalizeSerial(%q) = %q with error %v", in, out, err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" {
				t.Fatalf("error without reason: %v", err)
			}
			return
		}
		if !serialRE.MatchString(out) || len(strings.TrimPrefix(out, "-")) > MaxSerialDigits {
			t.Fatalf("NormalizeSerial(%q) = %q: not normal", in, out)
		}
		if again, err := NormalizeSerial(out); err != nil || again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, out, again, err)
		}
		n, ok := new(big.Int).SetString(out, 16)
		if !ok || SerialNumber(n) != out {
			t.Fatalf("SerialNumber(big(%q)) = %q", out, SerialNumber(n))
		}
	})
}

func FuzzNormalizeFingerprint(f *testing.F) {
	sum := sha256.Sum256(nil)
	fp := hex.EncodeToString(sum[:])
	for _, s := range []string{fp, strings.ToUpper(fp), fp[:10], "ab:cd", fp + ":", ":" + fp} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizeFingerprint(in)
		if err != nil {
			if out != "" {
				t.Fatalf("NormalizeFingerprint(%q) = %q with error %v", in, out, err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" {
				t.Fatalf("error without reason: %v", err)
			}
			return
		}
		if !fingerprintRE.MatchString(out) {
			t.Fatalf("NormalizeFingerprint(%q) = %q: not normal", in, out)
		}
		if again, err := NormalizeFingerprint(out); err != nil || again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, out, again, err)
		}
	})
}
