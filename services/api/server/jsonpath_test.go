package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

func TestJSONPathAt(t *testing.T) {
	const doc = `{"a": {"b": [1, {"c": "x"}, [true, null]]}, "d\u00e9": "v", "e\"q": {}}`
	at := func(s string) int { return strings.Index(doc, s) }
	for _, tc := range []struct {
		name string
		b    string
		off  int
		want string
	}{
		{"ok/a member's name", doc, at(`"a"`), "a"},
		{"ok/a member's value", doc, at(`{"b"`), "a"},
		{"ok/an element", doc, at(`1,`), "a.b[0]"},
		{"ok/a member of an element", doc, at(`"c"`), "a.b[1].c"},
		{"ok/its value", doc, at(`"x"`), "a.b[1].c"},
		{"ok/an element of an element", doc, at(`null`), "a.b[2][1]"},
		{"ok/an escaped name, decoded", doc, at(`"d\u00e9"`), "dé"},
		{"ok/a quote in a name", doc, at(`"e\"q"`), `e"q`},
		{"ok/an empty object", doc, at(`{}`), `e"q`},
		{"ok/a long name is cut", `{"` + strings.Repeat("n", 100) + `": 1}`, 1, strings.Repeat("n", 64) + "..."},
		{"ok/a long name is cut between runes", `{"n` + strings.Repeat("é", 40) + `": 1}`, 1, "n" + strings.Repeat("é", 31) + "..."},
		{"fail/the whole value", doc, 0, ""},
		{"fail/inside a token", doc, at(`"x"`) + 1, ""},
		{"fail/a comma", doc, at(`, {"c"`), ""},
		{"fail/past the end", doc, len(doc), ""},
		{"fail/negative", doc, -1, ""},
		{"fail/not JSON before the offset", `{"a" 1, "b": 2}`, 11, ""},
		{"fail/an unterminated string", `{"a`, 1, ""},
		{"fail/too deep", strings.Repeat("[", maxPathDepth+2) + "1", maxPathDepth + 2, ""},
		{"ok/as deep as allowed", strings.Repeat("[", maxPathDepth) + "1", maxPathDepth, strings.Repeat("[0]", maxPathDepth)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := jsonPathAt([]byte(tc.b), tc.off); got != tc.want {
				t.Errorf("jsonPathAt(%.40q, %d) = %.80q, want %.80q", tc.b, tc.off, got, tc.want)
			}
		})
	}
}

func TestOffsetAt(t *testing.T) {
	b := []byte("ab\nçd\n\nx")
	for _, tc := range []struct {
		name         string
		line, column int
		want         int
	}{
		{"ok/first byte", 1, 1, 0},
		{"ok/end of a line", 1, 3, 2},
		{"ok/after a two-byte rune", 2, 2, 5},
		{"ok/an empty line", 3, 1, 7},
		{"ok/last line", 4, 1, 8},
		{"ok/end of the text", 4, 2, 9},
		{"fail/past a line's end", 1, 4, -1},
		{"fail/no such line", 5, 1, -1},
		{"fail/line 0", 0, 1, -1},
		{"fail/column 0", 1, 0, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := offsetAt(b, tc.line, tc.column); got != tc.want {
				t.Errorf("offsetAt(%d, %d) = %d, want %d", tc.line, tc.column, got, tc.want)
			}
		})
	}
}

// TestJSONPathAtRandomDocuments: for random JSON documents, written with random white space, the
// path jsonPathAt gives at the start of every member name, member value and element is the one
// the writer went through to write it.
func TestJSONPathAtRandomDocuments(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		w := &docWriter{rng: rng, want: map[int]string{}}
		w.value(0, nil)
		b := []byte(w.b.String())
		if !json.Valid(b) {
			t.Fatalf("the writer made invalid JSON: %s", b)
		}
		for off := range len(b) + 1 {
			want, marked := w.want[off]
			got := jsonPathAt(b, off)
			if marked && got != want || !marked && got != "" {
				t.Fatalf("jsonPathAt(%s, %d) = %q, want %q", b, off, got, want)
			}
		}
	}
}

// docWriter writes a random JSON document and records the path at each offset where a member
// name, a member value or an element starts.
type docWriter struct {
	rng  *rand.Rand
	b    strings.Builder
	want map[int]string
}

