package e2e

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/carehub/carehub/schemas/media"
)

// bodyRoute is how to reach one route that takes a body, with a body of a
// media type it does not take.
type bodyRoute struct {
	path      string // the pattern with its wildcards filled in
	key       string // the API key that may call it
	wrongType string // a media type the route does not take
	wantType  string // the media type of the answer: a problem document
	noBody    bool   // a DELETE that takes no body: not sent one
}

// routesTakingABody lists every POST, PUT, PATCH and DELETE route the hub
// and its connectors register. TestEveryRouteThatTakesABodyChecksItsMediaType
// reads the registrations from the source, and fails for one missing here.
func routesTakingABody(t *testing.T) map[string]bodyRoute {
	nhs := nhsNumber(9611)
	admin := func(path string) bodyRoute {
		return bodyRoute{path: path, key: "demo-admin-key", wrongType: "text/plain", wantType: media.Problem}
	}
	list := func(path string) bodyRoute { // a whole patient list is text/plain: send JSON
		return bodyRoute{path: path, key: "demo-admin-key", wrongType: media.JSON, wantType: media.Problem}
	}
	source := func(path, answer string) bodyRoute {
		return bodyRoute{path: path, key: "demo-rx1-key", wrongType: "text/plain", wantType: answer}
	}
	return map[string]bodyRoute{
		"POST /v1/events":                         source("/v1/events", media.Problem),
		"POST /fhir/r4/$process-message":          source("/fhir/r4/$process-message", media.FHIR),
		"POST /fhir/r4/Encounter":                 source("/fhir/r4/Encounter", media.FHIR),
		"PUT /v1/patients/{nhsNumber}/consent":    admin("/v1/patients/" + nhs + "/consent"),
		"POST /v1/decisions/explain":              admin("/v1/decisions/explain"),
		"POST /v1/backfills":                      admin("/v1/backfills"),
		"POST /v1/backfills/{id}/run":             admin("/v1/backfills/bf-none/run"),
		"POST /v1/dlq/{id}/replay":                admin("/v1/dlq/dl-none/replay"),
		"POST /v1/dlq/replay":                     admin("/v1/dlq/replay?recipient=A81001"),
		"POST /v1/held/{id}/release":              admin("/v1/held/held-none/release"),
		"POST /v1/recipients":                     admin("/v1/recipients"),
		"PUT /v1/recipients/{ods}":                admin("/v1/recipients/A81001"),
		"POST /v1/recipients/{ods}/pause":         admin("/v1/recipients/A81001/pause"),
		"POST /v1/recipients/{ods}/resume":        admin("/v1/recipients/A81001/resume"),
		"PUT /v1/recipients/{ods}/patients":       list("/v1/recipients/VM123/patients"),
		"POST /v1/recipients/{ods}/patients":      admin("/v1/recipients/VM123/patients"), // a change to the list: JSON
		"POST /v1/subscriptions":                  admin("/v1/subscriptions"),
		"DELETE /v1/dlq/{id}":                     admin("/v1/dlq/0-0"),        // {"reason": ...}
		"DELETE /v1/held/{id}":                    admin("/v1/held/held-none"), // {"reason": ...}
		"DELETE /v1/patients/{nhsNumber}/consent": {noBody: true},
		"DELETE /v1/recipients/{ods}":             {noBody: true},
		"DELETE /v1/subscriptions/{id}":           {noBody: true},
		"PUT /v1/subscriptions/{id}":              admin("/v1/subscriptions/a81001-registered-patients"),
	}
}

