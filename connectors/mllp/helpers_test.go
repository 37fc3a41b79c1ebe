package mllp

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/event"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var validator = func() *event.Validator {
	v, err := event.NewValidator()
	if err != nil {
		panic(err)
	}
	return v
}()

// fakeIngest validates events as the hub does and records them. It can be
// told to fail, or to hold every Accept until released.
type fakeIngest struct {
	mu      sync.Mutex
	events  [][]byte
	held    []connector.Held
	fail    error
	hold    chan struct{} // when set, Accept waits until it is closed
	entered chan struct{} // when set, Accept signals it has started
	panics  int           // Accept panics this many times first
}

func (f *fakeIngest) Accept(ctx context.Context, org string, raw []byte) (connector.Accepted, error) {
	f.mu.Lock()
	hold, entered, fail := f.hold, f.entered, f.fail
	if f.panics > 0 {
		f.panics--
		f.mu.Unlock()
		panic("fake ingest panics")
	}
	f.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return connector.Accepted{}, ctx.Err()
		}
	}
	ev, err := validator.Parse(raw)
	if err != nil {
		return connector.Accepted{}, err
	}
	if ev.Publisher != org {
		return connector.Accepted{}, fmt.Errorf("published as %s by %s", ev.Publisher, org)
	}
	if fail != nil {
		return connector.Accepted{}, fail
	}
	f.mu.Lock()
	f.events = append(f.events, append([]byte(nil), raw...))
	f.mu.Unlock()
	return connector.Accepted{ID: ev.ID, Type: ev.Type}, nil
}

// AcceptBatch accepts each event as Accept does: all of them, or none when
// one fails (the source answers the whole message negatively).
func (f *fakeIngest) AcceptBatch(ctx context.Context, org string, raws []json.RawMessage) []connector.Result {
	out := make([]connector.Result, len(raws))
	for i, raw := range raws {
		acc, err := f.Accept(ctx, org, raw)
		out[i] = connector.Result{Accepted: acc, Err: err}
	}
	return out
}

// Hold records a held message, with the same fail, hold and entered
// controls as Accept.
func (f *fakeIngest) Hold(ctx context.Context, org string, h connector.Held) error {
	f.mu.Lock()
	hold, entered, fail := f.hold, f.entered, f.fail
	f.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail
	}
	f.mu.Lock()
	f.held = append(f.held, h)
	f.mu.Unlock()
	return nil
}

func (f *fakeIngest) heldRecords() []connector.Held {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]connector.Held(nil), f.held...)
}

func (f *fakeIngest) published() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.events...)
}

// running is a Source serving on a free port.
type running struct {
	t    *testing.T
	src  *Source
	addr string
	stop context.CancelFunc
	done chan error
	logs *observer.ObservedLogs
}

func start(t *testing.T, cfg Config, in connector.Ingest) *running {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Source == "" {
		cfg.Source = "RX1"
	}
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	env := connector.Env{Ingest: in, Log: zap.New(core)}
	if err := src.Register(env); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, src: src, addr: src.Addr().String(), stop: cancel, done: make(chan error, 1), logs: logs}
	go func() { r.done <- src.Run(ctx, env) }()
	t.Cleanup(func() {
		r.shutdown()
		checkLogs(t, logs)
	})
	return r
}

// shutdown cancels Run and waits for it to return.
func (r *running) shutdown() {
	r.stop()
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
		r.done <- nil // let a second call return at once
	case <-time.After(30 * time.Second):
		r.t.Fatalf("Run did not return within 30s of cancel")
	}
}

// patientData are values in the test messages that no log line may hold.
var patientData = []string{"9991000003", "9991000011", "9991000038", "9991000046", "TESTPATIENT", "ALEX", "SMITH", "FREDRICA", "LS1 4AP"}

func checkLogs(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += fmt.Sprintf(" %s=%v", k, v)
		}
		for _, p := range patientData {
			if strings.Contains(line, p) {
				t.Errorf("a log line holds patient data: %q", e.Message)
			}
		}
	}
}

// client is an MLLP client for tests.
type client struct {
	t  *testing.T
	nc net.Conn
	r  *frame.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, r: frame.NewReader(nc, frame.ReaderOptions{})}
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) (*client, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	nc, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, r: frame.NewReader(nc, frame.ReaderOptions{})}, nil
}

