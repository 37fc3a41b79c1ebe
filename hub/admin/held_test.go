package admin

import (
	"context"
	"encoding/json"
	"errors"

	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/schemas/nhs"

	"github.com/carehub/carehub/hub/held"
	"github.com/carehub/carehub/hub/topic"
	"go.uber.org/zap"
)

type fakeHeld struct {
	recs []held.Located
	err  error
}

func (f fakeHeld) All(context.Context) ([]held.Located, error) { return f.recs, f.err }

func TestHeldEndpoints(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	recs := []held.Located{
		{Record: held.Record{ID: "a", Source: "RX1", Reason: "no-nhs-number", Trigger: "ADT^A01", Received: t0, Patient: "l1_x", Original: []byte("MSH|9990000018")}},
		{Record: held.Record{ID: "b", Source: "RX1", Reason: "trigger-not-shared", Trigger: "ADT^A15", Received: t0.Add(time.Minute), Patient: "p1_y", Original: []byte("MSH|b")}, Offset: 1},
	}
	pub := &capture{}
	a := &API{Held: fakeHeld{recs: recs}, Log: zap.NewNop(), Publisher: pub, now: time.Now}
	tests := []struct {
		name, path string
		status     int
		want       []string // substrings of the body
		not        []string
	}{
		{"list", "/v1/held", 200, []string{`"id":"b"`, `"id":"a"`, `"total":2`, `"reason":"no-nhs-number"`}, []string{"9990000018", `"message"`}},
		{"list one reason", "/v1/held?reason=trigger-not-shared", 200, []string{`"id":"b"`, `"total":1`}, []string{`"id":"a"`}},
		{"with the messages", "/v1/held?include=message&source=RX1", 200, []string{`"message":"MSH|9990000018"`, `"state":"open"`}, nil},
		{"closed ones", "/v1/held?state=resolved", 200, []string{`"total":0`}, nil},
		{"a page", "/v1/held?limit=1", 200, []string{`"id":"b"`, `"next":`}, []string{`"id":"a"`}},
		{"bad query", "/v1/held?reason=because&limit=0&source=rx1&include=all&nhs=9990000018&state=gone", 422,
			[]string{"/query/reason", "/query/limit", "/query/source", "/query/include", "/query/nhs", "/query/state"}, []string{"9990000018"}},
		{"bad cursor", "/v1/held?cursor=xyz", 422, []string{"/query/cursor"}, nil},
		{"counts", "/v1/held/counts", 200, []string{`"total":2`, `"trigger-not-shared":1`, `"nhs-number-unverified":0`, `"RX1":2`}, nil},
		{"counts with a query", "/v1/held/counts?x=1", 422, []string{"/query"}, nil},
	}
	for _, tt := range tests {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, tt.path, nil)
		if strings.HasPrefix(tt.path, "/v1/held/counts") {
			a.countHeld(w, r)
		} else {
			a.listHeld(w, r)
		}
		body := w.Body.String()
		if w.Code != tt.status {
			t.Errorf("%s: status %d, want %d: %s", tt.name, w.Code, tt.status, body)
		}
		for _, s := range tt.want {
			if !strings.Contains(body, s) {
				t.Errorf("%s: the answer lacks %s: %s", tt.name, s, body)
			}
		}
		for _, s := range tt.not {
			if strings.Contains(body, s) {
				t.Errorf("%s: the answer holds %s: %s", tt.name, s, body)
			}
		}
		if !json.Valid(w.Body.Bytes()) {
			t.Errorf("%s: not JSON", tt.name)
		}
	}

	if n := len(pub.got[topic.Audit]); n != 2 {
		t.Errorf("listing the originals of two patients wrote %d audit records, want 2", n)
	}

	w := httptest.NewRecorder()
	(&API{Held: fakeHeld{err: errors.New("broker down")}, Log: zap.NewNop()}).listHeld(w, httptest.NewRequest(http.MethodGet, "/v1/held", nil))
	if w.Code != 503 {
		t.Errorf("broker down: status %d, want 503", w.Code)
	}
}

// capture is a publisher that keeps what it is given.
type capture struct{ got map[string][]*message.Message }

func (c *capture) Publish(t string, msgs ...*message.Message) error {
	if c.got == nil {
		c.got = map[string][]*message.Message{}
	}
	c.got[t] = append(c.got[t], msgs...)
	return nil
}
func (c *capture) Close() error { return nil }

// rereader is a Releaser for RX1's HL7: the message "MSH|a" becomes an
// event once an NHS number is given; "MSH|b" stays held.
type rereader struct{ given nhs.Number }

func (f *rereader) Reread(_ context.Context, m connector.HeldMessage) (connector.Reread, error) {
	if m.Org != "RX1" {
		return connector.Reread{}, connector.ErrNotMine
	}
	f.given = m.NHSNumber
	if string(m.Original) == "MSH|b" {
		return connector.Reread{Held: &connector.Held{Reason: "trigger-not-shared", Detail: "pending transfer"}}, nil
	}
	if m.NHSNumber.IsZero() {
		return connector.Reread{Held: &connector.Held{Reason: "no-nhs-number", Detail: "no NHS number"}}, nil
	}
	return connector.Reread{Events: []json.RawMessage{json.RawMessage(`{"id":"a"}`)}}, nil
}

type acceptAll struct{ got []string }

