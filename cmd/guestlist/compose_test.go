package main

// The structural check of docker-compose.yml, the Dockerfile, .dockerignore and
// deploy/otel-collector.yaml. No Docker engine runs in CI, so this test reads the files and checks
// that they agree with each other and with the code: the subcommands and flags of every guestlist
// service are read from the binary's own flag sets (the output of "guestlist COMMAND -h"), never
// from a list kept here.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"guestlist.dev/edge/egress"
	"guestlist.dev/services/eventstore/storeurl"
)

// Files the check reads, relative to the repository root.
const (
	composeFileName    = "docker-compose.yml"
	dockerfileName     = "Dockerfile"
	dockerignoreName   = ".dockerignore"
	guestlistMainPkg   = "./cmd/guestlist"
	clusterProfileName = "cluster"
)

// deployCheck checks the deployment files under root. Files in overlay stand in for the files on
// disk (the tests that break a file on purpose use it).
type deployCheck struct {
	root    string
	overlay map[string]string
	// flags returns the flags of a guestlist subcommand by their GUESTLIST_* variable.
	flags func(command string) (map[string]flagInfo, error)
	// buildFiles lists the files (relative to root) that "go build ./cmd/guestlist" reads; nil skips
	// the .dockerignore check.
	buildFiles func() ([]string, error)

	// subnets are the declared networks' ipam subnets, by network (loadCompose).
	subnets map[string][]netip.Prefix
	// required are the variables that docker compose refuses to run without (${VAR:?message}),
	// in the order they first appear (interpolate).
	required []string
	problems []string
}

// flagInfo is one flag of a subcommand, as its -h output shows it.
type flagInfo struct {
	Name    string // without the dashes
	Default string // "" when none is shown
	// Secret: the flag is a credential (see secretFlag).
	Secret bool
}

// secretName matches the names of flags that hold a credential whatever their -h text says.
var secretName = regexp.MustCompile(`(^|-)(token|password|secret)$`)

// secretFlag reports whether the flag name, whose -h text is usage, holds a secret: a bearer token
// (the -h text of every token flag says "bearer token": --admin-token, --edge-token) or a flag
// named like a credential.
func secretFlag(name, usage string) bool {
	return strings.Contains(usage, "bearer token") || secretName.MatchString(name)
}

// listenPort returns the port of a listen address flag ("host:port" default), or false.
func (f flagInfo) listenPort() (int, bool) {
	if !strings.HasSuffix(f.Name, "-addr") || f.Default == "" {
		return 0, false
	}
	_, p, err := net.SplitHostPort(f.Default)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(p)
	return n, err == nil
}

func (c *deployCheck) problemf(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

func (c *deployCheck) read(rel string) ([]byte, error) {
	if s, ok := c.overlay[rel]; ok {
		return []byte(s), nil
	}
	return os.ReadFile(filepath.Join(c.root, filepath.FromSlash(rel)))
}

func (c *deployCheck) exists(rel string) bool {
	if _, ok := c.overlay[rel]; ok {
		return true
	}
	_, err := os.Stat(filepath.Join(c.root, filepath.FromSlash(rel)))
	return err == nil
}

// ---- docker-compose.yml, as decoded ----

type rawCompose struct {
	Services map[string]rawService `yaml:"services"`
	Volumes  map[string]any        `yaml:"volumes"`
	Networks map[string]*struct {
		Ipam struct {
			Config []struct {
				Subnet string `yaml:"subnet"`
			} `yaml:"config"`
		} `yaml:"ipam"`
	} `yaml:"networks"`
}

type rawService struct {
	Image       string   `yaml:"image"`
	Build       any      `yaml:"build"`
	Command     any      `yaml:"command"`
	Environment any      `yaml:"environment"`
	Ports       []any    `yaml:"ports"`
	Volumes     []any    `yaml:"volumes"`
	DependsOn   any      `yaml:"depends_on"`
	Profiles    []string `yaml:"profiles"`
	Networks    any      `yaml:"networks"`
	Healthcheck *struct {
		Test    any  `yaml:"test"`
		Disable bool `yaml:"disable"`
	} `yaml:"healthcheck"`
}

// service is one compose service in a normalised form.
type service struct {
	name       string
	image      string
	build      *buildSpec
	command    []string
	env        map[string]string
	ports      []portSpec
	mounts     []mountSpec
	dependsOn  map[string]string // service -> condition
	profiles   []string
	healthTest []string // nil: no health check
	// networks: the networks the service is on, each with its fixed IPv4 address (invalid: none).
	networks map[string]netip.Addr
}

type buildSpec struct{ context, dockerfile string }

type portSpec struct {
	raw             string
	hostIP          string
	host, container int // host 0: any free port
}

type mountSpec struct {
	raw            string
	source, target string
	bind           bool // a host path, not a named volume
}

// interpolation matches $$, ${VAR...} and $VAR in a compose file.
var interpolation = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// requiredPrefix starts the value that interpolate gives a required variable, as if the user had
// set it (README.md says how).
const requiredPrefix = "set-by-the-user-"

// interpolate resolves the compose file's variables as a fresh checkout without an .env file or
// exported variables sees them: every variable must have a default, except the secrets that
// docker compose must refuse to run without (${VAR:?message}, whose message names VAR): those
// stand for a value the user set (requiredPrefix + the variable) and are listed in c.required.
func (c *deployCheck) interpolate(text string) string {
	seen := map[string]bool{}
	return interpolation.ReplaceAllStringFunc(text, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := interpolation.FindStringSubmatch(m)
		name, op, arg := sub[1], sub[2], sub[3]
		if name == "" {
			name = sub[4]
		}
		switch op {
		case ":-", "-":
			return arg
		case ":+", "+":
			return ""
		case ":?", "?":
			if !seen[name] {
				seen[name] = true
				c.required = append(c.required, name)
				if op == "?" {
					c.problemf("%s: ${%s?...} accepts an empty value; write ${%s:?message}", composeFileName, name, name)
				}
				if !strings.Contains(arg, name) {
					c.problemf("%s: ${%s:?%s}: the message does not name %s, so docker compose would stop without saying what to set", composeFileName, name, arg, name)
				}
			}
			return requiredPrefix + name
		}
		if !seen[name] {
			seen[name] = true
			c.problemf("%s: $%s has no default (write ${%s:-value}, or ${%s:?message} for a secret the user must set); docker compose up must work without an .env file", composeFileName, name, name, name)
		}
		return ""
	})
}

func (c *deployCheck) loadCompose() (map[string]*service, map[string]bool) {
	b, err := c.read(composeFileName)
	if err != nil {
		c.problemf("read %s: %v", composeFileName, err)
		return nil, nil
	}
	var raw rawCompose
	if err := yaml.Unmarshal([]byte(c.interpolate(string(b))), &raw); err != nil {
		c.problemf("%s does not parse: %v", composeFileName, err)
		return nil, nil
	}
	if len(raw.Services) == 0 {
		c.problemf("%s has no services", composeFileName)
	}
	services := map[string]*service{}
	for name, r := range raw.Services {
		services[name] = c.normalise(name, r)
	}
	volumes := map[string]bool{}
	for name := range raw.Volumes {
		volumes[name] = true
	}
	c.subnets = map[string][]netip.Prefix{}
	for name, n := range raw.Networks {
		if n == nil {
			continue
		}
		for _, cfg := range n.Ipam.Config {
			pre, err := netip.ParsePrefix(cfg.Subnet)
			if err != nil {
				c.problemf("network %s: subnet %q is not an IP prefix", name, cfg.Subnet)
				continue
			}
			c.subnets[name] = append(c.subnets[name], pre)
		}
	}
	return services, volumes
}

func (c *deployCheck) normalise(name string, r rawService) *service {
	s := &service{name: name, image: r.Image, profiles: r.Profiles, env: map[string]string{}, dependsOn: map[string]string{}, networks: map[string]netip.Addr{}}
	switch nets := r.Networks.(type) {
	case nil:
		s.networks["default"] = netip.Addr{}
	case []any:
		for _, n := range nets {
			s.networks[str(n)] = netip.Addr{}
		}
	case map[string]any:
		for n, spec := range nets {
			var fixed netip.Addr
			if m, ok := spec.(map[string]any); ok && m["ipv4_address"] != nil {
				a, err := netip.ParseAddr(str(m["ipv4_address"]))
				if err != nil {
					c.problemf("service %s: network %s: ipv4_address %v is not an IP address", name, n, m["ipv4_address"])
				}
				fixed = a
			}
			s.networks[n] = fixed
		}
	default:
		c.problemf("service %s: networks is a %T; want a list or a mapping", name, r.Networks)
	}
	switch b := r.Build.(type) {
	case nil:
	case string:
		s.build = &buildSpec{context: b, dockerfile: "Dockerfile"}
	case map[string]any:
		s.build = &buildSpec{context: str(b["context"]), dockerfile: str(b["dockerfile"])}
		if s.build.context == "" {
			s.build.context = "."
		}
		if s.build.dockerfile == "" {
			s.build.dockerfile = "Dockerfile"
		}
	default:
		c.problemf("service %s: build is a %T; want a path or a mapping", name, r.Build)
	}
	s.command = stringList(r.Command)
	switch e := r.Environment.(type) {
	case nil:
	case map[string]any:
		for k, v := range e {
			s.env[k] = str(v)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(str(kv), "=")
			s.env[k] = v
		}
	default:
		c.problemf("service %s: environment is a %T; want a mapping or a list", name, r.Environment)
	}
	for _, p := range r.Ports {
		ps, err := parsePort(p)
		if err != nil {
			c.problemf("service %s: port %v: %v", name, p, err)
			continue
		}
		s.ports = append(s.ports, ps)
	}
	for _, v := range r.Volumes {
		m, err := parseMount(v)
		if err != nil {
			c.problemf("service %s: volume %v: %v", name, v, err)
			continue
		}
		s.mounts = append(s.mounts, m)
	}
	switch d := r.DependsOn.(type) {
	case nil:
	case []any:
		for _, n := range d {
			s.dependsOn[str(n)] = "service_started"
		}
	case map[string]any:
		for n, spec := range d {
			cond := "service_started"
			if m, ok := spec.(map[string]any); ok && m["condition"] != nil {
				cond = str(m["condition"])
			}
			s.dependsOn[n] = cond
		}
	default:
		c.problemf("service %s: depends_on is a %T; want a list or a mapping", name, r.DependsOn)
	}
	if h := r.Healthcheck; h != nil && !h.Disable {
		switch t := h.Test.(type) {
		case string:
			s.healthTest = []string{"CMD-SHELL", t}
		default:
			s.healthTest = stringList(t)
		}
		if len(s.healthTest) == 0 || s.healthTest[0] == "NONE" {
			s.healthTest = nil
		}
	}
	return s
}

