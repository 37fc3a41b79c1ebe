package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/carehub/carehub/schemas/media"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap/zapcore"
)

// The event types, CloudEvents "type" values. A type names its schema: the
// data of org.carehub.<name>.v1 is validated by schemas/<name>.v1.json.
const (
	TypeAdmission          = "org.carehub.admission.v1"
	TypeTransfer           = "org.carehub.transfer.v1"
	TypeDischarge          = "org.carehub.discharge.v1"
	TypeCarePlan           = "org.carehub.careplan.v1"
	TypeAdmissionCancelled = "org.carehub.admission-cancelled.v1"
	TypeDischargeCancelled = "org.carehub.discharge-cancelled.v1"
	TypePatientUpdated     = "org.carehub.patient-updated.v1"
	TypePatientMerged      = "org.carehub.patient-merged.v1"

	TypeDischargePending          = "org.carehub.discharge-pending.v1"
	TypeDischargePendingCancelled = "org.carehub.discharge-pending-cancelled.v1"
	TypeTransferCancelled         = "org.carehub.transfer-cancelled.v1"
	TypePatientClassChanged       = "org.carehub.patient-class-changed.v1"
)

// typeSchemas maps each type a publisher may send to its schema file, in
// the order ShortNames lists them.
var typeSchemas = []struct{ typ, file string }{
	{TypeAdmission, "admission.v1.json"},
	{TypeTransfer, "transfer.v1.json"},
	{TypeDischarge, "discharge.v1.json"},
	{TypeCarePlan, "careplan.v1.json"},
	{TypeAdmissionCancelled, "admission-cancelled.v1.json"},
	{TypeDischargeCancelled, "discharge-cancelled.v1.json"},
	{TypePatientUpdated, "patient-updated.v1.json"},
	{TypePatientMerged, "patient-merged.v1.json"},
	{TypeDischargePending, "discharge-pending.v1.json"},
	{TypeDischargePendingCancelled, "discharge-pending-cancelled.v1.json"},
	{TypeTransferCancelled, "transfer-cancelled.v1.json"},
	{TypePatientClassChanged, "patient-class-changed.v1.json"},
}

// typePrefix and typeSuffix surround a type's short name:
// org.carehub.<short>.v1.
const (
	typePrefix = "org.carehub."
	typeSuffix = ".v1"
)

// TypeNamed returns the event type of a short name as subscriptions and
// people write it ("discharge" → org.carehub.discharge.v1), and whether
// the hub knows that type.
func TypeNamed(short string) (string, bool) {
	typ := typePrefix + short + typeSuffix
	for _, t := range typeSchemas {
		if t.typ == typ {
			return typ, true
		}
	}
	return "", false
}

// ShortName returns the short name of an event type ("discharge").
func ShortName(typ string) string {
	return strings.TrimSuffix(strings.TrimPrefix(typ, typePrefix), typeSuffix)
}

// ShortNames returns the short names of the types a publisher may send, in
// a fixed order.
func ShortNames() []string {
	out := make([]string, len(typeSchemas))
	for i, t := range typeSchemas {
		out[i] = ShortName(t.typ)
	}
	return out
}

// Types returns every event type a publisher may send, in the order
// ShortNames lists them. The slice is the caller's.
func Types() []string {
	out := make([]string, len(typeSchemas))
	for i, t := range typeSchemas {
		out[i] = t.typ
	}
	return out
}

// Envelope constants.
const (
	SpecVersion = "1.0" // the CloudEvents version accepted; the datacontenttype is media.JSON

	// SourcePrefix starts every source: the publisher's ODS code follows.
	SourcePrefix = "urn:ods:"
)

// Event is one accepted event: the envelope's attributes, the data as JSON,
// and the facts the hub routes on, read from the data once.
type Event struct {
	ID              string
	Source          string // "urn:ods:" + Publisher
	Type            string // a type a publisher may send (TypeNamed knows it), or one the hub issues
	Subject         string // optional; may identify the encounter: never log it
	Time            time.Time
	DataContentType string // "application/json", or "" if the sender omitted it
	// DataSchema is the dataschema attribute of a form the hub made
	// (Notification, the notices); "" for an event as published.
	DataSchema string
	Data       json.RawMessage // compact JSON object
	// Extensions holds the CloudEvents extension attributes as sent, by
	// name; each value is a JSON string, number or boolean.
	Extensions map[string]json.RawMessage

	// Facts from the data.
	Publisher       string     // ODS code of the publisher, from Source
	Patient         Patient    // data.patient
	MergedNHSNumber nhs.Number // data.mergedPatient.nhsNumber (patient-merged only)
	EncounterID     string     // data.encounter.id, if any
	// Ref names the reference the event is about, by its type's rule
	// (TypeRule.Ref): "encounter:" + the encounter id, "careplan:" + the
	// care plan id, or "" for an event about the patient only.
	Ref                  string
	DischargeDestination string     // data.discharge.destination.ods, if any
	Labels               []string   // data.sensitivity: sensitivity categories
	Confidential         bool       // data.confidential: the publisher marks the record protected
	PreviousNHSNumber    nhs.Number // data.previousNhsNumber (patient-updated: a corrected NHS number)
	HasDocument          bool       // a clinical document is attached, inline or by reference
}

