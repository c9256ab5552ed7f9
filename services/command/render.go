package command

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
)

func etag(rev uint64) string { return strconv.FormatUint(rev, 10) }

func renderTenant(st *fold.Tenant) *guestlistv1.Tenant {
	return &guestlistv1.Tenant{TenantId: st.ID, DisplayName: st.DisplayName, CreateTime: timestamppb.New(st.CreateTime), State: guestlistv1.Tenant_STATE_ACTIVE}
}

func renderToken(t *fold.Token) *guestlistv1.Token {
	return &guestlistv1.Token{TokenId: t.ID, DisplayName: t.DisplayName, Role: guestlistv1.Role(t.Role), CreateTime: timestamppb.New(t.CreateTime)}
}

func renderCA(ca *fold.CertificateAuthority) *guestlistv1.CertificateAuthority {
	out := &guestlistv1.CertificateAuthority{
		CertificateAuthorityId: ca.ID,
		DisplayName:            ca.DisplayName,
		CertificatePem:         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.DER})),
		FingerprintSha256:      ca.FingerprintSHA256,
		Etag:                   etag(ca.Revision),
		CreateTime:             timestamppb.New(ca.CreateTime),
	}
	if c, err := x509.ParseCertificate(ca.DER); err == nil {
		out.Subject = c.Subject.String()
		out.NotBefore = timestamppb.New(c.NotBefore)
		out.NotAfter = timestamppb.New(c.NotAfter)
	}
	return out
}

func renderRevocation(r *fold.Revocation) *guestlistv1.Revocation {
	out := &guestlistv1.Revocation{RevocationId: r.ID, Reason: r.Reason, CreateTime: timestamppb.New(r.CreateTime)}
	if r.SerialNumber != "" {
		out.Target = &guestlistv1.Revocation_SerialNumber{SerialNumber: r.SerialNumber}
	} else {
		out.Target = &guestlistv1.Revocation_FingerprintSha256{FingerprintSha256: r.FingerprintSHA256}
	}
	return out
}

func renderPolicy(p *fold.Policy) *guestlistv1.Policy {
	out := &guestlistv1.Policy{PolicyId: p.ID, DisplayName: p.DisplayName, Etag: etag(p.Revision), CreateTime: timestamppb.New(p.CreateTime), UpdateTime: timestamppb.New(p.UpdateTime)}
	for _, r := range p.Rules {
		out.Rules = append(out.Rules, &guestlistv1.Rule{Name: r.Name, Action: guestlistv1.Action(r.Action), Expression: r.Expression})
	}
	return out
}

func renderHostname(h *fold.Hostname) *guestlistv1.Hostname {
	return &guestlistv1.Hostname{
		Hostname:  h.Name,
		OriginUrl: h.OriginURL,
		Mtls: &guestlistv1.MtlsSettings{
			Mode:                    guestlistv1.MtlsMode(h.Mode),
			CertificateAuthorityIds: slices.Clone(h.CertificateAuthorityIDs),
			RejectInHandshake:       h.RejectInHandshake,
		},
		PolicyId:   h.PolicyID,
		State:      hostnameState(h.State),
		Etag:       etag(h.Revision),
		CreateTime: timestamppb.New(h.CreateTime),
		UpdateTime: timestamppb.New(h.UpdateTime),
	}
}

func hostnameState(s eventsv1.HostnameState) guestlistv1.Hostname_State {
	switch s {
	case eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE:
		return guestlistv1.Hostname_STATE_ACTIVE
	case eventsv1.HostnameState_HOSTNAME_STATE_PENDING:
		return guestlistv1.Hostname_STATE_PENDING
	}
	return guestlistv1.Hostname_STATE_UNSPECIFIED
}

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
