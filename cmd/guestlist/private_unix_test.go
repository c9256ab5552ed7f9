//go:build unix

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"guestlist.dev/edge/servercert"
	"guestlist.dev/projections/ledger"
)

// needRoot skips a test that gives files away to another user.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
}

// nobody is the user that the tests give files to.
const nobody = 65534

// wantErr fails unless err is an error whose text holds every one of want.
func wantErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one saying %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

// looseDir returns a new directory with mode perm.
func looseDir(t *testing.T, perm os.FileMode) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// roleWithDataDir is a role that keeps a data directory: its command, the flags it needs besides
// --data-dir, and ran, which replaces what the role runs for the test and returns how often it ran.
type roleWithDataDir struct {
	name string
	args []string
	ran  func(t *testing.T) *int
}

// rolesWithDataDirs returns every role that keeps a data directory.
func rolesWithDataDirs() []roleWithDataDir {
	const edgeTok = "edge-token-0123456789"
	return []roleWithDataDir{
		{"dev", nil, func(t *testing.T) *int {
			n := new(int)
			prev := runControlPlane
			runControlPlane = func(context.Context, devConfig) error { *n++; return nil }
			t.Cleanup(func() { runControlPlane = prev })
			return n
		}},
		{"api", []string{"--projector", "--edge-token", edgeTok}, func(t *testing.T) *int { _, n := captureRole(t, &runAPIRole); return n }},
		{"projector", []string{"--store", "esdb://localhost:2113?tls=false", "--edge-token", edgeTok}, func(t *testing.T) *int { _, n := captureRole(t, &runProjectorRole); return n }},
		{"edge", []string{"--config-addr", "127.0.0.1:50052", "--edge-token", edgeTok}, func(t *testing.T) *int { _, n := captureRole(t, &runEdgeRole); return n }},
	}
}

// TestRolesRefuseAnUnsafeDataDir: every role refuses a data directory that others may write to
// (and one that another user owns), naming it, its mode or owner and the fix, without running.
func TestRolesRefuseAnUnsafeDataDir(t *testing.T) {
	roles := rolesWithDataDirs()
	for _, r := range roles {
		for _, perm := range []os.FileMode{0o777, 0o770, 0o777 | os.ModeSticky} {
			t.Run(r.name+"/"+permOctal(perm)+map[bool]string{true: "+sticky"}[perm&os.ModeSticky != 0], func(t *testing.T) {
				ran := r.ran(t)
				dir := looseDir(t, perm)
				code, _, stderr := runCmd(t, nil, append([]string{r.name, "--data-dir", dir}, r.args...)...)
				if code != exitError || *ran != 0 {
					t.Fatalf("exit %d, ran %d times:\n%s", code, *ran, stderr)
				}
				for _, w := range []string{dir, "mode " + permOctal(perm), "chmod 700 " + dir} {
					if !strings.Contains(stderr, w) {
						t.Errorf("stderr does not say %q:\n%s", w, stderr)
					}
				}
			})
		}
	}
	t.Run("dev/owned by another user", func(t *testing.T) {
		needRoot(t)
		dir := looseDir(t, 0o700)
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		n := 0
		prev := runControlPlane
		runControlPlane = func(context.Context, devConfig) error { n++; return nil }
		t.Cleanup(func() { runControlPlane = prev })
		code, _, stderr := runCmd(t, nil, "dev", "--data-dir", dir)
		if code != exitError || n != 0 || !strings.Contains(stderr, "belongs to uid 65534") || !strings.Contains(stderr, "chown 0 "+dir) {
			t.Errorf("exit %d, ran %d times:\n%s", code, n, stderr)
		}
	})
	t.Run("a private directory starts", func(t *testing.T) {
		ran := roles[0].ran(t)
		for _, perm := range []os.FileMode{0o700, 0o750, 0o755} {
			if code, _, stderr := runCmd(t, nil, "dev", "--data-dir", looseDir(t, perm)); code != exitOK {
				t.Errorf("mode %v: exit %d:\n%s", perm, code, stderr)
			}
		}
		if *ran != 3 {
			t.Errorf("ran %d times, want 3", *ran)
		}
	})
}

// permOctal is perm's permission bits as chmod takes them (0777, 0770).
func permOctal(perm os.FileMode) string {
	const digits = "01234567"
	p := perm.Perm()
	return "0" + string(digits[p>>6&7]) + string(digits[p>>3&7]) + string(digits[p&7])
}

