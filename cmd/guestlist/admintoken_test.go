package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminTokenRefusesPlaceholders: an admin token that is an example's placeholder (the default
// that docker-compose.yml once had) is refused by dev and api, which then do not start; tokens that
// merely look alike are not.
func TestAdminTokenRefusesPlaceholders(t *testing.T) {
	for _, tok := range []string{"local-only-admin-token-CHANGE-ME", "change-me-please-0123456789", "CHANGEME", "my_token_CHANGE_ME_0123"} {
		if _, _, err := adminToken(t.TempDir(), tok); err == nil || !strings.Contains(err.Error(), "placeholder") {
			t.Errorf("adminToken(%q): err = %v, want a placeholder refusal", tok, err)
		}
	}
	for _, tok := range []string{"gla_" + strings.Repeat("ab", 32), "exchange-meta-token-0123456789", "changemeal-0123456789"} {
		if _, _, err := adminToken(t.TempDir(), tok); err != nil {
			t.Errorf("adminToken(%q): %v", tok, err)
		}
	}

	const placeholder = "local-only-admin-token-CHANGE-ME"
	t.Run("api", func(t *testing.T) {
		_, ran := captureRole(t, &runAPIRole)
		code, _, stderr := runCmd(t, map[string]string{"GUESTLIST_ADMIN_TOKEN": placeholder},
			"api", "--data-dir", t.TempDir(), "--store", "esdb://kurrentdb:2113?tls=false")
		if code != exitError || *ran != 0 || !strings.Contains(stderr, "placeholder") {
			t.Errorf("exit %d, ran %d times:\n%s", code, *ran, stderr)
		}
	})
	t.Run("dev", func(t *testing.T) {
		got := captureDev(t)
		code, _, stderr := runCmd(t, nil, "dev", "--data-dir", t.TempDir(), "--admin-token", placeholder)
		if code != exitError || got.AdminToken != "" || !strings.Contains(stderr, "placeholder") {
			t.Errorf("exit %d, started with %q:\n%s", code, got.AdminToken, stderr)
		}
	})
}

// TestEdgeTokenRefusesPlaceholders: every role that uses --edge-token (api --projector, projector,
// edge) refuses a placeholder, such as the default that docker-compose.yml once had, whether from
// the flag or from GUESTLIST_EDGE_TOKEN: it names the flag and how to choose a token, and neither
// runs nor creates its data directory. A token that merely looks alike is accepted, and a short
// one is accepted with a warning, as the admin token is.
func TestEdgeTokenRefusesPlaceholders(t *testing.T) {
	const placeholder = "local-only-edge-token-CHANGE-ME"
	type role struct {
		name string
		args []string
		ran  func(t *testing.T) *int
	}
	roles := []role{
		{"api", []string{"--projector"}, func(t *testing.T) *int { _, n := captureRole(t, &runAPIRole); return n }},
		{"projector", []string{"--store", "esdb://kurrentdb:2113?tls=false"}, func(t *testing.T) *int { _, n := captureRole(t, &runProjectorRole); return n }},
		{"edge", []string{"--config-addr", "projector:50052", "--config-plaintext"}, func(t *testing.T) *int { _, n := captureRole(t, &runEdgeRole); return n }},
	}
	for _, r := range roles {
		for _, tok := range []string{placeholder, "changeme_0123456789abcdef"} {
			for _, from := range []string{"flag", "environment"} {
				t.Run(r.name+"/"+tok+"/"+from, func(t *testing.T) {
					ran := r.ran(t)
					dir := filepath.Join(t.TempDir(), "data")
					args := append([]string{r.name, "--data-dir", dir}, r.args...)
					var env map[string]string
					if from == "flag" {
						args = append(args, "--edge-token", tok)
					} else {
						env = map[string]string{"GUESTLIST_EDGE_TOKEN": tok}
					}
					code, _, stderr := runCmd(t, env, args...)
					if code != exitUsage || *ran != 0 {
						t.Fatalf("exit %d, ran %d times:\n%s", code, *ran, stderr)
					}
					for _, w := range []string{"--edge-token", "placeholder", "GUESTLIST_EDGE_TOKEN=$(openssl rand -hex 32)"} {
						if !strings.Contains(stderr, w) {
							t.Errorf("stderr does not say %q:\n%s", w, stderr)
						}
					}
					if _, err := os.Stat(dir); err == nil {
						t.Errorf("the data directory %s was created", dir)
					}
				})
			}
		}
		t.Run(r.name+"/look-alike", func(t *testing.T) {
			ran := r.ran(t)
			code, _, stderr := runCmd(t, nil, append([]string{r.name, "--data-dir", t.TempDir(), "--edge-token", "exchange-meta-token-0123456789"}, r.args...)...)
			if code != exitOK || *ran != 1 || strings.Contains(stderr, "short") {
				t.Errorf("exit %d, ran %d times:\n%s", code, *ran, stderr)
			}
		})
		t.Run(r.name+"/short", func(t *testing.T) {
			ran := r.ran(t)
			code, _, stderr := runCmd(t, nil, append([]string{r.name, "--data-dir", t.TempDir(), "--edge-token", "tiny-token"}, r.args...)...)
			if code != exitOK || *ran != 1 {
				t.Fatalf("exit %d, ran %d times:\n%s", code, *ran, stderr)
			}
			for _, w := range []string{"the edge token is short", "--edge-token"} {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr)
				}
			}
		})
	}
	// Without --projector the API serves no ConfigService and ignores --edge-token (with a
	// warning), so a placeholder there opens nothing.
	t.Run("api without --projector", func(t *testing.T) {
		_, ran := captureRole(t, &runAPIRole)
		code, _, stderr := runCmd(t, map[string]string{"GUESTLIST_EDGE_TOKEN": placeholder},
			"api", "--data-dir", t.TempDir(), "--store", "esdb://kurrentdb:2113?tls=false", "--admin-token", "gla_"+strings.Repeat("ab", 32))
		if code != exitOK || *ran != 1 || !strings.Contains(stderr, "--edge-token is ignored") {
			t.Errorf("exit %d, ran %d times:\n%s", code, *ran, stderr)
		}
	})
}
