package patientlist_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/carehub/carehub/hub/patientlist"
	"github.com/carehub/carehub/schemas/nhs"
)

// Test numbers from the 999 range: a, b valid; badCheck has a wrong check
// digit.
var (
	a        = nhs.Synthetic(1)
	b        = nhs.Synthetic(2)
	badCheck = func() string {
		d := []byte(a.Digits())
		d[9] = '0' + (d[9]-'0'+1)%10
		return string(d)
	}()
)

func spaced(n nhs.Number) string {
	d := n.Digits()
	return d[:3] + " " + d[3:6] + " " + d[6:]
}

func TestParse(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      []nhs.Number
		wantLines []int
		wantWhy   string
	}{
		{name: "empty", in: "", want: nil},
		{name: "one per line", in: a.Digits() + "\n" + b.Digits() + "\n", want: []nhs.Number{a, b}},
		{name: "no final newline", in: a.Digits() + "\n" + b.Digits(), want: []nhs.Number{a, b}},
		{name: "formatted for people", in: spaced(a) + "\n" + strings.ReplaceAll(spaced(b), " ", "-") + "\n", want: []nhs.Number{a, b}},
		{name: "comments, blanks, indentation", in: "# residents of Test Care Home\n\n  " + a.Digits() + "  \n\t# left\n", want: []nhs.Number{a}},
		{name: "spreadsheet export", in: "\uFEFF" + a.Digits() + "\r\n" + b.Digits() + "\r\n", want: []nhs.Number{a, b}},
		{name: "duplicates kept once", in: a.Digits() + "\n" + b.Digits() + "\n" + spaced(a) + "\n", want: []nhs.Number{a, b}},
		{name: "check digit", in: a.Digits() + "\n" + badCheck + "\n", wantLines: []int{2}, wantWhy: "the check digit is wrong"},
		{name: "header line", in: "NHS number\n" + a.Digits() + "\n", wantLines: []int{1}, wantWhy: "not ten digits"},
		{name: "csv row", in: a.Digits() + ",Alex\n", wantLines: []int{1}, wantWhy: "not ten digits"},
		{name: "every bad line", in: "x\n" + a.Digits() + "\n123\n\n" + badCheck + "\n", wantLines: []int{1, 3, 5}, wantWhy: "not ten digits"},
		{name: "too long", in: a.Digits() + "\n" + strings.Repeat("9", patientlist.MaxLineBytes+1) + "\n", wantLines: []int{2}, wantWhy: "longer than 256 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := patientlist.Parse(strings.NewReader(tt.in))
			if tt.wantLines == nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %d numbers, want %d (or in another order)", len(got), len(tt.want))
				}
				return
			}
			var le *patientlist.LineError
			if !errors.As(err, &le) {
				t.Fatalf("got error %v, want a *LineError", err)
			}
			if got != nil {
				t.Errorf("got %d numbers with the error, want none", len(got))
			}
			if !reflect.DeepEqual(le.Lines, tt.wantLines) || le.Reason != tt.wantWhy {
				t.Errorf("got lines %v (%q), want %v (%q)", le.Lines, le.Reason, tt.wantLines, tt.wantWhy)
			}
			noDigits(t, err.Error())
		})
	}
}

func TestParseCapsReportedLines(t *testing.T) {
	_, err := patientlist.Parse(strings.NewReader(strings.Repeat("bad\n", 25)))
	var le *patientlist.LineError
	if !errors.As(err, &le) {
		t.Fatalf("got %v, want a *LineError", err)
	}
	if len(le.Lines) != 10 || le.More != 15 {
		t.Errorf("got %d lines listed and %d more, want 10 and 15", len(le.Lines), le.More)
	}
	if want := "lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 15 more"; !strings.Contains(err.Error(), want) {
		t.Errorf("got %q, want it to contain %q", err, want)
	}
}

func TestParseReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	_, err := patientlist.Parse(iotest.ErrReader(boom))
	if !errors.Is(err, boom) {
		t.Errorf("got %v, want it to wrap the reader's error", err)
	}
	// One byte at a time must read the same as all at once.
	got, err := patientlist.Parse(iotest.OneByteReader(strings.NewReader(spaced(a) + "\r\n" + b.Digits())))
	if err != nil || !reflect.DeepEqual(got, []nhs.Number{a, b}) {
		t.Errorf("one byte at a time: got %d numbers, %v", len(got), err)
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "residents.txt")
	if err := os.WriteFile(path, []byte(a.Digits()+"\n"+spaced(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := patientlist.ReadFile(path)
	if err != nil || !reflect.DeepEqual(got, []nhs.Number{a, b}) {
		t.Errorf("got %d numbers, %v; want exactly a and b", len(got), err)
	}

	if err := os.WriteFile(path, []byte(a.Digits()+"\n"+badCheck+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = patientlist.ReadFile(path)
	if err == nil || !strings.Contains(err.Error(), "residents.txt") || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("got %v, want the file name and line 2", err)
	}
	if err != nil {
		noDigits(t, err.Error())
	}
	if _, err := patientlist.ReadFile(filepath.Join(dir, "missing.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want os.ErrNotExist", err)
	}
}

// noDigits fails if s holds one of the test numbers or the bad one.
func noDigits(t *testing.T, s string) {
	t.Helper()
	for _, d := range []string{a.Digits(), b.Digits(), badCheck} {
		if strings.Contains(s, d) {
			t.Errorf("%q holds an NHS number", s)
		}
	}
}

var tenDigits = regexp.MustCompile(`[0-9][0-9 -]{8,}[0-9]`)

func FuzzParse(f *testing.F) {
	f.Add(a.Digits() + "\n" + spaced(b) + "\r\n# c\n")
	f.Add("\uFEFF" + badCheck + "\n\n")
	f.Add(strings.Repeat("9", 300))
	f.Fuzz(func(t *testing.T, in string) {
		ns, err := patientlist.Parse(strings.NewReader(in))
		if err != nil {
			var le *patientlist.LineError
			if !errors.As(err, &le) || len(le.Lines) == 0 || ns != nil {
				t.Fatalf("got %v with %d numbers", err, len(ns))
			}
			// The error holds line numbers, never a number from the input.
			if tenDigits.MatchString(err.Error()) {
				t.Fatalf("error %q holds ten digits", err)
			}
			return
		}
		seen := map[nhs.Number]bool{}
		for _, n := range ns {
			if n.IsZero() || seen[n] {
				t.Fatalf("got a zero or repeated number")
			}
			seen[n] = true
			if !strings.Contains(strings.NewReplacer(" ", "", "-", "", "\t", "").Replace(in), n.Digits()) {
				t.Fatalf("got a number that is not in the input")
			}
		}
	})
}
