package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/diskguard"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// frame encodes data as one state-log entry, as kfake's writeEntry does.
// TestStateLogFramingMatchesKfake checks the parser against kfake's own
// files, and this encoder against the parser.
func frame(data string) []byte {
	b := make([]byte, stateLogHeader+len(data))
	binary.LittleEndian.PutUint32(b[0:], uint32(2+len(data)))
	binary.LittleEndian.PutUint16(b[8:], 1)
	copy(b[stateLogHeader:], data)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:], crc32.MakeTable(crc32.Castagnoli)))
	return b
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestStateLogFramingMatchesKfake reads the groups.log kfake writes while
// running (appended entries) and after Close (a compacted rewrite): the
// parser must take every byte of both as intact entries.
func TestStateLogFramingMatchesKfake(t *testing.T) {
	dir := t.TempDir()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DataDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := EnsureTopics(testCtx(t), c.ListenAddrs(), []TopicSpec{{Name: "events", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := simpleCommit(c.ListenAddrs(), fmt.Sprintf("g%d", i%3), "events", int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A group with members writes metadata entries too.
	commitOffset(t, c.ListenAddrs(), "members", "events", 7)

	check := func(when string) {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, groupsLog))
		if err != nil {
			t.Fatal(err)
		}
		if valid := validStateLogPrefix(raw); valid != len(raw) || len(raw) == 0 {
			t.Fatalf("%s: parser took %d of %d bytes of kfake's groups.log:\n%q", when, valid, len(raw), raw)
		}
		if !bytes.Contains(raw, frame(`{"type":"commit","g":"g0","t":"events","o":3`)[stateLogHeader:]) {
			t.Fatalf("%s: groups.log lacks the entry of g0's commit of 3:\n%q", when, raw)
		}
	}
	check("running")
	c.Close()
	check("after Close")
}

func TestRepairStateLog(t *testing.T) {
	e1 := frame(`{"type":"commit","g":"g1","o":10}`)
	e2 := frame(`{"type":"commit","g":"g2","o":30}`)
	e3 := frame(`{"type":"commit","g":"g1","o":40}`)
	badCRC := append([]byte(nil), e1...)
	badCRC[len(badCRC)-1] ^= 0xff
	zeroLen := make([]byte, stateLogHeader+4) // length 0: not an entry, not a torn one
	tests := []struct {
		name    string
		file    []byte // nil: no file
		want    []byte // file afterwards
		wantCut int64
		wantErr error
	}{
		{name: "no file", file: nil, want: nil},
		{name: "empty", file: []byte{}, want: []byte{}},
		{name: "intact", file: join(e1, e2), want: join(e1, e2)},
		{name: "torn data after entries", file: join(e1, e2, e3[:16]), want: join(e1, e2), wantCut: 16},
		{name: "torn header after entries", file: join(e1, e3[:5]), want: e1, wantCut: 5},
		{name: "entries appended after a torn one (old kfake)", file: join(e1, e2[:16], e3), want: e1, wantCut: int64(16 + len(e3))},
		{name: "bad checksum after entries", file: join(e1, badCRC), want: e1, wantCut: int64(len(badCRC))},
		{name: "torn first entry", file: e1[:20], want: []byte{}, wantCut: 20},
		{name: "torn first header", file: e1[:3], want: []byte{}, wantCut: 3},
		{name: "unrecognised: first entry complete but bad checksum", file: join(badCRC, e2), want: join(badCRC, e2), wantErr: errUnrecognisedStateLog},
		{name: "unrecognised: zero length", file: zeroLen, want: zeroLen, wantErr: errUnrecognisedStateLog},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), groupsLog)
			if tt.file != nil {
				if err := os.WriteFile(path, tt.file, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cut, err := repairStateLog(path)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("repairStateLog error\n\tgot  %v\n\twant %v", err, tt.wantErr)
			}
			if cut != tt.wantCut {
				t.Errorf("cut\n\tgot  %d\n\twant %d", cut, tt.wantCut)
			}
			got, err := os.ReadFile(path)
			if tt.file == nil {
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("repair created %s: %v", path, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("file afterwards\n\tgot  %q\n\twant %q", got, tt.want)
			}
		})
	}
}

func TestStartEmbeddedRefusesUnrecognisedStateLog(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "kafka"), 0o700); err != nil {
		t.Fatal(err)
	}
	e1 := frame(`{"type":"commit"}`)
	e1[len(e1)-1] ^= 0xff
	if err := os.WriteFile(filepath.Join(dir, "kafka", pidsLog), e1, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0", FreeSpace: plentyOfSpace})
	if !errors.Is(err, errUnrecognisedStateLog) || !strings.Contains(err.Error(), "pids.log: its first bytes are neither") {
		t.Fatalf("StartEmbedded error = %v, want one naming pids.log as unrecognised", err)
	}
	// The lock was released.
	if e, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0", FreeSpace: plentyOfSpace}); !errors.Is(err, errUnrecognisedStateLog) {
		if err == nil {
			e.Close()
		}
		t.Fatalf("second StartEmbedded error = %v, want the same refusal (not a lock conflict)", err)
	}
}

