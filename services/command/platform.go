package command

import (
	"context"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
)

// The platform's own tokens — all-tenant auditor tokens, issued by the platform operator — live in
// the stream "platform", folded like a tenant whose id is empty. The stream is not a tenant stream:
// the projector, the ledger and the tenant directory never see it, and no tenant API can name it.
// The API names it "-" (tenant_id "-" in the token service).
const (
	platformStream = "platform"
	platformAPIID  = "-"
)

// streamOf returns the stream of tenantID's events.
func streamOf(tenantID string) string {
	if tenantID == "" {
		return platformStream
	}
	return fold.TenantStream(tenantID)
}

// platformToken handles the token service's calls on tenant "-": platform operator only, auditors
// only. It returns the entry id to use ("" for the platform) and the first events a creation needs.
func platformPrelude(st *fold.Tenant) []protoMessage {
	if st.Exists {
		return nil
	}
	return []protoMessage{&eventsv1.TenantCreated{TenantId: "", DisplayName: "platform"}}
}

// tokenTenant resolves the tenant id of a token call: for "-" the caller must be the platform
// operator and the entry is the platform's.
func tokenTenant(ctx context.Context, tenantID string, write bool) (id string, p auth.Principal, err error) {
	if tenantID == platformAPIID {
		p, err = auth.AuthorizeAdmin(ctx)
		return "", p, err
	}
	if tenantID == "" {
		return "", auth.Principal{}, apistatus.InvalidArgument(apistatus.Violation{Field: "tenant_id", Reason: "required"})
	}
	if write {
		p, err = auth.AuthorizeWrite(ctx, tenantID)
	} else {
		p, err = auth.AuthorizeRead(ctx, tenantID)
	}
	return tenantID, p, err
}

// checkPlatformRole refuses platform tokens that are not auditors.
func checkPlatformRole(id string, role guestlistv1.Role) error {
	if id == "" && role != guestlistv1.Role_ROLE_AUDITOR {
		return apistatus.InvalidArgument(apistatus.Violation{Field: "token.role", Reason: "platform tokens (tenant_id \"-\") are all-tenant auditors: use ROLE_AUDITOR"})
	}
	return nil
}