func (f *acceptAll) Accept(context.Context, string, []byte) (connector.Accepted, error) {
	return connector.Accepted{}, nil
}
func (f *acceptAll) AcceptBatch(_ context.Context, org string, raws []json.RawMessage) []connector.Result {
	var out []connector.Result
	for _, r := range raws {
		f.got = append(f.got, org+":"+string(r))
		out = append(out, connector.Result{Accepted: connector.Accepted{ID: "a", Type: "org.carehub.admission.v1"}})
	}
	return out
}
func (f *acceptAll) Hold(context.Context, string, connector.Held) error { return nil }

func TestReleaseAndResolveHeld(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	recs := []held.Located{
		{Record: held.Record{ID: "a", Source: "RX1", Reason: "no-nhs-number", Trigger: "ADT^A01", Received: t0, Patient: "l1_x", ContentType: "x-application/hl7-v2+er7", Original: []byte("MSH|a")}},
		{Record: held.Record{ID: "b", Source: "RX1", Reason: "trigger-not-shared", Trigger: "ADT^A15", Received: t0, Patient: "p1_y", ContentType: "x-application/hl7-v2+er7", Original: []byte("MSH|b")}, Offset: 1},
		{Record: held.Record{ID: "c", Source: "RX1", Reason: "trigger-not-shared", Received: t0, Patient: "p1_z", Original: []byte("MSH|c")}, Offset: 2},
		{Record: held.Closing(held.Record{ID: "c", Source: "RX1", Patient: "p1_z"}, held.Resolution{Action: held.Resolved, Actor: "ig-lead", Reason: "x"}, t0), Offset: 3},
	}
	ps, err := nhs.NewPseudonymiser([]byte("admin-test-pseudonym-key"))
	if err != nil {
		t.Fatal(err)
	}
	pub, rr, in := &capture{}, &rereader{}, &acceptAll{}
	a := &API{Held: fakeHeld{recs: recs}, Log: zap.NewNop(), Publisher: pub, now: time.Now, Pseudo: ps, Ingest: in, MaxBody: 1 << 16, Releasers: []connector.Releaser{rr}}
	call := func(method, path, body string) (int, string) {
		mux := http.NewServeMux()
		mux.HandleFunc("POST /v1/held/{id}/release", a.releaseHeld)
		mux.HandleFunc("DELETE /v1/held/{id}", a.resolveHeld)
		w := httptest.NewRecorder()
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		r = r.WithContext(context.WithValue(r.Context(), operatorKey{}, "ig-lead"))
		mux.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	nhsNo := nhs.Synthetic(77).Digits()
	tests := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"still held without a number", "POST", "/v1/held/a/release", "", 409, `"rule":"no-nhs-number"`},
		{"a trigger not shared", "POST", "/v1/held/b/release", "", 409, `"rule":"trigger-not-shared"`},
		{"a bad number", "POST", "/v1/held/a/release", `{"nhsNumber":"1234567890"}`, 422, "/nhsNumber"},
		{"an unknown member", "POST", "/v1/held/a/release", `{"nhs":"x"}`, 422, "release-body"},
		{"already resolved", "POST", "/v1/held/c/release", "", 409, "already resolved by ig-lead"},
		{"unknown", "DELETE", "/v1/held/zz", `{"reason":"x"}`, 404, ""},
		{"no reason", "DELETE", "/v1/held/b", `{}`, 422, "/reason"},
		{"released with the traced number", "POST", "/v1/held/a/release", `{"nhsNumber":"` + nhsNo + `"}`, 200, `"state":"released"`},
		{"resolved", "DELETE", "/v1/held/b", `{"reason":"a bed plan; nothing to tell anyone"}`, 204, ""},
	}
	for _, tt := range tests {
		status, body := call(tt.method, tt.path, tt.body)
		if status != tt.status || !strings.Contains(body, tt.want) {
			t.Errorf("%s:\n\tgot  %d %s\n\twant %d %s", tt.name, status, body, tt.status, tt.want)
		}
		if strings.Contains(body, nhsNo) {
			t.Errorf("%s: the answer holds the NHS number", tt.name)
		}
	}
	if rr.given.Digits() != nhsNo || len(in.got) != 1 || in.got[0] != `RX1:{"id":"a"}` {
		t.Errorf("the release gave %v and took in %v", rr.given.IsZero(), in.got)
	}
	var closes []string
	for _, m := range pub.got[topic.Held] {
		rec, _ := held.Unmarshal(m.Payload)
		closes = append(closes, rec.ID+":"+rec.Resolution.Action+":"+rec.Resolution.Actor+":"+m.Metadata.Get(topic.MetaKey))
	}
	if want := []string{"a:released:ig-lead:l1_x", "b:resolved:ig-lead:p1_y"}; strings.Join(closes, " ") != strings.Join(want, " ") {
		t.Errorf("resolution records %v, want %v", closes, want)
	}
	var actions []string
	for _, m := range pub.got[topic.Audit] {
		rec, _ := audit.Unmarshal(m.Payload)
		actions = append(actions, rec.Action+":"+rec.Actor)
		if rec.Action == audit.ActionHeldRelease && rec.Patient != ps.Pseudonym(nhs.MustParse(nhsNo)) {
			t.Errorf("the release is audited under %s, not the traced patient", rec.Patient)
		}
	}
	if strings.Join(actions, " ") != "held-release:ig-lead held-resolve:ig-lead" {
		t.Errorf("audit: %v", actions)
	}
}
