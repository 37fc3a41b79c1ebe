package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/carehub/carehub/schemas/event"

	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
	"github.com/google/go-cmp/cmp"
)

// mllpHub starts a GP receiver, a care-home receiver and a hub with an MLLP
// listener bound to RX1, and returns the listener's address.
func mllpHub(t *testing.T) (*hub, *receiver, *receiver, string) {
	t.Helper()
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	addr := freePort(t)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL,
		inputsYAML: fmt.Sprintf("  - mllp: {addr: %q, source: RX1, readTimeout: 10s, idleTimeout: 60s}\n", addr)})
	return h, gp, home, addr
}

// adtFixture reads a message from connectors/mllp/hl7/adt/testdata for another patient and
// control ID, with CR segment ends.
func adtFixture(t *testing.T, name, nhsNumber, controlID string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "connectors", "mllp", "hl7", "adt", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(strings.TrimRight(string(b), "\n"), "\n", "\r") + "\r"
	s = strings.ReplaceAll(s, "9991000003", nhsNumber)
	f := strings.SplitN(s, "|", 11) // f[9] is MSH-10
	f[9] = controlID
	return []byte(strings.Join(f, "|"))
}

// canonical maps a message as the hub does, to know the event it publishes.
func canonical(t *testing.T, payload []byte) (string, []byte) {
	t.Helper()
	mp, err := adt.NewMapper(adt.Options{Source: "RX1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := adt.Parse(payload)
	if err != nil {
		t.Fatal(err)
	}
	res, err := mp.Map(m)
	if err != nil || len(res.Events) != 1 {
		t.Fatalf("mapping: %v (held %+v)", err, res.Held)
	}
	return res.ID, res.Events[0].JSON
}

// mllpSend sends messages over one connection and returns each
// acknowledgement's MSA-1, checking that MSA-2 echoes MSH-10.
func mllpSend(t *testing.T, addr string, payloads ...[]byte) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := frame.NewReader(c, frame.ReaderOptions{})
	var codes []string
	for _, p := range payloads {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if err := frame.WriteFrame(c, p); err != nil {
			t.Fatal(err)
		}
		b, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("reading the acknowledgement: %v", err)
		}
		ack, err := hl7.Parse(b)
		if err != nil {
			t.Fatalf("the acknowledgement does not parse: %v", err)
		}
		orig, _ := hl7.ParseHeader(p)
		if got, want := ack.Segment("MSA").Field(2).String(), orig.ControlID(); got != want {
			t.Errorf("MSA-2 %q, want %q", got, want)
		}
		codes = append(codes, ack.Segment("MSA").Field(1).String())
	}
	return codes
}

// sameEvent compares two CloudEvents JSON documents as values.
func sameEvent(t *testing.T, what string, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: delivered body is not JSON: %v", what, err)
	}
	_ = json.Unmarshal(want, &w)
	if d := cmp.Diff(w, g); d != "" {
		t.Errorf("%s (-want +got):\n%s", what, d)
	}
}

