package webhook

import (
	"io"
	"net"
	"net/http"
	"time"

	"github.com/carehub/carehub/connectors/connector"
)

// probeSecret signs the conformance suite's deliveries (Standard Webhooks
// form: whsec_ and base64).
const probeSecret = "whsec_Y29uZm9ybWFuY2Utc3VpdGUtc2VjcmV0"

// probeReceiver is the conformance suite's receiver: an HTTP endpoint on
// loopback that checks each delivery's signature, then answers as told
// (204, 503, or 400).
func probeReceiver(behave func() connector.Behaviour, got func([]byte)) (connector.Config, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	key, _ := DecodeSecret(probeSecret)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil || Verify(key, r.Header, body, time.Now(), 5*time.Minute) != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch behave() {
		case connector.Accept:
			got(body)
			w.WriteHeader(http.StatusNoContent)
		case connector.Transient:
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusBadRequest)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	cfg := DefaultConfig()
	cfg.URL = "http://" + ln.Addr().String() + "/events"
	cfg.Secret = connector.SecretValue(probeSecret)
	return cfg, func() { _ = srv.Close() }, nil
}
