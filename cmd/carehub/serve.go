package main

import (
	"context"
	"flag"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/hub"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/internal/logging"
	"go.uber.org/zap"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "deploy/examples/carehub.yaml", "configuration file")
	dataDir := fs.String("data-dir", "", "where the embedded broker keeps its data (overrides dataDir)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	stopLimit := fs.Duration("stop-timeout", 60*time.Second, "after SIGTERM, the longest the drain may take before the process exits anyway")
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
	// However the drain goes, the process ends within stopLimit of the
	// signal: what the hub acknowledged is durable, and whatever is still
	// in flight was never acknowledged, so exiting is as safe as a crash.
	defer watchdog(ctx, *stopLimit, func() {
		log.Error("the drain did not finish in time: exiting", zap.Duration("stop_timeout", *stopLimit))
		_ = log.Sync()
		os.Exit(3)
	})()
	return hub.Run(ctx, cfg, log, hub.Options{Reload: notifyReload(ctx)})
}

// watchdog calls expire once limit has passed after ctx ended, unless the
// returned function is called first (when the drain finished).
func watchdog(ctx context.Context, limit time.Duration, expire func()) (cancel func()) {
	var mu sync.Mutex
	var timer *time.Timer
	done := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			timer = time.AfterFunc(limit, expire)
		}
	})
	return func() {
		stop()
		mu.Lock()
		defer mu.Unlock()
		done = true
		if timer != nil {
			timer.Stop()
		}
	}
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
