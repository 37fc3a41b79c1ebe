package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/connectors/cloudevents"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/feed"
	"github.com/carehub/carehub/connectors/fhirin"
	"github.com/carehub/carehub/connectors/fhirout"
	"github.com/carehub/carehub/connectors/mllp"
	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
	"github.com/carehub/carehub/connectors/webhook"
	"github.com/carehub/carehub/hub/config"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var reg = all.Registry()

// parse is config.Parse with every registered connector.
func parse(b []byte) (*config.Config, error) { return config.Parse(b, reg) }

// hook returns a recipient's webhook section.
func hook(r config.Recipient) *webhook.Config { return r.Sink.Config.(*webhook.Config) }

// ignore leaves out what go-cmp cannot see into: the factories the
// sections were decoded by.
var ignore = cmpopts.IgnoreUnexported(config.Config{}, config.Input{}, config.Recipient{}, config.Sink{})

// The example deployment's file, relative to this package's directory.
const examplePath = "../../deploy/examples/carehub.yaml"

func TestLoadExample(t *testing.T) {
	got, err := config.Load(examplePath, reg)
	if err != nil {
		t.Fatalf("Load(%s): %v", examplePath, err)
	}
	allTypes := []string{"admission", "discharge", "careplan", "admission-cancelled", "discharge-cancelled", "patient-updated", "patient-merged",
		"discharge-pending", "discharge-pending-cancelled"}
	want := &config.Config{
		HTTP:    config.HTTP{Addr: "127.0.0.1:8080", MaxBodyBytes: 1048576},
		DataDir: "./data",
		Kafka: config.Kafka{
			EmbeddedAddr:      "127.0.0.1:9092",
			Partitions:        6,
			ReplicationFactor: 1, // default for the embedded broker
			Linger:            config.DefaultLinger,
			PublishTimeout:    config.DefaultPublishTimeout,
		},
		Pseudonym: connector.SecretValue("demo-pseudonym-key-change-me"),
		Admin: config.Admin{APIKey: connector.SecretValue("demo-admin-key"),
			Operators: []config.Operator{{ID: "ig-lead", APIKey: connector.SecretValue("demo-ig-lead-key")}}},
		Sources: []config.Source{
			{ODS: "RX1", Name: "Example NHS Trust (demo)", APIKey: connector.SecretValue("demo-rx1-key"), Contact: "Records team, 0300 000 0000 (demo)"},
			{ODS: "VM123", Name: "Example Care Home digital social care record (demo)", APIKey: connector.SecretValue("demo-vm123-key")},
		},
		Inputs: []config.Input{
			{Type: "cloudevents", Config: &cloudevents.Config{MaxBatchEvents: 1000}},
			{Type: "mllp", Config: &mllp.Config{Addr: "127.0.0.1:2575", Source: "RX1", MaxFrameBytes: 1048576, ReadTimeout: time.Minute,
				IdleTimeout: 10 * time.Minute, DuplicateWindow: 24 * time.Hour, ProcessingID: "P", MaxDuplicates: mllp.DefaultMaxDuplicates,
				MaxConns: mllp.DefaultMaxConns, MaxConnsPerPeer: mllp.DefaultMaxConnsPerPeer, DrainTimeout: mllp.DefaultDrainTimeout, ProcessTimeout: mllp.DefaultProcessTimeout,
				Sensitivity: exampleSensitivity()}},
			{Type: "fhir", Config: &fhirin.Config{Encounter: true}},
		},
		Recipients: []config.Recipient{
			{
				ODS: "A81001", Name: "Example GP practice (demo)", Role: "gp-practice",
				Sink:          config.Sink{Type: "webhook", Config: &webhook.Config{URL: "http://127.0.0.1:9101/events", Secret: connector.SecretValue("whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE="), Timeout: 10 * time.Second}}, // timeout: default
				Subscriptions: []config.Subscription{{ID: "a81001-registered-patients", Basis: "registered-gp", Types: allTypes}},
			},
			{
				ODS: "VM123", Name: "Example Care Home (demo)", Role: "social-care",
				Sink: config.Sink{Type: "webhook", Config: &webhook.Config{URL: "http://127.0.0.1:9102/events", Secret: connector.SecretValue("whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw=="), Timeout: 10 * time.Second}}, // timeout: default
				Subscriptions: []config.Subscription{
					{ID: "vm123-residents", Basis: "patient-list", Types: []string{"admission", "transfer", "discharge", "admission-cancelled",
						"discharge-cancelled", "transfer-cancelled", "discharge-pending", "discharge-pending-cancelled", "patient-updated", "patient-merged"}},
					{ID: "vm123-discharges-to-us", Basis: "discharge-destination",
						Types: []string{"admission", "discharge", "discharge-pending", "discharge-pending-cancelled"}}},
			},
			{
				ODS: "CN001", Name: "Example community nursing team (demo)", Role: "community", APIKey: connector.SecretValue("demo-cn001-key"),
				Sink: config.Sink{Type: "webhook", Config: &webhook.Config{URL: "http://127.0.0.1:9103/events", Secret: connector.SecretValue("whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jb21tdW5pdHktQ04wMDE="), Timeout: 10 * time.Second}}, // timeout: default
				Subscriptions: []config.Subscription{{ID: "cn001-caseload", Basis: "patient-list",
					Types: []string{"admission", "transfer", "discharge", "admission-cancelled", "discharge-cancelled", "transfer-cancelled",
						"patient-class-changed", "discharge-pending", "discharge-pending-cancelled", "patient-updated", "patient-merged"}}},
			},
			{
				ODS: "B82005", Name: "Example polling GP practice (demo)", Role: "gp-practice",
				Sink: config.Sink{Type: "feed", Config: &feed.Config{APIKey: connector.SecretValue("demo-b82005-key"),
					MaxEvents: 100, MaxWait: time.Minute, Heartbeat: 15 * time.Second}},
				Subscriptions: []config.Subscription{{ID: "b82005-registered-patients", Basis: "registered-gp", Types: allTypes}},
			},
			{
				ODS: "RYJ", Name: "Example hospital EPR (demo)", Role: "hospital",
				Sink:          config.Sink{Type: "fhir", Config: &fhirout.Config{URL: "http://127.0.0.1:9104/fhir", Mode: "message", Timeout: 10 * time.Second}},
				Subscriptions: []config.Subscription{{ID: "ryj-named-patients", Basis: "discharge-destination", Types: []string{"admission", "discharge", "discharge-pending", "discharge-pending-cancelled"}}},
			},
		},
		Delivery: connector.Retry{MinBackoff: 200 * time.Millisecond, MaxBackoff: 30 * time.Second},
		Consent: config.Consent{ConfidentialAllow: []string{"registered-gp"},
			ExtraSensitiveCategories: []string{"hiv", "substance-misuse", "termination-of-pregnancy"},
			WithheldDischarge:        "notice"},
		Ingest: config.Ingest{DuplicateWindow: 24 * time.Hour},
		Events: config.Events{MaxFutureSkew: config.Duration(5 * time.Minute), FlagOlderThan: config.Duration(3 * config.Day)},
		Retention: config.Retention{Events: config.Duration(8 * config.Year), Audit: config.Duration(8 * config.Year),
			OutboxWindow: config.Duration(7 * config.Day), DeadLetterWindow: config.Duration(30 * config.Day), HeldWindow: config.Duration(30 * config.Day),
			FollowUps: config.Duration(2 * config.Year), SweepInterval: config.Duration(time.Hour)},
	}
	if diff := cmp.Diff(want, got, ignore); diff != "" {
		t.Errorf("Load(%s) (-want +got):\n%s", examplePath, diff)
	}
}

