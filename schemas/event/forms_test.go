package event

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/carehub/carehub/schemas"
)

var update = flag.Bool("update", false, "rewrite the golden files of the forms")

// richen adds to an example what must never reach a notification: a
// sensitivity category, a subject, an extension, demographics, places and
// dates (the fields the issue found in "minimal" copies).
func richen(t *testing.T, file string) []byte {
	return edit(t, file, func(m map[string]any) {
		m["subject"] = "ENC-SUBJECT"
		m["carehubtrace"] = "trace-1"
		data := m["data"].(map[string]any)
		data["sensitivity"] = []any{"sexual-health"}
		p := data["patient"].(map[string]any)
		p["name"] = map[string]any{"family": "TESTPATIENT", "given": []any{"Alex"}}
		p["address"] = map[string]any{"line": []any{"1 Test Street"}, "postalCode": "LS1 4AP"}
		p["identifier"] = []any{map[string]any{"system": "urn:ods:RX1", "value": "MRN0001"}}
		if enc, ok := data["encounter"].(map[string]any); ok {
			enc["location"] = map[string]any{"ward": "Ward 7", "name": "Rowan Unit"}
			enc["specialty"] = "710"
			enc["admitSource"] = "19"
			enc["period"] = map[string]any{"start": "2025-03-14T09:30:00Z"}
		}
		if cp, ok := data["carePlan"].(map[string]any); ok {
			cp["title"] = "End of life and dementia care plan (DNACPR in place)"
		}
	})
}

// leaks are texts a notification must never hold, whatever the type.
var leaks = []string{"sexual-health", "ENC-SUBJECT", "carehubtrace", "TESTPATIENT", "Test Street", "LS1 4AP",
	"Ward 7", "Rowan Unit", `"710"`, "admitSource", "2025-03-14T09:30:00Z", "DNACPR", "gpPractice", "summary",
	"document", "carehubredacted", "SYNTHETIC TEST DATA", "destination", "birthDate"}

// TestFormsGolden: for every event type, the full and the notification-only
// form of a rich example, each against its golden file (go test -update
// rewrites them); the notification is valid against notification.v1.json
// and holds nothing off its allow-list; a correction's full form is a valid
// event of its own type.
func TestFormsGolden(t *testing.T) {
	v := newValidator(t)
	c, err := schemas.NewCompiler()
	if err != nil {
		t.Fatal(err)
	}
	notif, err := c.Compile(schemas.URL(NotificationSchema))
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range Types() {
		short := ShortName(typ)
		t.Run(short, func(t *testing.T) {
			raw := richen(t, short+".json")
			e, err := v.Parse(raw)
			if err != nil {
				t.Fatalf("Parse: %v %v", err, violationsOf(err))
			}
			full, err := e.Full()
			if err != nil {
				t.Fatal(err)
			}
			thin, err := e.Notification("0300 000 0000")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", "forms", short+".full.golden.json"), full)
			golden(t, filepath.Join("testdata", "forms", short+".notification.golden.json"), thin)

			var env map[string]any
			if err := json.Unmarshal(thin, &env); err != nil {
				t.Fatal(err)
			}
			var names []string
			for k := range env {
				names = append(names, k)
			}
			sort.Strings(names)
			if want := []string{"carehubform", "data", "datacontenttype", "dataschema", "id", "source", "specversion", "time", "type"}; !slices.Equal(names, want) {
				t.Errorf("notification envelope:\n\tgot  %v\n\twant %v", names, want)
			}
			if err := notif.Validate(env["data"]); err != nil {
				t.Errorf("notification data is not valid against %s: %v", NotificationSchema, err)
			}
			r, _ := RuleOf(typ)
			allowed := append(append(append([]string(nil), ThinCommon...), r.Thin...), "/fullRecord")
			for _, p := range leafPaths(env["data"], "") {
				if !underAny(p, allowed) {
					t.Errorf("notification carries %s, which is not on the allow-list %v", p, allowed)
				}
			}
			for _, s := range leaks {
				if bytes.Contains(thin, []byte(s)) {
					t.Errorf("notification holds %q", s)
				}
			}
			if r.Full != nil {
				if _, err := v.Parse(full); err != nil {
					t.Errorf("the full form of a correction is not a valid %s: %v %v", short, err, violationsOf(err))
				}
				for _, p := range leafPaths(mustData(t, full), "") {
					if !underAny(p, r.Full) {
						t.Errorf("full form carries %s, which is not on its allow-list %v", p, r.Full)
					}
				}
			}
			// Unmarshal reads the notification back with the same patient
			// and reference, and no labels.
			u, err := Unmarshal(thin)
			if err != nil {
				t.Fatalf("Unmarshal(notification): %v", err)
			}
			if u.Patient.NHSNumber != e.Patient.NHSNumber || u.Ref != e.Ref || len(u.Labels) != 0 || u.HasDocument {
				t.Errorf("notification facts: got ref %q labels %v document %v, want ref %q and none", u.Ref, u.Labels, u.HasDocument, e.Ref)
			}
		})
	}
}

