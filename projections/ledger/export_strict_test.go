package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/eventstore"
)

// smallExport returns the lines of an export of tenant acme (n events, a checkpoint every
// `every`, the last event's included) and the key that signed its checkpoints. actor gives each
// event's actor.
func smallExport(t testing.TB, n, every int, actor func(i int) string) ([]string, ed25519.PublicKey) {
	t.Helper()
	signer := NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)))
	var b bytes.Buffer
	ew, err := NewExportWriter(&b, "acme")
	if err != nil {
		t.Fatal(err)
	}
	rng := rangeFactory.NewEmptyRange(0)
	var chain [32]byte
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		data := []byte(fmt.Sprintf("event %d: some protobuf bytes \x00\x01\xff and more", i))
		ev := eventstore.RecordedEvent{Type: "guestlist.events.v1.HostnameUpdated", Stream: "tenant-acme", Data: data,
			Metadata: eventstore.Metadata{Actor: actor(i), RequestID: "req-" + strconv.Itoa(i)},
			Time:     t0.Add(time.Duration(i)*time.Millisecond + 100), Revision: uint64(i), Position: eventstore.Position(2*i + 1)}
		if err := ew.WriteEvent(ev); err != nil {
			t.Fatal(err)
		}
		c := Canonical("acme", ev)
		chain = Chain(chain, c)
		lh := LeafHash(c)
		_ = rng.Append(lh[:], nil)
		if (i+1)%every == 0 || i == n-1 {
			root, _ := rootOf(rng)
			if err := ew.WriteCheckpoint(signer.Sign(Checkpoint{Tenant: "acme", Size: uint64(i + 1), Root: root, Chain: chain, Time: t0})); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := ew.Flush(); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n"), signer.PublicKey()
}

func ciActor(int) string { return "token:acme/ci" }

func verifyExportLines(lines []string, pub ed25519.PublicKey) Result {
	return VerifyExport(strings.NewReader(strings.Join(lines, "\n")+"\n"), pub)
}

// TestReviewCaseFoldedDuplicateKeyForgery (from the review): an event line carrying a forged
// event under "event" and the genuine one under "Event". encoding/json (case-insensitive keys, the
// last one wins) read the genuine one, so the export verified while jq, Python and JavaScript read
// the forged one. The line is refused now, by its number.
func TestReviewCaseFoldedDuplicateKeyForgery(t *testing.T) {
	lines, pub := smallExport(t, 30, 10, ciActor)
	if r := verifyExportLines(lines, pub); !r.Valid {
		t.Fatalf("genuine export: %+v", r)
	}
	genuine := lines[2] // the event at revision 1
	inner := strings.TrimSuffix(strings.TrimPrefix(genuine, `{"event":`), "}")
	forged := strings.Replace(inner, `"actor":"token:acme/ci"`, `"actor":"token:mallory/forged"`, 1)
	lines[2] = `{"event":` + forged + `,"Event":` + inner + `}`
	var jq struct {
		Event struct {
			Actor string `json:"actor"`
		} `json:"event"`
	}
	if err := json.Unmarshal([]byte(lines[2]), &jq); err != nil || jq.Event.Actor != "token:acme/ci" {
		t.Fatalf("encoding/json no longer folds case (%v %q): the test shows nothing", err, jq.Event.Actor)
	}
	r := verifyExportLines(lines, pub)
	t.Logf("%+v", r)
	if r.Valid || !strings.Contains(r.Problem, `line 3: unknown key "Event"`) {
		t.Fatalf("forged line: %+v", r)
	}
}

