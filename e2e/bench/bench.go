package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Scenario names.
const (
	Throughput = "throughput" // as fast as possible, 2 recipients per event
	Latency    = "latency"    // 500 events/s, p99 reported
	Fanout     = "fanout"     // 1,000 recipients subscribed, each event to 3 of them
	Isolation  = "isolation"  // as latency, with one recipient down for the whole run
	Backlog    = "backlog"    // one recipient down while events queue for it, then back: drain rate
	Feed       = "feed"       // one pull recipient, one client reading its feed as fast as it can
	Longpoll   = "longpoll"   // 100 pull recipients, a long-polling client on each feed, 500 events/s
)

// Scenarios lists every scenario in suite order.
func Scenarios() []string {
	return []string{Throughput, Latency, Fanout, Isolation, Backlog, Feed, Longpoll}
}

// isFeed reports whether a scenario's recipients are pull recipients read
// by feed clients.
func isFeed(scenario string) bool { return scenario == Feed || scenario == Longpoll }

// Options configure a run. Zero values take the defaults named.
type Options struct {
	// Scenarios to run, in order. Default: throughput.
	Scenarios []string
	// Ingest paths to run each scenario through, one row each (IngestBatch,
	// IngestSingle, IngestMLLP, IngestFHIR). Default: all four for
	// throughput and latency, which measure ingest; batch, single and MLLP
	// for fanout and isolation, which measure routing and delivery; batch
	// for backlog, feed and longpoll.
	Ingest []string
	// Duration of each phase's publishing. Default 20s.
	Duration time.Duration
	// Rate in events per second: 0 takes each scenario's own (500 for
	// latency and isolation, as fast as possible otherwise), a negative
	// value means as fast as possible everywhere.
	Rate float64
	// BatchSize is the events per batch request. Default 100.
	BatchSize int
	// Publishers is the number of concurrent publishing requests (MLLP:
	// connections). Default: 4 for batches, 32 for single requests and MLLP
	// (64 at a fixed rate).
	Publishers int
	// The synthetic population: patients (default 10,000), GP practices
	// (default 20) and care homes (default 10).
	Patients, GPPractices, CareHomes int
	// FanoutRecipients is the number of recipients of the fanout scenario
	// (default 1,000: half GP practices, half care homes).
	FanoutRecipients int
	// Partitions of every topic (hub and reference). Default 6, the hub's
	// default. FanoutPartitions is used instead by the fanout scenario,
	// whose 1,000 outboxes would otherwise hold 6,000 partitions. Default 2.
	Partitions, FanoutPartitions int
	// BacklogEvents is the number of events queued for the down recipient
	// in the backlog scenario. Default 100,000.
	BacklogEvents int
	// FeedClients is the number of pull recipients of the longpoll
	// scenario, each with one long-polling client on its own feed (default
	// 100). FeedLimit is the page limit of every feed request (default
	// 1000, the most a feed gives) and FeedWait the long-poll wait of the
	// live requests (default 30s).
	FeedClients int
	FeedLimit   int
	FeedWait    time.Duration
	// MaxInFlight bounds, when publishing as fast as possible, the events
	// published but not yet delivered everywhere (default 2,000): a run
	// then measures the sustained end-to-end rate instead of the size of a
	// growing backlog.
	MaxInFlight int
	// DrainTimeout: after publishing, wait for deliveries until none has
	// arrived for this long (default 60s); what is undelivered then is lost.
	DrainTimeout time.Duration
	// StartTimeout bounds a hub's start and warm-up. Default 5m.
	StartTimeout time.Duration

	// HubCommand is the command that runs a hub, to which
	// "--config FILE --log-level LEVEL" is appended; typically
	// {"/path/to/carehub", "serve"}. Required unless InProcess or Target.
	HubCommand []string
	// InProcess runs the hub inside this process (hub.Run) instead: the
	// fallback when no binary can be executed. CPU and RSS are then the
	// whole process's, load generator and receivers included.
	InProcess bool
	// HubLogLevel of the hub. Default info, what a deployment runs.
	HubLogLevel string

	// Target, when set, is the base URL of a running hub (for example
	// http://127.0.0.1:8080) to measure instead of starting one. Its
	// configuration must be ScenarioConfig's, for one scenario, with
	// ReceiverAddr reachable from the hub. TargetKey is the source API key
	// (default SourceAPIKey); TargetPID, when set, is the hub's process id
	// on this machine for CPU and RSS. Brokers are the hub's Kafka
	// bootstrap servers, for the reference path (none: no reference).
	Target    string
	TargetKey string
	TargetPID int
	Brokers   []string
	// TargetMLLP is the target hub's MLLP listener (host:port) for the MLLP
	// rows. Default 127.0.0.1:2575.
	TargetMLLP string
	// ReceiverAddr is where the synthetic recipients listen. Default: a free
	// loopback port; 127.0.0.1:9300 with Target. A down recipient listens on
	// the next port when Target is set.
	ReceiverAddr string
	// ListsDir is where ScenarioConfig writes the community teams' patient
	// lists (fanout), for a hub started by someone else. Default bench-lists.
	ListsDir string

	// NoReference skips the reference path.
	NoReference bool
	// WorkDir holds each hub's configuration, data and log. Default: a
	// temporary directory, removed afterwards unless Keep.
	WorkDir string
	Keep    bool
	// Progress receives a line per second while a phase runs. Nil: none.
	Progress io.Writer
	// AfterHubPhase, when set, is called with the row's name (for example
	// "throughput/batch") once the hub's measured phase has drained, while
	// the hub still runs: the moment to take a heap profile in process.
	AfterHubPhase func(row string)
}

