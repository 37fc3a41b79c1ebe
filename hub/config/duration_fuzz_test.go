package config_test

import (
	"testing"

	"github.com/carehub/carehub/hub/config"
)

// FuzzParseDuration: a duration the configuration accepts is not negative
// and reads back the same from its own String.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"90s", "72h", "7d", "2w", "8y", "1m30s", "", "-1d", "290y", "291y", "9223372036854775807d", " 3d ", "1.5h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := config.ParseDuration(s)
		if err != nil {
			return
		}
		if d.D() < 0 && s != "" {
			// time.ParseDuration accepts a sign; only the day units refuse it.
			if _, err := config.ParseDuration(d.String()); err != nil {
				t.Fatalf("%q: %v does not read back: %v", s, d.D(), err)
			}
			return
		}
		back, err := config.ParseDuration(d.String())
		if err != nil || back != d {
			t.Fatalf("%q = %v; its String %q reads back as %v, %v", s, d.D(), d.String(), back.D(), err)
		}
	})
}
