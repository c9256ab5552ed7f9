package ledger

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// restLines turns the lines of WriteExport into the stream of ExportEvents as protojson writes
// its messages: wrapped in {"result":...} as grpc-gateway streams them when result is set, and
// compacted (as guestlist audit export writes them) when compact is set.
func restLines(t testing.TB, lines []string, result, compact bool) []string {
	t.Helper()
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		var x exportLine
		if err := json.Unmarshal([]byte(l), &x); err != nil {
			t.Fatal(err)
		}
		msg := &guestlistv1.ExportEventsResponse{}
		switch {
		case x.Tenant != nil:
			msg.Item = &guestlistv1.ExportEventsResponse_TenantId{TenantId: *x.Tenant}
		case x.Checkpoint != nil:
			msg.Item = &guestlistv1.ExportEventsResponse_Checkpoint{Checkpoint: *x.Checkpoint}
		case x.Event != nil:
			data, err := decodeData(x.Event.Data)
			if err != nil {
				t.Fatal(err)
			}
			tm, _ := time.Parse(time.RFC3339Nano, x.Event.Time)
			a, _ := anypb.New(wrapperspb.Bytes(data))
			msg.Item = &guestlistv1.ExportEventsResponse_Event{Event: &guestlistv1.AuditEvent{
				Position: uint64(x.Event.Position), Revision: uint64(x.Event.Revision), Type: x.Event.Type,
				Time: timestamppb.New(tm), Actor: x.Event.Actor, RequestId: x.Event.RequestID, Data: a, Hash: x.Event.Hash,
			}}
		default:
			t.Fatalf("line %s", l)
		}
		b, err := protojson.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		if compact {
			var c bytes.Buffer
			_ = json.Compact(&c, b)
			b = c.Bytes()
		}
		if result {
			b = fmt.Appendf(nil, `{"result":%s}`, b)
		}
		out = append(out, string(b))
	}
	return out
}

// TestExportRESTStream: the stream of ExportEvents (tenant, events, checkpoints), as grpc-gateway
// streams it and as protojson writes its messages, verifies offline with the key alone, signatures
// included, and tampering with it is detected.
func TestExportRESTStream(t *testing.T) {
	e, evs, cps := history(t)
	lines := exportLines(t, evs, cps)
	pub := e.signer.PublicKey()
	verify := func(ls []string) Result {
		return VerifyExport(strings.NewReader(strings.Join(ls, "\n")+"\n"), pub)
	}
	for _, form := range []struct {
		name            string
		result, compact bool
	}{
		{"REST before bare lines, compact (audit export)", true, true},
		{"REST before bare lines", true, false},
		{"bare, compact (audit export)", false, true},
		{"bare (the REST export)", false, false},
	} {
		t.Run(form.name, func(t *testing.T) {
			rest := restLines(t, lines, form.result, form.compact)
			if r := verify(rest); !r.Valid || r.Checked != uint64(len(evs)) {
				t.Fatalf("intact: %+v\n%s", r, strings.Join(rest[:3], "\n"))
			}
			if r := VerifyExportTenant(strings.NewReader(strings.Join(rest, "\n")), pub, "t1"); r.Valid {
				t.Fatalf("as another tenant: %+v", r)
			}
			cpLine, evLine := -1, -1
			for i, l := range rest {
				if strings.Contains(l, `"checkpoint"`) && cpLine < 0 {
					cpLine = i
				}
				if strings.Contains(l, `"revision":"5"`) {
					evLine = i
				}
			}
			if cpLine < 0 || evLine < 0 {
				t.Fatal("no checkpoint or event line")
			}
			cp, _ := ParseCheckpoint(cps[0])
			root := []byte(strings.Split(string(cps[0]), "\n")[2])
			root[5] = map[bool]byte{true: 'B', false: 'A'}[root[5] == 'A']
			tamper := map[string]func(ls []string) []string{
				"checkpoint size": func(ls []string) []string {
					ls[cpLine] = strings.Replace(ls[cpLine], fmt.Sprintf(`\n%d\n`, cp.Size), fmt.Sprintf(`\n%d\n`, cp.Size+1), 1)
					return ls
				},
				"checkpoint root": func(ls []string) []string {
					ls[cpLine] = strings.Replace(ls[cpLine], strings.Split(string(cps[0]), "\n")[2], string(root), 1)
					return ls
				},
				"drop an event line": func(ls []string) []string { return append(ls[:evLine:evLine], ls[evLine+1:]...) },
				"another tenant line": func(ls []string) []string {
					ls[0] = strings.Replace(ls[0], `"t0"`, `"t1"`, 1)
					return ls
				},
				"two items on a line": func(ls []string) []string {
					var x map[string]any
					_ = json.Unmarshal([]byte(ls[evLine]), &x)
					item := x
					if form.result {
						item = x["result"].(map[string]any)
					}
					item["checkpoint"] = string(cps[0])
					b, _ := json.Marshal(x)
					ls[evLine] = string(b)
					return ls
				},
			}
			for name, f := range tamper {
				ls := f(append([]string(nil), rest...))
				if strings.Join(ls, "\n") == strings.Join(rest, "\n") {
					t.Fatalf("%s: no change", name)
				}
				if r := verify(ls); r.Valid || r.Problem == "" {
					t.Errorf("%s: not detected: %+v", name, r)
				} else {
					t.Logf("%s: %s", name, r.Problem)
				}
			}
		})
	}
	// Whitespace between tokens (as protojson adds) changes nothing.
	rest := restLines(t, lines, true, true)
	for _, l := range rest {
		if !strings.Contains(l, `"event"`) || !strings.Contains(l, `"revision"`) {
			continue
		}
		var compact, spaced entry
		parseLine([]byte(l), "t0", &compact)
		sl := strings.NewReplacer(`":`, `" : `, `,"`, `, "`, `{`, `{ `, `}`, ` }`).Replace(l)
		parseLine([]byte(sl), "t0", &spaced)
		if compact.err != nil || compact.kind != 'e' || !compact.hasHash || spaced.err != nil || spaced.kind != 'e' ||
			compact.leaf != spaced.leaf || compact.hash != spaced.hash || compact.rev != spaced.rev || compact.pos != spaced.pos {
			t.Fatalf("compact %+v\nspaced %+v\n%s", compact, spaced, sl)
		}
	}
}

