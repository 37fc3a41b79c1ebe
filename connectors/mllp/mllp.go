// Package mllp is the source connector for HL7 v2 ADT messages over MLLP:
// a hospital's patient administration system (PAS) connects, sends
// admissions, transfers and discharges as it does today, and gets one HL7
// acknowledgement per message.
//
// # One listener, one organisation
//
// A Source listens on one address and is bound to one source organisation
// (an ODS code, e.g. RX1). Every message must name that organisation in
// MSH-4 (sending facility, HD.1: "RX1", "RX1^...", or one of its sites,
// "RX1AB"), else it is rejected (AR). With TLS and a client CA, the client
// certificate must also name the organisation: its subject CN, or one of
// its O or OU values, must be the ODS code; otherwise the handshake fails.
//
// # Per connection
//
// Messages on one connection are handled one at a time, in order:
//
//	read frame → parse → check MSH-4 and MSH-11 → map (package adt, in hl7/adt)
//	→ Ingest.Accept (returns once the event is durable in Kafka) → ACK
//
// The acknowledgement is positive (AA, or CA in enhanced mode) only once
// Ingest.Accept has returned nil. Package adt documents the mapping, and
// the README has the full ACK matrix and the field-by-field table.
//
// # Framing and hostile peers
//
// Frames are 0x0B payload 0x1C 0x0D (package mllp). Bytes outside frames
// are skipped and logged (a count, never the bytes). A frame larger than
// MaxFrameBytes is consumed without being buffered and answered AE; the
// connection goes on. A connection that sends nothing for IdleTimeout, or
// takes longer than ReadTimeout to deliver a frame it has started, or does
// not take an acknowledgement within ReadTimeout (a peer that never reads),
// is closed. Nothing a peer sends can stop the listener.
//
// # Duplicates
//
// A message is identified by (source, MSH-3.1, MSH-4.1, MSH-10), which also
// gives the CloudEvents id (adt.EventID): a resend produces the same event
// id, so recipients can drop it. Within DuplicateWindow, a resend of a
// message already made durable is acknowledged without publishing it
// again; the same control ID with different content is rejected (AR, ERR
// code 205), as is a resend while the first copy is still in flight on
// another connection and differs. The memory holds at most MaxDuplicates
// entries; the oldest go first.
//
// # Shutdown
//
// When Run's context ends, the listener closes, every connection finishes
// and answers the message it is processing (a frame only partly received
// is dropped: the sender resends it, as MLLP senders do when no ACK comes),
// and Run returns once every connection is closed or DrainTimeout passed.
package mllp

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
	"github.com/carehub/carehub/internal/logging"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Type is the connector's type: the key of its entry under inputs.
const Type = "mllp"

// Factory is the connector's registration (connectors/all lists it).
var Factory = connector.SourceFactory{
	Type:    Type,
	Default: func() connector.Config { return DefaultConfig() },
	New:     func(cfg connector.Config) (connector.Source, error) { return New(*cfg.(*Config)) },
	Probe:   &connector.SourceProbe{Config: probeConfig, Document: probeDocument, HeldDocument: probeHeldDocument, Send: probeSend},
}

// Defaults of Config.
const (
	DefaultAddr            = "127.0.0.1:2575"
	DefaultMaxFrameBytes   = 1 << 20
	DefaultReadTimeout     = 60 * time.Second
	DefaultIdleTimeout     = 10 * time.Minute
	DefaultDuplicateWindow = 24 * time.Hour
	DefaultMaxDuplicates   = 200_000
	// MaxFrameBytesLimit is the largest maxFrameBytes a listener may set:
	// 16 MiB, far above any ADT message. Parsing and mapping run outside
	// the processing timeout and are linear in the message (README: tens
	// of ms to about 0.15 s of one core per MiB at worst), so this bounds
	// the time one frame can hold a core to a few seconds.
	MaxFrameBytesLimit     = 16 << 20
	DefaultMaxConns        = 256
	DefaultMaxConnsPerPeer = 16
	DefaultDrainTimeout    = 20 * time.Second
	DefaultProcessTimeout  = 30 * time.Second
	DefaultProcessingID    = "P"
)

