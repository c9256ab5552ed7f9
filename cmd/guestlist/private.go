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
// privatefile). Whoever can write to a directory above it could swap the whole directory for one
// of their own once the process has checked it, so on Unix every directory above must be root's
// or the user's and not writable by group or others unless it is sticky (checkAncestors).

// ensurePrivateDir creates dir (mode 0700, with its parents) when it does not exist, and refuses
// it, whether new or not, when a directory above it may be changed by others than root and the
// process's user (checkAncestors, Unix only) or when privatefile.CheckDir refuses it. what names
// the directory in errors ("data directory"). It returns the directory's path with symbolic links
// resolved, which is the one checked: the caller uses it from then on, so that a link at dir
// swapped for another directory after the check (by whoever owns the link) leads nowhere the
// process will write.
func ensurePrivateDir(dir, what string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create the %s: %w", what, err)
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("the %s: %w", what, err)
	}
	// The directories above first: when one of them is unsafe, whoever may write there may have
	// put the directory itself there too, and its owner or mode is not what to fix.
	if err := checkAncestors(resolved, what); err != nil {
		return "", err
	}
	return resolved, privatefile.CheckDir(resolved, what)
}
