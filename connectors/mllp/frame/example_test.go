package frame_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/carehub/carehub/connectors/mllp/frame"
)

func ExampleReader() {
	// A stream as a receiver might see it: a stray newline, a good frame, an
	// oversized frame, and a frame whose sender gave up half-way and started
	// again.
	var stream bytes.Buffer
	stream.WriteString("\n")
	_ = frame.WriteFrame(&stream, []byte("MSH|^~\\&|A\rPID|1\r"))
	_ = frame.WriteFrame(&stream, bytes.Repeat([]byte("x"), 100))
	stream.WriteString("\x0bMSH|partial")
	_ = frame.WriteFrame(&stream, []byte("MSH|^~\\&|B\r"))

	r := frame.NewReader(&stream, frame.ReaderOptions{MaxFrameSize: 64})
	for {
		payload, err := r.ReadFrame()
		if n := r.LastSkipped(); n > 0 {
			fmt.Printf("notice: skipped %d bytes\n", n)
		}
		var fe *frame.FrameError
		switch {
		case err == io.EOF:
			fmt.Println("end of stream")
			return
		case errors.Is(err, frame.ErrFrameTooLarge) && errors.As(err, &fe):
			fmt.Printf("frame of %d bytes rejected; reader resynchronised\n", fe.Size)
			continue
		case err != nil:
			fmt.Println("fatal:", err)
			return
		}
		fmt.Printf("payload %q\n", strings.ReplaceAll(string(payload), "\r", "|CR|"))
	}
	// Output:
	// notice: skipped 1 bytes
	// payload "MSH|^~\\&|A|CR|PID|1|CR|"
	// frame of 100 bytes rejected; reader resynchronised
	// notice: skipped 12 bytes
	// payload "MSH|^~\\&|B|CR|"
	// end of stream
}

func ExampleWriteFrame() {
	var conn bytes.Buffer // stands in for a net.Conn
	if err := frame.WriteFrame(&conn, []byte("MSH|^~\\&|HUB\rMSA|AA|1\r")); err != nil {
		fmt.Println(err)
	}
	fmt.Printf("%q\n", conn.String())

	err := frame.WriteFrame(&conn, []byte("bad\x1cpayload"))
	fmt.Println(errors.Is(err, frame.ErrInvalidPayload), err)
	// Output:
	// "\vMSH|^~\\&|HUB\rMSA|AA|1\r\x1c\r"
	// true mllp: payload contains a framing byte (byte 0x1C at payload offset 3)
}
