package diskguard

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// fakeDisk is a SpaceFunc whose answer the test sets.
type fakeDisk struct {
	mu    sync.Mutex
	avail uint64
	total uint64
	err   error
}

func (d *fakeDisk) set(avail uint64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.avail, d.err = avail, err
}

func (d *fakeDisk) space(string) (Space, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return Space{}, d.err
	}
	return Space{Avail: d.avail, Total: d.total}, nil
}

func newFake(t *testing.T, cfg Config, avail, total uint64) (*Guard, *fakeDisk) {
	t.Helper()
	d := &fakeDisk{avail: avail, total: total}
	cfg.Dir = "/data"
	cfg.Space = d.space
	g, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return g, d
}

// step is one measurement (or trip) and what the guard must say after it.
type step struct {
	avail      uint64 // measured free bytes
	err        error  // measurement error instead
	trip       Level  // > LevelOK: call Trip(trip, tripWhy) instead of measuring
	tripWhy    string
	want       Level
	wantReason string // substring of the reason; "" means the reason is empty
}

func TestTransitions(t *testing.T) {
	enospc := &os.PathError{Op: "statfs", Path: "/secret/path", Err: syscall.ENOENT}
	tests := []struct {
		name  string
		cfg   Config
		total uint64
		steps []step
	}{
		{
			name:  "defaults: worse at once, better only past the margin",
			total: 100 * gib,
			steps: []step{
				{avail: 10 * gib, want: LevelOK},
				{avail: DefaultMinFreeBytes, want: LevelOK}, // at the floor is not below it
				{avail: DefaultMinFreeBytes - 1, want: LevelLow, wantReason: "disk space low: 1024.0 MiB free of 100.0 GiB, below the floor of 1.0 GiB"},
				{avail: 300 * mib, want: LevelLow},
				{avail: 255 * mib, want: LevelCritical, wantReason: "disk space critical: 255.0 MiB free of 100.0 GiB, below the hard floor of 256.0 MiB"},
				{avail: 256 * mib, want: LevelCritical, wantReason: "256.0 MiB free of 100.0 GiB, not yet back above the hard floor of 256.0 MiB with a margin of 16.0 MiB"},
				{avail: 271 * mib, want: LevelCritical},
				{avail: 272 * mib, want: LevelLow},
				{avail: 1*gib + 63*mib, want: LevelLow, wantReason: "not yet back above the floor of 1.0 GiB with a margin of 64.0 MiB"},
				{avail: 1*gib + 64*mib, want: LevelOK},
				{avail: 1*gib + 10*mib, want: LevelOK}, // above the floor: no margin going down
				{avail: 100 * mib, want: LevelCritical},
				{avail: 5 * gib, want: LevelOK}, // straight back up
			},
		},
		{
			name:  "fraction raises the floor on a large disk",
			cfg:   Config{MinFreeFraction: 0.05},
			total: 200 * gib,
			steps: []step{
				{avail: 11 * gib, want: LevelOK},
				{avail: 9 * gib, want: LevelLow, wantReason: "below the floor of 10.0 GiB"},
				{avail: 200 * mib, want: LevelCritical},
			},
		},
		{
			name:  "fraction below the byte floor changes nothing",
			cfg:   Config{MinFreeBytes: 64 * mib, HardMinFreeBytes: 16 * mib, MinFreeFraction: 0.01},
			total: 1 * gib,
			steps: []step{
				{avail: 65 * mib, want: LevelOK},
				{avail: 63 * mib, want: LevelLow, wantReason: "below the floor of 64.0 MiB"},
				{avail: 15 * mib, want: LevelCritical, wantReason: "below the hard floor of 16.0 MiB"},
			},
		},
		{
			name:  "floors switched off",
			cfg:   Config{MinFreeBytes: -1, HardMinFreeBytes: -1},
			total: 1 * gib,
			steps: []step{
				{avail: 0, want: LevelOK},
				{avail: 1, want: LevelOK},
			},
		},
		{
			name:  "a failed measurement is low, without the path",
			total: 100 * gib,
			steps: []step{
				{avail: 10 * gib, want: LevelOK},
				{err: enospc, want: LevelLow, wantReason: "free disk space of the data directory is unknown (no such file or directory)"},
				{avail: 100 * mib, want: LevelCritical},
				{err: enospc, want: LevelCritical}, // unknown never makes it better
				{avail: 10 * gib, want: LevelOK},
			},
		},
		{
			name:  "a trip is sticky and the worse reason wins",
			total: 100 * gib,
			steps: []step{
				{avail: 10 * gib, want: LevelOK},
				{trip: LevelLow, tripWhy: "broker write failed (no space left on device)", want: LevelLow, wantReason: "broker write failed"},
				{avail: 200 * mib, want: LevelCritical, wantReason: "disk space critical"},
				{avail: 10 * gib, want: LevelLow, wantReason: "broker write failed"},
				{trip: LevelCritical, tripWhy: "group log could not be repaired", want: LevelCritical, wantReason: "group log could not be repaired"},
				{trip: LevelLow, tripWhy: "later, milder", want: LevelCritical, wantReason: "group log could not be repaired"},
				{avail: 50 * gib, want: LevelCritical},
			},
		},
		{
			name:  "a trip below LevelLow still refuses input",
			total: 100 * gib,
			steps: []step{
				{trip: LevelOK, tripWhy: "odd caller", want: LevelLow, wantReason: "odd caller"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, d := newFake(t, tt.cfg, 100*gib, tt.total)
			ctx := context.Background()
			for i, s := range tt.steps {
				if s.trip != LevelOK || s.tripWhy != "" {
					g.Trip(s.trip, s.tripWhy)
				} else {
					d.set(s.avail, s.err)
					g.Check(ctx)
				}
				st := g.Status()
				if st.Level != s.want {
					t.Fatalf("step %d (%+v): level\n\tgot  %v (%q)\n\twant %v", i, s, st.Level, st.Reason, s.want)
				}
				switch {
				case s.wantReason == "" && st.Level == LevelOK && st.Reason != "":
					t.Errorf("step %d: reason %q at LevelOK, want none", i, st.Reason)
				case s.wantReason != "" && !strings.Contains(st.Reason, s.wantReason):
					t.Errorf("step %d: reason\n\tgot  %q\n\twant it to contain %q", i, st.Reason, s.wantReason)
				case st.Level != LevelOK && st.Reason == "":
					t.Errorf("step %d: level %v with no reason", i, st.Level)
				}
				if strings.Contains(st.Reason, "/secret/path") {
					t.Errorf("step %d: reason %q shows a path", i, st.Reason)
				}
				ok, why := g.OK()
				if ok != (st.Level == LevelOK) || why != st.Reason {
					t.Errorf("step %d: OK() = %v, %q; status %v, %q", i, ok, why, st.Level, st.Reason)
				}
				rok, rwhy := g.RouteOK()
				if rok != (st.Level < LevelCritical) || (!rok && rwhy != st.Reason) || (rok && rwhy != "") {
					t.Errorf("step %d: RouteOK() = %v, %q; status %v, %q", i, rok, rwhy, st.Level, st.Reason)
				}
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	good := func(string) (Space, error) { return Space{Avail: 10 * gib, Total: 20 * gib}, nil }
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means success
	}{
		{"defaults", Config{Dir: "/d", Space: good}, ""},
		{"no dir", Config{Space: good}, "Dir is required"},
		{"hard above floor", Config{Dir: "/d", Space: good, MinFreeBytes: 100 * mib}, "the hard floor (HardMinFreeBytes 268435456) is above the floor (MinFreeBytes 104857600)"},
		{"hard above floor, both set", Config{Dir: "/d", Space: good, MinFreeBytes: 10, HardMinFreeBytes: 11}, "is above the floor"},
		{"hard equal to floor", Config{Dir: "/d", Space: good, MinFreeBytes: 10, HardMinFreeBytes: 10}, ""},
		{"no byte floor, default hard floor", Config{Dir: "/d", Space: good, MinFreeBytes: -1, MinFreeFraction: 0.1}, ""},
		{"fraction 1", Config{Dir: "/d", Space: good, MinFreeFraction: 1}, "MinFreeFraction 1 must be at least 0 and below 1"},
		{"fraction negative", Config{Dir: "/d", Space: good, MinFreeFraction: -0.1}, "MinFreeFraction"},
		{"interval negative", Config{Dir: "/d", Space: good, Interval: -time.Second}, "Interval -1s is negative"},
		{"cannot measure", Config{Dir: "/d", Space: func(string) (Space, error) { return Space{}, errors.New("unsupported") }}, "measuring free space of /d: unsupported"},
		{"statfs on a missing directory", Config{Dir: "/nonexistent/carehub/data"}, "no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New: %v, want success", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New error\n\tgot  %v\n\twant one containing %q", err, tt.want)
			}
		})
	}
}

func TestStartsAtMeasuredLevel(t *testing.T) {
	g, _ := newFake(t, Config{}, 100*mib, 10*gib)
	if st := g.Status(); st.Level != LevelCritical || st.Space.Avail != 100*mib || st.Floor != DefaultMinFreeBytes || st.HardFloor != DefaultHardMinFreeBytes || st.Measured.IsZero() {
		t.Fatalf("status after New = %+v, want critical with the measurement and default floors", st)
	}
}

func TestStatfs(t *testing.T) {
	sp, err := Statfs(t.TempDir())
	if err != nil {
		t.Fatalf("Statfs: %v", err)
	}
	if sp.Total == 0 || sp.Avail > sp.Total {
		t.Fatalf("Statfs = %+v, want a non-empty filesystem with Avail <= Total", sp)
	}
	if _, err := Statfs("/nonexistent/carehub"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Statfs of a missing directory: %v, want ErrNotExist", err)
	}
}

func TestChanged(t *testing.T) {
	g, d := newFake(t, Config{}, 10*gib, 100*gib)
	ctx := context.Background()
	ch := g.Changed()
	d.set(9*gib, nil)
	g.Check(ctx) // same level: no wake-up
	select {
	case <-ch:
		t.Fatal("Changed closed without a level change")
	default:
	}
	d.set(500*mib, nil)
	g.Check(ctx)
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed on OK -> low")
	}
	ch = g.Changed()
	g.Trip(LevelLow, "write failed")
	select {
	case <-ch:
		t.Fatal("Changed closed on a trip that did not change the level")
	default:
	}
	g.Trip(LevelCritical, "worse")
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed on a trip to critical")
	}
}

