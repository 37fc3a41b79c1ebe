package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/e2e/bench"
)

// benchExit ends the process with status 1 when a run lost events (status
// 2, from main, means the run could not be made). Tests replace it.
var benchExit = os.Exit

const benchUsage = `carehub bench: measure throughput, latency and scale against the raw broker.

Starts a hub on the embedded broker (as a separate process: this binary's
"serve"), synthetic recipients that verify signatures, and a synthetic
population (NHS numbers from the 999 test range); publishes (CloudEvents
batches or single events, HL7 v2 over MLLP, FHIR R4 messages); and measures
the same load on a plain kafka-go produce, consume and HTTP POST path against
the same broker, in the same run. The feed and longpoll scenarios deliver to
pull recipients whose clients read their feeds, and compare reading a feed
with consuming its topic raw with kafka-go. Prints a table; --out writes
JSON. Exits 1 only if accepted events were lost.

  carehub bench --suite --out bench.json              every scenario
  carehub bench --scenario latency --duration 10s     one scenario (or several: feed,longpoll)
  carehub bench --scenario fanout --print-config      the hub configuration, for --target
                                                      (fanout also writes the patient lists it names)

Flags:
`

func benchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fs.PrintDefaults()
	}
	var o bench.Options
	scenario := fs.String("scenario", bench.Throughput, "scenarios, comma-separated: "+strings.Join(bench.Scenarios(), ", "))
	suite := fs.Bool("suite", false, "run every scenario")
	fs.DurationVar(&o.Duration, "duration", 0, "publishing time of each phase (default 20s)")
	rate := fs.String("rate", "", `events per second, or "max" (default: 500 for latency, isolation and longpoll, max otherwise)`)
	ingest := fs.String("ingest", "", "ingest paths, one row each: batch, single, mllp, fhir (default: all four for throughput and latency; batch, single, mllp for fanout and isolation; batch for backlog, feed, longpoll)")
	out := fs.String("out", "", "write the report as JSON to this file")
	fs.IntVar(&o.BatchSize, "batch-size", 0, "events per batch request (default 100)")
	fs.IntVar(&o.Publishers, "publishers", 0, "concurrent publishing requests or MLLP connections (default 4 for batches, 32 or 64 for single requests and MLLP)")
	fs.IntVar(&o.Patients, "patients", 0, "synthetic patients (default 10000)")
	fs.IntVar(&o.GPPractices, "gp-practices", 0, "GP practices (default 20)")
	fs.IntVar(&o.CareHomes, "care-homes", 0, "care homes (default 10)")
	fs.IntVar(&o.FanoutRecipients, "recipients", 0, "recipients of the fanout scenario (default 1000)")
	fs.IntVar(&o.Partitions, "partitions", 0, "partitions of every topic (default 6)")
	fs.IntVar(&o.FanoutPartitions, "fanout-partitions", 0, "partitions of every topic in the fanout scenario (default 2)")
	fs.IntVar(&o.BacklogEvents, "backlog", 0, "events queued for the down recipient in the backlog scenario (default 100000)")
	fs.IntVar(&o.FeedClients, "feed-clients", 0, "pull recipients of the longpoll scenario, one long-polling client on each feed (default 100)")
	fs.IntVar(&o.FeedLimit, "feed-limit", 0, "page limit of every feed request, at most 1000 (default 1000)")
	fs.DurationVar(&o.FeedWait, "feed-wait", 0, "long-poll wait of the feed clients' requests, at most 60s (default 30s)")
	fs.IntVar(&o.MaxInFlight, "max-in-flight", 0, "at most this many events published but not yet delivered, when publishing as fast as possible (default 2000)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 0, "after publishing, give up when no delivery arrived for this long (default 60s)")
	fs.DurationVar(&o.StartTimeout, "start-timeout", 0, "bound on a hub's start and warm-up (default 5m)")
	hubBinary := fs.String("hub-binary", "", "the carehub binary to run the hub with (default: this executable)")
	fs.BoolVar(&o.InProcess, "in-process", false, "run the hub inside this process (fallback: CPU and RSS then include the load generator)")
	fs.StringVar(&o.HubLogLevel, "hub-log-level", "info", "the hub's log level")
	fs.StringVar(&o.Target, "target", "", "measure a running hub at this URL instead (its configuration from --print-config)")
	fs.StringVar(&o.TargetKey, "target-key", "", "the source API key for --target (default: the generated configuration's)")
	fs.IntVar(&o.TargetPID, "target-pid", 0, "the --target hub's process id, for CPU and RSS")
	fs.StringVar(&o.TargetMLLP, "target-mllp", "", "the --target hub's MLLP listener, for the mllp rows (default 127.0.0.1:2575)")
	brokers := fs.String("brokers", "", "the --target hub's Kafka bootstrap servers, comma-separated, for the reference path")
	fs.StringVar(&o.ReceiverAddr, "receiver-addr", "", "where the synthetic recipients listen (default: a free port; 127.0.0.1:9300 with --target)")
	fs.BoolVar(&o.NoReference, "no-reference", false, "skip the reference path")
	fs.StringVar(&o.WorkDir, "work-dir", "", "keep each hub's configuration, data and log here (default: a temporary directory)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temporary work directory")
	printConfig := fs.Bool("print-config", false, "print the hub configuration of --scenario (for --target) and exit")
	fs.StringVar(&o.ListsDir, "lists-dir", "", "with --print-config: where to write the community teams' patient lists (default bench-lists)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (with --in-process it includes the hub)")
	memProfile := fs.String("memprofile", "", "write a heap profile of this process after each row's hub phase, to FILE.<row> (with --in-process it includes the hub)")
	blockProfile := fs.String("blockprofile", "", "write a profile of where goroutines waited (with --in-process it includes the hub)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench: unexpected arguments %q", fs.Args())
	}
	if *suite {
		o.Scenarios = bench.Scenarios()
	} else {
		o.Scenarios = splitList(*scenario)
	}
	switch r := strings.TrimSpace(*rate); r {
	case "":
	case "max":
		o.Rate = -1
	default:
		v, err := strconv.ParseFloat(r, 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("bench: --rate %q: a positive number of events per second, or max", r)
		}
		o.Rate = v
	}
	o.Ingest = splitList(*ingest)
	o.Brokers = splitList(*brokers)
	if !*quiet {
		o.Progress = stderr
	}

	if *printConfig {
		hubAddr := "127.0.0.1:8080"
		if o.Target != "" {
			u, err := url.Parse(o.Target)
			if err != nil || u.Host == "" {
				return fmt.Errorf("bench: --target %q: a base URL such as http://127.0.0.1:8080 is required", o.Target)
			}
			hubAddr = u.Host
		}
		b, err := bench.ScenarioConfig(o, *scenario, hubAddr)
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}

	if o.Target == "" && !o.InProcess {
		exe := *hubBinary
		if exe == "" {
			var err error
			if exe, err = os.Executable(); err != nil {
				return fmt.Errorf("bench: finding this executable to run the hub (or use --hub-binary or --in-process): %w", err)
			}
		}
		o.HubCommand = []string{exe, "serve"}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	if *memProfile != "" {
		o.AfterHubPhase = func(row string) {
			name := *memProfile + "." + strings.ReplaceAll(row, "/", "-")
			if f, err := os.Create(name); err == nil {
				runtime.GC()
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}
	if *blockProfile != "" {
		runtime.SetBlockProfileRate(int(time.Millisecond / 10))
		defer func() {
			if f, err := os.Create(*blockProfile); err == nil {
				_ = pprof.Lookup("block").WriteTo(f, 0)
				f.Close()
			}
		}()
	}

	rep, err := bench.Run(ctx, o)
	if rep != nil && len(rep.Scenarios) > 0 {
		rep.Command = "carehub bench " + strings.Join(args, " ")
		fmt.Fprintln(stdout)
		if werr := rep.WriteTable(stdout); werr != nil {
			return werr
		}
		if *out != "" {
			f, ferr := os.Create(*out)
			if ferr != nil {
				return ferr
			}
			werr := rep.WriteJSON(f)
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				return werr
			}
		}
	}
	if errors.Is(err, bench.ErrLost) {
		fmt.Fprintf(stderr, "carehub bench: %d accepted events were not delivered to every recipient: the run broke\n", rep.Lost)
		pprof.StopCPUProfile()
		benchExit(1)
	}
	return err
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
