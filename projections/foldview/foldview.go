// Package foldview renders the fold's state (package fold) as guestlist.v1 API messages. It is the
// one rendering of a tenant's configuration: the command service answers reads with it and the
// audit service renders historical snapshots with it, so both show a resource the same way.
package foldview

import (
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// Etag returns the etag of a resource last changed at stream revision rev.
func Etag(rev uint64) string { return strconv.FormatUint(rev, 10) }

// Tenant renders the tenant itself.
func Tenant(st *fold.Tenant) *guestlistv1.Tenant {
	return &guestlistv1.Tenant{TenantId: st.ID, DisplayName: st.DisplayName, CreateTime: timestamppb.New(st.CreateTime), State: guestlistv1.Tenant_STATE_ACTIVE}
}

// Token renders a token, without its secret (only the secret's hash is ever stored).
func Token(t *fold.Token) *guestlistv1.Token {
	return &guestlistv1.Token{TokenId: t.ID, DisplayName: t.DisplayName, Role: guestlistv1.Role(t.Role), CreateTime: timestamppb.New(t.CreateTime)}
}

// CertificateAuthority renders a CA, with the subject and validity read from its certificate.
func CertificateAuthority(ca *fold.CertificateAuthority) *guestlistv1.CertificateAuthority {
	out := &guestlistv1.CertificateAuthority{
		CertificateAuthorityId: ca.ID,
		DisplayName:            ca.DisplayName,
		CertificatePem:         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.DER})),
		FingerprintSha256:      ca.FingerprintSHA256,
		Etag:                   Etag(ca.Revision),
		CreateTime:             timestamppb.New(ca.CreateTime),
	}
	if c, err := x509.ParseCertificate(ca.DER); err == nil {
		out.Subject = c.Subject.String()
		out.NotBefore = timestamppb.New(c.NotBefore)
		out.NotAfter = timestamppb.New(c.NotAfter)
	}
	return out
}

// Revocation renders a revocation (without its CA; see [Snapshot] for revocations with their CA).
func Revocation(r *fold.Revocation) *guestlistv1.Revocation {
	out := &guestlistv1.Revocation{RevocationId: r.ID, Reason: r.Reason, CreateTime: timestamppb.New(r.CreateTime)}
	if r.SerialNumber != "" {
		out.Target = &guestlistv1.Revocation_SerialNumber{SerialNumber: r.SerialNumber}
	} else {
		out.Target = &guestlistv1.Revocation_FingerprintSha256{FingerprintSha256: r.FingerprintSHA256}
	}
	return out
}

// Policy renders a policy with its rules in order.
func Policy(p *fold.Policy) *guestlistv1.Policy {
	out := &guestlistv1.Policy{PolicyId: p.ID, DisplayName: p.DisplayName, Etag: Etag(p.Revision), CreateTime: timestamppb.New(p.CreateTime), UpdateTime: timestamppb.New(p.UpdateTime)}
	for _, r := range p.Rules {
		out.Rules = append(out.Rules, &guestlistv1.Rule{Name: r.Name, Action: guestlistv1.Action(r.Action), Expression: r.Expression})
	}
	return out
}

// Hostname renders a hostname.
func Hostname(h *fold.Hostname) *guestlistv1.Hostname {
	return &guestlistv1.Hostname{
		Hostname:  h.Name,
		OriginUrl: h.OriginURL,
		Mtls: &guestlistv1.MtlsSettings{
			Mode:                    guestlistv1.MtlsMode(h.Mode),
			CertificateAuthorityIds: slices.Clone(h.CertificateAuthorityIDs),
			RejectInHandshake:       h.RejectInHandshake,
		},
		PolicyId:   h.PolicyID,
		State:      HostnameState(h.State),
		Etag:       Etag(h.Revision),
		CreateTime: timestamppb.New(h.CreateTime),
		UpdateTime: timestamppb.New(h.UpdateTime),
	}
}

// HostnameState maps a stored hostname state to the API's.
func HostnameState(s eventsv1.HostnameState) guestlistv1.Hostname_State {
	switch s {
	case eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE:
		return guestlistv1.Hostname_STATE_ACTIVE
	case eventsv1.HostnameState_HOSTNAME_STATE_PENDING:
		return guestlistv1.Hostname_STATE_PENDING
	}
	return guestlistv1.Hostname_STATE_UNSPECIFIED
}

// Snapshot renders everything of st, each list sorted by id (revocations by CA id, then
// revocation id): the tenant (unset when st does not exist yet), tokens without secrets, CAs,
// revocations with their CA, policies and hostnames. Position and Time are st's last event.
func Snapshot(st *fold.Tenant) *guestlistv1.Snapshot {
	out := &guestlistv1.Snapshot{}
	if !st.Exists {
		return out
	}
	out.Position = st.Position
	out.Time = timestamppb.New(st.Time)
	out.Tenant = Tenant(st)
	for _, k := range sortedKeys(st.Tokens) {
		out.Tokens = append(out.Tokens, Token(st.Tokens[k]))
	}
	for _, k := range sortedKeys(st.CAs) {
		out.CertificateAuthorities = append(out.CertificateAuthorities, CertificateAuthority(st.CAs[k]))
	}
	revs := make([]fold.RevocationKey, 0, len(st.Revocations))
	for k := range st.Revocations {
		revs = append(revs, k)
	}
	slices.SortFunc(revs, func(a, b fold.RevocationKey) int {
		if c := strings.Compare(a.CA, b.CA); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	for _, k := range revs {
		out.Revocations = append(out.Revocations, &guestlistv1.SnapshotRevocation{CertificateAuthorityId: k.CA, Revocation: Revocation(st.Revocations[k])})
	}
	for _, k := range sortedKeys(st.Policies) {
		out.Policies = append(out.Policies, Policy(st.Policies[k]))
	}
	for _, k := range sortedKeys(st.Hostnames) {
		out.Hostnames = append(out.Hostnames, Hostname(st.Hostnames[k]))
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
