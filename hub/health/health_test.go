package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func TestReadyz(t *testing.T) {
	c := New()
	mux := http.NewServeMux()
	c.Register(mux)
	get := func() (int, []string) {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest("GET", "/readyz", nil))
		var body struct {
			Ready   bool
			Reasons []string
		}
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Fatalf("/readyz body %q: %v", w.Body.String(), err)
		}
		if body.Ready != (w.Code == 200) {
			t.Errorf("/readyz: ready %v with status %d", body.Ready, w.Code)
		}
		return w.Code, body.Reasons
	}
	tests := []struct {
		name        string
		add         func()
		wantStatus  int
		wantReasons []string
	}{
		{"no checks", func() {}, 200, nil},
		{"a passing check", func() { c.Add("consent", func() (bool, string) { return true, "" }) }, 200, nil},
		{"a failing check", func() { c.Add("disk", func() (bool, string) { return false, "space low" }) }, 503, []string{"disk: space low"}},
		{"two, sorted", func() { c.Add("broker", func() (bool, string) { return false, "unreachable" }) }, 503,
			[]string{"broker: unreachable", "disk: space low"}},
		{"replaced", func() {
			c.Add("disk", func() (bool, string) { return true, "" })
			c.Add("broker", func() (bool, string) { return true, "" })
		}, 200, nil},
	}
	for _, tt := range tests {
		tt.add()
		status, reasons := get()
		if status != tt.wantStatus || !slices.Equal(reasons, tt.wantReasons) {
			t.Errorf("%s:\n\tgot  %d %q\n\twant %d %q", tt.name, status, reasons, tt.wantStatus, tt.wantReasons)
		}
	}
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
	if w.Code != 200 {
		t.Errorf("/healthz: got %d", w.Code)
	}
}

func TestFlag(t *testing.T) {
	f := NewFlag("starting")
	if ok, why := f.Check(); ok || why != "starting" {
		t.Errorf("new flag: got %v %q", ok, why)
	}
	f.Set(true, "")
	if ok, _ := f.Check(); !ok {
		t.Error("set flag not ok")
	}
	f.Set(false, "draining")
	if ok, why := f.Check(); ok || why != "draining" {
		t.Errorf("cleared flag: got %v %q", ok, why)
	}
}

// TestProbeFollowsItsLastAnswer: unfit from a failing probe until one
// succeeds, with the probe's reason.
func TestProbeFollowsItsLastAnswer(t *testing.T) {
	var fail atomic.Bool
	var probes atomic.Int32
	fail.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := StartProbe(ctx, time.Millisecond, time.Second, func(context.Context) error {
		probes.Add(1)
		if fail.Load() {
			return errors.New("no broker answered")
		}
		return nil
	})
	if ok, why := p.Check(); ok || why != "no broker answered" {
		t.Errorf("after a failing probe: got %v %q", ok, why)
	}
	fail.Store(false)
	wait := func(want bool) {
		deadline := time.Now().Add(10 * time.Second)
		for ok, _ := p.Check(); ok != want; ok, _ = p.Check() {
			if time.Now().After(deadline) {
				t.Fatalf("the probe did not become %v", want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wait(true)
	fail.Store(true)
	wait(false)
}

func TestRunning(t *testing.T) {
	r := NewRunning()
	check := func() (bool, string) { return r.Check() }
	stopped := map[string]chan struct{}{}
	stop := func(name string) { close(stopped[name]) }
	watch := func(names ...string) {
		for _, n := range names {
			stopped[n] = make(chan struct{})
			r.Watch(n, stopped[n])
		}
	}
	tests := []struct {
		name   string
		change func()
		wantOK bool
		want   string
	}{
		{"nothing watched", func() {}, true, ""},
		{"all running", func() { watch("route", "deliver A81001", "deliver VM123") }, true, ""},
		{"one stopped", func() { stop("deliver VM123") }, false, "not running: deliver VM123"},
		{"two stopped, sorted", func() { stop("route") }, false, "not running: deliver VM123, route"},
		{"a new check", func() { r = NewRunning() }, true, ""},
		{"a nil channel never stops", func() { r.Watch("feed B82005", nil) }, true, ""},
		{"many stopped, bounded", func() {
			for _, n := range []string{"a", "b", "c", "d", "e", "f", "g"} {
				watch(n)
				stop(n)
			}
		}, false, "not running: a, b, c, d, e and 2 more"},
	}
	for _, tt := range tests {
		tt.change()
		ok, why := check()
		if ok != tt.wantOK || why != tt.want {
			t.Errorf("%s:\n\tgot  %v %q\n\twant %v %q", tt.name, ok, why, tt.wantOK, tt.want)
		}
	}
}
