package main

import (
	"fmt"
	"path/filepath"

	"guestlist.dev/edge/servercert"
)

// edgeCALockFile is the lock file in an edge CA directory.
const edgeCALockFile = ".lock"

// loadEdgeCA loads the edge CA in dir, or creates it there. Several edges may share dir (they then
// present certificates from one CA): an exclusive lock on dir/.lock, held while the CA is loaded
// or created, keeps edges that start together from creating two different CAs. dir must be private
// (ensurePrivateDir), and servercert refuses a CA key that others own or may read.
func loadEdgeCA(dir string) (*servercert.CA, error) {
	dir, err := ensurePrivateDir(dir, "edge CA directory")
	if err != nil {
		return nil, err
	}
	unlock, err := lockFile(filepath.Join(dir, edgeCALockFile))
	if err != nil {
		return nil, fmt.Errorf("lock the edge CA directory: %w", err)
	}
	defer unlock()
	return servercert.LoadOrCreateCA(dir)
}