func TestMLLPAdmissionThenDischargeReachGPAndCareHome(t *testing.T) {
	h, gp, home, addr := mllpHub(t)
	nhs := nhsNumber(7001)
	a01 := adtFixture(t, "adt_a01.hl7", nhs, newID("A01"))
	a03 := adtFixture(t, "adt_a03.hl7", nhs, newID("A03"))
	if got := mllpSend(t, addr, a01, a03); !slices.Equal(got, []string{"AA", "AA"}) {
		t.Fatalf("acknowledgements %v, want AA AA", got)
	}
	admID, admEvent := canonical(t, a01)
	disID, disEvent := canonical(t, a03)
	want := []string{admID, disID}
	for name, r := range map[string]*receiver{"GP": gp, "care home": home} {
		waitFor(t, name+" receives both", 30*time.Second, func() bool { return len(r.deliveries()) >= 2 })
		if got := r.ids(); !slices.Equal(got, want) {
			t.Errorf("%s deliveries:\n\tgot  %v\n\twant %v", name, got, want)
		}
		d := r.deliveries()
		sameEvent(t, name+": admission", d[0].Body, admEvent)
		sameEvent(t, name+": discharge", d[1].Body, disEvent)
		if d[0].Type != "org.carehub.admission.v1" || d[1].Type != "org.carehub.discharge.v1" {
			t.Errorf("%s: types %s, %s", name, d[0].Type, d[1].Type)
		}
	}

	// The HTTP path takes the very same canonical event (for another
	// patient) and delivers the same document: MLLP adds nothing of its own.
	nhs2 := nhsNumber(7002)
	_, httpEvent := canonical(t, adtFixture(t, "adt_a01.hl7", nhs2, newID("A01-HTTP")))
	status, body := h.publish("demo-rx1-key", "application/cloudevents+json", httpEvent)
	if status != 202 {
		t.Fatalf("publishing the canonical admission over HTTP: %d %s", status, body)
	}
	waitFor(t, "the HTTP admission at the GP", 30*time.Second, func() bool { return len(gp.deliveries()) >= 3 })
	viaHTTP, viaMLLP := gp.deliveries()[2].Body, gp.deliveries()[0].Body
	sameEvent(t, "HTTP path and MLLP path", bytes.ReplaceAll(viaHTTP, []byte(nhs2), []byte(nhs)),
		bytes.Replace(viaMLLP, []byte(admID), []byte(gp.deliveries()[2].ID), 1))

	for _, m := range h.records("carehub.events") {
		if bytes.Contains(m.Key, []byte(nhs)) {
			t.Errorf("an event's Kafka key holds the NHS number")
		}
	}
}

func TestMLLPCancelledAdmissionReachesGP(t *testing.T) {
	h, gp, home, addr := mllpHub(t)
	nhs := nhsNumber(7101)
	a01 := adtFixture(t, "adt_a01.hl7", nhs, newID("A01"))
	a11 := adtFixture(t, "adt_a11.hl7", nhs, newID("A11"))
	if got := mllpSend(t, addr, a01, a11); !slices.Equal(got, []string{"AA", "AA"}) {
		t.Fatalf("acknowledgements %v, want AA AA", got)
	}
	admID, _ := canonical(t, a01)
	canID, canEvent := canonical(t, a11)
	waitFor(t, "the GP receives the admission and its cancellation", 30*time.Second, func() bool { return len(gp.deliveries()) >= 2 })
	if got := gp.ids(); !slices.Equal(got, []string{admID, canID}) {
		t.Fatalf("GP deliveries %v, want %v", got, []string{admID, canID})
	}
	// A correction carries what a recipient needs to correct its record:
	// the patient's identifiers, the encounter, the cancellation.
	ce, err := event.Unmarshal(canEvent)
	if err != nil {
		t.Fatal(err)
	}
	correction, err := ce.Full()
	if err != nil {
		t.Fatal(err)
	}
	if d := gp.deliveries()[1]; d.Type != "org.carehub.admission-cancelled.v1" {
		t.Errorf("GP: second delivery is %s", d.Type)
	} else {
		sameEvent(t, "cancellation", d.Body, correction)
	}
	waitFor(t, "all events routed", 30*time.Second, func() bool { return h.routerCaughtUp() })
	// The care home subscribes to admissions and discharges only, but it
	// received the admission: its cancellation follows it (issue 11).
	waitFor(t, "the care home receives the cancellation", 30*time.Second, func() bool { return len(home.deliveries()) >= 2 })
	if got := home.ids(); !slices.Equal(got, []string{admID, canID}) {
		t.Errorf("care home deliveries %v, want the admission and its cancellation", got)
	}
}

