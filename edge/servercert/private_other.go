//go:build !unix

package servercert

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// checkPrivateDir checks that dir is a directory. File modes and owners are not checked where
// they are not Unix's (Windows keeps access in ACLs).
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("the CA directory %s is not a directory", dir)
	}
	return nil
}

// readKeyFile reads the CA key at path, refusing a symbolic link or a file that is not regular. A
// missing file is an error that wraps fs.ErrNotExist.
func readKeyFile(path string) ([]byte, error) {
	li, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if li.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("the CA key %s is a symbolic link, which is not followed: put the key itself there, or remove the link", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || !os.SameFile(fi, li) {
		return nil, fmt.Errorf("the CA key %s is not a regular file, or changed while it was opened", path)
	}
	return io.ReadAll(f)
}
