//go:build unix

package servercert

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRefusesUnsafeCA: a CA directory that others may write to or that another user owns, and a
// CA key that is a symbolic link, that others may read or that another user owns, are refused
// with an error naming the path and what is wrong, even when the key matches the certificate.
func TestRefusesUnsafeCA(t *testing.T) {
	newCA := func(t *testing.T) (dir, key string) {
		dir = filepath.Join(t.TempDir(), "edge")
		if _, err := LoadOrCreateCA(dir); err != nil {
			t.Fatal(err)
		}
		return dir, filepath.Join(dir, KeyFile)
	}
	refused := func(t *testing.T, dir string, want ...string) {
		t.Helper()
		_, err := LoadOrCreateCA(dir)
		if err == nil {
			t.Fatal("LoadOrCreateCA accepted it")
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not say %q", err, w)
			}
		}
	}

	t.Run("key mode 0644", func(t *testing.T) {
		dir, key := newCA(t)
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		refused(t, dir, key, "mode 0644", "chmod 600")
	})
	t.Run("key is a symbolic link", func(t *testing.T) {
		dir, key := newCA(t)
		moved := filepath.Join(t.TempDir(), "elsewhere.key")
		if err := os.Rename(key, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(moved, key); err != nil {
			t.Fatal(err)
		}
		refused(t, dir, key, "symbolic link")
	})
	t.Run("dangling key link with no certificate", func(t *testing.T) {
		// Not "neither file exists": nothing is created through the link.
		dir := t.TempDir()
		target := filepath.Join(t.TempDir(), "created.key")
		if err := os.Symlink(target, filepath.Join(dir, KeyFile)); err != nil {
			t.Fatal(err)
		}
		refused(t, dir, "symbolic link")
		if _, err := os.Lstat(target); err == nil {
			t.Error("a key was written through the link")
		}
	})
	for _, mode := range []os.FileMode{0o777, 0o770, 0o777 | os.ModeSticky} {
		t.Run(fmt.Sprintf("directory mode %v", mode), func(t *testing.T) {
			dir, _ := newCA(t)
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			refused(t, dir, dir, fmt.Sprintf("mode %#o", mode.Perm()), "chmod 700")
		})
	}
	t.Run("new CA in a directory others may write to", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		refused(t, dir, dir, "mode 0777")
		if _, err := os.Lstat(filepath.Join(dir, KeyFile)); err == nil {
			t.Error("a key was created there")
		}
	})
	t.Run("owned by another user", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to give files away")
		}
		dir, key := newCA(t)
		if err := os.Lchown(key, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		refused(t, dir, key, "belongs to uid 65534", "chown 0")
		if err := os.Lchown(key, 0, 0); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		refused(t, dir, dir, "belongs to uid 65534")
	})
	t.Run("mode 0400 is fine", func(t *testing.T) {
		dir, key := newCA(t)
		if err := os.Chmod(key, 0o400); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateCA(dir); err != nil {
			t.Fatalf("a 0400 key in a 0755 directory: %v", err)
		}
	})
}