// TestExportLineStrict: a line that any JSON reader could read otherwise than the verifier is
// refused, with its line number and why; the other forms of an export still verify.
func TestExportLineStrict(t *testing.T) {
	lines, pub := smallExport(t, 30, 10, ciActor)
	const ev = 2 // index of the event line at revision 1 (line 3)
	genuine := lines[ev]
	inner := strings.TrimSuffix(strings.TrimPrefix(genuine, `{"event":`), "}")
	var fields exportEvent
	if err := json.Unmarshal([]byte(inner), &fields); err != nil {
		t.Fatal(err)
	}
	data := strings.Trim(string(fields.Data), `"`)
	cpIndex := -1
	for i, l := range lines {
		if strings.HasPrefix(l, `{"checkpoint":`) {
			cpIndex = i
			break
		}
	}
	// The REST form of the line, as guestlist audit export writes it.
	restEvent := restLines(t, []string{genuine}, true, true)[0]
	restInner := strings.TrimSuffix(strings.TrimPrefix(restEvent, `{"result":{"event":`), "}}")
	if restInner == restEvent {
		t.Fatalf("REST line %s", restEvent)
	}
	// with returns the event's fields with key: value inserted after "{" (at the front) or
	// before the last "}" (at the end).
	front := func(obj, member string) string { return "{" + member + "," + obj[1:] }
	end := func(obj, member string) string { return obj[:len(obj)-1] + "," + member + "}" }
	replace := func(old, new string) string {
		if !strings.Contains(genuine, old) {
			t.Fatalf("%q not in %s", old, genuine)
		}
		return strings.Replace(genuine, old, new, 1)
	}
	// Data with stray bits in its padding: the same bytes to a lax base64 decoder.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	pad := strings.IndexByte(data, '=')
	if pad < 1 {
		t.Fatalf("data %q has no padding", data)
	}
	strayBits := data[:pad-1] + string(alphabet[strings.IndexByte(alphabet, data[pad-1])+1]) + data[pad:]
	forgedActor := strings.Replace(inner, "token:acme/ci", "token:mallory/forged", 1)

	cases := []struct {
		name, line, want string
		index            int // of the line replaced (default: ev)
	}{
		{"event then Event", `{"event":` + forgedActor + `,"Event":` + inner + `}`, `unknown key "Event"`, 0},
		{"EVENT alone", `{"EVENT":` + inner + `}`, `unknown key "EVENT"`, 0},
		{"event twice", `{"event":` + forgedActor + `,"event":` + inner + `}`, `duplicate key "event"`, 0},
		{"data then Data", `{"event":` + end(strings.Replace(inner, data, strings.Replace(data, "A", "B", 1), 1), `"Data":"`+data+`"`) + `}`, `"event": unknown key "Data"`, 0},
		{"actor then ACTOR", `{"event":` + end(forgedActor, `"ACTOR":"token:acme/ci"`) + `}`, `"event": unknown key "ACTOR"`, 0},
		{"actor twice", `{"event":` + front(inner, `"actor":"token:mallory/forged"`) + `}`, `"event": duplicate key "actor"`, 0},
		{"unknown key in the event", `{"event":` + end(inner, `"note":1`) + `}`, `"event": unknown key "note"`, 0},
		{"unknown key on the line", `{"event":` + inner + `,"note":"x"}`, `unknown key "note"`, 0},
		{"escaped key that is another key", `{"event":` + front(inner, `"\u0061ctor":"token:mallory/forged"`) + `}`, `duplicate key "actor"`, 0},
		{"requestId and request_id", `{"event":` + end(inner, `"request_id":"other"`) + `}`, "both requestId and request_id", 0},
		{"REST: event then Event", `{"result":{"event":` + end(restInner, `"Actor":"x"`) + `}}`, `"event": unknown key "Actor"`, 0},
		{"REST: result then Result", `{"result":{"event":` + restInner + `},"Result":{}}`, `unknown key "Result"`, 0},
		{"REST: event twice in result", `{"result":{"event":` + restInner + `,"event":` + restInner + `}}`, `"result": duplicate key "event"`, 0},
		{"REST: unknown key in result", `{"result":{"event":` + restInner + `,"Checkpoint":"x"}}`, `"result": unknown key "Checkpoint"`, 0},
		{"REST: value then Value in the Any", `{"result":{"event":` + strings.Replace(restInner, `"value":"`+data+`"`, `"value":"`+data+`","Value":"AAAA"`, 1) + `}}`, `expanded Any (key "Value")`, 0},
		{"REST: value twice in the Any", `{"result":{"event":` + strings.Replace(restInner, `"value":"`+data+`"`, `"value":"AAAA","value":"`+data+`"`, 1) + `}}`, `duplicate key "value"`, 0},
		{"tenant then Tenant", `{"tenant":"acme","Tenant":"globex"}`, `unknown key "Tenant"`, -1},
		{"tenant twice", `{"tenant":"globex","tenant":"acme"}`, `duplicate key "tenant"`, -1},
		{"checkpoint then Checkpoint", end(lines[max(cpIndex, 0)], `"Checkpoint":"x"`), `unknown key "Checkpoint"`, cpIndex},
		{"null actor", replace(`"actor":"token:acme/ci"`, `"actor":null`), "actor: want a string", 0},
		{"a number as the type", replace(`"type":"guestlist.events.v1.HostnameUpdated"`, `"type":1`), "type: want a string", 0},
		{"null data", replace(`"data":"`+data+`"`, `"data":null`), "data: want a base64 string or an Any", 0},
		{"invalid UTF-8", replace(`"actor":"token:acme/ci"`, "\"actor\":\"token:acme/\xff\""), "invalid UTF-8", 0},
		{"a lone surrogate", replace(`"actor":"token:acme/ci"`, `"actor":"token:acme/\ud800"`), "lone surrogate", 0},
		{"a raw tab in a string", replace(`"actor":"token:acme/ci"`, "\"actor\":\"token:acme/\tci\""), "control character", 0},
		{"a trailing comma", replace(`"}}`, `",}}`), "want a key", 0},
		{"text after the object", genuine + ` {}`, "text after the JSON object", 0},
		{"two objects", genuine + genuine, "text after the JSON object", 0},
		{"a line break in the base64", replace(data, data[:8]+`\n`+data[8:]), "not standard base64", 0},
		{"stray bits in the base64 padding", replace(data, strayBits), "not standard base64", 0},
		{"a time with an offset", replace(`Z"`, `+00:00"`), "time", 0},
		{"a time with trailing zeros", replace(`Z"`, `0Z"`), "time", 0},
		{"a leading zero", replace(`"position":"3"`, `"position":"03"`), "leading zeros", 0},
		{"a number beyond 2^53", replace(`"position":"3"`, `"position":9007199254740993`), "2^53", 0},
		{"a negative number", replace(`"position":"3"`, `"position":-3`), "unsigned", 0},
		{"a fraction", replace(`"position":"3"`, `"position":3.0`), "unsigned integer", 0},
		{"a no-break space first", "\u00a0" + genuine, "want a JSON object", 0},
		{"an array", "[" + genuine + "]", "want a JSON object", 0},
		{"a time that is not a string", replace(`"time":"`, `"time":1,"x":"`), "time: want a string", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			i := ev
			if c.index != 0 {
				i = c.index
			}
			if i < 0 {
				i = 0
			}
			ls := append([]string(nil), lines...)
			ls[i] = c.line
			r := verifyExportLines(ls, pub)
			t.Logf("%s\n%+v", c.line, r)
			want := fmt.Sprintf("line %d: ", i+1)
			if r.Valid || !strings.HasPrefix(r.Problem, want) || !strings.Contains(r.Problem, c.want) {
				t.Fatalf("got %+v, want a problem starting %q and saying %q", r, want, c.want)
			}
		})
	}

	// Other encodings of the same values still verify: numbers for position and revision,
	// escapes, whitespace, the REST form.
	same := map[string]string{
		"numbers":            replace(`"position":"3","revision":"1"`, `"position":3,"revision":1`),
		"escaped characters": replace(`"actor":"token:acme/ci"`, `"\u0061ctor":"token:acme\/\u0063i"`),
		"whitespace":         " \t{ \"event\" :\t" + strings.ReplaceAll(inner, `,"`, ` , "`) + " } \r",
		"REST":               restEvent,
		"protojson time":     replace(`.0010001Z"`, `.001000100Z"`),
	}
	for name, line := range same {
		ls := append([]string(nil), lines...)
		ls[ev] = line
		if line == genuine {
			t.Fatalf("%s: no change", name)
		}
		if r := verifyExportLines(ls, pub); !r.Valid {
			t.Errorf("%s: %+v\n%s", name, r, line)
		}
	}
}

