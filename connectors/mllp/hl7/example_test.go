package hl7_test

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/mllp/hl7"
)

func Example() {
	// Segments end with CR; LF and CRLF are tolerated.
	msg := strings.Join([]string{
		`MSH|^~\&|PAS|RX1|HUB|CAREHUB|20240102120000||ADT^A01^ADT_A01|MSG0001|P|2.4`,
		`EVN|A01|20240102120000`,
		`PID|1||9990500002^^^NHS^NH~D123^^^RX1^MR||SMITH^JOHN^^^MR||19580119|M|||1 HIGH ST\S\FLAT 2^^LEEDS`,
		`PV1|1|I|WARD1^BED2|""`,
	}, "\r")

	m, err := hl7.Parse([]byte(msg))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("type:", m.Type().Code, m.Type().Trigger, "version:", m.Version())

	// MSH-1 is the field separator itself; MSH-3 is the first field after MSH-2.
	msh := m.Segment("MSH")
	fmt.Println("MSH-1:", msh.Field(1).String(), "MSH-2:", msh.Field(2).String(), "MSH-3:", msh.Field(3).String())

	// Walk the tree...
	pid := m.Segment("PID")
	for _, id := range pid.Field(3).AllReps() {
		fmt.Printf("id %s (authority %s)\n", id.Component(1), id.Component(4))
	}
	// ...or use a terse path. Escapes are decoded: \S\ is a literal '^'.
	street, _ := m.Value("PID-11.1")
	fmt.Println("street:", street)

	// Empty versus the explicit null "".
	pv1 := m.Segment("PV1")
	fmt.Println("PV1-4 null:", pv1.Field(4).IsNull(), "PV1-5 empty:", pv1.Field(5).Empty())

	// A missing segment reads as empty values.
	fmt.Printf("NK1-2: %q\n", m.Segment("NK1").Field(2).String())

	// Acknowledge it.
	ack := hl7.NewACK(m, hl7.AckAA, "ACK0001", time.Date(2024, 1, 2, 12, 0, 1, 0, time.UTC))
	fmt.Println(strings.ReplaceAll(string(ack), "\r", "\n"))

	// Output:
	// type: ADT A01 version: 2.4
	// MSH-1: | MSH-2: ^~\& MSH-3: PAS
	// id 9990500002 (authority NHS)
	// id D123 (authority RX1)
	// street: 1 HIGH ST^FLAT 2
	// PV1-4 null: true PV1-5 empty: true
	// NK1-2: ""
	// MSH|^~\&|HUB|CAREHUB|PAS|RX1|20240102120001+0000||ACK^A01^ACK|ACK0001|P|2.4
	// MSA|AA|MSG0001
}

// Rejecting a malformed message with an acknowledgement that locates the
// error without quoting any patient data.
func ExampleNewACK_reject() {
	payload := []byte("MSH|^~\\&|PAS|RX1|HUB|CAREHUB|20240102120000||ADT^A01|MSG0002|P|2.5\rPID|1||123\rbad segment\r")

	_, err := hl7.Parse(payload)
	var pe *hl7.ParseError
	if !errors.As(err, &pe) {
		return
	}
	fmt.Println(err)

	hdr, _ := hl7.ParseHeader(payload)
	ack := hl7.NewACK(hdr, hl7.AckAR, "ACK0002", time.Date(2024, 1, 2, 12, 0, 1, 0, time.UTC), pe.Detail())
	fmt.Println(strings.ReplaceAll(string(ack), "\r", "\n"))

	// Output:
	// hl7: segment 3 (offset 78): segment does not start with a segment ID (an upper-case letter and two upper-case letters or digits) followed by the field separator [HL7 0357 100 Segment sequence error]
	// MSH|^~\&|HUB|CAREHUB|PAS|RX1|20240102120001+0000||ACK^A01^ACK|ACK0002|P|2.5
	// MSA|AR|MSG0002
	// ERR|||100^Segment sequence error^HL70357|E|||segment does not start with a segment ID (an upper-case letter and two upper-case letters or digits) followed by the field separator
}

func ExampleEscape() {
	d := hl7.DefaultDelimiters
	esc := hl7.Escape("Smith & Jones | A^B\nline 2 café", d)
	fmt.Println(esc)

	// A receiver reads the value back with String, which decodes escapes.
	msg := "MSH|^~\\&|HUB|CAREHUB|PAS|RX1|20240102120000||ADT^A08^ADT_A01|MSG1|P|2.5\rNTE|1||" + esc
	m, err := hl7.Parse([]byte(msg))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(m.Segment("NTE").Field(3).String())
	// Output:
	// Smith \T\ Jones \F\ A\S\B\.br\line 2 caf\Xe9\
	// Smith & Jones | A^B
	// line 2 café
}

func ExampleParsePath() {
	p, err := hl7.ParsePath("PID-3(2).4.1")
	fmt.Println(p.Segment, p.Field, p.Repetition, p.Component, p.Subcomponent, err)
	fmt.Println(p)
	_, err = hl7.ParsePath("PID.3")
	fmt.Println(err)
	// Output:
	// PID 3 2 4 1 <nil>
	// PID-3(2).4.1
	// hl7: invalid path "PID.3": expected '-' and a field number after the segment
}
