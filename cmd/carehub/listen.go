package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/carehub/carehub/connectors/webhook"
)

// listen is a recipient for trying things out, as "stripe listen" is: it
// verifies each delivery's signature and prints one line per delivery with
// the event id, type and the patient's pseudonym, never the NHS number.
func listen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("listen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9102", "address to listen on")
	secret := fs.String("secret", "", "the recipient's webhook secret as configured in the hub: whsec_ and base64 (Standard Webhooks)")
	path := fs.String("path", "/events", "the path deliveries are posted to")
	tolerance := fs.Duration("tolerance", 5*time.Minute, "accepted distance of webhook-timestamp from now")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *secret == "" {
		return errors.New("listen: --secret is required")
	}
	key, err := webhook.DecodeSecret(*secret)
	if err != nil {
		return fmt.Errorf("listen: --secret: %w", err)
	}
	var mu sync.Mutex
	printf := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, format, a...)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+*path, func(w http.ResponseWriter, r *http.Request) {
		body, err := webhook.Body(r, 16<<20)
		if err != nil {
			http.Error(w, "reading body", http.StatusBadRequest)
			return
		}
		now := time.Now()
		if err := webhook.Verify(key, r.Header, body, now, *tolerance); err != nil {
			printf("%s REJECTED id=%s reason=%q\n", now.Format(time.RFC3339), r.Header.Get(webhook.HeaderID), err.Error())
			http.Error(w, "signature verification failed", http.StatusUnauthorized)
			return
		}
		var ce struct {
			ID   string `json:"id"`
			Type string `json:"type"`
		}
		_ = json.Unmarshal(body, &ce)
		printf("%s delivered id=%s type=%s patient=%s bytes=%d\n", now.Format(time.RFC3339),
			ce.ID, ce.Type, r.Header.Get(webhook.HeaderPatient), len(body))
		w.WriteHeader(http.StatusNoContent)
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	printf("listening on http://%s%s\n", ln.Addr(), *path)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	case err := <-errc:
		return err
	}
}
