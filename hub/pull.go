package hub

import (
	"context"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
)

// What the hub gives pull sinks (connector.SinkEnv's pull fields) besides
// their feeds: the consent re-check at read time and the audit of reads.

// recheckRule is the rule of a re-check that finds no subscription of the
// recipient matching the event any more.
const recheckNoSubscription = "no-matching-subscription"

// recheck implements connector.ConsentCheck with the router's own decision
// (route.Router.Decide): the event is decided again for every candidate,
// after catching up with every consent change acknowledged before the call,
// and the recipient's verdict is the one that would produce its copy now.
// A notification-only obligation gives the event without its documents.
//
// Issue 11 brings a delivery-time re-check into hub/deliver; this is the
// same decision, taken when a pull recipient reads.
func (h *hub) recheck(ctx context.Context, d connector.Delivery) (connector.Recheck, error) {
	if h.router == nil {
		return connector.Recheck{}, problem.New(problem.Unavailable, "the router has not started")
	}
	ev, err := event.Unmarshal(d.Body)
	if err != nil {
		return connector.Recheck{}, problem.Wrap(problem.Internal, "decoding a feed entry", err)
	}
	verdicts, err := h.router.Decide(ctx, ev, d.PatientRef)
	if err != nil {
		return connector.Recheck{}, err
	}
	rule := recheckNoSubscription
	for _, v := range verdicts {
		if v.Subscription.Recipient.ODS != d.Recipient {
			continue
		}
		rule = v.Decision.Rule
		if !v.Copy {
			continue
		}
		body := d.Body
		if v.Decision.Has(consent.NotificationOnly) {
			if body, err = ev.NotificationOnly(); err != nil {
				return connector.Recheck{}, problem.Wrap(problem.Internal, "removing documents for a notification-only read", err)
			}
		}
		return connector.Recheck{Permitted: true, Rule: v.Decision.Rule, Body: body}, nil
	}
	return connector.Recheck{Rule: rule}, nil
}

// auditRead implements connector.ReadAudit: one feed-read record per
// number served, keyed by the patient's pseudonym, made durable before the
// reader is answered.
func (h *hub) auditRead(_ context.Context, r connector.FeedRead) error {
	if h.pub == nil {
		return problem.New(problem.Unavailable, "the publisher has not started")
	}
	msgs := make([]*message.Message, 0, len(r.Entries))
	now := h.now().UTC()
	for _, e := range r.Entries {
		rec := audit.Record{Time: now, Kind: audit.KindFeedRead, EventID: e.EventID, EventType: e.EventType,
			Patient: e.PatientRef, Recipient: r.Recipient, Outcome: audit.Read, Rule: e.Rule, Number: e.Number, Via: r.Via}
		if e.Withheld {
			rec.Outcome = audit.Withheld
		}
		m := message.NewMessage(watermill.NewUUID(), rec.Marshal())
		m.Metadata.Set(topic.MetaKey, e.PatientRef)
		m.Metadata.Set(topic.MetaEventID, e.EventID)
		msgs = append(msgs, m)
	}
	if err := h.pub.Publish(topic.Audit, msgs...); err != nil {
		return problem.Wrap(problem.Unavailable, "publishing feed-read audit records", err)
	}
	return nil
}

// startFeeds follows every pull recipient's feed and waits until each has
// read its topic: nothing is appended or served before.
func (h *hub) startFeeds(ctx context.Context) error {
	if len(h.parts.feeds) > 0 {
		closers := make([]func(), 0, len(h.parts.feeds))
		for _, f := range h.parts.feeds {
			closers = append(closers, f.Close)
		}
		h.onStop("feeds", func() { closeAll(closers) })
	}
	for _, f := range h.parts.feeds {
		f.Start(h.brokers)
	}
	for ods, f := range h.parts.feeds {
		if err := f.WaitLoaded(ctx); err != nil {
			return fmt.Errorf("loading the feed of %s: %w", ods, err)
		}
	}
	return nil
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