// TestMLLPRefusedAndDuplicateMessagesPublishNothing: an invalid message
// gets AE, a message from another organisation AR, a resend AA; none of
// them is published.
func TestMLLPRefusedAndDuplicateMessagesPublishNothing(t *testing.T) {
	h, gp, _, addr := mllpHub(t)
	nhs := nhsNumber(7201)
	good := adtFixture(t, "adt_a08.hl7", nhs, newID("A08"))
	bad := bytes.Replace(adtFixture(t, "adt_a08.hl7", nhs, newID("A08-BAD")), []byte(nhs), []byte(nhs[:9]+string('0'+(nhs[9]-'0'+1)%10)), 1)
	canaries.Store(nhs[:9]+string('0'+(nhs[9]-'0'+1)%10), true)
	other := bytes.Replace(adtFixture(t, "adt_a08.hl7", nhs, newID("A08-RX2")), []byte("|PAS|RX1|"), []byte("|PAS|RX2|"), 1)
	oru := []byte("MSH|^~\\&|LAB|RX1|HUB|HUB|20250101||ORU^R01|" + newID("ORU") + "|P|2.4\rPID|1||" + nhs + "^^^NHS^NH\r")
	got := mllpSend(t, addr, good, bad, other, oru, good)
	if want := []string{"AA", "AE", "AR", "AR", "AA"}; !slices.Equal(got, want) {
		t.Fatalf("acknowledgements %v, want %v", got, want)
	}
	waitFor(t, "the update at the GP", 30*time.Second, func() bool { return len(gp.deliveries()) >= 1 })
	waitFor(t, "all events routed", 30*time.Second, func() bool { return h.routerCaughtUp() })
	if n := h.endOffsets("carehub.events"); n != 1 {
		t.Errorf("carehub.events holds %d events, want 1", n)
	}
	if n := len(gp.deliveries()); n != 1 {
		t.Errorf("the GP received %d deliveries, want 1", n)
	}
}

// requirePeer finds a third-party program. Absent on a developer's machine,
// the test is skipped with a message saying how to install it; absent under
// CI (CI set), the test fails: .ci/run installs every peer.
func requirePeer(t *testing.T, what, install string, found bool) {
	t.Helper()
	if found {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed, and CI is set: .ci/run must install it (%s)", what, install)
	}
	t.Skipf("%s is not installed: %s (CI installs it and never skips)", what, install)
}

func lookPath(name string) bool { _, err := exec.LookPath(name); return err == nil }

// writeMessages writes payloads to files with LF line ends, as the peers'
// users would have them on disk.
func writeMessages(t *testing.T, payloads ...[]byte) []string {
	t.Helper()
	dir := t.TempDir()
	var files []string
	for i, p := range payloads {
		f := filepath.Join(dir, fmt.Sprintf("msg%d.hl7", i))
		if err := os.WriteFile(f, bytes.ReplaceAll(p, []byte("\r"), []byte("\n")), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}

// TestMLLPPeerPythonHL7 sends with Debian's python3-hl7 mllp_send.
func TestMLLPPeerPythonHL7(t *testing.T) {
	requirePeer(t, "mllp_send (python3-hl7)", "apt-get install -y python3-hl7", lookPath("mllp_send"))
	h, gp, home, addr := mllpHub(t)
	_, port, _ := net.SplitHostPort(addr)
	nhs := nhsNumber(7301)
	a01 := adtFixture(t, "adt_a01.hl7", nhs, newID("PY-A01"))
	a03 := adtFixture(t, "adt_a03.hl7", nhs, newID("PY-A03"))
	noNHS := adtFixture(t, "adt_a08.hl7", nhs, newID("PY-HELD"))
	noNHS = bytes.Replace(noNHS, []byte("PID|1||"+nhs+"^^^NHS^NH"), []byte("PID|1||H1234^^^RX1^MR"), 1) // no NHS number: held
	bad := nhs[:9] + string('0'+(nhs[9]-'0'+1)%10)
	canaries.Store(bad, true)
	invalid := bytes.Replace(adtFixture(t, "adt_a08.hl7", nhs, newID("PY-BAD")), []byte(nhs), []byte(bad), 1) // check digit
	files := writeMessages(t, a01, a03, noNHS, invalid)
	var codes []string
	for _, f := range files {
		out, err := exec.Command("mllp_send", "--loose", "--file", f, "--port", port, "127.0.0.1").CombinedOutput()
		if err != nil {
			t.Fatalf("mllp_send %s: %v\n%s", filepath.Base(f), err, out)
		}
		codes = append(codes, msa1(t, out))
	}
	if want := []string{"AA", "AA", "AA", "AE"}; !slices.Equal(codes, want) {
		t.Fatalf("mllp_send read %v, want %v", codes, want)
	}
	if n := h.endOffsets("carehub.held"); n != 1 {
		t.Errorf("carehub.held holds %d records, want the one without an NHS number", n)
	}
	admID, _ := canonical(t, a01)
	disID, _ := canonical(t, a03)
	for name, r := range map[string]*receiver{"GP": gp, "care home": home} {
		waitFor(t, name+" receives both", 30*time.Second, func() bool { return len(r.deliveries()) >= 2 })
		if got := r.ids(); !slices.Equal(got, []string{admID, disID}) {
			t.Errorf("%s deliveries %v", name, got)
		}
	}
}

// msa1 finds MSA-1 in a peer's printout of an acknowledgement.
func msa1(t *testing.T, out []byte) string {
	t.Helper()
	s := strings.NewReplacer("\r", "\n", "\x0b", "", "\x1c", "").Replace(string(out))
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, "MSA|"); i >= 0 {
			f := strings.Split(line[i:], "|")
			if len(f) > 1 {
				return f[1]
			}
		}
	}
	t.Fatalf("no MSA segment in the peer's output:\n%q", out)
	return ""
}

