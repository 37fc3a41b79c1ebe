package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/schemas"
	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/santhosh-tekuri/jsonschema/v5"
)

// Rules enforced in code, as they appear in problem.Violation.Rule. Schema
// violations have rules "schema:<keyword location>" instead.
const (
	RuleRequired        = "cloudevents-required"        // a required attribute is missing or empty
	RuleSpecVersion     = "cloudevents-specversion"     // specversion is not "1.0"
	RuleID              = "cloudevents-id"              // id is too long or holds control characters
	RuleSource          = "cloudevents-source"          // source is not urn:ods:<ODS code>
	RuleType            = "cloudevents-type"            // type is not a string
	RuleTypeUnsupported = "event-type-unsupported"      // type is not one a publisher may send (kind Unsupported)
	RuleTime            = "cloudevents-time"            // time is not an RFC 3339 date-time
	RuleDataContentType = "cloudevents-datacontenttype" // datacontenttype is not application/json
	RuleDataSchema      = "cloudevents-dataschema"      // dataschema names another schema
	RuleSubject         = "cloudevents-subject"         // subject is too long or holds control characters
	RuleData            = "cloudevents-data"            // data is not a JSON object
	RuleDataBase64      = "cloudevents-data-base64"     // data_base64 is not accepted
	RuleExtensionName   = "cloudevents-extension-name"  // an unknown attribute is not a valid extension name
	RuleExtensionValue  = "cloudevents-extension-value" // an extension value is not a string, number or boolean
	RuleDuplicateKey    = "json-duplicate-key"          // an object repeats a key
	RuleDataShape       = "data-shape"                  // data cannot be read (NotificationOnly)
	RuleNHSInEnvelope   = "nhs-number-in-envelope"      // id, subject or an extension holds the NHS number
	RuleMergeSame       = "merge-same-patient"          // a merge names one NHS number twice
	RulePreviousSame    = "previous-nhs-number-same"    // an update names the patient's NHS number as its previous one
	RuleBatchArray      = "batch-array"                 // a batch is not a JSON array
	RuleBatchNotEmpty   = "batch-not-empty"             // a batch holds no event
	// nhs.RuleFormat and nhs.RuleCheckDigit are used for NHS numbers.
)

// MaxViolations is the most violations one error reports.
const MaxViolations = 20

const (
	maxIDLen           = 256
	detailRequiredAttr = "required attribute is missing or empty"
	detailRequiredProp = "required property is missing"
	detailTime         = "time must be an RFC 3339 date-time with a time zone offset"
	detailData         = "data must be a JSON object"
)

// Validator parses and validates events. Build one with NewValidator at
// start and share it: it is immutable and safe for concurrent use.
type Validator struct {
	schemas map[string]*jsonschema.Schema // by event type
	dataURL map[string]string             // schema $id by event type, for dataschema
	docs    map[string]any                // schema documents by $id, to explain violations
}

// NewValidator compiles the schema of every event type. An error means a
// schema is broken: fail at start.
func NewValidator() (*Validator, error) {
	c, err := schemas.NewCompiler()
	if err != nil {
		return nil, err
	}
	v := &Validator{
		schemas: make(map[string]*jsonschema.Schema, len(typeSchemas)),
		dataURL: make(map[string]string, len(typeSchemas)),
		docs:    make(map[string]any),
	}
	for _, t := range typeSchemas {
		s, err := c.Compile(schemas.URL(t.file))
		if err != nil {
			return nil, fmt.Errorf("compiling schema for %s: %w", t.typ, err)
		}
		v.schemas[t.typ] = s
		v.dataURL[t.typ] = schemas.URL(t.file)
	}
	for _, name := range schemas.Files() {
		b, err := schemas.FS.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading schema %s: %w", name, err)
		}
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("decoding schema %s: %w", name, err)
		}
		v.docs[schemas.URL(name)] = doc
	}
	return v, nil
}

