package mllp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/problem"
)

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"address without port", Config{Addr: "nowhere", Source: "RX1"}, `addr "nowhere" is not host:port`},
		{"port not a number", Config{Addr: "127.0.0.1:mllp", Source: "RX1"}, `addr "127.0.0.1:mllp": the port is not a number`},
		{"port too large", Config{Addr: "127.0.0.1:65536", Source: "RX1"}, `addr "127.0.0.1:65536": the port is not a number`},
		{"no source", Config{Addr: "127.0.0.1:0"}, `source "": not an ODS code`},
		{"source not ODS", Config{Addr: "127.0.0.1:0", Source: "rx1"}, "not an ODS code"},
		{"tiny frames", Config{Addr: "127.0.0.1:0", Source: "RX1", MaxFrameBytes: 10}, "maxFrameBytes must be between"},
		// Review of issue 14: a 1 GiB frame was allowed, and parsing and
		// mapping (outside the processing timeout) could hold a core for
		// about a minute.
		{"frames past the limit", Config{Addr: "127.0.0.1:0", Source: "RX1", MaxFrameBytes: MaxFrameBytesLimit + 1}, "maxFrameBytes must be between 1024 and 16777216"},
		{"negative timeout", Config{Addr: "127.0.0.1:0", Source: "RX1", IdleTimeout: -1}, "must be positive"},
		{"processing ID", Config{Addr: "127.0.0.1:0", Source: "RX1", ProcessingID: "X"}, `processingId "X"`},
		{"destination path", Config{Addr: "127.0.0.1:0", Source: "RX1", DestinationFields: []string{"nope"}}, "destinationFields"},
	}
	for _, tc := range tests {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New: %v, want an error about %s", tc.name, err, tc.want)
		}
	}
	// Every problem is reported at once.
	_, err := New(Config{Addr: "x", Source: "rx1", MaxFrameBytes: 10, ProcessingID: "X"})
	if err == nil || strings.Count(err.Error(), "\n") < 3 {
		t.Errorf("New with four problems: %v", err)
	}
}