// TestExportErrorLineFails: a stream that failed part-way ends with {"error":<google.rpc.Status>}.
// The lines before it can be a shorter history that verifies on its own (here: up to a checkpoint),
// so the error line makes the verification fail, wherever it is, naming the status's code and
// message, in the bare form and in the {"result":...} form of earlier exports.
func TestExportErrorLineFails(t *testing.T) {
	lines, pub := smallExport(t, 30, 10, ciActor)
	for _, form := range []struct {
		name   string
		result bool
	}{{"bare", false}, {"result", true}} {
		t.Run(form.name, func(t *testing.T) {
			rest := restLines(t, lines, form.result, true)
			cut := -1 // the line of the second checkpoint: the export up to it verifies
			for i, l := range rest {
				if strings.Contains(l, `"checkpoint"`) && cut < 0 && strings.Contains(l, "\\n20\\n") {
					cut = i
				}
			}
			if cut < 0 {
				t.Fatalf("no checkpoint at size 20:\n%s", strings.Join(rest, "\n"))
			}
			prefix := append([]string(nil), rest[:cut+1]...)
			if r := verifyExportLines(prefix, pub); !r.Valid || r.Checked != 20 {
				t.Fatalf("the part before the error: %+v", r)
			}
			const errLine = `{"error":{"code":14,"message":"server shutting down","details":[]}}`
			for name, ls := range map[string][]string{
				"last":             append(append([]string(nil), prefix...), errLine),
				"spaced":           append(append([]string(nil), prefix...), `{ "error" : { "code" : 14, "message" : "server shutting down" } }`),
				"first":            {errLine},
				"before the rest":  append(append(append([]string(nil), prefix...), errLine), rest[cut+1:]...),
				"after the tenant": {rest[0], errLine},
			} {
				r := verifyExportLines(ls, pub)
				want := fmt.Sprintf("line %d: the export stream ended with an error, so the export is incomplete (export it again): Unavailable (code 14): server shutting down", slices.Index(ls, strings.TrimSpace(ls[len(ls)-1]))+1)
				if name == "before the rest" {
					want = fmt.Sprintf("line %d: the export stream ended with an error", cut+2)
				}
				if r.Valid || !strings.Contains(r.Problem, want) {
					t.Errorf("error line %s: %+v\nwant %q", name, r, want)
				}
			}
			// What is not a google.rpc.Status is shown as it is.
			r := verifyExportLines(append(append([]string(nil), prefix...), `{"error":"gone"}`), pub)
			if r.Valid || !strings.Contains(r.Problem, `export it again): "gone"`) {
				t.Errorf("error line without a status: %+v", r)
			}
		})
	}
}

// BenchmarkVerifyExportREST1M is BenchmarkVerifyExport1M over the export as guestlist audit export
// wrote it before the REST export sent bare lines: the compact grpc-gateway stream of ExportEvents,
// one {"result":...} line per message.
func BenchmarkVerifyExportREST1M(b *testing.B) { benchVerifyConverted(b, true) }

// BenchmarkVerifyExportBare1M is BenchmarkVerifyExport1M over the export as the REST export sends it
// and guestlist audit export writes it: one ExportEventsResponse a line in compact protojson.
func BenchmarkVerifyExportBare1M(b *testing.B) { benchVerifyConverted(b, false) }

// benchVerifyConverted verifies an export of 1,000,000 events whose lines restLines converted
// (wrapped in {"result":...} when result is set).
func benchVerifyConverted(b *testing.B, result bool) {
	const n = 1_000_000
	dir := b.TempDir()
	src, pub := writeBenchExport(b, dir, n)
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "rest.ndjson")
	out, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(out)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		for _, l := range restLines(b, []string{sc.Text()}, result, true) {
			w.WriteString(l + "\n")
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	in.Close()
	out.Close()
	// The source is no longer needed: two 1,000,000-event exports need not share the disk.
	_ = os.Remove(src)
	st, _ := os.Stat(path)
	b.SetBytes(st.Size())
	b.ResetTimer()
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		r := VerifyExport(f, pub)
		f.Close()
		if !r.Valid || r.Checked != n {
			b.Fatalf("%+v", r)
		}
	}
}
