package hub

import (
	"context"
	"strings"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// What the hub gives pull sinks (connector.SinkEnv's pull fields) besides
// their feeds: the audit of reads. Consent at read time is the same re-check
// every sink has (deliver.Gate, SinkEnv.Consent): a feed stores each copy's
// form and sealed routing decision with it, and hands them back when it
// serves the copy.

// auditRead implements connector.ReadAudit: one feed-read record per
// number served, keyed by the patient's pseudonym, with the event's
// publisher (its ODS code, as the deliverers' records have it) so that two
// publishers' events with one id stay apart, made durable before the reader
// is answered.
func (h *hub) auditRead(ctx context.Context, r connector.FeedRead) error {
	if h.pub == nil {
		return problem.New(problem.Unavailable, "the publisher has not started")
	}
	msgs := make([]*message.Message, 0, len(r.Entries))
	now := h.now().UTC()
	for _, e := range r.Entries {
		rec := audit.Record{Time: now, Kind: audit.KindFeedRead, EventID: e.EventID, EventType: e.EventType,
			Publisher: strings.TrimPrefix(e.Publisher, event.SourcePrefix), Patient: e.PatientRef, Recipient: r.Recipient, Outcome: audit.Read, Rule: e.Rule, Number: e.Number, Via: r.Via}
		if e.Withheld {
			rec.Outcome = audit.Withheld
		}
		m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
		m.Metadata.Set(topic.MetaKey, e.PatientRef)
		m.Metadata.Set(topic.MetaEventID, e.EventID)
		msgs = append(msgs, m)
	}
	// A number served withheld: the reader does not have that copy, and
	// the patient index learns it before the reader is answered, so that
	// no update or correction of it follows it to the reader.
	for _, e := range r.Entries {
		if !e.Withheld || e.PatientRef == "" {
			continue
		}
		if h.router == nil {
			return problem.New(problem.Unavailable, "the router has not started")
		}
		if err := h.router.Settle(ctx, readSettlement(r.Recipient, e)); err != nil {
			return err
		}
	}
	if err := h.pub.Publish(topic.Audit, msgs...); err != nil {
		return problem.Wrap(problem.Unavailable, "publishing feed-read audit records", err)
	}
	return nil
}

// readSettlement is what the patient index is told of an entry served
// withheld to recipient: the copy of the event (its source as published,
// which the feed entry keeps as Publisher, and its id), withheld by the
// re-check's rule. The index names the copy by both, so another
// publisher's event with the same id stays received.
func readSettlement(recipient string, e connector.FeedReadEntry) route.Settlement {
	return route.Settlement{Key: e.PatientRef, Recipient: recipient, Source: e.Publisher, EventID: e.EventID, Rule: e.Rule}
}

// pullFeeds returns the recipients whose feeds this process keeps: the
// retention sweep removes what each has acknowledged (hub/retention).
func (h *hub) pullFeeds() []string {
	if h.fleet == nil {
		return nil
	}
	h.fleet.mu.Lock()
	defer h.fleet.mu.Unlock()
	out := make([]string, 0, len(h.fleet.feeds))
	for ods := range h.fleet.feeds {
		out = append(out, ods)
	}
	return out
}

// feedTrimmed tells a feed the sweep removed some of its records, so that
// its Oldest moves at once rather than at its next StartRefresh.
func (h *hub) feedTrimmed(ods string) {
	if h.fleet == nil {
		return
	}
	h.fleet.mu.Lock()
	fl := h.fleet.feeds[ods]
	h.fleet.mu.Unlock()
	if fl == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), feedRefreshTimeout)
	defer cancel()
	if err := fl.Refresh(ctx); err != nil {
		h.log.Warn("reading a trimmed feed's start", zap.String("recipient", ods), logging.Err(err))
	}
}

// closeAll runs every close at once and returns when all have. A feed's
// Close waits for its tailer's kafka-go Reader to end the fetch it is in
// (up to the Reader's MaxWait): one after another, a hub with a hundred
// pull recipients took about 20 s to stop.
func closeAll(closers []func()) {
	var wg sync.WaitGroup
	for _, c := range closers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c()
		}()
	}
	wg.Wait()
}