func (w *docWriter) space() {
	w.b.WriteString([]string{"", "", " ", "\n", "\t ", "\r\n  "}[w.rng.IntN(6)])
}

func (w *docWriter) mark(path []string) {
	if len(path) > 0 {
		w.want[w.b.Len()] = strings.TrimPrefix(strings.Join(path, ""), ".")
	}
}

func (w *docWriter) value(depth int, path []string) {
	w.space()
	w.mark(path)
	kind := w.rng.IntN(6)
	if depth == 0 {
		kind = 4 + w.rng.IntN(2)
	} else if depth > 4 {
		kind = w.rng.IntN(4)
	}
	switch kind {
	case 0:
		w.b.WriteString(strconv.Itoa(w.rng.IntN(2000) - 1000))
	case 1:
		w.b.WriteString([]string{"true", "false", "null", "1.5e3"}[w.rng.IntN(4)])
	case 2, 3:
		w.b.WriteString([]string{`"x"`, `"a,b]}"`, `"\"{["`, `""`}[w.rng.IntN(4)])
	case 4:
		w.b.WriteByte('{')
		n := w.rng.IntN(4)
		for i := range n {
			if i > 0 {
				w.b.WriteByte(',')
			}
			w.space()
			name := []string{"mode", "originUrl", "a b", `q"x`, "é", "rules"}[w.rng.IntN(6)]
			member := append(path[:len(path):len(path)], "."+name)
			w.mark(member)
			enc, _ := json.Marshal(name)
			w.b.Write(enc)
			w.space()
			w.b.WriteByte(':')
			w.value(depth+1, member)
			w.space()
		}
		if n == 0 {
			w.space()
		}
		w.b.WriteByte('}')
	case 5:
		w.b.WriteByte('[')
		n := w.rng.IntN(4)
		for i := range n {
			if i > 0 {
				w.b.WriteByte(',')
			}
			w.value(depth+1, append(path[:len(path):len(path)], "["+strconv.Itoa(i)+"]"))
			w.space()
		}
		if n == 0 {
			w.space()
		}
		w.b.WriteByte(']')
	}
}

