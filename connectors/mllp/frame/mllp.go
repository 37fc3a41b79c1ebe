package frame

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Framing bytes.
const (
	StartBlock     byte = 0x0B // VT: opens a frame
	EndBlock       byte = 0x1C // FS: closes the payload
	CarriageReturn byte = 0x0D // CR: last byte of the frame trailer
)

// DefaultMaxFrameSize is the payload size limit used when
// ReaderOptions.MaxFrameSize is zero or negative: 1 MiB.
const DefaultMaxFrameSize = 1 << 20

// readBufferSize is the size of the internal bufio.Reader. Frames up to this
// size are copied exactly once, straight from the read buffer.
const readBufferSize = 32 << 10

var (
	// ErrFrameTooLarge reports a frame whose payload exceeded the reader's
	// MaxFrameSize. The frame has been consumed up to its end block; the
	// reader is positioned on the next frame.
	ErrFrameTooLarge = errors.New("mllp: frame too large")

	// ErrTruncatedFrame reports that the stream ended after a start block but
	// before the matching end block. It wraps io.ErrUnexpectedEOF.
	ErrTruncatedFrame = fmt.Errorf("mllp: stream ended inside a frame: %w", io.ErrUnexpectedEOF)

	// ErrInvalidPayload reports a payload that contains a framing byte
	// (StartBlock or EndBlock) and so cannot be framed unambiguously.
	ErrInvalidPayload = errors.New("mllp: payload contains a framing byte")
)

// FrameError describes a frame that could not be delivered. It wraps
// ErrFrameTooLarge or ErrTruncatedFrame; test with errors.Is. It holds
// positions and sizes only, never payload bytes.
type FrameError struct {
	Offset int64 // stream offset of the frame's start block
	Size   int64 // payload bytes seen in the frame
	Err    error // ErrFrameTooLarge or ErrTruncatedFrame
}

func (e *FrameError) Error() string {
	return e.Err.Error() + " (frame at stream offset " + strconv.FormatInt(e.Offset, 10) +
		", " + strconv.FormatInt(e.Size, 10) + " payload bytes)"
}

// Unwrap returns the underlying sentinel error.
func (e *FrameError) Unwrap() error { return e.Err }

// ReaderOptions configures a Reader. The zero value is usable.
type ReaderOptions struct {
	// MaxFrameSize is the largest payload, in bytes, that ReadFrame returns.
	// Zero or negative means DefaultMaxFrameSize.
	MaxFrameSize int
}

// counts are what a Reader has seen since it was created: the tests' view of
// its leniency (LastSkipped is what a caller sees).
type counts struct {
	Frames          int64 // payloads returned by ReadFrame
	SkippedBytes    int64 // bytes discarded outside frames and in abandoned frames
	AbandonedFrames int64 // frames cut short by a new start block
	OversizedFrames int64 // frames reported with ErrFrameTooLarge
	TruncatedFrames int64 // frames reported with ErrTruncatedFrame
	MissingCR       int64 // end blocks not followed by CR
}

// Reader reads MLLP frames from a byte stream. It is not safe for
// concurrent use.
type Reader struct {
	br  *bufio.Reader
	max int

	inFrame    bool   // a start block has been read, no end block yet
	pendingCR  bool   // an end block was just read; a CR may follow
	oversize   bool   // the current frame passed max; its bytes are dropped
	frame      []byte // payload of the current frame so far (scratch, reused)
	size       int64  // payload bytes seen in the current frame
	frameStart int64  // stream offset of the current frame's start block
	off        int64  // bytes consumed from the stream

	stats       counts
	lastSkipped int64
}

// NewReader returns a Reader that reads frames from r. If r is a
// *bufio.Reader with a large enough buffer it is used directly.
func NewReader(r io.Reader, opts ReaderOptions) *Reader {
	max := opts.MaxFrameSize
	if max <= 0 {
		max = DefaultMaxFrameSize
	}
	return &Reader{br: bufio.NewReaderSize(r, readBufferSize), max: max}
}

// LastSkipped returns how many bytes the most recent ReadFrame call
// discarded: bytes outside any frame, and bytes of frames abandoned by a new
// start block. A non-zero value is a notice worth logging ("garbage between
// frames"), not an error.
func (r *Reader) LastSkipped() int64 { return r.lastSkipped }

func (r *Reader) skip(n int64) {
	r.stats.SkippedBytes += n
	r.lastSkipped += n
}