func (o *Options) defaults() error {
	if len(o.Scenarios) == 0 {
		o.Scenarios = []string{Throughput}
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(Scenarios(), s) {
			return fmt.Errorf("bench: unknown scenario %q (one of %s)", s, strings.Join(Scenarios(), ", "))
		}
	}
	for _, in := range o.Ingest {
		if !slices.Contains(IngestPaths(), in) {
			return fmt.Errorf("bench: unknown ingest path %q (%s)", in, strings.Join(IngestPaths(), ", "))
		}
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if o.Duration <= 0 {
		o.Duration = 20 * time.Second
	}
	def(&o.BatchSize, 100)
	def(&o.Patients, 10000)
	def(&o.GPPractices, 20)
	def(&o.CareHomes, 10)
	def(&o.FanoutRecipients, 1000)
	def(&o.Partitions, 6)
	def(&o.FanoutPartitions, 2)
	def(&o.BacklogEvents, 100000)
	def(&o.FeedClients, 100)
	def(&o.FeedLimit, 1000)
	def(&o.MaxInFlight, 2000)
	if o.FeedWait <= 0 {
		o.FeedWait = 30 * time.Second
	}
	if o.FeedLimit > 1000 {
		return errors.New("bench: a feed gives at most 1000 events per request")
	}
	if o.FeedWait > time.Minute {
		return errors.New("bench: the feed wait is at most 60s (the generated configuration's maxWait)")
	}
	if slices.Contains(o.Scenarios, Longpoll) && o.FeedClients > o.Patients {
		return fmt.Errorf("bench: %d feed clients need at least as many patients (%d)", o.FeedClients, o.Patients)
	}
	if o.BatchSize > 1000 {
		return errors.New("bench: the hub accepts at most 1000 events per batch")
	}
	if o.FanoutRecipients < 3 {
		return errors.New("bench: the fanout scenario needs at least 3 recipients")
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 60 * time.Second
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 5 * time.Minute
	}
	if o.HubLogLevel == "" {
		o.HubLogLevel = "info"
	}
	if o.Target != "" {
		if len(o.Scenarios) != 1 {
			return errors.New("bench: with a target, run one scenario at a time (the hub's configuration is the scenario's)")
		}
		if o.ReceiverAddr == "" {
			o.ReceiverAddr = "127.0.0.1:9300"
		}
		if o.TargetKey == "" {
			o.TargetKey = SourceAPIKey
		}
		if o.TargetMLLP == "" {
			o.TargetMLLP = "127.0.0.1:2575"
		}
	} else if !o.InProcess && len(o.HubCommand) == 0 {
		return errors.New("bench: no hub command (HubCommand), InProcess or Target given")
	}
	return nil
}

// rowsFor returns the ingest paths a scenario is run through.
func (o *Options) rowsFor(scenario string) []string {
	if len(o.Ingest) > 0 {
		return o.Ingest
	}
	switch scenario {
	case Throughput, Latency:
		return IngestPaths()
	case Fanout, Isolation:
		return []string{IngestBatch, IngestSingle, IngestMLLP}
	}
	return []string{IngestBatch}
}

// rateFor is the publishing rate of a scenario (0: as fast as possible).
func (o *Options) rateFor(scenario string) float64 {
	switch {
	case o.Rate < 0:
		return 0
	case o.Rate > 0:
		return o.Rate
	case scenario == Latency || scenario == Isolation || scenario == Longpoll:
		return 500
	}
	return 0
}

func (o *Options) publishers(ingest string, rate float64) int {
	if o.Publishers > 0 {
		return o.Publishers
	}
	switch {
	case ingest == IngestBatch:
		return 4
	case rate > 0:
		return 64
	}
	return 32
}

func (o *Options) partitionsFor(scenario string) int {
	if scenario == Fanout {
		return o.FanoutPartitions
	}
	return o.Partitions
}

// population builds a scenario's recipients and patients. down is the index
// of the recipient that is down, or -1.
func (o *Options) population(scenario string) (pop *Population, down int, err error) {
	down = -1
	switch scenario {
	case Feed, Longpoll:
		// GP practices that read feeds, and no care home recipients:
		// each event goes to one feed.
		n := 1
		if scenario == Longpoll {
			n = o.FeedClients
		}
		if pop, err = NewPopulation(o.Patients, n, 0, 0); err == nil {
			pop.PullGPs()
		}
	case Fanout:
		// A third each of GP practices, care homes and community teams
		// with patient lists: every event goes to one of each.
		n := o.FanoutRecipients / 3
		pop, err = NewPopulation(o.Patients, n, n, o.FanoutRecipients-2*n)
	case Backlog:
		pop, err = NewPopulation(o.Patients, o.GPPractices, 1, 0)
		if err == nil {
			down = pop.GPs
			pop.fixedHome = down
		}
	default:
		pop, err = NewPopulation(o.Patients, o.GPPractices, o.CareHomes, 0)
		if err == nil && scenario == Isolation {
			down = pop.GPs // the first care home
		}
	}
	if err == nil && down >= 0 {
		pop.Recipients[down].Down = true
	}
	return pop, down, err
}

// downAddr is where a down recipient listens in target mode: the port after
// the receivers'.
func downAddr(recv string) (string, error) {
	host, port, err := net.SplitHostPort(recv)
	if err != nil {
		return "", fmt.Errorf("bench: receiver address %q: %w", recv, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p == 0 {
		return "", fmt.Errorf("bench: with a target, the receiver address needs a fixed port")
	}
	return net.JoinHostPort(host, strconv.Itoa(p+1)), nil
}

// ScenarioConfig returns the hub configuration a scenario runs against, for
// a hub started by someone else (Options.Target): the recipients' webhooks
// point at Options.ReceiverAddr (default 127.0.0.1:9300). The hub listens
// on hubAddr and uses Options.Brokers, or its embedded broker when none.
func ScenarioConfig(o Options, scenario, hubAddr string) ([]byte, error) {
	o.Scenarios = []string{scenario}
	if o.Target == "" {
		o.Target = "http://" + hubAddr
	}
	if err := o.defaults(); err != nil {
		return nil, err
	}
	pop, _, err := o.population(scenario)
	if err != nil {
		return nil, err
	}
	if o.ListsDir == "" {
		o.ListsDir = "bench-lists"
	}
	if err := pop.WriteLists(o.ListsDir); err != nil {
		return nil, fmt.Errorf("bench: writing patient lists: %w", err)
	}
	da, err := downAddr(o.ReceiverAddr)
	if err != nil {
		return nil, err
	}
	for i := range pop.Recipients {
		rc := &pop.Recipients[i]
		a := o.ReceiverAddr
		if rc.Down {
			a = da
		}
		if !rc.Pull {
			rc.URL = "http://" + a + "/r/" + rc.ODS
		}
	}
	hc := HubConfig{HTTPAddr: hubAddr, MLLPAddr: o.TargetMLLP, Brokers: o.Brokers, EmbeddedAddr: "127.0.0.1:9092", DataDir: "./bench-data",
		Partitions: o.partitionsFor(scenario), MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}
	return hc.YAML(pop), nil
}

// Result is one row: one scenario through one ingest path, on the hub and on
// the reference path, in the same run.
type Result struct {
	Scenario   string  `json:"scenario"`
	Ingest     string  `json:"ingest"`
	HubProcess string  `json:"hub_process"`
	Recipients int     `json:"recipients"`
	Fanout     int     `json:"fanout"` // recipients per event
	Partitions int     `json:"partitions"`
	Rate       float64 `json:"rate"` // target events/s; 0: as fast as possible
	BatchSize  int     `json:"batch_size"`
	Publishers int     `json:"publishers"`
	DurationS  float64 `json:"duration_s"` // time spent publishing
	StartupS   float64 `json:"startup_s"`  // start to /readyz 200
	WarmupS    float64 `json:"warmup_s"`   // ready to every warm-up event delivered

	HubEventsAccepted       int64   `json:"hub_events_accepted"`
	HubEventsPerS           float64 `json:"hub_events_per_s"`
	HubDeliveries           int64   `json:"hub_deliveries"`
	HubDeliveriesPerS       float64 `json:"hub_deliveries_per_s"`
	ReferenceEventsPerS     float64 `json:"reference_events_per_s"`
	ReferenceDeliveriesPerS float64 `json:"reference_deliveries_per_s"`
	// Ratio is hub_deliveries_per_s / reference_deliveries_per_s. In the
	// feed rows the reference is the raw consume rate of the feed topics,
	// and the ratio is feed.read_events_per_s / reference_deliveries_per_s:
	// reading the same records through the feed API against reading them
	// raw (hub_deliveries_per_s is the live rate, bounded by publishing).
	Ratio float64 `json:"ratio"`

	// Latency from the acknowledgement of an event (202) to its receipt by
	// a recipient (the receiver's 2xx), over every delivery of the phase.
	P50Ms          float64 `json:"p50_ms"`
	P90Ms          float64 `json:"p90_ms"`
	P99Ms          float64 `json:"p99_ms"`
	MaxMs          float64 `json:"max_ms"`
	ReferenceP50Ms float64 `json:"reference_p50_ms"`
	ReferenceP99Ms float64 `json:"reference_p99_ms"`

	// The hub process while measuring (zero when it cannot be read).
	CPUSeconds   float64 `json:"cpu_seconds"`
	CPUMsPer1k   float64 `json:"cpu_ms_per_1k_deliveries"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
	// Both sides of each path share the machine, so the comparable cost is
	// the CPU of everything that ran: for the hub, the hub process and the
	// bench process (load generator, receivers); for the reference, the
	// broker (in the hub process, idle otherwise) and the bench process
	// (producer, consumers, POSTs, receivers). Per 1,000 deliveries.
	BenchCPUSeconds     float64 `json:"bench_cpu_seconds"`
	TotalCPUMsPer1k     float64 `json:"total_cpu_ms_per_1k_deliveries"`
	ReferenceCPUSeconds float64 `json:"reference_cpu_seconds"`
	ReferenceCPUMsPer1k float64 `json:"reference_cpu_ms_per_1k_deliveries"`
	ReferenceDeliveries int64   `json:"reference_deliveries"`

	// Lost counts accepted events not delivered to every intended recipient
	// by the end of the drain. Missing counts the deliveries missing.
	Lost           int64  `json:"lost"`
	Missing        int64  `json:"missing_deliveries"`
	Refused        int64  `json:"refused"`
	Duplicates     int64  `json:"duplicates"`
	Misrouted      int64  `json:"misrouted"`
	BadSignatures  int64  `json:"bad_signatures"`
	ReferenceLost  int64  `json:"reference_lost"`
	ReferenceError string `json:"reference_error,omitempty"`

	Backlog *BacklogResult `json:"backlog,omitempty"`
	Feed    *FeedResult    `json:"feed,omitempty"`
	Notes   []string       `json:"notes,omitempty"`
}

// BacklogResult details the backlog scenario. The row's deliveries per
// second and ratio are the drain rates.
type BacklogResult struct {
	Events               int64   `json:"events"`
	QueueS               float64 `json:"queue_s"`  // publishing the backlog
	ResumeS              float64 `json:"resume_s"` // recipient back to its first delivery (retry backoff)
	DrainS               float64 `json:"drain_s"`  // first to last delivery of the backlog
	HubDrainPerS         float64 `json:"hub_drain_per_s"`
	ReferenceDrainPerS   float64 `json:"reference_drain_per_s"`
	OthersP99WhileDownMs float64 `json:"others_p99_while_down_ms"`
}

// Target is one of the targets for this machine, checked against a
// run. Missing one is reported, never an error.
type Target struct {
	Scenario string `json:"scenario"`
	Ingest   string `json:"ingest"`
	Name     string `json:"name"`
	Want     string `json:"want"`
	Got      string `json:"got"`
	Met      bool   `json:"met"`
}

// Report is a whole run.
type Report struct {
	Command   string    `json:"command,omitempty"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	GoVersion string    `json:"go_version"`
	OS        string    `json:"os"`
	Arch      string    `json:"arch"`
	CPUs      int       `json:"cpus"`
	Revision  string    `json:"revision,omitempty"`
	Scenarios []Result  `json:"scenarios"`
	Targets   []Target  `json:"targets"`
	// Lost is the sum of the rows' lost events: non-zero means the run broke.
	Lost int64 `json:"lost"`
}

// ErrLost is returned (with the report) when events were lost.
var ErrLost = errors.New("bench: accepted events were not delivered")

// Run runs the scenarios and returns the report. It returns an error when
// the run could not be made (a hub would not start) or, with the full
// report, ErrLost when accepted events were not delivered.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now().UTC(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rep.Revision = s.Value
			}
		}
	}
	work := o.WorkDir
	if work == "" {
		d, err := os.MkdirTemp("", "carehub-bench-")
		if err != nil {
			return nil, err
		}
		work = d
		if !o.Keep {
			defer os.RemoveAll(d)
		}
	} else if err := os.MkdirAll(work, 0o700); err != nil {
		return nil, err
	}
	recv, err := startReceivers(o.ReceiverAddr)
	if err != nil {
		return nil, err
	}
	defer recv.close()
	r := &runner{o: o, recv: recv, work: work, run: randomID()}
	if o.Keep || o.WorkDir != "" {
		r.progressf("hub configurations, data and logs: %s", work)
	}
	for _, sc := range o.Scenarios {
		for _, in := range o.rowsFor(sc) {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			res, err := r.row(ctx, sc, in)
			if err != nil {
				rep.Finished = time.Now().UTC()
				return rep, fmt.Errorf("bench: %s/%s: %w", sc, in, err)
			}
			rep.Scenarios = append(rep.Scenarios, *res)
			rep.Lost += res.Lost
		}
	}
	rep.Finished = time.Now().UTC()
	rep.Targets = targets(rep.Scenarios)
	if rep.Lost > 0 {
		return rep, ErrLost
	}
	return rep, nil
}

