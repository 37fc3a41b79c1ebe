// Package e2e tests carehub as its users run it: the real binary, started on
// free ports with a temporary data directory and the embedded broker, real
// HTTP receivers that verify signatures, and real HTTP publishers.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/segmentio/kafka-go"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "carehub-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "carehub")
	cmd := exec.Command("go", "build", "-o", binary, "../cmd/carehub")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building carehub:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// delivery is one request a receiver got.
type delivery struct {
	WebhookID string
	Patient   string
	ID        string
	Source    string
	Type      string
	Body      []byte
	Verified  bool
}

// receiver is a recipient's webhook endpoint that verifies signatures.
type receiver struct {
	t      *testing.T
	key    []byte
	srv    *http.Server
	URL    string
	mu     sync.Mutex
	got    []delivery
	status int // answer to give; 0 means 204
	notify chan struct{}
}

func newReceiver(t *testing.T, secret string) *receiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key, err := webhook.DecodeSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{t: t, key: key, URL: "http://" + ln.Addr().String() + "/events", notify: make(chan struct{}, 1)}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve)}
	go r.srv.Serve(ln)
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func (r *receiver) setStatus(code int) {
	r.mu.Lock()
	r.status = code
	r.mu.Unlock()
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	err := webhook.Verify(r.key, req.Header, body, time.Now(), 5*time.Minute)
	r.mu.Lock()
	status := r.status
	var ce struct{ ID, Source, Type string }
	_ = json.Unmarshal(body, &ce)
	if status == 0 || status/100 == 2 {
		if err != nil {
			status = http.StatusUnauthorized
		} else {
			r.got = append(r.got, delivery{WebhookID: req.Header.Get(webhook.HeaderID), Patient: req.Header.Get(webhook.HeaderPatient),
				ID: ce.ID, Source: ce.Source, Type: ce.Type, Body: body, Verified: true})
		}
	}
	r.mu.Unlock()
	if err != nil {
		r.t.Errorf("receiver: delivery %s failed verification: %v", ce.ID, err)
	}
	select {
	case r.notify <- struct{}{}:
	default:
	}
	if status == 0 {
		status = http.StatusNoContent
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "0")
	}
	w.WriteHeader(status)
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

// wellIdentified reports whether d carries the webhook-id of its event:
// event.DeliveryID of its source and id.
func (d delivery) wellIdentified() bool {
	return d.Source != "" && d.WebhookID == event.DeliveryID(d.Source, d.ID)
}

func (r *receiver) ids() []string {
	var out []string
	for _, d := range r.deliveries() {
		out = append(out, d.ID)
	}
	return out
}

// waitFor waits until cond holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// hub is a running carehub process.
type hub struct {
	t       *testing.T
	cfgPath string
	dataDir string
	HTTP    string
	Kafka   string
	cmd     *exec.Cmd
	logs    *safeBuffer
	exited  chan error
	args    []string // more flags for carehub serve
	env     []string // more environment variables
}

type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type hubOptions struct {
	gp, careHome string // receiver URLs
	// inputsYAML is appended to the inputs list, after cloudevents.
	inputsYAML string
	// recipientsYAML is appended to the recipients list.
	recipientsYAML string
	// brokers, when set, points the hub at another hub's broker instead
	// of starting its own: the cluster mode.
	brokers string
	// webhookTimeout bounds one delivery attempt (default 2s).
	webhookTimeout string
	// dataDir, when set, is the embedded broker's data directory (default:
	// a fresh temporary one); diskFloors replaces the disk guard's floors
	// (a YAML fragment inside kafka: {...}); kafkaYAML is added inside
	// kafka: {...} (", publishTimeout: 2s").
	dataDir, diskFloors, kafkaYAML string
	// extraYAML is appended at the top level (a consent section, say).
	extraYAML string
	// careHomeSubscriptions, when set, replaces the care home VM123's
	// subscriptions (YAML list entries, each starting "      - ").
	careHomeSubscriptions string
	// env is added to the hub process's environment.
	env []string
}