// Config configures one listener: its entry under inputs.
//
//	inputs:
//	  - mllp: {addr: 0.0.0.0:2575, source: RX1, tls: {cert: ..., key: ..., clientCA: ...}}
//
// A zero value means the default.
type Config struct {
	// Addr is the host:port to listen on (default 127.0.0.1:2575).
	Addr string `yaml:"addr" json:"addr"`
	// Source is the ODS code of the organisation this listener is bound to;
	// it must be one of the hub's sources. Required.
	Source string `yaml:"source" json:"source"`
	// MaxFrameBytes is the largest message accepted (default 1 MiB).
	MaxFrameBytes int `yaml:"maxFrameBytes" json:"maxFrameBytes"`
	// ReadTimeout bounds receiving one frame once it has started, and
	// writing one acknowledgement (default 60s).
	ReadTimeout time.Duration `yaml:"readTimeout" json:"readTimeout"`
	// IdleTimeout closes a connection that sends nothing between frames for
	// this long (default 10m).
	IdleTimeout time.Duration `yaml:"idleTimeout" json:"idleTimeout"`
	// DuplicateWindow is how long a message made durable is remembered, so
	// that a resend is acknowledged without being published again (default
	// 24h).
	DuplicateWindow time.Duration `yaml:"duplicateWindow" json:"duplicateWindow"`
	// ProcessingID is the MSH-11 processing ID accepted: P (production), T
	// (training) or D (debugging). Other messages are rejected (AR, 202),
	// so that test messages never reach real recipients. Default P.
	ProcessingID string `yaml:"processingId" json:"processingId"`
	// DestinationFields are HL7 terse paths to the discharge destination's
	// ODS code, tried in order (adt.Options.DestinationFields; default
	// [PV1-37.1]).
	DestinationFields []string `yaml:"destinationFields" json:"destinationFields,omitempty"`
	// AllowUnverifiedNHSNumbers shares messages whose NHS number status
	// (PID-32) says the number is not verified; by default they are held.
	AllowUnverifiedNHSNumbers bool `yaml:"allowUnverifiedNHSNumbers" json:"allowUnverifiedNHSNumbers,omitempty"`
	// AssumeVerifiedWithoutStatus takes an NHS number as verified when the
	// message has no NHS number status (PID-32) at all; by default such
	// messages are held.
	AssumeVerifiedWithoutStatus bool `yaml:"assumeVerifiedWithoutStatus" json:"assumeVerifiedWithoutStatus,omitempty"`
	// Sensitivity labels events with sensitivity categories by treatment
	// function (PV1-10) or location (PV1-3, PV1-6) (adt.SensitivityRule).
	Sensitivity []adt.SensitivityRule `yaml:"sensitivity" json:"sensitivity,omitempty"`
	// TLS, when set, makes the listener speak TLS. With a client CA, a client
	// certificate is required and must name Source (see the package
	// documentation).
	TLS *TLS `yaml:"tls" json:"tls,omitempty"`

	// MaxDuplicates caps the messages remembered (default 200,000).
	MaxDuplicates int `yaml:"-" json:"-"`
	// MaxConns caps the listener's concurrent connections; more are closed
	// at once (default 256).
	MaxConns int `yaml:"maxConnections" json:"maxConnections"`
	// MaxConnsPerPeer caps the concurrent connections from one remote
	// address (default 16), so that one peer holding idle connections
	// cannot take every slot. A PAS or integration engine uses one to a
	// few per route.
	MaxConnsPerPeer int `yaml:"maxConnectionsPerPeer" json:"maxConnectionsPerPeer"`
	// DrainTimeout bounds shutdown (default 20s).
	DrainTimeout time.Duration `yaml:"-" json:"-"`
	// ProcessTimeout bounds making one message durable (default 30s).
	ProcessTimeout time.Duration `yaml:"-" json:"-"`
}

// TLS names the listener's PEM files: its certificate and key, and
// optionally the CA whose client certificates it requires.
type TLS struct {
	Cert     string `yaml:"cert" json:"cert"`
	Key      string `yaml:"key" json:"key"`
	ClientCA string `yaml:"clientCA" json:"clientCA,omitempty"`
}

// DefaultConfig returns a configuration with every default applied (Source
// is still to be given).
func DefaultConfig() *Config {
	c := &Config{}
	c.applyDefaults()
	return c
}

func (c *Config) applyDefaults() {
	set := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	set(&c.ReadTimeout, DefaultReadTimeout)
	set(&c.IdleTimeout, DefaultIdleTimeout)
	set(&c.DuplicateWindow, DefaultDuplicateWindow)
	set(&c.DrainTimeout, DefaultDrainTimeout)
	set(&c.ProcessTimeout, DefaultProcessTimeout)
	if c.MaxDuplicates == 0 {
		c.MaxDuplicates = DefaultMaxDuplicates
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerPeer == 0 {
		c.MaxConnsPerPeer = DefaultMaxConnsPerPeer
	}
	if c.ProcessingID == "" {
		c.ProcessingID = DefaultProcessingID
	}
}

// Validate reports every problem of the entry, joined. It reads no file:
// New loads the TLS files.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if err := connector.ListenAddr(c.Addr); err != nil {
		bad("addr %v", err)
	}
	if !ods.Valid(c.Source) {
		bad("source %q: not an ODS code", c.Source)
	}
	if c.MaxFrameBytes < 1024 || c.MaxFrameBytes > MaxFrameBytesLimit {
		bad("maxFrameBytes must be between 1024 and %d (16 MiB)", MaxFrameBytesLimit)
	}
	if c.ReadTimeout < 0 || c.IdleTimeout < 0 || c.DuplicateWindow < 0 || c.DrainTimeout < 0 || c.ProcessTimeout < 0 {
		bad("readTimeout, idleTimeout and duplicateWindow (and the timeouts) must be positive")
	}
	if c.MaxDuplicates < 0 || c.MaxConns < 0 || c.MaxConnsPerPeer < 0 {
		bad("the duplicate memory and the connection limits must be positive")
	}
	if c.MaxConnsPerPeer > c.MaxConns {
		bad("maxConnectionsPerPeer must not exceed maxConnections")
	}
	switch c.ProcessingID {
	case "P", "T", "D":
	default:
		bad("processingId %q: one of P, T, D", c.ProcessingID)
	}
	for _, f := range c.DestinationFields {
		if _, err := hl7.ParsePath(f); err != nil {
			bad("destinationFields: %v", err)
		}
	}
	for i, r := range c.Sensitivity {
		if err := r.Validate(); err != nil {
			bad("sensitivity[%d]: %v", i, err)
		}
	}
	if c.TLS != nil && (c.TLS.Cert == "" || c.TLS.Key == "") {
		bad("tls: cert and key are both required")
	}
	return errors.Join(errs...)
}

