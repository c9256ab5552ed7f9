package eventstore

import (
	"errors"
	"fmt"
)

// UUID is an event id in binary form.
type UUID [16]byte

// ParseUUID parses a UUID in its canonical text form (8-4-4-4-12 hexadecimal digits, either case,
// without braces or a "urn:uuid:" prefix).
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 {
		return u, errors.New("not a UUID: want 36 characters in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
	}
	j := 0
	for i := 0; i < 36; {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return u, fmt.Errorf("not a UUID: want '-' at offset %d", i)
			}
			i++
			continue
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return u, fmt.Errorf("not a UUID: non-hexadecimal character at offset %d", i)
		}
		u[j] = hi<<4 | lo
		j++
		i += 2
	}
	return u, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// String returns u in canonical text form, lower case.
func (u UUID) String() string {
	const digits = "0123456789abcdef"
	var b [36]byte
	j := 0
	for i, c := range u {
		switch i {
		case 4, 6, 8, 10:
			b[j] = '-'
			j++
		}
		b[j] = digits[c>>4]
		b[j+1] = digits[c&0x0f]
		j += 2
	}
	return string(b[:])
}

// ValidateAppend checks the arguments of an Append the way every backend does: the stream name
// must not be empty, there must be at least one event, and each event needs a Type and an ID that
// is a UUID (see ParseUUID), with no id repeated within the append. The error wraps
// ErrInvalidEvent and names what is wrong. Backends may add limits of their own (name lengths,
// sizes).
func ValidateAppend(stream string, events []EventData) error {
	if stream == "" {
		return fmt.Errorf("%w: empty stream name", ErrInvalidEvent)
	}
	if len(events) == 0 {
		return fmt.Errorf("%w: append to %q without events", ErrInvalidEvent, stream)
	}
	for i := range events {
		ev := &events[i]
		if ev.ID == "" {
			return fmt.Errorf("%w: append to %q: event %d has no id", ErrInvalidEvent, stream, i)
		}
		if _, err := ParseUUID(ev.ID); err != nil {
			return fmt.Errorf("%w: append to %q: event %d: id %q: %v", ErrInvalidEvent, stream, i, ev.ID, err)
		}
		if ev.Type == "" {
			return fmt.Errorf("%w: append to %q: event %d (id %s) has no type", ErrInvalidEvent, stream, i, ev.ID)
		}
	}
	if len(events) > 1 {
		seen := make(map[UUID]int, len(events))
		for i := range events {
			u, _ := ParseUUID(events[i].ID)
			if j, dup := seen[u]; dup {
				return fmt.Errorf("%w: append to %q: events %d and %d have the same id %s", ErrInvalidEvent, stream, j, i, events[i].ID)
			}
			seen[u] = i
		}
	}
	return nil
}
