package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"guestlist.dev/edge/egress"
)

// envPrefix starts the environment variable of every flag.
const envPrefix = "GUESTLIST_"

// envName is the environment variable that sets flag name: GUESTLIST_ and the name in upper case
// with '-' as '_'.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// errHelp is returned by parseFlags when -h or --help was asked for (the usage is already printed).
var errHelp = flag.ErrHelp

// newFlagSet returns an empty flag set for "guestlist NAME" whose usage text lists the flags with
// their environment variables.
func newFlagSet(name, synopsis string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("guestlist "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n == 0 {
			fmt.Fprintf(out, "Usage: guestlist %s\n\n%s\n", name, synopsis)
			return
		}
		fmt.Fprintf(out, "Usage: guestlist %s [flags]\n\n%s\n\nFlags (each also read from GUESTLIST_<FLAG>; the command line wins):\n", name, synopsis)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				if f.DefValue != "false" { // a switch: off unless given, as Go's flag package prints it
					def = fmt.Sprintf(" (default %s)", f.DefValue)
				}
			} else if f.DefValue != "" {
				def = fmt.Sprintf(" (default %q)", f.DefValue)
			}
			fmt.Fprintf(out, "  --%s\n        %s%s [$%s]\n", f.Name, f.Usage, def, envName(f.Name))
		})
	}
	return fs
}

// parseFlags parses args into fs, then sets every flag that args left unset from its GUESTLIST_*
// variable in env (an empty value counts as unset). A bad value, from either place, is an error
// naming the flag or the variable; positional arguments are refused.
//
// Only -h / --help prints the usage (and gives errHelp); other errors are returned unprinted.
func parseFlags(fs *flag.FlagSet, args []string, env func(string) string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	if errors.Is(err, flag.ErrHelp) {
		usage()
		return errHelp
	}
	if err != nil {
		return withValueHint(fs, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		v := env(envName(f.Name))
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			if h := valueHint(f); h != "" && err.Error() == "parse error" {
				err = fmt.Errorf("%w (%s)", err, h)
			}
			errs = append(errs, fmt.Errorf("invalid value %q for %s (--%s): %w", v, envName(f.Name), f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// parseErrorRE matches the flag package's error for a value its own flag types cannot read.
var parseErrorRE = regexp.MustCompile(`^invalid (?:boolean )?value ".*" for (?:flag )?-([^:]+): parse error$`)

// withValueHint adds to the flag package's "parse error" for a command-line value what the flag
// takes (valueHint), which that error does not say.
func withValueHint(fs *flag.FlagSet, err error) error {
	m := parseErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	if f := fs.Lookup(m[1]); f != nil {
		if h := valueHint(f); h != "" {
			return fmt.Errorf("%w (%s)", err, h)
		}
	}
	return err
}

// valueHint says what a flag of the flag package's own types takes: "" for other flags, whose
// errors say it themselves.
func valueHint(f *flag.Flag) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return ""
	}
	switch g.Get().(type) {
	case bool:
		return "want true or false"
	case time.Duration:
		return "want a duration such as 30s, 5m or 1h30m"
	case int, int64, uint, uint64:
		return "want a whole number"
	case float64:
		return "want a number"
	}
	return ""
}

// levelFlag is a log level flag: debug, info, warn, error (or slog's forms such as "info+2").
type levelFlag struct{ level slog.Level }

func (l *levelFlag) String() string { return strings.ToLower(l.level.String()) }

func (l *levelFlag) Set(s string) error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return fmt.Errorf("want debug, info, warn or error")
	}
	l.level = lv
	return nil
}

// choiceFlag is a string flag limited to a few values.
type choiceFlag struct {
	value   string
	choices []string
}

func (c *choiceFlag) String() string { return c.value }

func (c *choiceFlag) Set(s string) error {
	for _, ch := range c.choices {
		if strings.EqualFold(s, ch) {
			c.value = ch
			return nil
		}
	}
	return fmt.Errorf("want one of %s", strings.Join(c.choices, ", "))
}

// addrFlag is a TCP listen address, host:port; port 0 picks a free port.
type addrFlag struct{ addr string }

func (a *addrFlag) String() string { return a.addr }

func (a *addrFlag) Set(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port (e.g. 127.0.0.1:8080, or 127.0.0.1:0 for any free port on loopback)")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	a.addr = s
	return nil
}

// egressFlag is the set of non-public addresses the edge may forward to (egress.Parse).
type egressFlag struct{ policy *egress.Policy }

func (e *egressFlag) String() string { return e.policy.String() }

func (e *egressFlag) Set(s string) error {
	p, err := egress.Parse(s)
	if err != nil {
		return err
	}
	e.policy = p
	return nil
}

// denyFlag is a list of addresses the edge must not forward to (egress.ParseEntries).
type denyFlag struct{ entries []egress.Entry }

func (d *denyFlag) String() string { return egress.Allow(d.entries...).String() }

func (d *denyFlag) Set(s string) error {
	entries, err := egress.ParseEntries(s)
	if err != nil {
		return err
	}
	d.entries = entries
	return nil
}

// bodyIdleUsage is the --body-idle-timeout flag's description.
const bodyIdleUsage = "how long the edge waits for the next bytes of a request body before it ends the request (408, or the connection closed when the request already went to the origin); a body may take any time in all while it keeps coming. 0: no limit"

// originDenyUsage is the --origin-deny flag's description.
const originDenyUsage = "addresses hostnames' origins must not be at, even public or allowed ones (the edges' own public addresses or load balancer, whose origin would loop back to the edge; a platform's services): IP addresses or prefixes, each with an optional port, comma-separated. The edge's own listening address is always denied (its port on all of loopback and every interface address, when it listens on all)"

// originAllowUsage is the --origin-allow flag's description.
const originAllowUsage = "addresses besides public ones that hostnames' origins may be at (tenants choose origins, so the edge refuses to forward into private, loopback or link-local networks unless they are listed here): IP addresses or prefixes, each with an optional port, comma-separated, e.g. 10.1.0.0/16,127.0.0.1:8081,[fd00::/8]:443"

// tokenFlag is a bearer token: printable ASCII without spaces, so that it fits an HTTP header.
type tokenFlag struct{ token string }

func (t *tokenFlag) String() string {
	if t.token == "" {
		return ""
	}
	return "<set>"
}

func (t *tokenFlag) Set(s string) error {
	if err := checkToken(s); err != nil {
		return err
	}
	t.token = s
	return nil
}

// checkToken accepts a non-empty string of printable ASCII characters without spaces.
func checkToken(s string) error {
	if s == "" {
		return errors.New("empty token")
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return errors.New("a token is printable ASCII without spaces")
		}
	}
	return nil
}
