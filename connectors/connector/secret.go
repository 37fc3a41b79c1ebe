package connector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Secret is a key, password or signing secret in the configuration, given
// in exactly one of three forms:
//
//	{value: ...}       inline: demos only
//	{file: /run/...}   the file's content, surrounding white space trimmed
//	{env: NAME}        an environment variable
//
// A Secret read from YAML or JSON is resolved once, as it is decoded, so the
// file or variable is read exactly once however often Reveal is called.
// String and the encoders never print the value.
type Secret struct {
	Value string `yaml:"value,omitempty" json:"value,omitempty"`
	File  string `yaml:"file,omitempty" json:"file,omitempty"`
	Env   string `yaml:"env,omitempty" json:"env,omitempty"`

	resolved *resolvedSecret // set when decoded
}

type resolvedSecret struct {
	value string
	err   error
}

// SecretValue returns an inline secret (for tests and programs that build
// configurations in code).
func SecretValue(v string) Secret { return Secret{Value: v} }

// Set reports whether any form is given.
func (s Secret) Set() bool { return s.Value != "" || s.File != "" || s.Env != "" }

// Reveal returns the secret's value. Its error never holds the value.
func (s Secret) Reveal() (string, error) {
	if s.resolved != nil {
		return s.resolved.value, s.resolved.err
	}
	return s.resolve()
}

func (s Secret) resolve() (string, error) {
	n := 0
	for _, v := range []string{s.Value, s.File, s.Env} {
		if v != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return "", errors.New("no value, file or env given")
	case n > 1:
		return "", errors.New("give only one of value, file and env")
	case s.File != "":
		b, err := os.ReadFile(s.File)
		if err != nil {
			return "", fmt.Errorf("reading secret file: %w", err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("secret file %s is empty", s.File)
		}
		return v, nil
	case s.Env != "":
		v, ok := os.LookupEnv(s.Env)
		if !ok || v == "" {
			return "", fmt.Errorf("environment variable %s is not set", s.Env)
		}
		return v, nil
	}
	return s.Value, nil
}

// String names the form, never the value.
func (s Secret) String() string {
	switch {
	case s.File != "":
		return "{file: " + s.File + "}"
	case s.Env != "":
		return "{env: " + s.Env + "}"
	case s.Value != "":
		return "{value: (hidden)}"
	}
	return "{}"
}

// Equal reports whether two secrets are given the same way (for go-cmp).
func (s Secret) Equal(o Secret) bool { return s.Value == o.Value && s.File == o.File && s.Env == o.Env }

type secretForm struct {
	Value string `yaml:"value" json:"value"`
	File  string `yaml:"file" json:"file"`
	Env   string `yaml:"env" json:"env"`
}

// UnmarshalYAML decodes the form strictly (an unknown key is an error)
// and resolves it.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	var f secretForm
	if err := DecodeStrict(n, &f); err != nil {
		return err
	}
	*s = Secret{Value: f.Value, File: f.File, Env: f.Env}
	v, err := s.resolve()
	s.resolved = &resolvedSecret{value: v, err: err}
	return nil
}

// UnmarshalJSON decodes the form strictly and resolves it.
func (s *Secret) UnmarshalJSON(b []byte) error {
	var f secretForm
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return errors.New("a secret is an object with one of value, file or env")
	}
	*s = Secret{Value: f.Value, File: f.File, Env: f.Env}
	v, err := s.resolve()
	s.resolved = &resolvedSecret{value: v, err: err}
	return nil
}

// MarshalYAML writes the form with an inline value hidden.
func (s Secret) MarshalYAML() (any, error) { return s.redacted(), nil }

// MarshalJSON writes the form with an inline value hidden.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.redacted()) }

func (s Secret) redacted() secretForm {
	f := secretForm{File: s.File, Env: s.Env}
	if s.Value != "" {
		f.Value = "(hidden)"
	}
	return f
}

// DecodeStrict decodes a YAML node into v, failing on keys v does not
// have (yaml.Node.Decode alone ignores them). Connectors' configuration
// sections and every nested type with its own UnmarshalYAML use it.
func DecodeStrict(n *yaml.Node, v any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err = dec.Decode(v)
	var te *yaml.TypeError
	switch {
	case err == nil || errors.Is(err, io.EOF):
		return nil
	case errors.As(err, &te):
		// The line numbers are the re-encoded fragment's, not the file's:
		// drop them (the caller names the section and its line).
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			if _, rest, ok := strings.Cut(m, ": "); ok && strings.HasPrefix(m, "line ") {
				m = rest
			}
			msgs[i] = m
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return err
}
