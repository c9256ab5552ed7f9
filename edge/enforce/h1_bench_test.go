package enforce

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"guestlist.dev/edge/enforce/bench/raworigin"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// rawOKOrigin answers every bodyless request with a fixed 200 without allocating per request
// (raworigin.Serve), so that allocations measured in-process are the edge's.
func rawOKOrigin(b *testing.B) string { return rawHeadOrigin(b, nil) }

// rawHeadOrigin is rawOKOrigin, calling onHead (when not nil) with each request head it got
// (the slice is reused afterwards).
func rawHeadOrigin(b *testing.B, onHead func(head []byte)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go raworigin.Serve(conn, onHead)
		}
	}()
	return "http://" + ln.Addr().String()
}

// readResponse reads one response with a Content-Length from conn into buf (reused) and
// returns its status code.
func readRawResponse(conn io.Reader, buf []byte) (int, error) {
	n := 0
	for {
		if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 {
			head := buf[:i]
			j := bytes.Index(head, []byte("Content-Length: "))
			if j < 0 {
				return 0, fmt.Errorf("no Content-Length in %q", head)
			}
			k := bytes.IndexByte(head[j:], '\r')
			if k < 0 {
				k = len(head) - j
			}
			cl, err := strconv.Atoi(string(head[j+16 : j+k]))
			if err != nil {
				return 0, err
			}
			for n < i+4+cl {
				m, err := conn.Read(buf[n:])
				if err != nil {
					return 0, err
				}
				n += m
			}
			return strconv.Atoi(string(buf[9:12]))
		}
		m, err := conn.Read(buf[n:])
		if err != nil {
			return 0, err
		}
		n += m
	}
}

// BenchmarkFastPathRequest: one keep-alive request through the fast path (ENFORCE, verified
// client certificate, decision log on), client and origin written so that they allocate
// nothing per request: allocs/op are the edge's.
//
//	go test -run XXX -bench FastPath -benchmem guestlist.dev/edge/enforce
func BenchmarkFastPathRequest(b *testing.B) {
	for _, policy := range []bool{false, true} {
		b.Run(fmt.Sprintf("policy=%v", policy), func(b *testing.B) {
			ca := pkitest.NewCA(b, "Acme Root")
			leaf := ca.Client(b, "device")
			h := host(hostA, "acme", ca)
			h.OriginUrl = rawOKOrigin(b)
			if policy {
				h.Policy = &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{
					{Name: "no-admin", Action: configv1.Action_ACTION_DENY, Expression: `request.path.startsWith("/admin")`},
					{Name: "devices", Action: configv1.Action_ACTION_ALLOW, Expression: `cert.verified && "x" != request.headers[?"user-agent"].orValue("")`},
				}}
			}
			e := newEnv(b, h)
			cfg := &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool(), NextProtos: []string{"http/1.1"}}
			withCert(leaf)(cfg, nil)
			conn, err := tls.Dial("tcp", e.addr, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			req := []byte("GET /pay/x?q=1 HTTP/1.1\r\nHost: " + hostA + "\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
			buf := make([]byte, 64<<10)
			do := func() {
				if _, err := conn.Write(req); err != nil {
					b.Fatal(err)
				}
				if code, err := readRawResponse(conn, buf); err != nil || code != 200 {
					b.Fatalf("status %d, %v", code, err)
				}
			}
			for range 100 {
				do()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				do()
			}
		})
	}
}

// BenchmarkOriginParsesHead: what the request head the edge forwards costs a Go (net/http)
// origin to parse, against the client's own head as a proxy that adds nothing would forward it.
// The edge's head is the one a real origin received from the fast path (ENFORCE, a verified
// client certificate): Host, X-Forwarded-*, the decision and certificate headers of PRODUCT.md.
//
//	go test -run XXX -bench OriginParsesHead -benchmem guestlist.dev/edge/enforce
func BenchmarkOriginParsesHead(b *testing.B) {
	ca := pkitest.NewCA(b, "Acme Root")
	heads := make(chan []byte, 1)
	h := host(hostA, "acme", ca)
	h.OriginUrl = rawHeadOrigin(b, func(head []byte) {
		select {
		case heads <- append([]byte(nil), head...):
		default:
		}
	})
	e := newEnv(b, h)
	cfg := &tls.Config{ServerName: hostA, RootCAs: e.edgeCA.Pool(), NextProtos: []string{"http/1.1"}}
	withCert(ca.Client(b, "device"))(cfg, nil)
	conn, err := tls.Dial("tcp", e.addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := "GET /pay/x?q=1 HTTP/1.1\r\nHost: " + hostA + "\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
	if _, err := io.WriteString(conn, client); err != nil {
		b.Fatal(err)
	}
	edgeHead := <-heads
	if !bytes.Contains(edgeHead, []byte("\r\nClient-Cert: :")) || !bytes.Contains(edgeHead, []byte("\r\nX-Guestlist-Decision: allow\r\n")) {
		b.Fatalf("the origin's head lacks the certificate or decision headers:\n%s", edgeHead)
	}
	for _, tc := range []struct {
		name string
		head []byte
	}{
		{"edge", edgeHead},
		{"client", []byte(client)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := bytes.NewReader(nil)
			br := bufio.NewReaderSize(r, 4096)
			b.SetBytes(int64(len(tc.head)))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(tc.head)
				br.Reset(r)
				if _, err := http.ReadRequest(br); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
