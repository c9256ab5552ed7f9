package ledger

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"guestlist.dev/projections/fold"
	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
)

// history runs a ledger over a generated history and returns tenant t0's events and checkpoints.
func history(t *testing.T) (*env, []eventstore.RecordedEvent, []SignedCheckpoint) {
	t.Helper()
	e := newEnv(t)
	e.start(WithCheckpointEvery(20, time.Hour))
	sizes := e.generate(7, 200)
	e.waitCheckpointed(sizes)
	evs, err := e.store.ReadStream(context.Background(), fold.TenantStream("t0"), eventstore.Forwards, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	cps, err := e.ledger.Checkpoints("t0")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) < 50 || len(cps) < 3 {
		t.Fatalf("history too small: %d events, %d checkpoints", len(evs), len(cps))
	}
	return e, evs, cps
}

// exportLine is a line of WriteExport, as the tests read it.
type exportLine struct {
	Tenant     *string      `json:"tenant,omitempty"`
	Event      *exportEvent `json:"event,omitempty"`
	Checkpoint *string      `json:"checkpoint,omitempty"`
}

// decodeData decodes an event's data: base64, or an Any holding it.
func decodeData(raw json.RawMessage) ([]byte, error) {
	var s string
	if len(raw) > 0 && raw[0] == '{' {
		var a struct {
			Value string `json:"value"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		s = a.Value
	} else if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(s)
}

func exportLines(t *testing.T, evs []eventstore.RecordedEvent, cps []SignedCheckpoint) []string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteExport(&b, "t0", evs, cps); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
}

func verifyLines(pubLines []string, e *env) Result {
	return VerifyExport(strings.NewReader(strings.Join(pubLines, "\n")+"\n"), e.signer.PublicKey())
}

// findEventLine returns the index of the line of the event at revision rev.
func findEventLine(t *testing.T, lines []string, rev uint64) int {
	t.Helper()
	for i, l := range lines {
		var x struct {
			Event *exportEvent `json:"event"`
		}
		if json.Unmarshal([]byte(l), &x) == nil && x.Event != nil && uint64(x.Event.Revision) == rev {
			return i
		}
	}
	t.Fatalf("no line for revision %d", rev)
	return 0
}

func editEvent(t *testing.T, line string, f func(ev *exportEvent)) string {
	t.Helper()
	var x exportLine
	if err := json.Unmarshal([]byte(line), &x); err != nil || x.Event == nil {
		t.Fatalf("not an event line: %s", line)
	}
	f(x.Event)
	b, err := json.Marshal(eventLine{x.Event})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func flipData(t *testing.T) func(ev *exportEvent) {
	return func(ev *exportEvent) {
		var s string
		_ = json.Unmarshal(ev.Data, &s)
		d, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(d) == 0 {
			t.Fatalf("data %q: %v", s, err)
		}
		d[len(d)/2] ^= 1
		ev.Data, _ = json.Marshal(d)
	}
}

func TestExportTamper(t *testing.T) {
	e, evs, cps := history(t)
	lines := exportLines(t, evs, cps)
	if r := verifyLines(lines, e); !r.Valid || r.Checked != uint64(len(evs)) {
		t.Fatalf("intact export: %+v", r)
	}
	k := uint64(len(evs) / 2)
	posOf := func(rev uint64) uint64 { return uint64(evs[rev].Position) }
	cpLine := -1
	for i, l := range lines {
		if strings.HasPrefix(l, `{"checkpoint"`) {
			cpLine = i
		}
	}
	cpAt, _ := ParseCheckpoint(cps[len(cps)-1])
	other, _ := LoadOrCreateKey(t.TempDir())

	cases := []struct {
		name    string
		edit    func(ls []string) []string
		wantPos uint64
	}{
		{"change a data byte", func(ls []string) []string {
			i := findEventLine(t, ls, k)
			ls[i] = editEvent(t, ls[i], flipData(t))
			return ls
		}, posOf(k)},
		{"change the time by 1ns", func(ls []string) []string {
			i := findEventLine(t, ls, k)
			ls[i] = editEvent(t, ls[i], func(ev *exportEvent) {
				tm, _ := time.Parse(time.RFC3339Nano, ev.Time)
				ev.Time = tm.Add(time.Nanosecond).Format(time.RFC3339Nano)
			})
			return ls
		}, posOf(k)},
		{"change the actor", func(ls []string) []string {
			i := findEventLine(t, ls, k)
			ls[i] = editEvent(t, ls[i], func(ev *exportEvent) { ev.Actor = "mallory" })
			return ls
		}, posOf(k)},
		{"drop a line", func(ls []string) []string {
			i := findEventLine(t, ls, k)
			return append(ls[:i:i], ls[i+1:]...)
		}, posOf(k + 1)},
		{"insert a line", func(ls []string) []string {
			i := findEventLine(t, ls, k)
			forged := editEvent(t, ls[i], flipData(t))
			return append(ls[:i:i], append([]string{forged}, ls[i:]...)...)
		}, posOf(k)},
		{"insert a copy", func(ls []string) []string {
			i := findEventLine(t, ls, k)
			return append(ls[:i+1:i+1], append([]string{ls[i]}, ls[i+1:]...)...)
		}, posOf(k)},
		{"swap two lines", func(ls []string) []string {
			i, j := findEventLine(t, ls, k), findEventLine(t, ls, k+1)
			ls[i], ls[j] = ls[j], ls[i]
			return ls
		}, posOf(k + 1)},
		{"change a checkpoint's root", func(ls []string) []string {
			var x exportLine
			_ = json.Unmarshal([]byte(ls[cpLine]), &x)
			parts := strings.Split(*x.Checkpoint, "\n")
			parts[2] = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
			s := strings.Join(parts, "\n")
			b, _ := json.Marshal(checkpointLine{s})
			ls[cpLine] = string(b)
			return ls
		}, posOf(cpAt.Size - 1)},
		{"forge a checkpoint signature", func(ls []string) []string {
			cp := cpAt
			cp.Size = uint64(len(evs)) // claims a different key signed the latest state
			s := string(other.Sign(cp))
			b, _ := json.Marshal(checkpointLine{s})
			ls[cpLine] = string(b)
			return ls
		}, posOf(cpAt.Size - 1)},
		{"rewrite history with consistent hashes", func([]string) []string {
			changed := append([]eventstore.RecordedEvent(nil), evs...)
			d := append([]byte(nil), changed[k].Data...)
			d[0] ^= 0x80
			changed[k].Data = d
			return exportLines(t, changed, cps)
		}, 0}, // checked below: the first event after the last good checkpoint
		{"keep only the tenant line", func(ls []string) []string {
			return ls[:1]
		}, 0},
		{"drop the tail", func(ls []string) []string {
			i := findEventLine(t, ls, cpAt.Size-1)
			var out []string
			for j, l := range ls {
				if j < i || strings.HasPrefix(l, `{"checkpoint"`) {
					out = append(out, l)
				}
			}
			return out
		}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ls := c.edit(append([]string(nil), lines...))
			r := verifyLines(ls, e)
			t.Logf("%+v", r)
			if r.Valid || r.Problem == "" {
				t.Fatalf("not detected: %+v", r)
			}
			want := c.wantPos
			if c.name == "rewrite history with consistent hashes" {
				// The last checkpoint at or before k matches; the one after it does not.
				var good uint64
				for _, s := range cps {
					cp, _ := ParseCheckpoint(s)
					if cp.Size <= k {
						good = cp.Size
					}
				}
				want = posOf(good)
			}
			if r.FirstBadPosition != want {
				t.Fatalf("first bad position %d, want %d (%s)", r.FirstBadPosition, want, r.Problem)
			}
		})
	}
}

func TestExportForms(t *testing.T) {
	e, evs, cps := history(t)
	lines := exportLines(t, evs, cps)
	// Events beyond the last checkpoint are refused: nothing signed vouches for them.
	trimmed := lines[:len(lines)-1]
	if strings.HasPrefix(lines[len(lines)-1], `{"checkpoint"`) {
		if r := verifyLines(trimmed, e); r.Valid || r.FirstBadPosition == 0 {
			t.Fatalf("without the last checkpoint: %+v", r)
		}
	}
	// And an export without any checkpoint is refused.
	var noCheckpoints []string
	for _, l := range lines {
		if !strings.HasPrefix(l, `{"checkpoint"`) {
			noCheckpoints = append(noCheckpoints, l)
		}
	}
	if r := verifyLines(noCheckpoints, e); r.Valid {
		t.Fatalf("without checkpoints: %+v", r)
	}
	// The REST stream forms: bare events and {"result":...} with the data as an Any, no tenant line.
	var rest []string
	for i, l := range lines[1:] {
		var x exportLine
		_ = json.Unmarshal([]byte(l), &x)
		if x.Event == nil {
			if x.Checkpoint != nil {
				b, _ := json.Marshal(map[string]any{"result": map[string]string{"checkpoint": *x.Checkpoint}})
				rest = append(rest, string(b))
			}
			continue
		}
		if i%2 == 0 {
			b, _ := json.Marshal(x.Event)
			rest = append(rest, string(b))
			continue
		}
		var s string
		_ = json.Unmarshal(x.Event.Data, &s)
		x.Event.Data, _ = json.Marshal(map[string]string{"@type": "type.googleapis.com/google.protobuf.BytesValue", "value": s})
		b, _ := json.Marshal(map[string]any{"result": x.Event})
		rest = append(rest, string(b))
	}
	joined := strings.Join(rest, "\n")
	if r := VerifyExportTenant(strings.NewReader(joined), e.signer.PublicKey(), "t0"); !r.Valid || r.Checked != uint64(len(evs)) {
		t.Fatalf("REST form: %+v", r)
	}
	if r := VerifyExport(strings.NewReader(joined), e.signer.PublicKey()); r.Valid {
		t.Fatalf("REST form without a tenant: %+v", r)
	}
	if r := VerifyExportTenant(strings.NewReader(joined), e.signer.PublicKey(), "t1"); r.Valid || r.FirstBadPosition != uint64(evs[0].Position) {
		t.Fatalf("REST form as another tenant: %+v", r)
	}
	// Data and nanoseconds round-trip exactly.
	var x exportLine
	_ = json.Unmarshal([]byte(lines[findEventLine(t, lines, 3)]), &x)
	d, err := decodeData(x.Event.Data)
	tm, _ := time.Parse(time.RFC3339Nano, x.Event.Time)
	if err != nil || !bytes.Equal(d, evs[3].Data) || !tm.Equal(evs[3].Time) {
		t.Fatalf("round trip: %v %v %v", err, tm, evs[3].Time)
	}
}

func TestStoreTamper(t *testing.T) {
	for _, mode := range []string{"payload byte", "record version"} {
		t.Run(mode, func(t *testing.T) {
			e, evs, _ := history(t)
			pub := e.signer.PublicKey()
			if r := VerifyStore(context.Background(), e.store, e.ledger, pub, "t0"); !r.Valid {
				t.Fatalf("intact store: %+v", r)
			}
			e.stop()
			if err := e.store.Close(); err != nil {
				t.Fatal(err)
			}
			target := evs[len(evs)/3]
			db, err := bolt.Open(e.storePath, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("log"))
				key := binary.BigEndian.AppendUint64(nil, uint64(target.Position))
				rec := append([]byte(nil), b.Get(key)...)
				if mode == "record version" {
					rec[0] = 99
				} else {
					// version, time, revision, id, stream, type, then data.
					off := 1 + 8
					_, n := binary.Uvarint(rec[off:])
					off += n + 16
					for range 2 {
						l, n := binary.Uvarint(rec[off:])
						off += n + int(l)
					}
					l, n := binary.Uvarint(rec[off:])
					off += n
					if int(l) != len(target.Data) || !bytes.Equal(rec[off:off+int(l)], target.Data) {
						t.Fatalf("record layout not as expected")
					}
					rec[off+int(l)/2] ^= 0x01
				}
				return b.Put(key, rec)
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			store, err := boltstore.Open(e.storePath)
			if err != nil {
				t.Fatal(err)
			}
			e.store = store
			r := VerifyStore(context.Background(), store, e.ledger, pub, "t0")
			t.Logf("%+v", r)
			if r.Valid || r.FirstBadPosition != uint64(target.Position) {
				t.Fatalf("got %+v, want the tamper at position %d", r, target.Position)
			}
			for _, tn := range []string{"t1", "t2"} {
				if r := VerifyStore(context.Background(), store, e.ledger, pub, tn); !r.Valid {
					t.Errorf("%s: %+v", tn, r)
				}
			}
		})
	}
}

func TestStoreVerifyWithLedgerBehind(t *testing.T) {
	e := newEnv(t)
	e.start()
	sizes := e.generate(11, 40)
	e.waitCheckpointed(sizes)
	e.stop()
	more := e.generate(12, 40) // not yet in the ledger
	for tn, n := range more {
		if r := VerifyStore(context.Background(), e.store, e.ledger, e.signer.PublicKey(), tn); !r.Valid || r.Checked != n {
			t.Fatalf("%s: %+v", tn, r)
		}
	}
}
