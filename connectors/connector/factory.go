package connector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
)

// Config is one connector's configuration: its section of the hub's
// configuration file, decoded strictly over the value its factory's
// Default returns. Validate reports every problem at once, joined, with
// the connector's own field names (the hub prefixes the section's path);
// it reads no file, except through a Secret, which was resolved when it was
// decoded. Files a connector needs (certificates, say) are read by its New,
// which the hub calls before it starts anything.
type Config interface {
	Validate() error
}

// BoundConfig is implemented by a source configuration that speaks for
// named organisations only, such as an MLLP listener bound to one trust: the
// hub checks that each is a configured source.
type BoundConfig interface {
	Config
	Organisations() []string
}

// LabellingConfig is implemented by a source configuration that labels
// events with sensitivity categories of its own choosing (an MLLP
// listener's treatment function mapping): the hub checks that the consent
// policy counts each as sensitive, since a category it does not know
// restricts nothing.
type LabellingConfig interface {
	Config
	Labels() []string
}

// ListenerConfig is implemented by a configuration that listens on
// addresses of its own: the hub checks that no two listeners share one.
type ListenerConfig interface {
	Config
	ListenAddrs() []string
}

// SourceFactory makes source connectors of one type.
type SourceFactory struct {
	// Type names the connector: the key of its entry under inputs in the
	// configuration file (`inputs: [{mllp: {...}}]`). Lower-case letters,
	// digits and '-'.
	Type string
	// Default returns a new configuration (a pointer) with every default
	// applied.
	Default func() Config
	// New builds a source from a configuration Default returned, decoded
	// and validated. It may read files but must not listen or start
	// anything: Register and Run do.
	New func(cfg Config) (Source, error)
	// Probe lets the conformance suite run the source. Required.
	Probe *SourceProbe
}

// SinkFactory makes sink connectors of one type.
type SinkFactory struct {
	// Type names the connector: the key of a recipient's section
	// (`recipients: [{ods: A81001, webhook: {...}}]`).
	Type string
	// Default returns a new configuration (a pointer) with every default
	// applied.
	Default func() Config
	// New builds the sink of one recipient. It must not start anything.
	New func(cfg Config, env SinkEnv) (Sink, error)
	// Probe lets the conformance suite run the sink. Required.
	Probe *SinkProbe
}

// SourceProbe lets the conformance suite (package connectortest) run a
// source of its type on loopback and talk to it as a real sender does.
type SourceProbe struct {
	// Config returns a configuration for a test instance that speaks for
	// org and listens, if it listens at all, on a free loopback port.
	Config func(org string) Config
	// Document returns one message of the protocol sent by org, carrying id
	// (as its event or message identifier) and a patient with nhsNumber.
	Document func(org, id, nhsNumber string) []byte
	// HeldDocument, when the protocol has messages that are acknowledged
	// but not shared, returns one of them sent by org, with id and a patient
	// with nhsNumber: the source must hand it to Ingest.Hold, never Accept.
	// Nil when the protocol has none (the suite then checks nothing of Hold).
	HeldDocument func(org, id, nhsNumber string) []byte
	// Send sends doc to the running source s, whose HTTP routes (if any) are
	// served at httpBase, authenticating with the API key key ("" for none),
	// and returns the answer. An error means no answer came.
	Send func(ctx context.Context, s Source, httpBase, key string, doc []byte) (Answer, error)
}

// Answer is what a sender got back.
type Answer struct {
	Positive bool   // 202, AA, CA
	Detail   string // the status or code
}

// SinkProbe lets the conformance suite run a receiver of its sink's
// protocol whose answers the suite decides.
type SinkProbe struct {
	// Receiver starts a receiver on loopback. For each delivery it asks
	// behave how to answer, and passes the body of each accepted one to got.
	// It returns a configuration of a sink that delivers to it, and a
	// function that stops it.
	Receiver func(behave func() Behaviour, got func(body []byte)) (cfg Config, stop func(), err error)
	// Env, when set, returns the hub facilities the sink needs beside its
	// configuration (the pull fields of SinkEnv: a feed whose appends are
	// what the receiver answers, say), built over the same behave and got
	// the suite passed to Receiver last. The suite adds Recipient, Retry
	// and Log.
	Env func(behave func() Behaviour, got func(body []byte)) SinkEnv
}

// Behaviour is how a probe's receiver answers a delivery.
type Behaviour int

// The behaviours.
const (
	Accept    Behaviour = iota // take the delivery
	Transient                  // fail in a way worth retrying (a 503, a dropped connection)
	Reject                     // refuse the delivery for good (a 400, an AR)
)

// Registry is the connector types one hub can build, by type name.
type Registry struct {
	sources map[string]SourceFactory
	sinks   map[string]SinkFactory
}

var typeName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// NewRegistry checks every factory (a type name, Default, New and a probe;
// no type listed twice) and returns the registry.
func NewRegistry(sources []SourceFactory, sinks []SinkFactory) (*Registry, error) {
	r := &Registry{sources: map[string]SourceFactory{}, sinks: map[string]SinkFactory{}}
	var errs []error
	check := func(kind, typ string, complete bool, dup bool) {
		switch {
		case !typeName.MatchString(typ):
			errs = append(errs, fmt.Errorf("%s connector type %q: lower-case letters, digits and '-'", kind, typ))
		case !complete:
			errs = append(errs, fmt.Errorf("%s connector %s: Default, New and Probe are all required (the probe runs it through the conformance suite)", kind, typ))
		case dup:
			errs = append(errs, fmt.Errorf("%s connector %s: registered twice", kind, typ))
		}
	}
	for _, f := range sources {
		_, dup := r.sources[f.Type]
		check("source", f.Type, f.Default != nil && f.New != nil && f.Probe != nil &&
			f.Probe.Config != nil && f.Probe.Document != nil && f.Probe.Send != nil, dup)
		r.sources[f.Type] = f
	}
	for _, f := range sinks {
		_, dup := r.sinks[f.Type]
		check("sink", f.Type, f.Default != nil && f.New != nil && f.Probe != nil && f.Probe.Receiver != nil, dup)
		r.sinks[f.Type] = f
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// Source returns the source factory of a type.
func (r *Registry) Source(typ string) (SourceFactory, bool) { f, ok := r.sources[typ]; return f, ok }

// Sink returns the sink factory of a type.
func (r *Registry) Sink(typ string) (SinkFactory, bool) { f, ok := r.sinks[typ]; return f, ok }

// SourceTypes returns the source types, sorted.
func (r *Registry) SourceTypes() []string { return sortedKeys(r.sources) }

// SinkTypes returns the sink types, sorted.
func (r *Registry) SinkTypes() []string { return sortedKeys(r.sinks) }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ListenAddr checks a host:port a connector listens on (the address of a
// ListenerConfig), in its Validate: a host (or none, for every interface)
// and a port from 0 to 65535 (0: any free port). The error names the
// address, not the field: the caller prefixes its own field name.
func ListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(n, 10) != port {
		return fmt.Errorf("%q: the port is not a number from 0 to 65535", addr)
	}
	return nil
}