func str(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

func stringList(v any) []string {
	switch t := v.(type) {
	case nil:
		return nil
	case string:
		return strings.Fields(t)
	case []any:
		out := make([]string, len(t))
		for i, e := range t {
			out[i] = str(e)
		}
		return out
	}
	return []string{fmt.Sprint(v)}
}

// parsePort reads the short ("[IP:]HOST:CONTAINER[/PROTO]", "CONTAINER") and long forms of a port.
func parsePort(v any) (portSpec, error) {
	if m, ok := v.(map[string]any); ok {
		ps := portSpec{raw: fmt.Sprint(m), hostIP: str(m["host_ip"])}
		var err error
		if ps.container, err = strconv.Atoi(str(m["target"])); err != nil {
			return ps, fmt.Errorf("target %q is not a port number", str(m["target"]))
		}
		if p := str(m["published"]); p != "" {
			if ps.host, err = strconv.Atoi(p); err != nil {
				return ps, fmt.Errorf("published %q is not a port number (ranges are not supported here)", p)
			}
		}
		return ps, nil
	}
	raw := str(v)
	ps := portSpec{raw: raw}
	spec, _, _ := strings.Cut(raw, "/")
	parts := strings.Split(spec, ":")
	var hostPart, containerPart string
	switch len(parts) {
	case 1:
		containerPart = parts[0]
	case 2:
		hostPart, containerPart = parts[0], parts[1]
	case 3:
		ps.hostIP, hostPart, containerPart = parts[0], parts[1], parts[2]
	default:
		return ps, fmt.Errorf("want [IP:]HOST:CONTAINER (IPv6 host addresses are not supported here)")
	}
	var err error
	if ps.container, err = strconv.Atoi(containerPart); err != nil {
		return ps, fmt.Errorf("container port %q is not a port number (ranges are not supported here)", containerPart)
	}
	if hostPart != "" {
		if ps.host, err = strconv.Atoi(hostPart); err != nil {
			return ps, fmt.Errorf("host port %q is not a port number (ranges are not supported here)", hostPart)
		}
	}
	return ps, nil
}

// parseMount reads the short ("SOURCE:TARGET[:MODE]") and long forms of a volume.
func parseMount(v any) (mountSpec, error) {
	if m, ok := v.(map[string]any); ok {
		ms := mountSpec{raw: fmt.Sprint(m), source: str(m["source"]), target: str(m["target"]), bind: str(m["type"]) == "bind"}
		if ms.target == "" {
			return ms, fmt.Errorf("no target")
		}
		if ms.source == "" && str(m["type"]) != "tmpfs" {
			return ms, fmt.Errorf("no source: an anonymous volume (name it and declare it under volumes:)")
		}
		return ms, nil
	}
	raw := str(v)
	parts := strings.Split(raw, ":")
	if len(parts) < 2 {
		return mountSpec{raw: raw}, fmt.Errorf("an anonymous volume (name it and declare it under volumes:)")
	}
	ms := mountSpec{raw: raw, source: parts[0], target: parts[1]}
	ms.bind = strings.HasPrefix(ms.source, ".") || strings.HasPrefix(ms.source, "/") || strings.HasPrefix(ms.source, "~")
	return ms, nil
}

// mountFor returns the mount whose target holds dir, the longest first.
func (s *service) mountFor(dir string) (mountSpec, bool) {
	var best mountSpec
	found := false
	for _, m := range s.mounts {
		if (dir == m.target || strings.HasPrefix(dir, strings.TrimSuffix(m.target, "/")+"/")) && len(m.target) >= len(best.target) {
			best, found = m, true
		}
	}
	return best, found
}

func (s *service) inProfile(p string) bool { return slices.Contains(s.profiles, p) }

// ---- the Dockerfile ----

type dockerfileInfo struct {
	finalFrom    string
	finalUser    string
	entrypoint   []string
	goBuilds     []string // the RUN instructions that run "go build"
	cgoDisabled  []bool   // per goBuilds entry: CGO_ENABLED=0 in the RUN or the stage's ENV
	copySources  []string // COPY/ADD sources from the build context
	stageCount   int
	instructions int
}

// parseDockerfile reads what the checks need: instructions with their continuation lines joined,
// comments dropped.
func parseDockerfile(text string) dockerfileInfo {
	var info dockerfileInfo
	var lines []string
	var cur strings.Builder
	for _, line := range strings.Split(text, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "#") {
			continue
		}
		if strings.HasSuffix(t, "\\") {
			cur.WriteString(strings.TrimSuffix(t, "\\") + " ")
			continue
		}
		cur.WriteString(t)
		if s := strings.TrimSpace(cur.String()); s != "" {
			lines = append(lines, s)
		}
		cur.Reset()
	}
	stageEnv := map[string]string{}
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		info.instructions++
		switch strings.ToUpper(instr) {
		case "FROM":
			info.stageCount++
			fields := strings.Fields(rest)
			for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
				fields = fields[1:]
			}
			if len(fields) > 0 {
				info.finalFrom = fields[0]
			}
			info.finalUser, info.entrypoint = "", nil
			stageEnv = map[string]string{}
		case "USER":
			info.finalUser = rest
		case "ENV":
			for _, kv := range strings.Fields(rest) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					stageEnv[k] = v
				}
			}
		case "ENTRYPOINT":
			var ep []string
			if json.Unmarshal([]byte(rest), &ep) == nil {
				info.entrypoint = ep
			} else {
				info.entrypoint = []string{"/bin/sh", "-c", rest}
			}
		case "RUN":
			if strings.Contains(rest, "go build") {
				info.goBuilds = append(info.goBuilds, rest)
				cgo0 := strings.Contains(rest, "CGO_ENABLED=0") ||
					(stageEnv["CGO_ENABLED"] == "0" && !strings.Contains(rest, "CGO_ENABLED=1"))
				info.cgoDisabled = append(info.cgoDisabled, cgo0)
			}
		case "COPY", "ADD":
			args := strings.Fields(rest)
			fromStage := false
			var srcs []string
			for _, a := range args {
				switch {
				case strings.HasPrefix(a, "--from="):
					fromStage = true
				case strings.HasPrefix(a, "--"):
				default:
					srcs = append(srcs, a)
				}
			}
			if !fromStage && len(srcs) > 1 {
				info.copySources = append(info.copySources, srcs[:len(srcs)-1]...)
			}
		}
	}
	return info
}

// nonRootUser reports whether a USER value names a non-root user: not empty, not root, not uid 0.
func nonRootUser(u string) bool {
	name, _, _ := strings.Cut(u, ":")
	return name != "" && name != "root" && name != "0"
}

// ---- .dockerignore ----

// dockerignore is a .dockerignore file: the last pattern that matches a path or one of its parent
// directories decides, "!" lets a path back in (the rules of Docker's pattern matcher).
type dockerignore []struct {
	re      *regexp.Regexp
	exclude bool
}

func parseDockerignore(text string) (dockerignore, error) {
	var d dockerignore
	for _, line := range strings.Split(text, "\n") {
		p := strings.TrimSpace(line)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		exclude := true
		if strings.HasPrefix(p, "!") {
			exclude, p = false, strings.TrimSpace(p[1:])
		}
		p = strings.TrimPrefix(path.Clean("/"+p), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(p); i++ {
			switch ch := p[i]; {
			case ch == '*' && i+1 < len(p) && p[i+1] == '*':
				i++
				if i+1 < len(p) && p[i+1] == '/' {
					i++
					re.WriteString("(.*/)?")
				} else {
					re.WriteString(".*")
				}
			case ch == '*':
				re.WriteString("[^/]*")
			case ch == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(string(ch)))
			}
		}
		re.WriteString("$")
		r, err := regexp.Compile(re.String())
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", line, err)
		}
		d = append(d, struct {
			re      *regexp.Regexp
			exclude bool
		}{r, exclude})
	}
	return d, nil
}

// excludes reports whether the file at rel (slash-separated, relative to the context) is left out
// of the build context.
func (d dockerignore) excludes(rel string) bool {
	var prefixes []string
	parts := strings.Split(rel, "/")
	for i := range parts {
		prefixes = append(prefixes, strings.Join(parts[:i+1], "/"))
	}
	excluded := false
	for _, p := range d {
		for _, pre := range prefixes {
			if p.re.MatchString(pre) {
				excluded = p.exclude
				break
			}
		}
	}
	return excluded
}

// ---- the checks ----

// guestlistImage reports whether s runs the image built from this repository's Dockerfile.
func (c *deployCheck) guestlistImage(s *service) bool {
	return s.build != nil && filepath.Clean(s.build.context) == "." && s.build.dockerfile == dockerfileName
}

func (c *deployCheck) run() []string {
	services, volumes := c.loadCompose()
	df := c.checkDockerfile()
	if services == nil {
		return c.problems
	}
	names := make([]string, 0, len(services))
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)

	c.checkImages(names, services)
	c.checkDependsOn(names, services)
	c.checkVolumes(names, services, volumes)
	c.checkHostPorts(names, services)
	listen := c.checkGuestlistServices(names, services, df)
	c.checkKurrentDB(names, services)
	c.checkCollector(names, services, listen)
	c.checkOriginEgress(names, services)
	c.checkSecrets(names, services)
	c.checkReadmeSetsRequired()
	return c.problems
}