// TestEveryTypeHasARule: a new event type needs its entry in typeRules
// (reference, forms, follow-up), or the router would not know how to treat
// it.
func TestEveryTypeHasARule(t *testing.T) {
	for _, typ := range Types() {
		r, ok := RuleOf(typ)
		if !ok {
			t.Errorf("%s has no entry in typeRules", typ)
			continue
		}
		if (r.Ref == "") != (r.RefKind == "") {
			t.Errorf("%s: Ref and RefKind go together", typ)
		}
		if r.FollowUp != Standalone && r.Ref == "" {
			t.Errorf("%s: a follow-up needs a reference", typ)
		}
		for _, o := range r.Of {
			if _, ok := RuleOf(o); !ok {
				t.Errorf("%s corrects unknown type %s", typ, o)
			}
		}
	}
}

func TestNotices(t *testing.T) {
	v := newValidator(t)
	c, err := schemas.NewCompiler()
	if err != nil {
		t.Fatal(err)
	}
	e, err := v.Parse(richen(t, "discharge.json"))
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Date(2025, 3, 18, 16, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name, schema string
		make         func() (Notice, error)
		mayHold      []string
	}{
		{"withheld", WithheldNoticeSchema, func() (Notice, error) { return WithheldNotice(e, "VM123", "Ward 7 desk: 0300 000 0000", issued) }, []string{"Ward 7"}},
		{"registration-ended", RegistrationEndedSchema, func() (Notice, error) { return RegistrationEnded(e, "A81002") }, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.make()
			if err != nil {
				t.Fatal(err)
			}
			again, _ := tt.make()
			if n.ID != again.ID || n.ID == e.ID {
				t.Errorf("notice id %q (again %q): want one derived from the event, not the event's", n.ID, again.ID)
			}
			golden(t, filepath.Join("testdata", "forms", tt.name+".notice.golden.json"), n.Body)
			s, err := c.Compile(schemas.URL(tt.schema))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Validate(mustData(t, n.Body)); err != nil {
				t.Errorf("notice data not valid against %s: %v", tt.schema, err)
			}
			for _, l := range leaks {
				if bytes.Contains(n.Body, []byte(l)) && !slices.Contains(tt.mayHold, l) && !(l == "gpPractice" && tt.name == "registration-ended") {
					t.Errorf("notice holds %q", l)
				}
			}
			if bytes.Contains(n.Body, []byte("A81001")) {
				t.Errorf("notice names the new GP practice")
			}
		})
	}
	// The withheld notice names no patient at all.
	n, _ := WithheldNotice(e, "VM123", "", issued)
	if bytes.Contains(n.Body, []byte(e.Time.Format(time.RFC3339))) {
		t.Errorf("the withheld notice carries the time of the discharge")
	}
	if bytes.Contains(n.Body, []byte(e.Patient.NHSNumber.Digits())) || bytes.Contains(n.Body, []byte("MRN0001")) {
		t.Errorf("the withheld notice identifies the patient: %s", n.Body)
	}
}