// TestRunResumesByItself drives Run with a 1 ms interval: the guard goes
// low when space goes and comes back by itself when it returns.
func TestRunResumesByItself(t *testing.T) {
	g, d := newFake(t, Config{Interval: time.Millisecond}, 10*gib, 100*gib)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()

	waitLevel := func(want Level) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			ch := g.Changed()
			if st := g.Status(); st.Level == want {
				return
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("level stayed %v, want %v", g.Status().Level, want)
			}
		}
	}
	d.set(500*mib, nil)
	waitLevel(LevelLow)
	d.set(10*gib, nil)
	waitLevel(LevelOK)

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	// A done ctx measures nothing.
	d.set(1, nil)
	if st := g.Check(ctx); st.Level != LevelOK {
		t.Fatalf("Check with a done ctx changed the level to %v", st.Level)
	}
}

func TestLogsTransitions(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	g, d := newFake(t, Config{Logger: zap.New(core)}, 10*gib, 100*gib)
	ctx := context.Background()
	d.set(500*mib, nil)
	g.Check(ctx)
	d.set(400*mib, nil)
	g.Check(ctx) // same level: not logged again
	d.set(10*gib, nil)
	g.Check(ctx)
	g.Trip(LevelLow, "broker write failed (no space left on device)")
	g.Trip(LevelLow, "and again") // not logged: no worse
	var got []string
	for _, e := range logs.All() {
		got = append(got, fmt.Sprintf("%s %s %v", e.Level, e.Message, e.ContextMap()["to"]))
	}
	want := []string{
		"warn disk guard level worse low",
		"info disk guard level better ok",
		"error disk guard tripped until restart <nil>",
		"warn disk guard level worse low",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("logs\n\tgot  %q\n\twant %q", got, want)
	}
}

