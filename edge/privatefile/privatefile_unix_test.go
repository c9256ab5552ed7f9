//go:build unix

package privatefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(secret, "key"); err != nil || string(b) != "s3cret" {
		t.Fatalf("ok/mode 0600: %q, %v", b, err)
	}
	for _, tc := range []struct {
		name, path string
		want       []string
	}{
		{"fail/mode 0644", loose, []string{loose, "mode 0644", "chmod 600"}},
		{"fail/symbolic link", link, []string{link, "symbolic link"}},
		{"fail/directory", dir, []string{dir, "not a regular file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadFile(tc.path, "key")
			if err == nil {
				t.Fatal("read")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	if _, err := ReadFile(filepath.Join(dir, "missing"), "key"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("fail/missing: %v does not wrap fs.ErrNotExist", err)
	}
}

func TestCheckDir(t *testing.T) {
	dir := t.TempDir()
	if err := CheckDir(dir, "data directory"); err != nil {
		t.Fatalf("ok/mode 0700: %v", err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	err := CheckDir(dir, "data directory")
	if err == nil || !strings.Contains(err.Error(), "mode 0777") || !strings.Contains(err.Error(), "chmod 700 "+dir) {
		t.Errorf("fail/mode 0777: %v", err)
	}
	if err := CheckDir(filepath.Join(dir, "missing"), "data directory"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("fail/missing: %v does not wrap fs.ErrNotExist", err)
	}
}
