// Package diskguard watches the free space of the filesystem that holds a
// data directory and says when the hub must stop taking input, and when it
// must stop routing and delivering too, before the embedded broker meets a
// full disk. It is carehub's equivalent of Kafka taking a log directory
// offline, except that it acts before the first failed write rather than
// after it.
//
// # Usage
//
//	g, err := diskguard.New(diskguard.Config{Dir: dataDir, Logger: log})
//	if err != nil {
//		return err // invalid floors, or free space cannot be read at all
//	}
//	go g.Run(ctx) // measures every Interval until ctx ends
//
//	if ok, reason := g.OK(); !ok {
//		// refuse input: 503 with Retry-After, HL7 AR, /readyz false, with reason
//	}
//	if ok, reason := g.RouteOK(); !ok {
//		// below the hard floor: stop routing and deliveries as well
//	}
//
// # Levels
//
// A Guard is at one of three levels (see Level). Below the floor
// (Config.MinFreeBytes, raised to Config.MinFreeFraction of the filesystem
// when that is larger) it is LevelLow: new input is refused, while routing
// and deliveries go on, so what was accepted still reaches its recipients.
// Below the hard floor (Config.HardMinFreeBytes) it is LevelCritical:
// routing and deliveries stop as well, so the broker keeps room for the
// offset commits of deliveries in flight, its own group-log compaction and a
// clean shutdown. It returns to a better level by itself once free space is
// back above a floor by a margin of a sixteenth of that floor, so a disk
// hovering at a floor does not flap between levels.
//
// Trip records a failure that a measurement cannot see, such as a write
// error reported by the broker. A trip is sticky: the level never goes back
// below the tripped level until the process restarts (fail safe), and the
// reason names the failure.
//
// # Concurrency
//
// All methods of a Guard are safe for concurrent use. Check and Run call the
// space function one at a time. A reader that needs to act on changes waits
// on Changed rather than polling.
//
// # Testing
//
// Config.Space replaces the real measurement (Statfs), so a test drives the
// guard through every level without filling a disk.
package diskguard

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Defaults of Config.
const (
	// DefaultMinFreeBytes is the default floor: 1 GiB. Between the moment
	// free space crosses the floor and the moment the hub stops writing,
	// the following still land on the disk: requests already accepted
	// (each at most the HTTP body limit, 1 MiB by default), the router's
	// work on the backlog of accepted events (audit records and
	// per-recipient records; a full-disk run saw the router write 15 MB
	// in 25 s), up to one measurement interval of input at full speed
	// (about 60 MB/s measured on the development VM), and the broker's
	// group log, which grows to 10 MiB before kfake compacts it by writing
	// a compacted copy beside it. 1 GiB holds all of that many times over
	// and is small on any server disk.
	DefaultMinFreeBytes = 1 << 30
	// DefaultHardMinFreeBytes is the default hard floor: 256 MiB. Below it
	// routing and deliveries stop too; what is left holds the offset
	// commits of deliveries in flight, a compaction of the group log (10
	// MiB), the broker's shutdown state and filesystem metadata, with
	// room to spare for filesystems that report space they cannot give
	// (ext4 delayed allocation, btrfs metadata).
	DefaultHardMinFreeBytes = 256 << 20
	// DefaultInterval is how often Run measures free space. A statfs call
	// costs microseconds.
	DefaultInterval = time.Second
)

// Level says what the hub may do.
type Level int

const (
	// LevelOK: accept, route and deliver.
	LevelOK Level = iota
	// LevelLow: refuse new input; keep routing and delivering what was
	// accepted.
	LevelLow
	// LevelCritical: refuse new input and stop routing and deliveries.
	LevelCritical
)