// TestMLLPPeersNode sends with the npm clients node-hl7-client and
// @medplum/hl7 (installed by .ci/run into e2e/peers/node_modules).
func TestMLLPPeersNode(t *testing.T) {
	_, statErr := os.Stat(filepath.Join("peers", "node_modules", "node-hl7-client"))
	_, statErr2 := os.Stat(filepath.Join("peers", "node_modules", "@medplum", "hl7"))
	requirePeer(t, "node and the npm clients in e2e/peers/node_modules",
		"cd e2e/peers && npm ci", lookPath("node") && statErr == nil && statErr2 == nil)
	_, gp, _, addr := mllpHub(t)
	_, port, _ := net.SplitHostPort(addr)
	for i, client := range []string{"nodehl7", "medplum"} {
		t.Run(client, func(t *testing.T) {
			nhs := nhsNumber(7401 + 10*i)
			a01 := adtFixture(t, "adt_a01.hl7", nhs, newID(client+"-A01"))
			a03 := adtFixture(t, "adt_a03.hl7", nhs, newID(client+"-A03"))
			oru := bytes.Replace(adtFixture(t, "adt_a08.hl7", nhs, newID(client+"-ORU")), []byte("ADT^A08"), []byte("ORU^R01"), 1)
			files := writeMessages(t, a01, a03, oru)
			cmd := exec.Command("node", append([]string{filepath.Join("peers", "send.js"), client, port}, files...)...)
			out, err := cmd.Output()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("node send.js %s: %v\n%s%s", client, err, out, stderr)
			}
			var codes []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				codes = append(codes, strings.SplitN(line, "\t", 2)[0])
			}
			if want := []string{"AA", "AA", "AR"}; !slices.Equal(codes, want) {
				t.Fatalf("%s read %v, want %v\n%s", client, codes, want, out)
			}
			admID, _ := canonical(t, a01)
			waitFor(t, "the admission at the GP", 30*time.Second, func() bool { return slices.Contains(gp.ids(), admID) })
		})
	}
}