// Patient is what an event says about its patient that routing needs.
type Patient struct {
	NHSNumber  nhs.Number // data.patient.nhsNumber
	GPPractice string     // data.patient.gpPractice: ODS code of the registered practice, if stated
}

var (
	extensionRE = regexp.MustCompile(`^[a-z0-9]{1,20}$`)
)

// Marshal returns the canonical envelope: compact JSON with the attributes
// in a fixed order (specversion, id, source, type, subject, time,
// datacontenttype, dataschema if set, extensions by name, data), time in RFC 3339, and
// datacontenttype always "application/json". It is built from the fields,
// so it reflects any change made to them.
func (e *Event) Marshal() ([]byte, error) {
	if e.ID == "" || e.Source == "" || e.Type == "" || e.Time.IsZero() {
		return nil, errors.New("event: marshalling an event without id, source, type or time")
	}
	var b bytes.Buffer
	b.Grow(len(e.Data) + 256)
	b.WriteString(`{"specversion":"1.0","id":`)
	writeString(&b, e.ID)
	b.WriteString(`,"source":`)
	writeString(&b, e.Source)
	b.WriteString(`,"type":`)
	writeString(&b, e.Type)
	if e.Subject != "" {
		b.WriteString(`,"subject":`)
		writeString(&b, e.Subject)
	}
	b.WriteString(`,"time":"`)
	b.WriteString(e.Time.Format(time.RFC3339Nano))
	b.WriteString(`","datacontenttype":"` + media.JSON + `"`)
	if e.DataSchema != "" {
		b.WriteString(`,"dataschema":`)
		writeString(&b, e.DataSchema)
	}
	if len(e.Extensions) > 0 {
		names := make([]string, 0, len(e.Extensions))
		for k := range e.Extensions {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if !extensionRE.MatchString(k) {
				return nil, errors.New("event: marshalling an extension with an invalid name")
			}
			v := e.Extensions[k]
			if len(v) == 0 || v[0] == '{' || v[0] == '[' {
				return nil, errors.New("event: marshalling an extension whose value is not a string, number or boolean")
			}
			b.WriteString(`,"`)
			b.WriteString(k)
			b.WriteString(`":`)
			if err := json.Compact(&b, v); err != nil {
				return nil, errors.New("event: marshalling an extension whose value is not JSON")
			}
		}
	}
	b.WriteString(`,"data":`)
	if len(e.Data) == 0 || firstByte(e.Data) != '{' {
		return nil, errors.New("event: marshalling an event whose data is not a JSON object")
	}
	if err := json.Compact(&b, e.Data); err != nil {
		return nil, errors.New("event: marshalling an event whose data is not JSON")
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// writeString writes s as a JSON string. Event attributes are ASCII almost
// always; anything needing escapes goes through encoding/json.
func writeString(b *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			q, _ := json.Marshal(s)
			b.Write(q)
			return
		}
	}
	b.WriteByte('"')
	b.WriteString(s)
	b.WriteByte('"')
}

// firstInvalidUTF8 returns the offset of b's first byte that does not
// start a valid UTF-8 sequence.
func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(b)
}

func firstByte(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}

