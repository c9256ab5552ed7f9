//go:build unix

package servercert

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// checkPrivateDir refuses the CA directory when another user owns it or when its group or others
// may write to it: they could put a CA key of their own there, or replace the files.
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("the CA directory %s is not a directory", dir)
	}
	if err := checkOwner(fi, "CA directory", dir); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("the CA directory %s may be written by its group or others (mode %#o), who could put a CA key of their own in it: run chmod 700 %s",
			dir, perm, dir)
	}
	return nil
}

// readKeyFile reads the CA key at path without following a symbolic link (O_NOFOLLOW), refusing
// it unless it is a regular file of the process's user that its group and others may not access.
// A missing file is an error that wraps fs.ErrNotExist.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			// O_NOFOLLOW fails with ELOOP on Linux and macOS (EMLINK, EFTYPE on some BSDs).
			if li, lerr := os.Lstat(path); lerr == nil && li.Mode()&fs.ModeSymlink != 0 {
				return nil, fmt.Errorf("the CA key %s is a symbolic link, which is not followed: put the key itself there, or remove the link", path)
			}
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("the CA key %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if err := checkOwner(fi, "CA key", path); err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("the CA key %s is accessible to others (mode %#o): if it is this CA's key, run chmod 600 %s; otherwise remove it and %s to create a new CA",
			path, perm, path, CertFile)
	}
	return io.ReadAll(f)
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