func TestLoad(t *testing.T) {
	// A relative patient list is found beside the configuration, wherever
	// the hub runs; Parse, which has no file, takes it from the working
	// directory.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "list.txt"), []byte("9990000018\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yml := minimal + `
  - ods: CN001
    role: community
    webhook: {url: "https://cn.example/", secret: {value: whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM=}}
    subscriptions: [{basis: patient-list, patientList: list.txt, types: [discharge]}]
`
	path := filepath.Join(dir, "carehub.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path, reg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := c.Recipients[len(c.Recipients)-1].Subscriptions[0].PatientList, filepath.Join(dir, "list.txt"); got != want {
		t.Errorf("patientList:\n\tgot  %v\n\twant %v", got, want)
	}
	if c, err := parse([]byte(yml)); err != nil || c.Recipients[len(c.Recipients)-1].Subscriptions[0].PatientList != "list.txt" {
		t.Errorf("Parse: got %v, want the list left relative to the working directory", err)
	}
	if _, err := config.Load(filepath.Join(t.TempDir(), "missing.yaml"), reg); err == nil || !strings.Contains(err.Error(), "reading config") {
		t.Errorf("Load(missing file):\n\tgot  %v\n\twant an error about reading config", err)
	}
}

// minimal is the smallest valid configuration; tests append to it or edit it.
const minimal = `
pseudonymKey: {value: 0123456789abcdef}
sources:
  - ods: RX1
    apiKey: {value: rx1-key-123}
inputs:
  - cloudevents: {}
recipients:
  - ods: A81001
    role: gp-practice
    webhook: {url: "https://gp.example/events", secret: {value: whsec_Z3Atc2VjcmV0LTEtZm9yLXRoZS1jb25maWctdGVzdHM=}}
    subscriptions:
      - basis: registered-gp
        types: [admission]
`

func TestDefaults(t *testing.T) {
	c, err := parse([]byte(minimal))
	if err != nil {
		t.Fatalf("Parse(minimal): %v", err)
	}
	tests := []struct {
		field string
		got   any
		want  any
	}{
		{"http.addr", c.HTTP.Addr, "127.0.0.1:8080"},
		{"http.maxBodyBytes", c.HTTP.MaxBodyBytes, int64(1 << 20)},
		{"inputs[0].cloudevents.maxBatchEvents", c.Inputs[0].Config.(*cloudevents.Config).MaxBatchEvents, 1000},
		{"dataDir", c.DataDir, "./data"},
		{"kafka.embeddedAddr", c.Kafka.EmbeddedAddr, "127.0.0.1:9092"},
		{"kafka.partitions", c.Kafka.Partitions, 6},
		{"kafka.replicationFactor", c.Kafka.ReplicationFactor, 1},
		{"delivery.minBackoff", c.Delivery.MinBackoff, 200 * time.Millisecond},
		{"delivery.maxBackoff", c.Delivery.MaxBackoff, 30 * time.Second},
		{"recipients[0].webhook.timeout", hook(c.Recipients[0]).Timeout, 10 * time.Second},
		{"recipients[0].subscriptions[0].id", c.Recipients[0].Subscriptions[0].ID, "A81001-registered-gp"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("Parse(minimal) %s:\n\tgot  %v\n\twant %v", tt.field, tt.got, tt.want)
		}
	}

	// With an external cluster the replication factor defaults to 3.
	c, err = parse([]byte(minimal + "kafka: {brokers: [k1:9092, k2:9092, k3:9092]}\n"))
	if err != nil {
		t.Fatalf("Parse(minimal with brokers): %v", err)
	}
	if got, want := c.Kafka.ReplicationFactor, 3; got != want {
		t.Errorf("Parse(minimal with brokers) kafka.replicationFactor:\n\tgot  %v\n\twant %v", got, want)
	}

	// Given values are kept.
	c, err = parse([]byte(minimal + "http: {addr: ':9000', maxBodyBytes: 4096}\ndelivery: {minBackoff: 1s, maxBackoff: 2s}\n"))
	if err != nil {
		t.Fatalf("Parse(minimal with values): %v", err)
	}
	if got, want := c.HTTP, (config.HTTP{Addr: ":9000", MaxBodyBytes: 4096}); got != want {
		t.Errorf("Parse(minimal with values) http:\n\tgot  %+v\n\twant %+v", got, want)
	}
	if got, want := c.Delivery, (connector.Retry{MinBackoff: time.Second, MaxBackoff: 2 * time.Second}); got != want {
		t.Errorf("Parse(minimal with values) delivery:\n\tgot  %+v\n\twant %+v", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear in the error
	}{
		{"unknown top-level key", minimal + "bogusKey: 1\n", []string{"bogusKey"}},
		{"unknown nested key", minimal + "http: {adress: ':80'}\n", []string{"adress"}},
		{"unknown secret form", strings.Replace(minimal, "{value: 0123456789abcdef}", "{vault: x}", 1), []string{"vault"}},
		{"wrong type", minimal + "kafka: {partitions: many}\n", []string{"many"}},
		{"empty document: every problem listed", "", []string{"pseudonymKey: required"}},
		{"repeated top-level key", minimal + "dataDir: a\ndataDir: b\n", []string{"dataDir"}},
	}
	for _, tt := range tests {
		_, err := parse([]byte(tt.yaml))
		if err == nil {
			t.Errorf("Parse(%s): got no error", tt.name)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%s):\n\tgot  %v\n\twant an error naming %q", tt.name, err, w)
			}
		}
	}
}

func TestDuplicateAPIKeys(t *testing.T) {
	const dupKey = "shared-key-4f7a9c" // a secret: must not be echoed
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"two sources", `
pseudonymKey: {value: 0123456789abcdef}
sources:
  - {ods: RX1, apiKey: {value: ` + dupKey + `}}
  - {ods: RX2, apiKey: {value: ` + dupKey + `}}
`, "sources[1].apiKey: the same API key is already used by sources[0].apiKey"},
		{"source and admin", `
pseudonymKey: {value: 0123456789abcdef}
admin: {apiKey: {value: ` + dupKey + `}}
sources:
  - {ods: RX1, apiKey: {value: ` + dupKey + `}}
`, "sources[0].apiKey: the same API key is already used by admin.apiKey"},
	}
	for _, tt := range tests {
		_, err := parse([]byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%s):\n\tgot  %v\n\twant an error containing %q", tt.name, err, tt.want)
			continue
		}
		if strings.Contains(err.Error(), dupKey) {
			t.Errorf("Parse(%s): the error echoes the API key: %v", tt.name, err)
		}
	}
}

// TestValidateReportsEveryProblem feeds one configuration with many mistakes
// and checks that each one is named in the single error.
func TestValidateReportsEveryProblem(t *testing.T) {
	const urlCanary = "9991234567" // a webhook URL may hold a token or an identifier: never echoed
	bad := `
http: {addr: "no-port", maxBodyBytes: 10}
kafka: {partitions: -1, brokers: [k1:9092], syncWrites: true, minFreeBytes: 1000}
admin: {apiKey: {env: CAREHUB_TEST_UNSET_ADMIN_KEY}}
sources:
  - {ods: rx1, apiKey: {value: a-key-123}}
  - {ods: RX2}
  - {ods: RX2, apiKey: {value: b-key-123, env: B}}
recipients:
  - ods: A81001
    role: dentist
    webhook: {url: "ftp://gp.example/events?nhs=` + urlCanary + `", secret: {value: short}}
    subscriptions:
      - {id: s1, basis: postcode, types: [admission, birthday]}
      - {id: s1, basis: registered-gp}
  - ods: A81001
    role: hospital
  - ods: B1
    role: community
    webhook: {url: "https://b.example/", secret: {}}
delivery: {minBackoff: 10s, maxBackoff: 1s}
ingest: {duplicateWindow: 10s}
`
	_, err := parse([]byte(bad))
	if err == nil {
		t.Fatal("Parse(bad): got no error")
	}
	msg := err.Error()
	for _, want := range []string{
		`http.addr "no-port"`,
		"http.maxBodyBytes must be at least 1024",
		"kafka.syncWrites applies to the embedded broker only",
		"kafka.minFreeBytes applies to the embedded broker only",
		"kafka.partitions must be at least 1",
		"ingest.duplicateWindow must be at least 1m",
		"pseudonymKey: required",
		"admin.apiKey: environment variable CAREHUB_TEST_UNSET_ADMIN_KEY is not set",
		`sources[0].ods "rx1": not an ODS code`,
		"sources[1].apiKey: no value, file or env given",
		`sources[2].ods "RX2": listed twice`,
		"sources[2].apiKey: give only one of value, file and env",
		`recipients[0].role "dentist"`,
		"recipients[0].webhook: url: an absolute http or https URL is required",
		"recipients[0].webhook: secret: a webhook secret is whsec_ followed by base64, the Standard Webhooks form its libraries load; make one with: echo \"whsec_$(openssl rand -base64 32)\"",
		`recipients[0].subscriptions[0].basis: unknown basis "postcode"`,
		`recipients[0].subscriptions[0].types: unknown event type "birthday"`,
		`recipients[0].subscriptions[1].id "s1": used twice`,
		"recipients[0].subscriptions[1].types: at least one event type is required",
		`recipients[1].ods "A81001": listed twice`,
		"recipients[1]: a delivery section is required",
		"recipients[1]: at least one subscription is required",
		`recipients[2].ods "B1": not an ODS code`,
		"recipients[2].webhook: secret: no value, file or env given",
		"delivery: minBackoff must not exceed maxBackoff",
		"inputs: at least one is required",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("Parse(bad): the error does not mention %q", want)
		}
	}
	if strings.Contains(msg, urlCanary) {
		t.Errorf("Parse(bad): the error echoes the webhook URL's query: %v", err)
	}
	if t.Failed() {
		t.Logf("the whole error:\n%v", err)
	}
}

func TestValidateSmallChecks(t *testing.T) {
	listSub := func(c *config.Config, basis, file string) {
		c.Recipients[0].Subscriptions[0].Basis = basis
		c.Recipients[0].Subscriptions[0].PatientList = file
	}
	tests := []struct {
		name string
		edit func(c *config.Config)
		want string // "" means valid
	}{
		{"minimal is valid", func(*config.Config) {}, ""},
		{"short pseudonym key", func(c *config.Config) { c.Pseudonym = connector.SecretValue("0123456789abcde") }, "pseudonymKey: must be at least 16 bytes"},
		{"pseudonym key from missing env", func(c *config.Config) { c.Pseudonym = connector.Secret{Env: "CAREHUB_TEST_UNSET_PSEUDONYM"} }, "pseudonymKey: environment variable"},
		{"embedded addr without port", func(c *config.Config) { c.Kafka.EmbeddedAddr = "localhost" }, `kafka.embeddedAddr "localhost"`},
		{"http addr port out of range", func(c *config.Config) { c.HTTP.Addr = "127.0.0.1:80800" },
			`http.addr "127.0.0.1:80800": the port is not a number from 0 to 65535`},
		{"brokers skip embedded addr", func(c *config.Config) {
			c.Kafka.Brokers = []string{"k1:9092"}
			c.Kafka.EmbeddedAddr = "not checked"
		}, ""},
		{"webhook url relative", func(c *config.Config) { hook(c.Recipients[0]).URL = "/events" }, "recipients[0].webhook: url"},
		{"webhook url without host", func(c *config.Config) { hook(c.Recipients[0]).URL = "https:///events" }, "recipients[0].webhook: url"},
		{"every event type known", func(c *config.Config) {
			c.Recipients[0].Subscriptions[0].Types = []string{"admission", "transfer", "discharge", "careplan",
				"admission-cancelled", "discharge-cancelled", "patient-updated", "patient-merged",
				"discharge-pending", "discharge-pending-cancelled", "transfer-cancelled", "patient-class-changed"}
		}, ""},
		{"equal backoffs", func(c *config.Config) { c.Delivery.MinBackoff, c.Delivery.MaxBackoff = time.Second, time.Second }, ""},
		{"patient list", func(c *config.Config) { listSub(c, "patient-list", "caseload.txt") }, ""},
		{"patient list through the API", func(c *config.Config) { listSub(c, "patient-list", "") }, ""},
		{"two patient list files", func(c *config.Config) {
			listSub(c, "patient-list", "a.txt")
			c.Recipients[0].Subscriptions = append(c.Recipients[0].Subscriptions,
				config.Subscription{ID: "second", Basis: "patient-list", Types: []string{"discharge"}, PatientList: "b.txt"})
		}, "recipients[0].subscriptions[1].patientList: a recipient has one patient list, and another subscription names another file"},
		{"one file for two subscriptions", func(c *config.Config) {
			listSub(c, "patient-list", "a.txt")
			c.Recipients[0].Subscriptions = append(c.Recipients[0].Subscriptions,
				config.Subscription{ID: "second", Basis: "patient-list", Types: []string{"discharge"}, PatientList: "a.txt"})
		}, ""},
		{"subscription id not for a path", func(c *config.Config) { c.Recipients[0].Subscriptions[0].ID = "a/b" },
			"recipients[0].subscriptions[0].id: 1 to 64 letters, digits, '-', '.' or '_'"},
		{"recipient key too short", func(c *config.Config) { c.Recipients[0].APIKey = connector.SecretValue("short") },
			"recipients[0].apiKey: API keys must be at least 8 bytes"},
		{"recipient key used by a source", func(c *config.Config) { c.Recipients[0].APIKey = connector.SecretValue("rx1-key-123") },
			"recipients[0].apiKey: the same API key is already used by sources[0].apiKey"},
		{"subscription id of another recipient", func(c *config.Config) {
			other := c.Recipients[0]
			other.ODS = "A81002"
			c.Recipients = append(c.Recipients, other)
		}, `recipients[1].subscriptions[0].id "A81001-registered-gp": used twice`},
		{"patient list on another basis", func(c *config.Config) { listSub(c, "registered-gp", "caseload.txt") },
			"recipients[0].subscriptions[0].patientList: only a patient-list subscription has one"},
		{"care relationships not matched yet", func(c *config.Config) { listSub(c, "care-relationship", "") },
			`recipients[0].subscriptions[0].basis: basis "care-relationship" cannot be matched yet (no source records care relationships): use one of registered-gp, discharge-destination, patient-list`},
		{"http and MLLP on one port", func(c *config.Config) {
			c.Sources[0].ODS = "RX1"
			c.Inputs = append(c.Inputs, config.Input{Type: "mllp", Config: &mllp.Config{Addr: c.HTTP.Addr, Source: "RX1", MaxFrameBytes: 1 << 20, ProcessingID: "P"}})
		}, `inputs[1].mllp.addr "127.0.0.1:8080": used by http.addr`},
		{"no inputs", func(c *config.Config) { c.Inputs = nil }, "inputs: at least one is required, or nothing can publish"},
	}
	for _, tt := range tests {
		c, err := parse([]byte(minimal))
		if err != nil {
			t.Fatalf("Parse(minimal): %v", err)
		}
		tt.edit(c)
		err = c.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Validate(%s):\n\tgot  %v\n\twant nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Validate(%s):\n\tgot  %v\n\twant an error containing %q", tt.name, err, tt.want)
		}
	}
}

// Secrets given as file and env in YAML resolve through Parse, once.
func TestParseSecretForms(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "pseudonym")
	if err := os.WriteFile(keyFile, []byte("pseudonym-key-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CAREHUB_TEST_RX1_KEY", "rx1-key-from-env")
	y := strings.Replace(minimal, "{value: 0123456789abcdef}", "{file: "+keyFile+"}", 1)
	y = strings.Replace(y, "{value: rx1-key-123}", "{env: CAREHUB_TEST_RX1_KEY}", 1)
	c, err := parse([]byte(y))
	if err != nil {
		t.Fatalf("Parse(file and env secrets): %v", err)
	}
	// Read once: changing the file and the variable afterwards changes nothing.
	_ = os.WriteFile(keyFile, []byte("changed-afterwards-0123456789\n"), 0o600)
	t.Setenv("CAREHUB_TEST_RX1_KEY", "changed-afterwards")
	for _, tt := range []struct {
		name string
		s    connector.Secret
		want string
	}{
		{"pseudonymKey", c.Pseudonym, "pseudonym-key-from-file"},
		{"sources[0].apiKey", c.Sources[0].APIKey, "rx1-key-from-env"},
	} {
		if got, err := tt.s.Reveal(); err != nil || got != tt.want {
			t.Errorf("%s.Reveal():\n\tgot  %q, %v\n\twant %q, nil", tt.name, got, err, tt.want)
		}
	}
}

// exampleSensitivity is the example deployment's sensitivity mapping: the
// NHS treatment function codes of mental health, sexual health and
// addiction services, and the demo trust's clinics for the services that
// have no treatment function code of their own.
func exampleSensitivity() []adt.SensitivityRule {
	var out []adt.SensitivityRule
	for _, r := range []struct {
		code string
		cats []string
	}{
		{"360", []string{"sexual-health"}}, {"504", []string{"sexual-health"}},
		{"710", []string{"mental-health"}}, {"711", []string{"mental-health"}}, {"712", []string{"mental-health"}},
		{"713", []string{"mental-health"}}, {"715", []string{"mental-health"}}, {"720", []string{"mental-health"}},
		{"722", []string{"mental-health"}}, {"723", []string{"mental-health"}}, {"724", []string{"mental-health"}},
		{"725", []string{"mental-health"}}, {"726", []string{"mental-health", "substance-misuse"}},
		{"730", []string{"mental-health"}}, {"721", []string{"substance-misuse"}},
	} {
		out = append(out, adt.SensitivityRule{TreatmentFunction: r.code, Categories: r.cats})
	}
	return append(out,
		adt.SensitivityRule{Location: "HIVCLINIC", Categories: []string{"hiv", "sexual-health"}},
		adt.SensitivityRule{Location: "GIC", Categories: []string{"gender-identity"}},
		adt.SensitivityRule{Location: "TOPCLINIC", Categories: []string{"termination-of-pregnancy", "sexual-health"}})
}

func TestConsentPolicyIsValidated(t *testing.T) {
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	const example = "consent:\n  extraSensitiveCategories: [hiv, substance-misuse, termination-of-pregnancy]\n"
	if !strings.Contains(string(b), example) {
		t.Fatalf("the example's consent section does not start %q", example)
	}
	bad := strings.Replace(string(b), example, "consent:\n  extraSensitiveCategories: [\"Not A Code\"]\n  confidentialAllow: [best-friend]\n", 1)
	_, err = parse([]byte(bad))
	if err == nil || !strings.Contains(err.Error(), "consent:") {
		t.Fatalf("Parse with an invalid consent policy: got %v, want an error naming consent", err)
	}
}

// TestSensitivityCategoriesMustBeSensitive: an MLLP listener's sensitivity
// rule that names a category the consent policy does not count as
// sensitive would label events to no effect: the configuration is refused.
func TestSensitivityCategoriesMustBeSensitive(t *testing.T) {
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	const example = "consent:\n  extraSensitiveCategories: [hiv, substance-misuse, termination-of-pregnancy]\n"
	bad := strings.Replace(string(b), example, "consent:\n  extraSensitiveCategories: [hiv]\n", 1)
	_, err = parse([]byte(bad))
	for _, want := range []string{`inputs[1].mllp.sensitivity: category "substance-misuse" is not sensitive`, `category "termination-of-pregnancy"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want an error with %s", err, want)
		}
	}
	if err != nil && strings.Count(err.Error(), `"substance-misuse"`) != 1 {
		t.Errorf("a category named by several rules is reported more than once: %v", err)
	}
	if _, err := parse(b); err != nil {
		t.Errorf("the example: %v", err)
	}
}

