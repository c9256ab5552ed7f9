package main

import (
	"fmt"
	"os"
	"path/filepath"

	"guestlist.dev/edge/privatefile"
)

// The data directory holds secrets (the admin token, the checkpoint key, the edge CA key) and
// what the process trusts (the event store, read models, the edge's saved configuration), and the
// edge appends its decision log there. Whoever can write to it could plant their own token or
// keys, or a symbolic link that makes the process write elsewhere, so every role refuses to start
// on a directory that another user owns or that its group or others may write to, and reads its
// secrets without following symbolic links, refusing files that others own or may read (package
// privatefile).

// ensurePrivateDir creates dir (mode 0700, with its parents) when it does not exist, and refuses
// it, whether new or not, when privatefile.CheckDir does. what names the directory in errors ("data
// directory"). It returns the directory's path with symbolic links resolved, which is the one
// checked: the caller uses it from then on, so that a link at dir swapped for another directory
// after the check (by whoever owns the link) leads nowhere the process will write.
func ensurePrivateDir(dir, what string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create the %s: %w", what, err)
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("the %s: %w", what, err)
	}
	return resolved, privatefile.CheckDir(resolved, what)
}