// checkSecrets: no guestlist secret (a flag that secretFlag reports, such as the admin and the
// edge token) may work without the user choosing it, since anyone who reads this file knows a
// default or a fixed value. The admin token's API publishes its REST port on the host's loopback,
// where any web page in the user's browser could reach it by DNS rebinding; the edge token opens
// the projector's ConfigService, which streams every tenant's configuration. A service that sets
// such a variable takes it, whole, from a variable the user must set (${VAR:?message}), and every
// service that sets it takes it from the same one: the edges present the edge token the projector
// expects. (A service may leave one unset where the role does without: the API then generates its
// admin token into its data directory.)
func (c *deployCheck) checkSecrets(names []string, services map[string]*service) {
	from := map[string]map[string][]string{} // GUESTLIST_* variable -> the user's variable -> services
	secrets := 0
	for _, n := range names {
		s := services[n]
		if !c.guestlistImage(s) || len(s.command) == 0 {
			continue
		}
		flags, err := c.flags(s.command[0])
		if err != nil {
			continue // checkGuestlistServices says so
		}
		envs := make([]string, 0, len(flags))
		for env, f := range flags {
			if f.Secret {
				envs = append(envs, env)
			}
		}
		sort.Strings(envs)
		secrets += len(envs)
		for _, env := range envs {
			v, ok := s.env[env]
			if !ok {
				continue
			}
			variable, fromUser := strings.CutPrefix(v, requiredPrefix)
			if !fromUser || !slices.Contains(c.required, variable) {
				c.problemf("service %s: %s=%q does not come, whole, from a variable the user must set; a default or a fixed value is known to anyone who reads this file (a web page can reach the published API by DNS rebinding; the edge token opens every tenant's configuration); write ${%s:?message}",
					n, env, v, env)
				continue
			}
			if from[env] == nil {
				from[env] = map[string][]string{}
			}
			from[env][variable] = append(from[env][variable], n)
		}
	}
	if secrets == 0 {
		c.problemf("no guestlist service's subcommand has a secret flag (a bearer token): the -h output no longer says \"bearer token\", so this check checks nothing")
	}
	envs := make([]string, 0, len(from))
	for env := range from {
		envs = append(envs, env)
	}
	sort.Strings(envs)
	for _, env := range envs {
		if len(from[env]) < 2 {
			continue
		}
		var parts []string
		for variable, svcs := range from[env] {
			parts = append(parts, fmt.Sprintf("%s from $%s", strings.Join(svcs, ", "), variable))
		}
		sort.Strings(parts)
		c.problemf("services take %s from different variables (%s), so they may be given different secrets; take it from one", env, strings.Join(parts, "; "))
	}
}

// composeSectionHeading starts the README section about docker compose: a level-2 heading
// that mentions it.
var composeSectionHeading = regexp.MustCompile(`(?m)^## .*docker compose.*$`)

// checkReadmeSetsRequired: docker compose refuses to run without the required variables, so the
// README's compose section must say how to set each (export VAR=...). Elsewhere would not do: the
// section of the separate roles exports GUESTLIST_EDGE_TOKEN too, for other processes.
func (c *deployCheck) checkReadmeSetsRequired() {
	if len(c.required) == 0 {
		return
	}
	b, err := c.read("README.md")
	if err != nil {
		c.problemf("read README.md: %v", err)
		return
	}
	loc := composeSectionHeading.FindIndex(b)
	if loc == nil {
		c.problemf("README.md has no section about docker compose (a \"## ... docker compose\" heading) to say how to set %s", strings.Join(c.required, ", "))
		return
	}
	section := string(b[loc[0]:])
	if end := strings.Index(section[loc[1]-loc[0]:], "\n## "); end >= 0 {
		section = section[:loc[1]-loc[0]+end]
	}
	for _, name := range c.required {
		if !strings.Contains(section, "export "+name+"=") {
			c.problemf("README.md's docker compose section never sets $%s (export %s=...), without which %s stops every docker compose command", name, name, composeFileName)
		}
	}
}

// checkOriginEgress: tenants choose their hostnames' origins, so what an edge may forward to
// besides public addresses (GUESTLIST_ORIGIN_ALLOW) must reach nothing but origins: every allowed
// entry lies inside the subnet of a network the edge is on, covers no other service's fixed
// address there, and is a single address when other services have addresses given by Docker
// there (they could get one inside it); and each origin has a fixed address on a network the edge
// shares, which the edge allows on the port the origin listens on.
func (c *deployCheck) checkOriginEgress(names []string, services map[string]*service) {
	role := func(s *service) string {
		switch {
		case isKurrentDB(s):
			return "store"
		case c.guestlistImage(s) && len(s.command) > 0:
			return s.command[0]
		}
		return ""
	}
	for _, n := range names {
		edge := services[n]
		if role(edge) != "edge" {
			continue
		}
		v := edge.env["GUESTLIST_ORIGIN_ALLOW"]
		policy, err := egress.Parse(v)
		if err != nil {
			c.problemf("service %s: GUESTLIST_ORIGIN_ALLOW=%q: %v", n, v, err)
			continue
		}
		for _, e := range policy.Entries() {
			pre := e.Prefix
			network := ""
			for net, subnets := range c.subnets {
				if _, on := edge.networks[net]; !on {
					continue
				}
				for _, sub := range subnets {
					if sub.Bits() <= pre.Bits() && sub.Contains(pre.Addr()) {
						network = net
					}
				}
			}
			if network == "" {
				c.problemf("service %s: GUESTLIST_ORIGIN_ALLOW allows %s, which is not inside the subnet of a network the edge is on (declare the origins' network with an ipam subnet)", n, e)
				continue
			}
			for _, other := range names {
				fixed, on := services[other].networks[network]
				if !on || role(services[other]) == "origin" {
					continue
				}
				switch {
				case fixed.IsValid() && pre.Contains(fixed):
					c.problemf("service %s: GUESTLIST_ORIGIN_ALLOW allows %s, which includes %s's address %s: a tenant's origin URL could name it", n, e, other, fixed)
				case !fixed.IsValid() && pre.Bits() < pre.Addr().BitLen():
					c.problemf("service %s: GUESTLIST_ORIGIN_ALLOW allows %s in network %s, where %s gets an address from Docker that may be inside it: allow origins' fixed addresses only", n, e, network, other)
				}
			}
		}
		for _, o := range names {
			origin := services[o]
			if role(origin) != "origin" {
				continue
			}
			port := 0
			if _, p, err := net.SplitHostPort(origin.env["GUESTLIST_ORIGIN_ADDR"]); err == nil {
				port, _ = strconv.Atoi(p)
			}
			reachable := false
			for net, fixed := range origin.networks {
				if _, shared := edge.networks[net]; shared && fixed.IsValid() && policy.Check(netip.AddrPortFrom(fixed, uint16(port))) == nil {
					reachable = true
				}
			}
			if !reachable {
				c.problemf("service %s: the edge would refuse to forward to %s: it has no fixed address (ipv4_address) on a network the edge shares that GUESTLIST_ORIGIN_ALLOW allows on its port %d", n, o, port)
			}
		}
	}
}

func (c *deployCheck) checkDockerfile() dockerfileInfo {
	b, err := c.read(dockerfileName)
	if err != nil {
		c.problemf("read %s: %v", dockerfileName, err)
		return dockerfileInfo{}
	}
	df := parseDockerfile(string(b))
	if df.stageCount < 2 {
		c.problemf("%s: %d stage(s); want a multi-stage build (a build stage and a small final stage)", dockerfileName, df.stageCount)
	}
	if !nonRootUser(df.finalUser) {
		c.problemf("%s: the final stage (FROM %s) runs as %q; want a non-root USER (e.g. USER 65532:65532)", dockerfileName, df.finalFrom, df.finalUser)
	}
	if df.finalFrom == "scratch" {
		if u, _, _ := strings.Cut(df.finalUser, ":"); strings.Trim(u, "0123456789") != "" {
			c.problemf("%s: FROM scratch has no /etc/passwd, so USER %q cannot resolve; use a numeric uid", dockerfileName, df.finalUser)
		}
	}
	if len(df.goBuilds) == 0 {
		c.problemf("%s: no RUN ... go build", dockerfileName)
	}
	for i, run := range df.goBuilds {
		if !df.cgoDisabled[i] {
			c.problemf("%s: %q builds without CGO_ENABLED=0; the final image has no C library", dockerfileName, run)
		}
		if !strings.Contains(run, guestlistMainPkg) {
			c.problemf("%s: %q does not build %s", dockerfileName, run, guestlistMainPkg)
		}
	}
	if len(df.entrypoint) == 0 {
		c.problemf("%s: the final stage has no ENTRYPOINT (the compose services pass only the subcommand)", dockerfileName)
	}
	ignore := dockerignore(nil)
	if b, err := c.read(dockerignoreName); err == nil {
		if ignore, err = parseDockerignore(string(b)); err != nil {
			c.problemf("%s: %v", dockerignoreName, err)
		}
	} else {
		c.problemf("read %s: %v (without it the whole work tree, .git and local data included, is sent to the builder)", dockerignoreName, err)
	}
	for _, src := range df.copySources {
		src = strings.TrimSuffix(src, "/")
		if !c.exists(src) {
			c.problemf("%s: COPY source %q does not exist", dockerfileName, src)
		} else if ignore.excludes(src) {
			c.problemf("%s: COPY source %q is excluded from the build context by %s", dockerfileName, src, dockerignoreName)
		}
	}
	if c.buildFiles != nil && ignore != nil {
		files, err := c.buildFiles()
		if err != nil {
			c.problemf("list the files %s needs: %v", guestlistMainPkg, err)
		}
		for _, f := range files {
			if ignore.excludes(f) {
				c.problemf("%s leaves %s out of the build context, but go build %s needs it", dockerignoreName, f, guestlistMainPkg)
			}
		}
	}
	return df
}