func randomID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type runner struct {
	o    Options
	recv *receivers
	work string
	run  string
	rows int
	// feeds are the current row's feed clients (feed rows only).
	feeds *feedClients
}

// use makes t the tracker that receivers and feed clients report to.
func (r *runner) use(t *tracker) {
	r.recv.current.Store(t)
	if r.feeds != nil {
		r.feeds.current.Store(t)
	}
}

func (r *runner) progressf(format string, a ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, format+"\n", a...)
	}
}

// startHub starts (or attaches to) the hub for a row.
func (r *runner) startHub(ctx context.Context, dir string, pop *Population, partitions int) (hubHandle, time.Duration, error) {
	o := r.o
	if o.Target != "" {
		u, err := url.Parse(o.Target)
		if err != nil || u.Host == "" {
			return nil, 0, fmt.Errorf("target %q: a base URL such as http://127.0.0.1:8080 is required", o.Target)
		}
		if err := waitReady(ctx, u.Host, 10*time.Second, nil); err != nil {
			return nil, 0, fmt.Errorf("target %s: %w", o.Target, err)
		}
		return &external{http: u.Host, mllp: o.TargetMLLP, brokers_: o.Brokers, pid: o.TargetPID}, 0, nil
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, 0, err
	}
	kafkaAddr, err := freeAddr()
	if err != nil {
		return nil, 0, err
	}
	mllpAddr, err := freeAddr()
	if err != nil {
		return nil, 0, err
	}
	if err := pop.WriteLists(filepath.Join(dir, "lists")); err != nil {
		return nil, 0, fmt.Errorf("writing patient lists: %w", err)
	}
	hc := HubConfig{HTTPAddr: httpAddr, MLLPAddr: mllpAddr, EmbeddedAddr: kafkaAddr, DataDir: filepath.Join(dir, "data"),
		Partitions: partitions, MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}
	yaml := hc.YAML(pop)
	cfgPath := filepath.Join(dir, "carehub.yaml")
	if err := os.WriteFile(cfgPath, yaml, 0o600); err != nil {
		return nil, 0, err
	}
	logPath := filepath.Join(dir, "hub.log")
	start := time.Now()
	var h hubHandle
	if o.InProcess {
		var ip *inProcess
		if ip, err = startInProcess(ctx, yaml, o.HubLogLevel, logPath, o.StartTimeout); err == nil {
			ip.mllp = mllpAddr
			h = ip
		}
	} else {
		var sp *subprocess
		if sp, err = startSubprocess(ctx, o.HubCommand, cfgPath, o.HubLogLevel, logPath, httpAddr, kafkaAddr, o.StartTimeout); err == nil {
			sp.mllp = mllpAddr
			h = sp
		}
	}
	return h, time.Since(start), err
}

