// Package raworigin is the most trivial HTTP/1.1 origin, for benchmarks: no HTTP library, it
// finds the end of each request head (CRLF CRLF) and writes a fixed 200 "ok" answer, so that
// what it costs per request does not grow with the number of header lines it is sent, and it
// allocates nothing per request. It serves requests without a body only: a head announcing a
// body is answered 400 and the connection closed, so that a request a benchmark did not mean to
// send is noticed, not misframed.
package raworigin

import (
	"bytes"
	"net"
)

var (
	ok         = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")
	badRequest = []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	headEnd    = []byte("\r\n\r\n")
)

// Serve answers the requests of conn until it closes or sends a request the origin does not
// serve (a body, or a head over 64 KiB), then closes conn. When onHead is not nil, it is called
// with each request head, final empty line included, before the answer; the slice is reused
// afterwards.
func Serve(conn net.Conn, onHead func(head []byte)) {
	defer conn.Close()
	buf := make([]byte, 64<<10)
	n := 0
	for {
		m, err := conn.Read(buf[n:])
		if err != nil {
			return
		}
		n += m
		start := 0
		for {
			i := bytes.Index(buf[start:n], headEnd)
			if i < 0 {
				break
			}
			head := buf[start : start+i+4]
			start += i + 4
			if onHead != nil {
				onHead(head)
			}
			if hasBody(head) {
				_, _ = conn.Write(badRequest)
				return
			}
			if _, err := conn.Write(ok); err != nil {
				return
			}
		}
		n = copy(buf, buf[start:n])
		if n == len(buf) {
			_, _ = conn.Write(badRequest)
			return
		}
	}
}

// hasBody reports whether a request head announces a body: a Transfer-Encoding, or a
// Content-Length other than 0.
func hasBody(head []byte) bool {
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			continue
		}
		switch {
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return true
		case bytes.EqualFold(name, []byte("Content-Length")):
			if string(bytes.TrimSpace(value)) != "0" {
				return true
			}
		}
	}
	return false
}
