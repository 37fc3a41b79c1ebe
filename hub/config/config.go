// Package config loads carehub's YAML configuration strictly: unknown keys
// are errors, defaults are applied in one place, and Validate reports every
// problem at once so that a hub fails at start, never half-way through a day.
//
// The file has the hub's own sections (http, kafka, sources, recipients,
// delivery, consent, ...) and connector sections, which the hub does not
// interpret: under inputs, each entry's one key names a source connector
// type and holds that connector's configuration; in a recipient, the key
// that names a sink connector type (webhook, ...) holds its delivery
// configuration. The connector registry (connectors/all) decodes each
// section with the connector's own defaults and validation.
//
// Secrets (API keys, webhook secrets, the pseudonym key) are
// connector.Secret values: each is given inline (demo only), from a file,
// or from an environment variable, and is read once, when the file is
// decoded. A real deployment keeps them out of the committed file:
//
//	apiKey: {file: /run/secrets/rx1-key}
//	secret: {env: CAREHUB_GP_SECRET}
//
// Validate reads no other file: patient lists and certificates are read
// when the hub builds its parts, before anything starts.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/schemas/ods"
	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration of one carehub process.
type Config struct {
	HTTP       HTTP             `yaml:"http"`
	DataDir    string           `yaml:"dataDir"`
	Kafka      Kafka            `yaml:"kafka"`
	Pseudonym  connector.Secret `yaml:"pseudonymKey"`
	Admin      Admin            `yaml:"admin"`
	Sources    []Source         `yaml:"sources"`
	Inputs     []Input          `yaml:"inputs"`
	Recipients []Recipient      `yaml:"recipients"`
	Delivery   connector.Retry  `yaml:"delivery"`
	Consent    Consent          `yaml:"consent"`
	Ingest     Ingest           `yaml:"ingest"`
	Events     Events           `yaml:"events"`
	Retention  Retention        `yaml:"retention"`

	reg *connector.Registry // the registry the connector sections were decoded with
}

// Ingest is how the hub takes events from every source.
type Ingest struct {
	// DuplicateWindow is how long the hub remembers each accepted event's
	// (source, id) and content: within it, the same event again (a retry)
	// is answered as accepted and not published twice, and the same id
	// with other content is refused. Default 24h (as MLLP's duplicate
	// window).
	DuplicateWindow time.Duration `yaml:"duplicateWindow"`
}

// Events bounds the time an event says it happened (CloudEvents time): a
// decision judges directive periods against it.
type Events struct {
	// MaxFutureSkew: an event dated later than now plus this is refused
	// (422, HL7 AE) with the rule event-time-future. Default 5m.
	MaxFutureSkew Duration `yaml:"maxFutureSkew"`
	// FlagOlderThan: an event dated earlier than now minus this is
	// accepted (a PAS catching up after an outage is normal) and flagged
	// in the audit (event-time-old). Default 3d.
	FlagOlderThan Duration `yaml:"flagOlderThan"`
}

// Retention says how long each kind of record is kept.
type Retention struct {
	// Events: carehub.events (retention.ms). Default 8y.
	Events Duration `yaml:"events"`
	// Audit: carehub.audit (retention.ms). Default 8y.
	Audit Duration `yaml:"audit"`
	// OutboxWindow: a copy is removed from its outbox once every
	// deliverer of the recipient has committed past it, and an entry from
	// a pull recipient's feed once the recipient has acknowledged it (read
	// with a later after=), and this long has passed since. Default 7d.
	OutboxWindow Duration `yaml:"outboxWindow"`
	// DeadLetterWindow: a dead letter is removed this long after it was
	// resolved (replayed or dismissed). Default 30d.
	DeadLetterWindow Duration `yaml:"deadLetterWindow"`
	// HeldWindow: a held message (its original included) is removed this
	// long after it was released or resolved. Default 30d.
	HeldWindow Duration `yaml:"heldWindow"`
	// FollowUps: how long the patient index remembers who received events
	// about an encounter or care plan after its last event (corrections
	// and updates follow the original for that long). Default 2y.
	FollowUps Duration `yaml:"followUps"`
	// SweepInterval: how often the removals run. Default 1h.
	SweepInterval Duration `yaml:"sweepInterval"`
}

