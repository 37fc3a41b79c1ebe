package connector

import (
	"context"
	"net/http"
	"time"
)

// # Pull recipients
//
// A pull recipient (a GP system that polls, say) does not run an endpoint
// the hub could push to: it reads its events from the hub, at its own
// pace. Its sink's Deliver appends each event to the recipient's Feed, a
// durable log the hub keeps, and the sink serves that log over the hub's
// HTTP API (HTTPSink), to the recipient alone (SinkEnv.Readers), re-checking
// consent as it serves each event (SinkEnv.Consent) and auditing every read
// (SinkEnv.Audit).
//
// A sink is a pull sink when its configuration implements PullConfig: the
// hub then creates the recipient's feed, authenticates the recipient's key,
// and fills the four pull fields of SinkEnv. A push sink gets them nil.

// PullConfig is implemented by the configuration of a sink whose recipient
// reads from the hub with an API key of its own. The hub authenticates the
// key as the recipient (SinkEnv.Readers) and keeps the recipient's feed
// (SinkEnv.Feed).
type PullConfig interface {
	Config
	// ReaderKey is the recipient's API key.
	ReaderKey() Secret
}

// Feed is one recipient's durable, numbered log of delivered events, kept
// by the hub. Its numbers are the promise a reader relies on:
//
//   - every event appended gets the next number: 1, 2, 3, ... with no gap,
//     strictly increasing, never reused, the same in every hub process, and
//     the same after a restart, a crash or a rebalance;
//   - an event, by its source and id together (Delivery.EventSource and
//     Delivery.EventID: two publishers may use one id), is appended at most
//     once: appending it again (a redelivery after a crash) returns the
//     number it already has (the hub's feed has one window, a rebalance
//     during an append, where it can get a second number: hub/feedlog);
//   - the oldest numbers may be dropped by retention: Oldest says which is
//     the first still readable, and Read refuses older ones (problem.Gone)
//     rather than skip them silently.
type Feed interface {
	// Append makes d durable in the feed and returns its number; if the
	// event (d.EventSource, d.EventID) is already there it returns that number and
	// appends nothing. On error nothing new is readable; the caller
	// retries (a problem.Unavailable error) or gives up.
	Append(ctx context.Context, d Delivery) (int64, error)
	// Read returns up to max entries numbered after after, oldest first,
	// with the latest number and the oldest available. It never waits:
	// with nothing after after it returns no entries.
	Read(ctx context.Context, after int64, max int) (FeedPage, error)
	// Changed returns a channel that is closed once an entry numbered
	// after after is readable, or when the feed stops serving (the hub is
	// draining: then Done is closed too). Waiting on it costs no broker
	// call and no goroutine: many readers may wait at once.
	Changed(after int64) <-chan struct{}
	// Done is closed when the hub stops serving readers (it is draining):
	// long-polls and streams must answer and end.
	Done() <-chan struct{}
	// Acknowledge records, durably and for every hub process, that the
	// recipient holds every entry numbered up to n (it asked for what
	// follows n). Acknowledged entries become eligible for retention once
	// the window has passed; unacknowledged ones are kept. It never moves
	// the acknowledgement back: a lower n than one already recorded does
	// nothing.
	Acknowledge(ctx context.Context, n int64) error
}

// FeedEntry is one numbered event of a feed.
type FeedEntry struct {
	Number   int64
	Time     time.Time // when it was appended
	Delivery Delivery  // EventID, EventType, Recipient, PatientRef, Body
}

// FeedPage is the answer to one Feed.Read.
type FeedPage struct {
	Entries []FeedEntry
	Latest  int64 // the highest number in the feed; 0 when empty
	Oldest  int64 // the lowest number still readable; 0 when empty
}

// FeedRead is what one read of a feed gave its recipient, for the audit
// trail: who read, and which numbers it was given or had withheld.
type FeedRead struct {
	Recipient string // the reader, authenticated
	Via       string // how it read: "json", "fhir", "sse"
	Entries   []FeedReadEntry
}

// FeedReadEntry is one number served by a read.
type FeedReadEntry struct {
	Number     int64
	EventID    string
	EventType  string
	Publisher  string // the event's source (Delivery.EventSource): with EventID, the event's identity
	PatientRef string
	Withheld   bool   // the consent re-check refused it: only its number was served
	Rule       string // the re-check's rule
}

// ReadAudit records reads of feeds. Record returns once the record is
// durable; a reader is answered only after that, so nothing is disclosed
// that the audit trail does not show.
type ReadAudit interface {
	Record(ctx context.Context, r FeedRead) error
}

// ReadAuditFunc adapts a function to a ReadAudit.
type ReadAuditFunc func(ctx context.Context, r FeedRead) error

// Record calls f.
func (f ReadAuditFunc) Record(ctx context.Context, r FeedRead) error { return f(ctx, r) }

// HTTPSink is implemented by a sink whose recipient reads over the hub's
// HTTP API. The hub calls RegisterHTTP once, with its mux, before it serves;
// the sink adds its routes there (they must not collide with another sink's:
// sinks of one type share a route through a dispatcher of their own).
type HTTPSink interface {
	Sink
	RegisterHTTP(mux *http.ServeMux) error
}
