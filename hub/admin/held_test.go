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

	"github.com/carehub/carehub/hub/held"
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
	a := &API{Held: fakeHeld{recs: recs}, Log: zap.NewNop()}
	tests := []struct {
		name, path string
		status     int
		want       []string // substrings of the body
		not        []string
	}{
		{"list", "/v1/held", 200, []string{`"id":"b"`, `"id":"a"`, `"total":2`, `"reason":"no-nhs-number"`}, []string{"9990000018", `"message"`}},
		{"list one reason", "/v1/held?reason=trigger-not-shared", 200, []string{`"id":"b"`, `"total":1`}, []string{`"id":"a"`}},
		{"with the messages", "/v1/held?include=message&source=RX1", 200, []string{`"message":"MSH|9990000018"`}, nil},
		{"a page", "/v1/held?limit=1", 200, []string{`"id":"b"`, `"next":`}, []string{`"id":"a"`}},
		{"bad query", "/v1/held?reason=because&limit=0&source=rx1&include=all&nhs=9990000018", 422,
			[]string{"/query/reason", "/query/limit", "/query/source", "/query/include", "/query/nhs"}, []string{"9990000018"}},
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

	w := httptest.NewRecorder()
	(&API{Held: fakeHeld{err: errors.New("broker down")}, Log: zap.NewNop()}).listHeld(w, httptest.NewRequest(http.MethodGet, "/v1/held", nil))
	if w.Code != 503 {
		t.Errorf("broker down: status %d, want 503", w.Code)
	}
}