// HTTP is the API listener, shared by the admin API and every HTTP source.
type HTTP struct {
	Addr string `yaml:"addr"`
	// MaxBodyBytes is the largest request body any route takes; larger
	// requests get 413.
	MaxBodyBytes int64 `yaml:"maxBodyBytes"`
}

// Kafka says which broker to use. With Brokers empty the hub starts its
// embedded broker on EmbeddedAddr with data under DataDir.
type Kafka struct {
	Brokers           []string `yaml:"brokers"`
	EmbeddedAddr      string   `yaml:"embeddedAddr"`
	Partitions        int      `yaml:"partitions"`
	ReplicationFactor int      `yaml:"replicationFactor"`
	// Linger is how long a produce waits for more records to share its
	// request (Kafka's linger.ms; kafka-go's BatchTimeout). Every
	// acknowledgement the hub waits for costs at least this.
	Linger time.Duration `yaml:"linger"`
	// SyncWrites makes the embedded broker fsync every write before
	// acknowledging it (survives power loss, not only a process kill).
	SyncWrites bool `yaml:"syncWrites"`
	// PublishTimeout bounds making one event (or batch) durable: past it
	// the sender gets 503 with Retry-After (HL7 AR), and what was not
	// acknowledged is not published.
	PublishTimeout time.Duration `yaml:"publishTimeout"`

	// The embedded broker's disk guard (package diskguard): below
	// MinFreeBytes of free space in the data directory's filesystem (or
	// MinFreeFraction of its size, if larger) the hub refuses input, below
	// HardMinFreeBytes it pauses routing and deliveries too; both resume by
	// themselves. 0 means the defaults (1 GiB, none, 256 MiB); negative
	// turns a floor off.
	MinFreeBytes      int64         `yaml:"minFreeBytes"`
	MinFreeFraction   float64       `yaml:"minFreeFraction"`
	HardMinFreeBytes  int64         `yaml:"hardMinFreeBytes"`
	DiskCheckInterval time.Duration `yaml:"diskCheckInterval"`
}

// Admin holds the operator credentials. Every call of the admin API is
// made by an operator, whose id the audit records: apiKey is the operator
// "admin"; each of operators has its own id and key.
type Admin struct {
	APIKey    connector.Secret `yaml:"apiKey"`
	Operators []Operator       `yaml:"operators"`
}

// Operator is one person or system using the admin API.
type Operator struct {
	// ID names the operator in audit records: 1 to 64 letters, digits,
	// '-', '.', '_' or '@' (an NHS smartcard UUID, an email address).
	ID     string           `yaml:"id"`
	APIKey connector.Secret `yaml:"apiKey"`
}

// Source is an organisation allowed to publish events.
type Source struct {
	ODS    string           `yaml:"ods"`
	Name   string           `yaml:"name"`
	APIKey connector.Secret `yaml:"apiKey"`
	// Contact tells a recipient of a notification-only copy, or of a
	// withheld notice, how to ask this publisher for the full record
	// (a phone number, an address, a URL). Optional; at most 200
	// characters.
	Contact string `yaml:"contact"`
}

// Subscription says which events a recipient wants and on what basis.
type Subscription struct {
	ID    string   `yaml:"id" json:"id"`
	Basis string   `yaml:"basis" json:"basis"`
	Types []string `yaml:"types" json:"types"`
	// PatientList is the file of the recipient's patients (one NHS number
	// per line; see package patientlist), for basis patient-list only, and
	// optional: without it the recipient's list is managed through the
	// admin API (PUT and POST /v1/recipients/{ods}/patients). The hub reads
	// it at start-up and again when it is sent SIGHUP, and writes it to the
	// recipient's list when it changed (hub/directory). A recipient has one
	// list: every patient-list subscription of it uses the same.
	PatientList string `yaml:"patientList,omitempty" json:"patientList,omitempty"`
}

