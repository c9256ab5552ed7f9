package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"guestlist.dev/services/api/server"
	"guestlist.dev/services/controlplane"
	"guestlist.dev/services/eventstore/boltstore"
)

const (
	adminToken = "gla_test-admin-token"
	edgeToken  = "gle_test-edge-token"
)

// node is a running control plane on a real bolt file, with real gRPC and HTTP listeners.
type node struct {
	t     testing.TB
	dir   string
	store *boltstore.Store
	base  string // http://127.0.0.1:port
	conn  *grpc.ClientConn
	stop  func()
}

func startNode(t testing.TB, dir string) *node {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return startNodeOn(t, dir, store, true)
}

// startReplica starts another control plane on n's store, as a second API process on a shared
// store would be: its own state, caught up from the store. It does not close the store.
func (n *node) startReplica(t testing.TB) *node {
	t.Helper()
	return startNodeOn(t, n.dir, n.store, false)
}

// startNodeOn starts a control plane on store; stop closes the store when ownStore.
func startNodeOn(t testing.TB, dir string, store *boltstore.Store, ownStore bool) *node {
	t.Helper()
	cp, err := controlplane.New(controlplane.Config{Store: store, AdminToken: adminToken, EdgeToken: edgeToken, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Authenticator: cp.Authenticator(), Services: cp.Services(), Ready: cp.Ready,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, dir: dir, store: store, base: "http://" + srv.HTTPAddr().String(), conn: conn}
	stopped := false
	n.stop = func() {
		if stopped {
			return
		}
		stopped = true
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if !ownStore {
			return
		}
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	}
	t.Cleanup(n.stop)
	n.waitReady()
	return n
}

func (n *node) waitReady() {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(n.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	n.t.Fatal("control plane never became ready")
}

// reply is a REST answer.
type reply struct {
	status int
	body   map[string]any
	raw    string
}

// do sends a REST call with token (none when empty) and a JSON body (none when nil): a string or an
// io.Reader as it is (a reader that is not a *strings.Reader or the like is sent chunked), any other
// value encoded.
func (n *node) do(method, path, token string, body any) reply {
	n.t.Helper()
	var r io.Reader
	if body != nil {
		switch b := body.(type) {
		case string:
			r = strings.NewReader(b)
		case io.Reader:
			r = b
		default:
			buf, err := json.Marshal(b)
			if err != nil {
				n.t.Fatal(err)
			}
			r = bytes.NewReader(buf)
		}
	}
	req, err := http.NewRequest(method, n.base+path, r)
	if err != nil {
		n.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := reply{status: resp.StatusCode, raw: string(raw)}
	_ = json.Unmarshal(raw, &out.body)
	return out
}

// must is do that fails the test unless the status is want.
func (n *node) must(want int, method, path, token string, body any) reply {
	n.t.Helper()
	r := n.do(method, path, token, body)
	if r.status != want {
		n.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.raw)
	}
	return r
}

// fieldViolations returns the BadRequest field names of an error reply.
func fieldViolations(r reply) []string {
	var out []string
	details, _ := r.body["details"].([]any)
	for _, d := range details {
		m, _ := d.(map[string]any)
		fvs, _ := m["fieldViolations"].([]any)
		for _, fv := range fvs {
			f, _ := fv.(map[string]any)
			out = append(out, f["field"].(string))
		}
	}
	return out
}

// tenantWithToken creates a tenant and a tenant-admin token for it.
func (n *node) tenantWithToken(id string) string {
	n.t.Helper()
	n.must(200, "POST", "/v1/tenants?tenantId="+id, adminToken, map[string]any{"displayName": id})
	tok := n.must(200, "POST", "/v1/tenants/"+id+"/tokens", adminToken, map[string]any{"displayName": "ci", "role": "ROLE_TENANT_ADMIN"})
	secret, _ := tok.body["secret"].(string)
	if secret == "" {
		n.t.Fatalf("token create returned no secret: %s", tok.raw)
	}
	return secret
}

// streamRevision returns the revision of a tenant's last event (-1 when none).
func (n *node) streamRevision(tenant string) int64 {
	n.t.Helper()
	evs, err := n.store.ReadStream(context.Background(), "tenant-"+tenant, 1, ^uint64(0), 1)
	if err != nil || len(evs) == 0 {
		return -1
	}
	return int64(evs[0].Revision)
}