// Organisations implements connector.BoundConfig: the listener speaks for
// its source only.
func (c *Config) Organisations() []string { return []string{c.Source} }

// Labels implements connector.LabellingConfig: the categories of the
// sensitivity rules.
func (c *Config) Labels() []string {
	var out []string
	for _, r := range c.Sensitivity {
		out = append(out, r.Categories...)
	}
	return out
}

// ListenAddrs implements connector.ListenerConfig.
func (c *Config) ListenAddrs() []string { return []string{c.Addr} }

// loadTLS builds the server TLS configuration from the PEM files: the
// server's certificate and key, and optionally the CA that issues client
// certificates (then client certificates are required).
func (t *TLS) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: loading cert and key: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCA != "" {
		pem, err := os.ReadFile(t.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls.clientCA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.clientCA %s: no PEM certificate in it", t.ClientCA)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// Source is the MLLP source connector for one listener.
type Source struct {
	cfg    Config
	tls    *tls.Config // nil without TLS
	mapper *adt.Mapper
	dedupe *dedupe

	ln  net.Listener
	env connector.Env
	log *zap.Logger

	mu       sync.Mutex // guards conns and draining
	conns    map[*conn]struct{}
	perPeer  map[string]int // open connections by remote host
	draining bool
	wg       sync.WaitGroup

	ackSeq  atomic.Uint64
	ackBase string
	stats   struct { // read by the tests (Source.Stats, helpers_test.go)
		connections, refused, frames, accepted, duplicates, held, errors, rejected, skippedBytes,
		oversized, timeouts, notAcked, writeFailures atomic.Int64
	}
	now func() time.Time // for tests
}

// New applies defaults to cfg, validates it, loads its TLS files and
// builds the source. It does not listen: Register does.
func New(cfg Config) (*Source, error) {
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mllp: %w", err)
	}
	mapper, err := adt.NewMapper(adt.Options{Source: cfg.Source, DestinationFields: cfg.DestinationFields,
		AllowUnverifiedNHSNumbers: cfg.AllowUnverifiedNHSNumbers, AssumeVerifiedWithoutStatus: cfg.AssumeVerifiedWithoutStatus,
		Sensitivity: cfg.Sensitivity})
	if err != nil {
		return nil, fmt.Errorf("mllp: %w", err)
	}
	s := &Source{
		cfg: cfg, mapper: mapper, conns: map[*conn]struct{}{}, perPeer: map[string]int{},
		dedupe:  newDedupe(cfg.DuplicateWindow, cfg.MaxDuplicates),
		ackBase: "CH" + strconv.FormatInt(time.Now().UnixMilli(), 36) + "-",
		now:     time.Now,
	}
	if cfg.TLS != nil {
		t, err := cfg.TLS.load()
		if err != nil {
			return nil, fmt.Errorf("mllp: %w", err)
		}
		if t.ClientCAs != nil {
			source := cfg.Source
			t.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 || !certNames(cs.PeerCertificates[0], source) {
					return errCertificate
				}
				return nil
			}
		}
		s.tls = t
	}
	return s, nil
}

var errCertificate = errors.New("mllp: the client certificate does not name this listener's source organisation")

// certNames reports whether a client certificate names the organisation:
// its subject common name, or one of its organisation or organisational
// unit names, is the ODS code.
func certNames(c *x509.Certificate, ods string) bool {
	if c.Subject.CommonName == ods {
		return true
	}
	for _, v := range append(append([]string(nil), c.Subject.Organization...), c.Subject.OrganizationalUnit...) {
		if v == ods {
			return true
		}
	}
	return false
}

// Register implements connector.Source: it binds the listener, so that a
// taken port fails the hub at start.
func (s *Source) Register(env connector.Env) error {
	if env.Ingest == nil {
		return errors.New("mllp: Env needs Ingest")
	}
	s.env = env
	s.log = env.Log
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.log = s.log.With(zap.String("connector", "mllp"), zap.String("source", s.cfg.Source))
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("mllp: listening on %s: %w", s.cfg.Addr, err)
	}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	s.ln = ln
	return nil
}

