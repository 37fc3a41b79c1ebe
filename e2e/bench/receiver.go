package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/schemas/event"
)

// receivers serve every synthetic recipient's webhook: POST /r/<ODS>. Each
// request is read in full and its Standard Webhooks signature verified with
// that recipient's secret; a verified delivery is answered 204 and recorded
// in the current phase's tracker, anything else 401 or 404.
//
// Recipients that are "down" have their own listener that is closed (the
// hub gets connection refused) until bring-up.
type receivers struct {
	main    net.Listener
	srv     *http.Server
	addr    string
	mu      sync.Mutex
	pop     *Population
	current atomic.Pointer[tracker]
	extra   map[string]*downable // by ODS

	requests atomic.Int64
	rejected atomic.Int64
}

// downable is a recipient endpoint on its own address, started late or never.
type downable struct {
	addr string
	ln   net.Listener
	srv  *http.Server
}

func startReceivers(addr string) (*receivers, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("bench: receivers: %w", err)
	}
	r := &receivers{main: ln, addr: ln.Addr().String(), extra: map[string]*downable{}}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// use installs a population: its recipients' URLs point at these receivers.
// A recipient marked Down gets an address of its own that refuses
// connections until bringUp; downAddr, when set, is that address (target
// mode, where the hub's configuration is written before the bench starts).
func (r *receivers) use(pop *Population, downAddr string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeExtraLocked()
	r.pop = pop
	for i := range pop.Recipients {
		rc := &pop.Recipients[i]
		if !rc.Down {
			rc.URL = "http://" + r.addr + "/r/" + rc.ODS
			continue
		}
		a := downAddr
		if a == "" {
			// Reserve a free port, then release it: connections to it are
			// refused until bringUp listens on it again.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return fmt.Errorf("bench: reserving a port: %w", err)
			}
			a = ln.Addr().String()
			ln.Close()
		}
		r.extra[rc.ODS] = &downable{addr: a}
		rc.URL = "http://" + a + "/r/" + rc.ODS
	}
	return nil
}

// bringUp starts serving a down recipient on its own address.
func (r *receivers) bringUp(ods string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.extra[ods]
	if d == nil {
		return fmt.Errorf("bench: recipient %s is not a down recipient", ods)
	}
	if d.ln != nil {
		return nil
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port may linger briefly
		if ln, err = net.Listen("tcp", d.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("bench: bringing recipient %s up: %w", ods, err)
	}
	d.ln = ln
	d.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = d.srv.Serve(ln) }()
	return nil
}

func (r *receivers) closeExtraLocked() {
	for k, d := range r.extra {
		if d.srv != nil {
			_ = d.srv.Close()
		}
		delete(r.extra, k)
	}
}

func (r *receivers) close() {
	r.mu.Lock()
	r.closeExtraLocked()
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		_ = r.srv.Close()
	}
}

func (r *receivers) lookup(ods string) (int, *Recipient) {
	r.mu.Lock()
	pop := r.pop
	r.mu.Unlock()
	if pop == nil {
		return -1, nil
	}
	i, ok := pop.byODS[ods]
	if !ok {
		return -1, nil
	}
	return i, &pop.Recipients[i]
}

var errBadPath = errors.New("unknown recipient")

// ServeHTTP is every recipient's endpoint.
func (r *receivers) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.requests.Add(1)
	ods, ok := strings.CutPrefix(req.URL.Path, "/r/")
	if req.Method != http.MethodPost || !ok {
		r.rejected.Add(1)
		http.Error(w, errBadPath.Error(), http.StatusNotFound)
		return
	}
	idx, rc := r.lookup(ods)
	if rc == nil {
		r.rejected.Add(1)
		http.Error(w, errBadPath.Error(), http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	t := r.current.Load()
	if err := webhook.Verify(rc.key, req.Header, body, time.Now(), 5*time.Minute); err != nil {
		r.rejected.Add(1)
		if t != nil {
			t.badSignatures.Add(1)
		}
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if t != nil {
		// The event id is the ce-id header (webhook-id is a UUID of the
		// event's source and id, the same for every delivery of it).
		id, _ := event.DecodeHeaderValue(req.Header.Get(webhook.HeaderEventID))
		t.markDelivered(id, idx)
	}
	w.WriteHeader(http.StatusNoContent)
}
