package frame

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

// transcript records everything a Reader reports, so that different ways of
// feeding the same bytes can be compared.
type transcript struct {
	events []string
	stats  counts
}

func (t transcript) String() string {
	return fmt.Sprintf("%s\n\t\tstats %+v", strings.Join(t.events, "\n\t\t"), t.stats)
}

// readAll reads frames until io.EOF or a terminal error. Timeouts from
// iotest.TimeoutReader are retried, which exercises resumption.
func readAll(t testing.TB, src io.Reader, opts ReaderOptions) transcript {
	r := NewReader(src, opts)
	var tr transcript
	for i := 0; i < 10000; i++ {
		p, err := r.ReadFrame()
		if n := r.LastSkipped(); n > 0 {
			tr.events = append(tr.events, fmt.Sprintf("skipped %d", n))
		}
		var fe *FrameError
		switch {
		case err == nil:
			if p == nil {
				t.Fatalf("ReadFrame returned nil payload and nil error")
			}
			tr.events = append(tr.events, fmt.Sprintf("frame %q", p))
			continue
		case errors.Is(err, iotest.ErrTimeout):
			continue
		case err == io.EOF:
			tr.events = append(tr.events, "EOF")
		case errors.As(err, &fe) && errors.Is(err, ErrFrameTooLarge):
			tr.events = append(tr.events, fmt.Sprintf("too large at %d size %d", fe.Offset, fe.Size))
			continue
		case errors.As(err, &fe) && errors.Is(err, ErrTruncatedFrame):
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("truncated frame error %v does not wrap io.ErrUnexpectedEOF", err)
			}
			tr.events = append(tr.events, fmt.Sprintf("truncated at %d size %d", fe.Offset, fe.Size))
			// The next call must report a clean EOF.
			if _, err := r.ReadFrame(); err != io.EOF {
				t.Errorf("after truncated frame: got %v, want io.EOF", err)
			}
			tr.events = append(tr.events, "EOF")
		default:
			tr.events = append(tr.events, "error "+err.Error())
		}
		tr.stats = r.stats
		return tr
	}
	t.Fatalf("reader did not terminate")
	return tr
}

func frame(s string) string { return "\x0b" + s + "\x1c\r" }