// Addr returns the bound address (after Register).
func (s *Source) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Run implements connector.Source: it serves until ctx ends, then drains.
func (s *Source) Run(ctx context.Context, _ connector.Env) error {
	if s.ln == nil {
		return errors.New("mllp: Run before Register")
	}
	s.log.Info("MLLP listener ready", zap.String("addr", s.ln.Addr().String()), zap.Bool("tls", s.tls != nil))
	// Messages in flight finish even after ctx ends; ProcessTimeout bounds each.
	work := context.WithoutCancel(ctx)
	acceptErr := make(chan error, 1)
	go func() { acceptErr <- s.acceptLoop(work) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-acceptErr:
		err = fmt.Errorf("mllp: accepting connections: %w", err)
	}
	_ = s.ln.Close()
	s.drain()
	return err
}

func (s *Source) acceptLoop(ctx context.Context) error {
	var delay time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// EMFILE and the like: back off, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("MLLP accept failed; retrying", zap.String("error_class", logging.Class(err)), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.stats.connections.Add(1)
		c := &conn{s: s, nc: nc, peer: peerOf(nc)}
		s.mu.Lock()
		full, peerFull := len(s.conns) >= s.cfg.MaxConns, s.perPeer[c.peer] >= s.cfg.MaxConnsPerPeer
		if s.draining || full || peerFull {
			draining := s.draining
			s.mu.Unlock()
			_ = nc.Close()
			if !draining {
				s.stats.refused.Add(1)
				if full {
					s.log.Warn("MLLP connection refused: too many connections", zap.Int("max", s.cfg.MaxConns))
				} else {
					s.log.Warn("MLLP connection refused: too many connections from one peer", zap.Int("max_per_peer", s.cfg.MaxConnsPerPeer))
				}
			}
			continue
		}
		s.conns[c] = struct{}{}
		s.perPeer[c.peer]++
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve(ctx)
			s.mu.Lock()
			delete(s.conns, c)
			if s.perPeer[c.peer]--; s.perPeer[c.peer] <= 0 {
				delete(s.perPeer, c.peer)
			}
			s.mu.Unlock()
		}()
	}
}

// peerOf returns the remote host of a connection (its address without the
// port).
func peerOf(nc net.Conn) string {
	addr := nc.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// drain stops every connection after its message in progress, waiting at
// most DrainTimeout.
func (s *Source) drain() {
	s.mu.Lock()
	s.draining = true
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.cfg.DrainTimeout):
		s.log.Warn("MLLP drain timed out; closing connections")
		s.mu.Lock()
		for c := range s.conns {
			_ = c.nc.Close()
		}
		s.mu.Unlock()
		// A handler still busy (making a message durable, bounded by
		// ProcessTimeout) is not waited for past a short grace: the
		// process is stopping, and nothing unacknowledged was promised.
		// Regression (issue 14): the drain timed out, yet the process
		// lived on until SIGKILL.
		select {
		case <-done:
		case <-time.After(abandonAfter):
			s.mu.Lock()
			n := len(s.conns)
			s.mu.Unlock()
			s.log.Warn("MLLP handlers abandoned at shutdown", zap.Int("connections", n))
		}
	}
	s.log.Info("MLLP listener stopped", zap.String("addr", s.ln.Addr().String()))
}

// abandonAfter is how long the drain waits, after DrainTimeout and closing
// every connection, for handlers still at work.
const abandonAfter = 2 * time.Second

// conn is one connection.
//
// Concurrency: serve runs in one goroutine; stop is called by drain from
// another. mu orders them: a read deadline is only ever set under mu, and
// once stopped is true every deadline set is in the past, so a drain can
// never be overridden by a deadline set just after it.
type conn struct {
	s    *Source
	nc   net.Conn
	peer string // the remote host, for the per-peer limit

	mu      sync.Mutex
	stopped bool

	inFrame    bool      // the stream is inside a frame (serve goroutine only)
	frameStart time.Time // when that frame's start block arrived
}

func (c *conn) stop() {
	c.mu.Lock()
	c.stopped = true
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	c.mu.Unlock()
}

// setReadDeadline sets the read deadline unless the connection is stopping.
func (c *conn) setReadDeadline(t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	_ = c.nc.SetReadDeadline(t)
	return true
}

// Read implements io.Reader for the frame reader: it watches the framing
// bytes go by so that a frame in progress gets ReadTimeout from its start
// block, while the wait between frames gets IdleTimeout.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.nc.Read(p)
	if n > 0 {
		s, e := -1, -1
		for i := n - 1; i >= 0 && (s < 0 || e < 0); i-- {
			switch p[i] {
			case frame.StartBlock:
				if s < 0 {
					s = i
				}
			case frame.EndBlock:
				if e < 0 {
					e = i
				}
			}
		}
		switch {
		case s > e && e >= 0: // a frame ended and the next started in these bytes
			c.inFrame = true
			c.frameStart = c.s.now()
			c.setReadDeadline(c.frameStart.Add(c.s.cfg.ReadTimeout))
		case s > e && !c.inFrame: // a frame started
			c.inFrame = true
			c.frameStart = c.s.now()
			c.setReadDeadline(c.frameStart.Add(c.s.cfg.ReadTimeout))
		case s > e:
			// Another start block inside an unfinished frame: the frame
			// reader starts over, but the deadline does not. Regression
			// (issue 14): a new start block every 20 s kept a frame open
			// well past ReadTimeout.
		case e > s:
			c.inFrame = false
		}
	}
	return n, err
}