// TestExportLineEscapes: strings that json.Marshal writes with escapes (&, <, >, U+2028, control
// characters), and characters beyond the BMP written as surrogate pairs, read exactly.
func TestExportLineEscapes(t *testing.T) {
	actor := func(i int) string { return fmt.Sprintf("a&b<c>\u2028\t\"\\é😀 %d", i) }
	lines, pub := smallExport(t, 12, 5, actor)
	if !strings.Contains(lines[1], `\u0026`) || !strings.Contains(lines[1], `\u2028`) {
		t.Fatalf("not escaped: %s", lines[1])
	}
	if r := verifyExportLines(lines, pub); !r.Valid {
		t.Fatalf("%+v", r)
	}
	lines[1] = strings.Replace(lines[1], "😀", `\ud83d\ude00`, 1)
	if r := verifyExportLines(lines, pub); !r.Valid {
		t.Fatalf("surrogate pair: %+v", r)
	}
}

// refDecode decodes one JSON value with exact semantics: keys as written (after unescaping), a key
// given twice an error, numbers as json.Number.
func refDecode(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	switch d {
	case '{':
		m := map[string]any{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k := kt.(string)
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			if m[k], err = refDecode(dec); err != nil {
				return nil, err
			}
		}
		_, err = dec.Token()
		return m, err
	case '[':
		var a []any
		for dec.More() {
			v, err := refDecode(dec)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		_, err = dec.Token()
		return a, err
	}
	_, err = dec.Token()
	return nil, err
}

// refEntry is what an exact JSON reader makes of an accepted line: it fails the test when the line
// does not hold what parseLine said it holds.
func refEntry(t *testing.T, line []byte, tenant string) entry {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	v, err := refDecode(dec)
	if err != nil {
		t.Fatalf("accepted, but not JSON with unique keys: %v\n%q", err, line)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("accepted, but more follows the object: %v\n%q", err, line)
	}
	top, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("accepted, but not an object: %q", line)
	}
	if _, ok := top["error"]; ok {
		t.Fatalf("accepted, but it holds an error (a stream that failed): %q", line)
	}
	str := func(m map[string]any, k string) string {
		s, ok := m[k].(string)
		if _, present := m[k]; present && !ok {
			t.Fatalf("accepted, but %s is %T: %q", k, m[k], line)
		}
		return s
	}
	num := func(m map[string]any, k string) uint64 {
		var s string
		switch x := m[k].(type) {
		case nil:
			return 0
		case string:
			s = x
		case json.Number:
			s = string(x)
		default:
			t.Fatalf("accepted, but %s is %T: %q", k, m[k], line)
		}
		u, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("accepted, but %s is %q: %v", k, s, err)
		}
		return u
	}
	item := top
	if r, ok := top["result"]; ok {
		item = r.(map[string]any)
	}
	var e entry
	switch {
	case top["tenant"] != nil:
		e.kind, e.tenant = 't', str(top, "tenant")
		return e
	case item["tenantId"] != nil:
		e.kind, e.tenant = 't', str(item, "tenantId")
		return e
	case item["tenant_id"] != nil:
		e.kind, e.tenant = 't', str(item, "tenant_id")
		return e
	case item["checkpoint"] != nil:
		e.kind, e.cp = 'c', SignedCheckpoint(str(item, "checkpoint"))
		return e
	}
	ev := item
	if x, ok := item["event"]; ok {
		ev = x.(map[string]any)
	}
	e.kind, e.pos, e.rev = 'e', num(ev, "position"), num(ev, "revision")
	tm, err := time.Parse(time.RFC3339Nano, str(ev, "time"))
	if err != nil {
		t.Fatalf("accepted, but time: %v: %q", err, line)
	}
	if !time.Unix(0, tm.UnixNano()).Equal(tm) {
		t.Fatalf("accepted, but the time %s is not the one the canonical bytes hold (%s): %q", tm, time.Unix(0, tm.UnixNano()).UTC(), line)
	}
	var b64 string
	switch d := ev["data"].(type) {
	case nil:
	case string:
		b64 = d
	case map[string]any:
		if typ := str(d, "@type"); typ != "type.googleapis.com/google.protobuf.BytesValue" {
			t.Fatalf("accepted, but data is an Any of %q: protojson does not read its value as the event's bytes: %q", typ, line)
		}
		b64 = str(d, "value")
	default:
		t.Fatalf("accepted, but data is %T: %q", d, line)
	}
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("accepted, but data: %v: %q", err, line)
	}
	reqID := str(ev, "requestId")
	if _, ok := ev["requestId"]; !ok {
		reqID = str(ev, "request_id")
	}
	if h, ok := ev["hash"]; ok {
		b, err := hex.DecodeString(h.(string))
		if err != nil || len(b) != 32 {
			t.Fatalf("accepted, but hash %q: %q", h, line)
		}
		copy(e.hash[:], b)
		e.hasHash = true
	}
	e.canonical = appendCanonical(nil, tenant, e.rev, e.pos, str(ev, "type"), tm.UnixNano(), str(ev, "actor"), reqID, data)
	e.leaf = LeafHash(e.canonical)
	return e
}

