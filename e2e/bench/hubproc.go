package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/hub"
	"github.com/carehub/carehub/hub/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The credentials of the generated configuration. They are bench values,
// published here on purpose: a bench hub holds synthetic data only.
const (
	SourceAPIKey = "bench-rx1-api-key"
	pseudonymKey = "bench-pseudonym-key-0123456789"
)

// Hub process kinds, as reported in Result.HubProcess.
const (
	ProcessSubprocess = "subprocess"
	ProcessInProcess  = "in-process"
	ProcessExternal   = "external"
)

// HubConfig is the hub configuration the bench runs a scenario against:
// the synthetic hospital as the only source (CloudEvents, FHIR and, with
// MLLPAddr, HL7 v2 inputs), and every recipient of pop with one
// subscription (registered-gp for GP practices, discharge-destination for
// care homes, patient-list for community teams, whose lists
// Population.WriteLists must have written) to discharges. A pull recipient
// gets a feed section with its own key instead of a webhook.
type HubConfig struct {
	HTTPAddr     string
	MLLPAddr     string // the HL7 v2 MLLP listener, for the synthetic hospital; empty: none
	EmbeddedAddr string // empty with Brokers set
	Brokers      []string
	DataDir      string
	Partitions   int
	MinBackoff   time.Duration
	MaxBackoff   time.Duration
	// FeedMaxEvents is the pull recipients' largest page (feed maxEvents).
	// Default 1000, the most the feed allows.
	FeedMaxEvents int
}

// YAML renders the configuration for pop.
func (hc HubConfig) YAML(pop *Population) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# carehub bench: a generated configuration with synthetic recipients.\n")
	fmt.Fprintf(&b, "http: {addr: %q, maxBodyBytes: %d}\n", hc.HTTPAddr, 8<<20)
	if hc.DataDir != "" {
		fmt.Fprintf(&b, "dataDir: %q\n", hc.DataDir)
	}
	if len(hc.Brokers) > 0 {
		fmt.Fprintf(&b, "kafka: {brokers: [%s], partitions: %d}\n", quoteList(hc.Brokers), hc.Partitions)
	} else {
		// Disk guard floors a benchmark machine has room for (the defaults
		// are for a server).
		fmt.Fprintf(&b, "kafka: {embeddedAddr: %q, partitions: %d, minFreeBytes: 67108864, hardMinFreeBytes: 16777216}\n", hc.EmbeddedAddr, hc.Partitions)
	}
	fmt.Fprintf(&b, "pseudonymKey: {value: %s}\n", pseudonymKey)
	fmt.Fprintf(&b, "sources:\n  - {ods: %s, name: Bench hospital, apiKey: {value: %s}}\n", Source, SourceAPIKey)
	b.WriteString("inputs:\n  - cloudevents: {maxBatchEvents: 1000}\n  - fhir: {}\n")
	if hc.MLLPAddr != "" {
		fmt.Fprintf(&b, "  - mllp: {addr: %q, source: %s}\n", hc.MLLPAddr, Source)
	}
	b.WriteString("recipients:\n")
	maxEvents := hc.FeedMaxEvents
	if maxEvents <= 0 {
		maxEvents = 1000
	}
	for _, r := range pop.Recipients {
		if r.Pull {
			fmt.Fprintf(&b, "  - ods: %s\n    role: %s\n    feed: {apiKey: {value: %s}, maxEvents: %d, maxWait: 60s}\n",
				r.ODS, r.Role, r.FeedKey, maxEvents)
		} else {
			fmt.Fprintf(&b, "  - ods: %s\n    role: %s\n    webhook: {url: %q, secret: {value: %s}, timeout: 10s}\n",
				r.ODS, r.Role, r.URL, r.Secret)
		}
		list := ""
		if r.PatientList != "" {
			list = fmt.Sprintf(", patientList: %q", r.PatientList)
		}
		fmt.Fprintf(&b, "    subscriptions: [{id: %s-%s, basis: %s%s, types: [discharge]}]\n",
			strings.ToLower(r.ODS), r.Basis, r.Basis, list)
	}
	fmt.Fprintf(&b, "delivery: {minBackoff: %s, maxBackoff: %s}\n", hc.MinBackoff, hc.MaxBackoff)
	return b.Bytes()
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// hubHandle is a hub under test.
type hubHandle interface {
	httpAddr() string
	mllpAddr() string
	brokers() []string
	kind() string
	// stats returns the hub's CPU time (user+system) and peak resident set
	// (VmHWM); ok is false when they cannot be read.
	stats() (cpu time.Duration, peakRSS int64, ok bool)
	stop() error
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitReady polls GET /readyz until 200, the deadline, or exited.
func waitReady(ctx context.Context, addr string, timeout time.Duration, exited <-chan error) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := c.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("the hub exited before it was ready: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the hub was not ready after %s", timeout)
		}
	}
}

// subprocess is a hub run as its own process: carehub serve --config FILE.
type subprocess struct {
	cmd     *exec.Cmd
	http    string
	mllp    string
	kafka   string
	exited  chan error
	logPath string
	logFile *os.File
	once    sync.Once
}

