package hl7

import "testing"

// FuzzParsePath: a path the configuration accepts (sensitivity rules,
// mappings) reads back the same from its canonical String (which writes no
// occurrence 1), and one it
// refuses is a *PathError.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"PID-5", "PID-3(2)", "PID-3(2).4.1", "PID-5.1", "IN1(2)-4", "MSH-9.2", "PID-3-1", "PV1-3(0)", "ZZ1-1",
		"pid-5", "PID-", "PID(1-2", "PID-9999999", "PID-3(2).4.1.9", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePath(s)
		if err != nil {
			if _, ok := err.(*PathError); !ok {
				t.Fatalf("%q: error %T", s, err)
			}
			return
		}
		back, err := ParsePath(p.String())
		norm := func(p Path) Path { p.Occurrence = max(p.Occurrence, 1); return p } // 0 means 1
		if err != nil || norm(back) != norm(p) || back.String() != p.String() {
			t.Fatalf("%q parsed as %+v; its String %q reads back as %+v, %v", s, p, p.String(), back, err)
		}
	})
}
