package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
)

// MLLP framing.
const (
	mllpStart = 0x0b
	mllpEnd1  = 0x1c
	mllpEnd2  = 0x0d
)

// HL7 returns event seq as an HL7 v2.4 ADT^A03 (discharge) message, as a
// trust's PAS sends it: the patient's NHS number in PID-3, the GP practice
// in PD1-3, the care home's ODS code in PV1-37 (the hub's default
// destination field) with discharge destination code 85 (care home) in
// PV1-36. Segments end in CR. ctrl is MSH-10, the message control ID.
func (p *Population) HL7(buf []byte, ctrl string, seq uint64, now time.Time) []byte {
	pt := p.patient(seq)
	gp := p.Recipients[p.gpOf(pt)].ODS
	home := p.homeODS(pt)
	ts := now.UTC().Format("20060102150405") + "+0000"
	start := now.Add(-72*time.Hour).UTC().Format("20060102150405") + "+0000"
	return fmt.Appendf(buf, hl7Template, Source, ts, ctrl, ts, ts, p.nhs[pt], gp, seq, home, start, ts)
}

// hl7Template is deploy's A03 (connectors/mllp/hl7/adt/testdata/adt_a03.hl7) with the
// values that vary. Arguments: sending facility, message time, control ID,
// event time, recorded time, NHS number, GP practice, encounter seq,
// destination ODS, admission time, discharge time.
const hl7Template = "MSH|^~\\&|BENCH|%s|CAREHUB|CAREHUB|%s||ADT^A03^ADT_A03|%s|P|2.4|||||GBR|UNICODE UTF-8|EN\r" +
	"EVN|A03|%s|||C1234567^DOCTOR^TEST|%s\r" +
	"PID|1||%s^^^NHS^NH||TESTPATIENT^ALEX^JO^^MS^^L||19380601|F|||1 Test Street^Flat 2^Testville^West Yorkshire^LS1 4AP^GBR^H|||||||||||||||||||||01\r" + // PID-32 01: NHS number verified
	"PD1|||TEST SURGERY^^%s\r" +
	"PV1|1|I|W7^^3^RX1AB^^^^^Ward 7|21|||C1234567^DOCTOR^TEST^^^Dr^^^GMC|||300||||54|||||ENC-%d^^^RX1^VN|||||||||||||||||85|%s|||||||%s|%s\r"

// mllpIngester publishes through the hub's HL7 v2 MLLP listener: one
// connection per concurrent publisher, one message at a time on each, as
// MLLP senders do. An event counts as accepted when its MSA|AA (or CA)
// acknowledgement is read: the hub sends it once the event is durable.
//
// The hub names the event by a UUID of (source, MSH-3, MSH-4, MSH-10), not
// by anything the bench chooses, so the ingester computes that id with the
// hub's own mapper and tells the tracker which sequence number it stands for.
type mllpIngester struct {
	addr   string
	mapper *adt.Mapper
	pool   chan *mllpConn
	err    atomic.Pointer[string]
	mu     sync.Mutex
	conns  []*mllpConn
}

type mllpConn struct {
	c net.Conn
	r *bufio.Reader
}

func newMLLPIngester(addr string, publishers int) (*mllpIngester, error) {
	mp, err := adt.NewMapper(adt.Options{Source: Source})
	if err != nil {
		return nil, err
	}
	return &mllpIngester{addr: addr, mapper: mp, pool: make(chan *mllpConn, max(publishers, 1)+8)}, nil
}

// ctrlPrefix is a short, phase-unique MSH-10 prefix (MSH-10 is at most 20
// characters; a tracker prefix is longer).
func ctrlPrefix(trackerPrefix string) string {
	h := sha256.Sum256([]byte(trackerPrefix))
	return "B" + hex.EncodeToString(h[:3])
}

func (m *mllpIngester) publish(ctx context.Context, t *tracker, seq uint64, n int) error {
	if n != 1 {
		return errors.New("bench: an MLLP message holds one event")
	}
	msg := t.pop.HL7(nil, ctrlPrefix(t.prefix)+strconv.FormatUint(seq, 10), seq, time.Now())
	parsed, err := hl7.Parse(msg)
	if err != nil {
		t.markRefused(seq)
		m.note(fmt.Sprintf("the bench's own HL7 message does not parse: %v", err))
		return nil
	}
	t.alias(m.mapper.EventID(parsed), seq)
	ack, err := m.roundTrip(ctx, msg)
	if err != nil {
		t.markRefused(seq)
		m.note(fmt.Sprintf("MLLP: %v", err))
		return nil
	}
	at := t.now()
	switch code := ackCode(ack); code {
	case "AA", "CA":
		t.markAccepted(seq, at)
	default:
		t.markRefused(seq)
		m.note(fmt.Sprintf("MLLP: the hub answered %s: %.300q", code, ack))
	}
	return nil
}

// roundTrip sends one framed message and reads its acknowledgement frame.
func (m *mllpIngester) roundTrip(ctx context.Context, msg []byte) ([]byte, error) {
	var c *mllpConn
	select {
	case c = <-m.pool:
	default:
		d := net.Dialer{Timeout: 10 * time.Second}
		nc, err := d.DialContext(ctx, "tcp", m.addr)
		if err != nil {
			return nil, err
		}
		c = &mllpConn{c: nc, r: bufio.NewReader(nc)}
		m.mu.Lock()
		m.conns = append(m.conns, c)
		m.mu.Unlock()
	}
	frame := make([]byte, 0, len(msg)+3)
	frame = append(append(append(frame, mllpStart), msg...), mllpEnd1, mllpEnd2)
	_ = c.c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.c.Write(frame); err != nil {
		c.c.Close()
		return nil, err
	}
	if _, err := c.r.ReadBytes(mllpStart); err != nil {
		c.c.Close()
		return nil, err
	}
	ack, err := c.r.ReadBytes(mllpEnd1)
	if err != nil {
		c.c.Close()
		return nil, err
	}
	if b, err := c.r.ReadByte(); err != nil || b != mllpEnd2 {
		c.c.Close()
		return nil, errors.New("bad MLLP trailer")
	}
	select {
	case m.pool <- c:
	default:
		c.c.Close()
	}
	return ack[:len(ack)-1], nil
}

// ackCode returns MSA-1 of an acknowledgement.
func ackCode(ack []byte) string {
	i := bytes.Index(ack, []byte("MSA|"))
	if i < 0 || len(ack) < i+6 {
		return "?"
	}
	return string(ack[i+4 : i+6])
}

func (m *mllpIngester) note(s string) { m.err.CompareAndSwap(nil, &s) }

func (m *mllpIngester) problem() string {
	if p := m.err.Load(); p != nil {
		return *p
	}
	return ""
}

func (m *mllpIngester) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.conns {
		c.c.Close()
	}
	m.conns = nil
}
