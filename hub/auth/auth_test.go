package auth_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/auth"
	"github.com/carehub/carehub/schemas/problem"
)

var _ connector.Authenticator = (*auth.Keys)(nil)

const (
	rx1Key   = "rx1-key-4d2c9a"
	vmKey    = "vm123-key-77b1e0"
	adminKey = "admin-key-c0ffee"
	opKey    = "operator-key-beef01"
	homeKey  = "vm123-own-key-5e5e5e" // the care home's own key as a recipient
	// unknownKey is presented but not configured; it must never be echoed.
	unknownKey = "stolen-key-9991234567"
)

func keys(t *testing.T) *auth.Keys {
	t.Helper()
	k, err := auth.New(map[string]string{rx1Key: "RX1", vmKey: "VM123", adminKey: auth.Admin, opKey: auth.OperatorPrincipal("ig-lead"),
		homeKey: auth.RecipientPrincipal("VM123")})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type outcome struct {
	principal string
	kind      problem.Kind // problem.Other when there is no error
}

func TestKeys(t *testing.T) {
	k := keys(t)
	ok := func(p string) outcome { return outcome{principal: p} }
	fail := func(kind problem.Kind) outcome { return outcome{kind: kind} }
	const (
		unauth = problem.Unauthenticated
		forbid = problem.Forbidden
	)
	tests := []struct {
		header       string // "" means no Authorization header
		principal    outcome
		organisation outcome
		admin        outcome // the operator id
	}{
		{"", fail(unauth), fail(unauth), fail(unauth)},
		{"Bearer " + rx1Key, ok("RX1"), ok("RX1"), fail(forbid)},
		{"Bearer " + vmKey, ok("VM123"), ok("VM123"), fail(forbid)},
		{"bearer " + rx1Key, ok("RX1"), ok("RX1"), fail(forbid)}, // the scheme is case-insensitive
		{"BEARER " + rx1Key, ok("RX1"), ok("RX1"), fail(forbid)},
		{"Bearer  " + rx1Key + " ", ok("RX1"), ok("RX1"), fail(forbid)}, // surrounding spaces are trimmed
		{"Bearer " + adminKey, ok(auth.Admin), fail(forbid), ok("admin")},
		{"Bearer " + opKey, ok("operator:ig-lead"), fail(forbid), ok("ig-lead")},
		{"Bearer " + homeKey, ok("recipient:VM123"), fail(forbid), fail(forbid)}, // a recipient's key publishes nothing
		{"Bearer " + unknownKey, fail(unauth), fail(unauth), fail(unauth)},
		{"Basic " + rx1Key, fail(unauth), fail(unauth), fail(unauth)},
		{"Token " + unknownKey, fail(unauth), fail(unauth), fail(unauth)},
		{rx1Key, fail(unauth), fail(unauth), fail(unauth)}, // no scheme
		{"Bearer", fail(unauth), fail(unauth), fail(unauth)},
		{"Bearer ", fail(unauth), fail(unauth), fail(unauth)},
		{"Bearer    ", fail(unauth), fail(unauth), fail(unauth)},
		{"Bearer " + rx1Key + "x", fail(unauth), fail(unauth), fail(unauth)},
		{"Bearer " + rx1Key[:len(rx1Key)-1], fail(unauth), fail(unauth), fail(unauth)},
		{"Bearer " + strings.ToUpper(rx1Key), fail(unauth), fail(unauth), fail(unauth)}, // keys are case-sensitive
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", "/v1/events", nil)
		if tt.header != "" {
			r.Header.Set("Authorization", tt.header)
		}
		check := func(fn string, p string, err error, want outcome) {
			t.Helper()
			got := outcome{principal: p, kind: problem.KindOf(err)}
			if err == nil {
				got.kind = problem.Other
			} else if got.kind == problem.Other {
				t.Errorf("%s(%q): error %v is not a *problem.Error", fn, tt.header, err)
			}
			if got != want {
				t.Errorf("%s(%q):\n\tgot  %+v (%v)\n\twant %+v", fn, tt.header, got, err, want)
			}
			if err != nil {
				for _, secret := range []string{rx1Key, vmKey, adminKey, homeKey, unknownKey} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("%s(%q): the error %q holds a key", fn, tt.header, err)
					}
				}
			}
		}
		p, err := k.Principal(r)
		check("Principal", p, err, tt.principal)
		p, err = k.Organisation(r)
		check("Organisation", p, err, tt.organisation)
		p, err = k.Operator(r)
		check("Operator", p, err, tt.admin)
	}
}

func TestNewRejectsShortKeys(t *testing.T) {
	tests := []struct {
		name    string
		keys    map[string]string
		wantErr bool
	}{
		{"empty set", map[string]string{}, false},
		{"eight bytes", map[string]string{"12345678": "RX1"}, false},
		{"seven bytes", map[string]string{"1234567": "RX1"}, true},
		{"empty key", map[string]string{"": "RX1"}, true},
		{"one short among good", map[string]string{rx1Key: "RX1", "short": "VM123"}, true},
	}
	for _, tt := range tests {
		k, err := auth.New(tt.keys)
		if (err != nil) != tt.wantErr {
			t.Errorf("New(%s):\n\tgot  %v\n\twant error: %v", tt.name, err, tt.wantErr)
		}
		if err != nil {
			if k != nil {
				t.Errorf("New(%s): returned keys with an error", tt.name)
			}
			for key := range tt.keys {
				if key != "" && strings.Contains(err.Error(), key) {
					t.Errorf("New(%s): the error %q holds a key", tt.name, err)
				}
			}
		}
	}
}

// An empty set knows no key.
func TestEmptyKeys(t *testing.T) {
	k, err := auth.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("POST", "/", nil)
	r.Header.Set("Authorization", "Bearer "+rx1Key)
	if _, err := k.Principal(r); problem.KindOf(err) != problem.Unauthenticated {
		t.Errorf("Principal with no keys:\n\tgot  %v\n\twant an Unauthenticated error", err)
	}
}

// TestLiveAnswersWithTheSetLastStored: a key added while the hub runs (a
// recipient created through the admin API) is known from the next
// request on; a key removed is not.
func TestLiveAnswersWithTheSetLastStored(t *testing.T) {
	l := auth.NewLive(keys(t))
	r := httptest.NewRequest("POST", "/", nil)
	r.Header.Set("Authorization", "Bearer new-recipient-key-1")
	if _, err := l.Principal(r); problem.KindOf(err) != problem.Unauthenticated {
		t.Fatalf("Principal before the key was added: got %v, want Unauthenticated", err)
	}
	k, err := auth.New(map[string]string{rx1Key: "RX1", "new-recipient-key-1": auth.RecipientPrincipal("VM456")})
	if err != nil {
		t.Fatal(err)
	}
	l.Store(k)
	if p, err := l.Principal(r); err != nil || p != "recipient:VM456" {
		t.Errorf("Principal after the key was added:\n\tgot  %q, %v\n\twant recipient:VM456", p, err)
	}
	if p, ok := l.Keys().Lookup(rx1Key); !ok || p != "RX1" {
		t.Errorf("Lookup(rx1 key): got %q, %v", p, ok)
	}
	if _, ok := l.Keys().Lookup(vmKey); ok {
		t.Errorf("Lookup found a key no longer in the set")
	}
}