func (c *conn) serve(ctx context.Context) {
	s := c.s
	log := s.log.With(zap.String("remote", c.nc.RemoteAddr().String()))
	defer func() {
		if r := recover(); r != nil {
			log.Error("MLLP connection handler panicked", zap.String("panic", fmt.Sprintf("%T", r)))
		}
		_ = c.nc.Close()
	}()
	if tc, ok := c.nc.(*tls.Conn); ok {
		if !c.setReadDeadline(s.now().Add(s.cfg.ReadTimeout)) {
			return
		}
		if err := tc.HandshakeContext(ctx); err != nil {
			log.Warn("MLLP TLS handshake failed", zap.Bool("certificate_refused", errors.Is(err, errCertificate)),
				zap.String("error_class", logging.Class(err)))
			return
		}
	}
	log.Debug("MLLP connection opened")
	r := frame.NewReader(c, frame.ReaderOptions{MaxFrameSize: s.cfg.MaxFrameBytes})
	for {
		deadline := s.now().Add(s.cfg.IdleTimeout)
		if c.inFrame {
			// The next frame has already begun (pipelined): give it a
			// full ReadTimeout from now, not from when it arrived.
			deadline = s.now().Add(s.cfg.ReadTimeout)
		}
		if !c.setReadDeadline(deadline) {
			log.Debug("MLLP connection closed: draining")
			return
		}
		payload, err := r.ReadFrame()
		if n := r.LastSkipped(); n > 0 {
			s.stats.skippedBytes.Add(n)
			log.Warn("MLLP bytes outside frames skipped", zap.Int64("bytes", n))
		}
		switch {
		case err == nil:
		case errors.Is(err, frame.ErrFrameTooLarge):
			s.stats.frames.Add(1)
			s.stats.oversized.Add(1)
			s.stats.errors.Add(1)
			log.Warn("MLLP frame too large", zap.Int("max_bytes", s.cfg.MaxFrameBytes))
			s.env.Refuse(ctx, s.cfg.Source, problem.TooLarge)
			ack := hl7.NewACK(nil, hl7.AckAE, s.nextAckID(), s.now(), hl7.ErrDetail{
				Code: hl7.CodeValueTooLong, Diagnostic: "the message exceeds the maximum frame size of " + strconv.Itoa(s.cfg.MaxFrameBytes) + " bytes"})
			if !c.write(ack, log) {
				return
			}
			continue
		case errors.Is(err, io.EOF):
			log.Debug("MLLP connection closed by the peer")
			return
		case errors.Is(err, frame.ErrTruncatedFrame):
			log.Warn("MLLP connection closed inside a frame")
			return
		default:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.mu.Lock()
				stopped := c.stopped
				c.mu.Unlock()
				if stopped {
					log.Debug("MLLP connection closed: draining")
				} else {
					s.stats.timeouts.Add(1)
					log.Info("MLLP connection closed: timeout", zap.Bool("inside_frame", c.inFrame))
				}
				return
			}
			log.Info("MLLP connection read failed", zap.String("error_class", logging.Class(err)))
			return
		}
		s.stats.frames.Add(1)
		ack := s.handle(ctx, payload, log)
		if ack == nil {
			s.stats.notAcked.Add(1)
			continue
		}
		if !c.write(ack, log) {
			return
		}
	}
}

// write sends one acknowledgement frame within ReadTimeout.
func (c *conn) write(ack []byte, log *zap.Logger) bool {
	_ = c.nc.SetWriteDeadline(c.s.now().Add(c.s.cfg.ReadTimeout))
	if err := frame.WriteFrame(c.nc, ack); err != nil {
		c.s.stats.writeFailures.Add(1)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.s.stats.timeouts.Add(1)
		}
		log.Warn("MLLP acknowledgement not sent; closing", zap.String("error_class", logging.Class(err)))
		return false
	}
	return true
}

func (s *Source) nextAckID() string {
	return s.ackBase + strconv.FormatUint(s.ackSeq.Add(1), 36)
}

// outcome is how one message was answered.
type outcome struct {
	code   hl7.AckCode // original-mode code: AA, AE or AR
	errs   []hl7.ErrDetail
	reason string // for the log: fixed public text
	held   string // the held reason code, when the message was held
	// here is true for a refusal decided by the source itself, before
	// Ingest, and kind classifies it (for Env.Refuse).
	here bool
	kind problem.Kind
}

// refused is an outcome refused by the source itself, before Ingest.
func refused(code hl7.AckCode, kind problem.Kind, reason string, d hl7.ErrDetail) outcome {
	return outcome{code: code, reason: reason, errs: []hl7.ErrDetail{d}, here: true, kind: kind}
}

