//go:build !unix

package boltcheck

import (
	"fmt"
	"io"
	"os"
)

// mapFile reads the first size bytes of f into memory: on platforms without syscall.Mmap the check
// costs memory as large as the file (guestlist ships for Linux; this keeps it building and working
// on a developer's machine). unmap releases nothing.
func mapFile(f *os.File, size int64) (data []byte, unmap func() error, err error) {
	if int64(int(size)) != size {
		return nil, nil, fmt.Errorf("read %d bytes: too large for this platform", size)
	}
	data = make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), data); err != nil {
		return nil, nil, fmt.Errorf("read %d bytes: %w", size, err)
	}
	return data, func() error { return nil }, nil
}