// Parse validates one structured-mode CloudEvents JSON event and returns it
// with its facts filled in.
//
// It checks, and reports every failure with a JSON pointer and a rule:
//   - the envelope: specversion "1.0"; id, a non-empty string; source,
//     "urn:ods:" and the publisher's ODS code; type, one ShortNames lists; time,
//     RFC 3339; datacontenttype "application/json" if present; dataschema,
//     if present, the type's schema URL; data, a JSON object; any other
//     attribute, a valid extension name ([a-z0-9]{1,20}) with a string,
//     number or boolean value; no object repeating a key;
//   - data, against the type's JSON Schema (every violation);
//   - rules the schema cannot express: each NHS number's modulus 11 check
//     digit; a merge naming two different NHS numbers; the NHS number not
//     copied into id, subject or an extension.
//
// Errors: problem.Malformed if raw is not a JSON object; problem.Unsupported
// (violation at /type) for an unknown type; otherwise problem.Invalid with
// up to MaxViolations violations, envelope first, then data by pointer.
func (v *Validator) Parse(raw []byte) (*Event, error) {
	d, err := decode(raw)
	if err != nil {
		return nil, err
	}
	env := d.env
	e := &Event{}
	var vs []problem.Violation
	if d.hasDup {
		vs = append(vs, problem.Violation{Pointer: d.dup, Rule: RuleDuplicateKey, Detail: "a key appears twice in the same object"})
	}

	// specversion
	switch sv := env["specversion"].(type) {
	case nil:
		vs = append(vs, problem.Violation{Pointer: "/specversion", Rule: RuleRequired, Detail: detailRequiredAttr})
	case string:
		if sv != SpecVersion {
			vs = append(vs, problem.Violation{Pointer: "/specversion", Rule: RuleSpecVersion, Detail: `specversion must be "1.0"`})
		}
	default:
		vs = append(vs, problem.Violation{Pointer: "/specversion", Rule: RuleSpecVersion, Detail: `specversion must be "1.0"`})
	}
	// id
	if e.ID, vs = requiredString(env, "id", vs); len(e.ID) > maxIDLen || hasControl(e.ID) {
		vs = append(vs, problem.Violation{Pointer: "/id", Rule: RuleID, Detail: "id must be at most 256 bytes without control characters"})
	}
	// source
	if e.Source, vs = requiredString(env, "source", vs); e.Source != "" {
		code, ok := strings.CutPrefix(e.Source, SourcePrefix)
		if !ok || !ods.Valid(code) {
			vs = append(vs, problem.Violation{Pointer: "/source", Rule: RuleSource, Detail: "source must be urn:ods: followed by the publisher's ODS code (upper case)"})
		} else {
			e.Publisher = code
		}
	}
	// type
	e.Type, vs = requiredString(env, "type", vs)
	schema, known := v.schemas[e.Type]
	// subject
	if e.Subject, vs = stringAttr(env, "subject", vs); len(e.Subject) > maxIDLen || hasControl(e.Subject) {
		vs = append(vs, problem.Violation{Pointer: "/subject", Rule: RuleSubject, Detail: "subject must be at most 256 bytes without control characters"})
	}
	// time
	var ts string
	if ts, vs = requiredString(env, "time", vs); ts != "" {
		if e.Time, err = time.Parse(time.RFC3339, ts); err != nil {
			vs = append(vs, problem.Violation{Pointer: "/time", Rule: RuleTime, Detail: detailTime})
		}
	}
	// datacontenttype
	if e.DataContentType, vs = stringAttr(env, "datacontenttype", vs); e.DataContentType != "" && e.DataContentType != media.JSON {
		vs = append(vs, problem.Violation{Pointer: "/datacontenttype", Rule: RuleDataContentType, Detail: "datacontenttype must be application/json when present"})
	}
	// dataschema
	var ds string
	if ds, vs = stringAttr(env, "dataschema", vs); ds != "" && known && ds != v.dataURL[e.Type] {
		vs = append(vs, problem.Violation{Pointer: "/dataschema", Rule: RuleDataSchema, Detail: "dataschema, when present, must be " + v.dataURL[e.Type]})
	}
	// extensions, in name order so that violations are reported stably
	for _, k := range sortedKeys(env) {
		if isCoreAttribute(k) {
			continue
		}
		x := env[k]
		switch {
		case k == "data_base64":
			vs = append(vs, problem.Violation{Pointer: "/data_base64", Rule: RuleDataBase64, Detail: "data must be a JSON object; data_base64 is not accepted"})
		case !extensionRE.MatchString(k):
			vs = append(vs, problem.Violation{Pointer: safePointer("", k), Rule: RuleExtensionName, Detail: "an extension attribute name must be 1 to 20 lower-case letters or digits"})
		case x == nil: // null: absent
		default:
			raw, ok := extensionValue(x)
			if !ok {
				vs = append(vs, problem.Violation{Pointer: safePointer("", k), Rule: RuleExtensionValue, Detail: "an extension attribute must be a string, number or boolean"})
				continue
			}
			if e.Extensions == nil {
				e.Extensions = make(map[string]json.RawMessage)
			}
			e.Extensions[k] = raw
		}
	}
	// data
	data, isObject := env["data"].(map[string]any)
	switch {
	case env["data"] == nil:
		vs = append(vs, problem.Violation{Pointer: "/data", Rule: RuleRequired, Detail: detailRequiredAttr})
	case !isObject || d.data == nil:
		vs = append(vs, problem.Violation{Pointer: "/data", Rule: RuleData, Detail: detailData})
		isObject = false
	}

	if e.Type != "" && !known {
		vs = append(vs, problem.Violation{Pointer: "/type", Rule: RuleTypeUnsupported, Detail: "type is not an event type this hub accepts"})
		return nil, &problem.Error{Kind: problem.Unsupported, Message: "event type is not supported", Violations: capViolations(vs)}
	}
	if !known || !isObject {
		return nil, invalid(vs)
	}

	// data against the schema
	var dataVs []problem.Violation
	if err := schema.Validate(data); err != nil {
		var ve *jsonschema.ValidationError
		if !errors.As(err, &ve) {
			return nil, problem.Wrap(problem.Internal, "validating event data", err)
		}
		dataVs = v.explain(ve, data, dataVs)
	}
	// Facts and the rules in code. An NHS number that failed the schema
	// (pattern or type) is not reported again.
	n := len(dataVs)
	dataVs = e.readFacts(data, dataVs)
	if len(dataVs) > n {
		failed := make(map[string]bool, n)
		for _, x := range dataVs[:n] {
			failed[x.Pointer] = true
		}
		kept := dataVs[:n]
		for _, x := range dataVs[n:] {
			if x.Rule == nhs.RuleCheckDigit || !failed[x.Pointer] {
				kept = append(kept, x)
			}
		}
		dataVs = kept
	}
	if a, b := e.Patient.NHSNumber, e.MergedNHSNumber; !a.IsZero() && a == b {
		dataVs = append(dataVs, problem.Violation{Pointer: "/data/mergedPatient/nhsNumber", Rule: RuleMergeSame, Detail: "the merged patient's NHS number must differ from the surviving patient's"})
	}
	if a, b := e.Patient.NHSNumber, e.PreviousNHSNumber; !a.IsZero() && a == b {
		dataVs = append(dataVs, problem.Violation{Pointer: "/data/previousNhsNumber", Rule: RulePreviousSame, Detail: "the previous NHS number must differ from the patient's"})
	}
	sortViolations(dataVs)
	vs = append(vs, dataVs...)
	vs = append(vs, e.envelopeLeaks()...)
	if len(vs) > 0 {
		return nil, invalid(vs)
	}
	if e.Data, err = compact(d.data); err != nil {
		return nil, err
	}
	return e, nil
}

