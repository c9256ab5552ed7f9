//go:build !unix

package privatefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// CheckDir checks that dir is a directory. File modes and owners are not checked where
// they are not Unix's (Windows keeps access in ACLs).
func CheckDir(dir, what string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("the %s: %w", what, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("the %s %s is not a directory", what, dir)
	}
	return nil
}

// Open opens the secret file at path for reading, refusing a symbolic link or a file that is not
// regular. A missing file is an error that wraps fs.ErrNotExist.
func Open(path, what string) (*os.File, error) {
	li, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("the %s %s: %w", what, path, err)
		}
		return nil, fmt.Errorf("open the %s: %w", what, err)
	}
	if li.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("the %s %s is a symbolic link, which is not followed: put the file itself there, or remove the link", what, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open the %s: %w", what, err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || !os.SameFile(fi, li) {
		f.Close()
		return nil, fmt.Errorf("the %s %s is not a regular file, or changed while it was opened", what, path)
	}
	return f, nil
}