// startHub writes a configuration like deploy/examples/carehub.yaml with
// free ports and the receivers' URLs, starts the binary and waits until ready.
func startHub(t *testing.T, o hubOptions) *hub {
	t.Helper()
	dir := t.TempDir()
	h := &hub{t: t, dataDir: filepath.Join(dir, "data"), HTTP: freePort(t), Kafka: freePort(t), logs: &safeBuffer{}}
	if o.webhookTimeout == "" {
		o.webhookTimeout = "2s"
	}
	h.env = o.env
	homeSubs := "      - {id: vm123-discharges-to-us, basis: discharge-destination, types: [admission, discharge, discharge-pending, discharge-pending-cancelled]}\n"
	if o.careHomeSubscriptions != "" {
		homeSubs = o.careHomeSubscriptions
	}
	// The embedded broker's disk guard with floors a test machine has room
	// for whatever else is on its disk (the defaults, 1 GiB and 256 MiB, are
	// for a server).
	brokersYAML := ", minFreeBytes: 67108864, hardMinFreeBytes: 16777216"
	if o.diskFloors != "" {
		brokersYAML = o.diskFloors
	}
	if o.dataDir != "" {
		h.dataDir = o.dataDir
	}
	if o.brokers != "" {
		h.Kafka = o.brokers
		brokersYAML = fmt.Sprintf(", brokers: [%q], replicationFactor: 1", o.brokers)
	}
	brokersYAML += o.kafkaYAML
	cfg := fmt.Sprintf(`
http: {addr: %q, maxBodyBytes: 65536}
dataDir: %q
kafka: {embeddedAddr: %q, partitions: 3%s}
pseudonymKey: {value: e2e-pseudonym-key-0123456789}
admin: {apiKey: {value: demo-admin-key}}
sources:
  - {ods: RX1, apiKey: {value: demo-rx1-key}}
  - {ods: VM123, apiKey: {value: demo-vm123-key}}
inputs:
  - cloudevents: {}
%srecipients:
  - ods: A81001
    role: gp-practice
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=}, timeout: %s}
    subscriptions:
      - {id: a81001-registered-patients, basis: registered-gp, types: [admission, discharge, careplan, admission-cancelled, discharge-cancelled, patient-updated, patient-merged, discharge-pending, discharge-pending-cancelled]}
  - ods: VM123
    role: social-care
    webhook: {url: %q, secret: {value: whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==}, timeout: %s}
    subscriptions:
%s%sdelivery: {minBackoff: 20ms, maxBackoff: 200ms}
%s`, h.HTTP, h.dataDir, h.Kafka, brokersYAML, o.inputsYAML, o.gp, o.webhookTimeout, o.careHome, o.webhookTimeout, homeSubs, o.recipientsYAML, o.extraYAML)
	h.cfgPath = filepath.Join(dir, "carehub.yaml")
	if err := os.WriteFile(h.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	h.start()
	t.Cleanup(func() {
		h.stop()
		h.checkLogsClean()
	})
	return h
}

func (h *hub) start() {
	t := h.t
	t.Helper()
	h.cmd = exec.Command(binary, append([]string{"serve", "--config", h.cfgPath, "--log-level", "debug"}, h.args...)...)
	h.cmd.Stdout = h.logs
	h.cmd.Stderr = h.logs
	if len(h.env) > 0 {
		h.cmd.Env = append(os.Environ(), h.env...)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.exited = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(h.cmd, h.exited)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + h.HTTP + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-h.exited:
			t.Fatalf("hub exited before ready: %v\n%s", err, h.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hub not ready after 60s\n%s", h.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (h *hub) stop() {
	if h.cmd == nil || h.cmd.ProcessState != nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-h.exited:
		if err != nil {
			h.t.Errorf("hub exited with %v after SIGTERM\n%s", err, tail(h.logs.String(), 4000))
		}
	case <-time.After(40 * time.Second):
		_ = h.cmd.Process.Kill()
		h.t.Errorf("hub did not exit within 40s of SIGTERM")
	}
	h.cmd = nil
}

// kill sends SIGKILL: no drain, no clean broker close.
func (h *hub) kill() {
	_ = h.cmd.Process.Kill()
	<-h.exited
	h.cmd = nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// canaries are every NHS number the tests publish.
var canaries sync.Map

func (h *hub) checkLogsClean() {
	logs := h.logs.String()
	canaries.Range(func(k, _ any) bool {
		if strings.Contains(logs, k.(string)) {
			h.t.Errorf("an NHS number used by the test appears in the hub's logs")
		}
		return true
	})
	// Every log line is JSON (zap): no stray prints.
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if !json.Valid(line) {
			h.t.Errorf("a log line is not JSON: %.200s", line)
			break
		}
	}
}

// publish posts an event and returns the status and body.
func (h *hub) publish(key, contentType string, body []byte) (int, []byte) {
	h.t.Helper()
	req, _ := http.NewRequest("POST", "http://"+h.HTTP+"/v1/events", bytes.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("publishing: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (h *hub) mustPublish(key string, ev map[string]any) {
	h.t.Helper()
	b, _ := json.Marshal(ev)
	status, body := h.publish(key, "application/cloudevents+json", b)
	if status != http.StatusAccepted {
		h.t.Fatalf("publishing %s: got %d %s, want 202", ev["id"], status, body)
	}
}

// endOffsets sums the end offsets of a topic's partitions.
func (h *hub) endOffsets(topic string) int64 {
	h.t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(h.Kafka), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 {
		h.t.Fatalf("metadata for %s: %v", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		h.t.Fatalf("list offsets for %s: %v", topic, err)
	}
	var sum int64
	for _, p := range res.Topics[topic] {
		sum += p.LastOffset
	}
	return sum
}

// records reads every record of a topic.
func (h *hub) records(topic string) []kafka.Message {
	h.t.Helper()
	n := h.endOffsets(topic)
	if n == 0 {
		return nil
	}
	c := &kafka.Client{Addr: kafka.TCP(h.Kafka), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []kafka.Message
	for _, p := range md.Topics[0].Partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{h.Kafka}, Topic: topic, Partition: p.ID, MaxWait: 50 * time.Millisecond})
		conn, err := kafka.DialLeader(ctx, "tcp", h.Kafka, topic, p.ID)
		if err != nil {
			h.t.Fatal(err)
		}
		last, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			h.t.Fatal(err)
		}
		for i := int64(0); i < last; i++ {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				h.t.Fatalf("reading %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
		}
		r.Close()
	}
	return out
}

// nhsNumber returns a valid NHS number in the 999 test range for seed n,
// and registers it as a canary.
func nhsNumber(n int) string {
	num := nhs.Synthetic(n).Digits()
	canaries.Store(num, true)
	return num
}

// example loads deploy/examples/NAME.json as a map.
func example(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "examples", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// set sets a value at a slash path inside m, creating objects on the way.
func set(m map[string]any, path string, v any) {
	parts := strings.Split(path, "/")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	if v == nil {
		delete(m, parts[len(parts)-1])
		return
	}
	m[parts[len(parts)-1]] = v
}

var idSeq struct {
	sync.Mutex
	n int
}

func newID(prefix string) string {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n++
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano(), idSeq.n)
}

// patientEvent is an example event for one patient.
func patientEvent(t *testing.T, kind, nhs, gp, destination string) map[string]any {
	ev := example(t, kind)
	ev["id"] = newID(kind)
	set(ev, "data/patient/nhsNumber", nhs)
	set(ev, "data/patient/gpPractice", gp)
	if destination != "" {
		set(ev, "data/discharge/destination/ods", destination)
	}
	return ev
}

// routerCaughtUp reports whether the router's group has committed the end of
// carehub.events and every deliverer the end of its outbox.
func (h *hub) routerCaughtUp() bool {
	h.t.Helper()
	return h.groupAtEnd("carehub-router", "carehub.events") &&
		h.groupAtEnd("carehub-deliver-a81001", "carehub.outbox.a81001") &&
		h.groupAtEnd("carehub-deliver-vm123", "carehub.outbox.vm123")
}

// readyz returns "" when the hub is ready, else /readyz's answer (the
// reasons), or the error reaching it.
func (h *hub) readyz() string {
	resp, err := http.Get("http://" + h.HTTP + "/readyz")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	return string(b)
}

// lag describes how far the router and the two deliverers are behind.
func (h *hub) lag() string {
	var parts []string
	for _, gt := range [][2]string{{"carehub-router", "carehub.events"}, {"carehub-deliver-a81001", "carehub.outbox.a81001"}, {"carehub-deliver-vm123", "carehub.outbox.vm123"}} {
		end, committed := h.groupProgress(gt[0], gt[1])
		parts = append(parts, fmt.Sprintf("%s %d/%d", gt[1], committed, end))
	}
	return strings.Join(parts, ", ")
}

// groupProgress sums a group's committed offsets and the topic's end offsets.
func (h *hub) groupProgress(group, topic string) (end, committed int64) {
	c := &kafka.Client{Addr: kafka.TCP(h.Kafka), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 {
		return -1, -1
	}
	var parts []int
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	ends, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return -1, -1
	}
	cm, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return -1, -1
	}
	for _, p := range ends.Topics[topic] {
		end += p.LastOffset
	}
	for _, p := range cm.Topics[topic] {
		if p.CommittedOffset > 0 {
			committed += p.CommittedOffset
		}
	}
	return end, committed
}

func (h *hub) groupAtEnd(group, topic string) bool {
	c := &kafka.Client{Addr: kafka.TCP(h.Kafka), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 {
		return false
	}
	var parts []int
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	ends, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return false
	}
	committed, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return false
	}
	done := map[int]int64{}
	for _, p := range committed.Topics[topic] {
		done[p.Partition] = p.CommittedOffset
	}
	for _, p := range ends.Topics[topic] {
		if p.LastOffset > 0 && done[p.Partition] < p.LastOffset {
			return false
		}
	}
	return true
}

// waitGroupMembers waits until a consumer group is stable with n members
// that each hold partitions.
func (h *hub) waitGroupMembers(group string, n int) {
	h.t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(h.Kafka), Timeout: 10 * time.Second}
	waitFor(h.t, fmt.Sprintf("%d members in %s", n, group), 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err != nil || len(res.Groups) != 1 {
			return false
		}
		g := res.Groups[0]
		if g.GroupState != "Stable" || len(g.Members) != n {
			return false
		}
		for _, m := range g.Members {
			if len(m.MemberAssignments.Topics) == 0 {
				return false
			}
		}
		return true
	})
}
