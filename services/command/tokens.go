package command

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"guestlist.dev/projections/fold"
	eventsv1 "guestlist.dev/proto/gen/go/guestlist/events/v1"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/apistatus"
	"guestlist.dev/services/auth"
)

// Tenant tokens read "glt_<tenant id>.<token id>.<secret>", the secret being 64 lower-case hex
// digits (256 random bits). Only the SHA-256 of the secret is stored.
const tenantTokenPrefix = "glt_"

// TokenServer implements guestlist.v1.TokenService.
type TokenServer struct {
	guestlistv1.UnimplementedTokenServiceServer
	s *Service
}

// Tokens returns the TokenService implementation.
func (s *Service) Tokens() *TokenServer { return &TokenServer{s: s} }

// CreateToken implements guestlistv1.TokenServiceServer.
func (ts *TokenServer) CreateToken(ctx context.Context, req *guestlistv1.CreateTokenRequest) (*guestlistv1.Token, error) {
	tenant, p, err := tokenTenant(ctx, req.GetTenantId(), true)
	if err != nil {
		return nil, err
	}
	if err := checkPlatformRole(tenant, req.GetToken().GetRole()); err != nil {
		return nil, err
	}
	if err := checkText("token.display_name", req.GetToken().GetDisplayName()); err != nil {
		return nil, err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, status.Error(codes.Internal, "no randomness for a token secret")
	}
	secret := hex.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(secret))
	id := newID("")
	role := eventsv1.Role(req.GetToken().GetRole())
	var digest []byte
	if req.GetRequestId() != "" {
		digest = tokenDigest(req.GetToken().GetDisplayName(), role)
	}
	res, err := ts.s.execute(ctx, tenant, metadata(ctx, p, req.GetRequestId()), func(st *fold.Tenant) (decision, error) {
		var prelude []protoMessage
		if tenant == "" {
			prelude = platformPrelude(st)
		} else if err := requireTenant(st); err != nil {
			return decision{}, err
		}
		if ref, ok, err := replayOf(st, req.GetRequestId(), fold.KindToken, "token", "", "", digest); err != nil || ok {
			// A repeat: the first response carried the secret; it is not stored, so not shown again.
			return decision{result: func(st *fold.Tenant) (any, error) { return tokenResult(st, ref.ID, "") }}, err
		}
		return decision{
			events: append(prelude, &eventsv1.TokenCreated{TokenId: id, DisplayName: req.GetToken().GetDisplayName(), Role: role, SecretSha256: sum[:], RequestDigest: digest}),
			result: func(st *fold.Tenant) (any, error) {
				return tokenResult(st, id, tenantTokenPrefix+req.GetTenantId()+"."+id+"."+secret)
			},
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*guestlistv1.Token), nil
}

func tokenResult(st *fold.Tenant, id, secret string) (any, error) {
	t, ok := st.Tokens[id]
	if !ok {
		return nil, apistatus.NotFound("token", id)
	}
	out := renderToken(t)
	out.Secret = secret
	return out, nil
}

// ListTokens implements guestlistv1.TokenServiceServer.
func (ts *TokenServer) ListTokens(ctx context.Context, req *guestlistv1.ListTokensRequest) (*guestlistv1.ListTokensResponse, error) {
	tenant, _, err := tokenTenant(ctx, req.GetTenantId(), false)
	if err != nil {
		return nil, err
	}
	out := &guestlistv1.ListTokensResponse{}
	err = ts.s.read(ctx, tenant, func(st *fold.Tenant) error {
		if tenant != "" {
			if err := requireTenant(st); err != nil {
				return err
			}
		}
		keys, next, err := page(st.Tokens, "tokens/"+req.GetTenantId(), req.GetPageToken(), req.GetPageSize())
		for _, k := range keys {
			out.Tokens = append(out.Tokens, renderToken(st.Tokens[k]))
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

// DeleteToken implements guestlistv1.TokenServiceServer.
func (ts *TokenServer) DeleteToken(ctx context.Context, req *guestlistv1.DeleteTokenRequest) (*emptypb.Empty, error) {
	tenant, p, err := tokenTenant(ctx, req.GetTenantId(), true)
	if err != nil {
		return nil, err
	}
	_, err = ts.s.execute(ctx, tenant, metadata(ctx, p, ""), func(st *fold.Tenant) (decision, error) {
		if _, ok := st.Tokens[req.GetTokenId()]; !ok {
			return decision{}, apistatus.NotFound("token", req.GetTokenId())
		}
		return decision{events: []protoMessage{&eventsv1.TokenDeleted{TokenId: req.GetTokenId()}}, result: emptyResult}, nil
	})
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func emptyResult(*fold.Tenant) (any, error) { return nil, nil }

// Authenticate implements auth.Authenticator: the admin token, or a tenant token that exists and
// has not been deleted.
func (s *Service) Authenticate(ctx context.Context, bearer string) (auth.Principal, error) {
	unauthenticated := status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	sum := sha256.Sum256([]byte(bearer))
	if subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1 {
		return auth.Principal{Role: auth.RoleAdmin}, nil
	}
	if s.edge != ([32]byte{}) && subtle.ConstantTimeCompare(sum[:], s.edge[:]) == 1 {
		return auth.Principal{Role: auth.RoleEdge}, nil
	}
	rest, ok := strings.CutPrefix(bearer, tenantTokenPrefix)
	if !ok {
		return auth.Principal{}, unauthenticated
	}
	tenantID, rest, ok1 := strings.Cut(rest, ".")
	tokenID, secret, ok2 := strings.Cut(rest, ".")
	if tenantID == platformAPIID {
		tenantID = "" // an all-tenant auditor token of the platform
	} else if !validTenantID(tenantID) {
		return auth.Principal{}, unauthenticated
	}
	if !ok1 || !ok2 || tokenID == "" || len(tokenID) > 64 || len(secret) != 64 {
		return auth.Principal{}, unauthenticated
	}
	secretSum := sha256.Sum256([]byte(secret))
	var p auth.Principal
	err := s.read(ctx, tenantID, func(st *fold.Tenant) error {
		t, ok := st.Tokens[tokenID]
		if !ok || subtle.ConstantTimeCompare(t.SecretSHA256, secretSum[:]) != 1 {
			return unauthenticated
		}
		p = auth.Principal{TenantID: tenantID, TokenID: tokenID}
		switch t.Role {
		case eventsv1.Role_ROLE_TENANT_ADMIN:
			p.Role = auth.RoleTenantAdmin
		case eventsv1.Role_ROLE_AUDITOR:
			p.Role = auth.RoleAuditor
		default:
			// A role this version does not know (written by a newer one) or none: fail closed
			// rather than grant the widest tenant role.
			return unauthenticated
		}
		if tenantID == "" && p.Role != auth.RoleAuditor {
			return unauthenticated // never written; refused all the same
		}
		return nil
	})
	return p, err
}

// validTenantID reports whether id has the form of a tenant id, so that arbitrary bearer tokens
// never create state for made-up tenants.
func validTenantID(id string) bool {
	if len(id) < 3 || len(id) > 63 || id[0] < 'a' || id[0] > 'z' {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
