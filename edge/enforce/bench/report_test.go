//go:build linux

package main

import "testing"

func TestQuartiles(t *testing.T) {
	tests := []struct {
		name        string
		xs          []float64
		q1, med, q3 float64
	}{
		{"ok/odd", []float64{5, 1, 3, 2, 4}, 2, 3, 4},
		{"ok/even", []float64{0.8, 1.0, 0.9, 1.1}, 0.875, 0.95, 1.025},
		{"ok/one", []float64{0.9}, 0.9, 0.9, 0.9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.xs...)
			q1, med, q3 := quartiles(tt.xs)
			const eps = 1e-9
			if d := q1 - tt.q1; d > eps || d < -eps {
				t.Errorf("q1 = %v, want %v", q1, tt.q1)
			}
			if d := med - tt.med; d > eps || d < -eps {
				t.Errorf("median = %v, want %v", med, tt.med)
			}
			if d := q3 - tt.q3; d > eps || d < -eps {
				t.Errorf("q3 = %v, want %v", q3, tt.q3)
			}
			for i := range in {
				if in[i] != tt.xs[i] {
					t.Fatalf("quartiles modified its input: %v, was %v", tt.xs, in)
				}
			}
		})
	}
}
