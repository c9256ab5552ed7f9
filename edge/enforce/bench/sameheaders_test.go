//go:build linux

package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestSameHeaders(t *testing.T) {
	client := request("h0000000.bench.example.com", true)
	tests := []struct {
		name    string
		head    string
		client  string // request(...) when empty
		want    []staticHeader
		wantErr string
	}{
		{
			name: "ok/the edge's head",
			head: "GET /ping HTTP/1.1\r\nHost: h0000000.bench.example.com\r\nUser-Agent: guestlist-bench\r\n" +
				"X-Forwarded-For: 127.0.0.1\r\nX-Client-Cert-Verified: true\r\nClient-Cert: :MIIB+/A=:\r\n" +
				"X-Client-Cert-Subject: CN=bench-device,OU=devices\r\n\r\n",
			want: []staticHeader{
				{"Host", "h0000000.bench.example.com"},
				{"X-Forwarded-For", "127.0.0.1"},
				{"X-Client-Cert-Verified", "true"},
				{"Client-Cert", ":MIIB+/A=:"},
				{"X-Client-Cert-Subject", "CN=bench-device,OU=devices"},
			},
		},
		{
			name: "ok/connection and the client's own headers left to nginx",
			head: "GET /ping HTTP/1.1\r\nhost: a.example\r\nConnection: keep-alive\r\nuser-agent: guestlist-bench\r\nX-Guestlist-Decision: allow\r\n\r\n",
			want: []staticHeader{{"host", "a.example"}, {"X-Guestlist-Decision", "allow"}},
		},
		{
			// PRODUCT.md: the edge replaces a client's line of these names; nginx must set the
			// edge's value, not pass the client's on.
			name:   "ok/a line the client sent with another value is set",
			client: "GET /ping HTTP/1.1\r\nHost: a.example\r\nUser-Agent: guestlist-bench\r\nX-Client-Cert-Subject: CN=forged\r\n\r\n",
			head:   "GET /ping HTTP/1.1\r\nHost: a.example\r\nUser-Agent: guestlist-bench\r\nX-Client-Cert-Subject: CN=bench-device\r\n\r\n",
			want:   []staticHeader{{"Host", "a.example"}, {"X-Client-Cert-Subject", "CN=bench-device"}},
		},
		{
			name:    "fail/a line of the client the edge did not forward",
			client:  "GET /ping HTTP/1.1\r\nHost: a.example\r\nUser-Agent: guestlist-bench\r\nX-Client-Cert-Subject: CN=forged\r\n\r\n",
			head:    "GET /ping HTTP/1.1\r\nHost: a.example\r\nUser-Agent: guestlist-bench\r\n\r\n",
			wantErr: "did not forward the client's header X-Client-Cert-Subject",
		},
		{
			name:    "fail/an empty value, which nginx would not send",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nUser-Agent: guestlist-bench\r\nX-Client-Cert-Issuer:\r\n\r\n",
			wantErr: "X-Client-Cert-Issuer is empty",
		},
		{
			name:    "fail/a name that would end the directive",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nUser-Agent: guestlist-bench\r\nX-A;return 200 x;#: v\r\n\r\n",
			wantErr: "header name",
		},
		{
			name:    "fail/a name with a space",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nUser-Agent: guestlist-bench\r\nX A: v\r\n\r\n",
			wantErr: "header name",
		},
		{
			name:    "fail/a value nginx would read as a variable",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nX-Client-Cert-Subject: CN=$host\r\n\r\n",
			wantErr: "X-Client-Cert-Subject",
		},
		{
			name:    "fail/a quote",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nX-Client-Cert-Subject: CN=\"x\"\r\n\r\n",
			wantErr: "cannot be written",
		},
		{
			name:    "fail/a backslash",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nX-Client-Cert-Subject: CN=a\\\\,b\r\n\r\n",
			wantErr: "cannot be written",
		},
		{
			name:    "fail/a control character",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nX-Client-Cert-Subject: CN=a\tb\r\n\r\n",
			wantErr: "cannot be written",
		},
		{
			name:    "fail/not a header line",
			head:    "GET / HTTP/1.1\r\nHost: a.example\r\nno colon\r\n\r\n",
			wantErr: "is not a header",
		},
		{
			name:    "fail/nothing to set",
			head:    "GET / HTTP/1.1\r\nUser-Agent: guestlist-bench\r\n\r\n",
			wantErr: "no header to set",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := client
			if tt.client != "" {
				c = []byte(tt.client)
			}
			got, err := sameHeaders([]byte(tt.head), c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("sameHeaders = %v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("sameHeaders = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestNginxConfSetsStaticHeaders: the fixed header lines are written into the location that
// proxies, each as one quoted proxy_set_header, and only when given.
func TestNginxConfSetsStaticHeaders(t *testing.T) {
	render := func(static []staticHeader) string {
		var b strings.Builder
		err := nginxConf.Execute(&b, map[string]any{
			"Workers": 2, "Dir": "/d", "Origin": "127.0.0.1:1", "Listen": "127.0.0.1:2", "ServerName": "a.example",
			"Headers": false, "Static": static, "Reuseport": false, "UpstreamIdle": 64,
			"Cert": "c", "Key": "k", "ClientCA": "ca",
		})
		if err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	conf := render([]staticHeader{{"Host", "a.example"}, {"Client-Cert", ":MIIB+/A=:"}})
	for _, want := range []string{
		"proxy_set_header Host \"a.example\";\n",
		"proxy_set_header Client-Cert \":MIIB+/A=:\";\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("configuration lacks %q:\n%s", want, conf)
		}
	}
	if i, j := strings.Index(conf, "proxy_pass"), strings.Index(conf, "proxy_set_header Host"); j < i {
		t.Errorf("the headers are set before proxy_pass's location:\n%s", conf)
	}
	if conf := render(nil); strings.Contains(conf, "proxy_set_header Host") {
		t.Errorf("headers set without -nginx-same-headers:\n%s", conf)
	}
}
