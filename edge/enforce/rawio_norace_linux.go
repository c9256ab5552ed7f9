//go:build linux && !race

package enforce

// raceWritten and raceRead annotate raw reads and writes for the race detector
// (rawio_race_linux.go); without -race they do nothing.

func raceWritten([]byte, int) {}

func raceRead([]byte, int) {}
