package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// TestParseFlagsValueHints: a value the flag package's own types cannot read, given as a flag or
// in the environment, is refused with what the flag takes; other errors are left as they are.
func TestParseFlagsValueHints(t *testing.T) {
	newFS := func() *flag.FlagSet {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.Bool("projector", false, "")
		fs.Duration("wait", time.Second, "")
		fs.Int("count", 1, "")
		fs.Float64("ratio", 1, "")
		fs.String("name", "", "")
		return fs
	}
	noEnv := func(string) string { return "" }
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "fail/bool flag", args: []string{"--projector=maybe"}, want: `invalid boolean value "maybe" for -projector: parse error (want true or false)`},
		{name: "fail/duration flag", args: []string{"--wait", "abc"}, want: "-wait: parse error (want a duration such as 30s, 5m or 1h30m)"},
		{name: "fail/int flag", args: []string{"--count", "x"}, want: "-count: parse error (want a whole number)"},
		{name: "fail/float flag", args: []string{"--ratio", "x"}, want: "-ratio: parse error (want a number)"},
		{name: "fail/bool variable", env: map[string]string{"GUESTLIST_PROJECTOR": "maybe"}, want: `invalid value "maybe" for GUESTLIST_PROJECTOR (--projector): parse error (want true or false)`},
		{name: "fail/duration variable", env: map[string]string{"GUESTLIST_WAIT": "5"}, want: `invalid value "5" for GUESTLIST_WAIT (--wait): parse error (want a duration such as 30s, 5m or 1h30m)`},
		{name: "fail/unknown flag", args: []string{"--nope"}, want: "flag provided but not defined: -nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := noEnv
			if tc.env != nil {
				env = func(k string) string { return tc.env[k] }
			}
			err := parseFlags(newFS(), tc.args, env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if strings.Count(err.Error(), "(want") > 1 {
				t.Errorf("the hint is added twice: %v", err)
			}
		})
	}
}
