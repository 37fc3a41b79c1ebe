package patientlist

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

// MaxLineBytes is the longest line Parse accepts. An NHS number written for
// people is at most 12 characters; the margin is for indentation.
const MaxLineBytes = 256

// maxReported caps how many bad lines an error lists.
const maxReported = 10

// LineError says which lines of a list are wrong and why, without their
// content.
type LineError struct {
	Lines  []int  // 1-based, at most maxReported of them
	More   int    // further bad lines not listed
	Reason string // the first bad line's reason
}

func (e *LineError) Error() string {
	var b strings.Builder
	b.WriteString("patient list: ")
	if len(e.Lines) == 1 && e.More == 0 {
		fmt.Fprintf(&b, "line %d: %s", e.Lines[0], e.Reason)
		return b.String()
	}
	b.WriteString("lines")
	for i, l := range e.Lines {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %d", l)
	}
	if e.More > 0 {
		fmt.Fprintf(&b, " and %d more", e.More)
	}
	fmt.Fprintf(&b, " are not valid NHS numbers (first: %s)", e.Reason)
	return b.String()
}

// Parse reads a list and returns its NHS numbers, each once, in the order
// they first appear. It reports every bad line (up to ten by number) in one
// *LineError.
func Parse(r io.Reader) ([]nhs.Number, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, MaxLineBytes), MaxLineBytes)
	var (
		out  []nhs.Number
		seen = map[nhs.Number]bool{}
		bad  *LineError
		line int
	)
	fail := func(reason string) {
		if bad == nil {
			bad = &LineError{Reason: reason}
		}
		if len(bad.Lines) < maxReported {
			bad.Lines = append(bad.Lines, line)
		} else {
			bad.More++
		}
	}
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if line == 1 {
			b = bytes.TrimPrefix(b, []byte("\uFEFF"))
		}
		b = bytes.TrimSpace(b)
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		n, err := nhs.ParseLoose(string(b))
		if err != nil {
			fail(reason(err))
			continue
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			line++
			fail(fmt.Sprintf("longer than %d bytes", MaxLineBytes))
			return nil, bad
		}
		return nil, fmt.Errorf("patient list: reading: %w", err)
	}
	if bad != nil {
		return nil, bad
	}
	return out, nil
}

// reason turns nhs's error, which holds no digits, into a line's reason.
func reason(err error) string {
	var pe *problem.Error
	if errors.As(err, &pe) && len(pe.Violations) == 1 && pe.Violations[0].Rule == nhs.RuleCheckDigit {
		return "the check digit is wrong"
	}
	return "not ten digits"
}

// ReadFile parses the list in the file at path. Its errors are
// *problem.Error, whose text (the path, line numbers, an operating system
// error about the file) is safe to log.
func ReadFile(path string) ([]nhs.Number, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, problem.Wrap(problem.Unavailable, "patient list: "+err.Error(), err)
	}
	defer f.Close()
	ns, err := Parse(f)
	if err != nil {
		return nil, problem.Wrap(problem.Invalid, "patient list "+path+": "+strings.TrimPrefix(err.Error(), "patient list: "), err)
	}
	return ns, nil
}

// Set is a patient list as the hub holds it: the keyed pseudonyms of its
// NHS numbers, the same pseudonyms that key every event.
type Set map[string]struct{}

// Has reports whether the patient with pseudonym p is on the list.
func (s Set) Has(p string) bool {
	_, ok := s[p]
	return ok
}
