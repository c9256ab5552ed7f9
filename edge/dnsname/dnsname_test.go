package dnsname

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNormalize(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	long253 := strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string // substring of the error
	}{
		{name: "ok/lower", in: "pay.example.com", want: "pay.example.com"},
		{name: "ok/mixed-case-trailing-dot", in: "Pay.Example.COM.", want: "pay.example.com"},
		{name: "ok/idn", in: "bücher.example", want: "xn--bcher-kva.example"},
		{name: "ok/idn-upper", in: "BÜCHER.Example", want: "xn--bcher-kva.example"},
		{name: "ok/a-label", in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{name: "ok/a-label-upper", in: "XN--BCHER-KVA.EXAMPLE.", want: "xn--bcher-kva.example"},
		{name: "ok/eszett-non-transitional", in: "faß.de", want: "xn--fa-hia.de"},
		{name: "ok/ideographic-full-stop", in: "bücher\u3002example", want: "xn--bcher-kva.example"},
		{name: "ok/ideographic-root-dot", in: "bücher.example\u3002", want: "xn--bcher-kva.example"},
		{name: "ok/fullwidth", in: "ｅｘａｍｐｌｅ.com", want: "example.com"},
		{name: "ok/digits-and-hyphens", in: "api-2.eu-west-1.example.com", want: "api-2.eu-west-1.example.com"},
		{name: "ok/numeric-inner-label", in: "123.example.com", want: "123.example.com"},
		{name: "ok/label-63", in: label63 + ".com", want: label63 + ".com"},
		{name: "ok/length-253", in: long253, want: long253},
		{name: "ok/length-253-trailing-dot", in: long253 + ".", want: long253},
		{name: "ok/rtl", in: "\u05e9\u05dc\u05d5\u05dd.example", want: "xn--9dbne9b.example"},
		{name: "ok/tld-alnum", in: "example.x1", want: "example.x1"},

		{name: "fail/empty", in: "", wantErr: "hostname is empty"},
		{name: "fail/root", in: ".", wantErr: "only the root label"},
		{name: "fail/single-label", in: "localhost", wantErr: "single label"},
		{name: "fail/single-label-dot", in: "localhost.", wantErr: "single label"},
		{name: "fail/leading-hyphen", in: "-ab.example.com", wantErr: `label "-ab" starts with a hyphen`},
		{name: "fail/trailing-hyphen", in: "ab-.example.com", wantErr: `label "ab-" ends with a hyphen`},
		{name: "fail/reserved-hyphens", in: "ab--cd.example.com", wantErr: `third and fourth positions`},
		{name: "fail/underscore", in: "_acme.example.com", wantErr: "underscore"},
		{name: "fail/wildcard", in: "*.example.com", wantErr: "wildcard hostnames"},
		{name: "fail/wildcard-inner", in: "a*.example.com", wantErr: "wildcard"},
		{name: "fail/empty-label", in: "a..example.com", wantErr: "empty label"},
		{name: "fail/leading-dot", in: ".example.com", wantErr: "starts with a dot"},
		{name: "fail/two-trailing-dots", in: "example.com..", wantErr: "ends with two dots"},
		{name: "fail/space", in: "exa mple.com", wantErr: `character ' '`},
		{name: "fail/ipv4", in: "192.0.2.1", wantErr: "IPv4 address"},
		{name: "fail/ipv4-dot", in: "192.0.2.1.", wantErr: "IPv4 address"},
		{name: "fail/ipv4-short", in: "10.1", wantErr: "numeric"},
		{name: "fail/ipv4-hex", in: "0x7f.0x1", wantErr: "numeric"},
		{name: "fail/ipv4-fullwidth", in: "１９２.０.２.１", wantErr: "numeric"},
		{name: "fail/ipv6", in: "2001:db8::1", wantErr: "IPv6 address"},
		{name: "fail/ipv6-brackets", in: "[2001:db8::1]", wantErr: "IPv6 address"},
		{name: "fail/port", in: "example.com:443", wantErr: "port"},
		{name: "fail/label-64", in: strings.Repeat("a", 64) + ".com", wantErr: "64 characters long; at most 63"},
		{name: "fail/length-254", in: long253 + "b", wantErr: "254 characters long; at most 253"},
		{name: "fail/huge", in: strings.Repeat("a.", 600) + "com", wantErr: "at most 253"},
		{name: "fail/bad-a-label", in: "xn--zz.example", wantErr: `label "xn--zz"`},
		{name: "fail/ascii-a-label", in: "xn--abc-.example", wantErr: "ends with a hyphen"},
		{name: "fail/a-label-of-ascii", in: "xn--abc-.example", wantErr: "hyphen"},
		{name: "fail/idn-disallowed", in: "a\u2028b.example", wantErr: "not a valid internationalised label"},
		{name: "fail/idn-underscore", in: "bü_cher.example", wantErr: "not a valid internationalised label"},
		{name: "fail/idn-leading-hyphen", in: "-bücher.example", wantErr: "not a valid internationalised label"},
		{name: "fail/invalid-utf8", in: "b\xffcher.example", wantErr: "UTF-8"},
		{name: "fail/idn-empty-label", in: "bücher..example", wantErr: "empty label"},
		{name: "fail/bidi", in: "\u05e9\u05dc\u05d5\u05dd.1abc", wantErr: "Bidi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Normalize(tt.in)
			if strings.HasPrefix(tt.name, "ok/") {
				if err != nil {
					t.Fatalf("Normalize(%q) error: %v", tt.in, err)
				}
				if got != tt.want {
					t.Fatalf("Normalize(%q) = %q, want %q", tt.in, got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Normalize(%q) = %q, want error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Normalize(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" {
				t.Fatalf("error %v is not a *dnsname.Error with a reason", err)
			}
			if got != "" {
				t.Fatalf("Normalize(%q) returned %q with an error", tt.in, got)
			}
		})
	}
}

func TestNormalizeSNI(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{name: "ok/normal", in: "pay.example.com", want: "pay.example.com"},
		{name: "ok/upper", in: "PAY.Example.com", want: "pay.example.com"},
		{name: "ok/trailing-dot", in: "pay.example.com.", want: "pay.example.com"},
		{name: "ok/a-label", in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{name: "ok/a-label-upper", in: "Xn--Bcher-Kva.example", want: "xn--bcher-kva.example"},
		{name: "fail/empty", in: ""},
		{name: "fail/dot", in: "."},
		{name: "fail/single-label", in: "localhost"},
		{name: "fail/unicode", in: "bücher.example"},
		{name: "fail/ipv4", in: "192.0.2.1"},
		{name: "fail/ipv6", in: "::1"},
		{name: "fail/underscore", in: "a_b.example.com"},
		{name: "fail/hyphen", in: "-a.example.com"},
		{name: "fail/reserved-hyphens", in: "ab--cd.example.com"},
		{name: "fail/bad-a-label", in: "xn--zz.example"},
		{name: "fail/empty-label", in: "a..example.com"},
		{name: "fail/two-trailing-dots", in: "example.com.."},
		{name: "fail/wildcard", in: "*.example.com"},
		{name: "fail/too-long", in: strings.Repeat("a.", 127) + "com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := NormalizeSNI(tt.in)
			wantOK := strings.HasPrefix(tt.name, "ok/")
			if ok != wantOK || got != tt.want {
				t.Fatalf("NormalizeSNI(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, wantOK)
			}
			checkAgree(t, tt.in)
		})
	}
}

func TestNormalizeSNINoAlloc(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := NormalizeSNI("pay.example.com"); !ok {
			t.Fatal("not ok")
		}
	})
	if allocs != 0 {
		t.Fatalf("NormalizeSNI of a normal name allocates %v times", allocs)
	}
}

