//go:build !linux

package boltstore

import "errors"

// dropCache is not available here: the cold runs of BenchmarkOpen are skipped.
func dropCache(string) error { return errors.ErrUnsupported }
