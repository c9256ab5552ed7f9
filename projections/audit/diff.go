package audit

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"guestlist.dev/projections/foldview"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// Diff lists, readably, how configuration b differs from a: resources added and removed, and
// for resources in both the fields that changed, e.g.
//
//	hostname pay.example.com: origin_url http://a -> http://b
//	certificate authority devices added
//
// Etags and timestamps are left out (they change with every write). The lines come in a fixed
// order: tenant, tokens, CAs, revocations, policies, hostnames, each sorted by id. Nil snapshots
// count as empty. Diff(a, a) is empty.
func Diff(a, b *guestlistv1.Snapshot) []string {
	var out []string
	out = diffKind(out, "tenant", tenantFields(a), tenantFields(b))
	out = diffKind(out, "token", index(a.GetTokens(), func(t *guestlistv1.Token) (string, fields) {
		return t.GetTokenId(), fields{{"display_name", t.GetDisplayName()}, {"role", t.GetRole().String()}}
	}), index(b.GetTokens(), func(t *guestlistv1.Token) (string, fields) {
		return t.GetTokenId(), fields{{"display_name", t.GetDisplayName()}, {"role", t.GetRole().String()}}
	}))
	ca := func(c *guestlistv1.CertificateAuthority) (string, fields) {
		return c.GetCertificateAuthorityId(), fields{{"display_name", c.GetDisplayName()}, {"fingerprint_sha256", c.GetFingerprintSha256()}, {"subject", c.GetSubject()}}
	}
	out = diffKind(out, "certificate authority", index(a.GetCertificateAuthorities(), ca), index(b.GetCertificateAuthorities(), ca))
	rev := func(r *guestlistv1.SnapshotRevocation) (string, fields) {
		return r.GetRevocation().GetRevocationId() + " under certificate authority " + r.GetCertificateAuthorityId(), fields{
			{"serial_number", r.GetRevocation().GetSerialNumber()}, {"fingerprint_sha256", r.GetRevocation().GetFingerprintSha256()}, {"reason", r.GetRevocation().GetReason()},
		}
	}
	out = diffKind(out, "revocation", index(a.GetRevocations(), rev), index(b.GetRevocations(), rev))
	pol := func(p *guestlistv1.Policy) (string, fields) {
		f := fields{{"display_name", p.GetDisplayName()}}
		rules := make([]string, len(p.GetRules()))
		for i, r := range p.GetRules() {
			rules[i] = fmt.Sprintf("%s %s %q", r.GetName(), strings.TrimPrefix(r.GetAction().String(), "ACTION_"), r.GetExpression())
		}
		return p.GetPolicyId(), append(f, field{"rules", "[" + strings.Join(rules, "; ") + "]"})
	}
	out = diffKind(out, "policy", index(a.GetPolicies(), pol), index(b.GetPolicies(), pol))
	host := func(h *guestlistv1.Hostname) (string, fields) {
		return h.GetHostname(), fields{
			{"origin_url", h.GetOriginUrl()},
			{"mtls.mode", strings.TrimPrefix(h.GetMtls().GetMode().String(), "MTLS_MODE_")},
			{"mtls.certificate_authority_ids", "[" + strings.Join(h.GetMtls().GetCertificateAuthorityIds(), ", ") + "]"},
			{"mtls.reject_in_handshake", strconv.FormatBool(h.GetMtls().GetRejectInHandshake())},
			{"policy_id", h.GetPolicyId()},
			{"state", strings.TrimPrefix(h.GetState().String(), "STATE_")},
		}
	}
	out = diffKind(out, "hostname", index(a.GetHostnames(), host), index(b.GetHostnames(), host))
	return out
}

type field struct{ name, value string }

type fields []field

func tenantFields(s *guestlistv1.Snapshot) map[string]fields {
	t := s.GetTenant()
	if t == nil {
		return nil
	}
	return map[string]fields{t.GetTenantId(): {{"display_name", t.GetDisplayName()}, {"state", strings.TrimPrefix(t.GetState().String(), "STATE_")}}}
}

func index[T any](xs []T, f func(T) (string, fields)) map[string]fields {
	out := make(map[string]fields, len(xs))
	for _, x := range xs {
		id, fs := f(x)
		out[id] = fs
	}
	return out
}

// diffKind appends the differences between the resources of one kind, by id.
func diffKind(out []string, kind string, a, b map[string]fields) []string {
	ids := make([]string, 0, len(a)+len(b))
	for id := range a {
		ids = append(ids, id)
	}
	for id := range b {
		if _, ok := a[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		fa, inA := a[id]
		fb, inB := b[id]
		switch {
		case !inA:
			out = append(out, fmt.Sprintf("%s %s added", kind, id))
		case !inB:
			out = append(out, fmt.Sprintf("%s %s removed", kind, id))
		default:
			for i := range fa {
				if fa[i].value != fb[i].value {
					out = append(out, fmt.Sprintf("%s %s: %s %s -> %s", kind, id, fa[i].name, show(fa[i].value), show(fb[i].value)))
				}
			}
		}
	}
	return out
}

// show quotes empty values so a change to or from nothing stays visible, and values that are not
// plain text (foldview.NotPlainText), so that a value can neither forge nor hide a line of the
// diff.
func show(v string) string {
	if v == "" || strings.ContainsFunc(v, foldview.NotPlainText) {
		return strconv.Quote(v)
	}
	return v
}
