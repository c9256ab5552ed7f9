package decision

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"guestlist.dev/edge/certid"
	"guestlist.dev/edge/pkitest"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// testPKI is a set of CAs and certificates made once per test binary run (key generation is the
// slow part of the tests).
type testPKI struct {
	root, other, inter *pkitest.CA
	// leaf: issued by root, OU devices, DNS SAN device-1.devices.acme.example
	leaf, opsLeaf, interLeaf, otherLeaf, serverLeaf, expired, notYet, forged *pkitest.Leaf
	// expiredInter is an intermediate of root that expired; expiredInterLeaf is issued by it.
	expiredInter     *pkitest.CA
	expiredInterLeaf *pkitest.Leaf
	otherExpired     *pkitest.Leaf
	// twinLeaf is issued by inter with inter's own serial number.
	twinLeaf *pkitest.Leaf
	// Key usages (all with extended key usage clientAuth, issued by root): badKeyUsage has
	// CRLSign|ContentCommitment, keyAgreement has KeyAgreement alone, noKeyUsage has no keyUsage
	// extension.
	badKeyUsage, keyAgreement, noKeyUsage *pkitest.Leaf
	// A cross-certified issuing CA: crossInterR1 and crossInterR2 are two certificates of one CA
	// (same subject and key), signed by the roots crossR1 and crossR2; crossInterR1 expires after
	// crossExpiry, crossInterR2 later. crossLeaf is issued by that CA.
	crossR1, crossR2, crossInterR1, crossInterR2 *pkitest.CA
	crossLeaf                                    *pkitest.Leaf
	// A root renewed with the same key: renewedOld expires after crossExpiry, renewedNew (same
	// subject and key) later. renewedLeaf is issued by that root.
	renewedOld, renewedNew *pkitest.CA
	renewedLeaf            *pkitest.Leaf
	// Three levels: root issued policyCA, which issued deepInter. deepTwin is issued by deepInter
	// with deepInter's own serial number; deepLeaf is another leaf of deepInter.
	policyCA, deepInter *pkitest.CA
	deepTwin, deepLeaf  *pkitest.Leaf
}

// crossExpiry is how long after the test PKI's making crossInterR1 and renewedOld stay valid;
// the certificates issued under them (and the other CAs) outlive them.
const crossExpiry = 10 * 24 * time.Hour

// afterCrossExpiry is a moment, relative to the test PKI's making, when crossInterR1 and
// renewedOld have expired and everything else of the cross-certification and renewal tests is
// valid.
const afterCrossExpiry = 20 * 24 * time.Hour

