//go:build unix

package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// checkAncestors refuses the directory dir, which holds secrets (what names it: "data
// directory"), when a directory above it could be changed by someone other than root and the
// process's user, as OpenSSH's StrictModes refuses an authorized_keys file below such a directory.
// Whoever may write to a directory on the way can rename the secret directory away, after the
// checks, and put one of their own (or a symbolic link) in its place: the process would then
// write its keys and tokens where they can read them, and read the configuration they planted. So
// every directory above dir, up to the root, must be owned by root or the process's (effective)
// user and not writable by its group or others, unless it has the sticky bit (as /tmp has: there
// only an entry's owner may rename or remove it). A directory writable by its group is accepted
// when that group is its owner's alone (ownersGroup), as OpenSSH accepts it on Debian: Debian,
// Ubuntu, Fedora and RHEL give each user such a group and a umask of 002, so that the directories
// users make (a clone of the repository) are of mode 0775.
//
// dir is the path the process uses from then on, its symbolic links resolved by the caller
// (ensurePrivateDir), so the directories checked are those the process goes through; the
// directories that held a link on the way are not, as the process does not go through them again.
// The path is not resolved again: a symbolic link found on it appeared since it was resolved (who
// may write to the directory that holds it swapped a directory of the path for it), and is refused
// rather than followed, since the process would go on through the swapped directory whatever the
// link's target is when checked. A relative dir is taken from the working directory with its links
// resolved (the process holds the working directory, not its path). Access control lists are not
// looked at.
func checkAncestors(dir, what string) error {
	abs, err := absolute(dir)
	if err != nil {
		return fmt.Errorf("the %s %s: %w", what, dir, err)
	}
	uid := os.Geteuid()
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		if err := checkAncestor(d, abs, what, uid); err != nil {
			return err
		}
		if parent := filepath.Dir(d); parent == d {
			return nil
		}
	}
}

// absolute returns dir as an absolute path, without resolving its symbolic links: a relative dir
// is joined to the working directory, whose own links are resolved.
func absolute(dir string) (string, error) {
	if filepath.IsAbs(dir) {
		return filepath.Clean(dir), nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	if wd, err = filepath.EvalSymlinks(wd); err != nil {
		return "", err
	}
	return filepath.Join(wd, dir), nil
}

// etcPasswd and etcGroup are the user and group databases that ownersGroup reads (tests replace
// them).
var etcPasswd, etcGroup = "/etc/passwd", "/etc/group"

// checkAncestor checks d, a directory above the directory dir (see checkAncestors), for the
// process's user uid.
func checkAncestor(d, dir, what string, uid int) error {
	fi, err := os.Lstat(d)
	if err != nil {
		return fmt.Errorf("the %s %s: the directory %s above it: %w", what, dir, d, err)
	}
	if !fi.IsDir() {
		// A symbolic link here appeared after the path was resolved.
		return fmt.Errorf("the %s %s: %s, above it, is no longer a directory (%s): it changed while it was checked", what, dir, d, fi.Mode().Type())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	owner := int(st.Uid)
	if owner != 0 && owner != uid {
		return fmt.Errorf("the directory %s, above the %s %s, belongs to uid %d, neither root nor this process's user (uid %d), who could replace the %s with one of their own: "+
			"if %s is yours, run chown %d %s; otherwise put the %s where only root and uid %d may change the directories above it",
			d, what, dir, owner, uid, what, d, uid, d, what, uid)
	}
	if mode := fi.Mode(); mode.Perm()&0o022 != 0 && mode&fs.ModeSticky == 0 &&
		(mode.Perm()&0o002 != 0 || !ownersGroup(int(st.Gid), owner)) {
		return fmt.Errorf("the directory %s, above the %s %s, may be written by its group or others (mode %#o, owner uid %d, no sticky bit), who could rename the %s and put one of their own in its place: "+
			"run chmod go-w %s (or chmod +t %s, the sticky bit of /tmp), or put the %s where only root and uid %d may change the directories above it",
			d, what, dir, mode.Perm(), owner, what, d, d, what, uid)
	}
	return nil
}

// ownersGroup reports whether the group gid is the user owner's alone, as a user private group is:
// the group database lists no member of it but owner, no user but owner has it as primary group,
// and owner is in it (by either). Only the files are read (no other name service): a group not
// found there, or files that cannot be read, count as not owner's alone.
func ownersGroup(gid, owner int) bool {
	users, err := readDB(etcPasswd)
	if err != nil {
		return false
	}
	name, in := "", false
	for _, u := range users { // name:password:uid:gid:...
		if len(u) < 4 {
			continue
		}
		uid, err1 := strconv.Atoi(u[2])
		g, err2 := strconv.Atoi(u[3])
		if err1 != nil || err2 != nil {
			return false
		}
		if uid == owner && name == "" {
			name = u[0]
		}
		if g == gid {
			if uid != owner {
				return false
			}
			in = true
		}
	}
	groups, err := readDB(etcGroup)
	if err != nil || name == "" {
		return false
	}
	found := false
	for _, g := range groups { // name:password:gid:member,member
		if len(g) < 4 {
			continue
		}
		if id, err := strconv.Atoi(g[2]); err != nil || id != gid {
			continue
		}
		found = true
		for _, m := range strings.Split(g[3], ",") {
			switch m {
			case "":
			case name:
				in = true
			default:
				return false
			}
		}
	}
	return found && in
}

// readDB reads a colon-separated database such as /etc/passwd: its lines' fields, without the
// comments and empty lines (and the NIS "+" and "-" lines, which it does not follow).
func readDB(path string) ([][]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out, nil
}
