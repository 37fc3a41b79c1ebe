package diskguard

import (
	"fmt"
	"syscall"
)

// Statfs measures the filesystem holding dir with statfs(2).
func Statfs(dir string) (Space, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return Space{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	// Block counts are in units of the fragment size; kernels before
	// 2.6 leave it 0 and count in the block size.
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	return Space{Avail: st.Bavail * unit, Total: st.Blocks * unit}, nil
}
