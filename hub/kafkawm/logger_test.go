package kafkawm_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var _ watermill.LoggerAdapter = (*kafkawm.Logger)(nil)

func TestWatermillDropsUnlistedFields(t *testing.T) {
	log, logs := observe()
	w := kafkawm.NewLogger(log, false)

	w.Info("message produced", watermill.LogFields{
		"payload":      `{"nhsNumber":"` + canary + `"}`,
		"metadata":     map[string]string{"nhs": canary},
		"topic":        "events",
		"handler_name": "route",
		"message_uuid": "evt-1",
		"count":        3,
	})

	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("log lines:\n\tgot  %d\n\twant 1", len(entries))
	}
	want := map[string]any{
		"component":    "watermill",
		"topic":        "events",
		"handler_name": "route",
		"message_uuid": "evt-1",
		"count":        int64(3),
	}
	if diff := cmp.Diff(want, entries[0].ContextMap()); diff != "" {
		t.Errorf("Info fields (-want +got):\n%s", diff)
	}
	if got, want := entries[0].Level, zapcore.InfoLevel; got != want {
		t.Errorf("Info level:\n\tgot  %v\n\twant %v", got, want)
	}
	assertNoCanary(t, logs, canary)
}

func TestWatermillNonScalarValuesByTypeOnly(t *testing.T) {
	log, logs := observe()
	w := kafkawm.NewLogger(log, false)
	type msg struct{ Payload string }
	w.Debug("x", watermill.LogFields{
		"topic":   msg{Payload: canary},
		"offset":  []byte(canary),
		"timeout": fmt.Stringer(nil),
	})
	m := logs.All()[0].ContextMap()
	if got, want := m["topic"], "kafkawm_test.msg"; got != want {
		t.Errorf("topic holding a struct:\n\tgot  %v\n\twant %v", got, want)
	}
	if got, want := m["offset"], "[]uint8"; got != want {
		t.Errorf("offset holding bytes:\n\tgot  %v\n\twant %v", got, want)
	}
	assertNoCanary(t, logs, canary)
}

func TestWatermillErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"plain error holding patient data", fmt.Errorf("handler failed for payload %s", canary), "error (*errors.errorString)"},
		{"problem error", problem.Wrap(problem.Invalid, "the event breaks the schema", errors.New("value "+canary)), "the event breaks the schema"},
		{"wrapped problem error", fmt.Errorf("routing %s: %w", canary, problem.New(problem.Unavailable, "the broker is unavailable")), "the broker is unavailable"},
	}
	for _, tt := range tests {
		log, logs := observe()
		w := kafkawm.NewLogger(log, false)
		w.Error("Handler returned error", tt.err, watermill.LogFields{"handler_name": "route", "payload": canary})
		entries := logs.All()
		if len(entries) != 1 {
			t.Fatalf("Error(%s): log lines:\n\tgot  %d\n\twant 1", tt.name, len(entries))
		}
		e := entries[0]
		if got := e.ContextMap()["error"]; got != tt.want {
			t.Errorf("Error(%s) error field:\n\tgot  %v\n\twant %v", tt.name, got, tt.want)
		}
		if e.Level != zapcore.ErrorLevel {
			t.Errorf("Error(%s) level:\n\tgot  %v\n\twant %v", tt.name, e.Level, zapcore.ErrorLevel)
		}
		assertNoCanary(t, logs, canary)
	}
}

func TestWatermillWith(t *testing.T) {
	log, logs := observe()
	base := kafkawm.NewLogger(log, false)
	w := base.With(watermill.LogFields{"topic": "events", "payload": canary}).
		With(watermill.LogFields{"consumer_group": "deliver", "patient": canary})
	w.Info("consuming", watermill.LogFields{"partition": 2})
	base.Info("base unchanged", nil)

	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("log lines:\n\tgot  %d\n\twant 2", len(entries))
	}
	want := map[string]any{"component": "watermill", "topic": "events", "consumer_group": "deliver", "partition": int64(2)}
	if diff := cmp.Diff(want, entries[0].ContextMap()); diff != "" {
		t.Errorf("With fields (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]any{"component": "watermill"}, entries[1].ContextMap()); diff != "" {
		t.Errorf("With changed its parent (-want +got):\n%s", diff)
	}
	assertNoCanary(t, logs, canary)
}