// TestConcurrent is for the race detector: measurements, trips and readers
// at once.
func TestConcurrent(t *testing.T) {
	g, d := newFake(t, Config{}, 10*gib, 100*gib)
	var n atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				switch (i + w) % 4 {
				case 0:
					d.set(uint64(n.Add(1)%3)*gib, nil)
					g.Check(context.Background())
				case 1:
					g.OK()
					g.RouteOK()
				case 2:
					<-closedOr(g.Changed())
				case 3:
					if i == 199 {
						g.Trip(LevelLow, "late trip")
					}
				}
			}
		}()
	}
	wg.Wait()
	if ok, _ := g.OK(); ok {
		t.Fatal("OK after a trip")
	}
}

// closedOr returns ch if it is closed, else a closed channel: a reader
// that must not block.
func closedOr(ch <-chan struct{}) <-chan struct{} {
	select {
	case <-ch:
		return ch
	default:
		c := make(chan struct{})
		close(c)
		return c
	}
}

func TestFormatBytes(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{256 * mib, "256.0 MiB"},
		{gib - 1, "1024.0 MiB"},
		{5 * gib, "5.0 GiB"},
		{3 << 40, "3.0 TiB"},
		{^uint64(0), "16.0 EiB"},
		{kib * 1000, "1000.0 KiB"},
	}
	for _, tt := range tests {
		if got := formatBytes(tt.in); got != tt.want {
			t.Errorf("formatBytes(%d):\n\tgot  %q\n\twant %q", tt.in, got, tt.want)
		}
	}
}

func TestLevelString(t *testing.T) {
	for l, want := range map[Level]string{LevelOK: "ok", LevelLow: "low", LevelCritical: "critical", Level(7): "Level(7)"} {
		if got := l.String(); got != want {
			t.Errorf("Level(%d).String() = %q, want %q", int(l), got, want)
		}
	}
}
