package configset

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"guestlist.dev/edge/decision"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// TestSnapshotReusesNoEntryThatDiffers: a snapshot that repeats a hostname at the same version
// with any one field of its configuration changed (a history replaced by one that reuses the
// version numbers, a control plane that changed the content without the version) gets an entry
// prepared from the new configuration, never the old entry: for every field of the
// configuration and of the messages it holds (the test fails for a field the proto adds until it
// is covered here), for unknown fields at every level, and for lists reordered, shortened or
// lengthened. The hostname's entry then decides as a fresh decision.Prepare of the configuration
// applied would (certificates verified, revoked or refused; the policy's verdict), so that no
// revocation, CA, mode or policy of the old configuration survives. Through Apply and through
// parts (PartPreparer), with enough other hostnames, repeated, that the upserts are prepared on
// several workers.
func TestSnapshotReusesNoEntryThatDiffers(t *testing.T) {
	const name, pos = "pay.example.com", 20
	ca1, ca2, ca3 := pkitest.NewCA(t, "Reuse CA 1"), pkitest.NewCA(t, "Reuse CA 2"), pkitest.NewCA(t, "Reuse CA 3")
	revoked, other, byFP := ca1.Client(t, "revoked"), ca1.Client(t, "other"), ca1.Client(t, "by-fingerprint")
	of2, of3 := ca2.Client(t, "of CA 2"), ca3.Client(t, "of CA 3")
	leaves := []*pkitest.Leaf{revoked, other, byFP, of2, of3}
	serial := func(l *pkitest.Leaf) string { return l.Cert.SerialNumber.Text(16) }
	fp := func(l *pkitest.Leaf) string { s := sha256.Sum256(l.Cert.Raw); return hex.EncodeToString(s[:]) }
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 1)
	base := func() *configv1.HostnameConfig {
		return &configv1.HostnameConfig{
			Hostname: name, TenantId: "acme", Active: true, OriginUrl: "http://127.0.0.1:8081",
			Mode: configv1.MtlsMode_MTLS_MODE_ENFORCE,
			CertificateAuthorities: []*configv1.TrustedCertificateAuthority{
				{CertificateAuthorityId: "root", CertificateDer: ca1.Cert.Raw},
				{CertificateAuthorityId: "backup", CertificateDer: ca2.Cert.Raw},
			},
			Revocations: []*configv1.Revocation{
				{CertificateAuthorityId: "root", RevocationId: "r1", SerialNumber: serial(revoked)},
				{CertificateAuthorityId: "root", RevocationId: "r2", FingerprintSha256: fp(byFP)},
			},
			Policy: &configv1.Policy{PolicyId: "p", Rules: []*configv1.Rule{
				{Name: "verified", Action: configv1.Action_ACTION_ALLOW, Expression: "cert.verified"},
			}},
			Version: 10,
		}
	}
	// Each variant changes one thing of base; field is the full name of the field it changes
	// ("" for a change of no one field).
	variants := []struct {
		field  string
		change func(c *configv1.HostnameConfig)
	}{
		{"guestlist.config.v1.HostnameConfig.tenant_id", func(c *configv1.HostnameConfig) { c.TenantId = "globex" }},
		{"guestlist.config.v1.HostnameConfig.active", func(c *configv1.HostnameConfig) { c.Active = false }},
		{"guestlist.config.v1.HostnameConfig.origin_url", func(c *configv1.HostnameConfig) { c.OriginUrl = "http://127.0.0.1:9999" }},
		{"guestlist.config.v1.HostnameConfig.mode", func(c *configv1.HostnameConfig) { c.Mode = configv1.MtlsMode_MTLS_MODE_REPORT }},
		{"guestlist.config.v1.HostnameConfig.mode", func(c *configv1.HostnameConfig) { c.Mode = configv1.MtlsMode_MTLS_MODE_OFF }},
		{"guestlist.config.v1.HostnameConfig.reject_in_handshake", func(c *configv1.HostnameConfig) { c.RejectInHandshake = true }},
		{"guestlist.config.v1.HostnameConfig.version", func(c *configv1.HostnameConfig) { c.Version = 11 }},
		{"guestlist.config.v1.HostnameConfig.certificate_authorities", func(c *configv1.HostnameConfig) { c.CertificateAuthorities = c.CertificateAuthorities[:1] }},
		{"guestlist.config.v1.HostnameConfig.certificate_authorities", func(c *configv1.HostnameConfig) {
			c.CertificateAuthorities = append(c.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: "third", CertificateDer: ca3.Cert.Raw})
		}},
		{"guestlist.config.v1.HostnameConfig.certificate_authorities", func(c *configv1.HostnameConfig) {
			c.CertificateAuthorities[0], c.CertificateAuthorities[1] = c.CertificateAuthorities[1], c.CertificateAuthorities[0]
		}},
		{"guestlist.config.v1.TrustedCertificateAuthority.certificate_authority_id", func(c *configv1.HostnameConfig) {
			c.CertificateAuthorities[0].CertificateAuthorityId = "root-2" // the revocations filed under "root" no longer apply
		}},
		{"guestlist.config.v1.TrustedCertificateAuthority.certificate_der", func(c *configv1.HostnameConfig) { c.CertificateAuthorities[0].CertificateDer = ca3.Cert.Raw }},
		{"guestlist.config.v1.HostnameConfig.revocations", func(c *configv1.HostnameConfig) { c.Revocations = c.Revocations[1:] }},
		{"guestlist.config.v1.HostnameConfig.revocations", func(c *configv1.HostnameConfig) {
			c.Revocations = append(c.Revocations, &configv1.Revocation{CertificateAuthorityId: "root", RevocationId: "r3", SerialNumber: serial(other)})
		}},
		{"guestlist.config.v1.HostnameConfig.revocations", func(c *configv1.HostnameConfig) {
			c.Revocations[0], c.Revocations[1] = c.Revocations[1], c.Revocations[0]
		}},
		{"guestlist.config.v1.Revocation.certificate_authority_id", func(c *configv1.HostnameConfig) { c.Revocations[0].CertificateAuthorityId = "backup" }},
		{"guestlist.config.v1.Revocation.revocation_id", func(c *configv1.HostnameConfig) { c.Revocations[0].RevocationId = "r9" }},
		{"guestlist.config.v1.Revocation.serial_number", func(c *configv1.HostnameConfig) { c.Revocations[0].SerialNumber = serial(other) }},
		{"guestlist.config.v1.Revocation.fingerprint_sha256", func(c *configv1.HostnameConfig) { c.Revocations[1].FingerprintSha256 = fp(other) }},
		{"guestlist.config.v1.HostnameConfig.policy", func(c *configv1.HostnameConfig) { c.Policy = nil }},
		{"guestlist.config.v1.Policy.policy_id", func(c *configv1.HostnameConfig) { c.Policy.PolicyId = "q" }},
		{"guestlist.config.v1.Policy.rules", func(c *configv1.HostnameConfig) {
			c.Policy.Rules = append([]*configv1.Rule{{Name: "not-other", Action: configv1.Action_ACTION_DENY, Expression: `cert.subject.common_name == "other"`}}, c.Policy.Rules...)
		}},
		{"guestlist.config.v1.Rule.name", func(c *configv1.HostnameConfig) { c.Policy.Rules[0].Name = "verified-2" }},
		{"guestlist.config.v1.Rule.action", func(c *configv1.HostnameConfig) { c.Policy.Rules[0].Action = configv1.Action_ACTION_DENY }},
		{"guestlist.config.v1.Rule.expression", func(c *configv1.HostnameConfig) {
			c.Policy.Rules[0].Expression = `cert.verified && cert.subject.common_name != "other"`
		}},
		{"", func(c *configv1.HostnameConfig) { c.ProtoReflect().SetUnknown(unknown) }},
		{"", func(c *configv1.HostnameConfig) { c.CertificateAuthorities[1].ProtoReflect().SetUnknown(unknown) }},
		{"", func(c *configv1.HostnameConfig) { c.Revocations[0].ProtoReflect().SetUnknown(unknown) }},
		{"", func(c *configv1.HostnameConfig) { c.Policy.ProtoReflect().SetUnknown(unknown) }},
		{"", func(c *configv1.HostnameConfig) { c.Policy.Rules[0].ProtoReflect().SetUnknown(unknown) }},
	}
	// Every field of the configuration, but the hostname (the key), is changed by a variant.
	covered := map[protoreflect.FullName]bool{"guestlist.config.v1.HostnameConfig.hostname": true}
	for _, v := range variants {
		covered[protoreflect.FullName(v.field)] = true
	}
	var walk func(md protoreflect.MessageDescriptor)
	seen := map[protoreflect.FullName]bool{}
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		for i := range md.Fields().Len() {
			f := md.Fields().Get(i)
			if !covered[f.FullName()] {
				t.Errorf("no variant changes %s: add one", f.FullName())
			}
			if f.Message() != nil {
				walk(f.Message())
			}
		}
	}
	walk((&configv1.HostnameConfig{}).ProtoReflect().Descriptor())

	// behaviour describes what h decides for each leaf, alone and with a request.
	now := time.Now()
	behaviour := func(h *decision.Hostname) string {
		var b strings.Builder
		fmt.Fprintf(&b, "mode %v active %v rejects %v;", h.Mode(), h.Active(), h.RejectsInHandshake())
		for _, l := range leaves {
			peer := []*x509.Certificate{l.Cert}
			v := h.VerifyClient(peer, now)
			d := decision.Decide(h, peer, &decision.Request{Method: "GET", Path: "/"}, now)
			fmt.Fprintf(&b, " %s: %s %s %s %q;", l.Cert.Subject.CommonName, v.Reason(), d.Verdict, d.Reason, d.Rule)
		}
		return b.String()
	}
	var fillers []*configv1.HostnameConfig
	for i := range 300 {
		fillers = append(fillers, cfg(t, fmt.Sprintf("f%03d.example.com", i), 10))
	}
	for vi, v := range variants {
		for _, parts := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d %s parts=%v", vi, v.field, parts), func(t *testing.T) {
				st := NewStore()
				if err := st.Apply(snapshot(pos, append(clones(fillers), base())...)); err != nil {
					t.Fatal(err)
				}
				old, _ := st.Load().Lookup(name)
				before := behaviour(old)
				want := base()
				v.change(want)
				if proto.Equal(want, base()) {
					t.Fatal("the variant changes nothing")
				}
				fresh, err := decision.Prepare(proto.CloneOf(want))
				if err != nil {
					t.Fatal(err)
				}
				resp := snapshot(pos, append(clones(fillers), proto.CloneOf(want))...)
				if parts {
					p := st.NewPartPreparer()
					p.Add(resp.Upserts[:150])
					p.Add(resp.Upserts[150:])
					err = st.ApplyPrepared(resp, p.Wait())
				} else {
					err = st.Apply(resp)
				}
				if err != nil {
					t.Fatal(err)
				}
				h, ok := st.Load().Lookup(name)
				switch {
				case !ok:
					t.Fatal("the hostname is gone")
				case h == old:
					t.Fatal("the old entry was kept for a configuration that differs")
				case !proto.Equal(h.Config, want):
					t.Fatalf("the entry's configuration is not the one applied:\n%v\nwant\n%v", h.Config, want)
				}
				if got, fresh := behaviour(h), behaviour(fresh); got != fresh {
					t.Fatalf("the entry decides\n%s\nwhere the configuration applied, prepared, decides\n%s\n(the old one: %s)", got, fresh, before)
				}
				if f, _ := st.Load().Lookup("f000.example.com"); f == nil {
					t.Fatal("a filler is gone")
				}
			})
		}
	}
}

func clones(cfgs []*configv1.HostnameConfig) []*configv1.HostnameConfig {
	out := make([]*configv1.HostnameConfig, len(cfgs))
	for i, c := range cfgs {
		out[i] = proto.CloneOf(c)
	}
	return out
}