var readerTests = []struct {
	name  string
	in    string
	max   int
	want  []string
	stats counts
}{
	{"empty stream", "", 0, []string{"EOF"}, counts{}},
	{"one frame", frame("MSH|x"), 0, []string{`frame "MSH|x"`, "EOF"}, counts{Frames: 1}},
	{"two frames", frame("foobar") + frame("hello"), 0,
		[]string{`frame "foobar"`, `frame "hello"`, "EOF"}, counts{Frames: 2}},
	{"empty frame", frame(""), 0, []string{`frame ""`, "EOF"}, counts{Frames: 1}},
	{"payload keeps CR and LF", frame("A\rB\r\n"), 0, []string{`frame "A\rB\r\n"`, "EOF"}, counts{Frames: 1}},
	{"garbage before first frame", "junk" + frame("A"), 0,
		[]string{"skipped 4", `frame "A"`, "EOF"}, counts{Frames: 1, SkippedBytes: 4}},
	{"newlines between frames", frame("A") + "\r\n\n" + frame("B"), 0,
		[]string{`frame "A"`, "skipped 3", `frame "B"`, "EOF"}, counts{Frames: 2, SkippedBytes: 3}},
	{"garbage only", "abc", 0, []string{"skipped 3", "EOF"}, counts{SkippedBytes: 3}},
	{"trailing garbage", frame("A") + "xyz", 0,
		[]string{`frame "A"`, "skipped 3", "EOF"}, counts{Frames: 1, SkippedBytes: 3}},
	{"end block without CR", "\x0bA\x1c\x0bB\x1c\r", 0,
		[]string{`frame "A"`, `frame "B"`, "EOF"}, counts{Frames: 2, MissingCR: 1}},
	{"end block without CR then garbage", "\x0bA\x1cxx\x0bB\x1c\r", 0,
		[]string{`frame "A"`, "skipped 2", `frame "B"`, "EOF"}, counts{Frames: 2, SkippedBytes: 2, MissingCR: 1}},
	{"end block without CR at end of stream", "\x0bA\x1c", 0,
		[]string{`frame "A"`, "EOF"}, counts{Frames: 1, MissingCR: 1}},
	{"start block inside frame restarts it", "\x0bAB\x0bCD\x1c\r", 0,
		[]string{"skipped 3", `frame "CD"`, "EOF"}, counts{Frames: 1, SkippedBytes: 3, AbandonedFrames: 1}},
	{"two restarts", "\x0bA\x0bB\x0bC\x1c\r", 0,
		[]string{"skipped 4", `frame "C"`, "EOF"}, counts{Frames: 1, SkippedBytes: 4, AbandonedFrames: 2}},
	{"truncated frame", frame("foobar") + "\x0bstuff", 0,
		[]string{`frame "foobar"`, "truncated at 9 size 5", "EOF"}, counts{Frames: 1, TruncatedFrames: 1}},
	{"start block then EOF", "\x0b", 0, []string{"truncated at 0 size 0", "EOF"}, counts{TruncatedFrames: 1}},
	{"at the size limit", frame("1234"), 4, []string{`frame "1234"`, "EOF"}, counts{Frames: 1}},
	{"over the size limit, then resync", frame("12345") + frame("ok"), 4,
		[]string{"too large at 0 size 5", `frame "ok"`, "EOF"}, counts{Frames: 1, OversizedFrames: 1}},
	{"oversized frame abandoned by a start block", "\x0b123456\x0bAB\x1c\r", 4,
		[]string{"skipped 7", `frame "AB"`, "EOF"}, counts{Frames: 1, SkippedBytes: 7, AbandonedFrames: 1}},
	{"oversized and truncated", "\x0b123456", 4,
		[]string{"truncated at 0 size 6", "EOF"}, counts{TruncatedFrames: 1}},
	{"ExampleReader's stream", "\n" + frame("MSH|^~\\&|A\rPID|1\r") + frame(strings.Repeat("x", 100)) + "\x0bMSH|partial" + frame("MSH|^~\\&|B\r"), 64,
		[]string{"skipped 1", `frame "MSH|^~\\&|A\rPID|1\r"`, "too large at 21 size 100", "skipped 12", `frame "MSH|^~\\&|B\r"`, "EOF"},
		counts{Frames: 2, SkippedBytes: 13, AbandonedFrames: 1, OversizedFrames: 1}},
}

// feeders give the same bytes to the reader in different chunkings.
var feeders = []struct {
	name string
	wrap func([]byte) io.Reader
}{
	{"plain", func(b []byte) io.Reader { return bytes.NewReader(b) }},
	{"OneByteReader", func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) }},
	{"HalfReader", func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) }},
	{"DataErrReader", func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) }},
	{"TimeoutReader", func(b []byte) io.Reader { return iotest.TimeoutReader(bytes.NewReader(b)) }},
	{"DataErrReader(OneByteReader)", func(b []byte) io.Reader {
		return iotest.DataErrReader(iotest.OneByteReader(bytes.NewReader(b)))
	}},
}

func TestReadFrame(t *testing.T) {
	for _, tt := range readerTests {
		for _, f := range feeders {
			got := readAll(t, f.wrap([]byte(tt.in)), ReaderOptions{MaxFrameSize: tt.max})
			want := transcript{events: tt.want, stats: tt.stats}
			if got.String() != want.String() {
				t.Errorf("%s via %s: ReadFrame(%q):\n\tgot  %v\n\twant %v", tt.name, f.name, tt.in, got, want)
			}
		}
	}
}

