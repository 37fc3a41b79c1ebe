package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/feed"
	"github.com/carehub/carehub/hub/config"
)

// fieldErrors returns the FieldErrors of a joined error.
func fieldErrors(err error) []config.FieldError {
	var out []config.FieldError
	var fe config.FieldError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, fieldErrors(e)...)
		}
		return out
	}
	if errors.As(err, &fe) {
		out = append(out, fe)
	}
	return out
}

// TestDecodeRecipientTakesAConfigEntryAsJSON: the admin API's body is a
// recipients[] entry as JSON, decoded by the same code as the file's, with
// the same defaults, and checked by the same Check.
func TestDecodeRecipientTakesAConfigEntryAsJSON(t *testing.T) {
	body := `{"ods": "VM456", "name": "Another care home", "role": "social-care",
	  "webhook": {"url": "https://vm456.example/carehub", "secret": {"value": "whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM="}},
	  "subscriptions": [{"basis": "patient-list", "types": ["admission", "discharge"]}]}`
	r, err := config.DecodeRecipient([]byte(body), reg)
	if err != nil {
		t.Fatalf("DecodeRecipient: %v", err)
	}
	if errs := r.Check(); len(errs) > 0 {
		t.Fatalf("Check: %v", errs)
	}
	if got, want := r.Subscriptions[0].ID, "VM456-patient-list"; got != want {
		t.Errorf("default subscription id:\n\tgot  %q\n\twant %q", got, want)
	}
	if got, want := hook(*r).Timeout, 10*time.Second; got != want {
		t.Errorf("the webhook's default timeout:\n\tgot  %v\n\twant %v", got, want)
	}
	entry, err := r.Entry()
	if err != nil || entry["ods"] != "VM456" {
		t.Errorf("Entry: got %v, %v", entry, err)
	}

	// A feed recipient: the pull sink's own defaults.
	r, err = config.DecodeRecipient([]byte(`{"ods": "B82006", "role": "gp-practice", "feed": {"apiKey": {"value": "b82006-key"}},
	  "subscriptions": [{"id": "b82006-gp", "basis": "registered-gp", "types": ["discharge"]}]}`), reg)
	if err != nil {
		t.Fatalf("DecodeRecipient(feed): %v", err)
	}
	if got := r.Sink.Config.(*feed.Config).MaxEvents; got != feed.DefaultMaxEvents {
		t.Errorf("the feed's default maxEvents: got %d", got)
	}
	if got := r.Keys(); len(got) != 1 || got[".feed.apiKey"].Value != "b82006-key" {
		t.Errorf("Keys: got %v, want the feed's key", got)
	}
}

func TestDecodeRecipientRefusesWhatTheFileRefuses(t *testing.T) {
	const secretCanary = "whsec_not-base64-canary" // never echoed
	tests := []struct {
		name string
		body string
		// want are the problems, each as pointer and a part of its detail.
		want [][2]string
	}{
		{"not JSON", `{"ods": `, [][2]string{{"", "did not find expected node content"}}},
		{"an array", `[]`, [][2]string{{"", "a recipient is a map"}}},
		{"unknown field", `{"ods": "VM456", "role": "social-care", "colour": "red", "subscriptions": []}`,
			[][2]string{{"", "field colour not found: neither a recipient field nor a delivery type"}}},
		{"two delivery sections", `{"ods": "VM456", "role": "social-care", "webhook": {}, "feed": {}}`,
			[][2]string{{"", "a recipient has one delivery section"}}},
		{"unknown field in the sink", `{"ods": "VM456", "role": "social-care", "webhook": {"retries": 3}}`,
			[][2]string{{"/webhook", "field retries not found"}}},
		{"duplicate key", `{"ods": "VM456", "ods": "VM457"}`, [][2]string{{"", "already defined"}}},
		// A secret given as a string, not an object: the type error
		// names no part of it.
		{"a secret as a string", `{"ods": "VM456", "role": "social-care", "webhook": {"url": "https://x.example/", "secret": "` + secretCanary + `"}}`,
			[][2]string{{"/webhook", "cannot unmarshal !!str a value into"}}},
	}
	for _, tt := range tests {
		_, err := config.DecodeRecipient([]byte(tt.body), reg)
		if err == nil {
			t.Errorf("DecodeRecipient(%s): got no error", tt.name)
			continue
		}
		checkProblems(t, tt.name, fieldErrors(err), tt.want)
		if strings.Contains(err.Error(), secretCanary[:7]) {
			t.Errorf("DecodeRecipient(%s): the error quotes the secret: %v", tt.name, err)
		}
	}

	checks := []struct {
		name string
		body string
		want [][2]string
	}{
		{"everything wrong", `{"ods": "vm456", "role": "dentist", "apiKey": {"value": "short"},
		  "webhook": {"url": "ftp://x", "secret": {"value": "` + secretCanary + `"}},
		  "subscriptions": [{"id": "a/b", "basis": "postcode", "types": []}, {"id": "s", "basis": "registered-gp", "types": ["birthday"]}]}`,
			[][2]string{
				{"/ods", `ods "vm456": not an ODS code`},
				{"/role", `role "dentist": one of`},
				{"/apiKey", "API keys must be at least 8 bytes"},
				{"/webhook", "url: an absolute http or https URL is required"},
				{"/webhook", "secret: a webhook secret is whsec_ followed by base64"},
				{"/subscriptions/0/id", "1 to 64 letters"},
				{"/subscriptions/0/basis", `unknown basis "postcode"`},
				{"/subscriptions/0/types", "at least one event type is required"},
				{"/subscriptions/1/types", `unknown event type "birthday"`},
			}},
		{"no delivery, no subscription", `{"ods": "VM456", "role": "social-care"}`,
			[][2]string{{"", "a delivery section is required"}, {"", "at least one subscription is required"}}},
	}
	for _, tt := range checks {
		r, err := config.DecodeRecipient([]byte(tt.body), reg)
		if err != nil {
			t.Errorf("DecodeRecipient(%s): %v", tt.name, err)
			continue
		}
		got := r.Check()
		checkProblems(t, tt.name, got, tt.want)
		for _, e := range got {
			if strings.Contains(e.Error(), secretCanary) {
				t.Errorf("Check(%s): a problem echoes the secret: %v", tt.name, e)
			}
		}
	}
}

func checkProblems(t *testing.T, name string, got []config.FieldError, want [][2]string) {
	t.Helper()
	for _, w := range want {
		found := false
		for _, e := range got {
			if e.Pointer() == w[0] && strings.Contains(e.Detail(), w[1]) {
				found = true
			}
		}
		if !found {
			var all []string
			for _, e := range got {
				all = append(all, e.Pointer()+" "+e.Detail())
			}
			t.Errorf("%s: no problem at %q saying %q; got:\n\t%s", name, w[0], w[1], strings.Join(all, "\n\t"))
		}
	}
}

func TestFieldErrorPointer(t *testing.T) {
	tests := []struct{ field, want string }{
		{"", ""},
		{".ods", "/ods"},
		{".webhook", "/webhook"},
		{".subscriptions[2].types", "/subscriptions/2/types"},
		{".feed.apiKey", "/feed/apiKey"},
	}
	for _, tt := range tests {
		if got := (config.FieldError{Field: tt.field}).Pointer(); got != tt.want {
			t.Errorf("FieldError{Field: %q}.Pointer():\n\tgot  %q\n\twant %q", tt.field, got, tt.want)
		}
	}
}