// recertify returns another certificate of the CA ca (same subject and key), signed by issuer, or
// self-signed when issuer is nil, with a fresh serial number and ca's validity unless opts change
// it.
func recertify(t testing.TB, ca, issuer *pkitest.CA, opts ...pkitest.Options) *pkitest.CA {
	t.Helper()
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("recertify: serial number: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		RawSubject:            ca.Cert.RawSubject,
		NotBefore:             ca.Cert.NotBefore,
		NotAfter:              ca.Cert.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              ca.Cert.KeyUsage,
	}
	for _, o := range opts {
		o(tmpl)
	}
	parent, signer := tmpl, ca.Key
	if issuer != nil {
		parent, signer = issuer.Cert, issuer.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &ca.Key.PublicKey, signer)
	if err != nil {
		t.Fatalf("recertify %q: %v", ca.Cert.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("recertify %q: parse: %v", ca.Cert.Subject.CommonName, err)
	}
	return &pkitest.CA{Cert: cert, Key: ca.Key}
}

func keyUsage(ku x509.KeyUsage) pkitest.Options {
	return func(c *x509.Certificate) { c.KeyUsage = ku }
}

func ou(units ...string) pkitest.Options {
	return func(c *x509.Certificate) { c.Subject.OrganizationalUnit = units }
}

func dns(names ...string) pkitest.Options {
	return func(c *x509.Certificate) { c.DNSNames = names }
}

func uri(s string) pkitest.Options {
	return func(c *x509.Certificate) {
		u, _ := url.Parse(s)
		c.URIs = []*url.URL{u}
	}
}

func serial(n int64) pkitest.Options {
	return func(c *x509.Certificate) { c.SerialNumber = big.NewInt(n) }
}

// selfSignedClient makes a self-signed client certificate (not a CA) with a forged OU.
func selfSignedClient(t testing.TB, cn string, opts ...pkitest.Options) *pkitest.Leaf {
	ca := pkitest.NewCA(t, cn, append([]pkitest.Options{func(c *x509.Certificate) {
		c.IsCA = false
		c.KeyUsage = x509.KeyUsageDigitalSignature
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		c.Subject = pkix.Name{CommonName: cn}
	}}, opts...)...)
	return &pkitest.Leaf{Cert: ca.Cert, Key: ca.Key}
}

var (
	pkiMu sync.Mutex
	pki   *testPKI
)

func getPKI(t testing.TB) *testPKI {
	t.Helper()
	pkiMu.Lock()
	defer pkiMu.Unlock()
	if pki != nil {
		return pki
	}
	now := time.Now()
	p := &testPKI{}
	p.root = pkitest.NewCA(t, "Acme Device CA")
	p.other = pkitest.NewCA(t, "Other CA")
	p.inter = p.root.Intermediate(t, "Acme Issuing CA")
	p.leaf = p.root.Client(t, "device-1", ou("devices"), dns("device-1.devices.acme.example"), uri("spiffe://acme/device-1"), serial(0x1001))
	p.opsLeaf = p.root.Client(t, "alice", ou("ops"), serial(0x1002))
	p.interLeaf = p.inter.Client(t, "device-2", ou("devices"), dns("device-2.blocked.acme.example"), serial(0x2001))
	p.otherLeaf = p.other.Client(t, "intruder", ou("ops"), serial(0x1001))
	p.serverLeaf = p.root.Server(t, []string{"device-3.acme.example"})
	p.expired = p.root.Client(t, "old", pkitest.Validity(now.Add(-48*time.Hour), now.Add(-24*time.Hour)))
	p.notYet = p.root.Client(t, "future", pkitest.Validity(now.Add(24*time.Hour), now.Add(48*time.Hour)))
	p.forged = selfSignedClient(t, "mallory", ou("ops"))
	p.expiredInter = p.root.Intermediate(t, "Old Issuing CA", func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = now.Add(-72*time.Hour), now.Add(-time.Hour)
	})
	p.expiredInterLeaf = p.expiredInter.Client(t, "device-4", pkitest.Validity(now.Add(-48*time.Hour), now.Add(24*time.Hour)))
	p.otherExpired = p.other.Client(t, "old-intruder", pkitest.Validity(now.Add(-48*time.Hour), now.Add(-24*time.Hour)))
	p.twinLeaf = p.inter.Client(t, "device-5", func(c *x509.Certificate) { c.SerialNumber = new(big.Int).Set(p.inter.Cert.SerialNumber) })
	p.badKeyUsage = p.root.Client(t, "bad-key-usage", keyUsage(x509.KeyUsageCRLSign|x509.KeyUsageContentCommitment))
	p.keyAgreement = p.root.Client(t, "key-agreement", keyUsage(x509.KeyUsageKeyAgreement))
	p.noKeyUsage = p.root.Client(t, "no-key-usage", keyUsage(0))
	p.crossR1 = pkitest.NewCA(t, "Cross Root 1")
	p.crossR2 = pkitest.NewCA(t, "Cross Root 2")
	p.crossInterR1 = p.crossR1.Intermediate(t, "Cross Issuing CA", pkitest.Validity(now.Add(-time.Hour), now.Add(crossExpiry)))
	p.crossInterR2 = recertify(t, p.crossInterR1, p.crossR2, pkitest.Validity(now.Add(-time.Hour), now.Add(180*24*time.Hour)))
	p.crossLeaf = p.crossInterR1.Client(t, "device-6", serial(0x3001))
	p.renewedOld = pkitest.NewCA(t, "Renewed CA", pkitest.Validity(now.Add(-time.Hour), now.Add(crossExpiry)))
	p.renewedNew = recertify(t, p.renewedOld, nil, pkitest.Validity(now.Add(-time.Hour), now.Add(2*365*24*time.Hour)))
	p.renewedLeaf = p.renewedOld.Client(t, "device-7", serial(0x4001))
	p.policyCA = p.root.Intermediate(t, "Acme Policy CA")
	p.deepInter = p.policyCA.Intermediate(t, "Acme Deep Issuing CA")
	p.deepTwin = p.deepInter.Client(t, "device-8", func(c *x509.Certificate) { c.SerialNumber = new(big.Int).Set(p.deepInter.Cert.SerialNumber) })
	p.deepLeaf = p.deepInter.Client(t, "device-9", serial(0x5001))
	pki = p
	return p
}