func (l Level) String() string {
	switch l {
	case LevelOK:
		return "ok"
	case LevelLow:
		return "low"
	case LevelCritical:
		return "critical"
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// Space is one measurement of a filesystem.
type Space struct {
	// Avail is the number of bytes an unprivileged process may still
	// write (statfs f_bavail): space reserved for root does not count.
	Avail uint64
	// Total is the size of the filesystem in bytes.
	Total uint64
}

// SpaceFunc measures the filesystem holding dir. Statfs is the real one.
type SpaceFunc func(dir string) (Space, error)

// Config configures a Guard.
type Config struct {
	// Dir is the directory whose filesystem is watched. Required.
	Dir string

	// MinFreeBytes is the floor: below it the guard is LevelLow. 0 means
	// DefaultMinFreeBytes; negative means no byte floor (MinFreeFraction
	// alone, or none).
	MinFreeBytes int64

	// MinFreeFraction raises the floor to this fraction of the
	// filesystem's size when that is larger than MinFreeBytes, e.g. 0.05
	// for 5%. 0 means none. Must be in [0, 1).
	MinFreeFraction float64

	// HardMinFreeBytes is the hard floor: below it the guard is
	// LevelCritical. 0 means DefaultHardMinFreeBytes; negative means none.
	// It must not be above MinFreeBytes.
	HardMinFreeBytes int64

	// Interval is how often Run measures. 0 means DefaultInterval.
	Interval time.Duration

	// Space measures the filesystem. Nil means Statfs.
	Space SpaceFunc

	// Logger receives level changes (warnings and errors when worse, info
	// when better). Nil means no logging.
	Logger *zap.Logger
}

// Status is a Guard's state.
type Status struct {
	Level Level
	// Reason says why Level is not LevelOK, in words safe to show to a
	// client and to log (sizes and error classes, no paths). Empty at
	// LevelOK.
	Reason string
	// Tripped is true once Trip was called.
	Tripped bool
	// Space is the last successful measurement (zero before the first).
	Space Space
	// Floor and HardFloor are the floors in bytes applied to the last
	// measurement (0 when there is none).
	Floor, HardFloor uint64
	// Measured is when Space was measured.
	Measured time.Time
}

// Guard watches free space against the floors. Create it with New.
type Guard struct {
	dir       string
	minFree   int64 // < 0: none
	fraction  float64
	hardFree  int64 // < 0: none
	interval  time.Duration
	space     SpaceFunc
	log       *zap.Logger
	checkMu   sync.Mutex // serialises Check, so measurements apply in order
	mu        sync.Mutex // guards the fields below
	spaceLvl  Level
	spaceWhy  string
	tripLvl   Level
	tripWhy   string
	tripped   bool
	last      Space
	floor     uint64
	hardFloor uint64
	measured  time.Time
	level     Level         // max(spaceLvl, tripLvl), as last published
	changed   chan struct{} // closed and replaced when level changes
}

// New validates cfg, applies its defaults and measures once. It fails when
// the floors are invalid or the first measurement fails (for example, the
// directory does not exist or the platform cannot measure free space).
func New(cfg Config) (*Guard, error) {
	var errs []error
	if cfg.Dir == "" {
		errs = append(errs, errors.New("diskguard: Dir is required"))
	}
	minFree, hardFree := cfg.MinFreeBytes, cfg.HardMinFreeBytes
	if minFree == 0 {
		minFree = DefaultMinFreeBytes
	}
	if hardFree == 0 {
		hardFree = DefaultHardMinFreeBytes
	}
	if math.IsNaN(cfg.MinFreeFraction) || cfg.MinFreeFraction < 0 || cfg.MinFreeFraction >= 1 {
		errs = append(errs, fmt.Errorf("diskguard: MinFreeFraction %v must be at least 0 and below 1", cfg.MinFreeFraction))
	}
	if minFree > 0 && hardFree > minFree {
		errs = append(errs, fmt.Errorf("diskguard: the hard floor (HardMinFreeBytes %d) is above the floor (MinFreeBytes %d): input must stop before routing does", hardFree, minFree))
	}
	if cfg.Interval < 0 {
		errs = append(errs, fmt.Errorf("diskguard: Interval %v is negative", cfg.Interval))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	g := &Guard{
		dir:      cfg.Dir,
		minFree:  minFree,
		fraction: cfg.MinFreeFraction,
		hardFree: hardFree,
		interval: cfg.Interval,
		space:    cfg.Space,
		log:      cfg.Logger,
		changed:  make(chan struct{}),
	}
	if g.interval == 0 {
		g.interval = DefaultInterval
	}
	if g.space == nil {
		g.space = Statfs
	}
	if g.log == nil {
		g.log = zap.NewNop()
	}
	// The first measurement must work: a guard that can never measure
	// would refuse input forever, and that is a configuration error.
	if _, err := g.space(g.dir); err != nil {
		return nil, fmt.Errorf("diskguard: measuring free space of %s: %w", g.dir, err)
	}
	g.Check(context.Background())
	return g, nil
}

// Run measures every Interval until ctx ends, then returns ctx's error.
func (g *Guard) Run(ctx context.Context) error {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			g.Check(ctx)
		}
	}
}

// Check measures free space now, updates the level and returns the status.
// A failed measurement counts as below the floor (fail safe): the reason
// says that free space is unknown. With ctx already done it measures
// nothing and returns the current status.
func (g *Guard) Check(ctx context.Context) Status {
	if ctx.Err() != nil {
		return g.Status()
	}
	g.checkMu.Lock()
	defer g.checkMu.Unlock()
	sp, err := g.space(g.dir)
	now := time.Now()

	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.spaceLvl = max(g.spaceLvl, LevelLow)
		g.spaceWhy = "free disk space of the data directory is unknown (" + ErrClass(err) + ")"
	} else {
		g.last, g.measured = sp, now
		g.floor, g.hardFloor = g.floors(sp.Total)
		g.spaceLvl, g.spaceWhy = g.spaceLevel(sp)
	}
	g.publishLocked()
	return g.statusLocked()
}

// floors returns the floor and the hard floor for a filesystem of total
// bytes.
func (g *Guard) floors(total uint64) (floor, hard uint64) {
	if g.minFree > 0 {
		floor = uint64(g.minFree)
	}
	if f := uint64(g.fraction * float64(total)); f > floor {
		floor = f
	}
	if g.hardFree > 0 {
		hard = uint64(g.hardFree)
	}
	return floor, hard
}

