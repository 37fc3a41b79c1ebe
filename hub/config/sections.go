package config

import (
	"encoding/json"
	"fmt"

	"github.com/carehub/carehub/connectors/connector"
	"go.yaml.in/yaml/v3"
)

// Input is one source connector: an entry under inputs whose one key names
// the connector type and holds its configuration.
//
//	inputs:
//	  - cloudevents: {maxBatchEvents: 1000}
//	  - mllp: {addr: 127.0.0.1:2575, source: RX1}
type Input struct {
	Type   string
	Config connector.Config // decoded by the type's factory, defaults applied

	factory connector.SourceFactory
	node    *yaml.Node
	line    int
}

// UnmarshalYAML takes the entry's one key as its type and keeps its value
// for the type's factory.
func (in *Input) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		return fmt.Errorf("line %d: an input is a map with one key, its type (for example `- mllp: {...}`)", n.Line)
	}
	*in = Input{Type: n.Content[0].Value, node: n.Content[1], line: n.Line}
	return nil
}

// New builds the input's source connector.
func (in Input) New() (connector.Source, error) {
	if in.factory.New == nil {
		return nil, fmt.Errorf("input %s: not decoded by a registry", in.Type)
	}
	return in.factory.New(in.Config)
}

// MarshalYAML writes the entry back in its file form.
func (in Input) MarshalYAML() (any, error) { return map[string]any{in.Type: in.Config}, nil }

// Recipient is an organisation that receives events: its own fields, its
// subscriptions, and one delivery section keyed by a sink connector type.
//
//   - ods: A81001
//     role: gp-practice
//     webhook: {url: https://gp.example/events, secret: {file: /run/secrets/gp}}
//     subscriptions: [{basis: registered-gp, types: [discharge]}]
type Recipient struct {
	ODS           string
	Name          string
	Role          string
	Subscriptions []Subscription
	Sink          Sink
	// APIKey is the recipient's own key (optional): with it the recipient
	// changes its own patient list through the admin API
	// (/v1/recipients/{ods}/patients). It cannot publish.
	APIKey connector.Secret

	extra []section  // keys that are not recipient fields: sink sections, or mistakes
	node  *yaml.Node // the entry as written, for Entry
}

// Sink is a recipient's delivery section.
type Sink struct {
	Type   string
	Config connector.Config // decoded by the type's factory, defaults applied

	factory connector.SinkFactory
}

// New builds the recipient's sink connector.
func (s Sink) New(env connector.SinkEnv) (connector.Sink, error) {
	if s.factory.New == nil {
		return nil, fmt.Errorf("delivery %s: not decoded by a registry", s.Type)
	}
	return s.factory.New(s.Config, env)
}

type section struct {
	key  string
	node *yaml.Node
	line int
}

// recipientFields are the recipient's own fields, decoded strictly.
type recipientFields struct {
	ODS           string           `yaml:"ods" json:"ods"`
	Name          string           `yaml:"name,omitempty" json:"name,omitempty"`
	Role          string           `yaml:"role" json:"role"`
	APIKey        connector.Secret `yaml:"apiKey,omitempty" json:"apiKey,omitempty"`
	Subscriptions []Subscription   `yaml:"subscriptions" json:"subscriptions"`
}

// UnmarshalYAML decodes the recipient's own fields strictly and keeps
// every other key for the registry to decode as a delivery section (or to
// refuse).
func (r *Recipient) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a recipient is a map", n.Line)
	}
	own := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: n.Line, Column: n.Column}
	var extra []section
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k := n.Content[i].Value; k {
		case "ods", "name", "role", "apiKey", "subscriptions":
			own.Content = append(own.Content, n.Content[i], n.Content[i+1])
		default:
			extra = append(extra, section{key: k, node: n.Content[i+1], line: n.Content[i].Line})
		}
	}
	var f recipientFields
	if err := connector.DecodeStrict(own, &f); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*r = Recipient{ODS: f.ODS, Name: f.Name, Role: f.Role, APIKey: f.APIKey, Subscriptions: f.Subscriptions, extra: extra, node: n}
	return nil
}

// fields returns the recipient in its file form: own fields and the
// delivery section under its type.
func (r Recipient) fields() map[string]any {
	m := map[string]any{"ods": r.ODS, "role": r.Role, "subscriptions": r.Subscriptions}
	if r.Name != "" {
		m["name"] = r.Name
	}
	if r.APIKey.Set() {
		m["apiKey"] = r.APIKey
	}
	if r.Sink.Type != "" {
		m[r.Sink.Type] = r.Sink.Config
	}
	return m
}

// MarshalYAML writes the recipient in its file form (secrets hidden).
func (r Recipient) MarshalYAML() (any, error) { return r.fields(), nil }

// MarshalJSON writes the recipient in its file form (secrets hidden).
func (r Recipient) MarshalJSON() ([]byte, error) { return json.Marshal(r.fields()) }
