package cloudevents

import (
	"bytes"
	"context"
	"net/http"
	"strconv"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/media"
)

// The conformance suite's probe: the connector runs on the hub's mux, and a
// sender POSTs one structured-mode event with its API key.

func probeConfig(string) connector.Config { return DefaultConfig() }

func probeDocument(org, id, nhsNumber string) []byte {
	return []byte(`{"specversion":"1.0","id":"` + id + `","source":"urn:ods:` + org + `","type":"org.carehub.discharge.v1",` +
		`"time":"2026-11-24T10:00:00Z","data":{"patient":{"nhsNumber":"` + nhsNumber + `"}}}`)
}

func probeSend(ctx context.Context, _ connector.Source, httpBase, key string, doc []byte) (connector.Answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, httpBase+"/v1/events", bytes.NewReader(doc))
	if err != nil {
		return connector.Answer{}, err
	}
	req.Header.Set("Content-Type", media.CloudEvent)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return connector.Answer{}, err
	}
	resp.Body.Close()
	return connector.Answer{Positive: resp.StatusCode == http.StatusAccepted, Detail: strconv.Itoa(resp.StatusCode)}, nil
}
