package command

import (
	"strings"
	"unicode"
)

// maskPath returns an update mask path in the proto field names the API documents
// ("origin_url", "mtls.certificate_authority_ids"), also when it was given in the lowerCamelCase of
// the REST JSON ("originUrl", "mtls.certificateAuthorityIds"), as users of the REST API write it.
func maskPath(path string) string {
	if !strings.ContainsFunc(path, unicode.IsUpper) {
		return path
	}
	var b strings.Builder
	for _, r := range path {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
