package main

import (
	"context"
	"flag"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/hub"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/internal/logging"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "deploy/examples/carehub.yaml", "configuration file")
	dataDir := fs.String("data-dir", "", "where the embedded broker keeps its data (overrides dataDir)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath, all.Registry())
	if err != nil {
		return err
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	log, err := logging.New(*level)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	return hub.Run(ctx, cfg, log, hub.Options{Reload: notifyReload(ctx)})
}

// notifyReload turns SIGHUP into reload requests until ctx ends. Signals
// that arrive while a reload is pending are merged into it.
func notifyReload(ctx context.Context) <-chan struct{} {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	out := make(chan struct{}, 1)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}
