// Package privatefile reads secrets (keys, tokens) and checks the directories that hold them, so
// that no other user can have planted or replaced them: a directory must be the process's user's
// and not writable by its group or others, and a secret file a regular file of that user that
// its group and others may not access, opened without following a symbolic link. The checks are
// those of Unix file modes (privatefile_unix.go); elsewhere (Windows, where access is kept in
// ACLs) only symbolic links and non-regular files are refused (privatefile_other.go).
//
// Errors name the path, what it is (the what argument, e.g. "admin token file"), the mode or
// owner found, and the chmod or chown that fixes it.
package privatefile

import (
	"fmt"
	"io"
)

// ReadFile reads the secret file at path (see Open). A missing file is an error that wraps
// fs.ErrNotExist.
func ReadFile(path, what string) ([]byte, error) {
	f, err := Open(path, what)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read the %s %s: %w", what, path, err)
	}
	return b, nil
}

// Check checks the secret file at path as ReadFile would read it, without reading it. A missing
// file is an error that wraps fs.ErrNotExist.
func Check(path, what string) error {
	f, err := Open(path, what)
	if err != nil {
		return err
	}
	return f.Close()
}