// handle processes one message and returns the acknowledgement to send, or
// nil when enhanced mode asked for none.
func (s *Source) handle(ctx context.Context, payload []byte, log *zap.Logger) []byte {
	m, err := adt.Parse(payload)
	if err != nil {
		var pe *hl7.ParseError
		code := hl7.AckAE
		if errors.Is(err, hl7.ErrUnsupportedCharset) {
			code = hl7.AckAR
		}
		d := hl7.ErrDetail{Code: hl7.CodeApplicationInternalError, Diagnostic: "the message cannot be parsed"}
		if errors.As(err, &pe) {
			d = pe.Detail()
		}
		hdr, _ := hl7.ParseHeader(payload)
		s.count(code)
		kind := problem.Malformed
		if code == hl7.AckAR {
			kind = problem.Unsupported
		}
		s.env.Refuse(ctx, s.cfg.Source, kind)
		log.Info("HL7 message refused", zap.String("ack", string(code)), zap.String("err_code", d.Code),
			zap.String("err_location", d.Location()), zap.String("reason", d.Diagnostic), zap.Int("bytes", len(payload)))
		return hl7.NewACK(hdr, code, s.nextAckID(), s.now(), d)
	}
	msh := m.Segment("MSH")
	controlID := m.ControlID()
	log = log.With(zap.String("control_id_hash", controlIDHash(controlID)), zap.String("trigger", logTrigger(m)))
	out, eventID, evType := s.process(ctx, m, payload)
	if out.here {
		s.env.Refuse(ctx, s.cfg.Source, out.kind)
	}
	if out.held != "" {
		log = log.With(zap.String("held_reason", out.held))
	}
	s.count(out.code)
	fields := []zap.Field{zap.String("ack", string(out.code)), zap.Int("bytes", len(payload))}
	if eventID != "" {
		fields = append(fields, zap.String("event_id", eventID))
	}
	if evType != "" {
		fields = append(fields, zap.String("type", evType))
	}
	if len(out.errs) > 0 {
		e := out.errs[0]
		fields = append(fields, zap.String("err_code", e.Code), zap.String("err_location", e.Location()), zap.String("reason", out.reason))
		log.Info("HL7 message refused", fields...)
	} else {
		if out.reason != "" {
			fields = append(fields, zap.String("reason", out.reason))
		}
		log.Info("HL7 message acknowledged", fields...)
	}

	// Enhanced mode: MSH-15 asks for a commit (accept) acknowledgement, MSH-16
	// for an application acknowledgement. Exactly one is sent at most, on this
	// connection: the commit one if MSH-15 asks for it (CA only once durable,
	// so it promises what AA does), else the application one if MSH-16 does.
	accept := strings.ToUpper(strings.TrimSpace(msh.Field(15).String()))
	app := strings.ToUpper(strings.TrimSpace(msh.Field(16).String()))
	code := out.code
	if accept != "" || app != "" {
		ok := code == hl7.AckAA
		switch {
		case wants(accept, ok, true):
			code = map[hl7.AckCode]hl7.AckCode{hl7.AckAA: hl7.AckCA, hl7.AckAE: hl7.AckCE, hl7.AckAR: hl7.AckCR}[code]
		case wants(app, ok, false):
		default:
			return nil
		}
	}
	return hl7.NewACK(m, code, s.nextAckID(), s.now(), out.errs...)
}

// wants reports whether an MSH-15/MSH-16 acknowledgement condition (HL7
// table 0155) asks for an acknowledgement. An empty MSH-15 in enhanced mode
// means AL; an empty MSH-16 means NE.
func wants(cond string, ok, emptyMeansAlways bool) bool {
	switch cond {
	case "AL":
		return true
	case "ER":
		return !ok
	case "SU":
		return ok
	case "":
		return emptyMeansAlways
	default: // NE, or a value outside the table
		return false
	}
}

func (s *Source) count(code hl7.AckCode) {
	switch code {
	case hl7.AckAE:
		s.stats.errors.Add(1)
	case hl7.AckAR:
		s.stats.rejected.Add(1)
	}
}

// process authenticates, maps and publishes a parsed message.
func (s *Source) process(ctx context.Context, m *hl7.Message, payload []byte) (outcome, string, string) {
	msh := m.Segment("MSH")
	if !s.sender(msh.Field(4).Component(1).String()) {
		return refused(hl7.AckAR, problem.Forbidden, reasonSender, errSender), "", ""
	}
	if pid := strings.TrimSpace(msh.Field(11).Component(1).String()); pid != s.cfg.ProcessingID {
		if pid != "" { // an empty MSH-11 is reported by the mapping (101)
			return refused(hl7.AckAR, problem.Unsupported, reasonProcessing, errProcessing), "", ""
		}
	}
	res, err := s.mapper.Map(m)
	if err != nil {
		var e *adt.Error
		if errors.As(err, &e) {
			kind := problem.Invalid
			if e.Ack != hl7.AckAE {
				kind = problem.Unsupported
			}
			return refused(e.Ack, kind, e.Reason, e.Detail()), "", ""
		}
		return refused(hl7.AckAR, problem.Internal, "internal error", hl7.ErrDetail{Code: hl7.CodeApplicationInternalError,
			Diagnostic: "internal error"}), "", ""
	}

	key := res.ID
	digest := bodyDigest(m)
	for {
		st, e := s.dedupe.begin(key, digest, s.now())
		switch st {
		case dupAlready:
			s.stats.duplicates.Add(1)
			return outcome{code: hl7.AckAA, reason: "duplicate of a message already accepted: not published again"}, res.ID, firstType(res)
		case dupConflict:
			return refused(hl7.AckAR, problem.Conflict, reasonReused, hl7.ErrDetail{Segment: "MSH", Sequence: 1, Field: 10,
				Code: hl7.CodeDuplicateKeyIdentifier, Diagnostic: reasonReused}), res.ID, firstType(res)
		case dupWait:
			select {
			case <-e.done:
				continue // see how the first copy went
			case <-time.After(s.cfg.ProcessTimeout):
				return refused(hl7.AckAR, problem.Unavailable, reasonBusy, hl7.ErrDetail{Segment: "MSH", Sequence: 1, Field: 10,
					Code: hl7.CodeApplicationRecordLocked, Diagnostic: reasonBusy}), res.ID, firstType(res)
			}
		}
		// dupProceed: this copy is the one to publish.
		return s.publish(ctx, e, res, payload)
	}
}