// row runs one scenario through one ingest path: hub, then reference.
func (r *runner) row(ctx context.Context, sc, ingest string) (res *Result, err error) {
	o := r.o
	r.rows++
	rowID := fmt.Sprintf("%02d-%s-%s", r.rows, sc, ingest)
	label := sc + "/" + ingest
	dir := filepath.Join(r.work, rowID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	pop, down, err := o.population(sc)
	if err != nil {
		return nil, err
	}
	da := ""
	if o.Target != "" && down >= 0 {
		if da, err = downAddr(r.recv.addr); err != nil {
			return nil, err
		}
	}
	if err := r.recv.use(pop, da); err != nil {
		return nil, err
	}
	partitions := o.partitionsFor(sc)
	rate := o.rateFor(sc)
	res = &Result{Scenario: sc, Ingest: ingest, Recipients: len(pop.Recipients), Fanout: pop.Fanout(), Partitions: partitions,
		Rate: rate, BatchSize: 1, Publishers: o.publishers(ingest, rate)}
	if isFeed(sc) {
		res.Feed = &FeedResult{Limit: o.FeedLimit, WaitS: o.FeedWait.Seconds()}
	}
	if ingest == IngestBatch {
		res.BatchSize = o.BatchSize
	}

	r.progressf("[%s] starting the hub (%d recipients, %d partitions)", label, len(pop.Recipients), partitions)
	h, startup, err := r.startHub(ctx, dir, pop, partitions)
	if err != nil {
		return nil, err
	}
	defer func() {
		if e := h.stop(); e != nil && err == nil {
			res.Notes = append(res.Notes, "hub stop: "+firstLine(e.Error()))
		}
	}()
	res.HubProcess = h.kind()
	res.StartupS = startup.Seconds()

	// intended: who must receive in the measured phase (a recipient down
	// for the whole run is not expected to; the backlog's comes back).
	// upNow: who answers from the start.
	intended := make([]bool, len(pop.Recipients))
	upNow := make([]bool, len(pop.Recipients))
	for i, rc := range pop.Recipients {
		upNow[i] = !rc.Down
		intended[i] = !rc.Down || sc == Backlog
	}
	if res.Feed != nil {
		r.feeds = newFeedClients(h.httpAddr(), pop, o.FeedLimit, o.FeedWait)
		res.Feed.Clients = len(r.feeds.feeds)
		r.feeds.start(ctx)
		defer func() {
			r.feeds.stop()
			r.feeds = nil
		}()
	}
	var ing ingester
	var problem func() string
	switch ingest {
	case IngestMLLP:
		mi, err := newMLLPIngester(h.mllpAddr(), res.Publishers)
		if err != nil {
			return nil, err
		}
		defer mi.close()
		ing, problem = mi, mi.problem
		res.Notes = append(res.Notes, "mllp: the hub maps each ADT^A03 to a discharge without the inline summary (smaller than the HTTP rows' events); the reference produces the HTTP rows' events one at a time")
	default:
		var hi *httpIngester
		if ingest == IngestFHIR {
			hi = newFHIRIngester(h.httpAddr(), o.TargetKey)
			res.Notes = append(res.Notes, "fhir: one FHIR message Bundle per request (the same discharge, about 3.4 times the CloudEvent's size, built by the bench with the hub's own mapping); the reference produces the HTTP rows' events one at a time")
		} else {
			hi = newHTTPIngester(h.httpAddr(), o.TargetKey, ingest == IngestBatch)
		}
		if o.Target == "" {
			hi.key = SourceAPIKey
		}
		ing, problem = hi, hi.problem
	}

	// Warm-up: connections, consumer groups, every recipient once.
	r.progressf("[%s] hub ready in %.1fs; warming up", label, startup.Seconds())
	warm := newTracker(fmt.Sprintf("bench-%s-%s-w-", r.run, rowID), pop, upNow)
	wstart := time.Now()
	spec := loadSpec{duration: o.Duration, rate: rate, batch: res.BatchSize, publishers: res.Publishers}
	if err := r.warmup(ctx, warm, ing, len(pop.Recipients), spec); err != nil {
		return nil, fmt.Errorf("hub warm-up: %w (%s)", err, problem())
	}
	res.WarmupS = time.Since(wstart).Seconds()
	r.progressf("[%s] warm-up: every recipient reached in %.1fs", label, res.WarmupS)

	// The measured phase.
	cpu0, self0, statsOK := cpuNow(h)
	t := newTracker(fmt.Sprintf("bench-%s-%s-h-", r.run, rowID), pop, intended)
	r.use(t)
	if sc == Backlog {
		if err := r.backlogHub(ctx, label, res, t, ing, spec, pop, down); err != nil {
			return nil, err
		}
	} else {
		if rate <= 0 {
			spec.maxOutstanding = int64(o.MaxInFlight) * 2
			if res.Feed != nil {
				spec.maxOutstanding = int64(o.MaxInFlight) * int64(pop.Fanout())
			}
		}
		r.phase(ctx, label+" hub", t, ing, spec)
		out := t.collect(nil)
		r.fill(res, t, out, spec, false)
	}
	if p := problem(); p != "" {
		res.Notes = append(res.Notes, "hub ingest: "+p)
	}
	if o.AfterHubPhase != nil {
		o.AfterHubPhase(label)
	}
	if statsOK {
		cpu1, self1, _ := cpuNow(h)
		_, hwm, _ := h.stats()
		res.CPUSeconds = (cpu1 - cpu0).Seconds()
		res.BenchCPUSeconds = (self1 - self0).Seconds()
		res.PeakRSSBytes = hwm
		if res.HubDeliveries > 0 {
			res.CPUMsPer1k = res.CPUSeconds * 1e6 / float64(res.HubDeliveries)
			res.TotalCPUMsPer1k = (res.CPUSeconds + res.BenchCPUSeconds) * 1e6 / float64(res.HubDeliveries)
		}
	}
	if h.kind() == ProcessInProcess {
		res.Notes = append(res.Notes, "in-process hub: CPU and RSS include the load generator and receivers")
	}
	if res.Feed != nil {
		if rate > 0 {
			r.feedCapacity(ctx, label, rowID, res, h, pop, intended, ing, spec)
		}
		r.feeds.stop()
		if p := r.feeds.problem(); p != "" {
			res.Notes = append(res.Notes, "feed clients: "+p)
		}
		r.feedRead(ctx, label, res, h, pop)
		return res, nil
	}

	// The reference, against the same broker.
	switch {
	case o.NoReference:
	case len(h.brokers()) == 0:
		res.ReferenceError = "no broker address for the reference path"
	default:
		c0, s0, ok := cpuNow(h)
		if err := r.referenceRow(ctx, label, rowID, res, h.brokers(), pop, intended, down, spec, partitions); err != nil {
			res.ReferenceError = firstLine(err.Error())
		}
		if c1, s1, _ := cpuNow(h); ok {
			res.ReferenceCPUSeconds = (c1 - c0 + s1 - s0).Seconds()
			if res.ReferenceDeliveries > 0 {
				res.ReferenceCPUMsPer1k = res.ReferenceCPUSeconds * 1e6 / float64(res.ReferenceDeliveries)
			}
		}
	}
	if res.ReferenceDeliveriesPerS > 0 {
		res.Ratio = res.HubDeliveriesPerS / res.ReferenceDeliveriesPerS
	}
	r.progressf("[%s] done: hub %.0f deliveries/s, reference %.0f/s, ratio %.2f, p99 %.1f ms, lost %d",
		label, res.HubDeliveriesPerS, res.ReferenceDeliveriesPerS, res.Ratio, res.P99Ms, res.Lost)
	return res, nil
}

// feedCapacity follows a feed row's live phase at a fixed rate (the
// longpoll scenario's, for the wake-up latency of clients that wait) with
// a second live phase publishing as fast as possible (at most MaxInFlight
// events not yet received): the rate the clients can be served at.
func (r *runner) feedCapacity(ctx context.Context, label, rowID string, res *Result, h hubHandle, pop *Population, intended []bool, ing ingester, spec loadSpec) {
	f := res.Feed
	t := newTracker(fmt.Sprintf("bench-%s-%s-c-", r.run, rowID), pop, intended)
	r.use(t)
	spec.rate = 0
	spec.maxOutstanding = int64(r.o.MaxInFlight) * int64(pop.Fanout())
	c0, s0, ok := cpuNow(h)
	r.phase(ctx, label+" hub, as fast as possible", t, ing, spec)
	c1, s1, _ := cpuNow(h)
	out := t.collect(nil)
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	if out.lastDeliv > 0 {
		f.MaxEventsPerS = float64(out.delivered) / (float64(out.lastDeliv) / 1e9)
	}
	f.MaxDeliveries = out.delivered
	f.MaxP50Ms, f.MaxP99Ms = ms(percentile(out.latencies, 0.5)), ms(percentile(out.latencies, 0.99))
	if ok && out.delivered > 0 {
		f.MaxCPUMsPer1k = (c1 - c0).Seconds() * 1e6 / float64(out.delivered)
		f.MaxTotalCPUMsPer1k = (c1 - c0 + s1 - s0).Seconds() * 1e6 / float64(out.delivered)
	}
	res.Lost += out.lost
	res.Missing += out.missing
	res.Refused += out.refused
	res.Duplicates += out.duplicates
	res.Misrouted += out.misrouted
}

// feedRead follows a feed row's live phase: the clients read their whole
// feeds again from the start, as fast as they can, and then kafka-go reads
// the same topics raw (the reference), while the hub idles otherwise.
func (r *runner) feedRead(ctx context.Context, label string, res *Result, h hubHandle, pop *Population) {
	f, fc := res.Feed, r.feeds
	if _, hwm, ok := h.stats(); ok {
		f.LivePeakRSSBytes = hwm
	}
	r.progressf("[%s] %d clients read their feeds from the start", label, len(fc.feeds))
	c0, s0, ok := cpuNow(h)
	n, took, latest, err := fc.readAll(ctx)
	c1, s1, _ := cpuNow(h)
	f.ReadEvents, f.ReadS = n, took.Seconds()
	if took > 0 {
		f.ReadEventsPerS = float64(n) / took.Seconds()
	}
	if err != nil {
		f.ReadError = firstLine(err.Error())
	}
	if ok && n > 0 {
		f.ReadCPUMsPer1k = (c1 - c0 + s1 - s0).Seconds() * 1e6 / float64(n)
	}
	if _, hwm, ok := h.stats(); ok {
		res.PeakRSSBytes = hwm // the live phases' or the read's, whichever was higher
	}
	fc.fill(f)
	if f.Gaps+f.Repeats > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("feed numbers: %d missing, %d repeated: the feed's guarantee broke", f.Gaps, f.Repeats))
	}
	switch {
	case r.o.NoReference:
	case len(h.brokers()) == 0:
		res.ReferenceError = "no broker address for the raw consume"
	default:
		r.progressf("[%s] kafka-go reads the same %d feed topics raw", label, len(fc.feeds))
		c0, s0, ok := cpuNow(h)
		rn, rtook, err := rawConsume(ctx, h.brokers(), pop, fc.feeds, latest)
		c1, s1, _ := cpuNow(h)
		f.RawEvents, f.RawS = rn, rtook.Seconds()
		res.ReferenceDeliveries = rn
		if rtook > 0 {
			f.RawEventsPerS = float64(rn) / rtook.Seconds()
			res.ReferenceDeliveriesPerS = f.RawEventsPerS
		}
		if err != nil {
			res.ReferenceError = firstLine(err.Error())
		}
		if ok && rn > 0 {
			res.ReferenceCPUSeconds = (c1 - c0 + s1 - s0).Seconds()
			f.RawCPUMsPer1k = res.ReferenceCPUSeconds * 1e6 / float64(rn)
			res.ReferenceCPUMsPer1k = f.RawCPUMsPer1k
		}
		if f.RawEventsPerS > 0 {
			res.Ratio = f.ReadEventsPerS / f.RawEventsPerS
		}
	}
	r.progressf("[%s] done: live %.0f events/s to %d clients (p50 %.1f ms, p99 %.1f ms); read %.0f/s, raw %.0f/s, ratio %.2f; lost %d",
		label, res.HubDeliveriesPerS, f.Clients, res.P50Ms, res.P99Ms, f.ReadEventsPerS, f.RawEventsPerS, res.Ratio, res.Lost)
}

