package boltstore

import (
	"os"
	"syscall"
)

// dropCache asks the kernel to drop the page cache of the file at path (posix_fadvise
// POSIX_FADV_DONTNEED: this file's clean pages only), so that the next read comes from the disk.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	const fadvDontNeed = 4
	if _, _, errno := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0); errno != 0 {
		return errno
	}
	return nil
}