// TestMLLPPeerNetcatBrokenFraming: nc sends what no MLLP client should
// (no start block, garbage, a frame cut short, an unframed message) and the
// hub stays up and serves the next client.
func TestMLLPPeerNetcatBrokenFraming(t *testing.T) {
	requirePeer(t, "nc (netcat-openbsd)", "apt-get install -y netcat-openbsd", lookPath("nc"))
	h, gp, _, addr := mllpHub(t)
	host, port, _ := net.SplitHostPort(addr)
	nhs := nhsNumber(7501)
	msg := adtFixture(t, "adt_a08.hl7", nhs, newID("NC"))
	broken := [][]byte{
		msg, // no framing at all
		append([]byte("\x0b"), msg[:len(msg)/2]...),            // a frame cut short
		append(append([]byte("junk\x1c\r\x0b"), msg...), 0x1c), // garbage, then a frame without its CR
		bytes.Repeat([]byte{0x0b, 0x1c}, 1000),                 // empty frames
	}
	for i, b := range broken {
		cmd := exec.Command("nc", "-q", "1", "-w", "5", host, port)
		cmd.Stdin = bytes.NewReader(b)
		if out, err := cmd.CombinedOutput(); err != nil {
			// nc may report the hub closing first; only a hub that is
			// down matters, and the check below finds that.
			t.Logf("nc case %d: %v %s", i, err, out)
		}
	}
	if got := mllpSend(t, addr, adtFixture(t, "adt_a08.hl7", nhs, newID("NC-AFTER"))); !slices.Equal(got, []string{"AA"}) {
		t.Fatalf("after broken framing the hub answered %v", got)
	}
	if status, _ := h.publish("", "application/json", nil); status == 0 {
		t.Fatal("the HTTP API is down")
	}
	waitFor(t, "the update at the GP", 30*time.Second, func() bool { return len(gp.deliveries()) >= 1 })
}

// TestMLLPSIGTERMWithAStuckMessageEndsWithinTheStopTimeout pins issue 14's
// first defect ("SIGTERM always ends the process within the drain
// timeout") for the MLLP listener: a message is being made durable while
// the broker cannot answer (its process is stopped with SIGSTOP, so the
// produce neither succeeds nor fails), the hub is told to stop, and the
// process exits within --stop-timeout and a margin, without having sent a
// positive acknowledgement for the message. The HTTP variant is
// TestSIGTERMEndsTheProcessWithinTheStopTimeout.
func TestMLLPSIGTERMWithAStuckMessageEndsWithinTheStopTimeout(t *testing.T) {
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	a := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL}) // owns the broker
	addr := freePort(t)
	b := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, brokers: a.Kafka, kafkaYAML: ", publishTimeout: 60s",
		inputsYAML: fmt.Sprintf("  - mllp: {addr: %q, source: RX1}\n", addr)})
	const stopTimeout = 2 * time.Second
	b.stop()
	b.args = []string{"--stop-timeout", stopTimeout.String()}
	b.start()

	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if codes := mllpSend(t, addr, adtFixture(t, "adt_a01.hl7", nhsNumber(9601), "STUCK-0")); !slices.Equal(codes, []string{"AA"}) {
		t.Fatalf("with the broker up: got %v, want [AA]", codes)
	}

	// Stop the broker's process: connections stay open, nothing answers.
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.cmd.Process.Signal(syscall.SIGCONT) }) // before a is stopped
	if err := frame.WriteFrame(c, adtFixture(t, "adt_a01.hl7", nhsNumber(9602), "STUCK-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the hub to find the broker unresponsive", 60*time.Second, func() bool { return b.readyz() != "" })
	answered := make(chan []byte, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Minute))
		p, err := frame.NewReader(c, frame.ReaderOptions{}).ReadFrame()
		if err != nil {
			p = nil // closed without an acknowledgement
		}
		answered <- p
	}()
	select {
	case p := <-answered:
		t.Fatalf("the message was answered before the hub was stopped, so it was not stuck: %q", msa(p))
	default:
	}

	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	// A correctness bound of the drain, not a speed measurement: the
	// process must end once --stop-timeout has passed; the margin covers
	// a loaded machine.
	select {
	case <-b.exited:
	case <-time.After(stopTimeout + 20*time.Second):
		_ = b.cmd.Process.Kill()
		t.Fatalf("the hub did not exit after SIGTERM with an MLLP message stuck\n%s", tail(b.logs.String(), 3000))
	}
	b.cmd = nil
	if p := <-answered; p != nil && (msa(p) == "AA" || msa(p) == "CA") {
		t.Errorf("a message that never became durable was acknowledged %s", msa(p))
	}
}

// msa returns an acknowledgement's MSA-1, or what is wrong with it.
func msa(p []byte) string {
	if p == nil {
		return "(none)"
	}
	m, err := hl7.Parse(p)
	if err != nil {
		return "(unparsable: " + err.Error() + ")"
	}
	return m.Segment("MSA").Field(1).String()
}
