package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is the release version, set at build time with
// go build -ldflags "-X main.version=v1.2.3". When empty, the module version from the build info is
// used.
var version = ""

// buildDetails is what "guestlist version" prints.
type buildDetails struct {
	Version   string // release version, module version, or "devel"
	Module    string // main module path and version
	Revision  string // VCS revision, "" when unknown
	Time      string // VCS commit time, "" when unknown
	Modified  bool   // the work tree had uncommitted changes
	GoVersion string
	Platform  string
}

// readBuildDetails combines the -ldflags version with the binary's build info.
func readBuildDetails(ldVersion string, bi *debug.BuildInfo, ok bool) buildDetails {
	d := buildDetails{Version: ldVersion, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if ok && bi != nil {
		if bi.GoVersion != "" {
			d.GoVersion = bi.GoVersion
		}
		d.Module = strings.TrimSpace(bi.Main.Path + " " + bi.Main.Version)
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				d.Revision = s.Value
			case "vcs.time":
				d.Time = s.Value
			case "vcs.modified":
				d.Modified = s.Value == "true"
			}
		}
		if d.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			d.Version = bi.Main.Version
		}
	}
	if d.Version == "" {
		d.Version = "devel"
		if d.Revision != "" {
			d.Version += "-" + shortRevision(d.Revision)
		}
	}
	return d
}

func shortRevision(r string) string {
	if len(r) > 12 {
		return r[:12]
	}
	return r
}

// currentVersion is the version of this binary, for logs and telemetry.
func currentVersion() string {
	bi, ok := debug.ReadBuildInfo()
	return readBuildDetails(version, bi, ok).Version
}

func (d buildDetails) write(w io.Writer) {
	fmt.Fprintf(w, "guestlist %s\n", d.Version)
	if d.Module != "" {
		fmt.Fprintf(w, "  module:   %s\n", d.Module)
	}
	if d.Revision != "" {
		rev := d.Revision
		if d.Modified {
			rev += " (modified)"
		}
		fmt.Fprintf(w, "  revision: %s\n", rev)
	}
	if d.Time != "" {
		fmt.Fprintf(w, "  commit:   %s\n", d.Time)
	}
	fmt.Fprintf(w, "  go:       %s\n", d.GoVersion)
	fmt.Fprintf(w, "  platform: %s\n", d.Platform)
}

func runVersion(_ context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "Prints the version of guestlist and how it was built.", stderr)
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	bi, ok := debug.ReadBuildInfo()
	readBuildDetails(version, bi, ok).write(stdout)
	return exitOK
}

// flagError reports a flag parsing error and returns the exit code for it: 0 after -h, 2 otherwise.
func flagError(fs interface{ Name() string }, err error, stderr io.Writer) int {
	if errors.Is(err, errHelp) {
		return exitOK
	}
	fmt.Fprintf(stderr, "%s: %v\nRun \"%s -h\" for the flags.\n", fs.Name(), err, fs.Name())
	return exitUsage
}