func startSubprocess(ctx context.Context, argv []string, cfgPath, logLevel, logPath, httpAddr, kafkaAddr string, timeout time.Duration) (*subprocess, error) {
	if len(argv) == 0 {
		return nil, errors.New("bench: no hub command")
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append(append([]string(nil), argv[1:]...), "--config", cfgPath, "--log-level", logLevel)
	cmd := exec.Command(argv[0], args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("bench: starting the hub (%s): %w", argv[0], err)
	}
	s := &subprocess{cmd: cmd, http: httpAddr, kafka: kafkaAddr, exited: make(chan error, 1), logPath: logPath, logFile: lf}
	go func() { s.exited <- cmd.Wait() }()
	if err := waitReady(ctx, httpAddr, timeout, s.exited); err != nil {
		_ = s.stop()
		return nil, fmt.Errorf("%w\n%s", err, tailFile(logPath, 3000))
	}
	return s, nil
}

func (s *subprocess) httpAddr() string  { return s.http }
func (s *subprocess) mllpAddr() string  { return s.mllp }
func (s *subprocess) brokers() []string { return []string{s.kafka} }
func (s *subprocess) kind() string      { return ProcessSubprocess }
func (s *subprocess) stats() (time.Duration, int64, bool) {
	return procStats(s.cmd.Process.Pid)
}

func (s *subprocess) stop() error {
	var err error
	s.once.Do(func() {
		defer s.logFile.Close()
		if s.cmd.ProcessState != nil {
			return
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case e := <-s.exited:
			if e != nil {
				err = fmt.Errorf("bench: the hub exited with %v after SIGTERM\n%s", e, tailFile(s.logPath, 2000))
			}
		case <-time.After(60 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
			err = errors.New("bench: the hub did not stop within 60s of SIGTERM; killed")
		}
	})
	return err
}

// inProcess is a hub run by hub.Run inside the bench process: the fallback
// when no carehub binary can be executed. Its CPU and RSS figures are the
// whole bench process's (load generator and receivers included).
type inProcess struct {
	http     string
	mllp     string
	brokers_ []string
	cancel   context.CancelFunc
	done     chan error
	log      *zap.Logger
	once     sync.Once
}

func startInProcess(ctx context.Context, cfgYAML []byte, logLevel, logPath string, timeout time.Duration) (*inProcess, error) {
	cfg, err := config.Parse(cfgYAML, all.Registry())
	if err != nil {
		return nil, fmt.Errorf("bench: the generated configuration: %w", err)
	}
	lvl, err := zapcore.ParseLevel(logLevel)
	if err != nil {
		return nil, err
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	zc.OutputPaths = []string{logPath}
	zc.ErrorOutputPaths = []string{logPath}
	log, err := zc.Build()
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h := &inProcess{cancel: cancel, done: make(chan error, 1), log: log}
	ready := make(chan struct{})
	go func() {
		h.done <- hub.Run(hctx, cfg, log, hub.Options{Ready: func(addr string, brokers []string) {
			h.http, h.brokers_ = addr, brokers
			close(ready)
		}})
	}()
	select {
	case <-ready:
		return h, nil
	case err := <-h.done:
		cancel()
		return nil, fmt.Errorf("bench: the in-process hub did not start: %v", err)
	case <-time.After(timeout):
		_ = h.stop()
		return nil, fmt.Errorf("bench: the in-process hub was not ready after %s", timeout)
	}
}

func (h *inProcess) httpAddr() string  { return h.http }
func (h *inProcess) mllpAddr() string  { return h.mllp }
func (h *inProcess) brokers() []string { return h.brokers_ }
func (h *inProcess) kind() string      { return ProcessInProcess }
func (h *inProcess) stats() (time.Duration, int64, bool) {
	return procStats(os.Getpid())
}

func (h *inProcess) stop() error {
	var err error
	h.once.Do(func() {
		h.cancel()
		select {
		case err = <-h.done:
		case <-time.After(60 * time.Second):
			err = errors.New("bench: the in-process hub did not stop within 60s")
		}
		_ = h.log.Sync()
	})
	return err
}

// external is a hub someone else runs (--target).
type external struct {
	http     string
	mllp     string
	brokers_ []string
	pid      int
}

func (e *external) httpAddr() string  { return e.http }
func (e *external) mllpAddr() string  { return e.mllp }
func (e *external) brokers() []string { return e.brokers_ }
func (e *external) kind() string      { return ProcessExternal }
func (e *external) stats() (time.Duration, int64, bool) {
	if e.pid <= 0 {
		return 0, 0, false
	}
	return procStats(e.pid)
}
func (e *external) stop() error { return nil }

// procStats reads a process's CPU time (utime+stime from /proc/PID/stat,
// in USER_HZ ticks of 10 ms on Linux) and peak resident set size (VmHWM
// from /proc/PID/status).
func procStats(pid int) (time.Duration, int64, bool) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	const userHZ = 100
	cpu := time.Duration(ut+st) * time.Second / userHZ

	status, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return cpu, 0, false
	}
	defer status.Close()
	var hwm int64
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil {
				hwm = kb * 1024
			}
		}
	}
	return cpu, hwm, hwm > 0
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