func TestReadFrameLarge(t *testing.T) {
	big := bytes.Repeat([]byte("PID|1||123^^^NHS^NH|\r"), 10000) // ~210 KB, larger than the read buffer
	stream := append(AppendFrame(nil, big), AppendFrame(nil, []byte("small"))...)
	for _, f := range feeders {
		r := NewReader(f.wrap(stream), ReaderOptions{})
		var got [][]byte
		for {
			p, err := r.ReadFrame()
			if errors.Is(err, iotest.ErrTimeout) {
				continue
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: ReadFrame: %v", f.name, err)
			}
			got = append(got, p)
		}
		if len(got) != 2 || !bytes.Equal(got[0], big) || string(got[1]) != "small" {
			t.Errorf("%s: got %d frames, want the big frame then \"small\"", f.name, len(got))
		}
	}
}

func TestReadFrameTooLargeDefault(t *testing.T) {
	big := bytes.Repeat([]byte{'x'}, DefaultMaxFrameSize+1)
	stream := append([]byte("\n"), AppendFrame(nil, big)...)
	stream = append(stream, AppendFrame(nil, []byte("after"))...)
	r := NewReader(bytes.NewReader(stream), ReaderOptions{})
	if r.max != DefaultMaxFrameSize {
		t.Fatalf("limit = %d, want %d", r.max, DefaultMaxFrameSize)
	}
	_, err := r.ReadFrame()
	var fe *FrameError
	if !errors.Is(err, ErrFrameTooLarge) || !errors.As(err, &fe) {
		t.Fatalf("ReadFrame: got %v, want ErrFrameTooLarge", err)
	}
	if fe.Offset != 1 || fe.Size != int64(len(big)) {
		t.Errorf("FrameError = %+v, want Offset 1 Size %d", fe, len(big))
	}
	if strings.Contains(err.Error(), "xxx") {
		t.Errorf("error message contains payload bytes: %q", err)
	}
	if r.LastSkipped() != 1 {
		t.Errorf("LastSkipped() = %d, want 1", r.LastSkipped())
	}
	p, err := r.ReadFrame()
	if err != nil || string(p) != "after" {
		t.Fatalf("ReadFrame after oversized frame = %q, %v; want \"after\", nil", p, err)
	}
	if r.LastSkipped() != 0 {
		t.Errorf("LastSkipped() = %d after a clean frame, want 0", r.LastSkipped())
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Errorf("final ReadFrame: got %v, want io.EOF", err)
	}
	if got := r.off; got != int64(len(stream)) {
		t.Errorf("consumed %d bytes, want %d", got, len(stream))
	}
}

// Payloads must not alias the reader's buffers.
func TestReadFramePayloadOwned(t *testing.T) {
	r := NewReader(strings.NewReader(frame("first")+frame("second")), ReaderOptions{})
	a, _ := r.ReadFrame()
	b, _ := r.ReadFrame()
	if string(a) != "first" || string(b) != "second" {
		t.Fatalf("got %q %q", a, b)
	}
}

func TestReadFrameErrorResumes(t *testing.T) {
	boom := errors.New("boom")
	src := io.MultiReader(strings.NewReader("\x0bMSH|pa"), iotest.ErrReader(boom))
	r := NewReader(src, ReaderOptions{})
	if _, err := r.ReadFrame(); err != boom {
		t.Fatalf("got %v, want the underlying error", err)
	}
	// bufio keeps no sticky error: a reader whose source recovers resumes.
	r2 := NewReader(iotest.TimeoutReader(strings.NewReader("\x0bMSH|part"+"\x1c\r")), ReaderOptions{})
	for {
		p, err := r2.ReadFrame()
		if errors.Is(err, iotest.ErrTimeout) {
			continue
		}
		if err != nil || string(p) != "MSH|part" {
			t.Fatalf("resumed ReadFrame = %q, %v", p, err)
		}
		break
	}
}

// framingDir holds public MLLP streams (testdata/SOURCES.md says where each
// came from); hl7SamplesDir the public HL7 v2 samples that package hl7 keeps
// (SOURCES.md there).
const (
	framingDir    = "testdata"
	hl7SamplesDir = "../hl7/testdata/samples"
)

