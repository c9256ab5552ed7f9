// Package storeurl opens the event store named by a --store value: "bolt://PATH" (or a bare path)
// for the embedded bbolt store, and "esdb://..." or "esdb+discover://..." for EventStoreDB/KurrentDB
// (package esdbstore; "kurrentdb://" and "kdb://" are accepted as synonyms of "esdb://"; the
// connection string's settings go to the client as given).
package storeurl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"guestlist.dev/services/eventstore"
	"guestlist.dev/services/eventstore/boltstore"
	"guestlist.dev/services/eventstore/esdbstore"
)

// Kind is the backend a --store value names.
type Kind string

// Backends.
const (
	// Bolt is the embedded store: one process holds the file.
	Bolt Kind = "bolt"
	// ESDB is an EventStoreDB/KurrentDB server or cluster.
	ESDB Kind = "esdb"
)

// Parsed is a --store value taken apart.
type Parsed struct {
	// Kind is the backend.
	Kind Kind
	// Path is the bbolt file (Bolt only).
	Path string
	// ConnectionString is the client's connection string (ESDB only), unchanged.
	ConnectionString string
}

// ErrBadURL is wrapped by every error Parse returns.
var ErrBadURL = errors.New("storeurl: bad --store value")

// Parse takes a --store value apart without opening anything. A value without a scheme is a bbolt
// path. It returns ErrBadURL, with what is wrong, for an empty value, an unknown scheme, a bolt://
// without a path or a connection string the EventStoreDB client cannot parse (the message never
// repeats the value, which may hold a password).
func Parse(s string) (Parsed, error) {
	switch {
	case strings.TrimSpace(s) == "":
		return Parsed{}, fmt.Errorf("%w: empty; want bolt://PATH or esdb://HOST:PORT?...", ErrBadURL)
	case strings.HasPrefix(s, "bolt://"):
		p := strings.TrimPrefix(s, "bolt://")
		if p == "" {
			return Parsed{}, fmt.Errorf("%w: %q has no file path; want bolt://PATH (bolt:///abs/path or bolt://rel/path)", ErrBadURL, s)
		}
		return Parsed{Kind: Bolt, Path: p}, nil
	case strings.HasPrefix(s, "esdb://"), strings.HasPrefix(s, "esdb+discover://"),
		strings.HasPrefix(s, "kurrentdb://"), strings.HasPrefix(s, "kurrentdb+discover://"),
		strings.HasPrefix(s, "kdb://"), strings.HasPrefix(s, "kdb+discover://"):
		if _, err := esdbstore.ParseConnectionString(s); err != nil {
			return Parsed{}, fmt.Errorf("%w: %w", ErrBadURL, err)
		}
		return Parsed{Kind: ESDB, ConnectionString: s}, nil
	case strings.Contains(s, "://"):
		scheme, _, _ := strings.Cut(s, "://")
		return Parsed{}, fmt.Errorf("%w: unknown scheme %q; want bolt:// or esdb://", ErrBadURL, scheme)
	default:
		return Parsed{Kind: Bolt, Path: s}, nil
	}
}

// Open opens the store s names. Options for the embedded store go in boltOpts.
func Open(ctx context.Context, s string, boltOpts ...boltstore.Option) (eventstore.Store, error) {
	p, err := Parse(s)
	if err != nil {
		return nil, err
	}
	switch p.Kind {
	case Bolt:
		st, err := boltstore.Open(p.Path, boltOpts...)
		if err != nil {
			return nil, fmt.Errorf("open the embedded event store: %w", err)
		}
		return st, nil
	default:
		return openESDB(ctx, p.ConnectionString)
	}
}

// openESDB opens an EventStoreDB store; it checks that the server answers.
func openESDB(ctx context.Context, conn string) (eventstore.Store, error) {
	st, err := esdbstore.Open(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("open the EventStoreDB event store (--store): %w", err)
	}
	return st, nil
}