// spaceLevel returns the level sp calls for, given the current level: a
// worse level is entered as soon as free space is below its floor, a better
// one only once free space is above the floor by a sixteenth of it.
//
// g.mu must be held.
func (g *Guard) spaceLevel(sp Space) (Level, string) {
	levelAt := func(margin bool) Level {
		floor, hard := g.floor, g.hardFloor
		if margin {
			floor += floor / 16
			hard += hard / 16
		}
		switch {
		case sp.Avail < hard:
			return LevelCritical
		case sp.Avail < floor:
			return LevelLow
		}
		return LevelOK
	}
	lvl := levelAt(false)
	if lvl < g.spaceLvl {
		lvl = min(g.spaceLvl, levelAt(true))
	}
	switch lvl {
	case LevelCritical:
		if sp.Avail >= g.hardFloor {
			return lvl, fmt.Sprintf("data directory disk space critical: %s free of %s, not yet back above the hard floor of %s with a margin of %s",
				formatBytes(sp.Avail), formatBytes(sp.Total), formatBytes(g.hardFloor), formatBytes(g.hardFloor/16))
		}
		return lvl, fmt.Sprintf("data directory disk space critical: %s free of %s, below the hard floor of %s",
			formatBytes(sp.Avail), formatBytes(sp.Total), formatBytes(g.hardFloor))
	case LevelLow:
		if sp.Avail >= g.floor {
			return lvl, fmt.Sprintf("data directory disk space low: %s free of %s, not yet back above the floor of %s with a margin of %s",
				formatBytes(sp.Avail), formatBytes(sp.Total), formatBytes(g.floor), formatBytes(g.floor/16))
		}
		return lvl, fmt.Sprintf("data directory disk space low: %s free of %s, below the floor of %s",
			formatBytes(sp.Avail), formatBytes(sp.Total), formatBytes(g.floor))
	}
	return LevelOK, ""
}

// Trip sets the guard to at least level until the process restarts, with
// reason (safe to show and log, like Status.Reason). Levels below LevelLow
// are raised to LevelLow. A later trip counts (and is logged) only if its
// level is worse than the earlier one's.
func (g *Guard) Trip(level Level, reason string) {
	level = max(level, LevelLow)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tripped && level <= g.tripLvl {
		// Already tripped as badly: a disk that keeps failing writes
		// must not flood the log.
		return
	}
	g.tripped, g.tripLvl, g.tripWhy = true, level, reason
	g.log.Error("disk guard tripped until restart",
		zap.Stringer("level", level), zap.String("reason", reason))
	g.publishLocked()
}

// publishLocked recomputes the level, logs a change and wakes waiters.
//
// g.mu must be held.
func (g *Guard) publishLocked() {
	lvl := max(g.spaceLvl, g.tripLvl)
	if lvl == g.level {
		return
	}
	prev := g.level
	g.level = lvl
	close(g.changed)
	g.changed = make(chan struct{})
	st := g.statusLocked()
	if lvl > prev {
		g.log.Warn("disk guard level worse", zap.Stringer("from", prev), zap.Stringer("to", lvl), zap.String("reason", st.Reason))
	} else {
		g.log.Info("disk guard level better", zap.Stringer("from", prev), zap.Stringer("to", lvl), zap.String("reason", st.Reason),
			zap.Uint64("avail_bytes", st.Space.Avail))
	}
}

// statusLocked returns the status. g.mu must be held.
func (g *Guard) statusLocked() Status {
	st := Status{
		Level:     g.level,
		Tripped:   g.tripped,
		Space:     g.last,
		Floor:     g.floor,
		HardFloor: g.hardFloor,
		Measured:  g.measured,
	}
	switch {
	case g.level == LevelOK:
	case g.tripped && g.tripLvl >= g.spaceLvl:
		st.Reason = g.tripWhy
	default:
		st.Reason = g.spaceWhy
	}
	return st
}

// Status returns the state as of the last measurement or trip.
func (g *Guard) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.statusLocked()
}

// OK reports whether the hub may accept input (LevelOK), and if not, why.
func (g *Guard) OK() (bool, string) {
	st := g.Status()
	return st.Level == LevelOK, st.Reason
}

// RouteOK reports whether the hub may route and deliver (any level below
// LevelCritical), and if not, why.
func (g *Guard) RouteOK() (bool, string) {
	st := g.Status()
	if st.Level >= LevelCritical {
		return false, st.Reason
	}
	return true, ""
}

// Changed returns a channel that is closed when the level next changes.
// Take a new channel after each change.
func (g *Guard) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// ErrClass returns the class of err in words safe to show and log: the text
// of a system error number it wraps (such as "no space left on device"), or
// its Go type. It never includes the path or value that an *os.PathError's
// text would carry.
func ErrClass(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return fmt.Sprintf("%T", err)
}

// formatBytes renders n in binary units with one decimal, e.g. "1.0 GiB".
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
