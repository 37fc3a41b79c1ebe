// Package config loads carehub's YAML configuration strictly: unknown keys
// are errors, defaults are applied in one place, and Validate reports every
// problem at once so that a hub fails at start, never half-way through a day.
//
// Secrets (API keys, webhook secrets, the pseudonym key) are Secret values:
// each is given inline (demo only), from a file, or from an environment
// variable. A real deployment keeps them out of the committed file:
//
//	apiKey: {file: /run/secrets/rx1-key}
//	secret: {env: CAREHUB_GP_SECRET}
package config

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/patientlist"
	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration of one carehub process.
type Config struct {
	HTTP       HTTP        `yaml:"http"`
	DataDir    string      `yaml:"dataDir"`
	Kafka      Kafka       `yaml:"kafka"`
	Pseudonym  Secret      `yaml:"pseudonymKey"`
	Admin      Admin       `yaml:"admin"`
	Sources    []Source    `yaml:"sources"`
	Recipients []Recipient `yaml:"recipients"`
	Delivery   Delivery    `yaml:"delivery"`
	Consent    Consent     `yaml:"consent"`
	MLLP       []MLLP      `yaml:"mllp"`
}

// MLLP is one HL7 v2 MLLP listener (connectors/mllp), bound to one source
// organisation: every message must come from it (MSH-4), and with TLS and
// a client CA, the client certificate must name it (CN, O or OU).
type MLLP struct {
	Addr   string `yaml:"addr"`   // default 127.0.0.1:2575
	Source string `yaml:"source"` // one of sources[].ods
	// MaxFrameBytes is the largest message accepted (default 1 MiB).
	MaxFrameBytes int `yaml:"maxFrameBytes"`
	// ReadTimeout bounds receiving a frame once started and sending its
	// acknowledgement (default 60s); IdleTimeout closes a silent connection
	// (default 10m).
	ReadTimeout time.Duration `yaml:"readTimeout"`
	IdleTimeout time.Duration `yaml:"idleTimeout"`
	// DuplicateWindow: a resend within it is acknowledged, not published
	// again (default 24h).
	DuplicateWindow time.Duration `yaml:"duplicateWindow"`
	// ProcessingID is the MSH-11 accepted: P (default), T or D.
	ProcessingID string `yaml:"processingId"`
	// DestinationFields are HL7 terse paths to the discharge destination's
	// ODS code, tried in order (default [PV1-37.1]).
	DestinationFields []string `yaml:"destinationFields"`
	TLS               *MLLPTLS `yaml:"tls"`
}