// warmup publishes enough events to reach every recipient, in the row's
// requests, and waits for their delivery.
func (r *runner) warmup(ctx context.Context, t *tracker, ing ingester, recipients int, spec loadSpec) error {
	r.use(t)
	n := int64(max(200, 2*recipients))
	drive(ctx, t, ing, loadSpec{count: n, batch: spec.batch, publishers: spec.publishers})
	if t.accepted.Load() == 0 {
		return errors.New("no warm-up event was accepted")
	}
	deadline := time.Now().Add(r.o.StartTimeout)
	for !t.done() {
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up deliveries incomplete after %s (%d of %d)", r.o.StartTimeout, t.delivered.Load(), t.expected.Load())
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// phase publishes per spec, then waits for the drain, printing progress.
func (r *runner) phase(ctx context.Context, label string, t *tracker, ing ingester, spec loadSpec) {
	stop := r.progress(label, t)
	defer stop()
	drive(ctx, t, ing, spec)
	r.drain(ctx, t, func() bool { return t.done() })
}

// drain waits until done or no delivery has arrived for DrainTimeout.
func (r *runner) drain(ctx context.Context, t *tracker, done func() bool) {
	last := t.delivered.Load()
	lastChange := time.Now()
	for !done() && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		if d := t.delivered.Load(); d != last {
			last, lastChange = d, time.Now()
		} else if time.Since(lastChange) > r.o.DrainTimeout {
			return
		}
	}
}

// progress prints a line a second until stopped.
func (r *runner) progress(label string, t *tracker) func() {
	if r.o.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var lastAcc, lastDel int64
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			acc, del := t.accepted.Load(), t.delivered.Load()
			r.progressf("[%s] %5.0fs  sent %d  accepted %d (%d/s)  delivered %d (%d/s)  outstanding %d",
				label, time.Since(t.start).Seconds(), t.sent.Load(), acc, acc-lastAcc, del, del-lastDel, t.outstanding())
			lastAcc, lastDel = acc, del
		}
	}()
	return func() { close(done); <-stopped }
}

