package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestRESTDecodeErrorsNameTheField: a body or query the REST gateway cannot decode (an enum value
// without its prefix, as a user reading "mode: OFF or ENFORCE or REPORT" writes it; an unknown or
// misspelt field; both revocation targets; not JSON; a time that is not RFC 3339) gets a 400 with
// a google.rpc.BadRequest naming the field and the reason, like every other bad input; for an
// enum, its values. Before, only the decoder's message came back (a new user's review). A field
// of the body is named by its path in the request, in proto names, as every violation names it
// ("policy.rules[2].action"; from a name that is no field on, as the client wrote it), and the
// position is counted from the body's start, white space included.
func TestRESTDecodeErrorsNameTheField(t *testing.T) {
	n := startDev(t, t.TempDir())
	n.rest("POST", "/v1/tenants?tenantId=acme", n.token, map[string]any{"displayName": "acme"})
	for _, tc := range []struct {
		name, method, path, body string
		field, reason            string
	}{
		{"enum without its prefix", "POST", "/v1/tenants/acme/hostnames", `{"hostname":"pay.example.com","originUrl":"http://127.0.0.1:8081","mtls":{"mode":"ENFORCE"}}`,
			"hostname.mtls.mode", "MTLS_MODE_ENFORCE"},
		{"the third rule's action", "POST", "/v1/tenants/acme/policies?policyId=p", `{"rules":[{"name":"a","action":"ACTION_ALLOW","expression":"true"},{"name":"b","action":"ACTION_DENY","expression":"true"},{"name":"c","action":"allow","expression":"true"}]}`,
			"policy.rules[2].action", `"allow" is not a value of this field: one of ACTION_ALLOW, ACTION_DENY (body line 1, column 145)`},
		{"a batch's second hostname, after white space", "POST", "/v1/tenants/acme/hostnames:batchCreate", "\n\n  {\"requests\": [\n    {\"hostname\": {\"hostname\": \"a.example.com\"}},\n    {\"hostname\": {\"hostname\": \"b.example.com\", \"mtls\": {\"mode\": 3, \"certificateAuthorityID\": []}}}\n  ]}",
			"requests[1].hostname.mtls.certificateAuthorityID", "unknown field; field names are lowerCamelCase as in the API's JSON (e.g. originUrl) (body line 5, column 68)"},
		{"unknown field", "POST", "/v1/tenants/acme/hostnames", `{"hostname":"pay.example.com","originURL":"http://127.0.0.1:8081"}`,
			"hostname.originURL", "unknown field"},
		{"both revocation targets", "POST", "/v1/tenants/acme/certificateAuthorities/x/revocations", `{"serialNumber":"01","fingerprintSha256":"` + strings.Repeat("a", 64) + `"}`,
			"revocation.fingerprint_sha256", "only one of serialNumber and fingerprintSha256 may be given"},
		{"not JSON", "POST", "/v1/tenants/acme/policies?policyId=p", `display name`,
			"body", "not valid JSON"},
		{"time not RFC 3339", "GET", "/v1/tenants/acme/snapshot?atTime=yesterday", ``,
			"at_time", "RFC 3339"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, n.api+tc.path, bytes.NewReader([]byte(tc.body)))
			req.Header.Set("Authorization", "Bearer "+n.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			var st struct {
				Details []struct {
					FieldViolations []struct {
						Field       string `json:"field"`
						Description string `json:"description"`
					} `json:"fieldViolations"`
				} `json:"details"`
			}
			_ = json.Unmarshal(raw, &st)
			if resp.StatusCode != http.StatusBadRequest || len(st.Details) == 0 || len(st.Details[0].FieldViolations) == 0 {
				t.Fatalf("%d %s; want 400 with a BadRequest", resp.StatusCode, raw)
			}
			fv := st.Details[0].FieldViolations[0]
			if fv.Field != tc.field || !strings.Contains(fv.Description, tc.reason) {
				t.Fatalf("violation %+v; want field %q and a reason with %q", fv, tc.field, tc.reason)
			}
		})
	}
}