// FuzzParseLine: a line parseLine accepts is one JSON object, with unique keys, that an exact JSON
// reader (encoding/json's tokens, keys compared as written) reads as the same tenant, checkpoint or
// event (the same canonical bytes and hash), and never one that holds an "error" (the end of a
// stream that failed). Seeds: the lines of WriteExport, of the REST export (bare, as it sends
// them and as guestlist audit export writes them) and of earlier REST exports ({"result":...}).
func FuzzParseLine(f *testing.F) {
	lines, _ := smallExport(f, 12, 5, func(i int) string { return fmt.Sprintf("a&b<c> é😀 %d", i) })
	for _, form := range [][]string{lines, restLines(f, lines, true, true), restLines(f, lines, false, true), restLines(f, lines, false, false)} {
		for _, l := range form[:4] {
			f.Add([]byte(l))
		}
	}
	// protojson (with its spaces), and lines refused since the review.
	tm, _ := time.Parse(time.RFC3339Nano, "2026-01-01T00:00:00.5Z")
	a, _ := anypb.New(wrapperspb.Bytes([]byte("xyz")))
	pj, _ := protojson.Marshal(&guestlistv1.ExportEventsResponse{Item: &guestlistv1.ExportEventsResponse_Event{Event: &guestlistv1.AuditEvent{
		Position: 9, Revision: 2, Type: "t", Time: timestamppb.New(tm), Actor: "x", RequestId: "r", Data: a, Hash: strings.Repeat("ab", 32)}}})
	f.Add(pj)
	f.Add([]byte(`{"result":` + string(pj) + `}`))
	f.Add([]byte(`{"event":{"time":"2026-01-01T00:00:00Z","actor":"x"},"Event":{"time":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"event":{"time":"2026-01-01T00:00:00Z","actor":"x","actor":"y","data":"AAAA","Data":"AAAB"}}`))
	f.Add([]byte(`{"position":1,"revision":"0","time":"2026-01-01T00:00:00.123Z","data":{"@type":"x","value":"QQ=="}}`))
	f.Add([]byte(`{"position":1,"revision":"0","time":"2610-07-22T23:34:34.709551616Z","data":"AAAA"}`))
	f.Add([]byte(`{"tenant_id":"\u0061cme"}`))
	f.Add([]byte(`{"error":{"code":2,"message":"x","details":[{}]}}`))
	f.Add([]byte(`{"error":{"code":14,"message":"server shutting down","details":[]}}`))
	f.Add([]byte(`{"tenantId":"acme","error":{"code":14}}`))
	f.Add([]byte(`{"result":{"checkpoint":"x"},"error":{}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var e entry
		parseLine(line, "acme", &e)
		if e.err != nil || e.kind == 0 {
			if e.kind == 0 && e.err == nil && !blank(line) {
				t.Fatalf("neither refused nor read: %q", line)
			}
			return
		}
		want := refEntry(t, line, "acme")
		if e.kind != want.kind || e.tenant != want.tenant || e.cp != want.cp || e.pos != want.pos || e.rev != want.rev ||
			e.leaf != want.leaf || e.hash != want.hash || e.hasHash != want.hasHash || !bytes.Equal(e.canonical, want.canonical) {
			t.Fatalf("parseLine and an exact reader differ on %q:\nparseLine %+v\nexact     %+v", line, e, want)
		}
	})
}

// TestExportResultNamesTheTenant: VerifyExport says which tenant's history it verified (taken from
// the export) and the positions of its first and last event.
func TestExportResultNamesTheTenant(t *testing.T) {
	lines, pub := smallExport(t, 30, 10, ciActor)
	r := verifyExportLines(lines, pub)
	if !r.Valid || r.Tenant != "acme" || r.FirstPosition != 1 || r.LastPosition != 59 {
		t.Fatalf("%+v", r)
	}
	in := strings.Join(lines, "\n")
	if r := VerifyExportTenant(strings.NewReader(in), pub, "acme"); !r.Valid || r.Tenant != "acme" {
		t.Fatalf("as acme: %+v", r)
	}
	if r := VerifyExportTenant(strings.NewReader(in), pub, "globex"); r.Valid || !strings.Contains(r.Problem, `line 1: this is an export of tenant "acme", not of "globex"`) {
		t.Fatalf("as globex: %+v", r)
	}
	// A second tenant line inside one export is another matter, and says so.
	mixed := lines[0] + "\n" + strings.Replace(lines[0], `"acme"`, `"globex"`, 1) + "\n" + strings.Join(lines[1:], "\n")
	if r := VerifyExport(strings.NewReader(mixed), pub); r.Valid || !strings.Contains(r.Problem, `line 2: export of tenant "globex" inside the export of "acme"`) {
		t.Fatalf("two tenant lines: %+v", r)
	}
}
