package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/e2e/bench"
	"github.com/carehub/carehub/hub/config"
)

// TestBenchSuiteCompletes runs every scenario briefly against a real hub
// process (this command, built) and checks that the run completes, loses
// nothing and that the JSON holds every field. It asserts no speed.
func TestBenchSuiteCompletes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds carehub and runs the bench suite (about a minute)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "carehub")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building carehub: %v", err)
	}
	exitCode := -1
	benchExit = func(code int) { exitCode = code }
	defer func() { benchExit = os.Exit }()

	out := filepath.Join(dir, "bench.json")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, []string{"bench", "--suite", "--ingest", "batch", "--duration", "1s",
		"--recipients", "40", "--backlog", "1000", "--patients", "500",
		"--hub-binary", bin, "--work-dir", filepath.Join(dir, "work"), "--out", out}, &stdout, &stderr)
	if err != nil || exitCode != -1 {
		t.Fatalf("bench: %v (exit %d)\nstdout:\n%s\nstderr (tail):\n%s", err, exitCode, stdout.String(), benchTail(stderr.String(), 4000))
	}
	for _, want := range []string{"scenario", "throughput", "latency", "fanout", "isolation", "backlog", "feed", "longpoll", "deliveries/s",
		"feed/batch: 1 client on its feed", "longpoll/batch: 100 clients, each on its own feed", "kafka-go consuming the same topics raw"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), "delivered") {
		t.Errorf("no progress lines on stderr")
	}

	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Scenarios []map[string]any `json:"scenarios"`
		Targets   []map[string]any `json:"targets"`
		Lost      *float64         `json:"lost"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("the JSON: %v\n%s", err, b)
	}
	if len(rep.Scenarios) != len(bench.Scenarios()) {
		t.Fatalf("%d scenario rows, want %d", len(rep.Scenarios), len(bench.Scenarios()))
	}
	if rep.Lost == nil || *rep.Lost != 0 {
		t.Errorf("lost: %v", rep.Lost)
	}
	required := []string{"scenario", "ingest", "hub_process", "hub_events_per_s", "hub_deliveries_per_s",
		"reference_deliveries_per_s", "ratio", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_seconds",
		"peak_rss_bytes", "lost"}
	for i, row := range rep.Scenarios {
		if row["scenario"] != bench.Scenarios()[i] {
			t.Errorf("row %d is %v, want %s", i, row["scenario"], bench.Scenarios()[i])
		}
		for _, k := range required {
			if _, ok := row[k]; !ok {
				t.Errorf("row %v lacks %q", row["scenario"], k)
			}
		}
		if row["hub_process"] != bench.ProcessSubprocess {
			t.Errorf("row %v: hub_process %v", row["scenario"], row["hub_process"])
		}
		// The run must have moved events on both paths and read the hub's
		// process figures; how fast is not asserted.
		for _, k := range []string{"hub_deliveries_per_s", "reference_deliveries_per_s", "peak_rss_bytes", "p50_ms"} {
			if v, _ := row[k].(float64); v <= 0 {
				t.Errorf("row %v: %s = %v, want > 0", row["scenario"], k, row[k])
			}
		}
		if v, _ := row["lost"].(float64); v != 0 {
			t.Errorf("row %v lost %v events", row["scenario"], v)
		}
	}
	if bl := rep.Scenarios[4]["backlog"]; bl == nil {
		t.Errorf("the backlog row has no backlog details")
	}
	// The feed rows: clients read their feeds live, then from the start,
	// beside kafka-go reading the same topics raw; every number once.
	for i, clients := range map[int]float64{5: 1, 6: 100} {
		f, _ := rep.Scenarios[i]["feed"].(map[string]any)
		if f == nil {
			t.Errorf("row %v has no feed details", rep.Scenarios[i]["scenario"])
			continue
		}
		if f["clients"] != clients {
			t.Errorf("row %v: %v clients, want %v", rep.Scenarios[i]["scenario"], f["clients"], clients)
		}
		for _, k := range []string{"polls", "read_events", "read_events_per_s", "raw_events", "raw_events_per_s"} {
			if v, _ := f[k].(float64); v <= 0 {
				t.Errorf("row %v: feed.%s = %v, want > 0", rep.Scenarios[i]["scenario"], k, f[k])
			}
		}
		if f["read_events"] != f["raw_events"] {
			t.Errorf("row %v: the clients read %v events from the start, kafka-go %v", rep.Scenarios[i]["scenario"], f["read_events"], f["raw_events"])
		}
		for _, k := range []string{"gaps", "repeats", "errors"} {
			if v, _ := f[k].(float64); v != 0 {
				t.Errorf("row %v: feed.%s = %v, want 0", rep.Scenarios[i]["scenario"], k, v)
			}
		}
		if v, _ := rep.Scenarios[i]["ratio"].(float64); v <= 0 {
			t.Errorf("row %v: no feed / raw ratio", rep.Scenarios[i]["scenario"])
		}
	}
	// The longpoll row also publishes as fast as possible after its fixed rate.
	if f, _ := rep.Scenarios[6]["feed"].(map[string]any); f != nil {
		if v, _ := f["max_events_per_s"].(float64); v <= 0 {
			t.Errorf("longpoll: max_events_per_s = %v", f["max_events_per_s"])
		}
	}
	if len(rep.Targets) == 0 {
		t.Errorf("no targets reported")
	}
}

func benchTail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func TestBenchPrintConfig(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"bench", "--scenario", "isolation", "--print-config",
		"--target", "http://127.0.0.1:8085", "--receiver-addr", "127.0.0.1:9400"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	cfg, err := config.Parse(stdout.Bytes(), all.Registry())
	if err != nil {
		t.Fatalf("the printed configuration does not load: %v\n%s", err, stdout.String())
	}
	if cfg.HTTP.Addr != "127.0.0.1:8085" || len(cfg.Recipients) != 30 || len(cfg.Sources) != 1 {
		t.Errorf("addr %s, %d recipients, %d sources", cfg.HTTP.Addr, len(cfg.Recipients), len(cfg.Sources))
	}
	down := 0
	for _, r := range cfg.Recipients {
		u := r.Sink.Config.(*webhook.Config).URL
		if strings.Contains(u, "127.0.0.1:9401/") {
			down++
		} else if !strings.Contains(u, "127.0.0.1:9400/") {
			t.Errorf("webhook %s points elsewhere", u)
		}
	}
	if down != 1 {
		t.Errorf("%d recipients on the down port, want 1", down)
	}
}

func TestBenchRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--scenario", "nope", "--in-process"},
		{"bench", "--ingest", "pigeon", "--in-process"},
		{"bench", "--rate", "fast"},
		{"bench", "--batch-size", "5000", "--in-process"},
		{"bench", "--scenario", "feed", "--feed-limit", "5000", "--in-process"},
		{"bench", "--scenario", "longpoll", "--feed-wait", "2m", "--in-process"},
		{"bench", "--scenario", "longpoll", "--feed-clients", "200", "--patients", "100", "--in-process"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), args, &stdout, &stderr)
		if err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// TestBenchIngestRows runs one short row through each ingest path that
// is not a CloudEvents request: the hub's MLLP listener and its FHIR
// $process-message route. Every accepted event must reach both recipients.
func TestBenchIngestRows(t *testing.T) {
	if testing.Short() {
		t.Skip("builds carehub and runs bench rows")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "carehub")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building carehub: %v", err)
	}
	for _, ingest := range []string{bench.IngestMLLP, bench.IngestFHIR} {
		t.Run(ingest, func(t *testing.T) {
			out := filepath.Join(dir, ingest+".json")
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			err := run(ctx, []string{"bench", "--scenario", "latency", "--ingest", ingest, "--duration", "1s", "--rate", "200",
				"--patients", "200", "--hub-binary", bin, "--out", out, "--quiet"}, &stdout, &stderr)
			if err != nil {
				t.Fatalf("bench: %v\n%s\n%s", err, stdout.String(), benchTail(stderr.String(), 3000))
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			var rep struct {
				Scenarios []struct {
					Ingest                  string  `json:"ingest"`
					HubEventsAccepted       int64   `json:"hub_events_accepted"`
					HubEventsPerS           float64 `json:"hub_events_per_s"`
					HubDeliveries           int64   `json:"hub_deliveries"`
					ReferenceDeliveriesPerS float64 `json:"reference_deliveries_per_s"`
					Lost                    int64   `json:"lost"`
					Refused                 int64   `json:"refused"`
					P99Ms                   float64 `json:"p99_ms"`
				} `json:"scenarios"`
			}
			if err := json.Unmarshal(b, &rep); err != nil || len(rep.Scenarios) != 1 {
				t.Fatalf("%v\n%s", err, b)
			}
			r := rep.Scenarios[0]
			if r.Ingest != ingest || r.HubEventsAccepted == 0 || r.HubEventsPerS <= 0 || r.HubDeliveries != 2*r.HubEventsAccepted ||
				r.Lost != 0 || r.Refused != 0 || r.P99Ms <= 0 || r.ReferenceDeliveriesPerS <= 0 {
				t.Errorf("%s row: %+v", ingest, r)
			}
		})
	}
}

// TestBenchPrintConfigFanout: the fanout configuration names a patient list
// for each community team, written where --lists-dir says, and it loads.
func TestBenchPrintConfigFanout(t *testing.T) {
	var stdout, stderr bytes.Buffer
	dir := t.TempDir()
	err := run(context.Background(), []string{"bench", "--scenario", "fanout", "--print-config", "--recipients", "30",
		"--lists-dir", dir}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	cfg, err := config.Parse(stdout.Bytes(), all.Registry())
	if err != nil {
		t.Fatalf("the printed configuration does not load: %v\n%s", err, stdout.String())
	}
	bases := map[string]int{}
	for _, r := range cfg.Recipients {
		s := r.Subscriptions[0]
		bases[s.Basis]++
		if s.Basis == "patient-list" && !strings.HasPrefix(s.PatientList, dir) {
			t.Errorf("%s: list %s is not in --lists-dir", r.ODS, s.PatientList)
		}
	}
	if want := map[string]int{"registered-gp": 10, "discharge-destination": 10, "patient-list": 10}; fmt.Sprint(bases) != fmt.Sprint(want) {
		t.Errorf("subscriptions by basis: got %v, want %v", bases, want)
	}
}