// envelopeLeaks reports the NHS numbers copied into attributes that the hub
// logs and indexes as metadata (id, subject, extensions).
func (e *Event) envelopeLeaks() []problem.Violation {
	var vs []problem.Violation
	for _, n := range []nhs.Number{e.Patient.NHSNumber, e.MergedNHSNumber, e.PreviousNHSNumber} {
		if n.IsZero() {
			continue
		}
		d := n.Digits()
		if strings.Contains(e.ID, d) {
			vs = append(vs, problem.Violation{Pointer: "/id", Rule: RuleNHSInEnvelope, Detail: "the envelope must not carry the patient's NHS number"})
		}
		if strings.Contains(e.Subject, d) {
			vs = append(vs, problem.Violation{Pointer: "/subject", Rule: RuleNHSInEnvelope, Detail: "the envelope must not carry the patient's NHS number"})
		}
		for _, k := range sortedKeys(e.Extensions) {
			if strings.Contains(k, d) || bytes.Contains(e.Extensions[k], []byte(d)) {
				vs = append(vs, problem.Violation{Pointer: safePointer("", k), Rule: RuleNHSInEnvelope, Detail: "the envelope must not carry the patient's NHS number"})
			}
		}
	}
	return vs
}

func isCoreAttribute(k string) bool {
	switch k {
	case "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data":
		return true
	}
	return false
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sortViolations(vs []problem.Violation) {
	sort.SliceStable(vs, func(i, j int) bool {
		if vs[i].Pointer != vs[j].Pointer {
			return vs[i].Pointer < vs[j].Pointer
		}
		return vs[i].Rule < vs[j].Rule
	})
}

func capViolations(vs []problem.Violation) []problem.Violation {
	if len(vs) > MaxViolations {
		return vs[:MaxViolations:MaxViolations]
	}
	return vs
}

// invalid returns the Invalid error for vs (at least one).
func invalid(vs []problem.Violation) error {
	msg := "event is invalid"
	if len(vs) > MaxViolations {
		msg = "event is invalid (only the first " + strconv.Itoa(MaxViolations) + " violations are listed)"
	}
	return &problem.Error{Kind: problem.Invalid, Message: msg, Violations: capViolations(vs)}
}

// explain turns a jsonschema validation error into violations, one per leaf
// failure, using only locations and the schema (never ve.Message, which
// quotes instance values).
func (v *Validator) explain(ve *jsonschema.ValidationError, doc any, out []problem.Violation) []problem.Violation {
	kw := lastToken(ve.KeywordLocation)
	if len(ve.Causes) > 0 && kw != "anyOf" && kw != "oneOf" {
		for _, c := range ve.Causes {
			out = v.explain(c, doc, out)
		}
		return out
	}
	ptr := "/data" + instancePointer(ve.InstanceLocation)
	rule := schemaRule(ve.KeywordLocation)
	kv, parent := v.lookup(ve.AbsoluteKeywordLocation)
	switch kw {
	case "required":
		obj, _ := resolve(doc, ve.InstanceLocation).(map[string]any)
		names, _ := kv.([]any)
		n := len(out)
		for _, x := range names {
			name, _ := x.(string)
			if _, ok := obj[name]; !ok && name != "" {
				out = append(out, problem.Violation{Pointer: ptr + "/" + escapeToken(name), Rule: rule, Detail: detailRequiredProp})
			}
		}
		if len(out) == n { // could not tell which: point at the object
			out = append(out, problem.Violation{Pointer: ptr, Rule: rule, Detail: "a required property is missing"})
		}
		return out
	case "additionalProperties":
		obj, _ := resolve(doc, ve.InstanceLocation).(map[string]any)
		props, _ := parent["properties"].(map[string]any)
		n := len(out)
		for _, name := range sortedKeys(obj) {
			if _, ok := props[name]; !ok {
				p := safePointer(ptr, name)
				detail := "property is not allowed here (check its spelling)"
				if p == ptr {
					detail = "a property whose name is withheld is not allowed here"
				}
				out = append(out, problem.Violation{Pointer: p, Rule: rule, Detail: detail})
			}
		}
		if len(out) == n {
			out = append(out, problem.Violation{Pointer: ptr, Rule: rule, Detail: "a property is not allowed here"})
		}
		return out
	}
	return append(out, problem.Violation{Pointer: ptr, Rule: rule, Detail: detailFor(kw, kv, parent)})
}

// schemaRule names a schema violation by its keyword location with the
// $ref hops left out, e.g. "schema:/properties/patient/required": the path
// a sender reads in the schema with references resolved, which stays the
// same when shared definitions move between files.
func schemaRule(keywordLocation string) string {
	return "schema:" + strings.ReplaceAll(keywordLocation, "/$ref", "")
}

// detailFor writes a public explanation of a failed keyword from the
// schema alone: kv is the keyword's value, parent the schema object that
// holds it.
func detailFor(kw string, kv any, parent map[string]any) string {
	switch kw {
	case "type":
		return "must be of type " + list(kv, " or ")
	case "enum":
		return "must be one of: " + list(kv, ", ")
	case "const":
		b, _ := json.Marshal(kv)
		return "must be " + string(b)
	case "pattern":
		return "does not match the pattern " + fmt.Sprint(kv)
	case "format":
		return "must be a valid " + fmt.Sprint(kv)
	case "contentEncoding":
		return "must be " + fmt.Sprint(kv) + " encoded"
	case "minLength":
		return "must be at least " + num(kv) + " characters long"
	case "maxLength":
		return "must be at most " + num(kv) + " characters long"
	case "minItems":
		return "must hold at least " + num(kv) + " items"
	case "maxItems":
		return "must hold at most " + num(kv) + " items"
	case "minProperties":
		return "must hold at least " + num(kv) + " properties"
	case "maxProperties":
		return "must hold at most " + num(kv) + " properties"
	case "minimum":
		return "must be at least " + num(kv)
	case "maximum":
		return "must be at most " + num(kv)
	case "uniqueItems":
		return "items must be unique"
	case "not":
		if m, ok := kv.(map[string]any); ok {
			if c, ok := m["$comment"].(string); ok {
				return c
			}
		}
		return "matches a form that is not allowed"
	case "anyOf", "oneOf":
		if c, ok := parent["$comment"].(string); ok {
			return c
		}
		return "does not match any allowed form"
	}
	return "breaks the schema rule " + kw
}

func list(v any, sep string) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = fmt.Sprint(x)
		}
		return strings.Join(parts, sep)
	default:
		return fmt.Sprint(v)
	}
}

