package fhirin

import (
	"bytes"
	"context"
	"net/http"
	"strconv"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/fhir"
	"github.com/carehub/carehub/schemas/media"
)

// The conformance suite's probe: the connector runs on the hub's mux, and a
// sender POSTs one FHIR message (an admission) with its API key.

func probeConfig(string) connector.Config { return DefaultConfig() }

func probeDocument(org, id, nhsNumber string) []byte {
	return []byte(`{"resourceType":"Bundle","type":"message","timestamp":"2026-11-24T10:00:00Z","entry":[` +
		`{"fullUrl":"urn:uuid:00000000-0000-4000-8000-000000000001","resource":{"resourceType":"MessageHeader","id":"` + id + `",` +
		`"eventCoding":{"system":"` + fhir.SystemEvent + `","code":"admission"},` +
		`"sender":{"identifier":{"system":"` + fhir.SystemODS + `","value":"` + org + `"}},"source":{"endpoint":"urn:ods:` + org + `"},` +
		`"focus":[{"reference":"urn:uuid:00000000-0000-4000-8000-000000000003"}]}},` +
		`{"fullUrl":"urn:uuid:00000000-0000-4000-8000-000000000002","resource":{"resourceType":"Patient",` +
		`"identifier":[{"system":"` + fhir.SystemNHSNumber + `","value":"` + nhsNumber + `"}]}},` +
		`{"fullUrl":"urn:uuid:00000000-0000-4000-8000-000000000003","resource":{"resourceType":"Encounter","status":"in-progress",` +
		`"identifier":[{"system":"` + fhir.SystemEncounterID + `","value":"ENC-PROBE"}],"class":{"system":"` + fhir.SystemActCode + `","code":"IMP"},` +
		`"subject":{"reference":"urn:uuid:00000000-0000-4000-8000-000000000002"}}}]}`)
}

func probeSend(ctx context.Context, _ connector.Source, httpBase, key string, doc []byte) (connector.Answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, httpBase+RouteProcessMessage, bytes.NewReader(doc))
	if err != nil {
		return connector.Answer{}, err
	}
	req.Header.Set("Content-Type", media.FHIR)
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
