package mllp

import (
	"bytes"
	"context"
	"net"
	"testing"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/connectortest"
	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"go.uber.org/zap"
)

// conformanceClient sends one message per connection and reads MSA-1.
type conformanceClient struct{ addr string }

func (c conformanceClient) send(ctx context.Context, doc []byte) (connectortest.Answer, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return connectortest.Answer{}, err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if err := frame.WriteFrame(nc, doc); err != nil {
		return connectortest.Answer{}, err
	}
	b, err := frame.NewReader(nc, frame.ReaderOptions{}).ReadFrame()
	if err != nil {
		return connectortest.Answer{}, err
	}
	m, err := hl7.Parse(b)
	if err != nil {
		return connectortest.Answer{}, err
	}
	code := m.Segment("MSA").Field(1).String()
	return connectortest.Answer{Positive: code == "AA", Detail: code}, nil
}

func (c conformanceClient) Send(ctx context.Context, doc []byte) (connectortest.Answer, error) {
	return c.send(ctx, doc)
}

// SendUnauthenticated sends as another organisation (MSH-4 RX9).
func (c conformanceClient) SendUnauthenticated(ctx context.Context, doc []byte) (connectortest.Answer, error) {
	return c.send(ctx, bytes.Replace(doc, []byte("|PAS|RX1|"), []byte("|PAS|RX9|"), 1))
}

func TestConformance(t *testing.T) {
	connectortest.RunSource(t, connectortest.SourceHarness{
		Start: func(t *testing.T, in connector.Ingest, org string) connectortest.SourceClient {
			src, err := New(Config{Addr: "127.0.0.1:0", Source: org})
			if err != nil {
				t.Fatal(err)
			}
			env := connector.Env{Ingest: in, Log: zap.NewNop()}
			if err := src.Register(env); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- src.Run(ctx, env) }()
			t.Cleanup(func() { cancel(); <-done })
			return conformanceClient{addr: src.Addr().String()}
		},
		Document: func(id string) []byte { return adtMessage("A01", id, connectortest.Canary) },
	})
}