// Unmarshal decodes an event the hub already accepted (the value of a
// carehub.events or outbox record). It checks no schema, for speed, but
// extracts the same facts as Validator.Parse, and still fails (closed) if
// the envelope lacks id, source, type, time or a data object, or if the
// patient's NHS number is missing or invalid: nothing may be routed without
// it.
func Unmarshal(b []byte) (*Event, error) {
	d, err := decode(b)
	if err != nil {
		return nil, err
	}
	env := d.env
	e := &Event{}
	var vs []problem.Violation
	e.ID, vs = requiredString(env, "id", vs)
	e.Source, vs = requiredString(env, "source", vs)
	e.Type, vs = requiredString(env, "type", vs)
	e.Subject, vs = stringAttr(env, "subject", vs)
	e.DataContentType, vs = stringAttr(env, "datacontenttype", vs)
	e.DataSchema, vs = stringAttr(env, "dataschema", vs)
	var ts string
	if ts, vs = requiredString(env, "time", vs); ts != "" {
		if e.Time, err = time.Parse(time.RFC3339, ts); err != nil {
			vs = append(vs, problem.Violation{Pointer: "/time", Rule: RuleTime, Detail: detailTime})
		}
	}
	if code, ok := strings.CutPrefix(e.Source, SourcePrefix); ok {
		e.Publisher = code
	}
	for k, x := range env {
		if isCoreAttribute(k) || x == nil {
			continue
		}
		if raw, ok := extensionValue(x); ok {
			if e.Extensions == nil {
				e.Extensions = make(map[string]json.RawMessage)
			}
			e.Extensions[k] = raw
		}
	}
	data, _ := env["data"].(map[string]any)
	if data == nil || d.data == nil {
		vs = append(vs, problem.Violation{Pointer: "/data", Rule: RuleData, Detail: detailData})
	}
	if len(vs) > 0 {
		return nil, invalid(vs)
	}
	if e.Data, err = compact(d.data); err != nil {
		return nil, err
	}
	if vs = e.readFacts(data, vs); len(vs) > 0 {
		return nil, invalid(vs)
	}
	if e.Patient.NHSNumber.IsZero() {
		return nil, invalid([]problem.Violation{{Pointer: "/data/patient/nhsNumber", Rule: RuleRequired, Detail: detailRequiredProp}})
	}
	return e, nil
}

// decoded is an event decoded once.
type decoded struct {
	env    map[string]any // the envelope, numbers as json.Number
	data   []byte         // the bytes of the top-level data member, if it is an object
	dup    string         // pointer to the first repeated key, if hasDup
	hasDup bool
}

// decode decodes a JSON object. Not JSON, or not an object, is Malformed.
// The json package's error text can quote the input, so only the byte
// offset is kept as the private cause.
func decode(b []byte) (*decoded, error) {
	// JSON text is UTF-8 (RFC 8259). encoding/json would quietly replace
	// invalid bytes by U+FFFD, so that the event made durable, its id
	// included, differs from the one sent. Regression (issue 14): a name
	// with bytes \xff\xfe got 202 and was delivered as invalid JSON.
	if !utf8.Valid(b) {
		return nil, problem.New(problem.Malformed, "event is not valid UTF-8 (at byte "+strconv.Itoa(firstInvalidUTF8(b))+")")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var env map[string]any
	if err := dec.Decode(&env); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return nil, problem.Wrap(problem.Malformed, "event is not valid JSON",
				fmt.Errorf("json syntax error at byte offset %d", se.Offset))
		case errors.As(err, &te):
			return nil, problem.New(problem.Malformed, "event is not a JSON object")
		default:
			return nil, problem.New(problem.Malformed, "event is not valid JSON")
		}
	}
	if env == nil { // the input was null
		return nil, problem.New(problem.Malformed, "event is not a JSON object")
	}
	// Only JSON whitespace may follow. (Regression, found by FuzzParse: a
	// NUL byte after the object read as "nothing follows", and scan, which
	// needs valid JSON, ran off the end of the trailing bytes.)
	end := int(dec.InputOffset())
	if len(bytes.TrimLeft(b[end:], " \t\r\n")) != 0 {
		return nil, problem.New(problem.Malformed, "event is followed by more data")
	}
	d := &decoded{env: env}
	s := scan(b[:end])
	d.dup, d.hasDup = s.dup, s.hasDup
	if s.dataEnd > 0 {
		d.data = b[s.dataStart:s.dataEnd]
	}
	return d, nil
}

// requiredString reads a string attribute that must be present and non-empty.
func requiredString(env map[string]any, name string, vs []problem.Violation) (string, []problem.Violation) {
	n := len(vs)
	s, vs := stringAttr(env, name, vs)
	if s == "" && len(vs) == n {
		vs = append(vs, problem.Violation{Pointer: "/" + name, Rule: RuleRequired, Detail: detailRequiredAttr})
	}
	return s, vs
}

// stringAttr reads an optional string attribute; null counts as absent.
func stringAttr(env map[string]any, name string, vs []problem.Violation) (string, []problem.Violation) {
	switch x := env[name].(type) {
	case nil:
		return "", vs
	case string:
		return x, vs
	default:
		return "", append(vs, problem.Violation{Pointer: "/" + name, Rule: "cloudevents-" + name, Detail: "attribute must be a string"})
	}
}

