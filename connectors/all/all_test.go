package all_test

import (
	"testing"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/connectortest"
)

// TestConformance walks the registration list and runs the conformance
// suite on every connector in it: a connector that is registered is tested.
// Run one with: go test ./connectors/all -run 'Conformance/source/mllp'.
func TestConformance(t *testing.T) {
	if len(all.Sources) == 0 || len(all.Sinks) == 0 {
		t.Fatalf("the registration list is empty: %d sources, %d sinks", len(all.Sources), len(all.Sinks))
	}
	for _, f := range all.Sources {
		t.Run("source/"+f.Type, func(t *testing.T) {
			t.Parallel()
			connectortest.RunSource(t, f)
		})
	}
	for _, f := range all.Sinks {
		t.Run("sink/"+f.Type, func(t *testing.T) {
			t.Parallel()
			connectortest.RunSink(t, f)
		})
	}
}

// TestRegistry: the list builds a registry, and every factory's default
// configuration decodes its own documented defaults.
func TestRegistry(t *testing.T) {
	r := all.Registry()
	if got, want := len(r.SourceTypes()), len(all.Sources); got != want {
		t.Errorf("source types: got %d, want %d", got, want)
	}
	if got, want := len(r.SinkTypes()), len(all.Sinks); got != want {
		t.Errorf("sink types: got %d, want %d", got, want)
	}
	for _, f := range all.Sources {
		if f.Default() == nil {
			t.Errorf("source %s: Default returned nil", f.Type)
		}
	}
	for _, f := range all.Sinks {
		if f.Default() == nil {
			t.Errorf("sink %s: Default returned nil", f.Type)
		}
	}
}

// TestRegistryRefusesAConnectorWithoutProbe: the conformance suite cannot
// run a connector without a probe, so the registry refuses to hold one.
func TestRegistryRefusesAConnectorWithoutProbe(t *testing.T) {
	f := all.Sinks[0]
	f.Probe = nil
	if _, err := connector.NewRegistry(all.Sources, []connector.SinkFactory{f}); err == nil {
		t.Errorf("NewRegistry took sink %s without a probe", f.Type)
	}
	s := all.Sources[0]
	s.Probe = &connector.SourceProbe{}
	if _, err := connector.NewRegistry([]connector.SourceFactory{s}, nil); err == nil {
		t.Errorf("NewRegistry took source %s with an empty probe", s.Type)
	}
	if _, err := connector.NewRegistry(append(all.Sources, all.Sources[0]), nil); err == nil {
		t.Errorf("NewRegistry took source %s twice", all.Sources[0].Type)
	}
}