// firstType is the type of a result's first event, for the log.
func firstType(res *adt.Result) string {
	if len(res.Events) == 0 {
		return ""
	}
	return res.Events[0].Type
}

// publish makes the events of a message durable, or, for a message that
// is not shared, its held record, and records the outcome in the duplicate
// memory, even if Ingest panics. The answer is positive only once Ingest
// has returned: AA means durable, whether shared or held.
func (s *Source) publish(ctx context.Context, e *entry, res *adt.Result, payload []byte) (out outcome, id, typ string) {
	durable := false
	defer func() { s.dedupe.finish(e, durable, s.now()) }()
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ProcessTimeout)
	defer cancel()
	if h := res.Held; h != nil {
		err := s.env.Ingest.Hold(pctx, s.cfg.Source, connector.Held{
			ID: res.ID, Time: res.Time, Trigger: heldTrigger(res.Trigger), Reason: h.Reason, Detail: h.Detail,
			NHSNumber: h.NHSNumber, LocalID: h.LocalID, ContentType: media.HL7v2, Original: payload,
		})
		if err != nil {
			return ingestError(err), res.ID, ""
		}
		durable = true
		s.stats.held.Add(1)
		return outcome{code: hl7.AckAA, reason: h.Detail, held: h.Reason}, res.ID, ""
	}
	if len(res.Events) == 1 {
		acc, err := s.env.Ingest.Accept(pctx, s.cfg.Source, res.Events[0].JSON)
		if err != nil {
			return ingestError(err), res.ID, res.Events[0].Type
		}
		durable = true
		s.stats.accepted.Add(1)
		return outcome{code: hl7.AckAA}, acc.ID, acc.Type
	}
	// Several events (a swap): made durable together; the message is
	// acknowledged (AA) only if every one is, else answered as a whole (AR).
	// The events of it that were acknowledged are routed nonetheless (the
	// ingest's answer is per event); a resend after a partial failure finds
	// them accepted (duplicates, not published again) and publishes the
	// others. README, "What a 503 promises".
	raws := make([]json.RawMessage, len(res.Events))
	for i, ev := range res.Events {
		raws[i] = ev.JSON
	}
	for _, r := range s.env.Ingest.AcceptBatch(pctx, s.cfg.Source, raws) {
		if r.Err != nil {
			return ingestError(r.Err), res.ID, res.Events[0].Type
		}
	}
	durable = true
	s.stats.accepted.Add(1)
	return outcome{code: hl7.AckAA}, res.ID, res.Events[0].Type
}

// Reasons given in ERR-7 and logs for refusals decided here.
const (
	reasonSender     = "MSH-4 (sending facility) is not the organisation this connection is bound to"
	reasonProcessing = "MSH-11 (processing ID) is not the one this listener accepts"
	reasonReused     = "this message control ID was used for a different message within the duplicate window"
	reasonBusy       = "the same message is still being processed on another connection; resend later"
)

// The refusals decided here, as ERR segments (and, on release, problem
// violations: see violated).
var (
	errSender     = hl7.ErrDetail{Segment: "MSH", Sequence: 1, Field: 4, Code: hl7.CodeTableValueNotFound, Diagnostic: reasonSender}
	errProcessing = hl7.ErrDetail{Segment: "MSH", Sequence: 1, Field: 11, Code: hl7.CodeUnsupportedProcessingID, Diagnostic: reasonProcessing}
)

// violated returns an ERR segment's content as a problem document's
// violation: the pointer is "/original/" and the location as ERR-2 and the
// log write it (hl7.ErrDetail.Location, e.g. "/original/PID^1^3^2^1"), the
// rule "hl7-" and the 0357 code, the detail the ERR-7 text.
func violated(d hl7.ErrDetail) error {
	ptr := "/original"
	if loc := d.Location(); loc != "" {
		ptr += "/" + loc
	}
	return problem.Violated(ptr, "hl7-"+d.Code, d.Diagnostic)
}

// sender reports whether MSH-4.1 names the bound organisation or one of its
// sites (an ODS site code is the trust's 3-character code and 2 more).
func (s *Source) sender(hd string) bool {
	hd = strings.ToUpper(strings.TrimSpace(hd))
	src := s.cfg.Source
	if hd == src {
		return true
	}
	return len(src) == 3 && len(hd) == 5 && strings.HasPrefix(hd, src) && isAlnum(hd[3]) && isAlnum(hd[4])
}

