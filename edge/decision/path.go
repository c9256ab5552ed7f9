package decision

import (
	"errors"
	"path"
	"strings"
)

// PolicyPath returns request.path, the path the policy and the decision log see, for the
// percent-decoded URL path p of a request; the edge and the audit's explain both use it. It
// returns ErrPathBackslash or ErrPathDotSegment for the paths the edge refuses (with 400, deciding
// nothing). Its results are fixed points: PolicyPath of a logged path gives that path again.
//
// The origin gets the request target as the client wrote it, and origins disagree on what it
// names: a prefix router (Node/Express) may serve "/admin/../x" with /admin's handlers, Tomcat,
// Spring and Jetty drop ";params" from segments and resolve "..;" as "..", IIS takes "\" for "/".
// No one rewriting of the path is what every origin understands, so the edge refuses the paths
// that origins read differently: a dot segment ("." or "..", also percent-encoded, delimited by
// an encoded slash, or followed by ";params"), or a backslash (raw or percent-encoded). Browsers
// and curl resolve dot segments before sending and never send a backslash.
//
// What remains is made into the policy's path by dropping ";params" from every segment and
// repeated slashes, keeping a trailing slash: a rule on "/admin" then also catches "/%61dmin",
// "//admin", "/admin;x" and "/;/admin" (which a Tomcat-like origin serves as /admin), and
// "/admin;x/y" is seen as "/admin/y". The request is forwarded as the client wrote it.
func PolicyPath(p string) (string, error) {
	if strings.IndexByte(p, '\\') >= 0 {
		return "", ErrPathBackslash
	}
	if p == "" || p[0] != '/' {
		p = "/" + p // the asterisk-form "*" of OPTIONS
	}
	stripped := false
	for i := 0; i < len(p); {
		j := strings.IndexByte(p[i:], '/')
		if j < 0 {
			j = len(p) - i
		}
		seg := p[i : i+j]
		if k := strings.IndexByte(seg, ';'); k >= 0 {
			seg, stripped = seg[:k], true
		}
		if seg == "." || seg == ".." {
			return "", ErrPathDotSegment
		}
		i += j + 1
	}
	if stripped {
		b := make([]byte, 0, len(p))
		for i := 0; i < len(p); i++ {
			if p[i] != ';' {
				b = append(b, p[i])
				continue
			}
			for i+1 < len(p) && p[i+1] != '/' {
				i++
			}
		}
		p = string(b)
	}
	// No dot segment is left: Clean only drops repeated slashes and a trailing one.
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	return clean, nil
}

// The paths PolicyPath refuses.
var (
	// ErrPathDotSegment: the path has a "." or ".." segment (also followed by ";params").
	ErrPathDotSegment = errors.New(`the request path has a "." or ".." segment (also percent-encoded or followed by ";"); send the path with dot segments resolved`)
	// ErrPathBackslash: the path has a backslash.
	ErrPathBackslash = errors.New("the request path has a backslash (also percent-encoded as %5C)")
)
