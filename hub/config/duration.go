package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a length of time written as a Go duration (90s, 72h) or in
// whole days, weeks or years (7d, 2w, 8y; a year is 365 days), as
// retention periods are usually given.
type Duration time.Duration

// Long-duration units.
const (
	Day  = 24 * time.Hour
	Week = 7 * Day
	Year = 365 * Day
)

// ParseDuration reads a Duration.
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"d", Day}, {"w", Week}, {"y", Year}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil || v < 0 || v > int64(290*Year/u.unit) {
				return 0, fmt.Errorf("%q is not a duration (write e.g. 90s, 72h, 7d, 2w or 8y)", s)
			}
			return Duration(time.Duration(v) * u.unit), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (write e.g. 90s, 72h, 7d, 2w or 8y)", s)
	}
	return Duration(d), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// MarshalYAML writes the duration back in the shortest exact form.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// String writes d in years, weeks or days when it is a whole number of
// them, else as a Go duration.
func (d Duration) String() string {
	td := time.Duration(d)
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"y", Year}, {"w", Week}, {"d", Day}} {
		if td >= u.unit && td%u.unit == 0 {
			return strconv.FormatInt(int64(td/u.unit), 10) + u.suffix
		}
	}
	return td.String()
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
