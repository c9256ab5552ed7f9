//go:build !unix

package enforce

import "time"

// processCPU returns 0: the process's CPU time is read on Unix systems only, so the CPU figures
// of the comparison benchmarks are 0 elsewhere.
func processCPU() time.Duration { return 0 }
