package server

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestRESTStreamNDJSONDeadlineEndsWithError: the gateway honours a client's Grpc-Timeout header
// (runtime.AnnotateContext gives the call that deadline). When it expires part-way, the client is
// still reading and the stream failed: the answer must end with an {"error":...} line naming
// DEADLINE_EXCEEDED, never end cleanly as if the shorter export were whole. (It ended cleanly
// when the error line was skipped whenever the call's context was done.)
func TestRESTStreamNDJSONDeadlineEndsWithError(t *testing.T) {
	env, _ := startNDJSONServer(t) // "chunks": a first line, then waits for a step that never comes
	req, err := http.NewRequestWithContext(ctxT(t), "GET", env.base+"/v1/ndjson/chunks", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Grpc-Timeout", "300m")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	var last struct {
		Error *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("last line %q: %v", lines[len(lines)-1], err)
	}
	if resp.StatusCode != http.StatusOK || len(lines) != 2 || last.Error == nil || last.Error.Code != 4 {
		t.Fatalf("status %d, %d lines, last %q: want 200, the first line, then an error line with code 4 (DEADLINE_EXCEEDED)", resp.StatusCode, len(lines), lines[len(lines)-1])
	}
}
