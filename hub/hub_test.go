package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/broker/brokertest"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/hub/diskguard"
	"github.com/carehub/carehub/hub/topic"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// testConfig is a small deployment on free loopback ports with its data in
// a temporary directory; inputs and recipients are appended to its lists.
func testConfig(t *testing.T, inputs, recipients string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	y := fmt.Sprintf(`
http: {addr: "127.0.0.1:0"}
dataDir: %q
kafka: {embeddedAddr: "127.0.0.1:0", partitions: 2, minFreeBytes: 67108864, hardMinFreeBytes: 16777216}
pseudonymKey: {value: hub-test-pseudonym-key-0123}
admin: {apiKey: {value: hub-test-admin-key}}
sources:
  - {ods: RX1, apiKey: {value: hub-test-rx1-key}}
inputs:
  - cloudevents: {}
  - mllp: {addr: "127.0.0.1:0", source: RX1}
%srecipients:
  - ods: A81001
    role: gp-practice
    webhook: {url: "http://127.0.0.1:9/events", secret: {value: whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM=}}
    subscriptions: [{basis: registered-gp, types: [discharge]}]
%s`, filepath.Join(dir, "data"), inputs, recipients)
	c, err := config.Parse([]byte(y), all.Registry())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return c
}

// steps records the hub's start and stop steps.
type steps struct {
	mu  sync.Mutex
	got []string
}

func (s *steps) add(step string) { s.mu.Lock(); s.got = append(s.got, step); s.mu.Unlock() }

func (s *steps) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// TestRunStartsReadyAndDrainsInOrder: the hub starts its parts in the
// documented order, is ready (/readyz 200) only once all have started, and
// drains them in the reverse order when its context ends.
func TestRunStartsReadyAndDrainsInOrder(t *testing.T) {
	cfg := testConfig(t, "", "")
	var st steps
	h := &hub{cfg: cfg, log: zap.NewNop(), trace: st.add}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, h, Options{Ready: func(addr string, _ []string) { ready <- addr }}) }()

	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run returned before it was ready: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("not ready within 60s")
	}
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz once ready: got %d, want 200", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after its context ended: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not drain within 60s")
	}
	want := []string{
		"start build", "start broker", "start topics", "start publisher", "start consent", "start accepted", "start recipients", "start router", "start http", "start sources",
		"start retention", "stop retention", "stop sources", "stop http", "stop router", "stop recipients", "stop accepted", "stop patient index", "stop consent", "stop publisher", "stop broker probe", "stop broker",
	}
	if got := st.list(); !slices.Equal(got, want) {
		t.Errorf("steps:\n\tgot  %v\n\twant %v", got, want)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Errorf("the HTTP listener %s still accepts after the drain", addr)
	}
}

// TestBuildReportsEveryProblemBeforeTheBroker: files the configuration
// names are read when the hub builds its parts, every problem is reported
// in one error, and the broker never starts (its data directory is not
// created).
func TestBuildReportsEveryProblemBeforeTheBroker(t *testing.T) {
	dir := t.TempDir()
	badList := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(badList, []byte("9990000018\n\n9990000019\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tls := fmt.Sprintf("  - mllp: {addr: \"127.0.0.1:0\", source: RX1, tls: {cert: %q, key: %q}}\n",
		filepath.Join(dir, "none.pem"), filepath.Join(dir, "none.key"))
	cfg := testConfig(t, tls, fmt.Sprintf(`  - ods: CN001
    role: community
    webhook: {url: "http://127.0.0.1:9/events", secret: {value: whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM=}}
    subscriptions:
      - {id: bad-list, basis: patient-list, patientList: %q, types: [discharge]}
  - ods: CN002
    role: community
    webhook: {url: "http://127.0.0.1:9/events", secret: {value: whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM=}}
    subscriptions:
      - {id: no-list, basis: patient-list, patientList: %q, types: [admission]}
`, badList, filepath.Join(dir, "missing.txt")))

	var st steps
	err := run(context.Background(), &hub{cfg: cfg, log: zap.NewNop(), trace: st.add}, Options{})
	if err == nil {
		t.Fatal("Run started with a bad patient list, a missing one and missing certificates")
	}
	for _, want := range []string{
		"starting carehub: build",
		"recipients[1].subscriptions[0].patientList: patient list " + badList + ": line 3: the check digit is wrong",
		"recipients[2].subscriptions[0].patientList:", "no such file or directory",
		"inputs[2].mllp: mllp: tls: loading cert and key",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "999000001") {
		t.Errorf("the error holds an NHS number from a patient list: %v", err)
	}
	if got := st.list(); !slices.Equal(got, []string{"start build"}) {
		t.Errorf("steps: got %v, want only the build", got)
	}
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the broker's data directory exists (%v): the broker started before the build failed", err)
	}
}

// TestAPartThatFailsToStartUndoesTheOthers: with http.addr taken, Run
// fails naming the step, and what had started is stopped: the broker's
// data directory is free for the next hub.
func TestAPartThatFailsToStartUndoesTheOthers(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := testConfig(t, "", "")
	cfg.HTTP.Addr = taken.Addr().String()
	core, logs := observer.New(zapcore.InfoLevel)
	var st steps
	err = run(context.Background(), &hub{cfg: cfg, log: zap.New(core), trace: st.add}, Options{})
	if err == nil || !strings.Contains(err.Error(), "starting carehub: http: listening on http.addr") {
		t.Fatalf("Run with http.addr taken: got %v, want an error naming the http step", err)
	}
	want := []string{"start build", "start broker", "start topics", "start publisher", "start consent", "start accepted", "start recipients", "start router", "start http",
		"stop router", "stop recipients", "stop accepted", "stop patient index", "stop consent", "stop publisher", "stop broker probe", "stop broker"}
	if got := st.list(); !slices.Equal(got, want) {
		t.Errorf("steps:\n\tgot  %v\n\twant %v", got, want)
	}
	if logs.FilterMessage("carehub ready").Len() != 0 {
		t.Errorf("the hub said it was ready")
	}
	// The data directory's lock was released: another hub starts on it.
	cfg.HTTP.Addr = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, zap.NewNop(), Options{Ready: func(string, []string) { cancel() }})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("a second hub on the same data directory: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the second hub did not start and stop within 60s")
	}
}

