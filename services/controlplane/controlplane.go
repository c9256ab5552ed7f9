// Package controlplane assembles the control plane's API from an event store: the command service
// (package command) and the audit service (package projections/audit) behind the gRPC services and
// REST gateway handlers of guestlist.v1.
package controlplane

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"guestlist.dev/projections/audit"
	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
	"guestlist.dev/services/api/server"
	"guestlist.dev/services/auth"
	"guestlist.dev/services/command"
	"guestlist.dev/services/eventstore"
)

// Config configures the control plane.
type Config struct {
	// Store is the event store. Required.
	Store eventstore.Store
	// AdminToken is the platform operator's bearer token. Required; only its SHA-256 is kept.
	AdminToken string
	// EdgeToken is the edge nodes' bearer token for watching the configuration; empty means none.
	// Only its SHA-256 is kept.
	EdgeToken string
	// Logger receives logs; nil means slog.Default().
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// AuditOptions configure the AuditService (for example audit.WithLedger).
	AuditOptions []audit.Option
}

// ControlPlane is the control plane's API.
type ControlPlane struct {
	cmd   *command.Service
	audit *audit.Service
	store eventstore.Store
}

// New returns the control plane on cfg.Store.
func New(cfg Config) (*ControlPlane, error) {
	if cfg.AdminToken == "" {
		return nil, errors.New("controlplane: an admin token is required")
	}
	var edgeSum [32]byte
	if cfg.EdgeToken != "" {
		edgeSum = sha256.Sum256([]byte(cfg.EdgeToken))
	}
	cmd, err := command.New(command.Config{Store: cfg.Store, Logger: cfg.Logger, Now: cfg.Now, AdminTokenSHA256: sha256.Sum256([]byte(cfg.AdminToken)), EdgeTokenSHA256: edgeSum})
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	auditOpts := append([]audit.Option(nil), cfg.AuditOptions...)
	if cfg.Now != nil {
		auditOpts = append(auditOpts, audit.WithNow(cfg.Now))
	}
	return &ControlPlane{cmd: cmd, audit: audit.New(cfg.Store, auditOpts...), store: cfg.Store}, nil
}

// Authenticator returns the authenticator of the API's bearer tokens.
func (c *ControlPlane) Authenticator() auth.Authenticator { return c.cmd }

// Ready reports whether the control plane can serve: the event store answers.
func (c *ControlPlane) Ready(ctx context.Context) error {
	if _, err := c.store.LastPosition(ctx); err != nil {
		return fmt.Errorf("event store: %w", err)
	}
	return nil
}

// Services returns the guestlist.v1 services for the API server.
func (c *ControlPlane) Services() []server.Service {
	return []server.Service{
		{
			Name:            guestlistv1.TenantService_ServiceDesc.ServiceName,
			RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterTenantServiceServer(r, c.cmd.Tenants()) },
			RegisterGateway: guestlistv1.RegisterTenantServiceHandler,
		},
		{
			Name:            guestlistv1.TokenService_ServiceDesc.ServiceName,
			RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterTokenServiceServer(r, c.cmd.Tokens()) },
			RegisterGateway: guestlistv1.RegisterTokenServiceHandler,
		},
		{
			Name: guestlistv1.CertificateAuthorityService_ServiceDesc.ServiceName,
			RegisterGRPC: func(r grpc.ServiceRegistrar) {
				guestlistv1.RegisterCertificateAuthorityServiceServer(r, c.cmd.CertificateAuthorities())
			},
			RegisterGateway: guestlistv1.RegisterCertificateAuthorityServiceHandler,
		},
		{
			Name:            guestlistv1.RevocationService_ServiceDesc.ServiceName,
			RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterRevocationServiceServer(r, c.cmd.Revocations()) },
			RegisterGateway: guestlistv1.RegisterRevocationServiceHandler,
		},
		{
			Name:            guestlistv1.PolicyService_ServiceDesc.ServiceName,
			RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterPolicyServiceServer(r, c.cmd.Policies()) },
			RegisterGateway: guestlistv1.RegisterPolicyServiceHandler,
		},
		{
			Name:            guestlistv1.HostnameService_ServiceDesc.ServiceName,
			RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterHostnameServiceServer(r, c.cmd.Hostnames()) },
			RegisterGateway: guestlistv1.RegisterHostnameServiceHandler,
		},
		{
			Name:            guestlistv1.AuditService_ServiceDesc.ServiceName,
			RegisterGRPC:    func(r grpc.ServiceRegistrar) { guestlistv1.RegisterAuditServiceServer(r, c.audit) },
			RegisterGateway: registerAuditGateway,
		},
	}
}

// exportPath is the REST path of AuditService.ExportEvents (as in guestlist_http.yaml).
const exportPath = "/v1/tenants/{tenant_id}/events:export"

// registerAuditGateway registers the AuditService's REST bindings, with ExportEvents answered as
// NDJSON: one ExportEventsResponse a line, bare ({"tenantId":...}, {"event":...},
// {"checkpoint":...}), as ledger.VerifyExport reads it, instead of grpc-gateway's {"result":...}
// lines. The export is called over conn, the gateway's loopback connection, like every other
// binding, so authentication, validation and logging apply to it alike.
func registerAuditGateway(ctx context.Context, mux *runtime.ServeMux, conn *grpc.ClientConn) error {
	if err := guestlistv1.RegisterAuditServiceHandler(ctx, mux, conn); err != nil {
		return fmt.Errorf("controlplane: register the AuditService gateway: %w", err)
	}
	client := guestlistv1.NewAuditServiceClient(conn)
	return server.HandleServerStreamNDJSON(mux, http.MethodGet, exportPath, guestlistv1.AuditService_ExportEvents_FullMethodName,
		func(ctx context.Context, _ *http.Request, params map[string]string) (func() (proto.Message, error), error) {
			stream, err := client.ExportEvents(ctx, &guestlistv1.ExportEventsRequest{TenantId: params["tenant_id"]})
			if err != nil {
				return nil, err
			}
			return func() (proto.Message, error) { return stream.Recv() }, nil
		})
}