func TestKfakeHook(t *testing.T) {
	efbig := &os.PathError{Op: "write", Path: "/data/kafka/groups.log", Err: syscall.EFBIG}
	enospc := &os.PathError{Op: "write", Path: "/data/kafka/x", Err: syscall.ENOSPC}
	intact := frame(`{"type":"commit","g":"g1","o":10}`)
	torn := join(intact, frame(`{"type":"commit","g":"g1","o":20}`)[:16])
	unrecognised := append([]byte(nil), intact...)
	unrecognised[len(unrecognised)-1] ^= 0xff
	tests := []struct {
		name       string
		level      kfake.LogLevel
		format     string
		args       []any
		groupsLog  []byte
		want       diskguard.Level
		wantReason string
		wantLog    []byte // groups.log afterwards
	}{
		{
			name: "torn group entry is cut", level: kfake.LogLevelWarn,
			format: "persist group entry write: %v", args: []any{efbig}, groupsLog: torn,
			want: diskguard.LevelLow, wantReason: "the embedded broker could not write to its data directory (file too large)", wantLog: intact,
		},
		{
			name: "failed sync after a whole entry: nothing to cut", level: kfake.LogLevelWarn,
			format: "persist group entry write: %v", args: []any{enospc}, groupsLog: intact,
			want: diskguard.LevelLow, wantReason: "(no space left on device)", wantLog: intact,
		},
		{
			name: "torn entry that cannot be cut", level: kfake.LogLevelWarn,
			format: "persist group entry write: %v", args: []any{enospc}, groupsLog: unrecognised,
			want: diskguard.LevelCritical, wantReason: "(no space left on device); its groups.log could not be repaired", wantLog: unrecognised,
		},
		{
			name: "segment write (kfake truncates it itself)", level: kfake.LogLevelWarn,
			format: "persist batch %s-%d: %v", args: []any{"events", int32(0), enospc}, groupsLog: torn,
			want: diskguard.LevelLow, wantReason: "(no space left on device)", wantLog: torn,
		},
		{
			name: "state file", level: kfake.LogLevelWarn,
			format: "persist %s: %v", args: []any{"topics", errors.New("short write")},
			want: diskguard.LevelLow, wantReason: "could not write to its data directory (*errors.errorString)",
		},
		{
			name: "shutdown", level: kfake.LogLevelError,
			format: "persist to disk: %v", args: []any{enospc},
			want: diskguard.LevelLow, wantReason: "(no space left on device)",
		},
		{
			name: "not a write failure", level: kfake.LogLevelWarn,
			format: "OffsetCommit STALE: group=%s member=%s reqEpoch=%d memberEpoch=%d", args: []any{"g", "m", 1, 2},
			want: diskguard.LevelOK,
		},
		{
			name: "info level is dropped", level: kfake.LogLevelInfo,
			format: "persist group entry write: %v", args: []any{enospc}, groupsLog: torn,
			want: diskguard.LevelOK, wantLog: torn,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, groupsLog)
			if tt.groupsLog != nil {
				if err := os.WriteFile(path, tt.groupsLog, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			g, err := diskguard.New(diskguard.Config{Dir: dir, Space: plentyOfSpace})
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zap.DebugLevel)
			kfakeHook{log: zap.New(core), dataDir: dir, guard: g}.Logf(tt.level, tt.format, tt.args...)
			st := g.Status()
			if st.Level != tt.want || !strings.Contains(st.Reason, tt.wantReason) {
				t.Errorf("guard\n\tgot  %v %q\n\twant %v containing %q", st.Level, st.Reason, tt.want, tt.wantReason)
			}
			if strings.Contains(st.Reason, "/data") {
				t.Errorf("reason %q shows a path", st.Reason)
			}
			if tt.level == kfake.LogLevelInfo && logs.Len() != 0 {
				t.Errorf("info-level output forwarded: %v", logs.All())
			}
			if tt.level != kfake.LogLevelInfo && logs.FilterMessage(fmt.Sprintf(tt.format, tt.args...)).Len() != 1 {
				t.Errorf("kfake's message not forwarded; logged %v", logs.All())
			}
			if tt.wantLog != nil {
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tt.wantLog) {
					t.Errorf("groups.log afterwards\n\tgot  %q\n\twant %q", got, tt.wantLog)
				}
			}
		})
	}
}

// TestKfakeWriteFailureFormats checks that the format strings the hook
// acts on are still what kfake logs, so a kfake upgrade that rewords them
// fails here rather than silently disarming the hook.
func TestKfakeWriteFailureFormats(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/twmb/franz-go/pkg/kfake").Output()
	if err != nil {
		t.Fatalf("locating kfake's source: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("kfake source in %s: %v", dir, err)
	}
	var src strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(b)
	}
	for _, p := range kfakeWriteFailures {
		if !strings.Contains(src.String(), `, "`+p) {
			t.Errorf("kfake no longer logs a message starting %q", p)
		}
	}
	for f := range tornLogFormats {
		if !strings.Contains(src.String(), `Logf(LogLevelWarn, "`+f+`"`) {
			t.Errorf("kfake no longer logs %q at warning level", f)
		}
	}
}

