package echo

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestEcho(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, ln) }()

	req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/a%2Fb/c?x=1&y=%20", strings.NewReader("hello"))
	req.Host = "pay.example.com"
	req.Header.Add("X-Multi", "1")
	req.Header.Add("X-Multi", "2")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var got Response
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Method != "POST" || got.Path != "/a%2Fb/c?x=1&y=%20" || got.Host != "pay.example.com" || got.BodyBytes != 5 {
		t.Errorf("got %+v", got)
	}
	if v := got.Headers["X-Multi"]; len(v) != 2 || v[0] != "1" || v[1] != "2" {
		t.Errorf("X-Multi %v", v)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no shutdown")
	}
}

func TestServeBadAddr(t *testing.T) {
	if err := Serve(context.Background(), "256.0.0.1:x"); err == nil {
		t.Fatal("no error")
	}
}
