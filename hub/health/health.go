// Package health answers /healthz and /readyz for one hub process.
//
// /healthz says the process is alive: it answers 200 as long as it can
// answer at all. /readyz says the process should be sent work: 200 only
// when every registered check passes, else 503 with the reasons, one per
// failing check, as JSON:
//
//	{"ready": false, "reasons": ["disk: data directory disk space low: 812.0 MiB free ...",
//	                             "broker: no broker answered within 2s"]}
//
// A check is a function that reports whether its part is fit, and if not,
// why, in text safe to show (no values, no paths). Checks are registered
// as the hub starts its parts; each must be cheap and non-blocking, since a
// load balancer polls /readyz (a check that needs the network keeps its
// answer from a background probe, as Probe does).
//
// Concurrency: Add, Ready and the handlers may be called from any
// goroutine.
package health

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carehub/carehub/schemas/media"
)

// Check reports whether a part is fit to take work, and if not, why.
type Check func() (ok bool, reason string)

// Checks is the set of readiness checks of one process.
type Checks struct {
	mu     sync.Mutex
	checks map[string]Check
}

// New returns an empty set: a process with no checks is ready.
func New() *Checks { return &Checks{checks: map[string]Check{}} }

// Add registers (or replaces) the check called name.
func (c *Checks) Add(name string, check Check) {
	c.mu.Lock()
	c.checks[name] = check
	c.mu.Unlock()
}

// Result is the answer of one check.
type Result struct {
	Name   string
	OK     bool
	Reason string // why not, when not OK
}

// Results runs every check and returns their answers, sorted by name.
func (c *Checks) Results() []Result {
	c.mu.Lock()
	names := make([]string, 0, len(c.checks))
	for n := range c.checks {
		names = append(names, n)
	}
	checks := make(map[string]Check, len(c.checks))
	for n, f := range c.checks {
		checks[n] = f
	}
	c.mu.Unlock()
	sort.Strings(names)
	out := make([]Result, len(names))
	for i, n := range names {
		ok, why := checks[n]()
		out[i] = Result{Name: n, OK: ok, Reason: why}
	}
	return out
}

// Ready runs every check and returns the reasons of those that fail,
// sorted by name; none means ready.
func (c *Checks) Ready() []string {
	var reasons []string
	for _, r := range c.Results() {
		if !r.OK {
			reasons = append(reasons, r.Name+": "+r.Reason)
		}
	}
	return reasons
}

// Register adds GET /healthz and GET /readyz to mux.
func (c *Checks) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		reasons := c.Ready()
		status := http.StatusOK
		if len(reasons) > 0 {
			status = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", media.JSON)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(struct {
			Ready   bool     `json:"ready"`
			Reasons []string `json:"reasons,omitempty"`
		}{len(reasons) == 0, reasons})
	})
}

// Flag is a check that is what it was last set to.
type Flag struct {
	ok     atomic.Bool
	reason atomic.Value // string
}

// NewFlag returns a flag that fails with reason until Set(true).
func NewFlag(reason string) *Flag {
	f := &Flag{}
	f.reason.Store(reason)
	return f
}

// Set sets the flag, and the reason it gives while false.
func (f *Flag) Set(ok bool, reason string) {
	f.reason.Store(reason)
	f.ok.Store(ok)
}

// Check implements Check.
func (f *Flag) Check() (bool, string) { return f.ok.Load(), f.reason.Load().(string) }

// Probe runs a probe every interval until ctx ends, and checks by its last
// answer: fit once a probe has succeeded, unfit from the first failing
// probe on (with the probe's error, which must be safe to show), until one
// succeeds again. Before the first probe it is unfit.
type Probe struct {
	flag *Flag
}

// StartProbe starts probing in a goroutine of its own. Each probe is given
// a context bounded by timeout.
func StartProbe(ctx context.Context, interval, timeout time.Duration, probe func(context.Context) error) *Probe {
	p := &Probe{flag: NewFlag("not probed yet")}
	run := func() {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := probe(pctx); err != nil {
			p.flag.Set(false, err.Error())
			return
		}
		p.flag.Set(true, "")
	}
	run()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				run()
			}
		}
	}()
	return p
}

// Check implements Check.
func (p *Probe) Check() (bool, string) { return p.flag.Check() }

// Running is a check over parts that run for as long as the process does
// (the router; recipients, which come and go, are watched by the fleet): it
// fails while any watched part is not running, naming the parts. A part,
// once watched, is watched for as long as the process runs.
type Running struct {
	mu    sync.Mutex
	parts map[string]func() (running bool)
}

// NewRunning returns a check with nothing to watch: it passes.
func NewRunning() *Running { return &Running{parts: map[string]func() bool{}} }

// Watch watches the part called name: it has stopped once stopped is
// closed. A nil channel never closes.
func (r *Running) Watch(name string, stopped <-chan struct{}) {
	r.WatchFunc(name, func() bool {
		select {
		case <-stopped:
			return false
		default:
			return true
		}
	})
}

// WatchFunc watches the part called name by asking running.
func (r *Running) WatchFunc(name string, running func() bool) {
	r.mu.Lock()
	r.parts[name] = running
	r.mu.Unlock()
}

// maxNamed bounds how many stopped parts a reason names.
const maxNamed = 5

// Check implements Check.
func (r *Running) Check() (bool, string) {
	r.mu.Lock()
	var stopped []string
	for name, running := range r.parts {
		if !running() {
			stopped = append(stopped, name)
		}
	}
	r.mu.Unlock()
	if len(stopped) == 0 {
		return true, ""
	}
	sort.Strings(stopped)
	why := "not running: " + strings.Join(stopped[:min(len(stopped), maxNamed)], ", ")
	if len(stopped) > maxNamed {
		why += " and " + strconv.Itoa(len(stopped)-maxNamed) + " more"
	}
	return false, why
}
