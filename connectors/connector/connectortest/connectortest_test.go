package connectortest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/problem"
)

// fakeSource is an in-memory "protocol": the probe's Send calls the
// source directly, with the Ingest it was registered with.
type fakeSource struct {
	in     connector.Ingest
	env    connector.Env
	broken string // "", "ack-before-accept", "ack-despite-failure", "accept-unauthenticated", "ack-despite-hold-failure", "held-accepted", "refusal-unreported", "ingest-refusal-reported"
}

func (s *fakeSource) Register(env connector.Env) error {
	s.in, s.env = env.Ingest, env
	return nil
}
func (s *fakeSource) Run(ctx context.Context, _ connector.Env) error { <-ctx.Done(); return nil }

func (s *fakeSource) send(ctx context.Context, doc []byte, key string) (Answer, error) {
	org := Organisation
	if key == "" {
		if s.broken != "accept-unauthenticated" {
			if s.broken != "refusal-unreported" {
				s.env.Refuse(ctx, "", problem.Unauthenticated)
			}
			return Answer{Detail: "401"}, nil
		}
		org = Stranger
	}
	if bytes.Contains(doc, []byte(`"held":true`)) {
		switch s.broken {
		case "held-accepted":
			_, _ = s.in.Accept(ctx, org, doc)
			return Answer{Positive: true, Detail: "AA"}, nil
		case "ack-despite-hold-failure":
			_ = s.in.Hold(ctx, org, connector.Held{ID: "h", Reason: "trigger-not-shared", Original: doc})
			return Answer{Positive: true, Detail: "AA"}, nil
		}
		if err := s.in.Hold(ctx, org, connector.Held{ID: "h", Reason: "trigger-not-shared", Original: doc}); err != nil {
			return Answer{Detail: "AR"}, nil
		}
		return Answer{Positive: true, Detail: "AA"}, nil
	}
	switch s.broken {
	case "ack-before-accept":
		go func() { _, _ = s.in.Accept(context.Background(), org, doc) }()
		return Answer{Positive: true, Detail: "202"}, nil
	case "ack-despite-failure":
		_, _ = s.in.Accept(ctx, org, doc)
		return Answer{Positive: true, Detail: "202"}, nil
	}
	if _, err := s.in.Accept(ctx, org, doc); err != nil {
		if s.broken == "ingest-refusal-reported" {
			s.env.Refuse(ctx, org, problem.KindOf(err))
		}
		return Answer{Detail: "4xx"}, nil
	}
	return Answer{Positive: true, Detail: "202"}, nil
}

type fakeConfig struct{}

func (fakeConfig) Validate() error { return nil }

func sourceFactory(broken string) connector.SourceFactory {
	return connector.SourceFactory{
		Type:    "fake",
		Default: func() connector.Config { return fakeConfig{} },
		New:     func(connector.Config) (connector.Source, error) { return &fakeSource{broken: broken}, nil },
		Probe: &connector.SourceProbe{
			Config: func(string) connector.Config { return fakeConfig{} },
			Document: func(org, id, nhs string) []byte {
				b, _ := json.Marshal(map[string]any{"id": id, "source": org, "data": map[string]string{"nhsNumber": nhs}})
				return b
			},
			HeldDocument: func(org, id, nhs string) []byte {
				b, _ := json.Marshal(map[string]any{"id": id, "source": org, "held": true, "data": map[string]string{"nhsNumber": nhs}})
				return b
			},
			Send: func(ctx context.Context, s connector.Source, _, key string, doc []byte) (Answer, error) {
				return s.(*fakeSource).send(ctx, doc, key)
			},
		},
	}
}

