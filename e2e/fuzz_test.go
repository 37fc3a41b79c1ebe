package e2e

import (
	"bufio"
	"flag"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

var fuzzTime = flag.Duration("fuzz.time", 3*time.Second, "run every fuzz target of the repository for this long")

// fuzzTarget is one func FuzzX in a package of the repository.
type fuzzTarget struct {
	dir, name string // package directory relative to the repository root; FuzzX
}

var fuzzFunc = regexp.MustCompile(`^func (Fuzz\w+)\(\w+ \*testing\.F\)`)

// fuzzTargets finds every fuzz target under root, by reading the test
// files: a new target is fuzzed without anyone listing it.
func fuzzTargets(t *testing.T, root string) []fuzzTarget {
	t.Helper()
	var out []fuzzTarget
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if m := fuzzFunc.FindStringSubmatch(sc.Text()); m != nil {
				rel, _ := filepath.Rel(root, filepath.Dir(path))
				out = append(out, fuzzTarget{dir: rel, name: m[1]})
			}
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dir+out[i].name < out[j].dir+out[j].name })
	return out
}

// TestFuzzCorporaAreCommitted: every fuzz target has a corpus in the
// repository (testdata/fuzz/FuzzX beside it, as go test -fuzz writes it),
// so that plain go test replays what earlier fuzzing found, on every clone.
func TestFuzzCorporaAreCommitted(t *testing.T) {
	targets := fuzzTargets(t, "..")
	if len(targets) < 10 {
		t.Fatalf("found %d fuzz targets: the search is broken", len(targets))
	}
	for _, ft := range targets {
		entries, err := os.ReadDir(filepath.Join("..", ft.dir, "testdata", "fuzz", ft.name))
		if err != nil || len(entries) == 0 {
			t.Errorf("%s %s: no committed corpus in testdata/fuzz/%s (run go test -fuzz=%s and copy the cache's inputs, see README \"Development\")",
				ft.dir, ft.name, ft.name, ft.name)
		}
	}
}

// TestFuzzTargetsBriefly runs go test -fuzz on every fuzz target of the
// repository for -fuzz.time each (3s by default, on every machine, so that
// a plain go test ./... is the same check as CI), one after another on one
// worker. A failure prints go test's report, with the input it wrote to
// testdata/fuzz: commit it with the fix, as the regression test.
func TestFuzzTargetsBriefly(t *testing.T) {
	d := *fuzzTime
	if testing.Short() {
		t.Skip("-short")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	for _, ft := range fuzzTargets(t, "..") {
		t.Run(ft.dir+"/"+ft.name, func(t *testing.T) {
			fuzz := func() (string, error) {
				cmd := exec.Command(goBin, "test", "-run=^$", "-fuzz=^"+ft.name+"$", "-fuzztime="+d.String(),
					"-fuzzminimizetime=0", "-parallel=1", "./"+filepath.ToSlash(ft.dir))
				cmd.Dir = ".."
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			out, err := fuzz()
			if err != nil && deadlineRace(out) {
				// Go's fuzzing coordinator can report its own -fuzztime
				// deadline as a failure of the target (golang/go#75804,
				// fixed in Go 1.27): nothing was found, no input written.
				// Fuzz once more; a finding always writes its input.
				t.Logf("go test -fuzz=%s ended on its own deadline (golang/go#75804); fuzzing again", ft.name)
				out, err = fuzz()
				if err != nil && deadlineRace(out) {
					t.Logf("go test -fuzz=%s ended on its own deadline twice, finding nothing", ft.name)
					return
				}
			}
			if err != nil {
				t.Errorf("go test -fuzz=%s ./%s: %v\n%s", ft.name, ft.dir, err, tail(out, 4000))
			}
		})
	}
}

// deadlineRace reports whether go test -fuzz failed with nothing but its own
// deadline: "context deadline exceeded", and no input written, no panic, no
// message from the target.
func deadlineRace(out string) bool {
	if !strings.Contains(out, "context deadline exceeded") || strings.Contains(out, "Failing input written") ||
		strings.Contains(out, "panic:") {
		return false
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "_test.go:") { // a t.Error or t.Fatal of the target
			return false
		}
	}
	return true
}

// TestDeadlineRaceIsToldFromAFinding pins the classification that lets
// TestFuzzTargetsBriefly survive golang/go#75804 (a fresh-clone CI run
// failed FuzzValid with a bare "context deadline exceeded") without
// hiding a real finding.
func TestDeadlineRaceIsToldFromAFinding(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want bool
	}{
		{"the coordinator's own deadline", "fuzz: elapsed: 3s, execs: 169154 (0/sec), new interesting: 0 (total: 35)\n--- FAIL: FuzzValid (3.05s)\n    context deadline exceeded\nFAIL\nexit status 1\n", true},
		{"a finding", "--- FAIL: FuzzParse (0.02s)\n    --- FAIL: FuzzParse (0.00s)\n        parse_test.go:23: round trip\n    Failing input written to testdata/fuzz/FuzzParse/c3d4\n    context deadline exceeded\n", false},
		{"a panic", "--- FAIL: FuzzParse (0.02s)\npanic: runtime error: index out of range [254] with length 254\ncontext deadline exceeded\n", false},
		{"a target's error near the deadline", "--- FAIL: FuzzHandle (3.01s)\n        fuzz_test.go:49: MSA-2 differs\n    context deadline exceeded\n", false},
		{"a build failure", "# github.com/carehub/carehub/schemas/ods\nods.go:3:1: syntax error\nFAIL\n", false},
	}
	for _, tt := range tests {
		if got := deadlineRace(tt.out); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
