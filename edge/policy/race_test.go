//go:build race

package policy

// raceEnabled: the race detector slows evaluation several times over (timing tests skip).
const raceEnabled = true
