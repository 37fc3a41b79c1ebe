// Package sharedtest locates the project's shared test data: the public
// HL7 v2 and FHIR samples, NHS numbers and schemas kept in shared/testdata
// beside the repository (SOURCES.md there says where each came from).
package sharedtest

import (
	"os"
	"path/filepath"
	"testing"
)

// Find returns shared/testdata/<sub> from the nearest parent directory
// that has it, or "" when none does.
func Find(sub string) string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		p := filepath.Join(d, "shared", "testdata", sub)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return p
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

// Dir returns shared/testdata/<sub>. When it is missing the test fails
// under CI (the data must be there) and is skipped elsewhere, with a message.
func Dir(t testing.TB, sub string) string {
	t.Helper()
	if p := Find(sub); p != "" {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("shared/testdata/%s not found above the package directory", sub)
	}
	t.Skipf("shared/testdata/%s not found above the package directory", sub)
	return ""
}
