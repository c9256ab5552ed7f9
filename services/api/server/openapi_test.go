package server

import (
	"encoding/json"
	"strings"
	"testing"

	"guestlist.dev/proto/gen/openapi"
)

// TestOpenAPIDocument checks what a reader of /openapi.json (or a tool such as Swagger UI or a
// client generator) sees first: the document's title and version, the bearer authentication every
// call needs, and only the REST API's services (not the edges' gRPC ConfigService). The generator
// takes the info and security of the merged document from its first file, so a change of the
// proto files or of buf.gen.yaml can silently lose them (before: the title was
// "guestlist/config/v1/config.proto", the version "version not set", and no authentication).
func TestOpenAPIDocument(t *testing.T) {
	var doc struct {
		Info struct {
			Title   string `json:"title"`
			Version string `json:"version"`
		} `json:"info"`
		Tags []struct {
			Name string `json:"name"`
		} `json:"tags"`
		SecurityDefinitions map[string]struct {
			Type string `json:"type"`
			In   string `json:"in"`
			Name string `json:"name"`
		} `json:"securityDefinitions"`
		Security    []map[string][]string     `json:"security"`
		Paths       map[string]map[string]any `json:"paths"`
		Definitions map[string]any            `json:"definitions"`
	}
	if err := json.Unmarshal(openapi.JSON, &doc); err != nil {
		t.Fatalf("the OpenAPI document is not JSON: %v", err)
	}
	if doc.Info.Title != "guestlist API" || doc.Info.Version != "v1" {
		t.Errorf("info: title %q, version %q; want \"guestlist API\", \"v1\" (proto/guestlist/v1/guestlist_openapi.yaml)", doc.Info.Title, doc.Info.Version)
	}
	bearer, ok := doc.SecurityDefinitions["bearer"]
	if !ok || bearer.Type != "apiKey" || bearer.In != "header" || bearer.Name != "Authorization" {
		t.Errorf("securityDefinitions: %+v; want bearer: an apiKey in the Authorization header", doc.SecurityDefinitions)
	}
	required := false
	for _, s := range doc.Security {
		if _, ok := s["bearer"]; ok {
			required = true
		}
	}
	if !required {
		t.Errorf("security: %v; want bearer required for every call", doc.Security)
	}
	for _, tag := range doc.Tags {
		if !strings.HasSuffix(tag.Name, "Service") || tag.Name == "ConfigService" {
			t.Errorf("tag %q: the REST document lists guestlist.v1's services only", tag.Name)
		}
	}
	if len(doc.Paths) == 0 {
		t.Fatal("no paths")
	}
	for name := range doc.Definitions {
		if strings.HasPrefix(name, "config") || strings.HasPrefix(name, "events") {
			t.Errorf("definition %q: the REST document holds guestlist.v1's messages only", name)
		}
	}
}
