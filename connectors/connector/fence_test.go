package connector_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/carehub/carehub"

type listed struct {
	ImportPath string
	Imports    []string // direct
	Deps       []string // transitive
}

// packages lists every package of the module with its imports.
func packages(t *testing.T) []listed {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports,Deps", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listed
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list gave %d packages: the fence test is not seeing the tree", len(pkgs))
	}
	return pkgs
}

func under(pkg, dir string) bool {
	p := module + "/" + dir
	return pkg == p || strings.HasPrefix(pkg, p+"/")
}

// isTestHelper reports whether a package exists for tests (connectortest,
// consenttest): those may import testing.
func isTestHelper(pkg string) bool { return strings.HasSuffix(pkg, "test") }

// connectorOf returns the connector folder a package belongs to
// (connectors/mllp for connectors/mllp/hl7/adt), or "".
func connectorOf(pkg string) string {
	rest, ok := strings.CutPrefix(pkg, module+"/connectors/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	return "connectors/" + name
}

// TestDependencyFences fails when a package crosses a boundary of the
// house, naming the import and the reason. Each rule is one of the
// design's promises.
func TestDependencyFences(t *testing.T) {
	checked := map[string]int{}
	for _, p := range packages(t) {
		pkg := p.ImportPath
		c := connectorOf(pkg)
		switch {
		case c == "connectors/all" || c == "connectors/connector":
		case c != "":
			// A connector talks to the hub through the contract only, and
			// uses the shared vocabulary; nothing of the hub, nothing of
			// another connector.
			checked["connector"]++
			for _, d := range p.Imports {
				if !strings.HasPrefix(d, module+"/") {
					continue
				}
				if !under(d, "connectors/connector") && !under(d, c) && !under(d, "schemas") && !under(d, "internal/logging") {
					t.Errorf("%s imports %s: a connector imports only connectors/connector, schemas/..., internal/logging and its own packages", pkg, d)
				}
			}
			for _, d := range p.Deps {
				for _, bad := range []string{"github.com/segmentio/kafka-go", "github.com/twmb/franz-go", "github.com/ThreeDotsLabs/watermill"} {
					if d == bad || strings.HasPrefix(d, bad+"/") {
						t.Errorf("%s reaches %s: connectors never touch Kafka; the hub makes input durable and feeds deliveries", pkg, d)
					}
				}
			}
		}
		if under(pkg, "hub") {
			// The hub knows connectors through the contract only: which
			// connectors exist is cmd/carehub's choice (connectors/all).
			checked["hub"]++
			for _, d := range p.Deps {
				if strings.HasPrefix(d, module+"/connectors/") && !under(d, "connectors/connector") {
					t.Errorf("%s reaches %s: the hub imports no connector; it builds them from the registry it is given", pkg, d)
				}
			}
		}
		if under(pkg, "schemas") {
			// The vocabulary is a leaf: every side uses it, it uses none.
			checked["schemas"]++
			for _, d := range p.Deps {
				if under(d, "hub") || under(d, "connectors") || under(d, "consent") || under(d, "e2e") {
					t.Errorf("%s reaches %s: schemas/ is the shared vocabulary and depends on no part of the flow", pkg, d)
				}
			}
		}
		if !isTestHelper(pkg) {
			checked["testing"]++
			for _, d := range p.Deps {
				if d == "testing" {
					t.Errorf("%s reaches testing: do not use the testing package in production code", pkg)
				}
			}
		}
	}
	for _, k := range []string{"connector", "hub", "schemas", "testing"} {
		if checked[k] < 3 {
			t.Errorf("the %s fence checked only %d packages: it is not seeing the tree", k, checked[k])
		}
	}
}
