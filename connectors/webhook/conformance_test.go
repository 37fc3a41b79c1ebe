package webhook_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/connector/connectortest"
	"github.com/carehub/carehub/connectors/webhook"
	"go.uber.org/zap"
)

type conformanceReceiver struct {
	mu  sync.Mutex
	b   connectortest.Behaviour
	got [][]byte
}

func (r *conformanceReceiver) Behave(b connectortest.Behaviour) { r.mu.Lock(); r.b = b; r.mu.Unlock() }
func (r *conformanceReceiver) Received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.got...)
}

func (r *conformanceReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	b := r.b
	if b == connectortest.Accept {
		r.got = append(r.got, body)
	}
	r.mu.Unlock()
	switch b {
	case connectortest.Accept:
		w.WriteHeader(http.StatusNoContent)
	case connectortest.Transient:
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		w.WriteHeader(http.StatusBadRequest)
	}
}

func TestConformance(t *testing.T) {
	connectortest.RunSink(t, connectortest.SinkHarness{
		Start: func(t *testing.T) (connector.Sink, connectortest.Receiver) {
			r := &conformanceReceiver{}
			srv := httptest.NewServer(r)
			t.Cleanup(srv.Close)
			s, err := webhook.New(webhook.Config{URL: srv.URL + "/events", Secret: "conformance-secret",
				MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond}, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			return s, r
		},
		Body: func(id string) []byte {
			return []byte(`{"id":"` + id + `","data":{"patient":{"nhsNumber":"` + connectortest.Canary + `"}}}`)
		},
	})
}