func chain(leaf *pkitest.Leaf, cas ...*pkitest.CA) []*x509.Certificate {
	out := []*x509.Certificate{leaf.Cert}
	for _, ca := range cas {
		out = append(out, ca.Cert)
	}
	return out
}

// hostnameConfig trusts root (id "root") and other (id "other") for pay.example.com, ENFORCE.
func hostnameConfig(p *testPKI) *configv1.HostnameConfig {
	return &configv1.HostnameConfig{
		Hostname:  "pay.example.com",
		TenantId:  "acme",
		Active:    true,
		OriginUrl: "http://127.0.0.1:8081",
		Mode:      configv1.MtlsMode_MTLS_MODE_ENFORCE,
		CertificateAuthorities: []*configv1.TrustedCertificateAuthority{
			{CertificateAuthorityId: "root", CertificateDer: p.root.Cert.Raw},
		},
		Version: 7,
	}
}

func rule(name string, action configv1.Action, expr string) *configv1.Rule {
	return &configv1.Rule{Name: name, Action: action, Expression: expr}
}

const (
	allow = configv1.Action_ACTION_ALLOW
	deny  = configv1.Action_ACTION_DENY
)

func withPolicy(rules ...*configv1.Rule) func(*configv1.HostnameConfig) {
	return func(c *configv1.HostnameConfig) { c.Policy = &configv1.Policy{PolicyId: "p", Rules: rules} }
}

func withMode(m configv1.MtlsMode) func(*configv1.HostnameConfig) {
	return func(c *configv1.HostnameConfig) { c.Mode = m }
}

func withCA(id string, ca *pkitest.CA) func(*configv1.HostnameConfig) {
	return func(c *configv1.HostnameConfig) {
		c.CertificateAuthorities = append(c.CertificateAuthorities, &configv1.TrustedCertificateAuthority{CertificateAuthorityId: id, CertificateDer: ca.Cert.Raw})
	}
}

func revokeSerial(caID string, cert *x509.Certificate) func(*configv1.HostnameConfig) {
	return func(c *configv1.HostnameConfig) {
		c.Revocations = append(c.Revocations, &configv1.Revocation{CertificateAuthorityId: caID, RevocationId: "r" + caID, SerialNumber: certid.SerialNumber(cert.SerialNumber)})
	}
}

func revokeFingerprint(caID string, cert *x509.Certificate) func(*configv1.HostnameConfig) {
	return func(c *configv1.HostnameConfig) {
		c.Revocations = append(c.Revocations, &configv1.Revocation{CertificateAuthorityId: caID, RevocationId: "f" + caID, FingerprintSha256: certid.FingerprintSHA256(cert.Raw)})
	}
}

func get(path string, headers ...string) *Request {
	h := http.Header{}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Add(headers[i], headers[i+1])
	}
	return &Request{Host: "pay.example.com", Method: http.MethodGet, Path: path, Header: h}
}

// sameSubjectCAs makes n CAs of one subject name ("Same Name CA"), each with its own key: self-signed,
// or, when selfSigned is false, each signed by the key of another CA of that name that is not among
// them (so that none is signed by its own key or by another of them).
func sameSubjectCAs(t testing.TB, n int, selfSigned bool) []*pkitest.CA {
	t.Helper()
	var outsider *pkitest.CA
	if !selfSigned {
		outsider = pkitest.NewCA(t, "Same Name CA")
	}
	cas := make([]*pkitest.CA, n)
	for i := range cas {
		cas[i] = pkitest.NewCA(t, "Same Name CA")
		if outsider != nil {
			cas[i] = recertify(t, cas[i], outsider)
		}
	}
	return cas
}

// withCAs trusts cas instead of root, with ids ca-0, ca-1, ..., and revokes a serial under the
// first (so that Prepare links the CAs).
func withCAs(cas []*pkitest.CA) func(*configv1.HostnameConfig) {
	return func(c *configv1.HostnameConfig) {
		c.CertificateAuthorities = nil
		for i, ca := range cas {
			withCA(fmt.Sprintf("ca-%d", i), ca)(c)
		}
		c.Revocations = append(c.Revocations, &configv1.Revocation{CertificateAuthorityId: "ca-0", RevocationId: "r-ca-0", SerialNumber: "1"})
	}
}