// fill computes a phase's figures into res (the hub's, or the reference's).
func (r *runner) fill(res *Result, t *tracker, out outcome, spec loadSpec, reference bool) {
	secs := func(ns int64) float64 { return float64(ns) / 1e9 }
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	var evPerS, delPerS float64
	if out.lastAccept > 0 {
		evPerS = float64(out.accepted) / secs(out.lastAccept)
	}
	if out.lastDeliv > 0 {
		delPerS = float64(out.delivered) / secs(out.lastDeliv)
	}
	if reference {
		res.ReferenceDeliveries = out.delivered
		res.ReferenceEventsPerS, res.ReferenceDeliveriesPerS = evPerS, delPerS
		res.ReferenceP50Ms, res.ReferenceP99Ms = ms(percentile(out.latencies, 0.5)), ms(percentile(out.latencies, 0.99))
		res.ReferenceLost = out.lost
		return
	}
	res.DurationS = secs(out.lastAccept)
	res.HubEventsAccepted, res.HubEventsPerS = out.accepted, evPerS
	res.HubDeliveries, res.HubDeliveriesPerS = out.delivered, delPerS
	res.P50Ms = ms(percentile(out.latencies, 0.5))
	res.P90Ms = ms(percentile(out.latencies, 0.9))
	res.P99Ms = ms(percentile(out.latencies, 0.99))
	if n := len(out.latencies); n > 0 {
		res.MaxMs = ms(out.latencies[n-1])
	}
	res.Lost, res.Missing, res.Refused = out.lost, out.missing, out.refused
	res.Duplicates, res.Misrouted, res.BadSignatures = out.duplicates, out.misrouted, out.badSig
	if spec.rate > 0 && res.DurationS > 0 {
		if achieved := float64(out.accepted+out.refused) / res.DurationS; achieved < 0.95*spec.rate {
			res.Notes = append(res.Notes, fmt.Sprintf("the publisher reached %.0f events/s of the %.0f asked", achieved, spec.rate))
		}
	}
}