// Consent is the deployment's consent policy (see package consent).
type Consent struct {
	// ExtraSensitiveCategories are category codes treated as sensitive in
	// addition to the built-in ones.
	ExtraSensitiveCategories []string `yaml:"extraSensitiveCategories"`
	// ConfidentialAllow lists the bases on which a confidential patient's
	// events are still shared. Default: [registered-gp].
	ConfidentialAllow []string `yaml:"confidentialAllow"`
	// WithheldDischarge is what the organisation a patient is discharged
	// to receives when consent withholds the discharge from it: notice (a
	// content-free notice to contact the discharging ward; the default)
	// or none.
	WithheldDischarge string `yaml:"withheldDischarge"`
}

// Policy returns the consent policy this section configures, validated.
func (c Consent) Policy() (consent.Policy, error) {
	p := consent.DefaultPolicy()
	p.ExtraSensitiveCategories = c.ExtraSensitiveCategories
	p.ConfidentialAllow = nil
	for _, b := range c.ConfidentialAllow {
		p.ConfidentialAllow = append(p.ConfidentialAllow, consent.Basis(b))
	}
	if err := p.Validate(); err != nil {
		return consent.Policy{}, err
	}
	return p, nil
}

// Defaults of the hub's own settings. Connectors own theirs.
const (
	DefaultHTTPAddr     = "127.0.0.1:8080"
	DefaultMaxBodyBytes = 1 << 20
	DefaultDataDir      = "./data"
	DefaultEmbeddedAddr = "127.0.0.1:9092"
	DefaultPartitions   = 6
	DefaultLinger       = 500 * time.Microsecond
	// DefaultPublishTimeout is kafka.publishTimeout's default: a sender's
	// own timeout (an HL7 engine's ACK timeout, an HTTP client's) is
	// usually 30 s or more, so it hears 503 before it gives up.
	DefaultPublishTimeout = 10 * time.Second
	// DefaultDuplicateWindow is Ingest.DuplicateWindow's default.
	DefaultDuplicateWindow = 24 * time.Hour

	DefaultMaxFutureSkew    = Duration(5 * time.Minute)
	DefaultFlagOlderThan    = Duration(3 * Day)
	DefaultEventsRetention  = Duration(8 * Year)
	DefaultAuditRetention   = Duration(8 * Year)
	DefaultOutboxWindow     = Duration(7 * Day)
	DefaultDeadLetterWindow = Duration(30 * Day)
	DefaultHeldWindow       = Duration(30 * Day)
	DefaultFollowUps        = Duration(2 * Year)
	DefaultSweepInterval    = Duration(time.Hour)
	DefaultWithheld         = "notice"
)

