//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"guestlist.dev/edge/enforce/bench/raworigin"
)

// staticHeader is a request header nginx sets to a fixed value (-nginx-same-headers).
type staticHeader struct {
	Name, Value string
}

// captureForwardedHead starts an edge configured as the keep-alive edge (args), except that its
// origin is a listener of this process, sends it one keep-alive request with cfg, and returns
// the request head the origin received (request line, header lines, final empty line). The edge
// is stopped before it returns.
func captureForwardedHead(ctx context.Context, e *env, args []string, cfg *tls.Config) ([]byte, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("capture origin: listen: %w", err)
	}
	defer ln.Close()
	heads := make(chan []byte, 1)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go raworigin.Serve(conn, func(head []byte) {
				select {
				case heads <- bytes.Clone(head):
				default:
				}
			})
		}
	}()
	args = slices.Clone(args)
	i := slices.Index(args, "-origin")
	if i < 0 || i+1 >= len(args) {
		return nil, fmt.Errorf("capture: the edge's arguments %q name no -origin", args)
	}
	args[i+1] = "http://" + ln.Addr().String()
	c, r, err := e.startEdge(ctx, "edge-capture", args, 30*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	conn, err := dialTLS(ctx, r.Addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(request(cfg.ServerName, true)); err != nil {
		return nil, fmt.Errorf("capture: write request: %w", err)
	}
	if _, err := readResponse(bufio.NewReader(conn)); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	select {
	case h := <-heads:
		return h, nil
	case <-time.After(5 * time.Second):
		return nil, fmt.Errorf("capture: the origin received no request head")
	}
}

// sameHeaders returns the header lines of head (a request head the edge forwarded) that nginx
// must set itself to send the origin the same header lines as the edge: every line except
// Connection (nginx's proxy_set_header Connection "" and the edge's keep-alive default both
// leave it out) and those the client (client) sent with the same value, which nginx passes on by
// itself; Host is kept, since nginx would otherwise send the upstream's name. A line of a name
// the client sent with another value is kept too: nginx then sends its value instead of the
// client's. It is an error when nginx would send the origin something else: a line the client
// sent that the edge did not forward (nginx would pass it on), or an empty value (nginx does not
// send a header set to ""). So is a line nginx's configuration cannot hold: a name of other than
// letters, digits, '-' and '_', or a value with '$', '"', '\\' or a control character.
func sameHeaders(head, client []byte) ([]staticHeader, error) {
	type clientLine struct{ name, value string }
	var sent []clientLine
	for _, line := range strings.Split(string(client), "\r\n")[1:] {
		if name, value, ok := strings.Cut(line, ":"); ok && !strings.EqualFold(name, "Host") {
			sent = append(sent, clientLine{name, strings.TrimSpace(value)})
		}
	}
	forwarded := map[string]bool{}
	lines := strings.Split(strings.TrimSuffix(string(head), "\r\n\r\n"), "\r\n")
	var out []staticHeader
	for _, line := range lines[1:] {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("forwarded head: line %q is not a header", line)
		}
		if name == "" || strings.ContainsFunc(name, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_')
		}) {
			return nil, fmt.Errorf("forwarded head: header name %q cannot be written in nginx's configuration", name)
		}
		value = strings.TrimSpace(value)
		forwarded[strings.ToLower(name)] = true
		if strings.EqualFold(name, "Connection") || slices.ContainsFunc(sent, func(c clientLine) bool {
			return strings.EqualFold(c.name, name) && c.value == value
		}) {
			continue
		}
		if value == "" {
			return nil, fmt.Errorf("forwarded head: header %s is empty, and nginx does not send a header set to \"\"", name)
		}
		if i := strings.IndexFunc(value, func(r rune) bool { return r == '$' || r == '"' || r == '\\' || r < 0x20 || r == 0x7f }); i >= 0 {
			return nil, fmt.Errorf("forwarded head: header %s: %q cannot be written in nginx's configuration", name, value[i])
		}
		out = append(out, staticHeader{Name: name, Value: value})
	}
	for _, c := range sent {
		// nginx does not pass on the hop-by-hop lines either.
		switch strings.ToLower(c.name) {
		case "connection", "keep-alive", "te", "upgrade", "expect":
			continue
		}
		if !forwarded[strings.ToLower(c.name)] {
			return nil, fmt.Errorf("forwarded head: the edge did not forward the client's header %s, which nginx would pass on", c.name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("forwarded head: no header to set in %q", head)
	}
	return out, nil
}

// nginxSameHeaders captures what the keep-alive edge (args) forwards and returns the header lines
// nginx sets for -nginx-same-headers, and prints them.
func nginxSameHeaders(ctx context.Context, e *env, args []string, cfg *tls.Config) ([]staticHeader, error) {
	head, err := captureForwardedHead(ctx, e, args, cfg)
	if err != nil {
		return nil, err
	}
	hs, err := sameHeaders(head, request(cfg.ServerName, true))
	if err != nil {
		return nil, err
	}
	n := 0
	for _, h := range hs {
		n += len(h.Name) + len(": \r\n") + len(h.Value)
	}
	fmt.Printf("keepalive: nginx-same-headers sets %d header lines (%d bytes) as the edge forwarded them:\n", len(hs), n)
	for _, h := range hs {
		fmt.Printf("keepalive:   %s: %s\n", h.Name, h.Value)
	}
	return hs, nil
}
