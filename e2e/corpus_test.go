package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// corpusDir holds the UK ADT corpus (its SOURCES.md says what it is).
var corpusDir = filepath.Join("..", "connectors", "mllp", "hl7", "adt", "testdata", "corpus")

// corpusMsg is one corpus message and what the README's tables say of it.
type corpusMsg struct {
	file    string
	ack     string // the MSA-1 the sender reads
	outcome string // event types joined by "+", "held:<reason>" or "error:<code>"
	payload []byte // CR-separated
}

var corpusNHS = regexp.MustCompile(`999[0-9]{7}`)

// loadCorpus reads corpus.tsv and its messages, and registers every NHS
// number in them as a canary for the hub's logs.
func loadCorpus(t *testing.T) []corpusMsg {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir, "corpus.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var out []corpusMsg
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		p, err := os.ReadFile(filepath.Join(corpusDir, f[0]))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(strings.TrimRight(string(p), "\n"), "\n", "\r") + "\r"
		for _, n := range corpusNHS.FindAllString(s, -1) {
			canaries.Store(n, true)
		}
		out = append(out, corpusMsg{file: f[0], ack: f[1], outcome: f[2], payload: []byte(s)})
	}
	if len(out) < 50 {
		t.Fatalf("the corpus has %d messages", len(out))
	}
	return out
}

// withControlID gives a message another MSH-10, so that each client's copy
// is a new message and not a resend.
func withControlID(p []byte, suffix string) []byte {
	f := strings.SplitN(string(p), "|", 11) // f[9] is MSH-10
	f[9] += suffix
	return []byte(strings.Join(f, "|"))
}

// exampleSection returns a section of the example deployment as JSON (a
// YAML flow value): key "consent", or "mllp.<key>" for the MLLP input's.
func exampleSection(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "examples", "carehub.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	var v any
	if k, ok := strings.CutPrefix(key, "mllp."); ok {
		for _, in := range cfg["inputs"].([]any) {
			if m, ok := in.(map[string]any)["mllp"].(map[string]any); ok {
				v = m[k]
			}
		}
	} else {
		v = cfg[key]
	}
	if v == nil {
		t.Fatalf("the example deployment has no %s", key)
	}
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(j)
}

