package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// fakeBackfills serves the two calls carehub replay makes; final is the
// state of the last progress line.
func fakeBackfills(t *testing.T, final string) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/backfills", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]string
		if r.Header.Get("Authorization") != "Bearer k" || json.Unmarshal(b, &body) != nil || body["recipient"] != "VM123" || body["since"] != "2026-11-01" {
			http.Error(w, "bad request", 400)
			return
		}
		w.WriteHeader(201)
		_, _ = w.Write([]byte(`{"id":"bf-1","recipient":"VM123","state":"pending","total":40}`))
	})
	mux.HandleFunc("POST /v1/backfills/bf-1/run", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("rate") != "50" {
			http.Error(w, "rate", 400)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte(`{"id":"bf-1","recipient":"VM123","state":"running","total":40,"read":20,"counts":{"sent":5}}` + "\n"))
		_, _ = w.Write([]byte(`{"id":"bf-1","recipient":"VM123","state":"` + final + `","total":40,"read":40,"counts":{"sent":9,"alreadyReceived":1,"withheld":2,"notForRecipient":27,"notAcknowledged":1}}` + "\n"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestReplayPrintsPlainLinesWithoutATerminal(t *testing.T) {
	srv := fakeBackfills(t, "done")
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"replay", "--recipient", "VM123", "--since", "2026-11-01", "--rate", "50", "--hub", srv.URL, "--key", "k"}, &out, &errOut)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
	want := []string{
		"backfill bf-1 for VM123: 20 of 40 events (50%): 5 sent, 0 already received, 0 withheld, 0 not for VM123",
		"backfill bf-1 for VM123: 40 of 40 events (100%): 9 sent, 1 already received, 2 withheld, 27 not for VM123, 1 never acknowledged to their publisher",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("progress lines:\n\tgot  %q\n\twant %q", lines, want)
	}
	if strings.TrimSpace(out.String()) != want[1] {
		t.Errorf("summary: %q", out.String())
	}
}

func TestReplayDrawsABarOnATerminal(t *testing.T) {
	srv := fakeBackfills(t, "done")
	was := isTerminal
	isTerminal = func(io.Writer) bool { return true }
	defer func() { isTerminal = was }()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"replay", "--recipient", "VM123", "--since", "2026-11-01", "--rate", "50", "--hub", srv.URL, "--key", "k"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(errOut.String(), "20 of 40 events") || !strings.Contains(errOut.String(), "backfill VM123") {
		t.Errorf("on a terminal, want a bar and no plain lines: %q", errOut.String())
	}
}

func TestReplayInterruptedSaysHowToResume(t *testing.T) {
	srv := fakeBackfills(t, "interrupted")
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"replay", "--recipient", "VM123", "--since", "2026-11-01", "--rate", "50", "--hub", srv.URL, "--key", "k"}, &out, &errOut)
	if err == nil || !strings.Contains(errOut.String(), "run the same command again to resume") {
		t.Errorf("an interrupted backfill: %v %q", err, errOut.String())
	}
}
