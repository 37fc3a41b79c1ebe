package config

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/consent"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/ods"
	"go.yaml.in/yaml/v3"
)

// A recipient entry is checked by one piece of code wherever it comes
// from: an entry of the file's recipients list (Validate), or the body of
// the admin API's POST /v1/recipients (DecodeRecipient, then Check), which
// is the same entry as JSON. What only the whole deployment can check (two
// recipients with one ODS code or one subscription id, an API key used
// twice) is checked by Validate for the file and by the recipient
// directory (hub/directory) for the API.

// FieldError is one problem of a recipient entry, at one of its fields.
// Every part is safe to show: it names fields and rules, and never holds a
// secret.
type FieldError struct {
	// Field is the path of the field inside the entry, starting with a
	// dot (".webhook", ".subscriptions[0].types"), or "" for the entry as
	// a whole.
	Field string
	// Line is the line of the file the problem was found at, or 0.
	Line int
	// Text is what is wrong, starting with its separator (": ..." or
	// " \"X\": ...").
	Text string
}

func (e FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s (line %d)%s", e.Field, e.Line, e.Text)
	}
	return e.Field + e.Text
}

// Pointer is the field as an RFC 6901 JSON pointer into the entry:
// ".subscriptions[0].types" is "/subscriptions/0/types".
func (e FieldError) Pointer() string {
	var b strings.Builder
	for _, part := range strings.Split(strings.TrimPrefix(e.Field, "."), ".") {
		if part == "" {
			continue
		}
		name, idx, _ := strings.Cut(part, "[")
		b.WriteString("/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(name))
		for idx != "" {
			n, rest, _ := strings.Cut(idx, "]")
			b.WriteString("/" + n)
			idx = strings.TrimPrefix(rest, "[")
		}
	}
	return b.String()
}

// Detail is the problem for people, without the field's leading dot.
func (e FieldError) Detail() string {
	return strings.TrimPrefix(strings.TrimPrefix(e.Field+e.Text, "."), ": ")
}

// subscriptionID is the shape of a subscription id: it names the
// subscription in the admin API's paths (/v1/subscriptions/{id}).
var subscriptionID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// DecodeRecipient decodes one recipient entry, given as JSON (the admin
// API's body) or YAML, as strictly as an entry of the file's recipients
// list: the recipient's own fields, and its one delivery section by the
// registered sink connector that names it, with the connector's defaults;
// subscriptions without an id get the default id. It does not validate
// (see Check). Its errors are FieldErrors, joined.
func DecodeRecipient(b []byte, reg *connector.Registry) (*Recipient, error) {
	if reg == nil {
		return nil, errors.New("config: no connector registry")
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, FieldError{Text: ": " + yamlProblem(err)}
	}
	if len(doc.Content) == 0 {
		return nil, FieldError{Text: ": a recipient is an object: ods, name, role, a delivery section and subscriptions"}
	}
	var r Recipient
	if err := doc.Content[0].Decode(&r); err != nil {
		return nil, FieldError{Text: ": " + yamlProblem(err)}
	}
	if errs := r.decodeSink(reg, false); len(errs) > 0 {
		out := make([]error, len(errs))
		for i, e := range errs {
			out[i] = e
		}
		return nil, errors.Join(out...)
	}
	r.defaults()
	return &r, nil
}

// quoted is a value go.yaml.in/yaml/v3 quotes in a type error ("cannot
// unmarshal !!str `whsec_Y...` into ..."): up to ten characters of it,
// which may be the start of a secret.
var quoted = regexp.MustCompile("`[^`]*`")

// scrub replaces the values a decoding error quotes.
func scrub(msg string) string { return quoted.ReplaceAllString(msg, "a value") }

// yamlProblem is the text of a decoding error without the "yaml: " prefix,
// without line numbers of a re-encoded fragment, and without the values it
// quotes.
func yamlProblem(err error) string {
	msg := scrub(strings.TrimPrefix(err.Error(), "yaml: "))
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if _, after, ok := strings.Cut(rest, ": "); ok {
			msg = after
		}
	}
	return msg
}

// decodeSink decodes the recipient's delivery section with its factory.
// withLines says the entry comes from the file (its problems name lines).
func (r *Recipient) decodeSink(reg *connector.Registry, withLines bool) []FieldError {
	var errs []FieldError
	line := func(l int) int {
		if withLines {
			return l
		}
		return 0
	}
	for _, e := range r.extra {
		f, ok := reg.Sink(e.key)
		switch {
		case !ok:
			errs = append(errs, FieldError{Line: line(e.line), Text: fmt.Sprintf(": field %s not found: neither a recipient field nor a delivery type (%s)",
				e.key, strings.Join(reg.SinkTypes(), ", "))})
			continue
		case r.Sink.Type != "":
			errs = append(errs, FieldError{Line: line(e.line), Text: fmt.Sprintf(": %s: a recipient has one delivery section, and %s is already given",
				e.key, r.Sink.Type)})
			continue
		}
		cfg := f.Default()
		if err := connector.DecodeStrict(e.node, cfg); err != nil {
			errs = append(errs, FieldError{Field: "." + e.key, Line: line(e.line), Text: ": " + scrub(err.Error())})
			continue
		}
		r.Sink = Sink{Type: e.key, Config: cfg, factory: f}
	}
	r.extra = nil
	return errs
}