func TestIssue11SettingsAreValidated(t *testing.T) {
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ from, to, want string }{
		{"withheldDischarge: notice", "withheldDischarge: shout", "consent.withheldDischarge"},
		{"maxFutureSkew: 5m", "maxFutureSkew: 500ms", "events.maxFutureSkew"},
		{"followUps: 2y", "followUps: 2h", "retention.followUps"},
		{"audit: 8y", "audit: eight years", "not a duration"},
		{"id: ig-lead", "id: \"9990000018\"", "admin.operators[0].id"},
		{"apiKey: {value: demo-ig-lead-key}", "apiKey: {value: demo-rx1-key}", "already used"},
	} {
		bad := strings.Replace(string(b), tt.from, tt.to, 1)
		if bad == string(b) {
			t.Fatalf("%s not in the example", tt.from)
		}
		if _, err := parse([]byte(bad)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error naming %s", tt.to, err, tt.want)
		}
	}
	for _, tt := range []struct {
		in   string
		want time.Duration
		out  string
	}{{"8y", 8 * config.Year, "8y"}, {"2w", 2 * config.Week, "2w"}, {"30d", 30 * config.Day, "30d"}, {"90s", 90 * time.Second, "1m30s"}, {"72h", 3 * config.Day, "3d"}} {
		d, err := config.ParseDuration(tt.in)
		if err != nil || d.D() != tt.want || d.String() != tt.out {
			t.Errorf("ParseDuration(%q) = %v (%s), %v; want %v (%s)", tt.in, d.D(), d, err, tt.want, tt.out)
		}
	}
}