// fakeSink delivers to the probe's in-memory receiver. Correct, it lets
// an attempt under way finish when ctx ends, and starts none after.
func fakeSink(behave func() Behaviour, got func([]byte), broken string, env connector.SinkEnv) connector.Sink {
	return connector.SinkFunc(func(ctx context.Context, d connector.Delivery) (connector.Outcome, error) {
		out := connector.Outcome{}
		for {
			if ctx.Err() != nil && broken != "backoff-ignores-stop" {
				return out, ctx.Err()
			}
			out.Attempts++
			if out.Attempts > 1 && broken != "no-recheck" {
				v, err := env.Consent.Recheck(ctx, d)
				switch {
				case err != nil:
					return out, err
				case !v.Permit:
					return out, connector.Withheld(v.Rule)
				case string(v.Body) != string(d.Body):
					return out, connector.ErrConsentChanged
				}
			}
			var b Behaviour
			if broken == "abort-on-stop" {
				answered := make(chan Behaviour, 1)
				go func() { answered <- behave() }()
				select {
				case b = <-answered:
				case <-ctx.Done():
					return out, ctx.Err()
				}
			} else {
				b = behave()
			}
			switch {
			case b == Accept:
				got(d.Body)
				return out, nil
			case b == Reject:
				return out, connector.Permanent("rejected", nil)
			case broken == "transient-is-permanent":
				return out, connector.Permanent("failed: "+string(d.Body), nil)
			}
			if broken == "backoff-ignores-stop" {
				if ctx.Err() != nil {
					return out, ctx.Err()
				}
				time.Sleep(env.Retry.MinBackoff)
				continue
			}
			select {
			case <-ctx.Done():
				return out, ctx.Err()
			case <-time.After(env.Retry.MinBackoff):
			}
		}
	})
}

// fakeSinkConfig carries the probe's receiver to New.
type fakeSinkConfig struct {
	behave func() Behaviour
	got    func([]byte)
}

func (fakeSinkConfig) Validate() error { return nil }

func sinkFactory(broken string) connector.SinkFactory {
	return connector.SinkFactory{
		Type:    "fake",
		Default: func() connector.Config { return fakeSinkConfig{} },
		New: func(c connector.Config, env connector.SinkEnv) (connector.Sink, error) {
			fc := c.(fakeSinkConfig)
			return fakeSink(fc.behave, fc.got, broken, env), nil
		},
		Probe: &connector.SinkProbe{
			Receiver: func(behave func() Behaviour, got func([]byte)) (connector.Config, func(), error) {
				return fakeSinkConfig{behave: behave, got: got}, func() {}, nil
			},
		},
	}
}

func TestSuitePassesCorrectFakes(t *testing.T) {
	t.Run("source", func(t *testing.T) { RunSource(t, sourceFactory("")) })
	t.Run("sink", func(t *testing.T) { RunSink(t, sinkFactory("")) })
}

// TestSuiteFailsBrokenFakes: a conformance suite that cannot fail hides
// the gaps it exists to find. Each broken fake must fail the suite, with
// the check about its own fault. The test runs itself again as a child
// process per fake (the suite's failures must not fail this process).
func TestSuiteFailsBrokenFakes(t *testing.T) {
	if broken := os.Getenv("CONNECTORTEST_BROKEN"); broken != "" {
		if rest, ok := strings.CutPrefix(broken, "sink:"); ok {
			RunSink(t, sinkFactory(rest))
			return
		}
		RunSource(t, sourceFactory(broken))
		return
	}
	tests := []struct {
		broken string
		want   string
	}{
		{"ack-before-accept", "before Accept"},
		{"ack-despite-failure", "though Accept failed"},
		{"accept-unauthenticated", "unauthenticated sender"},
		{"ack-despite-hold-failure", "though Hold failed"},
		{"held-accepted", "Accept calls 1"},
		{"refusal-unreported", "reported to Env.Refusals: got 0, want 1"},
		{"ingest-refusal-reported", "for a message Ingest refused"},
		{"sink:transient-is-permanent", "Deliver returned"},
		{"sink:no-recheck", "after the re-check changed it"},
		{"sink:abort-on-stop", "a stop must let an attempt under way finish"},
		{"sink:backoff-ignores-stop", "must end at once"},
	}
	for _, tc := range tests {
		t.Run(tc.broken, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestSuiteFailsBrokenFakes$", "-test.v")
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