func TestNarrower(t *testing.T) {
	for _, tt := range []struct{ a, b, want Form }{
		{FormFull, FormFull, FormFull},
		{FormFull, FormNotification, FormNotification},
		{FormNotification, FormFull, FormNotification},
		{FormNotification, FormNotification, FormNotification},
	} {
		if got := Narrower(tt.a, tt.b); got != tt.want {
			t.Errorf("Narrower(%s, %s) = %s, want %s", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestRefAndDataSchemaRoundTrip(t *testing.T) {
	e, err := Unmarshal(readExample(t, "admission-cancelled.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Ref, "encounter:") {
		t.Errorf("Ref = %q, want encounter:<id>", e.Ref)
	}
	e.DataSchema = "https://carehub.dev/schemas/notification.v1.json"
	e.Time = e.Time.In(time.UTC)
	b, _ := e.Marshal()
	u, err := Unmarshal(b)
	if err != nil || u.DataSchema != e.DataSchema {
		t.Errorf("DataSchema round trip: got %q (%v)", u.DataSchema, err)
	}
}

func mustData(t *testing.T, body []byte) any {
	t.Helper()
	var env map[string]any
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	return env["data"]
}

// leafPaths lists the JSON pointers of v's leaves (arrays count as leaves).
func leafPaths(v any, prefix string) []string {
	m, ok := v.(map[string]any)
	if !ok {
		return []string{prefix}
	}
	var out []string
	for k, x := range m {
		out = append(out, leafPaths(x, prefix+"/"+k)...)
	}
	sort.Strings(out)
	return out
}

func underAny(p string, allowed []string) bool {
	for _, a := range allowed {
		if p == a || strings.HasPrefix(p, a+"/") {
			return true
		}
	}
	return false
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, got, "", "  "); err != nil {
		t.Fatalf("%s: output is not JSON: %v", path, err)
	}
	pretty.WriteByte('\n')
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(pretty.Bytes(), want) {
		t.Errorf("%s differs from the golden file:\n\tgot  %s\n\twant %s", path, pretty.Bytes(), want)
	}
}

// TestREADMEDescribesEveryTypeRule: the README's two tables of what each
// event type does, "What each recipient receives" (full and
// notification-only forms) and "Corrections and follow-ups" (relations),
// have a row for every type the hub accepts, and each row says what
// typeRules says: the notification-only column names exactly the type's
// Thin fields, the full column exactly its Full allow-list (or "the event
// as published" when it has none), and the type sits in the row of its
// FollowUp relation, a correction naming exactly the types it corrects
// (TypeRule.Of) in parentheses, or "any" when it corrects any event. A row
// for a type the hub does not know fails too. It pins an audit finding of
// issue 11: four types added later had no row in either table.
func TestREADMEDescribesEveryTypeRule(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	section := func(from, to string) string {
		i := strings.Index(readme, from)
		j := strings.Index(readme[i+1:], to)
		if i < 0 || j < 0 {
			t.Fatalf("the README has no section %q followed by %q", from, to)
		}
		return readme[i : i+1+j]
	}
	// rows returns the cells of the table rows of a section, by first cell.
	rows := func(sec string) map[string][]string {
		out := map[string][]string{}
		for _, line := range strings.Split(sec, "\n") {
			if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "|---") {
				continue
			}
			cells := strings.Split(strings.Trim(line, "|"), " | ")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			out[cells[0]] = cells[1:]
		}
		return out
	}
	dotted := func(pointers []string) []string {
		out := make([]string, len(pointers))
		for i, p := range pointers {
			out[i] = strings.ReplaceAll(strings.TrimPrefix(p, "/"), "/", ".")
		}
		slices.Sort(out)
		return out
	}
	ticked := regexp.MustCompile("`([^`]*)`")
	names := func(cell string) []string {
		var out []string
		for _, m := range ticked.FindAllStringSubmatch(cell, -1) {
			out = append(out, m[1])
		}
		slices.Sort(out)
		return slices.Compact(out)
	}

	forms := rows(section("### What each recipient receives", "### Corrections and follow-ups"))
	relations := rows(section("### Corrections and follow-ups", "\n### "))
	known := map[string]bool{}
	for _, typ := range Types() {
		known[ShortName(typ)] = true
	}
	for typ := range typeRules {
		if !known[ShortName(typ)] {
			t.Errorf("typeRules has %s, which Types() does not list", typ)
		}
	}
	// relationOf: the relation row each type sits in, and what its
	// parentheses say.
	relationOf, corrected := map[string][]string{}, map[string]string{}
	item := regexp.MustCompile("`([a-z-]+)`(?: \\(([^)]*)\\))?")
	for rel, cells := range relations {
		if rel == "relation" || len(cells) == 0 {
			continue
		}
		for _, m := range item.FindAllStringSubmatch(cells[0], -1) {
			relationOf[m[1]] = append(relationOf[m[1]], rel)
			corrected[m[1]] = m[2]
			if !known[m[1]] {
				t.Errorf("the README's relation table has a row for %s, which is not an event type", m[1])
			}
		}
	}
	for row := range forms {
		short := strings.Trim(row, "`")
		if row != "event type" && !known[short] && !strings.Contains(row, "(hub notice)") {
			t.Errorf("the README's forms table has a row for %s, which is not an event type", row)
		}
	}

	for _, typ := range Types() {
		short := ShortName(typ)
		r := typeRules[typ]
		cells, ok := forms["`"+short+"`"]
		switch {
		case !ok:
			t.Errorf("the README's forms table has no row for %s", short)
		case len(cells) != 2:
			t.Errorf("the README's forms row for %s has %d cells, want 3", short, len(cells)+1)
		default:
			full, thin := cells[0], cells[1]
			if r.Full == nil {
				if !strings.HasPrefix(full, "the event as published") {
					t.Errorf("README, full form of %s:\n\tgot  %q\n\twant the event as published", short, full)
				}
			} else if got, want := names(full), dotted(r.Full); !slices.Equal(got, want) {
				t.Errorf("README, full form of %s:\n\tgot  %q\n\twant %q", short, got, want)
			}
			if got, want := names(thin), dotted(r.Thin); !slices.Equal(got, want) {
				t.Errorf("README, notification-only form of %s:\n\tgot  %q\n\twant %q", short, got, want)
			}
			if len(r.Thin) == 0 && thin != "nothing more" {
				t.Errorf("README, notification-only form of %s: got %q, want nothing more", short, thin)
			}
		}
		if got, want := relationOf[short], []string{r.FollowUp.String()}; !slices.Equal(got, want) {
			t.Errorf("README, relation of %s:\n\tgot  %q\n\twant %q", short, got, want)
			continue
		}
		if r.FollowUp != Corrects {
			continue
		}
		paren := corrected[short]
		if r.Of == nil {
			if !strings.HasPrefix(paren, "any ") {
				t.Errorf("README, what %s corrects: got %q, want any earlier event", short, paren)
			}
			continue
		}
		var want []string
		for _, o := range r.Of {
			want = append(want, ShortName(o))
		}
		slices.Sort(want)
		if got := names(paren); !slices.Equal(got, want) {
			t.Errorf("README, what %s corrects:\n\tgot  %q\n\twant %q", short, got, want)
		}
	}
}
