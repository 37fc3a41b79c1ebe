package mllp

import (
	"crypto/sha256"
	"sync"
	"time"
)

// dedupe remembers the messages made durable within a window, so that a
// resend is acknowledged without being published twice.
//
// Concurrency: every field is guarded by mu. An entry is pending while one
// connection publishes it; other connections that receive the same message
// meanwhile wait on its done channel, then look again.
type dedupe struct {
	mu     sync.Mutex
	window time.Duration
	max    int
	m      map[string]*entry
	order  []*entry // in insertion order, for expiry and the size cap
	head   int      // order[head:] are live or removed-but-not-yet-popped
}

type entry struct {
	key     string
	digest  [sha256.Size]byte
	at      time.Time
	pending bool
	done    chan struct{} // closed when no longer pending
}

type dupState int

const (
	dupProceed  dupState = iota // not seen: publish it, then call finish
	dupAlready                  // made durable before, same content: acknowledge only
	dupConflict                 // same key, different content: reject
	dupWait                     // the same message is in flight elsewhere: wait on entry.done
)

func newDedupe(window time.Duration, max int) *dedupe {
	return &dedupe{window: window, max: max, m: map[string]*entry{}}
}

// begin looks a message up. For dupProceed and dupWait it returns the
// entry; for dupProceed the caller must call finish.
func (d *dedupe) begin(key string, digest [sha256.Size]byte, now time.Time) (dupState, *entry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.expire(now)
	if e, ok := d.m[key]; ok {
		switch {
		case e.digest != digest:
			return dupConflict, nil
		case e.pending:
			return dupWait, e
		default:
			return dupAlready, nil
		}
	}
	e := &entry{key: key, digest: digest, at: now, pending: true, done: make(chan struct{})}
	d.m[key] = e
	d.order = append(d.order, e)
	return dupProceed, e
}

// finish records the outcome of a message begun with dupProceed: kept if it
// was made durable, forgotten if not (so that a resend is published).
func (d *dedupe) finish(e *entry, durable bool, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e.pending = false
	close(e.done)
	if durable {
		e.at = now
		return
	}
	if d.m[e.key] == e {
		delete(d.m, e.key)
	}
}

// expire drops entries older than the window, and the oldest beyond max.
// Entries are appended in time order (now is monotonic enough: a later
// finish only moves at forward), so the front of order is the oldest.
//
// mu must be held.
func (d *dedupe) expire(now time.Time) {
	for d.head < len(d.order) {
		e := d.order[d.head]
		live := d.m[e.key] == e
		if live && !e.pending && now.Sub(e.at) < d.window && len(d.m) < d.max {
			break
		}
		if live && e.pending {
			break // never forget a message in flight
		}
		if live {
			delete(d.m, e.key)
		}
		d.order[d.head] = nil
		d.head++
	}
	if d.head > 1024 && d.head > len(d.order)/2 {
		d.order = append([]*entry(nil), d.order[d.head:]...)
		d.head = 0
	}
}
