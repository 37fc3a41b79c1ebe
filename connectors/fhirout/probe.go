package fhirout

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/schemas/media"
)

// probeToken is the bearer token the conformance suite's receiver expects.
const probeToken = "conformance-fhir-token"

// probeReceiver is the conformance suite's receiver: a FHIR endpoint on
// loopback that takes $process-message with the right token and a message
// Bundle, then answers as told (200 with a response, 503, or 422 with an
// OperationOutcome).
func probeReceiver(behave func() connector.Behaviour, got func([]byte)) (connector.Config, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		var b struct{ ResourceType, Type string }
		if r.URL.Path != "/fhir/$process-message" || r.Header.Get("Authorization") != "Bearer "+probeToken ||
			json.Unmarshal(body, &b) != nil || b.ResourceType != "Bundle" || b.Type != "message" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", media.FHIR)
		switch behave() {
		case connector.Accept:
			got(body)
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"resourceType":"Bundle","type":"message"}`))
		case connector.Transient:
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"refused by the probe"}]}`))
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	cfg := DefaultConfig()
	cfg.URL = "http://" + ln.Addr().String() + "/fhir"
	cfg.Token = connector.SecretValue(probeToken)
	return cfg, func() { _ = srv.Close() }, nil
}
