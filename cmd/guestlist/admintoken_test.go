package main

import (
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