// backlogHub: the down recipient's outbox fills with BacklogEvents events
// while the others receive theirs; then it comes back and drains.
func (r *runner) backlogHub(ctx context.Context, label string, res *Result, t *tracker, ing ingester, spec loadSpec, pop *Population, down int) error {
	o := r.o
	ods := pop.Recipients[down].ODS
	var others []int
	for i := range pop.Recipients {
		if i != down {
			others = append(others, i)
		}
	}
	spec.count = int64(o.BacklogEvents)
	spec.rate = 0
	// As the throughput scenario, bounded on the recipients that answer:
	// each event has one of them (its GP practice) and the down care home.
	spec.maxOutstanding = int64(o.MaxInFlight)
	spec.outstanding = func() int64 {
		n := t.sent.Load() - t.refused.Load()
		for _, i := range others {
			n -= t.perRecipientGot[i].Load()
		}
		return n
	}
	stop := r.progress(label+" hub queue", t)
	drive(ctx, t, ing, spec)
	queued := t.now()
	r.drain(ctx, t, func() bool { return t.doneFor(others) })
	stop()
	othersOut := t.collect(setOf(others))
	tUp := t.now()
	r.progressf("[%s] %d events queued for %s in %.1fs; bringing it back", label, t.accepted.Load(), ods, float64(queued)/1e9)
	if err := r.recv.bringUp(ods); err != nil {
		return err
	}
	stop = r.progress(label+" hub drain", t)
	r.drain(ctx, t, func() bool { return t.done() })
	stop()
	out := t.collect(setOf(others))
	r.fill(res, t, out, spec, false)
	first, last := out.first[down], out.last[down]
	b := &BacklogResult{Events: out.accepted, QueueS: float64(queued) / 1e9,
		OthersP99WhileDownMs: float64(percentile(othersOut.latencies, 0.99)) / 1e6}
	if first > 0 {
		b.ResumeS = float64(first-tUp) / 1e9
		b.DrainS = float64(last-first) / 1e9
		if last > first {
			b.HubDrainPerS = float64(t.perRecipientGot[down].Load()) / (float64(last-first) / 1e9)
		}
	}
	res.Backlog = b
	res.HubDeliveriesPerS = b.HubDrainPerS
	res.Notes = append(res.Notes, "backlog: deliveries/s are the drain rate of the recovered recipient; latencies are the other recipients' while it was down, publishing as fast as they are served (at most max-in-flight events outstanding)")
	return nil
}