// registeredBodyRoutes reads, from the Go source of hub/ and connectors/,
// the pattern of every HandleFunc or Handle call whose method may take a
// body (POST, PUT, PATCH, DELETE). A pattern built from string constants of its package
// is resolved; one it cannot read fails the test, so that no route escapes.
func registeredBodyRoutes(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, root := range []string{"../hub", "../connectors"} {
		err := filepath.WalkDir(root, func(dir string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			fset := token.NewFileSet()
			pkgs, err := parser.ParseDir(fset, dir, func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
			if err != nil {
				return err
			}
			for _, pkg := range pkgs {
				consts := map[string]string{}
				for _, f := range pkg.Files {
					for _, decl := range f.Decls {
						g, ok := decl.(*ast.GenDecl)
						if !ok || g.Tok != token.CONST {
							continue
						}
						for _, spec := range g.Specs {
							vs := spec.(*ast.ValueSpec)
							for i, name := range vs.Names {
								if i < len(vs.Values) {
									if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
										consts[name.Name], _ = strconv.Unquote(lit.Value)
									}
								}
							}
						}
					}
				}
				var eval func(e ast.Expr) (string, bool)
				eval = func(e ast.Expr) (string, bool) {
					switch e := e.(type) {
					case *ast.BasicLit:
						if e.Kind == token.STRING {
							s, err := strconv.Unquote(e.Value)
							return s, err == nil
						}
					case *ast.Ident:
						s, ok := consts[e.Name]
						return s, ok
					case *ast.BinaryExpr:
						if e.Op == token.ADD {
							l, ok1 := eval(e.X)
							r, ok2 := eval(e.Y)
							return l + r, ok1 && ok2
						}
					}
					return "", false
				}
				for _, f := range pkg.Files {
					ast.Inspect(f, func(n ast.Node) bool {
						call, ok := n.(*ast.CallExpr)
						if !ok || len(call.Args) != 2 {
							return true
						}
						sel, ok := call.Fun.(*ast.SelectorExpr)
						if !ok || (sel.Sel.Name != "HandleFunc" && sel.Sel.Name != "Handle") {
							return true
						}
						pattern, ok := eval(call.Args[0])
						if !ok {
							t.Errorf("%s: a route pattern this test cannot read: list it by hand or build it from string constants", fset.Position(call.Pos()))
							return true
						}
						method, _, _ := strings.Cut(pattern, " ")
						if method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE" {
							out = append(out, pattern)
						}
						return true
					})
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(out)
	return out
}

// TestEveryRouteThatTakesABodyChecksItsMediaType pins the audit's gap in
// issue 14 ("every endpoint that takes a body checks its media type"):
// POST /v1/recipients/{ods}/pause decoded JSON whatever the Content-Type.
// Every route that takes a body, found in the source so that a new one
// cannot be forgotten, is sent a body of a media type it does not take
// (text/plain; JSON where the route takes text/plain) and must answer 415
// with a problem document (an OperationOutcome on the FHIR routes).
func TestEveryRouteThatTakesABodyChecksItsMediaType(t *testing.T) {
	routes := routesTakingABody(t)
	registered := registeredBodyRoutes(t)
	if len(registered) == 0 {
		t.Fatal("no route found in the source: the scan is broken")
	}
	for _, p := range registered {
		if _, ok := routes[p]; !ok {
			t.Errorf("route %q takes a body and is not in routesTakingABody: add it", p)
		}
	}
	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	home := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: home.URL, inputsYAML: "  - fhir: {encounter: true}\n"})
	for _, pattern := range registered {
		rt, ok := routes[pattern]
		if !ok || rt.noBody {
			continue
		}
		t.Run(pattern, func(t *testing.T) {
			method, _, _ := strings.Cut(pattern, " ")
			status, body, hdr := h.adminAs(rt.key, method, rt.path, rt.wrongType, []byte("9990000000 hello"), "", nil)
			if status != http.StatusUnsupportedMediaType {
				t.Errorf("%s %s with Content-Type %s:\n\tgot  %d %s\n\twant 415", method, rt.path, rt.wrongType, status, body)
			}
			if got := hdr.Get("Content-Type"); !media.Is(got, rt.wantType) {
				t.Errorf("%s %s: answer Content-Type got %q, want %q", method, rt.path, got, rt.wantType)
			}
			var doc map[string]any
			if err := json.Unmarshal(body, &doc); err != nil {
				t.Fatalf("%s %s: the answer is not JSON: %v", method, rt.path, err)
			}
			if rt.wantType == media.FHIR {
				if doc["resourceType"] != "OperationOutcome" {
					t.Errorf("%s %s: got %s, want an OperationOutcome", method, rt.path, body)
				}
			} else if doc["status"] != float64(http.StatusUnsupportedMediaType) || doc["title"] == nil {
				t.Errorf("%s %s: got %s, want a problem document with status 415", method, rt.path, body)
			}
		})
	}
}
