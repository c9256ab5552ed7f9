package decision

import (
	"strings"
	"testing"
)

// TestPolicyPath: the path the policy sees, and the paths refused, from a decoded path; and each
// result is a fixed point (the audit's explain takes logged paths through PolicyPath again).
func TestPolicyPath(t *testing.T) {
	cases := []struct {
		name, in, want string
		reject         error
	}{
		{name: "ok/plain", in: "/pay/x", want: "/pay/x"},
		{name: "ok/root", in: "/", want: "/"},
		{name: "ok/empty", in: "", want: "/"},
		{name: "ok/asterisk-form", in: "*", want: "/*"},
		{name: "ok/decoded space", in: "/a b", want: "/a b"},
		{name: "ok/params dropped", in: "/v1/items;v=2", want: "/v1/items"},
		{name: "ok/params of a middle segment dropped", in: "/admin;x/y", want: "/admin/y"},
		{name: "ok/empty segment with params", in: "/;/admin", want: "/admin"},
		{name: "ok/params only", in: "/;x", want: "/"},
		{name: "ok/repeated slashes", in: "//pay//x", want: "/pay/x"},
		{name: "ok/trailing slash kept", in: "/pay/x/", want: "/pay/x/"},
		{name: "ok/trailing slash after params", in: "/pay;x/", want: "/pay/"},
		{name: "ok/dot-led names", in: "/.well-known/x/.env", want: "/.well-known/x/.env"},
		{name: "ok/dots inside a name", in: "/a..b/c./...", want: "/a..b/c./..."},
		{name: "ok/dot after params", in: "/a;../b", want: "/a/b"},
		{name: "fail/dot-dot", in: "/admin/../public", reject: ErrPathDotSegment},
		{name: "fail/dot", in: "/./admin", reject: ErrPathDotSegment},
		{name: "fail/dot-dot at the end", in: "/admin/..", reject: ErrPathDotSegment},
		{name: "fail/dot at the end", in: "/admin/.", reject: ErrPathDotSegment},
		{name: "fail/dot-dot with params", in: "/x/..;/admin", reject: ErrPathDotSegment},
		{name: "fail/dot-dot with named params", in: "/x/..;jsessionid=1/admin", reject: ErrPathDotSegment},
		{name: "fail/dot with params", in: "/x/.;y/admin", reject: ErrPathDotSegment},
		{name: "fail/relative dot-dot", in: "..", reject: ErrPathDotSegment},
		{name: "fail/backslash", in: "/x/..\\admin", reject: ErrPathBackslash},
		{name: "fail/backslash without dots", in: "/admin\\x", reject: ErrPathBackslash},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PolicyPath(tc.in)
			if err != tc.reject || got != tc.want {
				t.Fatalf("PolicyPath(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.reject)
			}
			if err == nil {
				if again, err := PolicyPath(got); again != got || err != nil {
					t.Errorf("PolicyPath(%q) = %q, %v; want it unchanged", got, again, err)
				}
			}
		})
	}
}

// FuzzPolicyPath: PolicyPath's results are fixed points, start with "/", and hold no dot
// segment, backslash or ";".
func FuzzPolicyPath(f *testing.F) {
	for _, s := range []string{"/pay/x", "", "*", "/a;b/c", "//x//", "/.well-known/", "/a..b/", "/x/..;/y", "/a b/%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := PolicyPath(in)
		if err != nil {
			return
		}
		if again, err := PolicyPath(got); again != got || err != nil {
			t.Fatalf("PolicyPath(%q) = %q; PolicyPath of that = %q, %v", in, got, again, err)
		}
		if got == "" || got[0] != '/' {
			t.Fatalf("PolicyPath(%q) = %q, not absolute", in, got)
		}
		for _, seg := range strings.Split(got, "/") {
			if seg == "." || seg == ".." || strings.ContainsAny(seg, ";\\") {
				t.Fatalf("PolicyPath(%q) = %q, segment %q", in, got, seg)
			}
		}
	})
}