// TestAdminTokenFileMustBeTheUsers: an admin token file that is a symbolic link (even to a file of
// the user's, mode 0600) or that another user owns is refused, naming the file.
func TestAdminTokenFileMustBeTheUsers(t *testing.T) {
	planted := "gla_" + strings.Repeat("ab", 32)
	t.Run("symbolic link", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(target, []byte(planted+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, adminTokenFile)
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		_, _, err := adminToken(dir, "")
		wantErr(t, err, path, "symbolic link")
	})
	t.Run("dangling symbolic link", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(t.TempDir(), "token")
		path := filepath.Join(dir, adminTokenFile)
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		_, _, err := adminToken(dir, "")
		wantErr(t, err, path, "symbolic link")
		if _, err := os.Lstat(target); err == nil {
			t.Error("a token was written through the link")
		}
	})
	t.Run("another user's", func(t *testing.T) {
		needRoot(t)
		dir := t.TempDir()
		path := filepath.Join(dir, adminTokenFile)
		if err := os.WriteFile(path, []byte(planted+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		_, _, err := adminToken(dir, "")
		wantErr(t, err, path, "belongs to uid 65534", "chown 0 "+path)
	})
	t.Run("a directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, adminTokenFile), 0o700); err != nil {
			t.Fatal(err)
		}
		_, _, err := adminToken(dir, "")
		wantErr(t, err, "not a regular file")
	})
}

// TestCheckpointKeyMustBeTheUsers: the checkpoint key is created in a private directory, and a key
// that others may read, a symbolic link, another user's key, or a directory that others may write
// to are refused.
func TestCheckpointKeyMustBeTheUsers(t *testing.T) {
	newKey := func(t *testing.T) (dir, key string) {
		dir = filepath.Join(t.TempDir(), "checkpoint-key")
		if _, err := loadCheckpointKey(dir); err != nil {
			t.Fatal(err)
		}
		return dir, filepath.Join(dir, ledger.PrivateKeyFile)
	}
	t.Run("created private and reused", func(t *testing.T) {
		dir, key := newKey(t)
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("key directory: %v, %v", fi, err)
		}
		if _, err := loadCheckpointKey(dir); err != nil {
			t.Fatalf("reuse: %v", err)
		}
		if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("key: %v, %v", fi, err)
		}
	})
	t.Run("key mode 0644", func(t *testing.T) {
		dir, key := newKey(t)
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := loadCheckpointKey(dir)
		wantErr(t, err, key, "mode 0644", "chmod 600")
	})
	t.Run("symbolic link", func(t *testing.T) {
		dir, key := newKey(t)
		moved := filepath.Join(t.TempDir(), "checkpoint.key")
		if err := os.Rename(key, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(moved, key); err != nil {
			t.Fatal(err)
		}
		_, err := loadCheckpointKey(dir)
		wantErr(t, err, key, "symbolic link")
	})
	t.Run("directory mode 0777", func(t *testing.T) {
		dir, _ := newKey(t)
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		_, err := loadCheckpointKey(dir)
		wantErr(t, err, dir, "mode 0777", "chmod 700")
	})
	t.Run("another user's", func(t *testing.T) {
		needRoot(t)
		dir, key := newKey(t)
		if err := os.Chown(key, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		_, err := loadCheckpointKey(dir)
		wantErr(t, err, key, "belongs to uid 65534")
	})
}

// TestEdgeCAMustBeTheUsers: the edge CA of the edge roles is refused when its key is readable by
// others or its directory writable by them, and its lock file is not opened through a symbolic
// link.
func TestEdgeCAMustBeTheUsers(t *testing.T) {
	newCA := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "edge")
		if _, err := loadEdgeCA(dir); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	t.Run("key mode 0644", func(t *testing.T) {
		dir := newCA(t)
		key := filepath.Join(dir, servercert.KeyFile)
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := loadEdgeCA(dir)
		wantErr(t, err, key, "mode 0644")
	})
	t.Run("directory mode 0777", func(t *testing.T) {
		dir := newCA(t)
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		_, err := loadEdgeCA(dir)
		wantErr(t, err, dir, "mode 0777", "chmod 700")
	})
	t.Run("lock file is a symbolic link", func(t *testing.T) {
		dir := t.TempDir()
		victim := filepath.Join(t.TempDir(), "victim")
		if err := os.Symlink(victim, filepath.Join(dir, edgeCALockFile)); err != nil {
			t.Fatal(err)
		}
		if _, err := loadEdgeCA(dir); err == nil {
			t.Error("a symbolic link lock file was followed")
		}
		if _, err := os.Lstat(victim); err == nil {
			t.Error("the lock file's link target was created")
		}
	})
}