func TestIsNormalized(t *testing.T) {
	if !IsNormalized("pay.example.com") || IsNormalized("Pay.example.com") || IsNormalized("x") {
		t.Fatal("IsNormalized is wrong")
	}
}

// checkAgree checks that NormalizeSNI agrees with Normalize on ASCII input.
func checkAgree(t *testing.T, in string) {
	t.Helper()
	sni, ok := NormalizeSNI(in)
	full, err := Normalize(in)
	if ok && (err != nil || full != sni) {
		t.Fatalf("NormalizeSNI(%q) = %q, true but Normalize = %q, %v", in, sni, full, err)
	}
	if isASCII(in) && !ok && err == nil {
		t.Fatalf("NormalizeSNI(%q) = false but Normalize = %q, nil", in, full)
	}
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{
		"pay.example.com", "Pay.Example.COM.", "bücher.example", "xn--bcher-kva.example", "*.example.com",
		"192.0.2.1", "::1", "a..b", "-ab.example.com", "faß.de", "\u05e9\u05dc\u05d5\u05dd.example",
		"ｅｘａｍｐｌｅ.com", "bücher\u3002example\uff0e", "a\u00adb.example", "xn--ls8h.example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := Normalize(in)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" {
				t.Fatalf("Normalize(%q) error %v has no reason", in, err)
			}
			if out != "" {
				t.Fatalf("Normalize(%q) = %q together with error %v", in, out, err)
			}
		} else {
			if len(out) > MaxLength || !utf8.ValidString(out) {
				t.Fatalf("Normalize(%q) = %q: too long", in, out)
			}
			for i := 0; i < len(out); i++ {
				c := out[i]
				if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
					t.Fatalf("Normalize(%q) = %q contains %q", in, out, c)
				}
			}
			again, err := Normalize(out)
			if err != nil || again != out {
				t.Fatalf("not idempotent: Normalize(%q) = %q, Normalize(%q) = %q, %v", in, out, out, again, err)
			}
			sni, ok := NormalizeSNI(out)
			if !ok || sni != out {
				t.Fatalf("NormalizeSNI(%q) = %q, %v on a normal name", out, sni, ok)
			}
		}
		checkAgree(t, in)
	})
}

func BenchmarkNormalizeSNI(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		NormalizeSNI("pay.example.com")
	}
}

func BenchmarkNormalize(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Normalize("Bücher.Example.com")
	}
}
