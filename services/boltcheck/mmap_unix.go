//go:build unix

package boltcheck

import (
	"fmt"
	"os"
	"syscall"
)

// mapFile maps size bytes of f read-only. The returned slice is exactly size bytes long, so an
// access past the file's end is a bounds-checked Go panic, not a read of other memory; only a file
// that shrinks while it is mapped can fault (SIGBUS), which Check turns into a panic it recovers
// (debug.SetPanicOnFault). unmap releases the mapping.
func mapFile(f *os.File, size int64) (data []byte, unmap func() error, err error) {
	if size == 0 {
		return nil, func() error { return nil }, nil
	}
	if int64(int(size)) != size {
		return nil, nil, fmt.Errorf("map %d bytes: too large for this platform", size)
	}
	data, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("map %d bytes: %w", size, err)
	}
	return data, func() error { return syscall.Munmap(data) }, nil
}