func (c *deployCheck) checkImages(names []string, services map[string]*service) {
	for _, n := range names {
		s := services[n]
		if s.image == "" && s.build == nil {
			c.problemf("service %s: neither image nor build", n)
		}
		if s.build != nil {
			ctx := filepath.ToSlash(filepath.Clean(s.build.context))
			if !c.exists(ctx) {
				c.problemf("service %s: build context %q does not exist", n, s.build.context)
			} else if !c.exists(path.Join(ctx, s.build.dockerfile)) {
				c.problemf("service %s: the Dockerfile %q does not exist in the build context %q", n, s.build.dockerfile, s.build.context)
			}
			continue
		}
		ref := s.image
		if i := strings.LastIndex(ref, "/"); i >= 0 {
			ref = ref[i+1:]
		}
		if _, tag, ok := strings.Cut(ref, ":"); !ok || tag == "" || tag == "latest" {
			if !strings.Contains(s.image, "@sha256:") {
				c.problemf("service %s: image %q is not pinned to a version tag", n, s.image)
			}
		}
	}
}

func (c *deployCheck) checkDependsOn(names []string, services map[string]*service) {
	for _, n := range names {
		s := services[n]
		deps := make([]string, 0, len(s.dependsOn))
		for d := range s.dependsOn {
			deps = append(deps, d)
		}
		sort.Strings(deps)
		for _, d := range deps {
			cond := s.dependsOn[d]
			dep, ok := services[d]
			if !ok {
				c.problemf("service %s: depends_on names %q, which is not a service", n, d)
				continue
			}
			switch cond {
			case "service_started", "service_completed_successfully":
			case "service_healthy":
				if dep.healthTest == nil {
					c.problemf("service %s: depends_on %s with condition service_healthy, but %s has no healthcheck", n, d, d)
				}
			default:
				c.problemf("service %s: depends_on %s: unknown condition %q", n, d, cond)
			}
			for _, p := range dep.profiles {
				if !s.inProfile(p) {
					c.problemf("service %s: depends_on %s, which only runs with --profile %s", n, d, p)
				}
			}
		}
	}
}

func (c *deployCheck) checkVolumes(names []string, services map[string]*service, declared map[string]bool) {
	used := map[string]bool{}
	for _, n := range names {
		for _, m := range services[n].mounts {
			if m.bind {
				if src := strings.TrimPrefix(m.source, "./"); !strings.HasPrefix(m.source, "/") && !c.exists(src) {
					c.problemf("service %s: bind mount %q: %s does not exist", n, m.raw, m.source)
				}
				continue
			}
			used[m.source] = true
			if !declared[m.source] {
				c.problemf("service %s: volume %q is not declared under the top-level volumes:", n, m.source)
			}
		}
	}
	for v := range declared {
		if !used[v] {
			c.problemf("volume %q is declared but no service mounts it", v)
		}
	}
}

func (c *deployCheck) checkHostPorts(names []string, services map[string]*service) {
	type owner struct{ service, ip string }
	byPort := map[int][]owner{}
	for _, n := range names {
		for _, p := range services[n].ports {
			if p.host == 0 {
				continue
			}
			for _, o := range byPort[p.host] {
				if o.ip == p.hostIP || o.ip == "" || p.hostIP == "" || o.ip == "0.0.0.0" || p.hostIP == "0.0.0.0" {
					c.problemf("host port %d is published by both %s and %s", p.host, o.service, n)
				}
			}
			byPort[p.host] = append(byPort[p.host], owner{n, p.hostIP})
		}
	}
}

// listenAddr is where a service listens inside the network.
type listenAddr struct {
	host string
	port int
	flag string // the GUESTLIST_* variable or flag it comes from
}

// checkGuestlistServices checks the services that run the guestlist image against the code, and
// returns every service's listen ports as far as they are known (guestlist services only).
func (c *deployCheck) checkGuestlistServices(names []string, services map[string]*service, df dockerfileInfo) map[string][]listenAddr {
	listen := map[string][]listenAddr{}
	type dial struct{ service, env, target string }
	var dials []dial
	images := map[string]bool{}
	for _, n := range names {
		if s := services[n]; c.guestlistImage(s) && s.image != "" {
			images[s.image] = true
		}
	}
	for _, n := range names {
		s := services[n]
		if !c.guestlistImage(s) {
			if images[s.image] {
				c.problemf("service %s: runs the guestlist image %q but has no build of it (give it the same build as the others)", n, s.image)
			}
			continue
		}
		if len(s.command) == 0 {
			c.problemf("service %s: no command; want a guestlist subcommand (api, projector, edge, origin)", n)
			continue
		}
		sub := s.command[0]
		flags, err := c.flags(sub)
		if err != nil {
			c.problemf("service %s: command %q: %v", n, sub, err)
			continue
		}
		if len(s.command) > 1 {
			c.problemf("service %s: command %q passes arguments; set flags through GUESTLIST_* variables so this check can read them", n, strings.Join(s.command, " "))
		}
		flagNames := func() string {
			var out []string
			for env := range flags {
				out = append(out, env)
			}
			sort.Strings(out)
			return strings.Join(out, ", ")
		}

		// Every GUESTLIST_* variable is a flag of the subcommand.
		envNames := make([]string, 0, len(s.env))
		for k := range s.env {
			envNames = append(envNames, k)
		}
		sort.Strings(envNames)
		for _, k := range envNames {
			if strings.HasPrefix(k, envPrefix) {
				if _, ok := flags[k]; !ok {
					c.problemf("service %s: %s is not a flag of \"guestlist %s\" (its variables: %s)", n, k, sub, flagNames())
				}
			}
		}

		// Listen addresses: the values set here, else the flags' defaults.
		for env, f := range flags {
			if _, ok := f.listenPort(); !ok {
				continue
			}
			addr, set := s.env[env]
			if !set {
				addr = f.Default
			}
			host, p, err := net.SplitHostPort(addr)
			port, perr := strconv.Atoi(p)
			if err != nil || perr != nil {
				c.problemf("service %s: %s=%q is not host:port", n, env, addr)
				continue
			}
			listen[n] = append(listen[n], listenAddr{host: host, port: port, flag: env})
		}
		sort.Slice(listen[n], func(i, j int) bool { return listen[n][i].flag < listen[n][j].flag })
		for _, la := range listen[n] {
			if ip := net.ParseIP(la.host); la.host == "localhost" || (ip != nil && ip.IsLoopback()) {
				if _, set := s.env[la.flag]; set {
					c.problemf("service %s: %s listens on %s:%d, loopback inside the container: other containers and published ports cannot reach it; use 0.0.0.0:%d", n, la.flag, la.host, la.port, la.port)
				} else if c.portPublished(s, la.port) {
					c.problemf("service %s: port %d is published but %s is not set, and its default %s:%d is loopback inside the container", n, la.port, la.flag, la.host, la.port)
				}
			}
		}
		for _, p := range s.ports {
			if !slices.ContainsFunc(listen[n], func(la listenAddr) bool { return la.port == p.container }) {
				c.problemf("service %s: publishes container port %d, but nothing listens there (listen addresses: %s)", n, p.container, describeListen(listen[n]))
			}
		}

		// Values the code can check.
		if v, ok := s.env[envName("store")]; ok {
			c.checkStore(n, s, v, services)
		}
		if _, ok := flags[envName("config-plaintext")]; ok {
			c.checkConfigTransport(n, s, services)
		}
		for env, f := range flags {
			v, ok := s.env[env]
			if !ok || !strings.HasSuffix(f.Name, "-addr") {
				continue
			}
			if _, isListen := f.listenPort(); isListen {
				continue
			}
			for _, target := range strings.Split(v, ",") {
				dials = append(dials, dial{n, env, strings.TrimSpace(target)})
			}
		}

		// Directories: on a named volume, so that they outlive the container.
		for env, f := range flags {
			v, ok := s.env[env]
			if !ok || !strings.HasSuffix(f.Name, "-dir") {
				continue
			}
			if m, ok := s.mountFor(v); !ok || m.bind {
				c.problemf("service %s: %s=%s is not on a named volume; its contents would go with the container", n, env, v)
			}
		}
		if f, ok := flags[envName("data-dir")]; ok {
			if _, set := s.env[envName("data-dir")]; !set {
				c.problemf("service %s: %s is not set (default %q); set it to a directory on a volume", n, envName("data-dir"), f.Default)
			}
		}

		c.checkGuestlistHealth(n, s, flags, listen[n], df)
	}
	// Once every service's listen addresses are known.
	sort.Slice(dials, func(i, j int) bool { return dials[i].service+dials[i].env < dials[j].service+dials[j].env })
	for _, d := range dials {
		c.checkDial(d.service, d.env, d.target, services, listen)
	}
	c.checkSharedEdgeCA(names, services)
	return listen
}

func describeListen(ls []listenAddr) string {
	if len(ls) == 0 {
		return "none"
	}
	var out []string
	for _, la := range ls {
		out = append(out, fmt.Sprintf("%s=%s:%d", la.flag, la.host, la.port))
	}
	return strings.Join(out, ", ")
}

func (c *deployCheck) portPublished(s *service, port int) bool {
	return slices.ContainsFunc(s.ports, func(p portSpec) bool { return p.container == port })
}

