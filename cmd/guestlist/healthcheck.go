package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// healthcheckTimeout bounds the whole request of "guestlist healthcheck": connect, send, and read
// the status line.
const healthcheckTimeout = 2 * time.Second

// healthcheckBodyLimit is how much of a failing answer's body "guestlist healthcheck" prints.
const healthcheckBodyLimit = 512

const healthcheckSynopsis = `GETs --url with a 2 s timeout and exits 0 when the answer is 2xx, 1 otherwise (refused,
timed out, or any other status; redirects are not followed), 2 on bad usage. For container health
checks in an image without curl, e.g.
  guestlist healthcheck --url http://127.0.0.1:8080/readyz
An https:// URL is checked against the system's CA certificates, or those of --ca (a listener
served with --http-tls-cert under a private CA):
  guestlist healthcheck --url https://api.internal:8080/readyz --ca /tls/ca.pem`

// runHealthcheck is "guestlist healthcheck".
func runHealthcheck(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("healthcheck", healthcheckSynopsis, stderr)
	rawURL := fs.String("url", "", "the http:// or https:// URL to GET, e.g. http://127.0.0.1:8080/readyz (required)")
	caFile := fs.String("ca", "", "with an https:// --url: trust the CA certificates of this PEM file (default: the system's)")
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	u, err := parseHealthcheckURL(*rawURL)
	if err != nil {
		return flagError(fs, err, stderr)
	}
	tlsCfg, err := clientTLS("ca", *caFile, "url", u)
	if err != nil {
		return flagError(fs, err, stderr)
	}
	status, body, err := checkHealth(ctx, u, tlsCfg, healthcheckTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "guestlist healthcheck: GET %s: %v\n", u.Redacted(), err)
		return exitError
	}
	if status/100 != 2 {
		fmt.Fprintf(stderr, "guestlist healthcheck: GET %s: %d %s", u.Redacted(), status, http.StatusText(status))
		if b := strings.TrimSpace(body); b != "" {
			fmt.Fprintf(stderr, ": %s", b)
		}
		fmt.Fprintln(stderr)
		return exitError
	}
	fmt.Fprintf(stdout, "%d %s\n", status, http.StatusText(status))
	return exitOK
}

// parseHealthcheckURL checks the --url value: an absolute http or https URL with a host.
func parseHealthcheckURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("--url is required (e.g. --url http://127.0.0.1:8080/readyz)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("--url %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("--url %q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("--url %q: no host", s)
	}
	return u, nil
}

// clientTLS is the TLS configuration of a client of u that trusts the CA certificates of caFile
// (the value of --caFlag), or nil for the system's when caFile is "". A CA file for an http://
// URL (the value of --urlFlag) is refused: it would protect nothing. The errors name the flag, the
// file and what is wrong.
func clientTLS(caFlag, caFile, urlFlag string, u *url.URL) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("--%s is for an https:// --%s, not %s", caFlag, urlFlag, u.Redacted())
	}
	roots, err := loadRoots(caFile)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", caFlag, err)
	}
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
}

// checkHealth GETs u within timeout and returns the status code and the start of the body. Redirects
// are returned as they are, not followed, and no proxy is used: a health check asks the endpoint
// itself. tlsCfg, when not nil, is the TLS configuration of an https:// URL (nil: the system's
// roots).
func checkHealth(ctx context.Context, u *url.URL, tlsCfg *tls.Config, timeout time.Duration) (status int, body string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, "", fmt.Errorf("build the request: %w", err)
	}
	req.Header.Set("User-Agent", "guestlist-healthcheck/"+currentVersion())
	client := &http.Client{
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: tlsCfg},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // the caller names the method and the URL already
		}
		return 0, "", err
	}
	defer resp.Body.Close()
	// The status is what matters; a body cut short only loses the detail, so a read error is not one.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, healthcheckBodyLimit))
	return resp.StatusCode, string(b), nil
}
