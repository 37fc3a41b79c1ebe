package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/config"
)

const mllpBase = `
pseudonymKey: {value: 0123456789abcdef}
sources:
  - {ods: RX1, apiKey: {value: rx1-key-123}}
`

func TestMLLPDefaults(t *testing.T) {
	c, err := config.Parse([]byte(mllpBase + "mllp: [{source: RX1}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := config.MLLP{Addr: "127.0.0.1:2575", Source: "RX1", MaxFrameBytes: 1 << 20, ReadTimeout: time.Minute,
		IdleTimeout: 10 * time.Minute, DuplicateWindow: 24 * time.Hour, ProcessingID: "P"}
	if len(c.MLLP) != 1 || c.MLLP[0].Addr != want.Addr || c.MLLP[0].MaxFrameBytes != want.MaxFrameBytes ||
		c.MLLP[0].ReadTimeout != want.ReadTimeout || c.MLLP[0].IdleTimeout != want.IdleTimeout ||
		c.MLLP[0].DuplicateWindow != want.DuplicateWindow || c.MLLP[0].ProcessingID != want.ProcessingID {
		t.Errorf("defaults:\n\tgot  %+v\n\twant %+v", c.MLLP, want)
	}
}

func TestMLLPValidation(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		yaml string
		want []string
	}{
		{"mllp: [{addr: nowhere, source: RX1}]", []string{`mllp[0].addr "nowhere"`}},
		{"mllp: [{source: RX9}]", []string{`mllp[0].source "RX9": must be one of sources[].ods`}},
		{"mllp: [{source: RX1}, {source: RX1}]", []string{`mllp[1].addr "127.0.0.1:2575": used by another listener`}},
		{"mllp: [{source: RX1, maxFrameBytes: 10}]", []string{"mllp[0].maxFrameBytes must be between"}},
		{"mllp: [{source: RX1, idleTimeout: -1s}]", []string{"must be positive"}},
		{"mllp: [{source: RX1, processingId: X}]", []string{`mllp[0].processingId "X"`}},
		{"mllp: [{source: RX1, destinationFields: [PV1]}]", []string{"mllp[0].destinationFields"}},
		{"mllp: [{source: RX1, tls: {cert: a.pem}}]", []string{"mllp[0].tls: cert and key are both required"}},
		{"mllp: [{source: RX1, tls: {cert: /nonexistent.pem, key: /nonexistent.key}}]", []string{"mllp[0].tls: loading cert and key"}},
		{"mllp: [{source: RX1, tls: {cert: /x, key: /y, clientCA: " + notPEM + "}}]", []string{"no PEM certificate"}},
		{"mllp: [{source: RX1, port: 2575}]", []string{"field port not found"}},
		// Every problem at once.
		{"mllp: [{addr: x, source: RX9, processingId: Q}]", []string{"mllp[0].addr", "mllp[0].source", "mllp[0].processingId"}},
	}
	for _, tc := range tests {
		_, err := config.Parse([]byte(mllpBase + tc.yaml + "\n"))
		if err == nil {
			t.Errorf("%s: no error", tc.yaml)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s:\n\tgot  %v\n\twant %q", tc.yaml, err, w)
			}
		}
	}
}
