//go:build linux && race

package enforce

import (
	"runtime"
	"unsafe"
)

// With -race, rawRead and rawWrite tell the race detector what the kernel wrote and read, as
// syscall.Read and syscall.Write do (syscall.RawSyscall does not): a goroutine touching a buffer
// while the edge reads into it or writes it is then reported, as it is with
// GUESTLIST_EDGE_SYSCALLS=runtime. (syscall's own happens-before edge from every write(2) to
// every later read(2) stays syscall's: it is not reachable from here.)

// raceWritten marks p[:n] written (by read(2)).
func raceWritten(p []byte, n int) {
	if n > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), n)
	}
}

// raceRead marks p[:n] read (by write(2)).
func raceRead(p []byte, n int) {
	if n > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&p[0]), n)
	}
}