// TestDevRefusesASymlinkedDecisionLog: "guestlist dev" does not start when its decision log is a
// symbolic link, and nothing is appended to the link's target.
func TestDevRefusesASymlinkedDecisionLog(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("victim\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, decisionsFile)); err != nil {
		t.Fatal(err)
	}
	cfg := devConfig{
		DataDir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", EdgeAddr: "127.0.0.1:0", OriginAddr: "127.0.0.1:0",
		AdminToken: "gla_" + strings.Repeat("cd", 32), TokenSource: tokenFromFlag,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Stdout: io.Discard,
	}
	err := serveControlPlane(context.Background(), cfg)
	wantErr(t, err, filepath.Join(dir, decisionsFile), "symbolic link")
	if b, _ := os.ReadFile(victim); string(b) != "victim\n" {
		t.Errorf("the link's target was written: %q", b)
	}
}

// TestDevRefusesThePlantedDataDir is the review's run: a data directory that everyone may write
// to, where another user put an admin token (mode 0600, theirs), an edge CA key (0644) and the
// decision log as a symbolic link to another file. "guestlist dev" refuses to start, and
// neither the token nor the link is used.
func TestDevRefusesThePlantedDataDir(t *testing.T) {
	needRoot(t)
	dir := looseDir(t, 0o777)
	planted := "gla_" + strings.Repeat("ef", 32)
	if err := os.WriteFile(filepath.Join(dir, adminTokenFile), []byte(planted+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(dir, adminTokenFile), nobody, nobody); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("victim\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, decisionsFile)); err != nil {
		t.Fatal(err)
	}
	var got *devConfig
	prev := runControlPlane
	runControlPlane = func(_ context.Context, cfg devConfig) error { got = &cfg; return nil }
	t.Cleanup(func() { runControlPlane = prev })
	code, _, stderr := runCmd(t, nil, "dev", "--data-dir", dir)
	if code != exitError || got != nil {
		t.Fatalf("exit %d, started: %v\n%s", code, got != nil, stderr)
	}
	if !strings.Contains(stderr, dir) || !strings.Contains(stderr, "mode 0777") {
		t.Errorf("stderr does not name the directory and its mode:\n%s", stderr)
	}
}

// TestEnsurePrivateDirResolvesLinks: a data directory given as a symbolic link is checked, and
// used, as the directory it leads to when checked; swapping the link afterwards (for a directory
// others may write to) changes nothing the process writes.
func TestEnsurePrivateDirResolvesLinks(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "data")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	resolved, err := ensurePrivateDir(link, "data directory")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.EvalSymlinks(target)
	if resolved != want {
		t.Fatalf("ensurePrivateDir(%s) = %s, want %s", link, resolved, want)
	}
	loose := filepath.Join(base, "loose")
	if err := os.Mkdir(loose, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(loose, link); err != nil {
		t.Fatal(err)
	}
	if _, err := ensurePrivateDir(link, "data directory"); err == nil {
		t.Error("the link, now to a directory others may write to, was accepted")
	}
	if err := os.WriteFile(filepath.Join(resolved, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(loose, "x")); err == nil {
		t.Error("a file written with the resolved path went through the swapped link")
	}
}

// TestSameDir: the decision log's directory is recognised as the data directory whatever the
// form of either path, so the log there never follows a symbolic link (see addEdge).
func TestSameDir(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(data, link); err != nil {
		t.Fatal(err)
	}
	t.Chdir(base)
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{data, data + "/", true},
		{"data", data, true},
		{"./data/../data", data, true},
		{link, data, true},
		{"link", "data", true},
		{base, data, false},
		{"/dev", data, false},
	} {
		if got := sameDir(tc.a, tc.b); got != tc.want {
			t.Errorf("sameDir(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestAPIRoleUsesTheResolvedDataDir: "guestlist api --data-dir LINK" puts its default event store
// and checkpoint key directory in the directory the link led to when it was checked, as it does
// the rest (see ensurePrivateDir).
func TestAPIRoleUsesTheResolvedDataDir(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "data")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	resolved, _ := filepath.EvalSymlinks(target)
	got, called := captureRole(t, &runAPIRole)
	code, _, stderr := runCmd(t, nil, "api", "--data-dir", link, "--projector", "--edge-token", strings.Repeat("e", 32),
		"--admin-token", strings.Repeat("a", 32), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0")
	if *called != 1 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if got.DataDir != resolved || got.Store != "bolt://"+filepath.Join(resolved, eventsFile) || got.CheckpointKeyDir != filepath.Join(resolved, ledgerKeyDir) {
		t.Errorf("data dir %s, store %s, checkpoint key dir %s; want all in %s", got.DataDir, got.Store, got.CheckpointKeyDir, resolved)
	}
}

// TestEnsurePrivateDirChecksAncestors: a private directory below a directory that its group or
// others may write to (without the sticky bit), or that a user other than root and the process's
// owns, is refused, naming that directory, its mode or owner and the fix, however many levels
// above it is and whether the path is relative or leads there through a symbolic link; sticky
// directories (as /tmp) and ordinary ones are accepted.
func TestEnsurePrivateDirChecksAncestors(t *testing.T) {
	for _, perm := range []os.FileMode{0o777, 0o770, 0o775, 0o757, 0o722} {
		t.Run("refused/parent "+permOctal(perm), func(t *testing.T) {
			sharedGroup(t)
			parent := looseDir(t, perm)
			dir := filepath.Join(parent, "data")
			_, err := ensurePrivateDir(dir, "data directory")
			wantErr(t, err, "the directory "+parent+", above the data directory "+dir, "mode "+permOctal(perm), "no sticky bit", "chmod go-w "+parent)
		})
	}
	t.Run("refused/three levels up", func(t *testing.T) {
		top := looseDir(t, 0o777)
		dir := filepath.Join(top, "a", "b", "data")
		_, err := ensurePrivateDir(dir, "data directory")
		wantErr(t, err, "the directory "+top+",", "mode 0777", "chmod go-w "+top)
	})
	for _, perm := range []os.FileMode{0o700, 0o755, 0o711, 0o777 | os.ModeSticky, 0o770 | os.ModeSticky} {
		t.Run("accepted/parent "+perm.String(), func(t *testing.T) {
			dir := filepath.Join(looseDir(t, perm), "data")
			if _, err := ensurePrivateDir(dir, "data directory"); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("accepted/t.TempDir", func(t *testing.T) {
		if _, err := ensurePrivateDir(filepath.Join(t.TempDir(), "a", "b"), "data directory"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("refused/relative path", func(t *testing.T) {
		parent := looseDir(t, 0o777)
		t.Chdir(parent)
		_, err := ensurePrivateDir(".guestlist", "data directory")
		real, _ := filepath.EvalSymlinks(parent)
		wantErr(t, err, "the directory "+real+",", "chmod go-w "+real)
	})
	t.Run("refused/link to a directory below an unsafe one", func(t *testing.T) {
		parent := looseDir(t, 0o777)
		target := filepath.Join(parent, "data")
		if err := os.Mkdir(target, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(t.TempDir(), "data")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		_, err := ensurePrivateDir(link, "data directory")
		wantErr(t, err, "the directory "+parent+",", "chmod go-w "+parent)
	})
	t.Run("refused/working directory through a link", func(t *testing.T) {
		parent := looseDir(t, 0o777)
		work := filepath.Join(parent, "work")
		if err := os.Mkdir(work, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(t.TempDir(), "work")
		if err := os.Symlink(work, link); err != nil {
			t.Fatal(err)
		}
		t.Chdir(link)
		_, err := ensurePrivateDir(".guestlist", "data directory")
		wantErr(t, err, "the directory "+parent+",", "chmod go-w "+parent)
	})
	// The link's own directory is not on the way the process goes once it has resolved the path
	// (see ensurePrivateDir), so a link kept where others may write leads to a safe directory.
	t.Run("accepted/link in an unsafe directory to a safe one", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(target, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(looseDir(t, 0o777), "data")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		resolved, err := ensurePrivateDir(link, "data directory")
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := filepath.EvalSymlinks(target); resolved != want {
			t.Errorf("resolved %s, want %s", resolved, want)
		}
	})
	t.Run("refused/parent owned by another user", func(t *testing.T) {
		needRoot(t)
		for _, perm := range []os.FileMode{0o755, 0o777 | os.ModeSticky} {
			parent := looseDir(t, perm)
			if err := os.Chown(parent, nobody, nobody); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(parent, "data")
			_, err := ensurePrivateDir(dir, "data directory")
			wantErr(t, err, "the directory "+parent+",", "belongs to uid 65534", "neither root nor this process's user", "chown 0 "+parent)
		}
	})
	t.Run("refused/the parent first", func(t *testing.T) {
		// Both the directory and its parent are loose: the parent is named, since whoever may
		// write there may own the directory too.
		parent := looseDir(t, 0o777)
		dir := filepath.Join(parent, "data")
		if err := os.Mkdir(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		_, err := ensurePrivateDir(dir, "data directory")
		wantErr(t, err, "the directory "+parent+",", "chmod go-w "+parent)
	})
}

// TestRolesRefuseADataDirBelowAnUnsafeOne: every role refuses a data directory below one that
// others may write to, naming that one and the fix, without running; below a sticky one (as
// /tmp) they start. The edge CA and checkpoint key directories, which may be elsewhere
// (--edge-ca-dir, --checkpoint-key-dir), are checked the same way.
func TestRolesRefuseADataDirBelowAnUnsafeOne(t *testing.T) {
	roles := rolesWithDataDirs()
	for _, r := range roles {
		t.Run(r.name+"/refused", func(t *testing.T) {
			ran := r.ran(t)
			parent := looseDir(t, 0o777)
			code, _, stderr := runCmd(t, nil, append([]string{r.name, "--data-dir", filepath.Join(parent, "data")}, r.args...)...)
			if code != exitError || *ran != 0 {
				t.Fatalf("exit %d, ran %d times:\n%s", code, *ran, stderr)
			}
			for _, w := range []string{parent, "mode 0777", "chmod go-w " + parent} {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr)
				}
			}
		})
		t.Run(r.name+"/sticky", func(t *testing.T) {
			ran := r.ran(t)
			parent := looseDir(t, 0o777|os.ModeSticky)
			code, _, stderr := runCmd(t, nil, append([]string{r.name, "--data-dir", filepath.Join(parent, "data")}, r.args...)...)
			if code != exitOK || *ran != 1 {
				t.Fatalf("exit %d, ran %d times:\n%s", code, *ran, stderr)
			}
		})
	}
	t.Run("edge CA directory", func(t *testing.T) {
		sharedGroup(t)
		parent := looseDir(t, 0o770)
		_, err := loadEdgeCA(filepath.Join(parent, "edge-ca"))
		wantErr(t, err, "the directory "+parent+", above the edge CA directory", "mode 0770", "chmod go-w "+parent)
		if _, err := os.Stat(filepath.Join(parent, "edge-ca", servercert.KeyFile)); err == nil {
			t.Error("the edge CA key was written")
		}
	})
	t.Run("checkpoint key directory", func(t *testing.T) {
		parent := looseDir(t, 0o777)
		_, err := loadCheckpointKey(filepath.Join(parent, "checkpoint-key"))
		wantErr(t, err, "the directory "+parent+", above the checkpoint key directory", "chmod go-w "+parent)
		if _, err := os.Stat(filepath.Join(parent, "checkpoint-key", ledger.PrivateKeyFile)); err == nil {
			t.Error("the checkpoint key was written")
		}
	})
}

// TestCheckAncestorsDoesNotFollowLinks: checkAncestors checks the directories of the path it is
// given, the one the process uses from then on (ensurePrivateDir resolved it). A symbolic link
// found on that path appeared since it was resolved: someone who may write to the directory that
// holds it swapped a directory of the path for it. It is refused, not followed to check the
// directories above its target instead: the process would then go on through the swapped
// directory, where the link could be swapped again for one of theirs once the checks are done.
// (Found by review: checkAncestors resolved the path again and checked the directories above the
// link's target, so a swap in the window between ensurePrivateDir's resolution and the check,
// to a link leading to a safe directory, passed, and the process used the path through the unsafe
// directory.)
func TestCheckAncestorsDoesNotFollowLinks(t *testing.T) {
	safe := filepath.Join(t.TempDir(), "safe")
	if err := os.MkdirAll(filepath.Join(safe, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	loose := looseDir(t, 0o777)
	// As ensurePrivateDir saw it: loose/me/data, a directory of the user's.
	used := filepath.Join(loose, "me", "data")
	if err := os.MkdirAll(used, 0o700); err != nil {
		t.Fatal(err)
	}
	// Then, before the check, loose/me became a link to a safe directory.
	if err := os.Rename(filepath.Join(loose, "me"), filepath.Join(loose, "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(safe, filepath.Join(loose, "me")); err != nil {
		t.Fatal(err)
	}
	err := checkAncestors(used, "data directory")
	wantErr(t, err, filepath.Join(loose, "me"), "is no longer a directory", "changed while it was checked")

	t.Run("relative path in a working directory reached through a link", func(t *testing.T) {
		// The working directory's own links are resolved: they are not on the way the process
		// goes (it holds the working directory, not its path).
		work := filepath.Join(t.TempDir(), "work")
		if err := os.MkdirAll(filepath.Join(work, ".guestlist"), 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(t.TempDir(), "work")
		if err := os.Symlink(work, link); err != nil {
			t.Fatal(err)
		}
		t.Chdir(link)
		if err := checkAncestors(".guestlist", "data directory"); err != nil {
			t.Fatal(err)
		}
	})
}

// fakeUserDB points checkAncestors at user and group databases of the test's own (the
// /etc/passwd and /etc/group lines given), for the duration of t.
func fakeUserDB(t *testing.T, passwd, group string) {
	t.Helper()
	dir := t.TempDir()
	p, g := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(p, []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(g, []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	prevP, prevG := etcPasswd, etcGroup
	etcPasswd, etcGroup = p, g
	t.Cleanup(func() { etcPasswd, etcGroup = prevP, prevG })
}

// sharedGroup makes the process's group one that another user is in (as a member), for the
// duration of t, so that a directory its group may write to is one that user may change.
func sharedGroup(t *testing.T) {
	t.Helper()
	uid, gid := os.Geteuid(), os.Getegid()
	fakeUserDB(t, fmt.Sprintf("me:x:%d:%d::/:/bin/sh\nother:x:%d:%d::/:/bin/sh\n", uid, gid, uid+1, gid+1),
		fmt.Sprintf("staff:x:%d:me,other\n", gid))
}

// TestEnsurePrivateDirAcceptsAUserPrivateGroup: a directory above the data directory that only its
// group may write to besides its owner, when that group is the owner's alone (a user private
// group: Debian, Ubuntu, Fedora and RHEL give every user one, with a umask of 002, so that a clone
// made by the user is of mode 0775), is accepted, as OpenSSH's StrictModes accepts it on Debian:
// no one else may write there. The same directory is refused when another user is in the group,
// as a member or by their primary group, or when the group is not found; and a directory others
// may write to is refused whatever its group. (Found by review: `go run ./cmd/guestlist dev` in a
// fresh clone failed on those systems, naming the clone.)
func TestEnsurePrivateDirAcceptsAUserPrivateGroup(t *testing.T) {
	uid, gid := os.Geteuid(), os.Getegid()
	me := fmt.Sprintf("me:x:%d:%d::/home/me:/bin/sh\n", uid, gid)
	other := fmt.Sprintf("other:x:%d:%d::/home/other:/bin/sh\n", uid+1, gid+1)
	for _, tc := range []struct {
		name          string
		passwd, group string
		perm          os.FileMode
		ok            bool
	}{
		{"the user's own group", me + other, fmt.Sprintf("me:x:%d:\nother:x:%d:\n", gid, gid+1), 0o775, true},
		{"the user's own group, naming them", me + other, fmt.Sprintf("me:x:%d:me\n", gid), 0o770, true},
		{"a member besides", me + other, fmt.Sprintf("me:x:%d:other\n", gid), 0o775, false},
		{"another user's primary group too", me + fmt.Sprintf("other:x:%d:%d::/:/bin/sh\n", uid+1, gid), fmt.Sprintf("me:x:%d:\n", gid), 0o775, false},
		{"a group not found", me, "", 0o775, false},
		{"a group no one is in", fmt.Sprintf("me:x:%d:%d::/:/bin/sh\n", uid, gid+1), fmt.Sprintf("g:x:%d:\n", gid), 0o775, false},
		{"writable by others", me, fmt.Sprintf("me:x:%d:\n", gid), 0o777, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeUserDB(t, tc.passwd, tc.group)
			clone := looseDir(t, tc.perm)
			if err := os.Chown(clone, uid, gid); err != nil {
				t.Fatal(err)
			}
			_, err := ensurePrivateDir(filepath.Join(clone, ".guestlist"), "data directory")
			if tc.ok && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !tc.ok {
				wantErr(t, err, "the directory "+clone+",", "chmod go-w "+clone)
			}
		})
	}
}
