package consent_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// forbidden lists the packages consent must not reach, with the reason. A
// prefix ending in "/" forbids a whole tree.
var forbidden = map[string]string{
	"net":                                    "a decision needs no network: everything is in the Request",
	"net/http":                               "no transport code in consent; the admin API and FHIR endpoints live elsewhere",
	"net/rpc":                                "no transport code in consent",
	"crypto/tls":                             "no transport code in consent",
	"os/exec":                                "a decision runs no programs",
	"database/sql":                           "directives arrive in the Request; consent reads no store",
	"testing":                                "do not use the testing package in production code",
	"go.uber.org/zap":                        "consent does not log: the router audits decisions, and a logger here could leak",
	"github.com/segmentio/kafka-go":          "no Kafka in consent: directives are loaded by the router",
	"github.com/twmb/franz-go/":              "no Kafka in consent",
	"github.com/ThreeDotsLabs/watermill":     "no messaging in consent",
	"github.com/ThreeDotsLabs/watermill/":    "no messaging in consent",
	"github.com/hashicorp/go-retryablehttp":  "no transport code in consent",
	"github.com/prometheus/":                 "metrics belong to the caller, keyed on Decision.Rule",
	"github.com/cedar-policy/":               "plain Go rules: about 27 ns a decision against cedar-go's 0.9 µs, measured on this project's machines",
	"github.com/carehub/carehub/hub/":        "consent is a leaf of the hub, never the other way round",
	"github.com/carehub/carehub/connectors/": "connectors do not reach consent, nor consent them",
}

// forbiddenDirect lists packages consent itself must not import, though a
// dependency may (nhs implements slog.LogValuer so that it redacts itself).
var forbiddenDirect = map[string]string{
	"log":      "consent does not log: the router audits every decision, and a log line here could leak",
	"log/slog": "consent does not log: the router audits every decision, and a log line here could leak",
	"fmt":      "error and rule texts are built from constants, never formatted from values",
}

// allowedEdges are imports by a dependency of consent of a forbidden
// package, tolerated with the reason, until the dependency is fixed. The
// test fails on any other path to a forbidden package.
var allowedEdges = map[[2]string]string{}

type listedPackage struct {
	ImportPath string
	Imports    []string
	Standard   bool
}

// TestDependencyFence: consent reaches no transport, logging, messaging or
// hub package, except through the edges allowedEdges names.
func TestDependencyFence(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports,Standard", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	graph := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		graph[p.ImportPath] = p.Imports
	}
	const self = "github.com/carehub/carehub/consent"
	if graph[self] == nil {
		t.Fatalf("go list did not list %s", self)
	}

	// Walk from consent, skipping the allowed edges, and remember how each
	// package was reached.
	from := map[string]string{self: ""}
	queue := []string{self}
	usedEdges := map[[2]string]bool{}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, q := range graph[p] {
			if _, ok := allowedEdges[[2]string{p, q}]; ok {
				usedEdges[[2]string{p, q}] = true
				continue
			}
			if _, seen := from[q]; !seen {
				from[q] = p
				queue = append(queue, q)
			}
		}
	}
	var reached []string
	for p := range from {
		reached = append(reached, p)
	}
	sort.Strings(reached)
	for _, p := range reached {
		if reason, bad := forbiddenReason(p); bad {
			t.Errorf("consent reaches %s (via %s): %s", p, chain(from, p), reason)
		}
	}
	for _, q := range graph[self] {
		if reason, bad := forbiddenDirect[q]; bad {
			t.Errorf("consent imports %s: %s", q, reason)
		}
	}
	for e, reason := range allowedEdges {
		if usedEdges[e] {
			t.Logf("tolerated: %s imports %s. %s", e[0], e[1], reason)
		} else {
			t.Logf("the allowed edge %s -> %s is no longer used: delete it from allowedEdges", e[0], e[1])
		}
	}
}

func forbiddenReason(p string) (string, bool) {
	if r, ok := forbidden[p]; ok {
		return r, true
	}
	for prefix, r := range forbidden {
		if strings.HasSuffix(prefix, "/") && strings.HasPrefix(p, prefix) {
			return r, true
		}
	}
	return "", false
}

func chain(from map[string]string, p string) string {
	var path []string
	for q := p; q != ""; q = from[q] {
		path = append([]string{q}, path...)
	}
	return strings.Join(path, " -> ")
}

// TestDependencyFenceCanFail: the fence must see a forbidden package when
// one is reached.
func TestDependencyFenceCanFail(t *testing.T) {
	if _, bad := forbiddenReason("net/http"); !bad {
		t.Error("net/http is not forbidden")
	}
	if _, bad := forbiddenReason("github.com/twmb/franz-go/pkg/kgo"); !bad {
		t.Error("a package under a forbidden tree is not forbidden")
	}
	if _, bad := forbiddenReason("encoding/json"); bad {
		t.Error("encoding/json is forbidden")
	}

}
