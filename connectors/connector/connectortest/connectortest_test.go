package connectortest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
)

// fakeSource is an in-memory "protocol": Send calls the source directly.
type fakeSource struct {
	in     connector.Ingest
	org    string
	broken string // "", "ack-before-accept", "ack-despite-failure", "accept-unauthenticated"
}

func (s *fakeSource) Send(ctx context.Context, doc []byte) (Answer, error) {
	return s.send(ctx, doc, true)
}

func (s *fakeSource) SendUnauthenticated(ctx context.Context, doc []byte) (Answer, error) {
	return s.send(ctx, doc, false)
}

func (s *fakeSource) send(ctx context.Context, doc []byte, authed bool) (Answer, error) {
	if !authed && s.broken != "accept-unauthenticated" {
		return Answer{Detail: "401"}, nil
	}
	switch s.broken {
	case "ack-before-accept":
		go func() { _, _ = s.in.Accept(context.Background(), s.org, doc) }()
		return Answer{Positive: true, Detail: "202"}, nil
	case "ack-despite-failure":
		_, _ = s.in.Accept(ctx, s.org, doc)
		return Answer{Positive: true, Detail: "202"}, nil
	}
	if _, err := s.in.Accept(ctx, s.org, doc); err != nil {
		return Answer{Detail: "4xx"}, nil
	}
	return Answer{Positive: true, Detail: "202"}, nil
}

func sourceHarness(broken string) SourceHarness {
	return SourceHarness{
		Start: func(t *testing.T, in connector.Ingest, org string) SourceClient {
			return &fakeSource{in: in, org: org, broken: broken}
		},
		Document: func(id string) []byte {
			b, _ := json.Marshal(map[string]any{"id": id, "data": map[string]string{"nhsNumber": Canary}})
			return b
		},
	}
}

// fakeSink delivers to an in-memory receiver.
type fakeReceiver struct {
	mu  sync.Mutex
	b   Behaviour
	got [][]byte
}

func (r *fakeReceiver) Behave(b Behaviour) { r.mu.Lock(); r.b = b; r.mu.Unlock() }
func (r *fakeReceiver) Received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.got...)
}

func fakeSink(r *fakeReceiver, broken string) connector.Sink {
	return connector.SinkFunc(func(ctx context.Context, d connector.Delivery) (connector.Outcome, error) {
		out := connector.Outcome{}
		for {
			out.Attempts++
			r.mu.Lock()
			b := r.b
			if b == Accept {
				r.got = append(r.got, d.Body)
			}
			r.mu.Unlock()
			switch {
			case b == Accept:
				return out, nil
			case b == Reject:
				return out, connector.Permanent("rejected", nil)
			case broken == "transient-is-permanent":
				return out, connector.Permanent("failed: "+string(d.Body), nil)
			}
			select {
			case <-ctx.Done():
				return out, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
}

func sinkHarness(broken string) SinkHarness {
	return SinkHarness{
		Start: func(t *testing.T) (connector.Sink, Receiver) {
			r := &fakeReceiver{}
			return fakeSink(r, broken), r
		},
		Body: func(id string) []byte { return []byte(`{"id":"` + id + `","nhs":"` + Canary + `"}`) },
	}
}

func TestSuitePassesCorrectFakes(t *testing.T) {
	t.Run("source", func(t *testing.T) { RunSource(t, sourceHarness("")) })
	t.Run("sink", func(t *testing.T) { RunSink(t, sinkHarness("")) })
}

// TestBrokenFake is run in a subprocess by TestSuiteFailsBrokenFakes.
func TestBrokenFake(t *testing.T) {
	broken := os.Getenv("CONNECTORTEST_BROKEN")
	if broken == "" {
		t.Skip("run by TestSuiteFailsBrokenFakes")
	}
	if strings.HasPrefix(broken, "sink:") {
		RunSink(t, sinkHarness(strings.TrimPrefix(broken, "sink:")))
		return
	}
	RunSource(t, sourceHarness(broken))
}

// TestSuiteFailsBrokenFakes: a conformance suite that cannot fail hides
// the gaps it exists to find. Each broken fake must fail the suite, with
// the check about its own fault.
func TestSuiteFailsBrokenFakes(t *testing.T) {
	tests := []struct {
		broken string
		want   string
	}{
		{"ack-before-accept", "before Accept"},
		{"ack-despite-failure", "though Accept failed"},
		{"accept-unauthenticated", "unauthenticated sender"},
		{"sink:transient-is-permanent", "Deliver returned"},
	}
	for _, tc := range tests {
		t.Run(tc.broken, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenFake$", "-test.v")
			cmd.Env = append(os.Environ(), "CONNECTORTEST_BROKEN="+tc.broken)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a broken fake (%s):\n%s", tc.broken, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("the suite failed, but not with %q:\n%s", tc.want, out)
			}
		})
	}
}

var _ = errBroken