// extensionValue returns the JSON of an extension attribute's value, if it
// is a string, number or boolean.
func extensionValue(x any) (json.RawMessage, bool) {
	switch x := x.(type) {
	case json.Number:
		return json.RawMessage(x), true
	case string, bool:
		b, err := json.Marshal(x)
		return b, err == nil
	}
	return nil, false
}

func compact(raw []byte) (json.RawMessage, error) {
	var b bytes.Buffer
	b.Grow(len(raw))
	if err := json.Compact(&b, raw); err != nil {
		return nil, problem.New(problem.Malformed, "event is not valid JSON")
	}
	return b.Bytes(), nil
}

// readFacts fills the facts from the decoded data, appending a violation
// for each NHS number that is present but does not parse. It reads exact
// member names only, and tolerates any shape (Parse has checked the shape
// against the schema by then; Unmarshal trusts its topic).
func (e *Event) readFacts(data map[string]any, vs []problem.Violation) []problem.Violation {
	patient, _ := data["patient"].(map[string]any)
	if x, ok := patient["nhsNumber"]; ok {
		s, _ := x.(string)
		n, err := nhs.Parse(s)
		if err != nil {
			vs = append(vs, nhsViolation("/data/patient/nhsNumber", err))
		}
		e.Patient.NHSNumber = n
	}
	e.Patient.GPPractice, _ = patient["gpPractice"].(string)
	merged, _ := data["mergedPatient"].(map[string]any)
	if x, ok := merged["nhsNumber"]; ok {
		s, _ := x.(string)
		n, err := nhs.Parse(s)
		if err != nil {
			vs = append(vs, nhsViolation("/data/mergedPatient/nhsNumber", err))
		}
		e.MergedNHSNumber = n
	}
	if x, ok := data["previousNhsNumber"]; ok {
		s, _ := x.(string)
		n, err := nhs.Parse(s)
		if err != nil {
			vs = append(vs, nhsViolation("/data/previousNhsNumber", err))
		}
		e.PreviousNHSNumber = n
	}
	e.Confidential, _ = data["confidential"].(bool)
	encounter, _ := data["encounter"].(map[string]any)
	e.EncounterID, _ = encounter["id"].(string)
	if r := typeRules[e.Type]; r.Ref != "" {
		if id, _ := lookup(data, r.Ref).(string); id != "" {
			e.Ref = r.RefKind + ":" + id
		}
	}
	discharge, _ := data["discharge"].(map[string]any)
	destination, _ := discharge["destination"].(map[string]any)
	e.DischargeDestination, _ = destination["ods"].(string)
	if labels, ok := data["sensitivity"].([]any); ok {
		e.Labels = make([]string, 0, len(labels))
		for _, l := range labels {
			if s, ok := l.(string); ok {
				e.Labels = append(e.Labels, s)
			}
		}
	}
	carePlan, _ := data["carePlan"].(map[string]any)
	e.HasDocument = discharge["summary"] != nil || discharge["summaryReference"] != nil ||
		carePlan["document"] != nil || carePlan["documentReference"] != nil
	return vs
}

// lookup returns the value at a JSON pointer within data, or nil.
func lookup(data map[string]any, pointer string) any {
	var v any = data
	for _, k := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// nhsViolation re-points an error from nhs.Parse at the field it came from.
func nhsViolation(pointer string, err error) problem.Violation {
	var pe *problem.Error
	if errors.As(err, &pe) && len(pe.Violations) == 1 {
		v := pe.Violations[0]
		v.Pointer = pointer
		return v
	}
	return problem.Violation{Pointer: pointer, Rule: nhs.RuleFormat, Detail: "NHS number is not valid"}
}

// String returns the event's metadata only: id, type and publisher.
func (e Event) String() string {
	return "event{id=" + strconv.Quote(e.ID) + " type=" + e.Type + " publisher=" + e.Publisher + "}"
}

// GoString is String, so that %#v does not dump the data either.
func (e Event) GoString() string { return e.String() }

// Format prints String for every verb, so no fmt verb shows the data.
func (e Event) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, e.String()) }

// LogValue implements slog.LogValuer: metadata only.
func (e Event) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("id", e.ID),
		slog.String("type", e.Type),
		slog.String("publisher", e.Publisher),
		slog.Time("time", e.Time),
		slog.Int("dataBytes", len(e.Data)),
	)
}

// MarshalLogObject implements zapcore.ObjectMarshaler: metadata only, so
// zap.Any("event", e) and zap.Object("event", e) are safe.
func (e Event) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("id", e.ID)
	enc.AddString("type", e.Type)
	enc.AddString("publisher", e.Publisher)
	enc.AddTime("time", e.Time)
	enc.AddInt("dataBytes", len(e.Data))
	return nil
}
