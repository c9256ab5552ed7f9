package command

import (
	"container/heap"
	"encoding/base64"
	"slices"
	"strings"

	"guestlist.dev/projections/fold"
	"guestlist.dev/projections/foldview"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
)

func etag(rev uint64) string { return foldview.Etag(rev) }

// The rendering of fold state as API messages is package foldview's, shared with the audit.

func renderTenant(st *fold.Tenant) *guestlistv1.Tenant { return foldview.Tenant(st) }

func renderToken(t *fold.Token) *guestlistv1.Token { return foldview.Token(t) }

func renderCA(ca *fold.CertificateAuthority) *guestlistv1.CertificateAuthority {
	return foldview.CertificateAuthority(ca)
}

func renderRevocation(r *fold.Revocation) *guestlistv1.Revocation { return foldview.Revocation(r) }

func renderPolicy(p *fold.Policy) *guestlistv1.Policy { return foldview.Policy(p) }

func renderHostname(h *fold.Hostname) *guestlistv1.Hostname { return foldview.Hostname(h) }

// Paging: page tokens are the last key of the previous page, so a page never repeats or skips an
// item that existed throughout, whatever was written in between.

const defaultPageSize = 100

func pageSize(n int32) int {
	if n <= 0 {
		return defaultPageSize
	}
	return int(n)
}

// A page token names the list it continues (the kind of resource, the tenant, the CA of
// revocations) and the last key of the page before: "p2:" + list + "\n" + key, base64url. A token
// of another list is refused, so that a token is never read against a list it did not come from.
// "p1:" + key, the tokens of earlier versions, which named no list, are still accepted, so that a
// listing under way across an upgrade goes on.
const (
	pageTokenPrefix       = "p2:"
	legacyPageTokenPrefix = "p1:"
)

// encodePageToken returns the token of the page after lastKey in list.
func encodePageToken(list, lastKey string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + list + "\n" + lastKey))
}

// decodePageToken returns the last key of the page before tok, a token encodePageToken made for
// list ("" for the first page). A token that is not one, or that continues another list, is
// INVALID_ARGUMENT naming page_token.
func decodePageToken(list, tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", apistatus.InvalidArgument(apistatus.Violation{Field: "page_token", Reason: "not a page token returned by this API"})
	}
	if key, ok := strings.CutPrefix(string(b), legacyPageTokenPrefix); ok {
		return key, nil
	}
	rest, ok := strings.CutPrefix(string(b), pageTokenPrefix)
	if !ok {
		return "", apistatus.InvalidArgument(apistatus.Violation{Field: "page_token", Reason: "not a page token returned by this API"})
	}
	from, key, ok := strings.Cut(rest, "\n")
	if !ok {
		return "", apistatus.InvalidArgument(apistatus.Violation{Field: "page_token", Reason: "not a page token returned by this API"})
	}
	if from != list {
		return "", apistatus.InvalidArgument(apistatus.Violation{Field: "page_token", Reason: "a page token of another list; list again without it"})
	}
	return key, nil
}

// page returns the keys of m after the page token of list, sorted, at most size of them, and the
// next page token. It keeps the smallest keys it has seen in a heap of one more than a page (the one
// more tells whether another page follows), so that a page costs O(len(m)·log size), not a sort
// of every key after the token: listing a large tenant page by page holds its read lock that
// much less.
func page[V any](m map[string]V, list, token string, size int32) ([]string, string, error) {
	after, err := decodePageToken(list, token)
	if err != nil {
		return nil, "", err
	}
	n := pageSize(size)
	h := make(keyHeap, 0, min(n+1, len(m)))
	for k := range m {
		switch {
		case k <= after:
		case len(h) <= n:
			heap.Push(&h, k)
		case k < h[0]:
			h[0] = k
			heap.Fix(&h, 0)
		}
	}
	keys := []string(h)
	slices.Sort(keys)
	if len(keys) > n {
		return keys[:n], encodePageToken(list, keys[n-1]), nil
	}
	return keys, "", nil
}

// keyHeap is a max-heap of keys (container/heap).
type keyHeap []string

func (h keyHeap) Len() int           { return len(h) }
func (h keyHeap) Less(i, j int) bool { return h[i] > h[j] }
func (h keyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *keyHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *keyHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
