package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"guestlist.dev/services/boltcheck/boltchecktest"
)

// TestDevRefusesDamagedFiles: "guestlist dev" on a data directory whose events.db, projections.db
// or ledger.db is damaged exits with an error that names the file and says what to do, exit code
// 1, and writes nothing to the file. The damage (a leaf page typed as a free-list page) is one that
// bbolt's free list walk reports by panicking in a goroutine of its own: before boltcheck, the
// whole process (here, the test binary) died.
func TestDevRefusesDamagedFiles(t *testing.T) {
	dir := t.TempDir()
	n := startDev(t, dir)
	if code, _ := n.rest("POST", "/v1/tenants?tenantId=acme", n.token, map[string]any{"displayName": "Acme"}); code != 200 {
		t.Fatalf("create tenant: %d", code)
	}
	n.stop()

	var damage boltchecktest.Damage
	for _, d := range boltchecktest.Damages() {
		if d.Name == "leaf page typed as a free-list page" {
			damage = d
		}
	}
	for _, c := range []struct{ file, hint string }{
		{eventsFile, "restore it from a backup"},
		{projectionsFile, "move the file aside"},
		{ledgerFile, "move it aside"},
	} {
		t.Run(c.file, func(t *testing.T) {
			path := filepath.Join(dir, c.file)
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := os.WriteFile(path, orig, 0o600); err != nil {
					t.Fatal(err)
				}
			}()
			l, err := boltchecktest.Locate(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := damage.Apply(path, l); err != nil {
				t.Fatal(err)
			}
			damaged, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			code := runContext(ctx, []string{"dev", "--data-dir", dir, "--admin-token", n.token,
				"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--edge-addr", "127.0.0.1:0", "--origin-addr", "127.0.0.1:0"},
				mapEnv(nil), &stdout, &stderr)
			out := stderr.String()
			if code != exitError || !strings.Contains(out, c.file+": the file is damaged (page ") || !strings.Contains(out, c.hint) {
				t.Errorf("exit %d, want %d with an error naming %s and saying %q; stderr:\n%s", code, exitError, c.file, c.hint, out)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Errorf("stderr shows a panic:\n%s", out)
			}
			if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, damaged) {
				t.Errorf("the failed start changed %s (%v)", c.file, err)
			}
			t.Logf("stderr: %s", out)
		})
	}
	// Undamaged again, the data directory starts as before.
	n = startDev(t, dir)
	if code, out := n.rest("GET", "/v1/tenants/acme", n.token, nil); code != 200 || out["displayName"] != "Acme" {
		t.Errorf("after the files were restored: %d %v", code, out)
	}
}
