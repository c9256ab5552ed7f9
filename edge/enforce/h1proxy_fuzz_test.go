package enforce

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"testing"
)

// FuzzParseResponseAgreesWithNetHTTP: for arbitrary bytes from an origin, the fast path's
// response parser accepts a response head only if net/http's client (http.ReadResponse, as the
// ReverseProxy of the other path reads it) accepts it too, and then reads it the same way: the
// status code, the body's framing, the headers forwarded to the client, the body and trailers the
// client is sent, and where the response ends on the origin connection (what a reused connection
// would read next).
func FuzzParseResponseAgreesWithNetHTTP(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
		"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the close",
		"HTTP/1.1 204 No Content\r\nConnection: close, X-A\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\n",
		"HTTP/1.1 200\nContent-Length: 2\nKeep-Alive: 1\n\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcdef",
		"HTTP/1.1 500 \xff\r\nX: \xfe\t\r\n\r\n",
		// Chunk-size lines: net/http trims trailing whitespace, then cuts the extension.
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ;ext\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\t\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000005;\x00\x7f\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n\r\n0\r\n\r\n",
		// Trailer may not name a framing header of a chunked response.
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T, content-length\r\n\r\n0\r\nContent-Length: 41\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nTrailer: Trailer\r\n\r\n",
		// Trailers are a MIME header, as net/http reads it.
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\r\n folded\r\nX-B: 2\nX-C: 3 \r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\n\r\n\r\n",
		// Repeated Content-Lengths: net/http compares them as strings.
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabc",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp h1Response
		if parseResponse(b, &resp, true) != parseOK {
			return
		}
		// Both read through a buffer of the pool's size (it bounds lines and trailers).
		nbr := bufio.NewReaderSize(bytes.NewReader(b), leanBufSize)
		r, err := http.ReadResponse(nbr, &http.Request{Method: http.MethodGet})
		if err != nil {
			t.Fatalf("fast path accepted a response head net/http refuses (%v): %q", err, b)
		}
		if r.StatusCode != resp.code {
			t.Fatalf("status %d, net/http's %d: %q", resp.code, r.StatusCode, b)
		}
		// The headers forwarded to the client, as the ReverseProxy forwards net/http's (framing
		// headers and Trailer aside: both write their own).
		var mine, theirs []string
		for _, f := range resp.fields {
			if !f.drop && !asciiEqualFold(f.name, "Trailer") {
				mine = append(mine, string(appendCanonicalKey(nil, f.name))+": "+string(f.value))
			}
		}
		// net/http's shouldClose removes a Connection header with "close" in it (and so forwards
		// what it listed): the tokens are taken from the head as sent.
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
		_, _ = tp.ReadLine()
		mh, err := tp.ReadMIMEHeader()
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("textproto: %v", err)
		}
		h := r.Header.Clone()
		for _, v := range mh["Connection"] {
			for _, tok := range strings.Split(v, ",") {
				h.Del(strings.TrimSpace(tok))
			}
		}
		for _, k := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"} {
			h.Del(k)
		}
		for k, vv := range h {
			for _, v := range vv {
				theirs = append(theirs, k+": "+v)
			}
		}
		slices.Sort(mine)
		slices.Sort(theirs)
		if !slices.Equal(mine, theirs) {
			t.Fatalf("forwarded headers\n%q\nnet/http's:\n%q\nfor %q", mine, theirs, b)
		}
		if resp.code < 200 || resp.code == http.StatusNoContent || resp.code == http.StatusNotModified {
			return // no body: exchange forwards none
		}
		netChunked := len(r.TransferEncoding) > 0 && r.TransferEncoding[0] == "chunked"
		if resp.chunked != netChunked || (!resp.chunked && (resp.hasLength != (r.ContentLength >= 0) || resp.hasLength && resp.contentLength != r.ContentLength)) {
			t.Fatalf("framing: chunked %v length %v %d; net/http TE %q length %d: %q",
				resp.chunked, resp.hasLength, resp.contentLength, r.TransferEncoding, r.ContentLength, b)
		}
		want, werr := io.ReadAll(r.Body)

		// The body as exchange copies it to the client.
		br := bufio.NewReaderSize(bytes.NewReader(b[resp.headLen:]), leanBufSize)
		var out bytes.Buffer
		c := &h1Conn{bw: bufio.NewWriter(&out)}
		var cerr error
		switch {
		case resp.chunked:
			cerr = c.copyChunked(br)
		case resp.hasLength:
			cerr = c.copyLength(br, resp.contentLength)
		default:
			cerr = c.copyToClose(br)
		}
		// The body is refused (the client gets a 502, or its connection is closed mid-body: never
		// a whole body) exactly when net/http fails to read it.
		switch {
		case cerr != nil && werr == nil:
			t.Fatalf("the fast path refused a body net/http reads (%v): %q", cerr, b)
		case cerr == nil && werr != nil:
			t.Fatalf("the fast path forwarded a whole body where net/http fails (%v): %q", werr, b)
		case cerr != nil:
			return
		}
		if err := c.bw.Flush(); err != nil {
			t.Fatal(err)
		}
		got := out.Bytes()
		var gotTrailer http.Header
		if resp.chunked || !resp.hasLength {
			cr, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), &out)), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, err = io.ReadAll(cr.Body); err != nil {
				t.Fatalf("the client cannot read the body sent to it (%v): %q", err, b)
			}
			gotTrailer = cr.Trailer
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("body %q, net/http's %q: %q", got, want, b)
		}
		wantTrailer := r.Trailer.Clone()
		for k, v := range wantTrailer {
			// Announced but not sent (nil), or one the edge leaves out (copyChunked).
			if v == nil || isHopByHop([]byte(k)) || k == "Content-Length" || k == "Host" {
				delete(wantTrailer, k)
				continue
			}
			// As a client reads them once written: an empty obs-fold line leaves a trailing
			// space in net/http's value, which the client's parser trims.
			for i := range v {
				v[i] = textproto.TrimString(v[i])
			}
		}
		if len(gotTrailer)+len(wantTrailer) > 0 && !equalHeader(gotTrailer, wantTrailer) {
			t.Fatalf("trailers %q, net/http's %q: %q", gotTrailer, wantTrailer, b)
		}
		// Where the response ends on the origin connection.
		if resp.chunked || resp.hasLength {
			mineRest, _ := io.ReadAll(br)
			theirRest, _ := io.ReadAll(nbr)
			if !bytes.Equal(mineRest, theirRest) {
				t.Fatalf("after the response: %q, net/http's %q: %q", mineRest, theirRest, b)
			}
		}
	})
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
