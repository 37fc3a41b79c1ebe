package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/config"
	"github.com/google/go-cmp/cmp"
)

// The example deployment's file, relative to this package's directory.
const examplePath = "../../deploy/examples/carehub.yaml"

func TestLoadExample(t *testing.T) {
	got, err := config.Load(examplePath)
	if err != nil {
		t.Fatalf("Load(%s): %v", examplePath, err)
	}
	allTypes := []string{"admission", "discharge", "careplan", "admission-cancelled", "discharge-cancelled", "patient-updated", "patient-merged"}
	want := &config.Config{
		HTTP:    config.HTTP{Addr: "127.0.0.1:8080", MaxBodyBytes: 1048576, MaxBatchEvents: 1000},
		DataDir: "./data",
		Kafka: config.Kafka{
			EmbeddedAddr:      "127.0.0.1:9092",
			Partitions:        6,
			ReplicationFactor: 1, // default for the embedded broker
			Linger:            config.DefaultLinger,
		},
		Pseudonym: config.Secret{Value: "demo-pseudonym-key-change-me"},
		Admin:     config.Admin{APIKey: config.Secret{Value: "demo-admin-key"}},
		Sources: []config.Source{
			{ODS: "RX1", Name: "Example NHS Trust (demo)", APIKey: config.Secret{Value: "demo-rx1-key"}},
			{ODS: "VM123", Name: "Example Care Home digital social care record (demo)", APIKey: config.Secret{Value: "demo-vm123-key"}},
		},
		Recipients: []config.Recipient{
			{
				ODS: "A81001", Name: "Example GP practice (demo)", Role: "gp-practice",
				Webhook: &config.Webhook{URL: "http://127.0.0.1:9101/events", Secret: config.Secret{Value: "demo-gp-secret"},
					Timeout: 10 * time.Second}, // default
				Subscriptions: []config.Subscription{{ID: "a81001-registered-patients", Basis: "registered-gp", Types: allTypes}},
			},
			{
				ODS: "VM123", Name: "Example Care Home (demo)", Role: "social-care",
				Webhook: &config.Webhook{URL: "http://127.0.0.1:9102/events", Secret: config.Secret{Value: "demo-carehome-secret"},
					Timeout: 10 * time.Second},
				Subscriptions: []config.Subscription{{ID: "vm123-discharges-to-us", Basis: "discharge-destination", Types: []string{"admission", "discharge"}}},
			},
			{
				ODS: "CN001", Name: "Example community nursing team (demo)", Role: "community",
				Webhook: &config.Webhook{URL: "http://127.0.0.1:9103/events", Secret: config.Secret{Value: "demo-community-secret"},
					Timeout: 10 * time.Second},
				Subscriptions: []config.Subscription{{ID: "cn001-caseload", Basis: "patient-list",
					Types:       []string{"admission", "transfer", "discharge", "admission-cancelled", "discharge-cancelled"},
					PatientList: filepath.Join("..", "..", "deploy", "examples", "cn001-caseload.txt")}}, // relative to the file
			},
		},
		Delivery: config.Delivery{MinBackoff: 200 * time.Millisecond, MaxBackoff: 30 * time.Second},
		Consent:  config.Consent{ConfidentialAllow: []string{"registered-gp"}},
		MLLP: []config.MLLP{{Addr: "127.0.0.1:2575", Source: "RX1", MaxFrameBytes: 1048576, ReadTimeout: time.Minute,
			IdleTimeout: 10 * time.Minute, DuplicateWindow: 24 * time.Hour, ProcessingID: "P"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
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
    webhook: {url: "https://cn.example/", secret: {value: cn-secret-123}}
    subscriptions: [{basis: patient-list, patientList: list.txt, types: [discharge]}]
`
	path := filepath.Join(dir, "carehub.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := c.Recipients[len(c.Recipients)-1].Subscriptions[0].PatientList, filepath.Join(dir, "list.txt"); got != want {
		t.Errorf("patientList:\n\tgot  %v\n\twant %v", got, want)
	}
	if _, err := config.Parse([]byte(yml)); err == nil || !strings.Contains(err.Error(), "open list.txt") {
		t.Errorf("Parse: got %v, want the list looked for in the working directory", err)
	}
	if _, err := config.Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "reading config") {
		t.Errorf("Load(missing file):\n\tgot  %v\n\twant an error about reading config", err)
	}
}

// minimal is the smallest valid configuration; tests append to it or edit it.
const minimal = `
pseudonymKey: {value: 0123456789abcdef}
sources:
  - ods: RX1
    apiKey: {value: rx1-key-123}
recipients:
  - ods: A81001
    role: gp-practice
    webhook: {url: "https://gp.example/events", secret: {value: gp-secret-1}}
    subscriptions:
      - basis: registered-gp
        types: [admission]
`

func TestDefaults(t *testing.T) {
	c, err := config.Parse([]byte(minimal))
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
		{"http.maxBatchEvents", c.HTTP.MaxBatchEvents, 1000},
		{"dataDir", c.DataDir, "./data"},
		{"kafka.embeddedAddr", c.Kafka.EmbeddedAddr, "127.0.0.1:9092"},
		{"kafka.partitions", c.Kafka.Partitions, 6},
		{"kafka.replicationFactor", c.Kafka.ReplicationFactor, 1},
		{"delivery.minBackoff", c.Delivery.MinBackoff, 200 * time.Millisecond},
		{"delivery.maxBackoff", c.Delivery.MaxBackoff, 30 * time.Second},
		{"recipients[0].webhook.timeout", c.Recipients[0].Webhook.Timeout, 10 * time.Second},
		{"recipients[0].subscriptions[0].id", c.Recipients[0].Subscriptions[0].ID, "A81001-registered-gp"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("Parse(minimal) %s:\n\tgot  %v\n\twant %v", tt.field, tt.got, tt.want)
		}
	}

	// With an external cluster the replication factor defaults to 3.
	c, err = config.Parse([]byte(minimal + "kafka: {brokers: [k1:9092, k2:9092, k3:9092]}\n"))
	if err != nil {
		t.Fatalf("Parse(minimal with brokers): %v", err)
	}
	if got, want := c.Kafka.ReplicationFactor, 3; got != want {
		t.Errorf("Parse(minimal with brokers) kafka.replicationFactor:\n\tgot  %v\n\twant %v", got, want)
	}

	// Given values are kept.
	c, err = config.Parse([]byte(minimal + "http: {addr: ':9000', maxBodyBytes: 4096, maxBatchEvents: 5}\ndelivery: {minBackoff: 1s, maxBackoff: 2s}\n"))
	if err != nil {
		t.Fatalf("Parse(minimal with values): %v", err)
	}
	if got, want := c.HTTP, (config.HTTP{Addr: ":9000", MaxBodyBytes: 4096, MaxBatchEvents: 5}); got != want {
		t.Errorf("Parse(minimal with values) http:\n\tgot  %+v\n\twant %+v", got, want)
	}
	if got, want := c.Delivery, (config.Delivery{MinBackoff: time.Second, MaxBackoff: 2 * time.Second}); got != want {
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
		_, err := config.Parse([]byte(tt.yaml))
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
		_, err := config.Parse([]byte(tt.yaml))
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
kafka: {partitions: -1, brokers: [k1:9092], syncWrites: true}
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
`
	_, err := config.Parse([]byte(bad))
	if err == nil {
		t.Fatal("Parse(bad): got no error")
	}
	msg := err.Error()
	for _, want := range []string{
		`http.addr "no-port"`,
		"http.maxBodyBytes must be at least 1024",
		"kafka.syncWrites applies to the embedded broker only",
		"kafka.partitions must be at least 1",
		"pseudonymKey: required",
		"admin.apiKey: environment variable CAREHUB_TEST_UNSET_ADMIN_KEY is not set",
		`sources[0].ods "rx1": not an ODS code`,
		"sources[1].apiKey: no value, file or env given",
		`sources[2].ods "RX2": listed twice`,
		"sources[2].apiKey: give only one of value, file and env",
		`recipients[0].role "dentist"`,
		"recipients[0].webhook.url: an absolute http or https URL is required",
		"recipients[0].webhook.secret: must be at least 8 bytes",
		`recipients[0].subscriptions[0].basis "postcode"`,
		`recipients[0].subscriptions[0].types: unknown event type "birthday"`,
		`recipients[0].subscriptions[1].id "s1": used twice`,
		"recipients[0].subscriptions[1].types: at least one event type is required",
		`recipients[1].ods "A81001": listed twice`,
		"recipients[1]: a webhook is required",
		"recipients[1]: at least one subscription is required",
		`recipients[2].ods "B1": not an ODS code`,
		"recipients[2].webhook.secret: no value, file or env given",
		"delivery.minBackoff must not exceed delivery.maxBackoff",
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
	dir := t.TempDir()
	goodList := filepath.Join(dir, "caseload.txt")
	badList := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(goodList, []byte("# caseload\n9990000018\n999 000 0026\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(badList, []byte("9990000018\n\n9990000019\n"), 0o600); err != nil {
		t.Fatal(err)
	}
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
		{"short pseudonym key", func(c *config.Config) { c.Pseudonym = config.Secret{Value: "0123456789abcde"} }, "pseudonymKey: must be at least 16 bytes"},
		{"pseudonym key from missing env", func(c *config.Config) { c.Pseudonym = config.Secret{Env: "CAREHUB_TEST_UNSET_PSEUDONYM"} }, "pseudonymKey: environment variable"},
		{"embedded addr without port", func(c *config.Config) { c.Kafka.EmbeddedAddr = "localhost" }, `kafka.embeddedAddr "localhost"`},
		{"brokers skip embedded addr", func(c *config.Config) {
			c.Kafka.Brokers = []string{"k1:9092"}
			c.Kafka.EmbeddedAddr = "not checked"
		}, ""},
		{"webhook url relative", func(c *config.Config) { c.Recipients[0].Webhook.URL = "/events" }, "recipients[0].webhook.url"},
		{"webhook url without host", func(c *config.Config) { c.Recipients[0].Webhook.URL = "https:///events" }, "recipients[0].webhook.url"},
		{"every event type known", func(c *config.Config) {
			c.Recipients[0].Subscriptions[0].Types = []string{"admission", "transfer", "discharge", "careplan",
				"admission-cancelled", "discharge-cancelled", "patient-updated", "patient-merged"}
		}, ""},
		{"equal backoffs", func(c *config.Config) { c.Delivery.MinBackoff, c.Delivery.MaxBackoff = time.Second, time.Second }, ""},
		{"patient list", func(c *config.Config) { listSub(c, "patient-list", goodList) }, ""},
		{"patient list missing", func(c *config.Config) { listSub(c, "patient-list", "") },
			"recipients[0].subscriptions[0].patientList: a patient-list subscription needs the file of its patients"},
		{"patient list on another basis", func(c *config.Config) { listSub(c, "registered-gp", goodList) },
			"recipients[0].subscriptions[0].patientList: only a patient-list subscription has one"},
		{"patient list unreadable", func(c *config.Config) { listSub(c, "patient-list", goodList+".missing") },
			"no such file or directory"},
		{"patient list with a bad line", func(c *config.Config) { listSub(c, "patient-list", badList) },
			"recipients[0].subscriptions[0].patientList: patient list " + badList + ": line 3: the check digit is wrong"},
		{"care relationships not matched yet", func(c *config.Config) { listSub(c, "care-relationship", "") },
			`recipients[0].subscriptions[0].basis "care-relationship": one of registered-gp, discharge-destination, patient-list`},
	}
	for _, tt := range tests {
		c, err := config.Parse([]byte(minimal))
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
		if err != nil && strings.Contains(err.Error(), "999000001") {
			t.Errorf("Validate(%s): the error holds an NHS number from a patient list: %v", tt.name, err)
		}
	}
}

func TestSecretResolve(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyFile := write("key", "file-secret-value\n")
	emptyFile := write("empty", " \n\t\n")
	t.Setenv("CAREHUB_TEST_SECRET", "env-secret-value")
	t.Setenv("CAREHUB_TEST_EMPTY", "")

	tests := []struct {
		name    string
		s       config.Secret
		want    string
		wantErr string // "" means no error
	}{
		{"value", config.Secret{Value: "inline-secret"}, "inline-secret", ""},
		{"file, trailing newline trimmed", config.Secret{File: keyFile}, "file-secret-value", ""},
		{"env", config.Secret{Env: "CAREHUB_TEST_SECRET"}, "env-secret-value", ""},
		{"none", config.Secret{}, "", "no value, file or env given"},
		{"value and file", config.Secret{Value: "inline-secret", File: keyFile}, "", "give only one of value, file and env"},
		{"value and env", config.Secret{Value: "inline-secret", Env: "CAREHUB_TEST_SECRET"}, "", "give only one of value, file and env"},
		{"all three", config.Secret{Value: "inline-secret", File: keyFile, Env: "CAREHUB_TEST_SECRET"}, "", "give only one"},
		{"missing env", config.Secret{Env: "CAREHUB_TEST_UNSET_SECRET"}, "", "environment variable CAREHUB_TEST_UNSET_SECRET is not set"},
		{"empty env", config.Secret{Env: "CAREHUB_TEST_EMPTY"}, "", "environment variable CAREHUB_TEST_EMPTY is not set"},
		{"empty file", config.Secret{File: emptyFile}, "", "is empty"},
		{"missing file", config.Secret{File: filepath.Join(dir, "nope")}, "", "reading secret file"},
	}
	for _, tt := range tests {
		got, err := tt.s.Resolve()
		if tt.wantErr == "" {
			if err != nil || got != tt.want {
				t.Errorf("Resolve(%s):\n\tgot  %q, %v\n\twant %q, nil", tt.name, got, err, tt.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Resolve(%s):\n\tgot  %q, %v\n\twant an error containing %q", tt.name, got, err, tt.wantErr)
			continue
		}
		for _, secret := range []string{"inline-secret", "file-secret-value", "env-secret-value"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Resolve(%s): the error echoes a secret: %v", tt.name, err)
			}
		}
	}
}

func TestSecretSet(t *testing.T) {
	tests := []struct {
		s    config.Secret
		want bool
	}{
		{config.Secret{}, false},
		{config.Secret{Value: "v"}, true},
		{config.Secret{File: "f"}, true},
		{config.Secret{Env: "E"}, true},
	}
	for _, tt := range tests {
		if got := tt.s.Set(); got != tt.want {
			t.Errorf("%+v.Set():\n\tgot  %v\n\twant %v", tt.s, got, tt.want)
		}
	}
}

// Secrets given as file and env in YAML resolve through Parse.
func TestParseSecretForms(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "pseudonym")
	if err := os.WriteFile(keyFile, []byte("pseudonym-key-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CAREHUB_TEST_RX1_KEY", "rx1-key-from-env")
	y := strings.Replace(minimal, "{value: 0123456789abcdef}", "{file: "+keyFile+"}", 1)
	y = strings.Replace(y, "{value: rx1-key-123}", "{env: CAREHUB_TEST_RX1_KEY}", 1)
	c, err := config.Parse([]byte(y))
	if err != nil {
		t.Fatalf("Parse(file and env secrets): %v", err)
	}
	for _, tt := range []struct {
		name string
		s    config.Secret
		want string
	}{
		{"pseudonymKey", c.Pseudonym, "pseudonym-key-from-file"},
		{"sources[0].apiKey", c.Sources[0].APIKey, "rx1-key-from-env"},
	} {
		if got, err := tt.s.Resolve(); err != nil || got != tt.want {
			t.Errorf("%s.Resolve():\n\tgot  %q, %v\n\twant %q, nil", tt.name, got, err, tt.want)
		}
	}
}

func TestEventTypeName(t *testing.T) {
	if got, want := config.EventTypeName("discharge"), "org.carehub.discharge.v1"; got != want {
		t.Errorf("EventTypeName(%q):\n\tgot  %v\n\twant %v", "discharge", got, want)
	}
}

func TestODSPattern(t *testing.T) {
	tests := []struct {
		code string
		want bool
	}{
		{"RX1", true}, {"A81001", true}, {"VM123", true}, {"ABCDEFGHIJ", true},
		{"R1", false}, {"ABCDEFGHIJK", false}, {"rx1", false}, {"RX-1", false}, {"", false}, {"RX1\n", false},
	}
	for _, tt := range tests {
		if got := config.ODSPattern.MatchString(tt.code); got != tt.want {
			t.Errorf("ODSPattern.MatchString(%q):\n\tgot  %v\n\twant %v", tt.code, got, tt.want)
		}
	}
}

func TestConsentPolicyIsValidated(t *testing.T) {
	b, err := os.ReadFile("../../deploy/examples/carehub.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := string(b) + "\nconsent:\n  extraSensitiveCategories: [\"Not A Code\"]\n  confidentialAllow: [best-friend]\n"
	_, err = config.Parse([]byte(bad))
	if err == nil || !strings.Contains(err.Error(), "consent:") {
		t.Fatalf("Parse with an invalid consent policy: got %v, want an error naming consent", err)
	}
}
