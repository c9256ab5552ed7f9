// Package apistatus builds the gRPC statuses that the API returns, with google.rpc error details:
// BadRequest field violations for bad input, so that both gRPC and REST clients see which field was
// wrong and why.
package apistatus

import (
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Violation is one bad field: Field is its path in the request as the client wrote it
// (proto names, e.g. "hostname.mtls.certificate_authority_ids[0]"), Reason says what is wrong.
type Violation struct {
	Field  string
	Reason string
}

// InvalidArgument returns an INVALID_ARGUMENT status whose message lists every violation and whose
// details carry them as a google.rpc.BadRequest.
func InvalidArgument(violations ...Violation) error {
	return withViolations(codes.InvalidArgument, violations)
}

// FailedPrecondition returns a FAILED_PRECONDITION status naming the field that is in conflict with
// the current state (for example a CA still referenced by a hostname).
func FailedPrecondition(field, reason string) error {
	st := status.New(codes.FailedPrecondition, field+": "+reason)
	if d, err := st.WithDetails(&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{{
		Type: "STATE", Subject: field, Description: reason,
	}}}); err == nil {
		st = d
	}
	return st.Err()
}

func withViolations(code codes.Code, violations []Violation) error {
	msgs := make([]string, 0, len(violations))
	br := &errdetails.BadRequest{}
	for _, v := range violations {
		msgs = append(msgs, v.Field+": "+v.Reason)
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Reason})
	}
	st := status.New(code, "invalid request: "+strings.Join(msgs, "; "))
	if d, err := st.WithDetails(br); err == nil {
		st = d
	}
	return st.Err()
}

// NotFound returns a NOT_FOUND status for a resource of the caller's own tenant.
func NotFound(kind, id string) error {
	return status.Error(codes.NotFound, fmt.Sprintf("%s %q not found", kind, id))
}

// AlreadyExists returns an ALREADY_EXISTS status.
func AlreadyExists(kind, id string) error {
	return status.Error(codes.AlreadyExists, fmt.Sprintf("%s %q already exists", kind, id))
}

// Aborted returns an ABORTED status for a stale etag or a lost optimistic-concurrency race.
func Aborted(kind, id, reason string) error {
	return status.Error(codes.Aborted, fmt.Sprintf("%s %q: %s", kind, id, reason))
}
