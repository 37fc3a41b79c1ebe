// Package frame implements the Minimal Lower Layer Protocol (MLLP), the
// framing that carries HL7 v2 messages over a TCP stream.
//
// # The wire format
//
// TCP is a byte stream with no message boundaries, so MLLP wraps every
// message (the "payload") in a frame made of three control characters that
// never occur in HL7 text:
//
//	0x0B  <payload bytes>  0x1C 0x0D
//	 VT                     FS   CR
//	start block            end block
//
// A sender writes one frame per message and then waits for the receiver to
// answer with an acknowledgement, itself framed the same way. The payload is
// an HL7 message whose segments are separated by CR (0x0D); the final CR of
// the frame trailer is not part of the payload.
//
// # Reading
//
// [Reader] extracts payloads from a stream:
//
//	r := frame.NewReader(conn, frame.ReaderOptions{MaxFrameSize: 4 << 20})
//	for {
//		payload, err := r.ReadFrame()
//		if n := r.LastSkipped(); n > 0 {
//			log.Printf("mllp: discarded %d bytes outside frames", n) // not fatal
//		}
//		switch {
//		case err == io.EOF:
//			return // peer closed the connection between frames
//		case errors.Is(err, frame.ErrFrameTooLarge):
//			// The oversized frame has been consumed; the stream is aligned on
//			// the next frame. Answer with a negative acknowledgement and go
//			// on, or close the connection.
//			continue
//		case err != nil:
//			return // ErrTruncatedFrame (peer closed mid-frame) or a network error
//		}
//		handle(payload)
//	}
//
// Real peers are not always tidy, and the reader is deliberately lenient
// where leniency cannot corrupt a message:
//
//   - Bytes before a start block (a stray newline, a keep-alive, garbage left
//     by a previous aborted exchange) are discarded and counted; see
//     [Reader.LastSkipped]. They never fail the connection.
//   - A start block inside a frame means the sender gave up on the frame it
//     was sending and started a new one (0x0B can never appear in HL7 text).
//     The unfinished frame is discarded, its bytes are counted as skipped
//     (LastSkipped), and reading continues with the new frame.
//   - An end block 0x1C that is not followed by CR still ends the frame. The
//     CR is consumed when present; when it is missing the reader does not
//     wait for it (that could deadlock a peer that sends 0x1C and then waits
//     for its acknowledgement).
//   - A frame whose payload exceeds ReaderOptions.MaxFrameSize is consumed
//     without being buffered, up to its end block, and reported as a
//     [*FrameError] wrapping [ErrFrameTooLarge]. The stream is then aligned
//     on the next frame, so the caller may answer and continue, or close.
//   - End of stream inside a frame is reported as a [*FrameError] wrapping
//     [ErrTruncatedFrame], which itself wraps [io.ErrUnexpectedEOF]. End of
//     stream between frames is a plain [io.EOF].
//   - Any other read error (for example a deadline) is returned unchanged and
//     the reader keeps its place: calling ReadFrame again resumes the frame
//     in progress.
//
// Every payload returned by ReadFrame is a fresh slice owned by the caller;
// it is not overwritten by later reads, so it can be handed to a parser that
// keeps references into it.
//
// # Writing
//
// [WriteFrame] writes a whole frame with a single Write call, so that
// concurrent writers that serialise on the connection never interleave
// partial frames. It refuses a payload containing a start or end block byte
// ([ErrInvalidPayload]), which the peer would split or truncate; HL7 text
// never contains them. [AppendFrame] builds a frame in a caller-supplied
// buffer without that check ([CheckPayload] performs it).
package frame
