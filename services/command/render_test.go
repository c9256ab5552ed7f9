package command

import (
	"fmt"
	"math/rand/v2"
	"slices"
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
				keys, next, err := page(m, token, size)
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
			_, next, err := page(m, token, 0)
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
