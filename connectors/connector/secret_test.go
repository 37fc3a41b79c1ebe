package connector_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carehub/carehub/connectors/connector"
	"go.yaml.in/yaml/v3"
)

func TestSecretReveal(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyFile := write("key", "file-secret-value\n")
	emptyFile := write("empty", " \n\t\n")
	t.Setenv("CAREHUB_TEST_SECRET", "env-secret-value")
	t.Setenv("CAREHUB_TEST_EMPTY", "")

	tests := []struct {
		name    string
		s       connector.Secret
		want    string
		wantErr string // "" means no error
	}{
		{"value", connector.Secret{Value: "inline-secret"}, "inline-secret", ""},
		{"file, trailing newline trimmed", connector.Secret{File: keyFile}, "file-secret-value", ""},
		{"env", connector.Secret{Env: "CAREHUB_TEST_SECRET"}, "env-secret-value", ""},
		{"none", connector.Secret{}, "", "no value, file or env given"},
		{"value and file", connector.Secret{Value: "inline-secret", File: keyFile}, "", "give only one of value, file and env"},
		{"value and env", connector.Secret{Value: "inline-secret", Env: "CAREHUB_TEST_SECRET"}, "", "give only one of value, file and env"},
		{"all three", connector.Secret{Value: "inline-secret", File: keyFile, Env: "CAREHUB_TEST_SECRET"}, "", "give only one"},
		{"missing env", connector.Secret{Env: "CAREHUB_TEST_UNSET_SECRET"}, "", "environment variable CAREHUB_TEST_UNSET_SECRET is not set"},
		{"empty env", connector.Secret{Env: "CAREHUB_TEST_EMPTY"}, "", "environment variable CAREHUB_TEST_EMPTY is not set"},
		{"empty file", connector.Secret{File: emptyFile}, "", "is empty"},
		{"missing file", connector.Secret{File: filepath.Join(dir, "nope")}, "", "reading secret file"},
	}
	for _, tt := range tests {
		got, err := tt.s.Reveal()
		if tt.wantErr == "" {
			if err != nil || got != tt.want {
				t.Errorf("Reveal(%s):\n\tgot  %q, %v\n\twant %q, nil", tt.name, got, err, tt.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Reveal(%s):\n\tgot  %q, %v\n\twant an error containing %q", tt.name, got, err, tt.wantErr)
			continue
		}
		for _, secret := range []string{"inline-secret", "file-secret-value", "env-secret-value"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Reveal(%s): the error echoes a secret: %v", tt.name, err)
			}
		}
	}
}

func TestSecretSet(t *testing.T) {
	tests := []struct {
		s    connector.Secret
		want bool
	}{
		{connector.Secret{}, false},
		{connector.Secret{Value: "v"}, true},
		{connector.Secret{File: "f"}, true},
		{connector.Secret{Env: "E"}, true},
	}
	for _, tt := range tests {
		if got := tt.s.Set(); got != tt.want {
			t.Errorf("%v.Set():\n\tgot  %v\n\twant %v", tt.s, got, tt.want)
		}
	}
}

// TestSecretDecodedOnce: a secret from YAML or JSON is read as it is
// decoded; later changes to the file do not change it (one read, one value).
func TestSecretDecodedOnce(t *testing.T) {
	file := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(file, []byte("first-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var fromYAML struct {
		S connector.Secret `yaml:"s"`
	}
	if err := yaml.Unmarshal([]byte("s: {file: "+file+"}\n"), &fromYAML); err != nil {
		t.Fatal(err)
	}
	var fromJSON struct{ S connector.Secret }
	if err := json.Unmarshal([]byte(`{"S":{"file":"`+file+`"}}`), &fromJSON); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("second-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]connector.Secret{"yaml": fromYAML.S, "json": fromJSON.S} {
		if got, err := s.Reveal(); err != nil || got != "first-value" {
			t.Errorf("%s: Reveal after the file changed:\n\tgot  %q, %v\n\twant %q", name, got, err, "first-value")
		}
	}
	// Unknown forms are refused, not ignored.
	if err := yaml.Unmarshal([]byte("s: {vault: x}\n"), &fromYAML); err == nil || !strings.Contains(err.Error(), "vault") {
		t.Errorf("yaml {vault: x}: got %v, want an error naming vault", err)
	}
	if err := json.Unmarshal([]byte(`{"S":{"vault":"x"}}`), &fromJSON); err == nil {
		t.Errorf("json {vault: x}: no error")
	}
}

// TestSecretNeverPrinted: String and both encoders hide an inline value.
func TestSecretNeverPrinted(t *testing.T) {
	const v = "do-not-print-me"
	s := connector.SecretValue(v)
	y, _ := yaml.Marshal(struct{ S connector.Secret }{s})
	j, _ := json.Marshal(s)
	for name, out := range map[string]string{"String": s.String(), "yaml": string(y), "json": string(j)} {
		if strings.Contains(out, v) {
			t.Errorf("%s prints the secret: %s", name, out)
		}
	}
	if got := (connector.Secret{File: "/run/secrets/k"}).String(); got != "{file: /run/secrets/k}" {
		t.Errorf("String of a file secret: got %q", got)
	}
}

func TestRetry(t *testing.T) {
	if got := (connector.Retry{}).WithDefaults(); got.MinBackoff != connector.DefaultMinBackoff || got.MaxBackoff != connector.DefaultMaxBackoff {
		t.Errorf("WithDefaults: got %+v", got)
	}
	tests := []struct {
		r    connector.Retry
		want string
	}{
		{connector.Retry{MinBackoff: 1, MaxBackoff: 1}, ""},
		{connector.Retry{MinBackoff: 2, MaxBackoff: 1}, "minBackoff must not exceed maxBackoff"},
		{connector.Retry{MinBackoff: 0, MaxBackoff: 1}, "must be positive"},
		{connector.Retry{MinBackoff: 1, MaxBackoff: 1, MaxAttempts: -1}, "maxAttempts"},
	}
	for _, tt := range tests {
		err := tt.r.Validate()
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v):\n\tgot  %v\n\twant %q", tt.r, err, tt.want)
		}
	}
}