func TestRegisterFailsOnTakenPort(t *testing.T) {
	r := start(t, Config{}, &fakeIngest{})
	src, err := New(Config{Addr: r.addr, Source: "RX1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Register(connector.Env{Ingest: &fakeIngest{}}); err == nil {
		t.Fatal("Register on a taken port succeeded")
	}
}

// TestAAOnlyOnceDurable: the acknowledgement waits for Ingest.Accept.
func TestAAOnlyOnceDurable(t *testing.T) {
	in := &fakeIngest{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	r := start(t, Config{}, in)
	c := dial(t, r.addr)
	c.send(adtMessage("A01", "MSG-1", "9991000003"))
	<-in.entered
	if a, err := c.read(300 * time.Millisecond); err == nil {
		t.Fatalf("an acknowledgement (%s) arrived before the event was durable", a.Code)
	}
	close(in.hold)
	a := c.mustRead()
	if a.Code != "AA" || a.Control != "MSG-1" || a.Type != "ACK^A01^ACK" {
		t.Fatalf("got %+v, want AA for MSG-1", a)
	}
	if n := len(in.published()); n != 1 {
		t.Fatalf("published %d events, want 1", n)
	}
}

// TestACKMatrix pins the answer to each kind of message.
func TestACKMatrix(t *testing.T) {
	good := func(control string) []byte { return adtMessage("A01", control, "9991000003") }
	edit := func(b []byte, old, new string) []byte { return []byte(strings.Replace(string(b), old, new, 1)) }
	tests := []struct {
		name     string
		payload  []byte
		fail     error // returned by Ingest.Accept
		code     string
		errCode  string
		location string
		publish  bool
	}{
		{"accepted", good("M1"), nil, "AA", "", "", true},
		{"another trust's facility", edit(good("M2"), "|PAS|RX1|", "|PAS|RX2|"), nil, "AR", "103", "MSH^1^4", false},
		{"a site of the trust", edit(good("M3"), "|PAS|RX1|", "|PAS|RX1AB^1.2.3^ISO|"), nil, "AA", "", "", true},
		{"no facility", edit(good("M4"), "|PAS|RX1|", "|PAS||"), nil, "AR", "103", "MSH^1^4", false},
		{"training message on a production listener", edit(good("M5"), "|M5|P|", "|M5|T|"), nil, "AR", "202", "MSH^1^11", false},
		{"not ADT", edit(good("M6"), "ADT^A01", "ORU^R01"), nil, "AR", "200", "MSH^1^9^^1", false},
		// Regression: triggers carehub does not share and patients without a
		// verified NHS number got AR 201 and AE 101, blocking a trust's whole
		// ADT queue: they are held and acknowledged.
		{"a trigger not shared is held", edit(good("M7"), "ADT^A01", "ADT^A15"), nil, "AA", "", "", false},
		{"no NHS number is held", edit(good("M8"), "9991000003^^^NHS^NH~", ""), nil, "AA", "", "", false},
		{"an unverified NHS number is held", edit(good("M8b"), "|F"+strings.Repeat("|", 24)+"01", "|F"+strings.Repeat("|", 24)+"02"), nil, "AA", "", "", false},
		{"no NHS number status is held", edit(good("M8c"), "|F"+strings.Repeat("|", 24)+"01", "|F"), nil, "AA", "", "", false},
		{"held, broker down", edit(good("M8d"), "ADT^A01", "ADT^A15"), problem.New(problem.Unavailable, "the held message could not be made durable; retry later"), "AR", "207", "", false},
		{"bad check digit", edit(good("M9"), "9991000003", "9991000004"), nil, "AE", "102", "PID^1^3^1^1", false},
		{"no visit number", edit(good("M10"), "ENC-0001", ""), nil, "AE", "101", "PV1^1^19^^1", false},
		{"not HL7 at all", []byte("hello"), nil, "AE", "100", "^1", false},
		{"no control ID", edit(good("M11"), "|M11|", "||"), nil, "AE", "101", "MSH^1^10", false},
		{"unsupported character set", edit(good("M12"), "|P|2.4", "|P|2.4|||||GBR|ISO IR87"), nil, "AR", "103", "MSH^1^18", false},
		{"broker down", good("M13"), problem.New(problem.Unavailable, "the event could not be made durable; retry later"), "AR", "207", "", false},
		{"refused by validation", good("M14"), problem.Violated("/data/patient", "schema:x", "x"), "AE", "207", "", false},
		{"enhanced, commit always", edit(good("M15"), "|M15|P|2.4", "|M15|P|2.4|||AL|NE"), nil, "CA", "", "", true},
		{"enhanced, commit on error only", edit(good("M16"), "|M16|P|2.4", "|M16|P|2.4|||ER|NE"), nil, "", "", "", true},
		{"enhanced, commit on error, error", edit(edit(good("M17"), "|M17|P|2.4", "|M17|P|2.4|||ER|NE"), "9991000003", "9991000004"), nil, "CE", "102", "PID^1^3^1^1", false},
		{"enhanced, application ack only", edit(good("M18"), "|M18|P|2.4", "|M18|P|2.4|||NE|AL"), nil, "AA", "", "", true},
		{"enhanced, application ack on success", edit(good("M19"), "|M19|P|2.4", "|M19|P|2.4|||NE|SU"), nil, "AA", "", "", true},
		{"enhanced, commit reject", edit(edit(good("M20"), "|M20|P|2.4", "|M20|P|2.4|||AL|AL"), "|PAS|RX1|", "|PAS|RX9|"), nil, "CR", "103", "MSH^1^4", false},
		{"enhanced, commit error", edit(edit(good("M21"), "|M21|P|2.4", "|M21|P|2.4|||AL"), "9991000003", "9991000004"), nil, "CE", "102", "PID^1^3^1^1", false},
		{"enhanced, nothing wanted", edit(good("M22"), "|M22|P|2.4", "|M22|P|2.4|||NE|NE"), nil, "", "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := &fakeIngest{fail: tc.fail}
			r := start(t, Config{}, in)
			c := dial(t, r.addr)
			c.send(tc.payload)
			if tc.code == "" {
				if a, err := c.read(300 * time.Millisecond); err == nil {
					t.Fatalf("got %s, want no acknowledgement", a.Code)
				}
			} else {
				a := c.mustRead()
				if a.Code != tc.code || a.ErrCode != tc.errCode || a.Location != tc.location {
					t.Errorf("got MSA-1 %s ERR-3 %q ERR-2 %q, want %s %q %q", a.Code, a.ErrCode, a.Location, tc.code, tc.errCode, tc.location)
				}
				// MSA-2 echoes MSH-10.
				if m, err := hl7.ParseHeader(tc.payload); err == nil && a.Control != m.ControlID() {
					t.Errorf("MSA-2 %q, want %q", a.Control, m.ControlID())
				}
				if a.Code != "AA" && a.Code != "CA" && a.m.Segment("ERR").Field(7).String() == "" {
					t.Errorf("a negative acknowledgement without a diagnostic in ERR-7")
				}
			}
			// A later good message on the same connection is still served.
			if a := c.roundTrip(good("NEXT")); a.Code != "AA" && tc.fail == nil {
				t.Errorf("the next message got %s", a.Code)
			}
			want := 0
			if tc.publish {
				want = 1
			}
			if tc.fail == nil {
				want++ // NEXT
			}
			if got := len(in.published()); got != want {
				t.Errorf("published %d events, want %d", got, want)
			}
			wantHeld := 0
			if tc.fail == nil && strings.HasSuffix(tc.name, " is held") {
				wantHeld = 1
			}
			if got := in.heldRecords(); len(got) != wantHeld {
				t.Errorf("held %d messages, want %d", len(got), wantHeld)
			} else if wantHeld == 1 && (!bytes.Equal(got[0].Original, tc.payload) || got[0].Reason == "" || got[0].ID == "") {
				t.Errorf("held record %+v: want the original message, a reason and an id", got[0])
			}
		})
	}
}

// TestHeldRecords: what a held message's record says, per reason, and that
// a resend of a held message is acknowledged without holding it twice.
func TestHeldRecords(t *testing.T) {
	good := func(control string) []byte { return adtMessage("A01", control, "9991000003") }
	edit := func(b []byte, old, new string) []byte { return []byte(strings.Replace(string(b), old, new, 1)) }
	status := "|F" + strings.Repeat("|", 24) + "01"
	tests := []struct {
		name, reason, trigger string
		payload               []byte
		nhs, local            bool
	}{
		{"not shared", "trigger-not-shared", "ADT^A15", edit(good("H1"), "ADT^A01", "ADT^A15"), true, true},
		{"no NHS number", "no-nhs-number", "ADT^A01", edit(good("H2"), "9991000003^^^NHS^NH~", ""), false, true},
		{"unverified", "nhs-number-unverified", "ADT^A01", edit(good("H3"), status, "|F"+strings.Repeat("|", 24)+"NSTS03"), true, true},
		{"no status", "nhs-number-status-missing", "ADT^A01", edit(good("H4"), status, "|F"), true, true},
	}
	in := &fakeIngest{}
	r := start(t, Config{}, in)
	c := dial(t, r.addr)
	for i, tc := range tests {
		if a := c.roundTrip(tc.payload); a.Code != "AA" {
			t.Fatalf("%s: got %s, want AA", tc.name, a.Code)
		}
		h := in.heldRecords()[i]
		if h.Reason != tc.reason || h.Trigger != tc.trigger || h.NHSNumber.IsZero() == tc.nhs || (h.LocalID != "") != tc.local ||
			h.ContentType != "x-application/hl7-v2+er7" || h.Time.IsZero() || h.Detail == "" {
			t.Errorf("%s: held %+v", tc.name, h)
		}
	}
	// A resend of a held message within the duplicate window: AA, not held again.
	if a := c.roundTrip(tests[0].payload); a.Code != "AA" {
		t.Fatalf("resend: got %s", a.Code)
	}
	if n := len(in.heldRecords()); n != len(tests) {
		t.Errorf("held %d records after a resend, want %d", n, len(tests))
	}
	if got := r.src.Stats().Held; got != int64(len(tests)) {
		t.Errorf("Stats().Held = %d, want %d", got, len(tests))
	}
	if len(in.published()) != 0 {
		t.Errorf("a held message was published")
	}

	// With allowUnverifiedNHSNumbers and assumeVerifiedWithoutStatus, the
	// unverified and unstated numbers are shared.
	in2 := &fakeIngest{}
	r2 := start(t, Config{AllowUnverifiedNHSNumbers: true, AssumeVerifiedWithoutStatus: true}, in2)
	c2 := dial(t, r2.addr)
	for _, tc := range tests[2:] {
		if a := c2.roundTrip(tc.payload); a.Code != "AA" {
			t.Fatalf("%s, allowed: got %s", tc.name, a.Code)
		}
	}
	if n, h := len(in2.published()), len(in2.heldRecords()); n != 2 || h != 0 {
		t.Errorf("allowed: published %d, held %d; want 2 and 0", n, h)
	}
}

// TestSwapPublishesTwoTransfers: an A17 makes two events durable before
// its AA; if either fails, the answer is AR.
func TestSwapPublishesTwoTransfers(t *testing.T) {
	payload, err := os.ReadFile("hl7/adt/testdata/corpus/a17_swap.hl7")
	if err != nil {
		t.Fatal(err)
	}
	payload = bytes.ReplaceAll(payload, []byte("\n"), []byte("\r"))
	in := &fakeIngest{}
	r := start(t, Config{}, in)
	c := dial(t, r.addr)
	if a := c.roundTrip(payload); a.Code != "AA" {
		t.Fatalf("got %s, want AA", a.Code)
	}
	if n := len(in.published()); n != 2 {
		t.Fatalf("published %d events, want 2", n)
	}
	in.mu.Lock()
	in.fail = problem.New(problem.Unavailable, "down")
	in.mu.Unlock()
	if a := c.roundTrip(bytes.Replace(payload, []byte("|UKC-"), []byte("|UKC-X"), 1)); a.Code != "AR" {
		t.Errorf("with the broker down: got %s, want AR", a.Code)
	}
}

// TestLegacyERR: for versions before 2.5, ERR-1 and MSA-3 carry the error
// too, as those receivers read them.
func TestLegacyERR(t *testing.T) {
	r := start(t, Config{}, &fakeIngest{})
	c := dial(t, r.addr)
	a := c.roundTrip(adtMessage("A01", "OLD-1", "9991000004"))
	if got := a.m.Segment("ERR").Field(1).Raw(); got != "PID^1^3^102&Data type error&HL70357" {
		t.Errorf("ERR-1 %q", got)
	}
	if a.m.Segment("MSA").Field(3).String() == "" {
		t.Errorf("MSA-3 is empty")
	}
}

func TestDuplicates(t *testing.T) {
	in := &fakeIngest{}
	r := start(t, Config{}, in)
	c := dial(t, r.addr)
	msg := adtMessage("A01", "DUP-1", "9991000003")
	for i := 0; i < 3; i++ {
		if a := c.roundTrip(msg); a.Code != "AA" || a.Control != "DUP-1" {
			t.Fatalf("copy %d: %+v", i, a)
		}
	}
	// A resend with a new MSH-7 is the same message.
	if a := c.roundTrip(bytes.Replace(msg, []byte("20250314093500||"), []byte("20250314100000||"), 1)); a.Code != "AA" {
		t.Fatalf("resend with a new MSH-7: %s", a.Code)
	}
	if n := len(in.published()); n != 1 {
		t.Fatalf("published %d events, want 1", n)
	}
	// The same control ID for a different message is refused.
	if a := c.roundTrip(adtMessage("A01", "DUP-1", "9991000011")); a.Code != "AR" || a.ErrCode != "205" || a.Location != "MSH^1^10" {
		t.Fatalf("reused control ID: %+v", a)
	}
	// Another connection sees the same memory.
	if a := dial(t, r.addr).roundTrip(msg); a.Code != "AA" {
		t.Fatalf("resend on another connection: %s", a.Code)
	}
	if n := len(in.published()); n != 1 {
		t.Fatalf("published %d events, want 1", n)
	}
	if st := r.src.Stats(); st.Duplicates != 4 || st.Accepted != 1 || st.Rejected != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestFailedPublishIsNotRemembered: a message whose publish failed is
// published when resent.
func TestFailedPublishIsNotRemembered(t *testing.T) {
	in := &fakeIngest{fail: problem.New(problem.Unavailable, "down")}
	r := start(t, Config{}, in)
	c := dial(t, r.addr)
	msg := adtMessage("A01", "RETRY-1", "9991000003")
	if a := c.roundTrip(msg); a.Code != "AR" {
		t.Fatalf("while down: %s", a.Code)
	}
	in.mu.Lock()
	in.fail = nil
	in.mu.Unlock()
	if a := c.roundTrip(msg); a.Code != "AA" {
		t.Fatalf("after recovery: %s", a.Code)
	}
	if n := len(in.published()); n != 1 {
		t.Fatalf("published %d events, want 1", n)
	}
}

// TestConcurrentResend: a resend on a second connection while the first
// copy is in flight waits for it, and is not published twice.
func TestConcurrentResend(t *testing.T) {
	in := &fakeIngest{hold: make(chan struct{}), entered: make(chan struct{}, 2)}
	r := start(t, Config{}, in)
	msg := adtMessage("A01", "RACE-1", "9991000003")
	c1, c2 := dial(t, r.addr), dial(t, r.addr)
	c1.send(msg)
	<-in.entered
	c2.send(msg)
	if _, err := c2.read(200 * time.Millisecond); err == nil {
		t.Fatal("the second copy was answered while the first was in flight")
	}
	close(in.hold)
	if a1, a2 := c1.mustRead(), c2.mustRead(); a1.Code != "AA" || a2.Code != "AA" {
		t.Fatalf("got %s and %s", a1.Code, a2.Code)
	}
	if n := len(in.published()); n != 1 {
		t.Fatalf("published %d events, want 1", n)
	}
}

func TestDedupeWindowAndCap(t *testing.T) {
	d := newDedupe(time.Hour, 3)
	t0 := time.Unix(1000, 0)
	var dig [32]byte
	for i := 0; i < 5; i++ {
		st, e := d.begin(fmt.Sprint(i), dig, t0)
		if st != dupProceed {
			t.Fatalf("%d: state %d", i, st)
		}
		d.finish(e, true, t0)
	}
	if n := d.size(); n > 3 {
		t.Fatalf("remembers %d, cap 3", n)
	}
	if st, _ := d.begin("4", dig, t0); st != dupAlready {
		t.Fatalf("newest forgotten: state %d", st)
	}
	if st, e := d.begin("0", dig, t0); st != dupProceed {
		t.Fatalf("oldest still remembered: state %d", st)
	} else {
		d.finish(e, false, t0)
	}
	if st, e := d.begin("4", dig, t0.Add(2*time.Hour)); st != dupProceed {
		t.Fatalf("remembered past the window: state %d", st)
	} else {
		d.finish(e, true, t0)
	}
}

// TestInOrderPipelined: frames sent back to back are answered one by one,
// in order.
func TestInOrderPipelined(t *testing.T) {
	in := &fakeIngest{}
	r := start(t, Config{}, in)
	c := dial(t, r.addr)
	var all []byte
	const n = 50
	for i := 0; i < n; i++ {
		all = frame.AppendFrame(all, adtMessage("A08", fmt.Sprintf("SEQ-%03d", i), "9991000003"))
	}
	c.raw(all)
	for i := 0; i < n; i++ {
		if a := c.mustRead(); a.Control != fmt.Sprintf("SEQ-%03d", i) || a.Code != "AA" {
			t.Fatalf("ack %d: %+v", i, a)
		}
	}
	for i, ev := range in.published() {
		if want := fmt.Sprintf(`"id":"%s"`, r.src.mapper.EventID(mustParse(t, adtMessage("A08", fmt.Sprintf("SEQ-%03d", i), "9991000003")))); !bytes.Contains(ev, []byte(want)) {
			t.Fatalf("event %d published out of order", i)
		}
	}
}

func mustParse(t *testing.T, b []byte) *hl7.Message {
	t.Helper()
	m, err := hl7.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestGarbageBetweenFrames: bytes outside frames are skipped and counted;
// the frames around them are answered.
func TestGarbageBetweenFrames(t *testing.T) {
	r := start(t, Config{}, &fakeIngest{})
	c := dial(t, r.addr)
	c.raw([]byte("\r\nGET / HTTP/1.1\r\n\r\n"))
	c.raw(frame.AppendFrame([]byte("garbage"), adtMessage("A08", "G-1", "9991000003")))
	if a := c.mustRead(); a.Code != "AA" {
		t.Fatalf("got %s", a.Code)
	}
	waitFor(t, "skipped bytes counted", 5*time.Second, func() bool { return r.src.Stats().SkippedBytes >= 26 })
	if r.logs.FilterMessage("MLLP bytes outside frames skipped").Len() == 0 {
		t.Error("skipped bytes not reported in the log")
	}
}

// TestOversizedFrame: a frame over the limit gets AE with its own error,
// and the connection goes on.
func TestOversizedFrame(t *testing.T) {
	in := &fakeIngest{}
	r := start(t, Config{MaxFrameBytes: 2048}, in)
	c := dial(t, r.addr)
	big := adtMessage("A08", "BIG-1", "9991000003")
	big = append(big, []byte("NTE|1||"+strings.Repeat("x", 4096)+"\r")...)
	a := c.roundTrip(big)
	if a.Code != "AE" || a.ErrCode != "104" || !strings.Contains(a.m.Segment("ERR").Field(7).String(), "2048") {
		t.Fatalf("got %+v", a)
	}
	if a := c.roundTrip(adtMessage("A08", "SMALL-1", "9991000003")); a.Code != "AA" {
		t.Fatalf("after the oversized frame: %s", a.Code)
	}
	if st := r.src.Stats(); st.Oversized != 1 || len(in.published()) != 1 {
		t.Fatalf("stats %+v, published %d", st, len(in.published()))
	}
}

// TestHostilePeers throws what a broken or malicious peer might at the
// listener, then checks that a well-behaved client is still served.
func TestHostilePeers(t *testing.T) {
	in := &fakeIngest{}
	r := start(t, Config{ReadTimeout: 300 * time.Millisecond, IdleTimeout: 600 * time.Millisecond, MaxFrameBytes: 4096}, in)
	valid := adtMessage("A08", "H-1", "9991000003")

	t.Run("random bytes", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(seed int64) {
				defer wg.Done()
				c := dial(t, r.addr)
				rng := rand.New(rand.NewSource(seed))
				for j := 0; j < 50; j++ {
					b := make([]byte, rng.Intn(2048))
					rng.Read(b)
					// Sprinkle framing bytes so that frames open and close.
					for k := 0; k < len(b)/64; k++ {
						b[rng.Intn(len(b))] = []byte{frame.StartBlock, frame.EndBlock, frame.CarriageReturn}[rng.Intn(3)]
					}
					_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
					if _, err := c.nc.Write(b); err != nil {
						return // the server closed it: fine
					}
				}
			}(int64(i))
		}
		wg.Wait()
	})
	t.Run("fragments of valid frames", func(t *testing.T) {
		frame := frame.AppendFrame(nil, valid)
		for cut := 1; cut < len(frame); cut += 37 {
			c := dial(t, r.addr)
			c.raw(frame[:cut])
			c.nc.Close() // truncated frame: the peer goes away mid-frame
		}
		// One byte at a time is a valid, slow frame.
		c := dial(t, r.addr)
		for _, b := range frame {
			c.raw([]byte{b})
		}
		if a := c.mustRead(); a.Code != "AA" {
			t.Fatalf("byte-by-byte frame: %s", a.Code)
		}
	})
	t.Run("frame larger than the limit", func(t *testing.T) {
		c := dial(t, r.addr)
		c.raw(append([]byte{frame.StartBlock}, bytes.Repeat([]byte("PID|"), 100_000)...))
		c.raw([]byte{frame.EndBlock, frame.CarriageReturn})
		if a := c.mustRead(); a.Code != "AE" || a.ErrCode != "104" {
			t.Fatalf("got %+v", a)
		}
	})
	t.Run("frame that never ends", func(t *testing.T) {
		c := dial(t, r.addr)
		c.raw([]byte{frame.StartBlock})
		c.raw([]byte("MSH|^~\\&|"))
		// Keep trickling bytes: ReadTimeout runs from the start block.
		go func() {
			for i := 0; i < 20; i++ {
				time.Sleep(50 * time.Millisecond)
				_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := c.nc.Write([]byte("x")); err != nil {
					return
				}
			}
		}()
		if !c.closedByServer(5 * time.Second) {
			t.Fatal("a frame that never ends kept the connection open")
		}
	})
	t.Run("a new start block now and then", func(t *testing.T) {
		// Regression (issue 14): a new start block every 20 s kept a frame
		// open well past the 60 s ReadTimeout. Here: one every 100 ms
		// against a 300 ms ReadTimeout.
		c := dial(t, r.addr)
		go func() {
			for i := 0; i < 30; i++ {
				_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := c.nc.Write([]byte{frame.StartBlock, 'M', 'S', 'H'}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		if !c.closedByServer(2500 * time.Millisecond) {
			t.Fatal("start blocks trickled in kept an unfinished frame open past ReadTimeout")
		}
	})
	t.Run("idle connection", func(t *testing.T) {
		c := dial(t, r.addr)
		start := time.Now()
		if !c.closedByServer(5 * time.Second) {
			t.Fatal("an idle connection was not closed")
		}
		if d := time.Since(start); d < 500*time.Millisecond {
			t.Fatalf("closed after %v, before the idle timeout", d)
		}
	})
	t.Run("peer that never reads its acknowledgements", func(t *testing.T) {
		c := dial(t, r.addr)
		frame := frame.AppendFrame(nil, valid)
		batch := bytes.Repeat(frame, 200)
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			for i := 0; i < 2000; i++ { // bounded: at most ~190 MB... stops when the server closes
				_ = c.nc.SetWriteDeadline(time.Now().Add(3 * time.Second))
				if _, err := c.nc.Write(batch); err != nil {
					return
				}
			}
		}()
		select {
		case <-closed:
		case <-time.After(60 * time.Second):
			t.Fatal("the server kept a connection that never reads")
		}
		if r.src.Stats().WriteFailures == 0 && r.src.Stats().Timeouts == 0 {
			t.Error("no write failure or timeout recorded")
		}
	})
	// After all that, a good client is served and the listener is up.
	c := dial(t, r.addr)
	if a := c.roundTrip(adtMessage("A08", "AFTER-1", "9991000003")); a.Code != "AA" {
		t.Fatalf("after the hostile peers: %s", a.Code)
	}
}

// TestDrain: shutdown answers the message in flight, closes idle
// connections at once, and only then does Run return.
func TestDrain(t *testing.T) {
	in := &fakeIngest{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	r := start(t, Config{IdleTimeout: time.Hour}, in)
	busy, idle := dial(t, r.addr), dial(t, r.addr)
	busy.send(adtMessage("A01", "DRAIN-1", "9991000003"))
	<-in.entered
	waitFor(t, "both connections accepted", 5*time.Second, func() bool {
		r.src.mu.Lock()
		defer r.src.mu.Unlock()
		return len(r.src.conns) == 2
	})
	r.stop()
	if !idle.closedByServer(5 * time.Second) {
		t.Fatal("the idle connection was not closed on shutdown")
	}
	select {
	case <-r.done:
		t.Fatal("Run returned with a message in flight")
	case <-time.After(200 * time.Millisecond):
	}
	close(in.hold)
	if a := busy.mustRead(); a.Code != "AA" || a.Control != "DRAIN-1" {
		t.Fatalf("in-flight message: %+v", a)
	}
	if !busy.closedByServer(5 * time.Second) {
		t.Fatal("the busy connection was not closed after its answer")
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatal(err)
		}
		r.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
}

func TestMaxConns(t *testing.T) {
	r := start(t, Config{MaxConns: 2, MaxConnsPerPeer: 2}, &fakeIngest{})
	a, b := dial(t, r.addr), dial(t, r.addr)
	waitFor(t, "two connections", 5*time.Second, func() bool { return r.src.Stats().Connections == 2 })
	third := dial(t, r.addr)
	if !third.closedByServer(5 * time.Second) {
		t.Fatal("a connection over MaxConns was kept")
	}
	for _, c := range []*client{a, b} {
		if ack := c.roundTrip(adtMessage("A08", "MC", "9991000003")); ack.Code != "AA" {
			t.Fatalf("got %s", ack.Code)
		}
	}
}

// TestMaxConnsPerPeer pins part of issue 14's fifth defect: 260 idle
// connections from one peer used up the listener's fixed limit of 256 and
// every other sender was reset. A peer is now held to its own limit, and
// the other slots stay open for other senders.
func TestMaxConnsPerPeer(t *testing.T) {
	r := start(t, Config{MaxConns: 10, MaxConnsPerPeer: 2}, &fakeIngest{})
	a, b := dial(t, r.addr), dial(t, r.addr)
	waitFor(t, "two connections", 5*time.Second, func() bool { return r.src.Stats().Connections == 2 })
	third := dial(t, r.addr)
	if !third.closedByServer(5 * time.Second) {
		t.Fatal("a third connection from one peer was kept")
	}
	// The same limit, seen from another address of this machine, is not
	// used up: 127.0.0.2 is another peer.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", r.addr)
	if err != nil {
		t.Fatalf("another peer could not connect: %v", err)
	}
	other := &client{t: t, nc: nc, r: frame.NewReader(nc, frame.ReaderOptions{})}
	t.Cleanup(func() { nc.Close() })
	if ack := other.roundTrip(adtMessage("A08", "PP1", "9991000003")); ack.Code != "AA" {
		t.Fatalf("another peer: got %s", ack.Code)
	}
	for _, c := range []*client{a, b} {
		if ack := c.roundTrip(adtMessage("A08", "PP2", "9991000003")); ack.Code != "AA" {
			t.Fatalf("got %s", ack.Code)
		}
	}
	if _, err := New(Config{Source: "RX1", MaxConns: 2, MaxConnsPerPeer: 3}); err == nil ||
		!strings.Contains(err.Error(), "maxConnectionsPerPeer must not exceed maxConnections") {
		t.Errorf("a per-peer limit above the listener's: got %v", err)
	}
}

func TestRunBeforeRegister(t *testing.T) {
	src, err := New(Config{Addr: "127.0.0.1:0", Source: "RX1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(context.Background(), connector.Env{}); err == nil {
		t.Fatal("Run before Register succeeded")
	}
	if err := src.Register(connector.Env{}); err == nil {
		t.Fatal("Register without an Ingest succeeded")
	}
}

// TestPanicInIngest: a panic while publishing closes that connection only,
// and does not leave the message stuck as "in flight" for its resend.
func TestPanicInIngest(t *testing.T) {
	in := &fakeIngest{panics: 1}
	r := start(t, Config{ProcessTimeout: time.Second}, in)
	msg := adtMessage("A01", "PANIC-1", "9991000003")
	c := dial(t, r.addr)
	c.send(msg)
	if !c.closedByServer(5 * time.Second) {
		t.Fatal("the connection survived a panic")
	}
	if a := dial(t, r.addr).roundTrip(msg); a.Code != "AA" {
		t.Fatalf("resend after the panic: %s", a.Code)
	}
	if n := len(in.published()); n != 1 {
		t.Fatalf("published %d, want 1", n)
	}
}

func TestConfigValidatesSensitivity(t *testing.T) {
	tests := []struct {
		name  string
		rules []adt.SensitivityRule
		want  string // in the error; "" for none
	}{
		{"good", []adt.SensitivityRule{{TreatmentFunction: "360", Categories: []string{"sexual-health"}}, {Location: "GIC", Categories: []string{"gender-identity"}}}, ""},
		{"neither", []adt.SensitivityRule{{Categories: []string{"hiv"}}}, "sensitivity[0]: a rule names a treatmentFunction or a location"},
		{"both", []adt.SensitivityRule{{TreatmentFunction: "360", Location: "GUM", Categories: []string{"hiv"}}}, "not both"},
		{"no category", []adt.SensitivityRule{{TreatmentFunction: "360"}}, "at least one category"},
		{"bad category", []adt.SensitivityRule{{TreatmentFunction: "360", Categories: []string{"Sexual Health"}}}, `category "Sexual Health"`},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.Source = "RX1"
		c.Sensitivity = tt.rules
		err := c.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: got %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}

// TestControlIDIsNotLogged pins part of issue 14's fifth defect: an NHS
// number sent as MSH-10 reached two log lines, because the control ID was
// logged as sent. Logs now carry a keyed hash of it, the same for a resend.
func TestControlIDIsNotLogged(t *testing.T) {
	in := &fakeIngest{}
	r := start(t, Config{}, in)
	c := dial(t, r.addr)
	const asControlID = "9991000011" // an NHS number where the control ID goes
	msg := adtMessage("A08", asControlID, "9991000003")
	for i := 0; i < 2; i++ {
		if ack := c.roundTrip(msg); ack.Code != "AA" {
			t.Fatalf("got %s", ack.Code)
		}
	}
	hashes := map[any]bool{}
	for _, e := range r.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, asControlID) {
			t.Errorf("a log line holds the control ID: %s", line)
		}
		if h, ok := e.ContextMap()["control_id_hash"]; ok {
			hashes[h] = true
		}
	}
	if len(hashes) != 1 {
		t.Errorf("control ID hashes logged for one message sent twice: %v, want one", hashes)
	}
}

// TestHeaderValuesAreNotLogged pins a gap found in the audit of issue 14
// (its fifth finding's class): the trigger (MSH-9.2) was logged as sent,
// so "ADT^9991000011" put an NHS number in a log line. Every header field
// a log line could describe is filled with an NHS number in turn, and no
// log line may hold it; a trigger is logged only when carehub knows it.
func TestHeaderValuesAreNotLogged(t *testing.T) {
	const canary = "9991000038" // an NHS number where a header value goes
	tests := []struct {
		name        string
		seg         string
		field       int
		value       string
		wantAck     string // "" when the message asks for no acknowledgement
		wantTrigger string // the trigger logged; "" for a message refused before it is known
	}{
		{"trigger", "MSH", 9, "ADT^" + canary, "AA", unrecognised},
		{"trigger with structure", "MSH", 9, "ADT^" + canary + "^" + canary, "AA", unrecognised},
		{"message type", "MSH", 9, canary + "^A08", "AR", unrecognised},
		{"message structure", "MSH", 9, "ADT^A08^" + canary, "AA", "A08"},
		{"trigger in EVN-1 only", "MSH", 9, "ADT", "AA", unrecognised}, // EVN-1 is set below
		{"sending application", "MSH", 3, canary, "AA", "A08"},
		{"sending facility", "MSH", 4, canary, "AR", "A08"},
		{"receiving application", "MSH", 5, canary, "AA", "A08"},
		{"receiving facility", "MSH", 6, canary, "AA", "A08"},
		{"time of message", "MSH", 7, canary, "AA", "A08"},
		{"security", "MSH", 8, canary, "AA", "A08"},
		{"processing ID", "MSH", 11, canary, "AR", "A08"},
		{"version", "MSH", 12, canary, "AR", "A08"},
		{"accept acknowledgement type", "MSH", 15, canary, "", "A08"},
		{"application acknowledgement type", "MSH", 16, canary, "CA", "A08"}, // enhanced mode: MSH-15 empty means AL
		{"character set", "MSH", 18, canary, "AR", ""},
		{"event type code", "EVN", 1, canary, "AA", "A08"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := &fakeIngest{}
			r := start(t, Config{}, in)
			c := dial(t, r.addr)
			msg := withField(adtMessage("A08", "MSG-1", "9991000003"), tc.seg, tc.field, tc.value)
			if tc.name == "trigger in EVN-1 only" {
				msg = withField(msg, "EVN", 1, canary)
			}
			if tc.wantAck == "" {
				c.send(msg)
				waitFor(t, "the message to be answered with no acknowledgement", 10*time.Second,
					func() bool { return r.src.Stats().NotAcked == 1 })
			} else if got := c.roundTrip(msg); got.Code != tc.wantAck {
				t.Fatalf("got %s (ERR %s at %s), want %s", got.Code, got.ErrCode, got.Location, tc.wantAck)
			}
			for _, h := range in.heldRecords() {
				if strings.Contains(h.Trigger, canary) {
					t.Errorf("the held record's trigger holds the value of %s-%d: %s", tc.seg, tc.field, h.Trigger)
				}
			}
			var triggers []any
			for _, e := range r.logs.All() {
				line := fmt.Sprint(e.Message, e.ContextMap())
				if strings.Contains(line, canary) {
					t.Errorf("a log line holds the value of %s-%d: %s", tc.seg, tc.field, line)
				}
				if v, ok := e.ContextMap()["trigger"]; ok {
					triggers = append(triggers, v)
				}
			}
			want := []any{}
			if tc.wantTrigger != "" {
				want = []any{tc.wantTrigger}
			}
			if fmt.Sprint(triggers) != fmt.Sprint(want) {
				t.Errorf("triggers logged: got %v, want %v", triggers, want)
			}
		})
	}
}

// withField returns msg with field n of its first seg segment set to value
// (MSH fields are numbered as the standard numbers them).
func withField(msg []byte, seg string, n int, value string) []byte {
	segs := strings.Split(strings.TrimSuffix(string(msg), "\r"), "\r")
	for i, s := range segs {
		if !strings.HasPrefix(s, seg+"|") {
			continue
		}
		fields := strings.Split(s, "|")
		idx := n
		if seg == "MSH" {
			idx = n - 1
		}
		for len(fields) <= idx {
			fields = append(fields, "")
		}
		fields[idx] = value
		segs[i] = strings.Join(fields, "|")
		break
	}
	return []byte(strings.Join(segs, "\r") + "\r")
}

// TestOneErrorLocation pins a gap found in the audit of issue 9 ("one HL7
// location formatter"): the ACK's ERR-2 said "PID^1^3^2^1", the mapping's
// error "PID-3(2).1" and a release's problem document "/original/PID-3".
// Each now derives from hl7.ErrDetail.Location: the log's err_location,
// the ACK's ERR-2, the mapping error's text and the release's pointer
// ("/original/" and the location) name the same place.
func TestOneErrorLocation(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		want string // ERR-2
	}{
		{"mapping: a repetition's component too long",
			[]byte(strings.Replace(string(adtMessage("A08", "LOC-1", "9991000003")), "RX1-0001", strings.Repeat("x", 101), 1)), "PID^1^3^2^1"},
		{"sending facility not the listener's", withField(adtMessage("A08", "LOC-2", "9991000003"), "MSH", 4, "RX2"), "MSH^1^4"},
		{"processing ID not the listener's", withField(adtMessage("A08", "LOC-3", "9991000003"), "MSH", 11, "T"), "MSH^1^11"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, Config{}, &fakeIngest{})
			a := dial(t, r.addr).roundTrip(tc.msg)
			if a.Location != tc.want {
				t.Errorf("ERR-2: got %q, want %q", a.Location, tc.want)
			}
			var logged []any
			for _, e := range r.logs.FilterMessage("HL7 message refused").All() {
				logged = append(logged, e.ContextMap()["err_location"])
			}
			if fmt.Sprint(logged) != fmt.Sprint([]any{tc.want}) {
				t.Errorf("logged err_location: got %v, want [%s]", logged, tc.want)
			}
			_, err := r.src.Reread(context.Background(), connector.HeldMessage{Org: "RX1", ContentType: media.HL7v2, Original: tc.msg})
			var pe *problem.Error
			if !errors.As(err, &pe) || len(pe.Violations) != 1 {
				t.Fatalf("Reread: got %v, want one violation", err)
			}
			if got, want := pe.Violations[0].Pointer, "/original/"+tc.want; got != want {
				t.Errorf("release pointer: got %q, want %q", got, want)
			}
			m, err := adt.Parse(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.src.mapper.Map(m); err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("mapping error %q does not name %s", err, tc.want)
			}
		})
	}
}