// checkGuestlistHealth: the health check runs "guestlist healthcheck" (the image has no shell and no
// curl) against the port that the service's --http-addr binds (or its only listen address), in
// what that listener serves: https:// when the service has GUESTLIST_HTTP_TLS_CERT, http://
// otherwise (where a --ca would make the check exit 2).
func (c *deployCheck) checkGuestlistHealth(n string, s *service, flags map[string]flagInfo, listen []listenAddr, df dockerfileInfo) {
	if s.healthTest == nil {
		c.problemf("service %s: no healthcheck", n)
		return
	}
	t := s.healthTest
	if t[0] != "CMD" {
		c.problemf("service %s: healthcheck %q: the image has no shell; use the exec form [\"CMD\", ...]", n, t)
		return
	}
	if len(t) < 3 || (len(df.entrypoint) > 0 && t[1] != df.entrypoint[0]) || t[2] != "healthcheck" {
		c.problemf("service %s: healthcheck %q: want [\"CMD\", %q, \"healthcheck\", \"--url\", URL] (the image has no curl)", n, t, strings.Join(df.entrypoint, " "))
		return
	}
	if _, err := c.flags("healthcheck"); err != nil {
		c.problemf("service %s: healthcheck: %v", n, err)
	}
	var raw string
	var ca bool
	for i := 3; i < len(t); i++ {
		switch {
		case (t[i] == "--url" || t[i] == "-url") && i+1 < len(t):
			raw = t[i+1]
			i++
		case strings.HasPrefix(t[i], "--url="):
			raw = strings.TrimPrefix(t[i], "--url=")
		case (t[i] == "--ca" || t[i] == "-ca") && i+1 < len(t):
			ca = true
			i++
		case strings.HasPrefix(t[i], "--ca="):
			ca = true
		default:
			c.problemf("service %s: healthcheck: unexpected argument %q", n, t[i])
		}
	}
	u, err := parseHealthcheckURL(raw)
	if err != nil {
		c.problemf("service %s: healthcheck: %v", n, err)
		return
	}
	port, _ := strconv.Atoi(u.Port())
	want := listen
	if f, ok := flags[envName("http-addr")]; ok {
		want = slices.DeleteFunc(slices.Clone(listen), func(la listenAddr) bool { return la.flag != envName(f.Name) })
	}
	if !slices.ContainsFunc(want, func(la listenAddr) bool { return la.port == port }) {
		c.problemf("service %s: healthcheck URL %s uses port %d, but the service's HTTP listener is %s", n, raw, port, describeListen(want))
	}
	if _, ok := flags[envName("http-addr")]; ok && u.Path != "/readyz" {
		c.problemf("service %s: healthcheck URL %s: want /readyz (ready to serve, not only alive)", n, raw)
	}
	if _, ok := flags[envName("http-addr")]; ok {
		tlsServed := s.env[envName("http-tls-cert")] != ""
		switch {
		case tlsServed && u.Scheme != "https":
			c.problemf("service %s: healthcheck URL %s is plaintext, but the service serves HTTPS only (%s); use https:// (and --ca for a private CA)", n, raw, envName("http-tls-cert"))
		case !tlsServed && u.Scheme == "https":
			c.problemf("service %s: healthcheck URL %s, but the service serves plaintext HTTP (no %s)", n, raw, envName("http-tls-cert"))
		}
	}
	if ca && u.Scheme != "https" {
		c.problemf("service %s: healthcheck --ca with the http:// URL %s: the check would exit 2", n, raw)
	}
}

// checkStore: an esdb:// store names KurrentDB services by their node port, and the service waits
// for them.
func (c *deployCheck) checkStore(n string, s *service, v string, services map[string]*service) {
	p, err := storeurl.Parse(v)
	if err != nil {
		c.problemf("service %s: %s: %v", n, envName("store"), err)
		return
	}
	if p.Kind != storeurl.ESDB {
		c.problemf("service %s: %s=%q: a bolt:// file can only be held by one process; the compose topology uses KurrentDB (esdb://)", n, envName("store"), v)
		return
	}
	_, rest, _ := strings.Cut(v, "://")
	hosts, _, _ := strings.Cut(rest, "?")
	hosts, _, _ = strings.Cut(hosts, "/")
	for _, hp := range strings.Split(hosts, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil {
			host, port = hp, "2113"
		}
		db, ok := services[host]
		if !ok {
			c.problemf("service %s: %s names %q, which is not a service", n, envName("store"), host)
			continue
		}
		if np := kurrentNodePort(db); port != np {
			c.problemf("service %s: %s reaches %s on port %s, but its node port is %s", n, envName("store"), host, port, np)
		}
		if cond := s.dependsOn[host]; cond != "service_healthy" {
			c.problemf("service %s: uses the store %s but does not depend on it with condition service_healthy", n, host)
		}
	}
}

// checkDial: a host:port another guestlist service is told to reach is one of that service's
// listen addresses.
func (c *deployCheck) checkDial(n, env, target string, services map[string]*service, listen map[string][]listenAddr) {
	host, p, err := net.SplitHostPort(target)
	port, perr := strconv.Atoi(p)
	if err != nil || perr != nil {
		c.problemf("service %s: %s=%q is not host:port", n, env, target)
		return
	}
	if _, ok := services[host]; !ok {
		c.problemf("service %s: %s names %q, which is not a service", n, env, host)
		return
	}
	if !slices.ContainsFunc(listen[host], func(la listenAddr) bool { return la.port == port }) {
		c.problemf("service %s: %s=%s, but %s listens on %s", n, env, target, host, describeListen(listen[host]))
	}
	if _, ok := services[n].dependsOn[host]; !ok {
		c.problemf("service %s: %s names %s, but %s does not depend on it", n, env, host, n)
	}
}

// checkConfigTransport: an edge's ConfigService flags are ones it starts with (the code's own
// configTLSFromFlags: plaintext to a service of the network needs GUESTLIST_CONFIG_PLAINTEXT), and
// it speaks to each service it dials what that service serves: TLS (GUESTLIST_CONFIG_CA) to one
// with GUESTLIST_GRPC_TLS_CERT, plaintext to one without.
func (c *deployCheck) checkConfigTransport(n string, s *service, services map[string]*service) {
	var addrs []string
	for _, a := range strings.Split(s.env[envName("config-addr")], ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	ca := s.env[envName("config-ca")]
	plaintext := false
	if v := s.env[envName("config-plaintext")]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			c.problemf("service %s: %s=%q is not a boolean", n, envName("config-plaintext"), v)
			return
		}
		plaintext = b
	}
	// The CA file is inside the container: configTLSFromFlags is given none, and a CA is only
	// checked against the plaintext flag here.
	switch {
	case ca != "" && plaintext:
		c.problemf("service %s: the edge would refuse to start: %s and %s exclude each other", n, envName("config-ca"), envName("config-plaintext"))
		return
	case ca == "":
		if _, err := configTLSFromFlags(addrs, "", s.env[envName("config-server-name")], plaintext); err != nil {
			c.problemf("service %s: the edge would refuse to start: %v", n, err)
			return
		}
	}
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		target, ok := services[host]
		if err != nil || !ok {
			continue // checkDial says so
		}
		tlsServed := target.env[envName("grpc-tls-cert")] != ""
		switch {
		case tlsServed && ca == "":
			c.problemf("service %s: dials %s in plaintext, but %s serves gRPC over TLS only (%s); give %s %s", n, a, host, envName("grpc-tls-cert"), n, envName("config-ca"))
		case !tlsServed && ca != "":
			c.problemf("service %s: dials %s over TLS (%s), but %s serves plaintext gRPC (no %s)", n, a, envName("config-ca"), host, envName("grpc-tls-cert"))
		}
	}
}

// checkSharedEdgeCA: every edge keeps its edge CA on one shared volume, so that one root
// certificate verifies all of them.
func (c *deployCheck) checkSharedEdgeCA(names []string, services map[string]*service) {
	caEnv := envName("edge-ca-dir")
	var first, firstVolume string
	for _, n := range names {
		s := services[n]
		if !c.guestlistImage(s) || len(s.command) == 0 || s.command[0] != "edge" {
			continue
		}
		dir, ok := s.env[caEnv]
		if !ok {
			c.problemf("service %s: %s is not set, so this edge makes its own edge CA in its data directory; point every edge at one shared volume", n, caEnv)
			continue
		}
		m, ok := s.mountFor(dir)
		if !ok || m.bind {
			continue // reported with the directories
		}
		if first == "" {
			first, firstVolume = n, m.source
		} else if m.source != firstVolume {
			c.problemf("service %s: the edge CA is on volume %q, but %s's is on %q; the edges would present certificates from different CAs", n, m.source, first, firstVolume)
		}
	}
}

func isKurrentDB(s *service) bool { return strings.Contains(s.image, "kurrentdb") }

func kurrentNodePort(s *service) string {
	if p := s.env["KURRENTDB_NODE_PORT"]; p != "" {
		return p
	}
	return "2113"
}

// checkKurrentDB: published ports are the node port, the health check asks /health/live on it, and
// the cluster profile is three nodes whose gossip seeds name each other.
func (c *deployCheck) checkKurrentDB(names []string, services map[string]*service) {
	var cluster []string
	for _, n := range names {
		s := services[n]
		if !isKurrentDB(s) {
			continue
		}
		np := kurrentNodePort(s)
		for _, p := range s.ports {
			if strconv.Itoa(p.container) != np {
				c.problemf("service %s: publishes container port %d, but the node listens on %s", n, p.container, np)
			}
		}
		if s.healthTest == nil || !strings.Contains(strings.Join(s.healthTest, " "), ":"+np+"/health/live") {
			c.problemf("service %s: want a healthcheck on http://localhost:%s/health/live", n, np)
		}
		if s.inProfile(clusterProfileName) {
			cluster = append(cluster, n)
		}
	}
	if len(cluster) != 3 {
		c.problemf("profile %s: %d KurrentDB nodes (%s); want 3", clusterProfileName, len(cluster), strings.Join(cluster, ", "))
		return
	}
	for _, n := range cluster {
		s := services[n]
		if size := s.env["KURRENTDB_CLUSTER_SIZE"]; size != "3" {
			c.problemf("service %s: KURRENTDB_CLUSTER_SIZE=%q; want 3", n, size)
		}
		if s.env["KURRENTDB_DISCOVER_VIA_DNS"] != "false" {
			c.problemf("service %s: KURRENTDB_DISCOVER_VIA_DNS is not false, so the gossip seeds are not used", n)
		}
		var want []string
		for _, o := range cluster {
			if o != n {
				want = append(want, o+":"+kurrentNodePort(services[o]))
			}
		}
		var got []string
		for _, seed := range strings.Split(s.env["KURRENTDB_GOSSIP_SEED"], ",") {
			if seed = strings.TrimSpace(seed); seed != "" {
				got = append(got, seed)
			}
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			c.problemf("service %s: KURRENTDB_GOSSIP_SEED=%q; want the other nodes, %s", n, s.env["KURRENTDB_GOSSIP_SEED"], strings.Join(want, ","))
		}
	}
}

