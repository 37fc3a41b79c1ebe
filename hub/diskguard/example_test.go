package diskguard_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/carehub/carehub/hub/diskguard"
)

// A guard with a 64 MiB floor and a 16 MiB hard floor, fed made-up
// measurements instead of statfs.
func Example() {
	free := uint64(100 << 20)
	g, err := diskguard.New(diskguard.Config{
		Dir:              "/var/lib/carehub",
		MinFreeBytes:     64 << 20,
		HardMinFreeBytes: 16 << 20,
		Space: func(string) (diskguard.Space, error) {
			return diskguard.Space{Avail: free, Total: 1 << 30}, nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	for _, mib := range []uint64{100, 60, 10, 60, 100} {
		free = mib << 20
		g.Check(ctx)
		ok, why := g.OK()
		route, _ := g.RouteOK()
		fmt.Println(strings.TrimRight(fmt.Sprintf("%3d MiB free: accept=%-5v route=%-5v %s", mib, ok, route, why), " "))
	}
	g.Trip(diskguard.LevelLow, "embedded broker write failed (no space left on device)")
	ok, why := g.OK()
	fmt.Printf("after a trip: accept=%v %s\n", ok, why)
	// Output:
	// 100 MiB free: accept=true  route=true
	//  60 MiB free: accept=false route=true  data directory disk space low: 60.0 MiB free of 1.0 GiB, below the floor of 64.0 MiB
	//  10 MiB free: accept=false route=false data directory disk space critical: 10.0 MiB free of 1.0 GiB, below the hard floor of 16.0 MiB
	//  60 MiB free: accept=false route=true  data directory disk space low: 60.0 MiB free of 1.0 GiB, below the floor of 64.0 MiB
	// 100 MiB free: accept=true  route=true
	// after a trip: accept=false embedded broker write failed (no space left on device)
}