func TestWatermillTrace(t *testing.T) {
	tests := []struct {
		trace bool
		want  int
	}{
		{false, 0},
		{true, 1},
	}
	for _, tt := range tests {
		log, logs := observe()
		kafkawm.NewLogger(log, tt.trace).Trace("tick", watermill.LogFields{"topic": "t"})
		if got := logs.Len(); got != tt.want {
			t.Errorf("NewWatermill(trace=%v).Trace lines:\n\tgot  %d\n\twant %d", tt.trace, got, tt.want)
		}
		if tt.want == 1 && logs.All()[0].Level != zapcore.DebugLevel {
			t.Errorf("Trace level:\n\tgot  %v\n\twant %v", logs.All()[0].Level, zapcore.DebugLevel)
		}
	}
}

// TestWatermillKnownLeakyKeysAreNotAllowed pins that keys known to carry
// message content (watermill's router logs "not_sent_message" with the
// produced messages, %#v) are not on the allow-list.
func TestWatermillKnownLeakyKeysAreNotAllowed(t *testing.T) {
	for _, k := range []string{"not_sent_message", "payload", "message", "messages", "produced_messages", "metadata", "err", "error", "body", "url"} {
		if kafkawm.AllowedLogFields[k] {
			t.Errorf("AllowedWatermillFields[%q] = true; it may carry message content", k)
		}
	}
	for k := range kafkawm.AllowedLogFields {
		if strings.ContainsAny(k, " .") {
			t.Errorf("AllowedWatermillFields has odd key %q", k)
		}
	}
}

// failingPublisher refuses every message and reports each call.
type failingPublisher struct{ called chan<- struct{} }

func (p failingPublisher) Publish(string, ...*message.Message) error {
	select {
	case p.called <- struct{}{}:
	default:
	}
	return errors.New("broker down")
}
func (failingPublisher) Close() error { return nil }

// TestWatermillRouterPublishFailure runs watermill's real router through the
// adapter. When publishing a handler's output fails, the router logs the
// produced messages under "not_sent_message" (%#v, payload included): that
// field must be dropped.
func TestWatermillRouterPublishFailure(t *testing.T) {
	log, logs := observe()
	wl := kafkawm.NewLogger(log, true)

	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, wl)
	if err != nil {
		t.Fatal(err)
	}
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, wl)
	called := make(chan struct{}, 1)
	router.AddHandler("route", "in", pubsub, "out", failingPublisher{called: called},
		func(m *message.Message) ([]*message.Message, error) {
			return []*message.Message{message.NewMessage("evt-out", []byte(`{"nhsNumber":"`+canary+`"}`))}, nil
		})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	select {
	case <-router.Running():
	case <-time.After(5 * time.Second):
		t.Fatal("router not running after 5s")
	}
	in := message.NewMessage("evt-in", []byte(`{"nhsNumber":"`+canary+`"}`))
	in.Metadata.Set("patient", canary)
	if err := pubsub.Publish("in", in); err != nil {
		t.Fatal(err)
	}
	select {
	case <-called:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's output was never published")
	}
	// Close waits for running handlers, so their log lines are all written.
	if err := router.Close(); err != nil {
		t.Fatal(err)
	}
	<-runErr

	if n := logs.FilterMessage("Cannot publish messages").Len(); n == 0 {
		t.Fatal(`the router never logged "Cannot publish messages": the test saw nothing`)
	}
	for _, e := range logs.FilterMessage("Cannot publish messages").All() {
		if _, ok := e.ContextMap()["not_sent_message"]; ok {
			t.Errorf("not_sent_message reached the log: %v", e.ContextMap())
		}
	}
	assertNoCanary(t, logs, canary)
}

// canary is a synthetic NHS number from the 999 test range. It stands for
// patient data and must never reach a log line.
const canary = "9991234567"

// observe returns a logger that records everything from debug up.
func observe() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// assertNoCanary fails if any recorded message or field holds s.
func assertNoCanary(t *testing.T, logs *observer.ObservedLogs, s string) {
	t.Helper()
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, s) {
			t.Errorf("a log line holds %q: %s", s, line)
		}
	}
}
