//go:build unix

package privatefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// CheckDir refuses the directory dir when it is not owned by the process's (effective) user or
// when its group or others may write to it (a sticky bit does not help: others could still create
// the files the process has not created yet). An error about dir itself (missing, say) wraps the
// os error.
func CheckDir(dir, what string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("the %s: %w", what, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("the %s %s is not a directory", what, dir)
	}
	if err := checkOwner(fi, what, dir); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("the %s %s may be written by its group or others (mode %#o), who could put their own keys or tokens in it: run chmod 700 %s",
			what, dir, perm, dir)
	}
	return nil
}

// Open opens the secret file at path for reading without following a symbolic link (O_NOFOLLOW),
// and refuses it unless it is a regular file owned by the process's user that its group and
// others may not access (mode 0600 or stricter). A missing file is an error that wraps
// fs.ErrNotExist.
func Open(path, what string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("the %s %s: %w", what, path, err)
		}
		// O_NOFOLLOW fails with ELOOP on Linux and macOS (EMLINK, EFTYPE on some BSDs).
		if li, lerr := os.Lstat(path); lerr == nil && li.Mode()&fs.ModeSymlink != 0 {
			return nil, fmt.Errorf("the %s %s is a symbolic link, which is not followed: put the file itself there (owned by uid %d, mode 0600), or remove the link",
				what, path, os.Geteuid())
		}
		return nil, fmt.Errorf("open the %s: %w", what, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open the %s: %w", what, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("the %s %s is not a regular file (%s)", what, path, fi.Mode().Type())
	}
	if err := checkOwner(fi, what, path); err != nil {
		f.Close()
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		f.Close()
		return nil, fmt.Errorf("the %s %s is accessible to others (mode %#o): if it is yours, run chmod 600 %s; otherwise remove it", what, path, perm, path)
	}
	return f, nil
}

// checkOwner refuses fi (of the file at path) when the process's effective user does not own it.
func checkOwner(fi fs.FileInfo, what, path string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("the %s %s belongs to uid %d, not to this process's user (uid %d): if it is yours, run chown %d %s; otherwise remove it",
			what, path, st.Uid, uid, uid, path)
	}
	return nil
}
