package hub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/hub/config"
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
kafka: {embeddedAddr: "127.0.0.1:0", partitions: 2}
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
    webhook: {url: "http://127.0.0.1:9/events", secret: {value: hub-test-gp-secret}}
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
		"start build", "start broker", "start topics", "start publisher", "start consent", "start router", "start http", "start sources",
		"start retention", "stop retention", "stop sources", "stop http", "stop router", "stop patient index", "stop consent", "stop publisher", "stop broker",
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
    webhook: {url: "http://127.0.0.1:9/events", secret: {value: hub-test-cn-secret}}
    subscriptions:
      - {id: bad-list, basis: patient-list, patientList: %q, types: [discharge]}
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
		"recipients[1].subscriptions[1].patientList:", "no such file or directory",
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
	want := []string{"start build", "start broker", "start topics", "start publisher", "start consent", "start router", "start http",
		"stop router", "stop patient index", "stop consent", "stop publisher", "stop broker"}
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