// TestIdleTimeoutIgnoresBytesOutsideFrames pins issue 14's "idle and frame
// timeouts that a trickle of bytes cannot extend" for the idle timeout: a
// peer that sends a byte outside any frame every 100 ms (a keep-alive
// newline, junk, stray end blocks) against a 500 ms idle timeout is closed
// by the idle timeout, as a silent one is. (TestHostilePeers covers the
// frame timeout: a new start block every 100 ms against ReadTimeout.)
func TestIdleTimeoutIgnoresBytesOutsideFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"carriage returns", []byte{'\r'}},
		{"junk", []byte("x")},
		{"end blocks", []byte{frame.EndBlock, frame.CarriageReturn}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// ReadTimeout is long, so only the idle timeout can close it.
			r := start(t, Config{ReadTimeout: time.Minute, IdleTimeout: 500 * time.Millisecond}, &fakeIngest{})
			c := dial(t, r.addr)
			stop := make(chan struct{})
			trickled := make(chan struct{})
			go func() {
				defer close(trickled)
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for {
					_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
					if _, err := c.nc.Write(tc.b); err != nil {
						return // closed by the server
					}
					select {
					case <-stop:
						return
					case <-tick.C:
					}
				}
			}()
			closed := c.closedByServer(10 * time.Second)
			close(stop)
			<-trickled
			if !closed {
				t.Fatal("bytes outside frames every 100 ms kept the connection open past a 500 ms idle timeout")
			}
			if got := r.src.Stats().Timeouts; got != 1 {
				t.Errorf("timeouts: got %d, want 1", got)
			}
			closes := r.logs.FilterMessage("MLLP connection closed: timeout").All()
			if len(closes) != 1 || closes[0].ContextMap()["inside_frame"] != false {
				t.Errorf("got %d timeout log lines (%v), want one, outside a frame", len(closes), closes)
			}
			if r.src.Stats().SkippedBytes == 0 {
				t.Error("no byte outside frames was counted as skipped")
			}
		})
	}
}
