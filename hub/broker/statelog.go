package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"

	"github.com/carehub/carehub/hub/diskguard"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap"
)

// kfake keeps consumer-group state (offset commits, group metadata) in
// kafka/groups.log and producer-ID state in kafka/pids.log: append-only
// logs it replays at start. When a write to one of them fails part-way (a
// full disk), kfake (persist.go, persistGroupEntry and persistPIDEntry)
// closes the file but leaves the partial entry in it, and appends the next
// entries after it; at the next start its loader (loadGroupsLog,
// readEntries) stops at the torn entry and discards everything after it,
// so every offset committed since the write error is lost. A clean Close
// rewrites groups.log from memory and hides the damage; an unclean stop
// (kill, crash, power cut) does not. TestKfakeGroupLogTornEntry reproduces
// it against kfake alone.
//
// carehub works around it in two places:
//
//   - at start, before kfake opens the directory, a torn tail is cut from
//     each state log (repairStateLogs), so new entries are never appended
//     after one; kfake would discard the cut bytes at load anyway;
//   - while running, kfake's logger reports the failed write from the
//     goroutine that owns the log, before anything else is appended; the
//     hook cuts the partial entry there and then (kfakeHook), and trips the
//     disk guard.

// State logs kfake appends to, relative to its data directory.
const (
	groupsLog = "groups.log"
	pidsLog   = "pids.log"
)

// kfake's append-log framing (persist.go, writeEntry): a 4-byte
// little-endian length, a 4-byte little-endian CRC-32C of the rest, then a
// 2-byte version and the data; length counts version and data.
const stateLogHeader = 10

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// validStateLogPrefix returns how many leading bytes of raw are complete,
// intact entries: the bytes kfake's readEntries would replay.
func validStateLogPrefix(raw []byte) int {
	pos := 0
	for pos+stateLogHeader <= len(raw) {
		length := binary.LittleEndian.Uint32(raw[pos:])
		if length < 2 || uint64(len(raw)-pos-8) < uint64(length) {
			break
		}
		end := pos + 8 + int(length)
		if crc32.Checksum(raw[pos+8:end], crc32c) != binary.LittleEndian.Uint32(raw[pos+4:]) {
			break
		}
		pos = end
	}
	return pos
}

// errUnrecognisedStateLog: a state log whose first bytes are not an entry
// this code recognises. It is left alone: cutting it could destroy state
// written in a format this code does not know.
var errUnrecognisedStateLog = errors.New("its first bytes are neither an intact entry nor a torn one; " +
	"it is left as it is: move it out of the data directory to start without it (consumer groups then start from their reset position)")

