package decision

import (
	"crypto/x509"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"guestlist.dev/edge/certid"
	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// FuzzDecide decides on arbitrary requests with arbitrary certificates: one of the test PKI's
// chains (chosen by pick; the PKI is made anew in each fuzzing process), with random DER (parsed
// when it parses, used unparsed otherwise) as the leaf, as an intermediate or alone, at a moment
// offset from now. Decide must not panic, must be deterministic, must agree with DecideVerified,
// and must never let an unverified certificate's identity reach the policy or the Cert (but a
// revoked one's, whose chain verified: the decision log names it, since 9b33532).
func FuzzDecide(f *testing.F) {
	p := getPKI(f)
	chains := [][]*x509.Certificate{
		nil,
		chain(p.leaf), chain(p.opsLeaf), chain(p.interLeaf, p.inter), chain(p.interLeaf), chain(p.otherLeaf),
		chain(p.serverLeaf), chain(p.expired), chain(p.notYet), chain(p.forged), chain(p.expiredInterLeaf, p.expiredInter),
	}
	cfg := hostnameConfig(p)
	withCA("other", p.other)(cfg)
	revokeSerial("other", p.otherLeaf.Cert)(cfg)
	withPolicy(
		rule("health", allow, `!cert.presented && request.path == "/healthz"`),
		rule("ops", allow, `"ops" in cert.subject.organizational_unit`),
		rule("named", deny, `cert.subject.common_name == "alice" || cert.fingerprint_sha256 == "00" || "x.blocked.acme.example" in cert.dns_names`),
		rule("env", deny, `request.headers[?"x-env"].orValue("") == "prod" && request.method == "DELETE"`),
		rule("hdr", allow, `request.headers["x-key"] == "k" && cert.verified`),
	)(cfg)
	h, err := Prepare(cfg)
	if err != nil {
		f.Fatal(err)
	}
	report := hostnameConfig(p)
	report.Mode = configv1.MtlsMode_MTLS_MODE_REPORT
	hr, err := Prepare(report)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("GET", "/healthz", "X-Env", "prod", uint8(0), []byte(nil), int64(0))
	f.Add("DELETE", "/admin/", "X-Key", "k", uint8(2), []byte(nil), int64(1000))
	f.Add("GET", "/", "x-key", "k", uint8(3), []byte(nil), int64(-3600))
	f.Add("GET", "/", "x-key", "k", uint8(0x40|3), p.leaf.Cert.Raw, int64(0))
	f.Add("GET", "/", "x-key", "k", uint8(0x80|4), p.inter.Cert.Raw, int64(0))
	f.Add("PUT", "/a", "", "", uint8(0xc0), []byte{0x30, 0x00}, int64(1<<40))
	now := time.Now()
	f.Fuzz(func(t *testing.T, method, path, hname, hval string, pick uint8, der []byte, offset int64) {
		at := now.Add(time.Duration(offset) * time.Second)
		hdr := http.Header{}
		if hname != "" {
			hdr.Add(hname, hval)
			hdr[strings.ToLower(hname)] = append(hdr[strings.ToLower(hname)], hval)
		}
		req := &Request{Method: method, Path: path, Header: hdr}
		peer := append([]*x509.Certificate(nil), chains[int(pick&0x3f)%len(chains)]...)
		if der != nil {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				c = &x509.Certificate{Raw: der}
			}
			switch {
			case pick&0xc0 == 0x40 && len(peer) > 0:
				peer[0] = c // random leaf
			case pick&0xc0 == 0x80:
				peer = append(peer, c) // random intermediate
			case pick&0xc0 == 0xc0:
				peer = []*x509.Certificate{c}
			}
		}
		for _, hh := range []*Hostname{h, hr} {
			d := Decide(hh, peer, req, at)
			if d2 := Decide(hh, peer, req, at); !reflect.DeepEqual(d, d2) {
				t.Fatalf("not deterministic: %+v vs %+v", d, d2)
			}
			if d2 := hh.DecideVerified(hh.VerifyClient(peer, now), req, at); !reflect.DeepEqual(d, d2) {
				t.Fatalf("DecideVerified %+v, Decide %+v", d2, d)
			}
			switch d.Verdict {
			case Allow, Deny, ReportDeny:
			default:
				t.Fatalf("verdict %q", d.Verdict)
			}
			if d.Reason == "" {
				t.Fatal("no reason")
			}
			if !d.Cert.Verified {
				switch {
				case d.Chain != nil:
					t.Fatalf("chain of an unverified certificate: %+v", d.Cert)
				case d.Cert.Error == ReasonCertificateRevoked:
					// Its chain verified: the decision log names the revoked leaf, exactly.
					leaf := peer[0]
					if d.Cert.SerialNumber != certid.SerialNumber(leaf.SerialNumber) || d.Cert.Subject != leaf.Subject.String() ||
						d.Cert.Issuer != leaf.Issuer.String() || !d.Cert.NotAfter.Equal(leaf.NotAfter) {
						t.Fatalf("identity of a revoked certificate: %+v, not its leaf's", d.Cert)
					}
				case d.Cert.Subject != "" || d.Cert.Issuer != "" || d.Cert.SerialNumber != "" || !d.Cert.NotAfter.IsZero():
					t.Fatalf("identity of an unverified certificate: %+v", d.Cert)
				}
				if d.Rule == "ops" || d.Rule == "named" || d.Rule == "hdr" {
					t.Fatalf("rule %q matched an unverified certificate", d.Rule)
				}
			}
			if d.Cert.Verified && (len(d.Chain) == 0 || d.Chain[0] != peer[0]) {
				t.Fatalf("verified without a chain from the leaf: %+v", d)
			}
			if hh == hr && d.Verdict == Deny {
				t.Fatalf("deny in REPORT mode: %+v", d)
			}
		}
	})
}
