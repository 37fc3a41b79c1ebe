package connector_test

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/carehub/carehub"

// fences lists, per package prefix, the imports it must not have (direct or
// transitive), with the reason.
var fences = []struct {
	pkg       string
	forbidden map[string]string
}{
	{module + "/connectors/", map[string]string{
		module + "/hub/route":           "a connector talks to the hub through hub/connector only",
		module + "/hub/deliver":         "a connector talks to the hub through hub/connector only",
		module + "/hub/ingest":          "a connector talks to the hub through hub/connector only",
		module + "/hub/consentstore":    "a connector talks to the hub through hub/connector only",
		module + "/hub/admin":           "a connector talks to the hub through hub/connector only",
		module + "/kafkawm":             "connectors never touch Kafka: the hub makes input durable",
		"github.com/segmentio/kafka-go": "connectors never touch Kafka: the hub makes input durable",
	}},
	// consent has its own, stricter fence: consent/deps_test.go.
	{module + "/", map[string]string{
		"testing": "do not use the testing package in production code",
	}},
}

// TestDependencyFences fails when a package imports what its fence forbids.
func TestDependencyFences(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps=false", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		pkg, deps := fields[0], fields[1:]
		if strings.HasSuffix(pkg, "test") { // test-helper packages may import testing
			continue
		}
		for _, f := range fences {
			if !strings.HasPrefix(pkg, f.pkg) && pkg != strings.TrimSuffix(f.pkg, "/") {
				continue
			}
			checked++
			for _, d := range deps {
				for bad, why := range f.forbidden {
					if d == bad || strings.HasPrefix(d, bad+"/") {
						t.Errorf("%s imports %s: %s", pkg, d, why)
					}
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("checked only %d packages: the fence test is not seeing the tree", checked)
	}
}