// repairStateLog cuts a torn tail from the state log at path: bytes after
// the last intact entry, which kfake would discard at its next start. It
// returns the number of bytes cut (0 when the log is intact or missing).
//
// A file with no intact entry is cut (to empty) only if it looks like one
// torn entry: shorter than a header, or a header whose length runs past
// the end of the file. Otherwise it returns errUnrecognisedStateLog and
// changes nothing.
func repairStateLog(path string) (int64, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
	}
	valid := validStateLogPrefix(raw)
	if valid == len(raw) {
		return 0, nil
	}
	if valid == 0 && !looksTorn(raw) {
		return 0, fmt.Errorf("%s: %w", filepath.Base(path), errUnrecognisedStateLog)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("opening %s: %w", filepath.Base(path), err)
	}
	if err := f.Truncate(int64(valid)); err != nil {
		_ = f.Close()
		return 0, fmt.Errorf("truncating %s: %w", filepath.Base(path), err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return 0, fmt.Errorf("syncing %s: %w", filepath.Base(path), err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("closing %s: %w", filepath.Base(path), err)
	}
	return int64(len(raw) - valid), nil
}

// looksTorn reports whether tail is the start of one entry cut short.
func looksTorn(tail []byte) bool {
	if len(tail) < stateLogHeader {
		return true
	}
	length := binary.LittleEndian.Uint32(tail)
	return length >= 2 && uint64(length) > uint64(len(tail)-8)
}

// repairStateLogs cuts torn tails from kfake's state logs in dir before
// kfake loads them. An unrecognised log is left as it is and reported.
func repairStateLogs(dir string, log *zap.Logger) error {
	var errs []error
	for _, name := range []string{groupsLog, pidsLog} {
		cut, err := repairStateLog(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cut > 0 {
			log.Warn("embedded broker: cut the torn entry an earlier failed write left in a state log (with anything appended after it, which kfake discards at load); nothing is appended after it any more",
				zap.String("file", name), zap.Int64("bytes", cut))
		}
	}
	return errors.Join(errs...)
}

// kfakeWriteFailures are the prefixes of the format strings with which
// kfake (at the version in go.mod) logs a failed write to its data
// directory (persist.go, data.go, txns.go, cluster.go).
// TestKfakeWriteFailureFormats checks that each is still in kfake's source.
var kfakeWriteFailures = []string{
	"persist group entry ",      // open, write: groups.log
	"persist pid entry ",        // open, write: pids.log
	"persist batch ",            // mkdir, open, write: a segment (kfake truncates it itself)
	"persist %s: ",              // topics, ACLs, SASL, broker configs, quotas (write, then rename)
	"persist to disk: ",         // Close: everything
	"save session state: ",      // Close
	"compact groups.log: ",      // read, create, write, sync, rename (to a .tmp file)
	"compact pids.log: ",        // write
	"rebuildSegments ",          // create, write after segment compaction
	"endTx: failed to persist ", // a transaction's control batch
}

// tornLogFormats maps the format strings of a failed append to a state log
// to the log to repair.
var tornLogFormats = map[string]string{
	"persist group entry write: %v": groupsLog,
	"persist pid entry write: %v":   pidsLog,
}

// isWriteFailure reports whether kfake logged format for a failed write.
func isWriteFailure(format string) bool {
	for _, p := range kfakeWriteFailures {
		if strings.HasPrefix(format, p) {
			return true
		}
	}
	return false
}

// kfakeHook is the kfake logger of an embedded broker: it forwards
// warnings and errors to zap, drops the rest (requests in detail), and acts
// on failed writes.
//
// kfake calls Logf for a failed append from its run loop, which owns the
// state logs, before it closes the file; no other append can happen until
// Logf returns, so cutting the torn entry here is race-free.
type kfakeHook struct {
	log     *zap.Logger // never nil
	dataDir string      // kfake's data directory
	guard   *diskguard.Guard
}

func (h kfakeHook) Logf(level kfake.LogLevel, format string, args ...any) {
	switch level {
	case kfake.LogLevelError:
		h.log.Error(fmt.Sprintf(format, args...))
	case kfake.LogLevelWarn:
		h.log.Warn(fmt.Sprintf(format, args...))
	default:
		return
	}
	if !isWriteFailure(format) {
		return
	}
	class := "write error"
	for _, a := range args {
		if err, ok := a.(error); ok {
			class = diskguard.ErrClass(err)
		}
	}
	reason := "the embedded broker could not write to its data directory (" + class + ")"
	name, torn := tornLogFormats[format]
	if !torn {
		h.guard.Trip(diskguard.LevelLow, reason)
		return
	}
	cut, err := repairStateLog(filepath.Join(h.dataDir, name))
	if err != nil {
		// The torn entry stays and kfake will append after it: what is
		// written from now on is lost at an unclean restart. Stop the
		// hub's own group writes (routing, deliveries) until restart.
		h.log.Error("embedded broker: could not cut the torn entry from a state log; routing and deliveries must stop until restart",
			zap.String("file", name), zap.String("error", err.Error()))
		h.guard.Trip(diskguard.LevelCritical, reason+"; its "+name+" could not be repaired")
		return
	}
	h.log.Warn("embedded broker: cut the torn entry of a failed write from a state log",
		zap.String("file", name), zap.Int64("bytes", cut))
	h.guard.Trip(diskguard.LevelLow, reason)
}
