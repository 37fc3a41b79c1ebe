// Command carehub runs the care-event hub and its operator tools.
//
//	carehub serve  --config FILE [--data-dir DIR]   run the hub
//	carehub listen --addr HOST:PORT --secret S       a recipient for trying things out
//	carehub consent put|get|delete|explain|disclosures   operate on consent directives
//	carehub replay --recipient ODS --since DATE      backfill a newly subscribed recipient
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `carehub: share care records as events.

Usage:
  carehub serve  --config FILE [--data-dir DIR] [--log-level info]
  carehub listen --addr 127.0.0.1:9102 --secret SECRET
  carehub bench  [--scenario NAME | --suite] [--duration 20s] [--rate N|max] [--out FILE]
  carehub consent put|get|delete|explain|disclosures ...
  carehub replay --recipient VM123 --since 2026-11-01 [--rate N]

Run "carehub COMMAND -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "carehub:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("a command is required")
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "listen":
		return listen(ctx, args[1:], stdout, stderr)
	case "bench":
		return benchCommand(ctx, args[1:], stdout, stderr)
	case "consent":
		return consentCmd(ctx, args[1:], stdout, stderr)
	case "replay":
		return replay(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
