// Command guestlist is the one binary of guestlist: the control plane API, the projector, the edge
// and the auditors' command line, as subcommands. Run "guestlist help" for the list.
//
// Every flag can also be set through the environment as GUESTLIST_<FLAG> (upper case, '-' -> '_'):
// --data-dir <- GUESTLIST_DATA_DIR. A flag on the command line beats the environment.
//
// Exit codes: 0 success, 1 failure while running, 2 bad usage (unknown command, bad flag value).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"dev", "everything in one process on the embedded event store: API (gRPC + REST), projector, edge, demo origin", runDev},
		{"api", "the control plane API alone (gRPC + REST, audit, ledger; --projector adds the projector)", runAPI},
		{"projector", "a projector alone: follows the event store and serves the edges' ConfigService", runProjector},
		{"edge", "an edge node alone: watches its configuration and enforces mutual TLS", runEdge},
		{"origin", "the demo echo origin alone", runOrigin},
		{"audit", "the auditors' command line (history, snapshot, explain, diff, verify, export, checkpoint)", runAudit},
		{"healthcheck", "GET --url; exit 0 on 2xx, 1 otherwise (container health checks)", runHealthcheck},
		{"version", "print the version and build information", runVersion},
		{"help", "show this help, or a command's flags: guestlist help COMMAND", nil},
	}
}

// run is the whole program: it runs the subcommand named by args[0] with the rest of args, reading
// GUESTLIST_* variables through env, and returns the exit code. SIGINT and SIGTERM cancel the
// subcommand's context; a second signal kills the process.
func run(args []string, env func(string) string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore the default behaviour: a second Ctrl-C ends the process at once
	}()
	return runContext(ctx, args, env, stdout, stderr)
}

// runContext is run with the context given.
func runContext(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		return runHelp(ctx, rest, env, stdout, stderr)
	case "-version", "--version":
		name = "version"
	}
	for _, c := range commands() {
		if c.name == name && c.run != nil {
			return c.run(ctx, rest, env, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "guestlist: unknown command %q\n\n", name)
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, "guestlist: mutual TLS on custom hostnames.\n\nUsage:\n  guestlist COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nEvery flag can also be set as GUESTLIST_<FLAG> (--data-dir <- GUESTLIST_DATA_DIR); a flag\n"+
		"on the command line wins. Run \"guestlist help COMMAND\" for a command's flags.\n")
}

func runHelp(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] && c.run != nil {
			// "help audit history" is "audit history -h", as "audit help history" is.
			return c.run(ctx, append(args[1:len(args):len(args)], "-h"), env, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "guestlist help: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}