// collectorConfig is the part of an OpenTelemetry Collector configuration the check reads.
type collectorConfig struct {
	Receivers  map[string]any `yaml:"receivers"`
	Processors map[string]any `yaml:"processors"`
	Exporters  map[string]any `yaml:"exporters"`
	Connectors map[string]any `yaml:"connectors"`
	Service    struct {
		Pipelines map[string]struct {
			Receivers  []string `yaml:"receivers"`
			Processors []string `yaml:"processors"`
			Exporters  []string `yaml:"exporters"`
		} `yaml:"pipelines"`
	} `yaml:"service"`
}

// endpoints collects every "endpoint" value under v, by its path.
func endpoints(prefix string, v any, out map[string]string) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if k == "endpoint" {
				out[prefix] = str(e)
				continue
			}
			endpoints(prefix+"."+k, e, out)
		}
	}
}

// checkCollector: the configuration file the collector mounts exists and parses, its pipelines use
// defined components, its receivers listen beyond loopback, its exporters reach services, its
// published ports are its endpoints, and the guestlist services send OTLP to one of its receivers.
func (c *deployCheck) checkCollector(names []string, services map[string]*service, listen map[string][]listenAddr) {
	var collector *service
	for _, n := range names {
		if strings.Contains(services[n].image, "opentelemetry-collector") {
			collector = services[n]
		}
	}
	if collector == nil {
		c.problemf("no OpenTelemetry Collector service")
		return
	}
	n := collector.name
	configPath := "/etc/otelcol-contrib/config.yaml"
	for _, a := range collector.command {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			configPath = v
		}
	}
	m, ok := collector.mountFor(configPath)
	if !ok || !m.bind || m.target != configPath {
		c.problemf("service %s: its configuration %s is not mounted from the repository", n, configPath)
		return
	}
	rel := strings.TrimPrefix(m.source, "./")
	b, err := c.read(rel)
	if err != nil {
		c.problemf("service %s: read its configuration %s: %v", n, m.source, err)
		return
	}
	var cfg collectorConfig
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		c.problemf("%s does not parse: %v", rel, err)
		return
	}
	if len(cfg.Service.Pipelines) == 0 {
		c.problemf("%s: no pipelines", rel)
	}
	kinds := []struct {
		kind    string
		defined map[string]any
		ids     func(string) []string
	}{
		{"receiver", cfg.Receivers, func(p string) []string { return cfg.Service.Pipelines[p].Receivers }},
		{"processor", cfg.Processors, func(p string) []string { return cfg.Service.Pipelines[p].Processors }},
		{"exporter", cfg.Exporters, func(p string) []string { return cfg.Service.Pipelines[p].Exporters }},
	}
	pipelines := make([]string, 0, len(cfg.Service.Pipelines))
	for p := range cfg.Service.Pipelines {
		pipelines = append(pipelines, p)
	}
	sort.Strings(pipelines)
	for _, p := range pipelines {
		for _, k := range kinds {
			ids := k.ids(p)
			if k.kind != "processor" && len(ids) == 0 {
				c.problemf("%s: pipeline %s has no %ss", rel, p, k.kind)
			}
			for _, id := range ids {
				_, defined := k.defined[id]
				_, connector := cfg.Connectors[id]
				if !defined && !connector {
					c.problemf("%s: pipeline %s uses %s %q, which is not defined", rel, p, k.kind, id)
				}
			}
		}
	}
	recv := map[string]string{}
	endpoints("receivers", cfg.Receivers, recv)
	exp := map[string]string{}
	endpoints("exporters", cfg.Exporters, exp)
	ports := map[int]bool{}
	for where, ep := range recv {
		host, p, err := net.SplitHostPort(ep)
		if err != nil {
			c.problemf("%s: %s endpoint %q is not host:port", rel, where, ep)
			continue
		}
		if host != "0.0.0.0" && host != "" && host != "::" {
			c.problemf("%s: %s listens on %q, which other containers cannot reach; use 0.0.0.0", rel, where, ep)
		}
		port, _ := strconv.Atoi(p)
		ports[port] = true
	}
	for where, ep := range exp {
		target := ep
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			target = u.Host
		}
		host, p, err := net.SplitHostPort(target)
		if err != nil {
			c.problemf("%s: %s endpoint %q is not host:port", rel, where, ep)
			continue
		}
		if host == "0.0.0.0" || host == "" {
			port, _ := strconv.Atoi(p)
			ports[port] = true // a listening exporter (prometheus)
			continue
		}
		if _, ok := services[host]; !ok {
			c.problemf("%s: %s sends to %q, which is not a service", rel, where, host)
		} else if _, ok := collector.dependsOn[host]; !ok {
			c.problemf("service %s: sends to %s but does not depend on it", n, host)
		}
	}
	for _, p := range collector.ports {
		if !ports[p.container] {
			c.problemf("service %s: publishes container port %d, which is none of the endpoints in %s", n, p.container, rel)
		}
	}

	// The guestlist services send OTLP to a receiver of the collector.
	httpPort, grpcPort := endpointPort(recv["receivers.otlp.protocols.http"]), endpointPort(recv["receivers.otlp.protocols.grpc"])
	for _, sn := range names {
		s := services[sn]
		if !c.guestlistImage(s) {
			continue
		}
		if len(s.command) > 0 && s.command[0] == "origin" {
			// The demo origin exports no telemetry: OTEL_* there would promise traces that never come.
			for k := range s.env {
				if strings.HasPrefix(k, "OTEL_") {
					c.problemf("service %s: sets %s, but guestlist origin exports no telemetry", sn, k)
				}
			}
			continue
		}
		ep, ok := s.env["OTEL_EXPORTER_OTLP_ENDPOINT"]
		if !ok {
			c.problemf("service %s: OTEL_EXPORTER_OTLP_ENDPOINT is not set; its traces go nowhere", sn)
			continue
		}
		u, err := url.Parse(ep)
		if err != nil || u.Hostname() == "" {
			c.problemf("service %s: OTEL_EXPORTER_OTLP_ENDPOINT=%q is not a URL", sn, ep)
			continue
		}
		if u.Hostname() != n {
			c.problemf("service %s: OTEL_EXPORTER_OTLP_ENDPOINT=%s does not name the collector (%s)", sn, ep, n)
		}
		want := httpPort // the SDK's default protocol is http/protobuf
		if s.env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc" {
			want = grpcPort
		}
		if port, _ := strconv.Atoi(u.Port()); want == 0 || port != want {
			c.problemf("service %s: OTEL_EXPORTER_OTLP_ENDPOINT=%s, but the collector's OTLP receiver for protocol %q is on port %d", sn, ep, cmpOr(s.env["OTEL_EXPORTER_OTLP_PROTOCOL"], "http/protobuf"), want)
		}
		if _, ok := s.dependsOn[n]; !ok {
			c.problemf("service %s: sends telemetry to %s but does not depend on it", sn, n)
		}
	}
	_ = listen
}

func endpointPort(ep string) int {
	_, p, err := net.SplitHostPort(ep)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// ---- what the code says ----

// helpFlag matches one flag in the output of "guestlist COMMAND -h" (see newFlagSet).
var helpFlag = regexp.MustCompile(`(?ms)^  --([a-z0-9-]+)\n(.*?)\[\$(` + envPrefix + `[A-Z0-9_]+)\]$`)

var helpDefault = regexp.MustCompile(`\(default ("(?:[^"\\]|\\.)*")\)`)

// subcommandFlags runs "guestlist COMMAND -h" and reads its flags from the output, so that the check
// follows the code.
func subcommandFlags(command string) (map[string]flagInfo, error) {
	for _, cmd := range commands() {
		if cmd.name != command || cmd.run == nil {
			continue
		}
		var stdout, stderr bytes.Buffer
		code := cmd.run(context.Background(), []string{"-h"}, func(string) string { return "" }, &stdout, &stderr)
		out := stdout.String() + stderr.String()
		if code != exitOK {
			first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
			return nil, fmt.Errorf("\"guestlist %s -h\" exits %d, so its flags cannot be read: %s", command, code, first)
		}
		flags := map[string]flagInfo{}
		for _, m := range helpFlag.FindAllStringSubmatch(out, -1) {
			f := flagInfo{Name: m[1], Secret: secretFlag(m[1], m[2])}
			if d := helpDefault.FindStringSubmatch(m[2]); d != nil {
				f.Default, _ = strconv.Unquote(d[1])
			}
			flags[m[3]] = f
		}
		if len(flags) == 0 {
			return nil, fmt.Errorf("\"guestlist %s -h\" lists no flags", command)
		}
		return flags, nil
	}
	var names []string
	for _, cmd := range commands() {
		if cmd.run != nil {
			names = append(names, cmd.name)
		}
	}
	return nil, fmt.Errorf("%q is not a guestlist subcommand (they are: %s)", command, strings.Join(names, ", "))
}

// goBuildFiles lists, relative to root, the files "go build ./cmd/guestlist" reads from the work
// tree: the workspace's module files, and the Go and embedded files of every package it builds.
func goBuildFiles(root string) func() ([]string, error) {
	return func() ([]string, error) {
		cmd := exec.Command("go", "list", "-deps", "-json=Dir,GoFiles,EmbedFiles,Module", guestlistMainPkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("go list: %v: %s", err, stderr.String())
		}
		files := []string{"go.work", "go.work.sum"}
		seen := map[string]bool{}
		dec := json.NewDecoder(bytes.NewReader(out))
		for dec.More() {
			var p struct {
				Dir        string
				GoFiles    []string
				EmbedFiles []string
				Module     *struct{ Dir, GoMod string }
			}
			if err := dec.Decode(&p); err != nil {
				return nil, fmt.Errorf("go list output: %w", err)
			}
			rel, err := filepath.Rel(root, p.Dir)
			if err != nil || strings.HasPrefix(rel, "..") {
				continue // the module cache or the standard library
			}
			for _, f := range append(p.GoFiles, p.EmbedFiles...) {
				files = append(files, filepath.ToSlash(filepath.Join(rel, f)))
			}
			if p.Module != nil && !seen[p.Module.GoMod] {
				seen[p.Module.GoMod] = true
				if mr, err := filepath.Rel(root, p.Module.Dir); err == nil && !strings.HasPrefix(mr, "..") {
					files = append(files, filepath.ToSlash(filepath.Join(mr, "go.mod")), filepath.ToSlash(filepath.Join(mr, "go.sum")))
				}
			}
		}
		return files, nil
	}
}

// ---- the tests ----

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	return root
}