// FuzzJSONPathAt: any text and offset: no panic, and a path (UTF-8) only at an offset inside the text;
// offsetAt gives -1 or an offset of the text whose line and column (in runes) are those asked.
func FuzzJSONPathAt(f *testing.F) {
	f.Add([]byte(`{"a": {"b": [1, {"c": "x"}]}}`), 18, 1, 19)
	f.Add([]byte(`[[[[`), 3, 1, 4)
	f.Add([]byte(`{"a\`), 1, 2, 1)
	f.Add([]byte("{\"rules\":\n[{\"action\":\"allow\"}]}"), 20, 2, 12)
	f.Fuzz(func(t *testing.T, b []byte, off, line, column int) {
		p := jsonPathAt(b, off)
		if p != "" && (off < 0 || off >= len(b)) {
			t.Fatalf("path %q at offset %d of a text of %d bytes", p, off, len(b))
		}
		if !utf8.ValidString(p) {
			t.Fatalf("path %q is not UTF-8", p)
		}
		o := offsetAt(b, line, column)
		if o == -1 {
			return
		}
		if o < 0 || o > len(b) {
			t.Fatalf("offsetAt(%d, %d) = %d, outside a text of %d bytes", line, column, o, len(b))
		}
		before := string(b[:o])
		gotLine := 1 + strings.Count(before, "\n")
		gotColumn := 1 + utf8.RuneCountInString(before[strings.LastIndexByte(before, '\n')+1:])
		if gotLine != line || gotColumn != column {
			t.Fatalf("offsetAt(%d, %d) = %d, which is line %d, column %d", line, column, o, gotLine, gotColumn)
		}
	})
}

// TestDecodeErrorOnManyLines: the field of a decoding error at the end of a body of the largest
// size made of newlines is found, on its line, without copying the body: offsetAt once copied the
// rest of the body for each line, which made naming the field take time quadratic in the lines
// (tens of minutes of CPU for this body, in the error handler, holding a decoding slot).
// BenchmarkDecodeErrorOnManyLines measures it.
func TestDecodeErrorOnManyLines(t *testing.T) {
	short := []byte(strings.Repeat("\n", 10_000) + "x")
	if allocs := testing.AllocsPerRun(2, func() { offsetAt(short, 10_001, 1) }); allocs != 0 {
		t.Fatalf("offsetAt over 10,000 lines made %.0f allocations, want none", allocs)
	}
	body, decErr := manyLinesBody(t)
	err := decodeError(status.Errorf(codes.InvalidArgument, "%v", decErr), &bufferedBody{raw: body})
	v := badRequestOf(t, err).GetFieldViolations()
	if want := fmt.Sprintf("(body line %d, column 1)", len(body)-6); len(v) != 1 || v[0].GetField() != "x" || !strings.HasSuffix(v[0].GetDescription(), want) {
		t.Errorf("decodeError: %v, want the field x at %s", err, want)
	}
}

// BenchmarkDecodeErrorOnManyLines: what the error handler adds (decodeError: the position and the
// path of the field) to the gateway's own decoding of the same body ("decode", the baseline), for
// a body of MaxHTTPBodySize bytes of newlines with an unknown field at its end.
func BenchmarkDecodeErrorOnManyLines(b *testing.B) {
	body, decErr := manyLinesBody(b)
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			var tenant guestlistv1.Tenant
			_ = jsonMarshaler().NewDecoder(bytes.NewReader(body)).Decode(&tenant)
		}
	})
	b.Run("decodeError", func(b *testing.B) {
		st := status.Errorf(codes.InvalidArgument, "%v", decErr)
		bb := &bufferedBody{raw: body, into: "guestlist.v1.Tenant", method: "/guestlist.v1.TenantService/CreateTenant"}
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			decodeError(st, bb)
		}
	})
}

// manyLinesBody returns a body of MaxHTTPBodySize bytes, "{", newlines, then the unknown field x,
// and the error the gateway's decoder gives for it.
func manyLinesBody(t testing.TB) ([]byte, error) {
	n := MaxHTTPBodySize - 7
	body := []byte("{" + strings.Repeat("\n", n) + `"x":1}`)
	var tenant guestlistv1.Tenant
	err := jsonMarshaler().NewDecoder(bytes.NewReader(body)).Decode(&tenant)
	if err == nil {
		t.Fatal("the body decoded")
	}
	return body, err
}

// TestRESTDecodeErrorLongNameIsUTF8: an unknown field whose name is cut in the answer (maxPathName)
// gets the usual 400 with a BadRequest. The name used to be cut inside a rune; the answer was then
// not UTF-8, which protobuf cannot encode, and the client got a 500 ("failed to marshal error
// message") instead.
func TestRESTDecodeErrorLongNameIsUTF8(t *testing.T) {
	env := startServer(t, nil)
	name := "n" + strings.Repeat("é", 40)
	r := env.do(t, "POST", "/v1/tenants?tenantId=acme", testToken, `{"displayName":"Acme","`+name+`":1}`)
	want := "tenant.n" + strings.Repeat("é", 31) + "..."
	if f := restFieldViolations(t, r); r.status != http.StatusBadRequest || len(f) != 1 || f[0] != want {
		t.Errorf("status %d, body %s; want 400 naming the field %q", r.status, r.body, want)
	}
}

func TestRequestPath(t *testing.T) {
	create := (&guestlistv1.CreateHostnameRequest{}).ProtoReflect().Descriptor()
	batch := (&guestlistv1.BatchCreateHostnamesRequest{}).ProtoReflect().Descriptor()
	explain := (&guestlistv1.ExplainRequest{}).ProtoReflect().Descriptor()
	hostname := (&guestlistv1.Hostname{}).ProtoReflect().Descriptor().FullName()
	for _, tc := range []struct {
		name     string
		segments []string
		input    protoreflect.MessageDescriptor
		into     protoreflect.FullName
		want     string
	}{
		{"ok/a field of the body's field", []string{".mtls", ".mode"}, create, hostname, "hostname.mtls.mode"},
		{"ok/a proto name as the client wrote it", []string{".origin_url"}, create, hostname, "hostname.origin_url"},
		{"ok/the body is the request", []string{".requests", "[1]", ".hostname", ".originUrl"}, batch, batch.FullName(), "requests[1].hostname.origin_url"},
		{"ok/an unknown name, and what is below it, as written", []string{".mtls", ".modes", ".x"}, create, hostname, "hostname.mtls.modes.x"},
		{"ok/a list's elements", []string{".mtls", ".certificateAuthorityIds", "[0]"}, create, hostname, "hostname.mtls.certificate_authority_ids[0]"},
		{"ok/a map's key, as written", []string{".headers", ".values", ".x-Y.z"}, explain, explain.FullName(), "headers.values.x-Y.z"},
		{"ok/the body's field itself", nil, create, hostname, "hostname"},
		{"fail/decoded into a message that is no field of the request", []string{".mtls"}, create, (&guestlistv1.Tenant{}).ProtoReflect().Descriptor().FullName(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := requestPath(tc.segments, tc.input, tc.into); got != tc.want {
				t.Errorf("requestPath(%q) = %q, want %q", tc.segments, got, tc.want)
			}
		})
	}
}

// TestRESTPatchDecodeErrorNamesTheRequestPath: a PATCH body that does not decode names the field
// by its path in the request, after the body's field ("hostname.mtls.mode",
// "policy.rules[0].action"), as a create's does. The gateway decodes a PATCH body with an
// update_mask through a copy of it, so the decoder cannot record the message it decodes into;
// before, the violation named "mtls.mode" and "rules[0].action" (a new user's review).
func TestRESTPatchDecodeErrorNamesTheRequestPath(t *testing.T) {
	env := startServer(t, func(c *Config) {
		c.Services = append(c.Services,
			Service{
				Name: guestlistv1.HostnameService_ServiceDesc.ServiceName,
				RegisterGRPC: func(r grpc.ServiceRegistrar) {
					guestlistv1.RegisterHostnameServiceServer(r, guestlistv1.UnimplementedHostnameServiceServer{})
				},
				RegisterGateway: guestlistv1.RegisterHostnameServiceHandler,
			},
			Service{
				Name: guestlistv1.PolicyService_ServiceDesc.ServiceName,
				RegisterGRPC: func(r grpc.ServiceRegistrar) {
					guestlistv1.RegisterPolicyServiceServer(r, guestlistv1.UnimplementedPolicyServiceServer{})
				},
				RegisterGateway: guestlistv1.RegisterPolicyServiceHandler,
			})
	})
	for _, tc := range []struct {
		name, method, path, body, field string
	}{
		{"hostname enum, with a mask", "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=mtls.mode", `{"mtls": {"mode": "ENFORCE"}}`, "hostname.mtls.mode"},
		{"hostname enum, mask from the body", "PATCH", "/v1/tenants/acme/hostnames/pay.example.com", `{"state": "STATE_DELETED"}`, "hostname.state"},
		{"hostname unknown field", "PATCH", "/v1/tenants/acme/hostnames/pay.example.com?updateMask=mtls", `{"mtls": {"mode": "MTLS_MODE_OFF", "bogus": 1}}`, "hostname.mtls.bogus"},
		{"policy rule action", "PATCH", "/v1/tenants/acme/policies/p?updateMask=rules", `{"rules": [{"name": "a", "action": "DENY", "expression": "true"}]}`, "policy.rules[0].action"},
		{"create, as before", "POST", "/v1/tenants/acme/hostnames", `{"hostname": "pay.example.com", "mtls": {"mode": "ENFORCE"}}`, "hostname.mtls.mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := env.do(t, tc.method, tc.path, testToken, tc.body)
			if f := restFieldViolations(t, r); r.status != http.StatusBadRequest || len(f) != 1 || f[0] != tc.field {
				t.Errorf("status %d, body %s; want 400 naming the field %q", r.status, r.body, tc.field)
			}
		})
	}
}

// restFieldViolations returns the fields of the google.rpc.BadRequest details of a REST error
// reply, in order, over every detail: none when the body is not a status with such details.
func restFieldViolations(t *testing.T, r httpResult) []string {
	t.Helper()
	var st struct {
		Details []struct {
			FieldViolations []struct {
				Field string `json:"field"`
			} `json:"fieldViolations"`
		} `json:"details"`
	}
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatalf("status %d, body %s: %v", r.status, r.body, err)
	}
	var out []string
	for _, d := range st.Details {
		for _, v := range d.FieldViolations {
			out = append(out, v.Field)
		}
	}
	return out
}