// TestDiskGuardStopsInputAndSaysWhy (issue 14, defect 3): below the data
// directory's floor of free space the hub answers 503 with Retry-After and
// the reason, /readyz is 503 with the same reason, and nothing is
// published; once space returns it takes input again by itself.
func TestDiskGuardStopsInputAndSaysWhy(t *testing.T) {
	cfg := testConfig(t, "", "")
	cfg.Kafka.MinFreeBytes, cfg.Kafka.HardMinFreeBytes = 64<<20, 16<<20
	cfg.Kafka.DiskCheckInterval = 10 * time.Millisecond
	var avail atomic.Uint64
	avail.Store(1 << 30)
	h := &hub{cfg: cfg, log: zap.NewNop(), freeSpace: func(string) (diskguard.Space, error) {
		return diskguard.Space{Avail: avail.Load(), Total: 2 << 30}, nil
	}}
	addr := runReady(t, h)
	raw, err := os.ReadFile("../deploy/examples/discharge.json")
	if err != nil {
		t.Fatal(err)
	}
	publish := func() (int, string, string) {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/events", strings.NewReader(string(raw)))
		req.Header.Set("Authorization", "Bearer hub-test-rx1-key")
		req.Header.Set("Content-Type", "application/cloudevents+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitReady := func(want int) string {
		deadline := time.Now().Add(10 * time.Second)
		for {
			status, body := readyz()
			if status == want {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz stayed %d (%s), want %d", status, body, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitReady(http.StatusOK)

	avail.Store(32 << 20) // below the floor, above the hard floor
	body := waitReady(http.StatusServiceUnavailable)
	if !strings.Contains(body, "disk: data directory disk space low") {
		t.Errorf("/readyz below the floor does not say why: %s", body)
	}
	status, retry, problemBody := publish()
	if status != http.StatusServiceUnavailable || retry == "" || !strings.Contains(problemBody, "disk space low") {
		t.Errorf("publishing below the floor: got %d (Retry-After %q) %s, want 503 with Retry-After and the reason", status, retry, problemBody)
	}
	_, before, err := broker.Offsets(context.Background(), h.brokers, topic.Events)
	if err != nil {
		t.Fatal(err)
	}
	if n := sum(before); n != 0 {
		t.Errorf("carehub.events holds %d events after a refusal", n)
	}

	avail.Store(1 << 30) // space returns
	waitReady(http.StatusOK)
	if status, _, b := publish(); status != http.StatusAccepted {
		t.Errorf("publishing once space returned: got %d %s, want 202", status, b)
	}
}

func sum(m map[int]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// TestPauseWhileHoldsMessagesUntilItMayGoOn: below the hard floor the
// router and deliverers handle nothing; they go on, in order, when space
// returns, and a message whose context ends meanwhile is nacked.
func TestPauseWhileHoldsMessagesUntilItMayGoOn(t *testing.T) {
	var mu sync.Mutex
	fine, changed := false, make(chan struct{})
	ok := func() (bool, string) { mu.Lock(); defer mu.Unlock(); return fine, "data directory disk space critical" }
	wake := func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return changed }
	set := func(v bool) { mu.Lock(); fine = v; close(changed); changed = make(chan struct{}); mu.Unlock() }
	handled := make(chan string, 2)
	h := pauseWhile(ok, wake, zap.NewNop())(func(m *message.Message) ([]*message.Message, error) {
		handled <- m.UUID
		return nil, nil
	})
	done := make(chan error, 1)
	go func() { _, err := h(message.NewMessage("m1", nil)); done <- err }()
	select {
	case id := <-handled:
		t.Fatalf("%s was handled while paused", id)
	case <-time.After(100 * time.Millisecond): // a bounded chance for a broken pause to show itself
	}
	set(true)
	if err := <-done; err != nil || <-handled != "m1" {
		t.Errorf("after resuming: %v", err)
	}
	set(false)
	m := message.NewMessage("m2", nil)
	ctx, cancel := context.WithCancel(context.Background())
	m.SetContext(ctx)
	go func() { _, err := h(m); done <- err }()
	cancel()
	if err := <-done; err == nil {
		t.Error("a paused message whose context ended was not nacked")
	}
}

// TestReadyzNamesAStoppedDelivererOrFeed: a deliverer or a pull
// recipient's feed that stops while the hub runs makes it unready, and
// /readyz and /metrics name it.
func TestReadyzNamesAStoppedDelivererOrFeed(t *testing.T) {
	cfg := testConfig(t, "", `  - ods: B82005
    role: gp-practice
    feed: {apiKey: {value: hub-test-b82005-key}}
    subscriptions: [{basis: registered-gp, types: [discharge]}]
`)
	h := &hub{cfg: cfg, log: zap.NewNop()}
	addr := runReady(t, h)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	if status, body := get("/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz once started: %d %s", status, body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, `carehub_readiness_check{check="deliverers"} 1`) ||
		!strings.Contains(body, `carehub_readiness_check{check="feeds"} 1`) || !strings.Contains(body, `carehub_readiness_check{check="consent"} 1`) {
		t.Errorf("/metrics does not report the deliverers, feeds and consent checks passing:\n%s", body)
	}

	h.fleet.mu.Lock()
	h.fleet.members["A81001"].run.handler.Stop()
	h.fleet.mu.Unlock()
	waitFor("/readyz to name the stopped deliverer", func() bool {
		status, body := get("/readyz")
		return status == http.StatusServiceUnavailable && strings.Contains(body, "deliverers: not delivering to A81001: its deliverer stopped")
	})
	h.fleet.mu.Lock()
	h.fleet.feeds["B82005"].Close()
	h.fleet.mu.Unlock()
	waitFor("/readyz to name the stopped feed", func() bool {
		_, body := get("/readyz")
		return strings.Contains(body, "feeds: not serving B82005: its feed stopped following its topic")
	})
	if _, body := get("/metrics"); !strings.Contains(body, "carehub_ready 0") || !strings.Contains(body, `carehub_readiness_check{check="deliverers"} 0`) {
		t.Errorf("/metrics does not report the hub unready:\n%s", body)
	}
}

// runReady runs h until the test ends and returns its HTTP address once it
// is ready; the test fails if it is not within a minute.
func runReady(t *testing.T, h *hub) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, h, Options{Ready: func(addr string, _ []string) { ready <- addr }}) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case addr := <-ready:
		return addr
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("not ready within 60s")
	}
	return ""
}

// TestAnExistingAcceptedTopicIsMadeDeleteOnly pins review bug (1) of the
// ack gate's rework at the hub's start: earlier versions created
// carehub.accepted with cleanup.policy compact,delete, and compaction can
// move an attempt's void after a record that came after it (the event
// lost: dedup's TestCompactionCannotReverseAVoid). The hub sets the topic
// delete-only, with the window as its retention, on every start.
//
// Gate review 5 (3): every start SET the retention to its own window, so a
// process started with a shorter ingest.duplicateWindow cut records the
// others still relied on. A shorter retention is raised; a longer one is
// left as is. The timestamps the hub writes are the ones retention deletes
// by: message.timestamp.type CreateTime.
func TestAnExistingAcceptedTopicIsMadeDeleteOnly(t *testing.T) {
	cfg := testConfig(t, "", "")
	wanted := strconv.FormatInt((cfg.Ingest.DuplicateWindow + topic.AcceptedSlack).Milliseconds(), 10)
	longer := strconv.FormatInt((cfg.Ingest.DuplicateWindow + 7*24*time.Hour).Milliseconds(), 10)
	for _, tc := range []struct{ name, had, want string }{
		{"a shorter retention is raised", "60000", wanted},
		{"a longer retention is kept", longer, longer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			brokers := brokertest.Start(t, broker.TopicSpec{Name: topic.Accepted, Partitions: 1, ReplicationFactor: 1,
				Configs: map[string]string{"cleanup.policy": "compact,delete", "retention.ms": tc.had, "message.timestamp.type": "LogAppendTime"}})
			cfg := testConfig(t, "", "")
			cfg.Kafka.Brokers, cfg.Kafka.EmbeddedAddr, cfg.Kafka.ReplicationFactor = brokers, "", 1
			h := &hub{cfg: cfg, log: zap.NewNop()}
			runReady(t, h)
			c := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := c.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{
				{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic.Accepted, ConfigNames: []string{"cleanup.policy", "retention.ms", "message.timestamp.type"}}}})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, r := range res.Resources {
				for _, e := range r.ConfigEntries {
					got[e.ConfigName] = e.ConfigValue
				}
			}
			want := map[string]string{"cleanup.policy": "delete", "retention.ms": tc.want, "message.timestamp.type": "CreateTime"}
			if !maps.Equal(got, want) {
				t.Errorf("carehub.accepted's configs after the start: got %v, want %v", got, want)
			}
		})
	}
}
