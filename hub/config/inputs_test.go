package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/mllp"
)

const inputsBase = `
pseudonymKey: {value: 0123456789abcdef}
sources:
  - {ods: RX1, apiKey: {value: rx1-key-123}}
`

// TestMLLPDefaults: an input entry is decoded over its connector's
// defaults.
func TestMLLPDefaults(t *testing.T) {
	c, err := parse([]byte(inputsBase + "inputs: [{mllp: {source: RX1}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, ok := c.Inputs[0].Config.(*mllp.Config)
	if !ok || c.Inputs[0].Type != "mllp" {
		t.Fatalf("inputs[0]: got %s %T, want an mllp configuration", c.Inputs[0].Type, c.Inputs[0].Config)
	}
	want := mllp.Config{Addr: "127.0.0.1:2575", Source: "RX1", MaxFrameBytes: 1 << 20, ReadTimeout: time.Minute,
		IdleTimeout: 10 * time.Minute, DuplicateWindow: 24 * time.Hour, ProcessingID: "P"}
	if got.Addr != want.Addr || got.MaxFrameBytes != want.MaxFrameBytes || got.ReadTimeout != want.ReadTimeout ||
		got.IdleTimeout != want.IdleTimeout || got.DuplicateWindow != want.DuplicateWindow || got.ProcessingID != want.ProcessingID {
		t.Errorf("defaults:\n\tgot  %+v\n\twant %+v", got, want)
	}
}

// TestInputValidation: each connector validates its own section, and the
// hub checks how the sections fit together; every message names the entry.
func TestInputValidation(t *testing.T) {
	tests := []struct {
		yaml string
		want []string
	}{
		{"inputs: [{mllp: {addr: nowhere, source: RX1}}]", []string{`inputs[0].mllp: addr "nowhere"`}},
		{"inputs: [{mllp: {source: RX9}}]", []string{`inputs[0].mllp.source "RX9": must be one of sources[].ods`}},
		{"inputs: [{mllp: {source: RX1}}, {mllp: {source: RX1}}]", []string{`inputs[1].mllp.addr "127.0.0.1:2575": used by inputs[0].mllp.addr`}},
		{"inputs: [{mllp: {source: RX1, maxFrameBytes: 10}}]", []string{"inputs[0].mllp: maxFrameBytes must be between"}},
		{"inputs: [{mllp: {source: RX1, idleTimeout: -1s}}]", []string{"must be positive"}},
		{"inputs: [{mllp: {source: RX1, processingId: X}}]", []string{`inputs[0].mllp: processingId "X"`}},
		{"inputs: [{mllp: {source: RX1, destinationFields: [PV1]}}]", []string{"inputs[0].mllp: destinationFields"}},
		{"inputs: [{mllp: {source: RX1, tls: {cert: a.pem}}}]", []string{"inputs[0].mllp: tls: cert and key are both required"}},
		{"inputs: [{mllp: {source: RX1, port: 2575}}]", []string{"inputs[0].mllp", "field port not found"}},
		{"inputs: [{cloudevents: {maxBatchEvents: 0}}]", []string{"inputs[0].cloudevents: maxBatchEvents must be at least 1"}},
		{"inputs: [{hl7fhir: {}}]", []string{`inputs[0] (line 5): unknown input type "hl7fhir": one of cloudevents, fhir, mllp`}},
		{"inputs: [{mllp: {source: RX1}, cloudevents: {}}]", []string{"an input is a map with one key"}},
		// Every problem at once.
		{"inputs: [{mllp: {addr: x, source: RX9, processingId: Q}}]", []string{"inputs[0].mllp: addr", "inputs[0].mllp.source", "inputs[0].mllp: processingId"}},
	}
	for _, tc := range tests {
		_, err := parse([]byte(inputsBase + tc.yaml + "\n"))
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

// TestOldFormsRefused: settings that moved are refused with what to write
// instead, not ignored.
func TestOldFormsRefused(t *testing.T) {
	tests := []struct {
		yaml string
		want []string
	}{
		{"mllp:\n  - {addr: 127.0.0.1:2575, source: RX1}\n", []string{"mllp: MLLP listeners moved under inputs", "- mllp: {addr: 127.0.0.1:2575, source: RX1}"}},
		{"http: {addr: 127.0.0.1:8080, maxBatchEvents: 500}\n", []string{"http.maxBatchEvents moved to the cloudevents input", "- cloudevents: {maxBatchEvents: 500}"}},
	}
	for _, tc := range tests {
		_, err := parse([]byte(inputsBase + tc.yaml))
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

// TestRecipientSections: a recipient's delivery section is keyed by a
// registered sink type; anything else is an unknown field.
func TestRecipientSections(t *testing.T) {
	base := inputsBase + "inputs: [{cloudevents: {}}]\nrecipients:\n  - ods: A81001\n    role: gp-practice\n    subscriptions: [{basis: registered-gp, types: [discharge]}]\n"
	tests := []struct {
		yaml string
		want string
	}{
		{"    webhok: {url: https://gp.example/, secret: {value: whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM=}}\n", "field webhok not found: neither a recipient field nor a delivery type (feed, fhir, webhook)"},
		{"    webhook: {url: https://gp.example/, secret: {value: whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM=}, retries: 3}\n", "recipients[0].webhook (line 10): field retries not found"},
		{"    webhook: {url: https://gp.example/, secret: {vault: x}}\n", "field vault not found"},
	}
	for _, tc := range tests {
		_, err := parse([]byte(base + tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n\tgot  %v\n\twant %q", tc.yaml, err, tc.want)
		}
	}
}