func TestFramingSamples(t *testing.T) {
	dir := framingDir
	want := map[string][]string{
		"python-hl7-two-frames.mllp":      {`frame "foobar"`, `frame "hello"`, "EOF"},
		"python-hl7-leftover-buffer.mllp": {`frame "foobar"`, "truncated at 9 size 5", "EOF"},
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, e := range entries {
		if e.IsDir() || strings.HasSuffix(e.Name(), ".md") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[e.Name()]
		if !ok {
			t.Errorf("%s: no expected outcome in the test table", e.Name())
			continue
		}
		seen++
		var first string
		for _, f := range feeders {
			got := readAll(t, f.wrap(data), ReaderOptions{})
			if strings.Join(got.events, "|") != strings.Join(w, "|") {
				t.Errorf("%s via %s:\n\tgot  %v\n\twant %v", e.Name(), f.name, got.events, w)
			}
			if f.name == "plain" {
				first = got.String()
			} else if got.String() != first {
				t.Errorf("%s via %s differs from plain reader:\n\tgot  %v\n\twant %v", e.Name(), f.name, got, first)
			}
		}
	}
	if seen != len(want) {
		t.Errorf("found %d of the %d expected sample files", seen, len(want))
	}
}

type recordingWriter struct {
	writes [][]byte
	n      int // bytes to accept per write; 0 = all
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	if w.n > 0 && w.n < len(p) {
		return w.n, nil
	}
	return len(p), nil
}

func TestWriteFrame(t *testing.T) {
	tests := []struct {
		payload string
		want    string
		err     error
	}{
		{"MSH|^~\\&|A\rPID|1\r", "\x0bMSH|^~\\&|A\rPID|1\r\x1c\r", nil},
		{"", "\x0b\x1c\r", nil},
		{"bad\x1cpayload", "", ErrInvalidPayload},
		{"bad\x0bpayload", "", ErrInvalidPayload},
	}
	for _, tt := range tests {
		var w recordingWriter
		err := WriteFrame(&w, []byte(tt.payload))
		if !errors.Is(err, tt.err) {
			t.Errorf("WriteFrame(%q): got error %v, want %v", tt.payload, err, tt.err)
			continue
		}
		if tt.err != nil {
			if len(w.writes) != 0 {
				t.Errorf("WriteFrame(%q) wrote %d times despite the error", tt.payload, len(w.writes))
			}
			if strings.Contains(err.Error(), "payload\"") || strings.Contains(err.Error(), "bad") {
				t.Errorf("error %q contains payload text", err)
			}
			continue
		}
		if len(w.writes) != 1 || string(w.writes[0]) != tt.want {
			t.Errorf("WriteFrame(%q):\n\tgot  %q\n\twant one write of %q", tt.payload, w.writes, tt.want)
		}
		if got := string(AppendFrame([]byte("pre"), []byte(tt.payload))); got != "pre"+tt.want {
			t.Errorf("AppendFrame(%q):\n\tgot  %q\n\twant %q", tt.payload, got, "pre"+tt.want)
		}
	}
	w := recordingWriter{n: 2}
	if err := WriteFrame(&w, []byte("abc")); err != io.ErrShortWrite {
		t.Errorf("short write: got %v, want io.ErrShortWrite", err)
	}
}

func TestRoundTripSamples(t *testing.T) {
	var payloads [][]byte
	_ = filepath.WalkDir(hl7SamplesDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".hl7") {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil {
			payloads = append(payloads, b)
		}
		return err
	})
	if len(payloads) == 0 {
		t.Fatal("no .hl7 samples found")
	}
	var stream bytes.Buffer
	for _, p := range payloads {
		if err := WriteFrame(&stream, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range feeders {
		r := NewReader(f.wrap(stream.Bytes()), ReaderOptions{})
		for i := 0; ; {
			p, err := r.ReadFrame()
			if errors.Is(err, iotest.ErrTimeout) {
				continue
			}
			if err == io.EOF {
				if i != len(payloads) {
					t.Errorf("%s: got %d frames, want %d", f.name, i, len(payloads))
				}
				break
			}
			if err != nil {
				t.Fatalf("%s: frame %d: %v", f.name, i, err)
			}
			if !bytes.Equal(p, payloads[i]) {
				t.Errorf("%s: frame %d differs", f.name, i)
			}
			i++
		}
		if s := r.stats; s != (counts{Frames: int64(len(payloads))}) {
			t.Errorf("%s: stats %+v", f.name, s)
		}
	}
}

// collect reads every payload a stream yields, skipping oversized frames.
func collect(src io.Reader, max int) (payloads [][]byte) {
	r := NewReader(src, ReaderOptions{MaxFrameSize: max})
	for {
		p, err := r.ReadFrame()
		if errors.Is(err, ErrFrameTooLarge) {
			continue
		}
		if err != nil {
			return payloads
		}
		payloads = append(payloads, p)
	}
}

func FuzzReader(f *testing.F) {
	// Seeds: every public HL7 v2 sample, framed, and the public MLLP streams
	// as they are.
	seeds, err := filepath.Glob(filepath.Join(framingDir, "*.mllp"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no .mllp samples in %s: %v", framingDir, err)
	}
	err = filepath.WalkDir(hl7SamplesDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".md") || strings.HasSuffix(p, ".tsv") {
			return err
		}
		seeds = append(seeds, p)
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		if !strings.HasSuffix(p, ".mllp") {
			b = AppendFrame(nil, b)
		}
		mid := len(b) / 2
		f.Add(b[:mid], b[mid:])
	}
	f.Add([]byte("\x0bA\x0b"), []byte("B\x1cjunk\x0b\x1c\r"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		const max = 64 << 10
		whole := append(append([]byte(nil), a...), b...)
		got := collect(io.MultiReader(bytes.NewReader(a), bytes.NewReader(b)), max)
		if one := collect(iotest.OneByteReader(bytes.NewReader(whole)), max); len(one) != len(got) {
			t.Fatalf("one-byte reads gave %d frames, split reads %d", len(one), len(got))
		} else {
			for i := range one {
				if !bytes.Equal(one[i], got[i]) {
					t.Fatalf("frame %d differs between one-byte and split reads", i)
				}
			}
		}
		// Re-framing what was parsed must give back exactly the same payloads.
		var stream []byte
		for _, p := range got {
			if err := CheckPayload(p); err != nil {
				t.Fatalf("parsed payload cannot be re-framed: %v", err)
			}
			stream = AppendFrame(stream, p)
		}
		r := NewReader(bytes.NewReader(stream), ReaderOptions{MaxFrameSize: max})
		for i := 0; ; i++ {
			p, err := r.ReadFrame()
			if err == io.EOF {
				if i != len(got) {
					t.Fatalf("re-framed stream gave %d frames, want %d", i, len(got))
				}
				break
			}
			if err != nil {
				t.Fatalf("re-framed frame %d: %v", i, err)
			}
			if !bytes.Equal(p, got[i]) {
				t.Fatalf("re-framed frame %d differs", i)
			}
		}
		if s := r.stats; s.SkippedBytes != 0 || s.MissingCR != 0 || s.AbandonedFrames != 0 {
			t.Fatalf("re-framed stream has anomalies: %+v", s)
		}
	})
}

func BenchmarkReadFrame(b *testing.B) {
	msg := bytes.Repeat([]byte("PID|1||9990500002^^^NHS^NH||SMITH^JOHN^^^MR||19580101|M\r"), 40) // ~2.3 KB
	const frames = 64
	var stream []byte
	for i := 0; i < frames; i++ {
		stream = AppendFrame(stream, msg)
	}
	src := bytes.NewReader(stream)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(stream)
		r := NewReader(src, ReaderOptions{})
		n := 0
		for {
			_, err := r.ReadFrame()
			if err != nil {
				break
			}
			n++
		}
		if n != frames {
			b.Fatalf("got %d frames", n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
}
