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
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		p, err := CompileStored(tc.rules)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		runtime.KeepAlive(p)
		t.Logf("%s: holds %d KiB, estimated %d KiB", tc.name, held/1024, p.SizeEstimate()/1024)
		if p.SizeEstimate() < held {
			t.Errorf("%s: SizeEstimate %d bytes, but the policy holds %d", tc.name, p.SizeEstimate(), held)
		}
	}
}