func setOf(xs []int) map[int]bool {
	m := map[int]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// referenceRow runs the same load on the reference path.
func (r *runner) referenceRow(ctx context.Context, label, rowID string, res *Result, brokers []string, pop *Population,
	intended []bool, down int, spec loadSpec, partitions int) error {
	topic := "carehub-bench.reference." + r.run + "." + rowID
	if err := ensureReferenceTopic(ctx, brokers, topic, partitions); err != nil {
		return err
	}
	ki := newKafkaIngester(brokers, topic)
	defer ki.close()
	if res.Scenario == Backlog {
		// The backlog: every record waits for the one recipient, then a
		// consumer starts and drains it.
		only := make([]bool, len(intended))
		only[down] = true
		t := newTracker(fmt.Sprintf("bench-%s-%s-r-", r.run, rowID), pop, only)
		r.recv.current.Store(t)
		spec.count = int64(r.o.BacklogEvents)
		spec.rate = 0
		spec.maxOutstanding, spec.outstanding = 0, nil
		stop := r.progress(label+" reference queue", t)
		drive(ctx, t, ki, spec)
		stop()
		start := t.now()
		ref := startReference(ctx, brokers, topic, partitions, pop)
		ref.current.Store(t)
		stop = r.progress(label+" reference drain", t)
		r.drain(ctx, t, func() bool { return t.done() })
		stop()
		_ = ref.close()
		out := t.collect(nil)
		res.ReferenceLost = out.lost
		res.ReferenceDeliveries = out.delivered
		if out.lastDeliv > start {
			rate := float64(out.delivered) / (float64(out.lastDeliv-start) / 1e9)
			res.Backlog.ReferenceDrainPerS = rate
			res.ReferenceDeliveriesPerS = rate
		}
		if p := ki.err.Load(); p != nil {
			return errors.New(*p)
		}
		return nil
	}
	ref := startReference(ctx, brokers, topic, partitions, pop)
	defer ref.close()
	warm := newTracker(fmt.Sprintf("bench-%s-%s-rw-", r.run, rowID), pop, intended)
	ref.current.Store(warm)
	if err := r.warmup(ctx, warm, ki, len(pop.Recipients), spec); err != nil {
		return fmt.Errorf("reference warm-up: %w", err)
	}
	t := newTracker(fmt.Sprintf("bench-%s-%s-r-", r.run, rowID), pop, intended)
	ref.current.Store(t)
	r.recv.current.Store(t)
	if spec.rate <= 0 {
		spec.maxOutstanding = int64(r.o.MaxInFlight) * 2
	}
	r.phase(ctx, label+" reference", t, ki, spec)
	r.fill(res, t, t.collect(nil), spec, true)
	if p := ki.err.Load(); p != nil {
		return errors.New(*p)
	}
	return nil
}

// cpuNow returns the hub's CPU time and this process's. In process, the
// hub's is this process's: the second is then zero, not counted twice.
func cpuNow(h hubHandle) (hub, self time.Duration, ok bool) {
	hub, _, ok = h.stats()
	if h.kind() != ProcessInProcess {
		self, _, _ = procStats(os.Getpid())
	}
	return hub, self, ok
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