// ReadFrame reads the next frame and returns its payload, without the
// framing bytes. The returned slice is newly allocated and owned by the
// caller; an empty frame yields a non-nil empty slice.
//
// Errors:
//   - io.EOF: the stream ended cleanly between frames.
//   - *FrameError wrapping ErrFrameTooLarge: the payload exceeded the limit;
//     the frame was consumed and the next call reads the following frame.
//   - *FrameError wrapping ErrTruncatedFrame (and io.ErrUnexpectedEOF): the
//     stream ended inside a frame. The next call returns io.EOF.
//   - any other error comes from the underlying reader; the frame in
//     progress is kept and a later call resumes it.
func (r *Reader) ReadFrame() ([]byte, error) {
	r.lastSkipped = 0
	for {
		if !r.inFrame {
			if r.pendingCR {
				b, err := r.br.ReadByte()
				if err != nil {
					if err == io.EOF {
						r.pendingCR = false
						r.stats.MissingCR++
					}
					return nil, err
				}
				r.pendingCR = false
				if b == CarriageReturn {
					r.off++
					continue
				}
				r.stats.MissingCR++
				_ = r.br.UnreadByte() // cannot fail right after ReadByte
			}
			chunk, err := r.br.ReadSlice(StartBlock)
			r.off += int64(len(chunk))
			if err == nil {
				r.skip(int64(len(chunk) - 1))
				r.startFrame(r.off - 1)
				continue
			}
			r.skip(int64(len(chunk)))
			if err == bufio.ErrBufferFull {
				continue
			}
			return nil, err // io.EOF between frames, or a read error
		}

		chunk, err := r.br.ReadSlice(EndBlock)
		r.off += int64(len(chunk))
		data, ended := chunk, err == nil
		if ended {
			data = chunk[:len(chunk)-1]
		}
		if bytes.IndexByte(data, StartBlock) >= 0 { // IndexByte is vectorised; LastIndexByte is not
			i := bytes.LastIndexByte(data, StartBlock)
			// The sender started over: drop what we had of this frame,
			// including its start block and everything up to the new one.
			r.skip(1 + r.size + int64(i))
			r.stats.AbandonedFrames += 1 + int64(bytes.Count(data[:i], []byte{StartBlock}))
			r.startFrame(r.off - int64(len(chunk)) + int64(i))
			data = data[i+1:]
		}
		r.size += int64(len(data))
		if !r.oversize {
			if r.size > int64(r.max) {
				r.oversize = true
				r.frame = r.frame[:0]
			} else if !(ended && len(r.frame) == 0) {
				r.frame = append(r.frame, data...)
			}
		}

		if ended {
			r.inFrame = false
			r.pendingCR = true
			if r.oversize {
				r.oversize = false
				r.stats.OversizedFrames++
				return nil, &FrameError{Offset: r.frameStart, Size: r.size, Err: ErrFrameTooLarge}
			}
			var payload []byte
			if len(r.frame) == 0 {
				// Whole frame in one read: copy once, straight from the buffer.
				payload = append(make([]byte, 0, len(data)), data...)
			} else {
				payload = append(make([]byte, 0, len(r.frame)), r.frame...)
				r.frame = r.frame[:0]
			}
			r.stats.Frames++
			return payload, nil
		}
		switch err {
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			r.inFrame = false
			r.oversize = false
			r.frame = r.frame[:0]
			r.stats.TruncatedFrames++
			return nil, &FrameError{Offset: r.frameStart, Size: r.size, Err: ErrTruncatedFrame}
		default:
			return nil, err
		}
	}
}

func (r *Reader) startFrame(offset int64) {
	r.inFrame = true
	r.oversize = false
	r.frame = r.frame[:0]
	r.size = 0
	r.frameStart = offset
	if cap(r.frame) > DefaultMaxFrameSize {
		r.frame = nil // do not pin a huge scratch buffer after one big frame
	}
}

// AppendFrame appends the MLLP frame of payload to dst and returns the
// extended slice. It does not check the payload; see WriteFrame.
func AppendFrame(dst, payload []byte) []byte {
	dst = append(dst, StartBlock)
	dst = append(dst, payload...)
	return append(dst, EndBlock, CarriageReturn)
}

// WriteFrame writes payload to w as one MLLP frame, using a single Write
// call. It returns an error wrapping ErrInvalidPayload, and writes nothing,
// if the payload contains a StartBlock or EndBlock byte; a short write is
// reported as io.ErrShortWrite.
func WriteFrame(w io.Writer, payload []byte) error {
	if err := CheckPayload(payload); err != nil {
		return err
	}
	buf := AppendFrame(make([]byte, 0, len(payload)+3), payload)
	n, err := w.Write(buf)
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	return err
}

// CheckPayload reports whether payload can be framed: it returns an error
// wrapping ErrInvalidPayload, naming the byte offset, if payload contains a
// StartBlock or EndBlock byte.
func CheckPayload(payload []byte) error {
	i := bytes.IndexByte(payload, StartBlock)
	if j := bytes.IndexByte(payload, EndBlock); j >= 0 && (i < 0 || j < i) {
		i = j
	}
	if i >= 0 {
		return fmt.Errorf("%w (byte 0x%02X at payload offset %d)", ErrInvalidPayload, payload[i], i)
	}
	return nil
}