// defaults gives each subscription without an id its default id.
func (r *Recipient) defaults() {
	for j := range r.Subscriptions {
		if s := &r.Subscriptions[j]; s.ID == "" {
			s.ID = fmt.Sprintf("%s-%s", r.ODS, s.Basis)
		}
	}
}

// Check reports every problem of the entry on its own, as the file's
// Validate does for each entry: its ODS code and role, its delivery section
// (by the connector's own Validate), its API key, and each subscription
// (id, basis, types, at most one patient list file). It reads no file.
func (r Recipient) Check() []FieldError {
	var errs []FieldError
	bad := func(field, format string, a ...any) {
		errs = append(errs, FieldError{Field: field, Text: fmt.Sprintf(format, a...)})
	}
	if !ods.Valid(r.ODS) {
		bad(".ods", " %q: not an ODS code", r.ODS)
	}
	if !consent.Role(r.Role).Valid() {
		bad(".role", " %q: one of %s", r.Role, strings.Join(consent.RoleNames(), ", "))
	}
	if len(r.Name) > 200 {
		bad(".name", ": at most 200 characters")
	}
	switch {
	case r.Sink.Type == "":
		bad("", ": a delivery section is required (how the recipient receives events)")
	case r.Sink.Config == nil:
		bad("."+r.Sink.Type, ": not decoded: build configurations with Load or Parse")
	default:
		if err := r.Sink.Config.Validate(); err != nil {
			for _, e := range prefixed("", err) {
				errs = append(errs, FieldError{Field: "." + r.Sink.Type, Text: e.Error()})
			}
		}
	}
	if r.APIKey.Set() {
		if v, err := r.APIKey.Reveal(); err != nil {
			bad(".apiKey", ": %v", err)
		} else if len(v) < 8 {
			bad(".apiKey", ": API keys must be at least 8 bytes")
		}
	}
	if len(r.Subscriptions) == 0 {
		bad("", ": at least one subscription is required")
	}
	ids := map[string]bool{}
	list := ""
	for j, s := range r.Subscriptions {
		sw := fmt.Sprintf(".subscriptions[%d]", j)
		switch {
		case ids[s.ID]:
			bad(sw+".id", " %q: used twice", s.ID)
		case !subscriptionID.MatchString(s.ID):
			bad(sw+".id", ": 1 to 64 letters, digits, '-', '.' or '_'")
		}
		ids[s.ID] = true
		if err := route.CheckBasis(consent.Basis(s.Basis)); err != nil {
			bad(sw+".basis", ": %v", err)
		}
		switch {
		case s.Basis != string(consent.BasisPatientList) && s.PatientList != "":
			bad(sw+".patientList", ": only a patient-list subscription has one")
		case s.PatientList != "" && list != "" && s.PatientList != list:
			bad(sw+".patientList", ": a recipient has one patient list, and another subscription names another file")
		case s.PatientList != "":
			list = s.PatientList
		}
		if len(s.Types) == 0 {
			bad(sw+".types", ": at least one event type is required")
		}
		for _, t := range s.Types {
			if _, ok := event.TypeNamed(t); !ok {
				bad(sw+".types", ": unknown event type %q: one of %s", t, strings.Join(event.ShortNames(), ", "))
			}
		}
	}
	return errs
}

// Keys returns the API keys the entry gives (its own key, and a pull
// sink's reader key), by field, for the checks that no key is used twice.
func (r Recipient) Keys() map[string]connector.Secret {
	out := map[string]connector.Secret{}
	if r.APIKey.Set() {
		out[".apiKey"] = r.APIKey
	}
	if pc, ok := r.Sink.Config.(connector.PullConfig); ok && pc.ReaderKey().Set() {
		out["."+r.Sink.Type+".apiKey"] = pc.ReaderKey()
	}
	return out
}

// PatientListFile is the file of the recipient's patient list named in
// the configuration file ("" when it has none: its list, if it has a
// patient-list subscription, is managed through the admin API).
func (r Recipient) PatientListFile() string {
	for _, s := range r.Subscriptions {
		if s.PatientList != "" {
			return s.PatientList
		}
	}
	return ""
}

// Entry returns the recipient entry as it was written in the file (or
// given to DecodeRecipient): a tree of maps, lists and scalars, secrets in
// the form they were given. It is nil for a Recipient built in code.
func (r Recipient) Entry() (map[string]any, error) {
	if r.node == nil {
		return nil, nil
	}
	var m map[string]any
	if err := r.node.Decode(&m); err != nil {
		return nil, fmt.Errorf("recipient %s: %w", r.ODS, err)
	}
	return m, nil
}

// Registry is the connector registry the configuration was decoded with
// (nil for a Config built in code): the hub decodes recipients created
// through the admin API with it.
func (c *Config) Registry() *connector.Registry { return c.reg }
