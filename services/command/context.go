package command

import (
	"context"
	"crypto/rand"
	"encoding/hex"

	"go.opentelemetry.io/otel/propagation"

	"guestlist.dev/services/auth"
	"guestlist.dev/services/eventstore"
)

// metadata builds the metadata recorded with the events of one request: who, which request, and
// the trace it belongs to.
func metadata(ctx context.Context, p auth.Principal, requestID string) eventstore.Metadata {
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	return eventstore.Metadata{
		Actor:       p.Actor(),
		RequestID:   requestID,
		TraceParent: carrier.Get("traceparent"),
		TraceState:  carrier.Get("tracestate"),
	}
}

// newID returns prefix followed by 16 random lower-case hex digits.
func newID(prefix string) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("command: crypto/rand failed: " + err.Error())
	}
	return prefix + hex.EncodeToString(b[:])
}
