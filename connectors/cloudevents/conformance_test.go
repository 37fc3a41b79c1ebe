package cloudevents_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/carehub/carehub/connectors/cloudevents"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/connectortest"
	"github.com/carehub/carehub/hub/auth"
	"go.uber.org/zap"
)

type client struct{ url string }

func (c client) send(ctx context.Context, doc []byte, key string) (connectortest.Answer, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/v1/events", bytes.NewReader(doc))
	req.Header.Set("Content-Type", cloudevents.MediaEvent)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return connectortest.Answer{}, err
	}
	resp.Body.Close()
	return connectortest.Answer{Positive: resp.StatusCode == http.StatusAccepted, Detail: strconv.Itoa(resp.StatusCode)}, nil
}

func (c client) Send(ctx context.Context, doc []byte) (connectortest.Answer, error) {
	return c.send(ctx, doc, "conformance-key")
}

func (c client) SendUnauthenticated(ctx context.Context, doc []byte) (connectortest.Answer, error) {
	return c.send(ctx, doc, "")
}

func TestConformance(t *testing.T) {
	connectortest.RunSource(t, connectortest.SourceHarness{
		Start: func(t *testing.T, in connector.Ingest, org string) connectortest.SourceClient {
			keys, err := auth.New(map[string]string{"conformance-key": org})
			if err != nil {
				t.Fatal(err)
			}
			src, err := cloudevents.New(cloudevents.Config{})
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			if err := src.Register(connector.Env{Ingest: in, Auth: keys, Mux: mux, Log: zap.NewNop()}); err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			return client{url: srv.URL}
		},
		Document: func(id string) []byte {
			return []byte(`{"specversion":"1.0","id":"` + id + `","source":"urn:ods:RX1","type":"org.carehub.discharge.v1",` +
				`"time":"2026-11-24T10:00:00Z","data":{"patient":{"nhsNumber":"` + connectortest.Canary + `"}}}`)
		},
	})
}