func (c *client) send(payload []byte) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := frame.WriteFrame(c.nc, payload); err != nil {
		c.t.Fatalf("sending: %v", err)
	}
}

func (c *client) raw(b []byte) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("writing: %v", err)
	}
}

// ack is a parsed acknowledgement.
type ack struct {
	Code     string // MSA-1
	Control  string // MSA-2
	ErrCode  string // ERR-3.1 of the first ERR
	Location string // ERR-2 of the first ERR
	Type     string // MSH-9
	m        *hl7.Message
}

func (c *client) read(timeout time.Duration) (ack, error) {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	b, err := c.r.ReadFrame()
	if err != nil {
		return ack{}, err
	}
	m, err := hl7.Parse(b)
	if err != nil {
		c.t.Fatalf("the acknowledgement does not parse: %v\n%q", err, b)
	}
	return ack{Code: m.Segment("MSA").Field(1).String(), Control: m.Segment("MSA").Field(2).String(),
		ErrCode: m.Segment("ERR").Field(3).Component(1).String(), Location: m.Segment("ERR").Field(2).Raw(),
		Type: m.Type().String(), m: m}, nil
}

func (c *client) mustRead() ack {
	c.t.Helper()
	a, err := c.read(10 * time.Second)
	if err != nil {
		c.t.Fatalf("reading the acknowledgement: %v", err)
	}
	return a
}

// roundTrip sends a message and reads its acknowledgement.
func (c *client) roundTrip(payload []byte) ack {
	c.t.Helper()
	c.send(payload)
	return c.mustRead()
}

// closedByServer reports whether the server closed the connection within
// timeout (reads return EOF or a reset).
func (c *client) closedByServer(timeout time.Duration) bool {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 4096)
	for {
		_, err := c.nc.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// waitFor waits until cond holds or fails the test.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// adtMessage builds an ADT message from RX1 with the given trigger,
// control ID and extra MSH-15/16, for NHS number nhs.
func adtMessage(trigger, control, nhsNumber string, mshExtra ...string) []byte {
	msh := `MSH|^~\&|PAS|RX1|CAREHUB|CAREHUB|20250314093500||ADT^` + trigger + `|` + control + `|P|2.4`
	if len(mshExtra) > 0 {
		msh += "|||" + strings.Join(mshExtra, "|")
	}
	pv1 := "PV1|1|I|AMU^^12^RX1AB" + strings.Repeat("|", 16) + "ENC-0001"
	return []byte(strings.Join([]string{msh, "EVN|" + trigger + "|20250314093500",
		"PID|1||" + nhsNumber + "^^^NHS^NH~RX1-0001^^^RX1^MR||TESTPATIENT^ALEX||19380601|F" + strings.Repeat("|", 24) + "01", // PID-32 01: verified
		"PD1|||TEST SURGERY^^A81001", pv1}, "\r") + "\r")
}

// size returns the number of messages d remembers.
func (d *dedupe) size() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.m)
}

// Stats counts what a Source has seen.
type Stats struct {
	Connections   int64 // connections accepted
	Refused       int64 // connections closed at once: MaxConns or MaxConnsPerPeer reached
	Frames        int64 // frames read
	Accepted      int64 // messages made durable (AA/CA)
	Duplicates    int64 // resends acknowledged without publishing
	Held          int64 // messages acknowledged and held, not shared (Ingest.Hold)
	Errors        int64 // messages answered AE/CE
	Rejected      int64 // messages answered AR/CR
	SkippedBytes  int64 // bytes outside frames
	Oversized     int64 // frames over MaxFrameBytes
	Timeouts      int64 // connections closed by a read, idle or write timeout
	NotAcked      int64 // acknowledgements not sent: enhanced mode asked for none
	WriteFailures int64 // acknowledgements that could not be written
}

// Stats returns s's counters so far.
func (s *Source) Stats() Stats {
	c := &s.stats
	return Stats{
		Connections: c.connections.Load(), Refused: c.refused.Load(), Frames: c.frames.Load(),
		Accepted: c.accepted.Load(), Duplicates: c.duplicates.Load(), Held: c.held.Load(),
		Errors: c.errors.Load(), Rejected: c.rejected.Load(), SkippedBytes: c.skippedBytes.Load(),
		Oversized: c.oversized.Load(), Timeouts: c.timeouts.Load(), NotAcked: c.notAcked.Load(),
		WriteFailures: c.writeFailures.Load(),
	}
}