func isAlnum(c byte) bool { return 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' }

// ingestError answers an Ingest.Accept failure: its kind gives AE or AR,
// and ERR-7 its public text (JSON pointers and rules, never values).
func ingestError(err error) outcome {
	code := hl7.AckCode(problem.KindOf(err).HL7Ack())
	text := problem.Public(err)
	if len(text) > 200 {
		text = text[:200]
	}
	return outcome{code: code, reason: text, errs: []hl7.ErrDetail{{Code: hl7.CodeApplicationInternalError, Diagnostic: text}}}
}

// bodyDigest hashes what a resend must repeat: the message type and every
// segment after MSH (MSH-7, the time of sending, may differ in a resend).
func bodyDigest(m *hl7.Message) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(m.Type().String()))
	for i := 2; i <= m.NumSegments(); i++ {
		h.Write([]byte{'\r'})
		h.Write([]byte(m.SegmentAt(i).Raw()))
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// unrecognised is what a log line says of a header value carehub does not
// know, instead of the value.
const unrecognised = "unrecognised"

// logTrigger returns what a log line says of a message's trigger event: the
// trigger (MSH-9.2, or EVN-1 without it) when the message is ADT and the
// trigger is one the adt trigger tables know, else unrecognised. MSH-9 is
// free text to a sender, and can hold anything, an NHS number included.
// Regression (gap audit of issue 14): "ADT^9991000011" was logged as
// trigger 9991000011.
func logTrigger(m *hl7.Message) string {
	typ := m.Type()
	if typ.Code != "ADT" {
		return unrecognised
	}
	t := strings.ToUpper(strings.TrimSpace(typ.Trigger))
	if t == "" {
		t = strings.ToUpper(strings.TrimSpace(m.Segment("EVN").Field(1).String()))
	}
	if !adt.Known(t) {
		return unrecognised
	}
	return t
}

// heldTrigger returns a held record's trigger (connector.Held.Trigger, which
// goes into Kafka headers and listings): "ADT^" and the trigger when the
// adt tables know it, else "ADT^unrecognised". Regression (gap audit of
// issue 14): "ADT^9991000011" became the held record's trigger as sent.
func heldTrigger(trigger string) string {
	if !adt.Known(trigger) {
		trigger = unrecognised
	}
	return "ADT^" + trigger
}

// controlIDKey keys the hash of control IDs in logs; it is drawn once per
// process, so a hash cannot be turned back into the control ID by trying
// candidates (a sender can put anything in MSH-10, an NHS number included).
var controlIDKey = func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}()

// controlIDHash returns what a log line says of MSH-10: a keyed hash, the
// same for the same control ID within one process (so the lines of a
// message and of its resends go together), never the value itself.
// Regression (issue 14): an NHS number sent as MSH-10 reached two log lines.
func controlIDHash(s string) string {
	m := hmac.New(sha256.New, controlIDKey)
	m.Write([]byte(s))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

var _ connector.Source = (*Source)(nil)

// Reread implements connector.Releaser: it maps a message this listener
// held, as it maps a message received now (the listener's current
// settings; with the NHS number an operator traced, when given), and
// publishes nothing. The listener's own duplicate memory is not consulted:
// the hub's memory of accepted events recognises an event accepted before.
func (s *Source) Reread(_ context.Context, hm connector.HeldMessage) (connector.Reread, error) {
	if hm.Org != s.cfg.Source || hm.ContentType != media.HL7v2 {
		return connector.Reread{}, connector.ErrNotMine
	}
	m, err := adt.Parse(hm.Original)
	if err != nil {
		return connector.Reread{}, problem.New(problem.Invalid, "the held message no longer parses as HL7 v2")
	}
	msh := m.Segment("MSH")
	if !s.sender(msh.Field(4).Component(1).String()) {
		return connector.Reread{}, violated(errSender)
	}
	if pid := strings.TrimSpace(msh.Field(11).Component(1).String()); pid != "" && pid != s.cfg.ProcessingID {
		return connector.Reread{}, violated(errProcessing)
	}
	var res *adt.Result
	if hm.NHSNumber.IsZero() {
		res, err = s.mapper.Map(m)
	} else {
		res, err = s.mapper.MapConfirmed(m, hm.NHSNumber)
	}
	if err != nil {
		var e *adt.Error
		if errors.As(err, &e) {
			return connector.Reread{}, violated(e.Detail())
		}
		return connector.Reread{}, problem.Wrap(problem.Internal, "mapping a held message", err)
	}
	if h := res.Held; h != nil {
		return connector.Reread{Held: &connector.Held{ID: res.ID, Time: res.Time, Trigger: heldTrigger(res.Trigger), Reason: h.Reason,
			Detail: h.Detail, ContentType: media.HL7v2}}, nil
	}
	out := connector.Reread{}
	for _, ev := range res.Events {
		out.Events = append(out.Events, ev.JSON)
	}
	return out, nil
}

var _ connector.Releaser = (*Source)(nil)