// TestComposeStructure checks docker-compose.yml, the Dockerfile, .dockerignore and the collector's
// configuration without a Docker engine.
func TestComposeStructure(t *testing.T) {
	root := repoRoot(t)
	c := &deployCheck{root: root, flags: subcommandFlags, buildFiles: goBuildFiles(root)}
	for _, p := range c.run() {
		t.Error(p)
	}
}

// TestComposeStructureCatches breaks the files one way at a time and expects the check to say so:
// a check that cannot fail checks nothing.
func TestComposeStructureCatches(t *testing.T) {
	root := repoRoot(t)
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	originals := map[string]string{
		composeFileName:              read(composeFileName),
		dockerfileName:               read(dockerfileName),
		dockerignoreName:             read(dockerignoreName),
		"deploy/otel-collector.yaml": read("deploy/otel-collector.yaml"),
		"README.md":                  read("README.md"),
	}
	baseline := map[string]bool{}
	for _, p := range (&deployCheck{root: root, flags: subcommandFlags}).run() {
		baseline[p] = true
	}

	tests := []struct {
		name     string
		file     string
		old, new string
		want     string
	}{
		{name: "fail/service without image or build", file: composeFileName,
			old: "  jaeger:\n    image: jaegertracing/jaeger:2.15.0\n", new: "  jaeger:\n", want: "service jaeger: neither image nor build"},
		{name: "fail/image not pinned", file: composeFileName,
			old: "jaegertracing/jaeger:2.15.0", new: "jaegertracing/jaeger:latest", want: `image "jaegertracing/jaeger:latest" is not pinned`},
		{name: "fail/missing Dockerfile", file: composeFileName,
			old: "    dockerfile: Dockerfile\n", new: "    dockerfile: Dockerfile.missing\n", want: `the Dockerfile "Dockerfile.missing" does not exist`},
		{name: "fail/depends on unknown service", file: composeFileName,
			old: "      jaeger:\n        condition: service_started", new: "      jaegr:\n        condition: service_started", want: `depends_on names "jaegr"`},
		{name: "fail/healthy condition without healthcheck", file: composeFileName,
			old: "      jaeger:\n        condition: service_started", new: "      jaeger:\n        condition: service_healthy", want: "jaeger has no healthcheck"},
		{name: "fail/depends on a profile's service", file: composeFileName,
			old: "      kurrentdb:\n        condition: service_healthy\n\n  # The projector", new: "      kurrentdb-1:\n        condition: service_healthy\n\n  # The projector", want: "only runs with --profile cluster"},
		{name: "fail/unknown subcommand", file: composeFileName,
			old: `command: ["projector"]`, new: `command: ["projecter"]`, want: `command "projecter": "projecter" is not a guestlist subcommand`},
		{name: "fail/unknown flag", file: composeFileName,
			old: "GUESTLIST_EDGE_ID: edge-1", new: "GUESTLIST_EDGE_IDENT: edge-1", want: `GUESTLIST_EDGE_IDENT is not a flag of "guestlist edge"`},
		{name: "fail/flag of another subcommand", file: composeFileName,
			old: "      GUESTLIST_ORIGIN_ADDR: 0.0.0.0:8081\n", new: "      GUESTLIST_ORIGIN_ADDR: 0.0.0.0:8081\n      GUESTLIST_STORE: esdb://kurrentdb:2113?tls=false\n", want: `GUESTLIST_STORE is not a flag of "guestlist origin"`},
		{name: "fail/duplicate host port", file: composeFileName,
			old: `"127.0.0.1:9443:8443"`, new: `"127.0.0.1:8443:8443"`, want: "host port 8443 is published by both edge-1 and edge-2"},
		{name: "fail/published port nothing listens on", file: composeFileName,
			old: `"127.0.0.1:9443:8443"`, new: `"127.0.0.1:9443:9443"`, want: "service edge-2: publishes container port 9443, but nothing listens there"},
		{name: "fail/listens on loopback", file: composeFileName,
			old: "GUESTLIST_HTTP_ADDR: 0.0.0.0:8080", new: "GUESTLIST_HTTP_ADDR: 127.0.0.1:8080", want: "service api: GUESTLIST_HTTP_ADDR listens on 127.0.0.1:8080, loopback inside the container"},
		{name: "fail/healthcheck on the wrong port", file: composeFileName,
			old: "http://127.0.0.1:8082/readyz", new: "http://127.0.0.1:8080/readyz", want: "service projector: healthcheck URL http://127.0.0.1:8080/readyz uses port 8080"},
		{name: "fail/healthcheck with curl", file: composeFileName,
			old: `["CMD", "/guestlist", "healthcheck", "--url", "http://127.0.0.1:8082/readyz"]`, new: `["CMD", "curl", "-f", "http://127.0.0.1:8082/readyz"]`, want: "service projector: healthcheck"},
		{name: "fail/plaintext healthcheck of an HTTPS listener", file: composeFileName,
			old: "      GUESTLIST_HTTP_ADDR: 0.0.0.0:8082\n", new: "      GUESTLIST_HTTP_ADDR: 0.0.0.0:8082\n      GUESTLIST_HTTP_TLS_CERT: /tls/projector-http.pem\n      GUESTLIST_HTTP_TLS_KEY: /tls/projector-http.key\n",
			want: "service projector: healthcheck URL http://127.0.0.1:8082/readyz is plaintext, but the service serves HTTPS only (GUESTLIST_HTTP_TLS_CERT)"},
		{name: "fail/HTTPS healthcheck of a plaintext listener", file: composeFileName,
			old: `"--url", "http://127.0.0.1:8082/readyz"]`, new: `"--url", "https://127.0.0.1:8082/readyz", "--ca", "/tls/ca.pem"]`,
			want: "service projector: healthcheck URL https://127.0.0.1:8082/readyz, but the service serves plaintext HTTP (no GUESTLIST_HTTP_TLS_CERT)"},
		{name: "fail/healthcheck CA for a plaintext URL", file: composeFileName,
			old: `"--url", "http://127.0.0.1:8082/readyz"]`, new: `"--url", "http://127.0.0.1:8082/readyz", "--ca", "/tls/ca.pem"]`,
			want: "service projector: healthcheck --ca with the http:// URL"},
		{name: "fail/config address not a listener", file: composeFileName,
			old: "GUESTLIST_CONFIG_ADDR: projector:50052", new: "GUESTLIST_CONFIG_ADDR: projector:50051", want: "GUESTLIST_CONFIG_ADDR=projector:50051, but projector listens on"},
		{name: "fail/edge in plaintext across the network", file: composeFileName,
			old: "      GUESTLIST_CONFIG_PLAINTEXT: \"true\"\n", new: "", want: "service edge-1: the edge would refuse to start: --config-addr projector:50052 is not a loopback address"},
		{name: "fail/edge TLS and plaintext", file: composeFileName,
			old: "      GUESTLIST_CONFIG_PLAINTEXT: \"true\"\n", new: "      GUESTLIST_CONFIG_PLAINTEXT: \"true\"\n      GUESTLIST_CONFIG_CA: /tls/ca.pem\n", want: "service edge-1: the edge would refuse to start: GUESTLIST_CONFIG_CA and GUESTLIST_CONFIG_PLAINTEXT exclude each other"},
		{name: "fail/edge in plaintext to a TLS projector", file: composeFileName,
			old: "      GUESTLIST_GRPC_ADDR: 0.0.0.0:50052\n", new: "      GUESTLIST_GRPC_ADDR: 0.0.0.0:50052\n      GUESTLIST_GRPC_TLS_CERT: /tls/projector.pem\n      GUESTLIST_GRPC_TLS_KEY: /tls/projector.key\n",
			want: "service edge-1: dials projector:50052 in plaintext, but projector serves gRPC over TLS only"},
		{name: "fail/edge over TLS to a plaintext projector", file: composeFileName,
			old: "      GUESTLIST_CONFIG_PLAINTEXT: \"true\"\n", new: "      GUESTLIST_CONFIG_CA: /tls/ca.pem\n", want: "service edge-1: dials projector:50052 over TLS (GUESTLIST_CONFIG_CA), but projector serves plaintext gRPC"},
		{name: "fail/store names no service", file: composeFileName,
			old: "${GUESTLIST_STORE:-esdb://kurrentdb:2113?tls=false}", new: "${GUESTLIST_STORE:-esdb://eventstore:2113?tls=false}", want: `names "eventstore", which is not a service`},
		{name: "fail/variable without default", file: composeFileName,
			old: "${GUESTLIST_STORE:-esdb://kurrentdb:2113?tls=false}", new: "${GUESTLIST_STORE}", want: "$GUESTLIST_STORE has no default"},
		{name: "fail/admin token with a default", file: composeFileName,
			old: "${GUESTLIST_ADMIN_TOKEN:?", new: "${GUESTLIST_ADMIN_TOKEN:-", want: "service api: GUESTLIST_ADMIN_TOKEN="},
		{name: "fail/admin token fixed", file: composeFileName,
			old: `GUESTLIST_ADMIN_TOKEN: "${GUESTLIST_ADMIN_TOKEN:?`, new: `GUESTLIST_ADMIN_TOKEN: "fixed-token-0123456789" #`, want: `service api: GUESTLIST_ADMIN_TOKEN="fixed-token-0123456789"`},
		{name: "fail/required variable may be empty", file: composeFileName,
			old: "${GUESTLIST_ADMIN_TOKEN:?", new: "${GUESTLIST_ADMIN_TOKEN?", want: "${GUESTLIST_ADMIN_TOKEN?...} accepts an empty value"},
		{name: "fail/required variable's message names nothing", file: composeFileName,
			old: "${GUESTLIST_ADMIN_TOKEN:?set GUESTLIST_ADMIN_TOKEN to", new: "${GUESTLIST_ADMIN_TOKEN:?set it to", want: "the message does not name GUESTLIST_ADMIN_TOKEN"},
		{name: "fail/README does not set a required variable", file: "README.md",
			old: "export GUESTLIST_ADMIN_TOKEN=", new: "GUESTLIST_ADMIN_TOKEN=", want: "README.md's docker compose section never sets $GUESTLIST_ADMIN_TOKEN"},
		{name: "fail/README sets the edge token outside its compose section only", file: "README.md",
			old: "export GUESTLIST_EDGE_TOKEN=$(openssl rand -hex 32)    #", new: "GUESTLIST_EDGE_TOKEN=$(openssl rand -hex 32)    #", want: "README.md's docker compose section never sets $GUESTLIST_EDGE_TOKEN"},
		{name: "fail/README without a compose section", file: "README.md",
			old: "## Production topology (docker compose)", new: "## Production topology", want: "README.md has no section about docker compose"},
		{name: "fail/edge token with a default", file: composeFileName,
			old: "${GUESTLIST_EDGE_TOKEN:?", new: "${GUESTLIST_EDGE_TOKEN:-local-only-edge-token-CHANGE-ME", want: "service projector: GUESTLIST_EDGE_TOKEN="},
		{name: "fail/edge token fixed on one edge", file: composeFileName,
			old: "GUESTLIST_EDGE_ID: edge-2\n      GUESTLIST_CONFIG_ADDR: projector:50052\n      GUESTLIST_EDGE_TOKEN: \"${GUESTLIST_EDGE_TOKEN:?",
			new: "GUESTLIST_EDGE_ID: edge-2\n      GUESTLIST_CONFIG_ADDR: projector:50052\n      GUESTLIST_EDGE_TOKEN: \"fixed-token-0123456789\" #", want: `service edge-2: GUESTLIST_EDGE_TOKEN="fixed-token-0123456789"`},
		{name: "fail/edge token from another variable on one edge", file: composeFileName,
			old: "GUESTLIST_EDGE_ID: edge-1\n      GUESTLIST_CONFIG_ADDR: projector:50052\n      GUESTLIST_EDGE_TOKEN: \"${GUESTLIST_EDGE_TOKEN:?set GUESTLIST_EDGE_TOKEN",
			new: "GUESTLIST_EDGE_ID: edge-1\n      GUESTLIST_CONFIG_ADDR: projector:50052\n      GUESTLIST_EDGE_TOKEN: \"${GUESTLIST_EDGE1_TOKEN:?set GUESTLIST_EDGE1_TOKEN", want: "services take GUESTLIST_EDGE_TOKEN from different variables (edge-1 from $GUESTLIST_EDGE1_TOKEN; edge-2, projector from $GUESTLIST_EDGE_TOKEN)"},
		{name: "fail/secret partly fixed", file: composeFileName,
			old: `GUESTLIST_ADMIN_TOKEN: "${GUESTLIST_ADMIN_TOKEN:?`, new: `GUESTLIST_ADMIN_TOKEN: "known-prefix-${GUESTLIST_ADMIN_TOKEN:?`, want: "service api: GUESTLIST_ADMIN_TOKEN=\"known-prefix-"},
		{name: "fail/undeclared volume", file: composeFileName,
			old: "      - api-data:/data", new: "      - api-state:/data", want: `volume "api-state" is not declared`},
		{name: "fail/data dir not on a volume", file: composeFileName,
			old: "      - projector-data:/data # projections.db\n", new: "", want: "service projector: GUESTLIST_DATA_DIR=/data is not on a named volume"},
		{name: "fail/edges with different CAs", file: composeFileName,
			old: "      - edge-2-data:/data\n      - edge-ca:/edge-ca", new: "      - edge-2-data:/data\n      - edge-1-data:/edge-ca", want: "the edges would present certificates from different CAs"},
		{name: "fail/cluster of two", file: composeFileName,
			old: "  kurrentdb-3:\n    image: docker.kurrent.io/kurrent-latest/kurrentdb:26.1\n    profiles: [cluster]", new: "  kurrentdb-3:\n    image: docker.kurrent.io/kurrent-latest/kurrentdb:26.1\n    profiles: [other]", want: "profile cluster: 2 KurrentDB nodes"},
		{name: "fail/gossip seed names itself", file: composeFileName,
			old: "KURRENTDB_GOSSIP_SEED: kurrentdb-2:2113,kurrentdb-3:2113", new: "KURRENTDB_GOSSIP_SEED: kurrentdb-1:2113,kurrentdb-3:2113", want: "service kurrentdb-1: KURRENTDB_GOSSIP_SEED="},
		{name: "fail/collector config missing", file: composeFileName,
			old: "./deploy/otel-collector.yaml:", new: "./deploy/otelcol.yaml:", want: "./deploy/otelcol.yaml does not exist"},
		{name: "fail/OTLP to the wrong port", file: composeFileName,
			old: "OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4318", new: "OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317", want: "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317, but the collector's OTLP receiver"},
		{name: "fail/collector config does not parse", file: "deploy/otel-collector.yaml",
			old: "receivers:\n", new: "receivers: [\n", want: "deploy/otel-collector.yaml does not parse"},
		{name: "fail/collector pipeline uses undefined exporter", file: "deploy/otel-collector.yaml",
			old: "exporters: [otlp_grpc/jaeger]", new: "exporters: [otlp/jaeger]", want: `pipeline traces uses exporter "otlp/jaeger", which is not defined`},
		{name: "fail/collector receiver on loopback", file: "deploy/otel-collector.yaml",
			old: "endpoint: 0.0.0.0:4318", new: "endpoint: localhost:4318", want: "receivers.otlp.protocols.http listens on \"localhost:4318\""},
		{name: "fail/origin allow reaches the control plane's network", file: composeFileName,
			old: "${GUESTLIST_ORIGIN_ALLOW:-172.31.240.10:8081}", new: "${GUESTLIST_ORIGIN_ALLOW:-172.16.0.0/12}", want: "allows 172.16.0.0/12, which is not inside the subnet of a network the edge is on"},
		{name: "fail/OTEL_* on the demo origin", file: composeFileName,
			old: "      GUESTLIST_ORIGIN_ADDR: 0.0.0.0:8081\n", new: "      GUESTLIST_ORIGIN_ADDR: 0.0.0.0:8081\n      OTEL_SERVICE_NAME: guestlist-origin\n", want: "service origin: sets OTEL_SERVICE_NAME, but guestlist origin exports no telemetry"},
		{name: "fail/the API on the origins network", file: composeFileName,
			old: "    command: [\"api\"]\n", new: "    command: [\"api\"]\n    networks:\n      default:\n      origins:\n        ipv4_address: 172.31.240.10\n", want: "includes api's address 172.31.240.10"},
		{name: "fail/origin not allowed", file: composeFileName,
			old: "ipv4_address: 172.31.240.10", new: "ipv4_address: 172.31.240.11", want: "the edge would refuse to forward to origin"},
		{name: "fail/origin allow not a prefix", file: composeFileName,
			old: "${GUESTLIST_ORIGIN_ALLOW:-172.31.240.10:8081}", new: "${GUESTLIST_ORIGIN_ALLOW:-origin}", want: `GUESTLIST_ORIGIN_ALLOW="origin"`},
		{name: "fail/origin allow covers the collector and the edges", file: composeFileName,
			old: "${GUESTLIST_ORIGIN_ALLOW:-172.31.240.10:8081}", new: "${GUESTLIST_ORIGIN_ALLOW:-172.31.240.0/24}", want: "where edge-1 gets an address from Docker that may be inside it"},
		{name: "fail/origin allowed on another port", file: composeFileName,
			old: "${GUESTLIST_ORIGIN_ALLOW:-172.31.240.10:8081}", new: "${GUESTLIST_ORIGIN_ALLOW:-172.31.240.10:8080}", want: "allows on its port 8081"},
		{name: "fail/root user", file: dockerfileName,
			old: "USER 65532:65532", new: "USER root", want: `runs as "root"; want a non-root USER`},
		{name: "fail/no user", file: dockerfileName,
			old: "USER 65532:65532\n", new: "", want: `runs as ""; want a non-root USER`},
		{name: "fail/cgo", file: dockerfileName,
			old: "CGO_ENABLED=0 GOOS", new: "CGO_ENABLED=1 GOOS", want: "builds without CGO_ENABLED=0"},
		{name: "fail/single stage", file: dockerfileName,
			old: "FROM gcr.io/distroless/static-debian12:nonroot\n", new: "", want: "1 stage(s); want a multi-stage build"},
		{name: "fail/COPY source excluded", file: dockerignoreName,
			old: "!services/\n", new: "", want: `COPY source "services" is excluded from the build context`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := originals[tt.file]
			if !strings.Contains(orig, tt.old) {
				t.Fatalf("%s no longer contains %q; update this case", tt.file, tt.old)
			}
			c := &deployCheck{root: root, flags: subcommandFlags, overlay: map[string]string{tt.file: strings.Replace(orig, tt.old, tt.new, 1)}}
			problems := c.run()
			for _, p := range problems {
				if strings.Contains(p, tt.want) && !baseline[p] {
					return
				}
			}
			t.Errorf("no new problem containing %q; got:\n%s", tt.want, strings.Join(problems, "\n"))
		})
	}
}

func TestDockerignore(t *testing.T) {
	d, err := parseDockerignore("*\n!go.mod\n!edge/\n**/*_test.go\n**/testdata/\n# comment\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path     string
		excluded bool
	}{
		{"go.mod", false},
		{"README.md", true},
		{".git/HEAD", true},
		{"edge/go.mod", false},
		{"edge/enforce/enforce.go", false},
		{"edge/enforce/enforce_test.go", true},
		{"edge/policy/testdata/fuzz/x", true},
		{"services/api/api.go", true},
	} {
		if got := d.excludes(tt.path); got != tt.excluded {
			t.Errorf("excludes(%q) = %v, want %v", tt.path, got, tt.excluded)
		}
	}
}
