package command

import (
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

const pageTokenPrefix = "p1:"

func encodePageToken(lastKey string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + lastKey))
}

func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !strings.HasPrefix(string(b), pageTokenPrefix) {
		return "", apistatus.InvalidArgument(apistatus.Violation{Field: "page_token", Reason: "not a page token returned by this API"})
	}
	return strings.TrimPrefix(string(b), pageTokenPrefix), nil
}

// page returns the keys of m after the page token, sorted, at most size of them, and the next
// page token.
func page[V any](m map[string]V, token string, size int32) ([]string, string, error) {
	after, err := decodePageToken(token)
	if err != nil {
		return nil, "", err
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if k > after {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	n := pageSize(size)
	if len(keys) > n {
		return keys[:n], encodePageToken(keys[n-1]), nil
	}
	return keys, "", nil
}