// TestMLLPCorpus sends the whole UK corpus with each real MLLP client to a
// hub configured as the example deployment (its sensitivity mapping and
// consent policy): every message gets the acknowledgement corpus.tsv (and
// the README) says, what is shared is published, what is not is held and
// listed by the admin API, and a care home resident's confidential visit
// to a sexual health clinic reaches the GP only.
func TestMLLPCorpus(t *testing.T) {
	corpus := loadCorpus(t)
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	community := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jb21tdW5pdHktQ04wMDE=")

	// The confidential patient is on the community team's caseload: only
	// the confidentiality keeps the visit from it.
	var confidential corpusMsg
	for _, m := range corpus {
		if m.file == "a01_sexual_health_clinic_confidential.hl7" {
			confidential = m
		}
	}
	confNHS := corpusNHS.FindString(string(confidential.payload))
	list := filepath.Join(t.TempDir(), "caseload.txt")
	if err := os.WriteFile(list, []byte(confNHS+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL,
		inputsYAML: fmt.Sprintf("  - mllp: {addr: %q, source: RX1, readTimeout: 10s, idleTimeout: 60s, sensitivity: %s}\n",
			addr, exampleSection(t, "mllp.sensitivity")),
		recipientsYAML: fmt.Sprintf(`  - ods: CN001
    role: community
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jb21tdW5pdHktQ04wMDE=}, timeout: 2s}
    subscriptions:
      - {id: cn001-caseload, basis: patient-list, patientList: %q, types: [admission, transfer, discharge]}
`, community.URL, list),
		extraYAML: "consent: " + exampleSection(t, "consent") + "\n"})
	_, port, _ := net.SplitHostPort(addr)

	want := make([]string, len(corpus))
	for i, m := range corpus {
		want[i] = m.ack
	}
	type client struct {
		name, suffix string
		send         func(t *testing.T, files []string) []string
	}
	clients := []client{
		{"mllp_send", "-py", func(t *testing.T, files []string) []string {
			requirePeer(t, "mllp_send (python3-hl7)", "apt-get install -y python3-hl7", lookPath("mllp_send"))
			var codes []string
			for _, f := range files {
				out, err := exec.Command("mllp_send", "--loose", "--file", f, "--port", port, "127.0.0.1").CombinedOutput()
				if err != nil {
					t.Fatalf("mllp_send %s: %v\n%s", filepath.Base(f), err, out)
				}
				codes = append(codes, msa1(t, out))
			}
			return codes
		}},
		{"node-hl7-client", "-nh", func(t *testing.T, files []string) []string { return nodeSend(t, "nodehl7", port, files) }},
		{"@medplum/hl7", "-mp", func(t *testing.T, files []string) []string { return nodeSend(t, "medplum", port, files) }},
	}
	ran := 0
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			payloads := make([][]byte, len(corpus))
			for i, m := range corpus {
				payloads[i] = withControlID(m.payload, c.suffix)
			}
			got := c.send(t, writeMessages(t, payloads...))
			ran++
			for i := range corpus {
				if i >= len(got) || got[i] != want[i] {
					g := "(none)"
					if i < len(got) {
						g = got[i]
					}
					t.Errorf("%s: %s got %s, want %s (%s)", c.name, corpus[i].file, g, want[i], corpus[i].outcome)
				}
			}
		})
	}
	if ran == 0 {
		return
	}

	// What was shared is on carehub.events; what was not is held.
	events, held := 0, map[string]int{}
	for _, m := range corpus {
		switch {
		case strings.HasPrefix(m.outcome, "held:"):
			held[strings.TrimPrefix(m.outcome, "held:")] += ran
		case !strings.HasPrefix(m.outcome, "error:"):
			events += ran * len(strings.Split(m.outcome, "+"))
		}
	}
	waitFor(t, "every event durable", 30*time.Second, func() bool { return h.endOffsets("carehub.events") >= int64(events) })
	if n := h.endOffsets("carehub.events"); n != int64(events) {
		t.Errorf("carehub.events holds %d events, want %d", n, events)
	}
	status, body := h.admin("GET", "/v1/held/counts", "", nil, "")
	var counts struct {
		Total    int            `json:"total"`
		ByReason map[string]int `json:"byReason"`
		BySource map[string]int `json:"bySource"`
	}
	if err := json.Unmarshal(body, &counts); status != 200 || err != nil {
		t.Fatalf("GET /v1/held/counts: %d %s", status, body)
	}
	total := 0
	for reason, n := range held {
		total += n
		if counts.ByReason[reason] != n {
			t.Errorf("held for %s: %d, want %d", reason, counts.ByReason[reason], n)
		}
	}
	if counts.Total != total || counts.BySource["RX1"] != total {
		t.Errorf("held in all: %d (RX1 %d), want %d", counts.Total, counts.BySource["RX1"], total)
	}

	// The listing: metadata only, unless asked; each unidentified patient
	// keyed by a pseudonym of the hospital number.
	status, body = h.admin("GET", "/v1/held?reason=no-nhs-number", "", nil, "")
	var page struct {
		Items []map[string]any `json:"items"`
		Total int              `json:"total"`
	}
	if err := json.Unmarshal(body, &page); status != 200 || err != nil || page.Total != held["no-nhs-number"] {
		t.Fatalf("GET /v1/held?reason=no-nhs-number: %d %s", status, body)
	}
	for _, it := range page.Items {
		if it["trigger"] != "ADT^A04" || !strings.HasPrefix(fmt.Sprint(it["patient"]), "l1_") || it["message"] != nil {
			t.Errorf("held item %v: want trigger ADT^A04, a local pseudonym and no message", it)
		}
	}
	if bytes.Contains(body, []byte("RX1000012")) {
		t.Errorf("the listing shows the hospital number")
	}
	status, body = h.admin("GET", "/v1/held?include=message&reason=trigger-not-shared&limit=1", "", nil, "")
	if status != 200 || !bytes.Contains(body, []byte(`"message":"MSH|`)) || !bytes.Contains(body, []byte(`"next":`)) {
		t.Errorf("GET /v1/held?include=message: %d %.300s", status, body)
	}
	if status, body := h.admin("GET", "/v1/held?reason=because", "", nil, ""); status != 422 || !bytes.Contains(body, []byte("/query/reason")) {
		t.Errorf("a bad reason: %d %s", status, body)
	}
	if status, _ := h.publish("demo-rx1-key", "application/json", nil); status == 0 {
		t.Fatal("the hub is down")
	}

	// Confidential and sensitive: the GP receives the clinic visit; the
	// care home named as destination and the team whose caseload holds the
	// patient do not.
	confID, _ := canonical(t, withControlID(confidential.payload, clients[0].suffix))
	pending, _ := canonical(t, withControlID(corpusPayload(t, corpus, "a16_pending_discharge.hl7"), clients[0].suffix))
	discharge, _ := canonical(t, withControlID(corpusPayload(t, corpus, "a03_discharge_care_home.hl7"), clients[0].suffix))
	waitFor(t, "all events routed", 60*time.Second, func() bool { return h.routerCaughtUp() })
	waitFor(t, "the GP receives the clinic visit", 30*time.Second, func() bool { return slices.Contains(gp.ids(), confID) })
	waitFor(t, "the care home receives the pending discharge and the discharge", 30*time.Second, func() bool {
		return slices.Contains(home.ids(), pending) && slices.Contains(home.ids(), discharge)
	})
	if slices.Contains(home.ids(), confID) || slices.Contains(community.ids(), confID) {
		t.Errorf("a confidential visit to a sexual health clinic reached the care home (%v) or the community team (%v)",
			slices.Contains(home.ids(), confID), slices.Contains(community.ids(), confID))
	}
	status, body = h.admin("GET", "/v1/patients/"+confNHS+"/disclosures", "", nil, "")
	if status != 200 {
		t.Fatalf("disclosures: %d %s", status, body)
	}
	var disc struct {
		Disclosures []struct {
			EventID, Recipient, Rule string
			Withheld                 bool
		} `json:"disclosures"`
	}
	_ = json.Unmarshal(body, &disc)
	withheld := map[string]string{}
	for _, d := range disc.Disclosures {
		if d.EventID == confID && d.Withheld {
			withheld[d.Recipient] = d.Rule
		}
	}
	for _, r := range []string{"VM123", "CN001"} {
		if withheld[r] != "event:confidential" {
			t.Errorf("%s: withheld by %q, want event:confidential (disclosures %s)", r, withheld[r], body)
		}
	}
}

func corpusPayload(t *testing.T, corpus []corpusMsg, file string) []byte {
	t.Helper()
	for _, m := range corpus {
		if m.file == file {
			return m.payload
		}
	}
	t.Fatalf("no %s in the corpus", file)
	return nil
}

// nodeSend sends files over one connection with an npm client (send.js)
// and returns each acknowledgement's MSA-1.
func nodeSend(t *testing.T, client, port string, files []string) []string {
	t.Helper()
	dir := map[string]string{"nodehl7": "node-hl7-client", "medplum": filepath.Join("@medplum", "hl7")}[client]
	_, statErr := os.Stat(filepath.Join("peers", "node_modules", dir))
	requirePeer(t, "node and "+dir+" in e2e/peers/node_modules", "cd e2e/peers && npm ci", lookPath("node") && statErr == nil)
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
	return codes
}
