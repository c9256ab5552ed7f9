package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"guestlist.dev/edge/privatefile"
)

// adminTokenFile is the name of the admin token's file in the data directory.
const adminTokenFile = "admin.token"

// tokenSource says where the admin token came from.
type tokenSource int

const (
	// tokenFromFlag: --admin-token (or GUESTLIST_ADMIN_TOKEN); the file is neither read nor written.
	tokenFromFlag tokenSource = iota
	// tokenFromFile: reused from <data-dir>/admin.token.
	tokenFromFile
	// tokenGenerated: generated now and written to <data-dir>/admin.token.
	tokenGenerated
)

// newAdminToken returns "gla_" and 64 hex digits (256 bits) from crypto/rand.
func newAdminToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate admin token: %w", err)
	}
	return "gla_" + hex.EncodeToString(b[:]), nil
}

// adminToken returns the admin bearer token: flagValue when it is set; otherwise the token in
// <dataDir>/admin.token; otherwise a newly generated one, written there with mode 0600. dataDir
// must exist, checked by ensurePrivateDir. The file is created atomically and exclusively, so that
// two processes starting on the same data directory agree on one token, and a crash never leaves
// half a token behind.
func adminToken(dataDir, flagValue string) (string, tokenSource, error) {
	if flagValue != "" {
		if err := checkToken(flagValue); err != nil {
			return "", 0, fmt.Errorf("--admin-token: %w", err)
		}
		if err := refusePlaceholder("admin-token", flagValue); err != nil {
			return "", 0, err
		}
		return flagValue, tokenFromFlag, nil
	}
	path := filepath.Join(dataDir, adminTokenFile)
	tok, err := readAdminToken(path)
	if err == nil {
		return tok, tokenFromFile, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", 0, err
	}

	tok, err = newAdminToken()
	if err != nil {
		return "", 0, err
	}
	tmp, err := os.CreateTemp(dataDir, ".admin.token-*") // mode 0600
	if err != nil {
		return "", 0, fmt.Errorf("write admin token: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(tok + "\n")
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return "", 0, fmt.Errorf("write admin token to %s: %w", tmp.Name(), werr)
	}
	// Link fails if the file appeared meanwhile: then the other process's token wins.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			tok, err := readAdminToken(path)
			return tok, tokenFromFile, err
		}
		return "", 0, fmt.Errorf("write admin token to %s: %w", path, err)
	}
	return tok, tokenGenerated, nil
}

// placeholderToken matches the word CHANGE-ME (CHANGEME, CHANGE_ME, in any case) in a token.
var placeholderToken = regexp.MustCompile(`(?i)(^|[^a-z0-9])change[-_]?me([^a-z0-9]|$)`)

// isPlaceholderToken reports whether tok is an example's placeholder rather than a secret: it
// holds the word CHANGE-ME, as the default admin token of docker-compose.yml once did
// (local-only-admin-token-CHANGE-ME), which a .env file or a script may still hold.
func isPlaceholderToken(tok string) bool {
	return placeholderToken.MatchString(tok)
}

// refusePlaceholder refuses tok, the value of the token flag --name, when it is an example's
// placeholder (isPlaceholderToken), with an error that names the flag and its variable and says
// how to choose a token.
func refusePlaceholder(name, tok string) error {
	if !isPlaceholderToken(tok) {
		return nil
	}
	return fmt.Errorf("--%s: the token is a placeholder from an example (it says CHANGE-ME), which anyone may know: "+
		"set a long random value of your own, e.g. %s=$(openssl rand -hex 32)", name, envName(name))
}

// minTokenLength is the length below which a token given by a flag (--admin-token,
// --edge-token) is accepted with a warning that it could be guessed; generated tokens are
// longer.
const minTokenLength = 16

// warnShortToken logs a warning when tok, the value of the token flag --name, is shorter than
// minTokenLength; who names those who can try tokens ("the API").
func warnShortToken(logger *slog.Logger, name, tok, who string) {
	if len(tok) < minTokenLength {
		logger.Warn(fmt.Sprintf("the %s is short; anyone who can reach %s could guess it", strings.ReplaceAll(name, "-", " "), who),
			"flag", "--"+name, "length", len(tok), "want_at_least", minTokenLength)
	}
}

// readAdminToken reads the token file at path, refusing a symbolic link, a file that another user
// owns or that others may read (privatefile.ReadFile), and one that holds no usable token.
func readAdminToken(path string) (string, error) {
	b, err := privatefile.ReadFile(path, "admin token file")
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("admin token file %s: %w; delete it to generate a new token", path, err)
	}
	return tok, nil
}
