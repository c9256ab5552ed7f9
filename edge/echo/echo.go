// Package echo is the demo origin of `guestlist dev`: it answers every request with a JSON body
// listing what it received, so that a user can see what the edge forwards (the X-Client-Cert-*
// and X-Guestlist-* headers in particular):
//
//	{
//	  "method": "GET",
//	  "path": "/hello?x=1",
//	  "host": "pay.example.com",
//	  "proto": "HTTP/1.1",
//	  "remote_addr": "127.0.0.1:53412",
//	  "body_bytes": 0,
//	  "headers": {"Accept": ["*/*"], "X-Guestlist-Decision": ["allow"], ...}
//	}
//
// path is the request target as received (escaped, with the query); headers maps each canonical
// header name to its values, sorted by name. The body is read and counted, not echoed.
package echo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Response is the JSON body the echo origin answers with.
type Response struct {
	// Method is the request method.
	Method string `json:"method"`
	// Path is the request target (escaped path and query) as received.
	Path string `json:"path"`
	// Host is the Host header.
	Host string `json:"host"`
	// Proto is the protocol version, e.g. "HTTP/1.1".
	Proto string `json:"proto"`
	// RemoteAddr is the address of the peer (the edge, when proxied).
	RemoteAddr string `json:"remote_addr"`
	// BodyBytes is the length of the request body.
	BodyBytes int64 `json:"body_bytes"`
	// Headers maps canonical header names to their values (encoded sorted by name).
	Headers map[string][]string `json:"headers"`
}

// Handler returns the echo handler.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		path := r.RequestURI
		if path == "" || r.Method == http.MethodConnect {
			path = r.URL.RequestURI()
		}
		resp := Response{
			Method:     r.Method,
			Path:       path,
			Host:       r.Host,
			Proto:      r.Proto,
			RemoteAddr: r.RemoteAddr,
			BodyBytes:  n,
			Headers:    r.Header,
		}
		if resp.Headers == nil {
			resp.Headers = map[string][]string{}
		}
		body, err := json.MarshalIndent(resp, "", "  ") // encoding/json sorts map keys
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		body = append(body, '\n')
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(body)
	})
}

// Serve listens on addr and serves the echo handler until ctx is done, then shuts down
// gracefully. It returns nil after a shutdown caused by ctx.
func Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("echo: listen on %s: %w", addr, err)
	}
	return ServeListener(ctx, ln)
}

// ServeListener is Serve on a listener the caller opened (e.g. on port 0, to learn the address
// first). It closes ln.
func ServeListener(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("echo: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("echo: serve: %w", err)
	}
	return nil
}
