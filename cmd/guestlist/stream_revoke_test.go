package main

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	guestlistv1 "guestlist.dev/proto/gen/go/guestlist/v1"
)

// TestDeletedTokenEndsItsOpenExport: DeleteToken "revokes a token; it stops working at once", also
// for a history export the token opened before: the stream ends with UNAUTHENTICATED at the next
// message it sends after the deletion (within a second), instead of going on to its end. The
// client reads slowly (a 64 KiB stream window), as a client that is not done yet would. Before,
// the export sent every event to the deleted token.
func TestDeletedTokenEndsItsOpenExport(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 3,000 hostnames")
	}
	n := startDev(t, t.TempDir())
	const batches = 3
	n.acmeWithHostnames(batches)
	code, tok := n.rest("POST", "/v1/tenants/acme/tokens", n.token, map[string]any{"displayName": "auditor", "role": "ROLE_AUDITOR"})
	secret, _ := tok["secret"].(string)
	tokenID, _ := tok["tokenId"].(string)
	if code != 200 || secret == "" {
		t.Fatal("create the auditor token")
	}
	conn, err := grpc.NewClient(n.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10)) // no window growth: the server waits for the reader
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+secret), 30*time.Second)
	defer cancel()
	client := guestlistv1.NewAuditServiceClient(conn)
	// Wait for a checkpoint covering the whole history (the token's creation included).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		events, err := countExport(ctx, client)
		if err != nil {
			t.Fatal(err)
		}
		if events == batches*1000+2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never a checkpoint of the whole history (%d events exported)", events)
		}
	}
	stream, err := client.ExportEvents(ctx, &guestlistv1.ExportEventsRequest{TenantId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if code, _ := n.rest("DELETE", "/v1/tenants/acme/tokens/"+tokenID, n.token, nil); code != 200 {
		t.Fatal("delete the token")
	}
	time.Sleep(1100 * time.Millisecond) // the export's next check of its token is due
	events := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			t.Fatalf("the deleted token's export went on to its end (%d more events)", events)
		}
		if err != nil {
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("the export ended with %v, want UNAUTHENTICATED", err)
			}
			break
		}
		if m.GetEvent() != nil {
			events++
		}
	}
	if events >= batches*1000 {
		t.Errorf("%d events sent after the deletion", events)
	}
	t.Logf("the export ended after %d events buffered before the deletion", events)
	// A new export with the token is refused from the start.
	s, err := client.ExportEvents(ctx, &guestlistv1.ExportEventsRequest{TenantId: "acme"})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("a new export with the deleted token: %v", err)
	}
}

// countExport reads a whole export and counts its events.
func countExport(ctx context.Context, client guestlistv1.AuditServiceClient) (int, error) {
	s, err := client.ExportEvents(ctx, &guestlistv1.ExportEventsRequest{TenantId: "acme"})
	if err != nil {
		return 0, err
	}
	events := 0
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return events, nil
		}
		if status.Code(err) == codes.FailedPrecondition {
			return 0, nil // no checkpoint yet
		}
		if err != nil {
			return 0, err
		}
		if m.GetEvent() != nil {
			events++
		}
	}
}
