package command

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/pkitest"
	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
)

// TestCheckTrustedCAs: the CAs a hostname references are checked against the edge's rules for a
// hostname's CAs: at most 3 distinct certificates of one subject, and keys CheckCAKey accepts (a
// CA stored before the rule, here put in the state directly, may have another).
func TestCheckTrustedCAs(t *testing.T) {
	st := fold.NewTenant("acme")
	add := func(id string, der []byte) {
		st.CAs[id] = &fold.CertificateAuthority{ID: id, DER: der, FingerprintSHA256: certid.FingerprintSHA256(der)}
	}
	for i, id := range []string{"same-0", "same-1", "same-2", "same-3"} {
		ca := pkitest.NewCA(t, "Same Name CA")
		add(id, ca.Cert.Raw)
		if i == 0 {
			add("same-0-again", ca.Cert.Raw)
		}
	}
	add("other", pkitest.NewCA(t, "Other CA").Cert.Raw)
	// A P-521 CA, as ParseCA accepted before the rule.
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Old P-521 CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p521.PublicKey, p521)
	if err != nil {
		t.Fatal(err)
	}
	add("p521", der)
	add("garbage", []byte("not DER"))

	tests := []struct {
		name  string
		ids   []string
		field string // the violation's field; "" for none
		text  string
	}{
		{name: "ok/3 of one subject", ids: []string{"same-0", "other", "same-1", "same-2"}},
		{name: "ok/3 certificates of one subject under 4 ids", ids: []string{"same-0", "same-0-again", "same-1", "same-2"}},
		{name: "ok/unknown CA (checkReferences reports it)", ids: []string{"nope"}},
		{name: "fail/4 of one subject", ids: []string{"other", "same-3", "same-0", "same-1", "same-2"}, field: "hostname.mtls.certificate_authority_ids",
			text: `certificate authorities "same-3", "same-0", "same-1", "same-2" share the subject "CN=Same Name CA,O=guestlist tests"; a hostname may trust at most 3 certificate authorities of one subject`},
		{name: "fail/P-521 CA stored before the rule", ids: []string{"other", "p521"}, field: "hostname.mtls.certificate_authority_ids[1]",
			text: `certificate authority "p521" has a key the edge does not accept, so it would refuse the hostname: the CA's key is ECDSA on P-521`},
		{name: "fail/unparsable CA", ids: []string{"garbage"}, field: "hostname.mtls.certificate_authority_ids[0]", text: `the certificate of certificate authority "garbage" does not parse`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := checkTrustedCAs(st, "hostname", &eventsv1.MtlsSettings{CertificateAuthorityIds: tc.ids}, caCerts{})
			if tc.field == "" {
				if len(v) != 0 {
					t.Fatalf("violations %+v, want none", v)
				}
				return
			}
			if len(v) != 1 || v[0].Field != tc.field || !strings.Contains(v[0].Reason, tc.text) {
				t.Fatalf("violations %+v, want one on %s containing %q", v, tc.field, tc.text)
			}
		})
	}
}
