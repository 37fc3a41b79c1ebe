package feed

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
)

// The conformance suite's probe: the hub's side of a feed is replaced by
// MemoryFeed, whose appends are what the suite's receiver answers: accepted
// (and passed to got), failing transiently, or refused for good.

const probeKey = "conformance-feed-key"

func probeReceiver(func() connector.Behaviour, func([]byte)) (connector.Config, func(), error) {
	cfg := DefaultConfig()
	cfg.APIKey = connector.SecretValue(probeKey)
	return cfg, func() {}, nil
}

func probeEnv(behave func() connector.Behaviour, got func([]byte)) connector.SinkEnv {
	f := NewMemoryFeed()
	f.behave, f.got = behave, got
	return connector.SinkEnv{
		Feed:    f,
		Readers: probeReaders{},
		Audit:   connector.ReadAuditFunc(func(context.Context, connector.FeedRead) error { return nil }),
	}
}

type probeReaders struct{}

func (probeReaders) Organisation(r *http.Request) (string, error) {
	if r.Header.Get("Authorization") != "Bearer "+probeKey {
		return "", problem.New(problem.Unauthenticated, "an API key is required")
	}
	return "A81001", nil
}

// MemoryFeed is a connector.Feed held in memory: numbered from 1, each
// event (source, id) once, lost when the process ends. It is what the
// probe gives the sink in place of the hub's durable feed.
type MemoryFeed struct {
	mu      sync.Mutex
	entries []connector.FeedEntry
	ids     map[string]int64 // by event.Identity(source, id)
	first   int64            // entries numbered up to first were trimmed
	acked   int64
	changed chan struct{}
	done    chan struct{}
	behave  func() connector.Behaviour
	got     func([]byte)
}

// NewMemoryFeed returns an empty feed.
func NewMemoryFeed() *MemoryFeed {
	return &MemoryFeed{ids: map[string]int64{}, changed: make(chan struct{}), done: make(chan struct{})}
}

// Append implements connector.Feed. Like the hub's feed, it gives up when
// ctx ends: the probe's receiver may hold an append (the conformance suite
// does, to check that a stop lets an append under way finish).
func (f *MemoryFeed) Append(ctx context.Context, d connector.Delivery) (int64, error) {
	if f.behave != nil {
		answered := make(chan connector.Behaviour, 1)
		go func() { answered <- f.behave() }()
		var b connector.Behaviour
		select {
		case b = <-answered:
		case <-ctx.Done():
			return 0, problem.Wrap(problem.Unavailable, "appending to the feed", ctx.Err())
		}
		switch b {
		case connector.Transient:
			return 0, problem.New(problem.Unavailable, "the feed is unavailable")
		case connector.Reject:
			return 0, connector.Permanent("the feed refused the event", nil)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k := event.Identity(d.EventSource, d.EventID)
	if n, ok := f.ids[k]; ok {
		return n, nil
	}
	n := f.first + int64(len(f.entries)) + 1
	f.entries = append(f.entries, connector.FeedEntry{Number: n, Time: time.Now().UTC(), Delivery: d})
	f.ids[k] = n
	close(f.changed)
	f.changed = make(chan struct{})
	if f.got != nil {
		f.got(d.Body)
	}
	return n, nil
}

// Read implements connector.Feed.
func (f *MemoryFeed) Read(_ context.Context, after int64, max int) (connector.FeedPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := connector.FeedPage{Latest: f.first + int64(len(f.entries))}
	if p.Latest > f.first {
		p.Oldest = f.first + 1
	}
	if after < 0 {
		after = 0
	}
	if after >= p.Latest {
		return p, nil
	}
	if after < f.first {
		return p, problem.New(problem.Gone, fmt.Sprintf("events numbered up to %d are no longer kept; the oldest available is %d", f.first, p.Oldest))
	}
	end := min(after+int64(max), p.Latest)
	p.Entries = append([]connector.FeedEntry(nil), f.entries[after-f.first:end-f.first]...)
	return p, nil
}

// Acknowledge implements connector.Feed.
func (f *MemoryFeed) Acknowledge(_ context.Context, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acked = max(f.acked, n)
	return nil
}

// Changed implements connector.Feed.
func (f *MemoryFeed) Changed(after int64) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first+int64(len(f.entries)) > after {
		c := make(chan struct{})
		close(c)
		return c
	}
	return f.changed
}

// Done implements connector.Feed.
func (f *MemoryFeed) Done() <-chan struct{} { return f.done }
