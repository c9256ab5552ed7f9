package policy

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// filledRules returns n rules, each as many alternatives (||) of format (given three runes that
// make each alternative distinct) as fit in MaxExpressionBytes.
func filledRules(format string, n int) []Rule {
	rules := make([]Rule, 0, n)
	for r := range n {
		var parts []string
		for i := 0; ; i++ {
			part := fmt.Sprintf(format, 'A'+i%26, 'A'+(i/26)%26, 'a'+r%26)
			if len(strings.Join(append(parts, part), "||")) > MaxExpressionBytes {
				break
			}
			parts = append(parts, part)
		}
		rules = append(rules, Rule{Name: fmt.Sprintf("r%d", r), Action: Allow, Expression: strings.Join(parts, "||")})
	}
	return rules
}

// TestSizeEstimate: Program.SizeEstimate is at least the heap a compiled policy keeps, for small
// and large policies, with and without large regular expressions (which hold most of it), so that
// a cache bounding its memory by it (the audit's prepared configurations) stays within its bound.
func TestSizeEstimate(t *testing.T) {
	// What is built once for all policies (the environment, cel-go's tables) is not the policy's.
	if _, err := CompileStored([]Rule{{Name: "warm", Action: Allow, Expression: "cert.verified && request.path.startsWith('/x') && request.path.matches('^/y') && request.headers.exists(k, k == 'z')"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		rules []Rule
	}{
		{"one small rule", []Rule{{Name: "a", Action: Allow, Expression: "cert.verified && request.path.startsWith('/x')"}}},
		{"64 small rules with matches()", func() (rs []Rule) {
			for i := range 64 {
				rs = append(rs, Rule{Name: fmt.Sprint("r", i), Action: Allow, Expression: fmt.Sprintf("request.path.matches('^/a%d')", i)})
			}
			return rs
		}()},
		{"64 rules of comparisons", filledRules("request.path == '/%c%c%c'", 64)},
		{"45 rules of small patterns", filledRules("''.matches('(?:a|b)*a(?:a|b){8}%c%c%c')", 45)},
		{"4 rules of 200-instruction patterns", filledRules("request.path.matches('[^a]{99}[^b]{99}%c%c%c')", 4)},
		{"4 rules of classes of many ranges", filledRules("request.path.matches('[^acegikmoqsuwyACEGIKMOQSUWY02468]{60}%c%c%c')", 4)},
		{"4 rules of case-folded classes", filledRules("request.path.matches('(?i)[b-y]{150}%c%c%c')", 4)},
		{"4 rules of 990-instruction patterns", filledRules("''.matches('[a-z]{990}%c%c%c')", 4)},
	} {
		// The heap's own noise (a runtime or testing allocation between the two readings) is a few
		// KiB: a small policy is compiled as many times as make up at least 4 MiB, and the copies
		// are measured together, so that the noise is a small part of what is measured.
		one, err := CompileStored(tc.rules)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		copies := int(max(1, (4<<20)/one.SizeEstimate()))
		ps := make([]*Program, copies)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range ps {
			if ps[i], err = CompileStored(tc.rules); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		var estimated int64
		for _, p := range ps {
			estimated += p.SizeEstimate()
		}
		runtime.KeepAlive(ps)
		t.Logf("%s, %d copies: hold %d KiB, estimated %d KiB", tc.name, copies, held/1024, estimated/1024)
		if estimated < held {
			t.Errorf("%s: %d copies: SizeEstimate %d bytes each, but a copy holds %d", tc.name, copies, estimated/int64(copies), held/int64(copies))
		}
	}
}