func TestEmbeddedDiskGuard(t *testing.T) {
	var avail atomic.Uint64
	avail.Store(10 << 30)
	space := func(string) (diskguard.Space, error) {
		return diskguard.Space{Avail: avail.Load(), Total: 100 << 30}, nil
	}
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{
		DataDir: t.TempDir(), Addr: "127.0.0.1:0",
		MinFreeBytes: 64 << 20, HardMinFreeBytes: 16 << 20, DiskCheckInterval: time.Millisecond, FreeSpace: space,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	g := e.DiskGuard()
	if st := g.Status(); st.Level != diskguard.LevelOK || st.Floor != 64<<20 || st.HardFloor != 16<<20 {
		t.Fatalf("status = %+v, want OK with the configured floors", st)
	}
	waitLevel := func(want diskguard.Level) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			ch := g.Changed()
			if g.Status().Level == want {
				return
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("guard level stayed %v, want %v", g.Status().Level, want)
			}
		}
	}
	avail.Store(32 << 20)
	waitLevel(diskguard.LevelLow)
	avail.Store(1 << 20)
	waitLevel(diskguard.LevelCritical)
	avail.Store(10 << 30)
	waitLevel(diskguard.LevelOK)

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// The guard's measurements stopped with Close.
	avail.Store(1)
	if st := g.Status(); st.Level != diskguard.LevelOK {
		t.Fatalf("status after Close = %v", st.Level)
	}
}

func TestStartEmbeddedDiskGuardValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  EmbeddedConfig
		want string
	}{
		{"hard floor above floor", EmbeddedConfig{MinFreeBytes: 1 << 20, HardMinFreeBytes: 2 << 20, FreeSpace: plentyOfSpace}, "the hard floor (HardMinFreeBytes 2097152) is above the floor (MinFreeBytes 1048576)"},
		{"default hard floor above a small floor", EmbeddedConfig{MinFreeBytes: 1 << 20, FreeSpace: plentyOfSpace}, "is above the floor"},
		{"fraction", EmbeddedConfig{MinFreeFraction: 2, FreeSpace: plentyOfSpace}, "MinFreeFraction 2 must be at least 0 and below 1"},
		{"unmeasurable", EmbeddedConfig{FreeSpace: func(string) (diskguard.Space, error) { return diskguard.Space{}, syscall.ENOSYS }}, "function not implemented"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.cfg.DataDir, tt.cfg.Addr = dir, "127.0.0.1:0"
			e, err := StartEmbedded(context.Background(), tt.cfg)
			if err == nil {
				e.Close()
				t.Fatalf("StartEmbedded succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("StartEmbedded error\n\tgot  %v\n\twant one containing %q", err, tt.want)
			}
			// The lock was released.
			startTest(t, dir).Close()
		})
	}
}

// TestStartBelowFloor: a broker starts on a nearly full disk (so the hub
// can still drain what it holds); the guard says why it refuses input.
func TestStartBelowFloor(t *testing.T) {
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{
		DataDir: t.TempDir(), Addr: "127.0.0.1:0",
		FreeSpace: func(string) (diskguard.Space, error) { return diskguard.Space{Avail: 300 << 20, Total: 10 << 30}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ok, why := e.DiskGuard().OK()
	want := "data directory disk space low: 300.0 MiB free of 10.0 GiB, below the floor of 1.0 GiB"
	if ok || why != want {
		t.Fatalf("OK() = %v, %q; want false, %q", ok, why, want)
	}
	if ok, _ := e.DiskGuard().RouteOK(); !ok {
		t.Fatal("RouteOK false above the hard floor")
	}
}

// FuzzValidStateLogPrefix: on any bytes the parser stops at an entry
// boundary, and an entry appended there is taken whole.
func FuzzValidStateLogPrefix(f *testing.F) {
	e1 := frame(`{"type":"commit","g":"g1","t":"events","o":10}`)
	e2 := frame(`{"type":"meta","g":"g1","gen":3}`)
	f.Add(join(e1, e2))
	f.Add(join(e1, e2[:16], e1))
	f.Add(e1[:9])
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, raw []byte) {
		valid := validStateLogPrefix(raw)
		if valid < 0 || valid > len(raw) {
			t.Fatalf("valid prefix %d of %d bytes", valid, len(raw))
		}
		if again := validStateLogPrefix(raw[:valid]); again != valid {
			t.Fatalf("prefix of %d bytes parses to %d", valid, again)
		}
		next := join(raw[:valid:valid], e1)
		if got := validStateLogPrefix(next); got != valid+len(e1) {
			t.Fatalf("after appending an entry to the %d-byte prefix: %d, want %d", valid, got, valid+len(e1))
		}
	})
}