// Load reads and strictly decodes a YAML file, decodes its connector
// sections with the registry's factories, applies defaults and validates.
// A relative patientList path is taken from the file's directory.
func Load(path string, reg *connector.Registry) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := decode(b, reg)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	for i := range c.Recipients {
		for j := range c.Recipients[i].Subscriptions {
			if l := &c.Recipients[i].Subscriptions[j].PatientList; *l != "" && !filepath.IsAbs(*l) {
				*l = filepath.Join(dir, *l)
			}
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse is Load for a configuration in memory. A relative patientList path
// is taken from the working directory.
func Parse(b []byte, reg *connector.Registry) (*Config, error) {
	c, err := decode(b, reg)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func decode(b []byte, reg *connector.Registry) (*Config, error) {
	if reg == nil {
		return nil, errors.New("config: no connector registry")
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	var c Config
	if len(doc.Content) > 0 {
		if err := refuseOldForms(doc.Content[0]); err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("decoding config: %w", err)
		}
	}
	if err := c.decodeConnectors(reg); err != nil {
		return nil, err
	}
	c.reg = reg
	c.Defaults()
	return &c, nil
}

// refuseOldForms names each setting of an earlier version of the file that
// moved, and says what to write instead.
func refuseOldForms(root *yaml.Node) error {
	if root.Kind != yaml.MappingNode {
		return nil
	}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i].Value, root.Content[i+1]
		switch {
		case k == "mllp":
			errs = append(errs, fmt.Errorf("line %d: mllp: MLLP listeners moved under inputs; write each one as an entry of inputs:\n"+
				"  inputs:\n    - cloudevents: {}\n    - mllp: {addr: 127.0.0.1:2575, source: RX1}", root.Content[i].Line))
		case k == "http" && v.Kind == yaml.MappingNode:
			for j := 0; j+1 < len(v.Content); j += 2 {
				if v.Content[j].Value == "maxBatchEvents" {
					errs = append(errs, fmt.Errorf("line %d: http.maxBatchEvents moved to the cloudevents input; write:\n"+
						"  inputs:\n    - cloudevents: {maxBatchEvents: %s}", v.Content[j].Line, v.Content[j+1].Value))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// decodeConnectors decodes every connector section with its factory.
func (c *Config) decodeConnectors(reg *connector.Registry) error {
	var errs []error
	for i := range c.Inputs {
		in := &c.Inputs[i]
		where := fmt.Sprintf("inputs[%d]", i)
		f, ok := reg.Source(in.Type)
		if !ok {
			errs = append(errs, fmt.Errorf("%s (line %d): unknown input type %q: one of %s", where, in.line, in.Type,
				strings.Join(reg.SourceTypes(), ", ")))
			continue
		}
		cfg := f.Default()
		if err := connector.DecodeStrict(in.node, cfg); err != nil {
			errs = append(errs, fmt.Errorf("%s.%s (line %d): %w", where, in.Type, in.line, err))
			continue
		}
		in.Config, in.factory = cfg, f
	}
	for i := range c.Recipients {
		for _, e := range c.Recipients[i].decodeSink(reg, true) {
			errs = append(errs, fmt.Errorf("recipients[%d]%w", i, e))
		}
	}
	return errors.Join(errs...)
}

// Defaults fills unset fields of the hub's own settings.
func (c *Config) Defaults() {
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = DefaultHTTPAddr
	}
	if c.HTTP.MaxBodyBytes == 0 {
		c.HTTP.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Kafka.EmbeddedAddr == "" {
		c.Kafka.EmbeddedAddr = DefaultEmbeddedAddr
	}
	if c.Kafka.Partitions == 0 {
		c.Kafka.Partitions = DefaultPartitions
	}
	if c.Kafka.Linger == 0 {
		c.Kafka.Linger = DefaultLinger
	}
	if c.Kafka.PublishTimeout == 0 {
		c.Kafka.PublishTimeout = DefaultPublishTimeout
	}
	if c.Kafka.ReplicationFactor == 0 {
		if len(c.Kafka.Brokers) == 0 {
			c.Kafka.ReplicationFactor = 1
		} else {
			c.Kafka.ReplicationFactor = 3
		}
	}
	if c.Ingest.DuplicateWindow == 0 {
		c.Ingest.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.Consent.ConfidentialAllow == nil {
		c.Consent.ConfidentialAllow = []string{string(consent.BasisRegisteredGP)}
	}
	if c.Consent.WithheldDischarge == "" {
		c.Consent.WithheldDischarge = DefaultWithheld
	}
	for _, d := range []struct {
		v   *Duration
		def Duration
	}{
		{&c.Events.MaxFutureSkew, DefaultMaxFutureSkew}, {&c.Events.FlagOlderThan, DefaultFlagOlderThan},
		{&c.Retention.Events, DefaultEventsRetention}, {&c.Retention.Audit, DefaultAuditRetention},
		{&c.Retention.OutboxWindow, DefaultOutboxWindow}, {&c.Retention.DeadLetterWindow, DefaultDeadLetterWindow},
		{&c.Retention.HeldWindow, DefaultHeldWindow},
		{&c.Retention.FollowUps, DefaultFollowUps}, {&c.Retention.SweepInterval, DefaultSweepInterval},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	c.Delivery = c.Delivery.WithDefaults()
	for i := range c.Recipients {
		c.Recipients[i].defaults()
	}
}

// Validate reports every problem in the configuration, joined: the hub's
// own sections, every connector section (by the connector's Validate), and
// how they fit together (a listener bound to a configured source, no two
// listeners on one address).
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	listeners := map[string]string{} // address → who listens there (port 0: a free port, never shared)
	listen := func(where, addr string) {
		if err := connector.ListenAddr(addr); err != nil {
			bad("%s %v", where, err)
			return
		}
		if _, port, _ := net.SplitHostPort(addr); port == "0" {
			return // any free port: never shared
		}
		if prev, ok := listeners[addr]; ok {
			bad("%s %q: used by %s", where, addr, prev)
		}
		listeners[addr] = where
	}
	listen("http.addr", c.HTTP.Addr)
	if c.HTTP.MaxBodyBytes < 1024 {
		bad("http.maxBodyBytes must be at least 1024")
	}
	if len(c.Kafka.Brokers) == 0 {
		listen("kafka.embeddedAddr", c.Kafka.EmbeddedAddr)
	} else {
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"syncWrites", c.Kafka.SyncWrites}, {"minFreeBytes", c.Kafka.MinFreeBytes != 0},
			{"minFreeFraction", c.Kafka.MinFreeFraction != 0}, {"hardMinFreeBytes", c.Kafka.HardMinFreeBytes != 0},
			{"diskCheckInterval", c.Kafka.DiskCheckInterval != 0},
		} {
			if f.set {
				bad("kafka.%s applies to the embedded broker only, but kafka.brokers is set", f.name)
			}
		}
	}
	if c.Kafka.PublishTimeout < 0 {
		bad("kafka.publishTimeout must be positive")
	}
	if c.Kafka.Partitions < 1 {
		bad("kafka.partitions must be at least 1")
	}
	if c.Kafka.Linger < 0 || c.Kafka.Linger > time.Second {
		bad("kafka.linger must be between 0 and 1s")
	}
	if c.Ingest.DuplicateWindow < time.Minute {
		bad("ingest.duplicateWindow must be at least 1m (it is how long a publisher's retry is recognised)")
	}
	if !c.Pseudonym.Set() {
		bad("pseudonymKey: required (the key of the HMAC that pseudonymises NHS numbers)")
	} else if v, err := c.Pseudonym.Reveal(); err != nil {
		bad("pseudonymKey: %v", err)
	} else if len(v) < 16 {
		bad("pseudonymKey: must be at least 16 bytes")
	}
	keys := map[string]string{} // API key → where it is given
	if c.Admin.APIKey.Set() {
		if v, err := c.Admin.APIKey.Reveal(); err != nil {
			bad("admin.apiKey: %v", err)
		} else {
			keys[v] = "admin.apiKey"
		}
	}
	operators := map[string]bool{"admin": c.Admin.APIKey.Set()}
	checkKey := func(where string, s connector.Secret) {
		v, err := s.Reveal()
		if err != nil {
			bad("%s: %v", where, err)
			return
		}
		if len(v) < 8 {
			bad("%s: API keys must be at least 8 bytes", where)
		}
		if prev, dup := keys[v]; dup {
			bad("%s: the same API key is already used by %s", where, prev)
		}
		keys[v] = where
	}
	// A recipient's keys are checked by Recipient.Check; here only that
	// no other part of the file uses them.
	dupKey := func(where string, s connector.Secret) {
		if v, err := s.Reveal(); err == nil {
			if prev, dup := keys[v]; dup {
				bad("%s: the same API key is already used by %s", where, prev)
			}
			keys[v] = where
		}
	}
	for i, o := range c.Admin.Operators {
		where := fmt.Sprintf("admin.operators[%d]", i)
		if !operatorID.MatchString(o.ID) || tenDigits.MatchString(o.ID) {
			bad("%s.id: 1 to 64 letters, digits, '-', '.', '_' or '@', not ten digits", where)
		} else if operators[o.ID] {
			bad("%s.id %q: used twice (the apiKey is the operator admin)", where, o.ID)
		}
		operators[o.ID] = true
		checkKey(where+".apiKey", o.APIKey)
	}
	sources := map[string]bool{}
	for i, s := range c.Sources {
		where := fmt.Sprintf("sources[%d]", i)
		if !ods.Valid(s.ODS) {
			bad("%s.ods %q: not an ODS code", where, s.ODS)
		}
		if sources[s.ODS] {
			bad("%s.ods %q: listed twice", where, s.ODS)
		}
		sources[s.ODS] = true
		checkKey(where+".apiKey", s.APIKey)
		if len(s.Contact) > 200 {
			bad("%s.contact: at most 200 characters", where)
		}
	}
	if len(c.Inputs) == 0 {
		bad("inputs: at least one is required, or nothing can publish: for POST /v1/events write\n  inputs:\n    - cloudevents: {}")
	}
	for i, in := range c.Inputs {
		where := fmt.Sprintf("inputs[%d].%s", i, in.Type)
		if in.Config == nil {
			bad("%s: not decoded: build configurations with Load or Parse", where)
			continue
		}
		if err := in.Config.Validate(); err != nil {
			errs = append(errs, prefixed(where, err)...)
		}
		if b, ok := in.Config.(connector.BoundConfig); ok {
			for _, org := range b.Organisations() {
				if !sources[org] {
					bad("%s.source %q: must be one of sources[].ods", where, org)
				}
			}
		}
		if l, ok := in.Config.(connector.LabellingConfig); ok {
			if policy, err := c.Consent.Policy(); err == nil { // an invalid policy is reported below
				reported := map[string]bool{}
				for _, cat := range l.Labels() {
					if !policy.Sensitive(cat) && !reported[cat] {
						reported[cat] = true
						bad("%s.sensitivity: category %q is not sensitive in the consent policy, so it would restrict nothing: add it to consent.extraSensitiveCategories", where, cat)
					}
				}
			}
		}
		if l, ok := in.Config.(connector.ListenerConfig); ok {
			for _, a := range l.ListenAddrs() {
				if connector.ListenAddr(a) == nil { // a bad one is the connector's Validate's to report
					listen(where+".addr", a)
				}
			}
		}
	}
	recipients := map[string]bool{}
	subIDs := map[string]bool{}
	for i, r := range c.Recipients {
		where := fmt.Sprintf("recipients[%d]", i)
		for _, e := range r.Check() {
			errs = append(errs, fmt.Errorf("%s%w", where, e))
		}
		if recipients[r.ODS] && ods.Valid(r.ODS) {
			bad("%s.ods %q: listed twice", where, r.ODS)
		}
		recipients[r.ODS] = true
		keyFields := r.Keys()
		for _, field := range slices.Sorted(maps.Keys(keyFields)) {
			dupKey(where+field, keyFields[field])
		}
		mine := map[string]bool{}
		for j, s := range r.Subscriptions {
			if subIDs[s.ID] && !mine[s.ID] {
				bad("%s.subscriptions[%d].id %q: used twice", where, j, s.ID)
			}
			mine[s.ID] = true
		}
		for id := range mine {
			subIDs[id] = true
		}
	}
	if _, err := c.Consent.Policy(); err != nil {
		bad("consent: %v", err)
	}
	if w := c.Consent.WithheldDischarge; w != "notice" && w != "none" {
		bad("consent.withheldDischarge %q: notice or none", w)
	}
	for _, d := range []struct {
		name string
		v    Duration
		min  time.Duration
	}{
		{"events.maxFutureSkew", c.Events.MaxFutureSkew, time.Second},
		{"events.flagOlderThan", c.Events.FlagOlderThan, time.Minute},
		{"retention.events", c.Retention.Events, Day},
		{"retention.audit", c.Retention.Audit, Day},
		{"retention.outboxWindow", c.Retention.OutboxWindow, 0},
		{"retention.deadLetterWindow", c.Retention.DeadLetterWindow, 0},
		{"retention.heldWindow", c.Retention.HeldWindow, 0},
		{"retention.followUps", c.Retention.FollowUps, Day},
		{"retention.sweepInterval", c.Retention.SweepInterval, 100 * time.Millisecond},
	} {
		if d.v.D() < d.min || d.v < 0 {
			bad("%s: at least %v", d.name, Duration(d.min))
		}
	}
	if err := c.Delivery.Validate(); err != nil {
		errs = append(errs, prefixed("delivery", err)...)
	}
	return errors.Join(errs...)
}

// operatorID is the shape of an operator id; ten digits (an NHS number's
// shape) are refused by the check after it.
var (
	operatorID = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)
	tenDigits  = regexp.MustCompile(`^[0-9]{10}$`)
)

// prefixed returns each of err's joined errors prefixed with where.
func prefixed(where string, err error) []error {
	var out []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, prefixed(where, e)...)
		}
		return out
	}
	return []error{fmt.Errorf("%s: %w", where, err)}
}