// MLLPTLS makes an MLLP listener speak TLS: the server's certificate and key
// (PEM files), and optionally the CA whose client certificates it requires.
type MLLPTLS struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"clientCA"`
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

// Consent is the deployment's consent policy (see package consent).
type Consent struct {
	// ExtraSensitiveCategories are category codes treated as sensitive in
	// addition to the built-in ones.
	ExtraSensitiveCategories []string `yaml:"extraSensitiveCategories"`
	// ConfidentialAllow lists the bases on which a confidential patient's
	// events are still shared. Default: [registered-gp].
	ConfidentialAllow []string `yaml:"confidentialAllow"`
}

// HTTP is the API listener.
type HTTP struct {
	Addr         string `yaml:"addr"`
	MaxBodyBytes int64  `yaml:"maxBodyBytes"`
	// MaxBatchEvents caps the events in one batch request.
	MaxBatchEvents int `yaml:"maxBatchEvents"`
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
}

// Admin holds the operator credentials.
type Admin struct {
	APIKey Secret `yaml:"apiKey"`
}

// Source is an organisation allowed to publish events.
type Source struct {
	ODS    string `yaml:"ods"`
	Name   string `yaml:"name"`
	APIKey Secret `yaml:"apiKey"`
}

// Recipient is an organisation that receives events.
type Recipient struct {
	ODS           string         `yaml:"ods"`
	Name          string         `yaml:"name"`
	Role          string         `yaml:"role"`
	Webhook       *Webhook       `yaml:"webhook"`
	Subscriptions []Subscription `yaml:"subscriptions"`
}

// Webhook is a push endpoint.
type Webhook struct {
	URL    string `yaml:"url"`
	Secret Secret `yaml:"secret"`
	// Timeout bounds one attempt.
	Timeout time.Duration `yaml:"timeout"`
}

// Subscription says which events a recipient wants and on what basis.
type Subscription struct {
	ID    string   `yaml:"id"`
	Basis string   `yaml:"basis"`
	Types []string `yaml:"types"`
	// PatientList is the file of the recipient's patients (one NHS number
	// per line; see package patientlist), for basis patient-list only. It is
	// read at start-up and again when the hub is sent SIGHUP.
	PatientList string `yaml:"patientList"`
}

// Delivery tunes the deliverers.
type Delivery struct {
	MinBackoff time.Duration `yaml:"minBackoff"`
	MaxBackoff time.Duration `yaml:"maxBackoff"`
}

// Secret is a value given inline, from a file or from the environment.
// Exactly one of the three is set.
type Secret struct {
	Value string `yaml:"value"`
	File  string `yaml:"file"`
	Env   string `yaml:"env"`
}

// Set reports whether any form is given.
func (s Secret) Set() bool { return s.Value != "" || s.File != "" || s.Env != "" }

// Resolve returns the secret's value.
func (s Secret) Resolve() (string, error) {
	n := 0
	for _, v := range []string{s.Value, s.File, s.Env} {
		if v != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return "", errors.New("no value, file or env given")
	case n > 1:
		return "", errors.New("give only one of value, file and env")
	case s.File != "":
		b, err := os.ReadFile(s.File)
		if err != nil {
			return "", fmt.Errorf("reading secret file: %w", err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("secret file %s is empty", s.File)
		}
		return v, nil
	case s.Env != "":
		v, ok := os.LookupEnv(s.Env)
		if !ok || v == "" {
			return "", fmt.Errorf("environment variable %s is not set", s.Env)
		}
		return v, nil
	}
	return s.Value, nil
}

// Load reads and strictly decodes a YAML file, applies defaults and validates.
// A relative patientList path is taken from the file's directory.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := decode(b)
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
	if err := c.finish(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse strictly decodes YAML (unknown keys are errors), applies defaults and
// validates. A relative patientList path is taken from the working directory.
func Parse(b []byte) (*Config, error) {
	c, err := decode(b)
	if err != nil {
		return nil, err
	}
	if err := c.finish(); err != nil {
		return nil, err
	}
	return c, nil
}

func decode(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	return &c, nil
}

func (c *Config) finish() error {
	c.Defaults()
	return c.Validate()
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:8080"
	}
	if c.HTTP.MaxBodyBytes == 0 {
		c.HTTP.MaxBodyBytes = 1 << 20
	}
	if c.HTTP.MaxBatchEvents == 0 {
		c.HTTP.MaxBatchEvents = 1000
	}
	if c.DataDir == "" {
		c.DataDir = "./data"
	}
	if c.Kafka.EmbeddedAddr == "" {
		c.Kafka.EmbeddedAddr = "127.0.0.1:9092"
	}
	if c.Kafka.Partitions == 0 {
		c.Kafka.Partitions = 6
	}
	if c.Kafka.Linger == 0 {
		c.Kafka.Linger = DefaultLinger
	}
	if c.Kafka.ReplicationFactor == 0 {
		if len(c.Kafka.Brokers) == 0 {
			c.Kafka.ReplicationFactor = 1
		} else {
			c.Kafka.ReplicationFactor = 3
		}
	}
	if c.Consent.ConfidentialAllow == nil {
		c.Consent.ConfidentialAllow = []string{"registered-gp"}
	}
	if c.Delivery.MinBackoff == 0 {
		c.Delivery.MinBackoff = 200 * time.Millisecond
	}
	if c.Delivery.MaxBackoff == 0 {
		c.Delivery.MaxBackoff = 30 * time.Second
	}
	for i := range c.MLLP {
		l := &c.MLLP[i]
		if l.Addr == "" {
			l.Addr = "127.0.0.1:2575"
		}
		if l.MaxFrameBytes == 0 {
			l.MaxFrameBytes = 1 << 20
		}
		if l.ReadTimeout == 0 {
			l.ReadTimeout = 60 * time.Second
		}
		if l.IdleTimeout == 0 {
			l.IdleTimeout = 10 * time.Minute
		}
		if l.DuplicateWindow == 0 {
			l.DuplicateWindow = 24 * time.Hour
		}
		if l.ProcessingID == "" {
			l.ProcessingID = "P"
		}
	}
	for i := range c.Recipients {
		if w := c.Recipients[i].Webhook; w != nil && w.Timeout == 0 {
			w.Timeout = 10 * time.Second
		}
		for j := range c.Recipients[i].Subscriptions {
			s := &c.Recipients[i].Subscriptions[j]
			if s.ID == "" {
				s.ID = fmt.Sprintf("%s-%s", c.Recipients[i].ODS, s.Basis)
			}
		}
	}
}

// DefaultLinger is the default kafka.linger.
const DefaultLinger = 500 * time.Microsecond

// ODSPattern matches an ODS organisation or site code.
var ODSPattern = regexp.MustCompile(`^[A-Z0-9]{3,10}$`)

var (
	roles  = map[string]bool{"gp-practice": true, "hospital": true, "social-care": true, "community": true}
	bases  = map[string]bool{"registered-gp": true, "discharge-destination": true, "patient-list": true}
	eventT = map[string]bool{"admission": true, "transfer": true, "discharge": true, "careplan": true,
		"admission-cancelled": true, "discharge-cancelled": true, "patient-updated": true, "patient-merged": true}
)

// EventTypeName maps a subscription's short type name to the CloudEvents type.
func EventTypeName(short string) string { return "org.carehub." + short + ".v1" }

// Validate reports every problem in the configuration, joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, _, err := net.SplitHostPort(c.HTTP.Addr); err != nil {
		bad("http.addr %q: %v", c.HTTP.Addr, err)
	}
	if c.HTTP.MaxBodyBytes < 1024 {
		bad("http.maxBodyBytes must be at least 1024")
	}
	if len(c.Kafka.Brokers) == 0 {
		if _, _, err := net.SplitHostPort(c.Kafka.EmbeddedAddr); err != nil {
			bad("kafka.embeddedAddr %q: %v", c.Kafka.EmbeddedAddr, err)
		}
	} else if c.Kafka.SyncWrites {
		bad("kafka.syncWrites applies to the embedded broker only, but kafka.brokers is set")
	}
	if c.Kafka.Partitions < 1 {
		bad("kafka.partitions must be at least 1")
	}
	if c.Kafka.Linger < 0 || c.Kafka.Linger > time.Second {
		bad("kafka.linger must be between 0 and 1s")
	}
	if !c.Pseudonym.Set() {
		bad("pseudonymKey: required (the key of the HMAC that pseudonymises NHS numbers)")
	} else if v, err := c.Pseudonym.Resolve(); err != nil {
		bad("pseudonymKey: %v", err)
	} else if len(v) < 16 {
		bad("pseudonymKey: must be at least 16 bytes")
	}
	if c.Admin.APIKey.Set() {
		if _, err := c.Admin.APIKey.Resolve(); err != nil {
			bad("admin.apiKey: %v", err)
		}
	}
	keys := map[string]string{}
	checkKey := func(where string, s Secret) {
		v, err := s.Resolve()
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
	if c.Admin.APIKey.Set() {
		if v, err := c.Admin.APIKey.Resolve(); err == nil {
			keys[v] = "admin.apiKey"
		}
	}
	seenSrc := map[string]bool{}
	for i, s := range c.Sources {
		where := fmt.Sprintf("sources[%d]", i)
		if !ODSPattern.MatchString(s.ODS) {
			bad("%s.ods %q: not an ODS code", where, s.ODS)
		}
		if seenSrc[s.ODS] {
			bad("%s.ods %q: listed twice", where, s.ODS)
		}
		seenSrc[s.ODS] = true
		checkKey(where+".apiKey", s.APIKey)
	}
	seenRcp := map[string]bool{}
	seenSub := map[string]bool{}
	for i, r := range c.Recipients {
		where := fmt.Sprintf("recipients[%d]", i)
		if !ODSPattern.MatchString(r.ODS) {
			bad("%s.ods %q: not an ODS code", where, r.ODS)
		}
		if seenRcp[r.ODS] {
			bad("%s.ods %q: listed twice", where, r.ODS)
		}
		seenRcp[r.ODS] = true
		if !roles[r.Role] {
			bad("%s.role %q: one of gp-practice, hospital, social-care, community", where, r.Role)
		}
		if r.Webhook == nil {
			bad("%s: a webhook is required (the only delivery kind so far)", where)
		} else {
			u, err := url.Parse(r.Webhook.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad("%s.webhook.url: an absolute http or https URL is required", where)
			}
			if v, err := r.Webhook.Secret.Resolve(); err != nil {
				bad("%s.webhook.secret: %v", where, err)
			} else if len(v) < 8 {
				bad("%s.webhook.secret: must be at least 8 bytes", where)
			}
		}
		if len(r.Subscriptions) == 0 {
			bad("%s: at least one subscription is required", where)
		}
		for j, s := range r.Subscriptions {
			sw := fmt.Sprintf("%s.subscriptions[%d]", where, j)
			if seenSub[s.ID] {
				bad("%s.id %q: used twice", sw, s.ID)
			}
			seenSub[s.ID] = true
			if !bases[s.Basis] {
				bad("%s.basis %q: one of registered-gp, discharge-destination, patient-list", sw, s.Basis)
			}
			switch {
			case s.Basis == "patient-list" && s.PatientList == "":
				bad("%s.patientList: a patient-list subscription needs the file of its patients", sw)
			case s.Basis != "patient-list" && s.PatientList != "":
				bad("%s.patientList: only a patient-list subscription has one", sw)
			case s.PatientList != "":
				if _, err := patientlist.ReadFile(s.PatientList); err != nil {
					bad("%s.patientList: %v", sw, err)
				}
			}
			if len(s.Types) == 0 {
				bad("%s.types: at least one event type is required", sw)
			}
			for _, t := range s.Types {
				if !eventT[t] {
					bad("%s.types: unknown event type %q", sw, t)
				}
			}
		}
	}
	if _, err := c.Consent.Policy(); err != nil {
		bad("consent: %v", err)
	}
	if c.Delivery.MinBackoff > c.Delivery.MaxBackoff {
		bad("delivery.minBackoff must not exceed delivery.maxBackoff")
	}
	seenAddr := map[string]bool{}
	for i, l := range c.MLLP {
		where := fmt.Sprintf("mllp[%d]", i)
		if _, _, err := net.SplitHostPort(l.Addr); err != nil {
			bad("%s.addr %q: %v", where, l.Addr, err)
		} else if seenAddr[l.Addr] {
			bad("%s.addr %q: used by another listener", where, l.Addr)
		}
		seenAddr[l.Addr] = true
		if !seenSrc[l.Source] {
			bad("%s.source %q: must be one of sources[].ods", where, l.Source)
		}
		if l.MaxFrameBytes < 1024 || l.MaxFrameBytes > 1<<30 {
			bad("%s.maxFrameBytes must be between 1024 and 1073741824", where)
		}
		if l.ReadTimeout < 0 || l.IdleTimeout < 0 || l.DuplicateWindow < 0 {
			bad("%s: readTimeout, idleTimeout and duplicateWindow must be positive", where)
		}
		if l.ProcessingID != "P" && l.ProcessingID != "T" && l.ProcessingID != "D" {
			bad("%s.processingId %q: one of P, T, D", where, l.ProcessingID)
		}
		for _, f := range l.DestinationFields {
			if _, err := hl7.ParsePath(f); err != nil {
				bad("%s.destinationFields: %v", where, err)
			}
		}
		if t := l.TLS; t != nil {
			if t.Cert == "" || t.Key == "" {
				bad("%s.tls: cert and key are both required", where)
			} else if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
				bad("%s.tls: loading cert and key: %v", where, err)
			}
			if t.ClientCA != "" {
				if b, err := os.ReadFile(t.ClientCA); err != nil {
					bad("%s.tls.clientCA: %v", where, err)
				} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
					bad("%s.tls.clientCA %s: no PEM certificate in it", where, t.ClientCA)
				}
			}
		}
	}
	return errors.Join(errs...)
}
