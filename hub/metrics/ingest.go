package metrics

import (
	"context"
	"encoding/json"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/problem"
)

// Ingest returns next counted as the input named input (its type in the
// configuration: cloudevents, mllp, fhir): every event accepted, retried
// (duplicate) or refused, and every message held or not recorded.
func (m *Metrics) Ingest(next connector.Ingest, input string) connector.Ingest {
	return &countedIngest{next: next, m: m, input: input}
}

// Refusals returns what the source of the input named input reports its
// own refusals to (connector.Env.Refusals).
func (m *Metrics) Refusals(input string) connector.Refusals {
	return connector.RefusalsFunc(func(_ context.Context, org string, kind problem.Kind) {
		m.refused.WithLabelValues(m.org(org), input, Unknown, kind.String()).Inc()
	})
}

type countedIngest struct {
	next  connector.Ingest
	m     *Metrics
	input string
}

func (c *countedIngest) count(org string, acc connector.Accepted, err error) {
	src, typ := c.m.org(org), typeLabel(acc.Type)
	switch {
	case err != nil:
		c.m.refused.WithLabelValues(src, c.input, typ, problem.KindOf(err).String()).Inc()
	case acc.Duplicate:
		c.m.duplicates.WithLabelValues(src, c.input, typ).Inc()
	default:
		c.m.accepted.WithLabelValues(src, c.input, typ).Inc()
	}
}

// Accept implements connector.Ingest.
func (c *countedIngest) Accept(ctx context.Context, org string, raw []byte) (connector.Accepted, error) {
	acc, err := c.next.Accept(ctx, org, raw)
	c.count(org, acc, err)
	return acc, err
}

// AcceptBatch implements connector.Ingest.
func (c *countedIngest) AcceptBatch(ctx context.Context, org string, raws []json.RawMessage) []connector.Result {
	res := c.next.AcceptBatch(ctx, org, raws)
	for _, r := range res {
		c.count(org, r.Accepted, r.Err)
	}
	return res
}

// Hold implements connector.Ingest. A message not recorded is refused (the
// source answers negatively and the sender resends).
func (c *countedIngest) Hold(ctx context.Context, org string, h connector.Held) error {
	err := c.next.Hold(ctx, org, h)
	if err != nil {
		c.m.refused.WithLabelValues(c.m.org(org), c.input, Unknown, problem.KindOf(err).String()).Inc()
		return err
	}
	reason := h.Reason
	if !c.m.reasons[reason] {
		reason = Other
	}
	c.m.held.WithLabelValues(c.m.org(org), c.input, reason).Inc()
	return nil
}