func num(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

// lookup returns the value at an absolute keyword location such as
// https://carehub.dev/schemas/common.v1.json#/$defs/encounter/required,
// and the schema object holding it.
func (v *Validator) lookup(loc string) (kv any, parent map[string]any) {
	base, frag, _ := strings.Cut(loc, "#")
	node := v.docs[base]
	if frag == "" {
		return node, nil
	}
	for _, tok := range strings.Split(frag[1:], "/") {
		parent, _ = node.(map[string]any)
		tok = unescapeToken(tok)
		switch n := node.(type) {
		case map[string]any:
			node = n[tok]
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(n) {
				return nil, nil
			}
			node = n[i]
			parent = nil
		default:
			return nil, nil
		}
	}
	return node, parent
}

// resolve returns the value at a jsonschema instance location within doc.
func resolve(doc any, loc string) any {
	if loc == "" {
		return doc
	}
	node := doc
	for _, tok := range strings.Split(loc[1:], "/") {
		tok = unescapeToken(tok)
		switch n := node.(type) {
		case map[string]any:
			node = n[tok]
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(n) {
				return nil
			}
			node = n[i]
		default:
			return nil
		}
	}
	return node
}

// instancePointer converts a jsonschema instance location (tokens escaped
// as RFC 6901 and then URL path-escaped) to an RFC 6901 pointer.
func instancePointer(loc string) string {
	if !strings.Contains(loc, "%") {
		return loc
	}
	toks := strings.Split(loc, "/")
	for i, t := range toks {
		if u, err := url.PathUnescape(t); err == nil {
			toks[i] = u
		}
	}
	return strings.Join(toks, "/")
}

// unescapeToken decodes one location token to the member name it names.
func unescapeToken(t string) string {
	if strings.Contains(t, "%") {
		if u, err := url.PathUnescape(t); err == nil {
			t = u
		}
	}
	if strings.Contains(t, "~") {
		t = strings.NewReplacer("~1", "/", "~0", "~").Replace(t)
	}
	return t
}

func escapeToken(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

func lastToken(loc string) string {
	return loc[strings.LastIndexByte(loc, '/')+1:]
}

// safePointer returns parent + "/" + name if name looks like a field name,
// else parent alone: a sender's property names end up in error texts and
// logs, and a name could be a value (an NHS number used as a key).
func safePointer(parent, name string) string {
	if !looksLikeFieldName(name) {
		return parent
	}
	return parent + "/" + escapeToken(name)
}

// looksLikeFieldName: 1 to 64 ASCII letters, digits, '_', '-' or '.',
// starting with a letter, '_' or '$', with no run of more than four digits.
func looksLikeFieldName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	c := s[0]
	if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '$') {
		return false
	}
	digits := 0
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			if digits++; digits > 4 {
				return false
			}
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c == '-', c == '.':
		default:
			return false
		}
		digits = 0
	}
	return true
}
