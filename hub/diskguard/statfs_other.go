//go:build !linux && !darwin && !freebsd

package diskguard

import (
	"fmt"
	"runtime"
)

// Statfs fails on this platform: carehub measures free space on Linux,
// macOS and FreeBSD only. Set Config.Space to measure elsewhere.
func Statfs(dir string) (Space, error) {
	return Space{}, fmt.Errorf("measuring free space is not supported on %s", runtime.GOOS)
}
