package eventstore

import (
	"errors"
	"strings"
	"testing"
)

func TestParseUUID(t *testing.T) {
	for in, want := range map[string]string{
		"0f8fad5b-d9cb-469f-a165-70867728950e": "0f8fad5b-d9cb-469f-a165-70867728950e",
		"0F8FAD5B-D9CB-469F-A165-70867728950E": "0f8fad5b-d9cb-469f-a165-70867728950e",
		"00000000-0000-0000-0000-000000000000": "00000000-0000-0000-0000-000000000000",
	} {
		u, err := ParseUUID(in)
		if err != nil || u.String() != want {
			t.Errorf("ParseUUID(%q) = %v, %v; want %s", in, u, err, want)
		}
	}
	for _, in := range []string{
		"", "0f8fad5b", "0f8fad5bd9cb469fa16570867728950e", "{0f8fad5b-d9cb-469f-a165-70867728950e}",
		"0f8fad5b-d9cb-469f-a165-70867728950g", "0f8fad5b+d9cb-469f-a165-70867728950e",
		"urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5b-d9cb-469f-a16570-867728950e",
	} {
		if u, err := ParseUUID(in); err == nil {
			t.Errorf("ParseUUID(%q) = %v, want an error", in, u)
		}
	}
}

func TestValidateAppend(t *testing.T) {
	id := "0f8fad5b-d9cb-469f-a165-70867728950e"
	ok := EventData{ID: id, Type: "T"}
	if err := ValidateAppend("s", []EventData{ok}); err != nil {
		t.Errorf("ValidateAppend(valid) = %v", err)
	}
	for want, c := range map[string]struct {
		stream string
		events []EventData
	}{
		"empty stream name":   {"", []EventData{ok}},
		"without events":      {"s", nil},
		"event 1 has no id":   {"s", []EventData{ok, {Type: "T"}}},
		"not a UUID":          {"s", []EventData{{ID: "x", Type: "T"}}},
		"event 0 (id " + id:   {"s", []EventData{{ID: id}}},
		"events 0 and 1 have": {"s", []EventData{ok, ok}},
	} {
		err := ValidateAppend(c.stream, c.events)
		if !errors.Is(err, ErrInvalidEvent) || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateAppend = %v, want ErrInvalidEvent saying %q", err, want)
		}
	}
}
