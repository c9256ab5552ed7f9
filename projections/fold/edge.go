package fold

import (
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// HostnameConfig returns the edge configuration of one of t's hostnames: the hostname with the
// CAs it trusts, their revocations and its policy. It returns nil when t has no such hostname.
// version is recorded as the configuration's version.
func HostnameConfig(t *Tenant, name string, version uint64) *configv1.HostnameConfig {
	h, ok := t.Hostnames[name]
	if !ok {
		return nil
	}
	out := &configv1.HostnameConfig{
		Hostname:          h.Name,
		TenantId:          t.ID,
		Active:            h.State == eventsv1.HostnameState_HOSTNAME_STATE_ACTIVE,
		OriginUrl:         h.OriginURL,
		Mode:              configv1.MtlsMode(h.Mode),
		RejectInHandshake: h.RejectInHandshake,
		Version:           version,
	}
	for _, id := range h.CertificateAuthorityIDs {
		ca, ok := t.CAs[id]
		if !ok {
			continue // cannot happen for histories the control plane writes; fail closed if it does
		}
		out.CertificateAuthorities = append(out.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: id, CertificateDer: ca.DER})
	}
	for i, ca := range h.CertificateAuthorityIDs {
		if slices.Contains(h.CertificateAuthorityIDs[:i], ca) {
			continue // named twice: its revocations are in once
		}
		for id, r := range t.RevocationsUnder(ca) {
			out.Revocations = append(out.Revocations, &configv1.Revocation{CertificateAuthorityId: ca, RevocationId: id, SerialNumber: r.SerialNumber, FingerprintSha256: r.FingerprintSHA256})
		}
	}
	slices.SortFunc(out.Revocations, func(a, b *configv1.Revocation) int {
		if c := strings.Compare(a.GetCertificateAuthorityId(), b.GetCertificateAuthorityId()); c != 0 {
			return c
		}
		return strings.Compare(a.GetRevocationId(), b.GetRevocationId())
	})
	if p, ok := t.Policies[h.PolicyID]; ok && h.PolicyID != "" {
		out.Policy = &configv1.Policy{PolicyId: p.ID}
		for _, r := range p.Rules {
			out.Policy.Rules = append(out.Policy.Rules, &configv1.Rule{Name: r.Name, Action: configv1.Action(r.Action), Expression: r.Expression})
		}
	}
	return out
}

// AffectedHostnames returns the hostnames of t whose edge configuration ev may change, evaluated on
// the state before ev is applied (so removals are still visible). Hostnames that ev adds are
// included too. The hostnames of a CA or a policy are read from t's index when it keeps one
// (Tenant.Index), from every hostname otherwise.
func AffectedHostnames(t *Tenant, ev Event) []string {
	byCA := func(ca string) []string {
		if t.hostsByCA != nil {
			return slices.Collect(maps.Keys(t.hostsByCA[ca]))
		}
		var out []string
		for _, h := range t.Hostnames {
			if slices.Contains(h.CertificateAuthorityIDs, ca) {
				out = append(out, h.Name)
			}
		}
		return out
	}
	switch ev.Type {
	case TypeHostnameCreated:
		var m eventsv1.HostnameCreated
		if proto.Unmarshal(ev.Data, &m) == nil {
			return []string{m.GetHostname()}
		}
	case TypeHostnameUpdated:
		var m eventsv1.HostnameUpdated
		if proto.Unmarshal(ev.Data, &m) == nil {
			return []string{m.GetHostname()}
		}
	case TypeHostnameDeleted:
		var m eventsv1.HostnameDeleted
		if proto.Unmarshal(ev.Data, &m) == nil {
			return []string{m.GetHostname()}
		}
	case TypeCertificateAuthorityAdded:
		var m eventsv1.CertificateAuthorityAdded
		if proto.Unmarshal(ev.Data, &m) == nil {
			return byCA(m.GetCertificateAuthorityId())
		}
	case TypeCertificateAuthorityRemoved:
		var m eventsv1.CertificateAuthorityRemoved
		if proto.Unmarshal(ev.Data, &m) == nil {
			return byCA(m.GetCertificateAuthorityId())
		}
	case TypeRevocationAdded:
		var m eventsv1.RevocationAdded
		if proto.Unmarshal(ev.Data, &m) == nil {
			return byCA(m.GetCertificateAuthorityId())
		}
	case TypeRevocationRemoved:
		var m eventsv1.RevocationRemoved
		if proto.Unmarshal(ev.Data, &m) == nil {
			return byCA(m.GetCertificateAuthorityId())
		}
	case TypePolicyUpdated, TypePolicyDeleted:
		var id string
		if ev.Type == TypePolicyUpdated {
			var m eventsv1.PolicyUpdated
			if proto.Unmarshal(ev.Data, &m) != nil {
				return nil
			}
			id = m.GetPolicyId()
		} else {
			var m eventsv1.PolicyDeleted
			if proto.Unmarshal(ev.Data, &m) != nil {
				return nil
			}
			id = m.GetPolicyId()
		}
		if t.hostsByPolicy != nil {
			return slices.Collect(maps.Keys(t.hostsByPolicy[id]))
		}
		var out []string
		for _, h := range t.Hostnames {
			if h.PolicyID == id {
				out = append(out, h.Name)
			}
		}
		return out
	}
	return nil
}
