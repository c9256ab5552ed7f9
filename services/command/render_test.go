package command

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestPageWalksEveryKeyOnce: paging through a map with each page size gives every key once, in
// order, with a next page token exactly when keys remain.
func TestPageWalksEveryKeyOnce(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 7, 100, 101, 1000} {
		m := map[string]int{}
		for len(m) < n {
			m[fmt.Sprintf("k%x", rnd.Uint32())] = len(m)
		}
		want := slices.Sorted(func(yield func(string) bool) {
			for k := range m {
				if !yield(k) {
					return
				}
			}
		})
		for _, size := range []int32{0, 1, 3, 100, 1000} {
			var got []string
			token := ""
			for pages := 0; ; pages++ {
				keys, next, err := page(m, "hostnames/acme", token, size)
				if err != nil {
					t.Fatal(err)
				}
				if len(keys) > pageSize(size) {
					t.Fatalf("n %d, size %d: a page of %d", n, size, len(keys))
				}
				got = append(got, keys...)
				if next == "" {
					break
				}
				if len(keys) != pageSize(size) || pages > n {
					t.Fatalf("n %d, size %d: a short page (%d) with a next page token", n, size, len(keys))
				}
				token = next
			}
			if !slices.Equal(got, want) && (len(got) != 0 || len(want) != 0) {
				t.Fatalf("n %d, size %d: paged %d keys, want %d in order", n, size, len(got), len(want))
			}
		}
	}
}

// BenchmarkPageHostnames100k lists 100,000 keys in pages of the default size (100): what a client
// listing every hostname of a large tenant makes the server do, holding the tenant's read lock
// during each page.
func BenchmarkPageHostnames100k(b *testing.B) {
	m := map[string]struct{}{}
	for i := range 100_000 {
		m[fmt.Sprintf("pay.customer%d.example.com", i)] = struct{}{}
	}
	for b.Loop() {
		token, pages := "", 0
		for {
			_, next, err := page(m, "hostnames/acme", token, 0)
			if err != nil {
				b.Fatal(err)
			}
			pages++
			if token = next; token == "" {
				break
			}
		}
		if pages != 1000 {
			b.Fatalf("%d pages", pages)
		}
	}
}

// TestPageTokenNamesItsList: a page token continues only the list it came from: another kind of
// resource, another tenant's list or another CA's revocations refuse it as INVALID_ARGUMENT naming
// page_token (a new user's review found a hostnames token accepted by the policies list). Tokens of
// earlier versions ("p1:" + key) still continue a listing.
func TestPageTokenNamesItsList(t *testing.T) {
	m := map[string]int{"a": 1, "b": 2, "c": 3}
	_, tok, err := page(m, "hostnames/globex", "", 1)
	if err != nil || tok == "" {
		t.Fatalf("first page: token %q, %v", tok, err)
	}
	for _, tc := range []struct {
		name, list, token string
		want              []string
		wantErr           string
	}{
		{name: "ok/the same list", list: "hostnames/globex", token: tok, want: []string{"b"}},
		{name: "ok/a token of an earlier version", list: "policies/acme", token: base64.RawURLEncoding.EncodeToString([]byte("p1:a")), want: []string{"b"}},
		{name: "fail/another kind of resource", list: "policies/globex", token: tok, wantErr: "another list"},
		{name: "fail/another tenant", list: "hostnames/acme", token: tok, wantErr: "another list"},
		{name: "fail/not base64", list: "hostnames/globex", token: "!!", wantErr: "not a page token"},
		{name: "fail/no list", list: "hostnames/globex", token: base64.RawURLEncoding.EncodeToString([]byte("p2:a")), wantErr: "not a page token"},
		{name: "fail/another prefix", list: "hostnames/globex", token: base64.RawURLEncoding.EncodeToString([]byte("x:a")), wantErr: "not a page token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, _, err := page(m, tc.list, tc.token, 1)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "page_token") {
					t.Fatalf("page = %v, %v; want an error on page_token containing %q", keys, err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(keys, tc.want) {
				t.Fatalf("page = %v, %v; want %v", keys, err, tc.want)
			}
		})
	}
}
