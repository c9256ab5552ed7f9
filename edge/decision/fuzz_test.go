package decision

import (
	"crypto/x509"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	configv1 "guestlist.dev/proto/gen/go/guestlist/config/v1"
)

// FuzzDecide decides on arbitrary requests with arbitrary certificates (random DER, parsed when it
// parses and used unparsed otherwise): Decide must not panic, must be deterministic, must agree
// with DecideVerified, and must never let an unverified certificate's identity reach the policy or
// the Cert.
func FuzzDecide(f *testing.F) {
	p := getPKI(f)
	cfg := hostnameConfig(p)
	withPolicy(
		rule("health", allow, `!cert.presented && request.path == "/healthz"`),
		rule("ops", allow, `"ops" in cert.subject.organizational_unit`),
		rule("named", allow, `cert.subject.common_name != "" || cert.fingerprint_sha256 != "" || size(cert.dns_names) > 0`),
		rule("env", deny, `request.headers[?"x-env"].orValue("") == "prod" && request.method == "DELETE"`),
		rule("hdr", allow, `request.headers["x-key"] == "k"`),
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
	f.Add("GET", "/healthz", "X-Env", "prod", p.leaf.Cert.Raw, p.inter.Cert.Raw, int64(0))
	f.Add("DELETE", "/admin/", "X-Key", "k", p.forged.Cert.Raw, []byte(nil), int64(1000))
	f.Add("GET", "/", "x-key", "k", p.interLeaf.Cert.Raw, p.inter.Cert.Raw, int64(-3600))
	f.Add("PUT", "/a", "", "", []byte{0x30, 0x00}, []byte{0xff}, int64(1<<40))
	now := time.Now()
	f.Fuzz(func(t *testing.T, method, path, hname, hval string, leafDER, interDER []byte, offset int64) {
		at := now.Add(time.Duration(offset) * time.Second)
		hdr := http.Header{}
		if hname != "" {
			hdr.Add(hname, hval)
			hdr[strings.ToLower(hname)] = append(hdr[strings.ToLower(hname)], hval)
		}
		req := &Request{Method: method, Path: path, Header: hdr}
		var peer []*x509.Certificate
		for _, der := range [][]byte{leafDER, interDER} {
			if der == nil {
				continue
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				c = &x509.Certificate{Raw: der}
			}
			peer = append(peer, c)
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
				if d.Cert.Subject != "" || d.Cert.Issuer != "" || d.Cert.SerialNumber != "" || !d.Cert.NotAfter.IsZero() || d.Chain != nil {
					t.Fatalf("identity of an unverified certificate: %+v", d.Cert)
				}
				if d.Rule == "ops" || d.Rule == "named" {
					t.Fatalf("rule %q matched an unverified certificate", d.Rule)
				}
			}
			if hh == hr && d.Verdict == Deny {
				t.Fatalf("deny in REPORT mode: %+v", d)
			}
		}
	})
}
