package main

import (
	"context"
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
  guestlist healthcheck --url http://127.0.0.1:8080/readyz`

// runHealthcheck is "guestlist healthcheck".
func runHealthcheck(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	fs := newFlagSet("healthcheck", healthcheckSynopsis, stderr)
	rawURL := fs.String("url", "", "the http:// or https:// URL to GET, e.g. http://127.0.0.1:8080/readyz (required)")
	if err := parseFlags(fs, args, env); err != nil {
		return flagError(fs, err, stderr)
	}
	u, err := parseHealthcheckURL(*rawURL)
	if err != nil {
		return flagError(fs, err, stderr)
	}
	status, body, err := checkHealth(ctx, u, healthcheckTimeout)
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

// checkHealth GETs u within timeout and returns the status code and the start of the body. Redirects
// are returned as they are, not followed, and no proxy is used: a health check asks the endpoint
// itself.
func checkHealth(ctx context.Context, u *url.URL, timeout time.Duration) (status int, body string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, "", fmt.Errorf("build the request: %w", err)
	}
	req.Header.Set("User-Agent", "guestlist-healthcheck/"+currentVersion())
	client := &http.Client{
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
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
