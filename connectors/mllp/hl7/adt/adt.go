package adt

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // Europe/London must resolve on machines without a zoneinfo database

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/ods"
)

// DefaultDestinationFields are the terse paths read for the discharge
// destination's ODS code when Options.DestinationFields is nil.
var DefaultDestinationFields = []string{"PV1-37.1"}

// Options configures a Mapper.
type Options struct {
	// Source is the ODS code of the organisation the messages come from,
	// as established by authentication (the listener's source). It becomes
	// the events' source (urn:ods:<Source>) and the encounter's service
	// provider, and it is part of every event id. Required.
	Source string

	// Location is the time zone of HL7 timestamps that carry no UTC offset.
	// Nil means Europe/London.
	Location *time.Location

	// DestinationFields are terse paths (hl7.Path), tried in order, to the
	// ODS code of the organisation a patient is discharged to (or, on an
	// admission, expected to return to). Only a value shaped like an ODS
	// code counts. Nil means DefaultDestinationFields. A PAS that carries
	// the code in a Z-segment is configured here, e.g. ["ZU9-2.1", "PV1-37.1"].
	DestinationFields []string

	// AllowUnverifiedNHSNumbers shares events whose NHS number the sender
	// says is not verified (PID-32 an NHS number status other than 01).
	// False (the default) holds them.
	AllowUnverifiedNHSNumbers bool
	// AssumeVerifiedWithoutStatus treats an NHS number as verified when the
	// message carries no NHS number status in PID-32 at all (a feed that
	// sends only traced numbers and no status). False (the default) holds
	// such messages, unless AllowUnverifiedNHSNumbers is set.
	AssumeVerifiedWithoutStatus bool

	// Sensitivity labels events with sensitivity categories by the
	// treatment function (PV1-10) or location (PV1-3, PV1-6) of the
	// message; see SensitivityRule.
	Sensitivity []SensitivityRule
}

// SensitivityRule gives the categories of a treatment function code or a
// location. Exactly one of TreatmentFunction and Location is set.
type SensitivityRule struct {
	// TreatmentFunction is compared with PV1-10.1 (hospital service: the
	// NHS Data Dictionary treatment function code, e.g. 360), exactly.
	TreatmentFunction string `yaml:"treatmentFunction,omitempty" json:"treatmentFunction,omitempty"`
	// Location is compared, ignoring case, with the point of care (PL.1)
	// and the facility (PL.4, an ODS site code) of PV1-3 and PV1-6.
	Location string `yaml:"location,omitempty" json:"location,omitempty"`
	// Categories are the sensitivity category codes the event gets
	// (lower-case words joined by '-', e.g. sexual-health).
	Categories []string `yaml:"categories" json:"categories"`
}

// Validate reports what is wrong with the rule.
func (r SensitivityRule) Validate() error {
	var errs []error
	switch {
	case r.TreatmentFunction == "" && r.Location == "":
		errs = append(errs, errors.New("a rule names a treatmentFunction or a location"))
	case r.TreatmentFunction != "" && r.Location != "":
		errs = append(errs, errors.New("a rule names a treatmentFunction or a location, not both"))
	}
	for _, v := range []string{r.TreatmentFunction, r.Location} {
		if len(v) > 64 || strings.TrimSpace(v) != v {
			errs = append(errs, errors.New("a code is at most 64 characters, without spaces around it"))
		}
	}
	if len(r.Categories) == 0 {
		errs = append(errs, errors.New("a rule gives at least one category"))
	}
	for _, c := range r.Categories {
		if !isCode(c) {
			errs = append(errs, fmt.Errorf("category %q: lower-case letters and digits in words joined by '-'", c))
		}
	}
	return errors.Join(errs...)
}

// Mapper maps parsed ADT messages to canonical events. It is immutable and
// safe for concurrent use.
type Mapper struct {
	source     string
	loc        *time.Location
	dest       []hl7.Path
	unverified bool // Options.AllowUnverifiedNHSNumbers
	unstated   bool // Options.AssumeVerifiedWithoutStatus
	byFunction map[string][]string
	byLocation map[string][]string // upper-case location code
}

// NewMapper validates o and returns a Mapper.
func NewMapper(o Options) (*Mapper, error) {
	if !ods.Valid(o.Source) {
		return nil, fmt.Errorf("adt: Options.Source %q is not an ODS code", o.Source)
	}
	mp := &Mapper{source: o.Source, loc: o.Location, unverified: o.AllowUnverifiedNHSNumbers, unstated: o.AssumeVerifiedWithoutStatus,
		byFunction: map[string][]string{}, byLocation: map[string][]string{}}
	for i, r := range o.Sensitivity {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("adt: Options.Sensitivity[%d]: %w", i, err)
		}
		if r.TreatmentFunction != "" {
			mp.byFunction[r.TreatmentFunction] = append(mp.byFunction[r.TreatmentFunction], r.Categories...)
		} else {
			k := strings.ToUpper(r.Location)
			mp.byLocation[k] = append(mp.byLocation[k], r.Categories...)
		}
	}
	if mp.loc == nil {
		loc, err := time.LoadLocation("Europe/London")
		if err != nil {
			return nil, fmt.Errorf("adt: loading Europe/London: %w", err)
		}
		mp.loc = loc
	}
	fields := o.DestinationFields
	if fields == nil {
		fields = DefaultDestinationFields
	}
	for _, f := range fields {
		p, err := hl7.ParsePath(f)
		if err != nil {
			return nil, fmt.Errorf("adt: Options.DestinationFields: %w", err)
		}
		mp.dest = append(mp.dest, p)
	}
	return mp, nil
}

// Source returns the ODS code events are published as.
func (mp *Mapper) Source() string { return mp.source }

// Result is a mapped message: the events to publish, or why it is held.
type Result struct {
	// Trigger is the trigger event, e.g. "A01".
	Trigger string
	// ID is the message's id (see EventID): the id of its first event, and
	// of its held record when it is held.
	ID string
	// Events are the events to publish, in order: one for most triggers,
	// two for A17 (a swap is two transfers); none when Held is set.
	Events []Event
	// Held is set when the message is acknowledged without publishing
	// anything: it is recorded with this reason instead.
	Held *Held
	// Time is the message's event time (EVN-6, EVN-2, MSH-7); zero when a
	// held message has none that reads.
	Time time.Time
}

// Event is one canonical event of a message.
type Event struct {
	ID   string // the CloudEvents id
	Type string // the CloudEvents type
	JSON []byte // the CloudEvents JSON document (structured mode)
}

// Held says why a message is not shared, and who it is about as far as
// the message says (for the held record's key).
type Held struct {
	Reason string // a connector.Held reason code
	Detail string // a fixed public text
	// NHSNumber is the patient's NHS number when the message has a valid
	// one (an unverified number, an unshared trigger); else zero.
	NHSNumber nhs.Number
	// LocalID is the sender's local identifier of the patient (PID-3).
	LocalID string
}

// Reason codes of Held: connector.Held's reasons, defined once there.
const (
	HeldTriggerNotShared       = connector.HeldTriggerNotShared
	HeldNoNHSNumber            = connector.HeldNoNHSNumber
	HeldNHSNumberUnverified    = connector.HeldNHSNumberUnverified
	HeldNHSNumberStatusMissing = connector.HeldNHSNumberStatusMissing
	HeldLocalMerge             = connector.HeldLocalMerge
)

// Details of Held, fixed public texts.
const (
	detailNoNHS          = "the patient has no NHS number (PID-3, PID-2): held until the patient is identified"
	detailUnverified     = "the NHS number status (PID-32) says the number is not verified"
	detailStatusMissing  = "the message gives no NHS number status (PID-32), and this listener shares verified numbers only"
	detailLocalMerge     = "merge of local records only: the merged record holds no NHS number of its own"
	detailTriggerDefault = "this ADT trigger is not one carehub shares"
)

// Map maps one ADT message. The error is an *Error for any message that
// cannot be mapped; its Ack says whether to answer AE or AR. A message that
// maps to nothing shared is not an error: Result.Held says why.
func (mp *Mapper) Map(m *hl7.Message) (*Result, error) { return mp.mapMessage(m, nhs.Number{}) }

// MapConfirmed maps a held message again with the patient's NHS number as
// an operator traced and verified it: for a message without an NHS number
// it is the patient's; for one whose number was not verified (or had no
// status) it must be that number, which is then taken as verified. A
// message naming another number, or about two patients (A17), is an
// *Error (AE). Everything else is mapped as Map maps it.
func (mp *Mapper) MapConfirmed(m *hl7.Message, n nhs.Number) (*Result, error) {
	if n.IsZero() {
		return nil, errors.New("adt: MapConfirmed needs an NHS number")
	}
	return mp.mapMessage(m, n)
}

func (mp *Mapper) mapMessage(m *hl7.Message, confirmed nhs.Number) (*Result, error) {
	if err := m.ValidateHeader(); err != nil {
		var pe *hl7.ParseError
		if errors.As(err, &pe) {
			return nil, invalid(pe.Code, "MSH", pe.Field, 0, 0, reasonHeader)
		}
		return nil, err
	}
	if v := m.Version(); !strings.HasPrefix(v, "2.") {
		return nil, rejected(hl7.CodeUnsupportedVersionID, "MSH", 12, 0, reasonVersion)
	}
	typ := m.Type()
	if typ.Code != "ADT" {
		return nil, rejected(hl7.CodeUnsupportedMessageType, "MSH", 9, 1, reasonNotADT)
	}
	trigger := strings.ToUpper(strings.TrimSpace(typ.Trigger))
	if trigger == "" {
		trigger = strings.ToUpper(strings.TrimSpace(m.Segment("EVN").Field(1).String()))
	}
	res := &Result{Trigger: trigger, ID: mp.EventID(m)}
	x := &mapping{mp: mp, m: m, trigger: trigger, confirmed: confirmed}
	mapFn, ok := triggers[trigger]
	if !ok {
		res.Held = x.notShared()
		res.Time, _ = x.eventTime() // best effort: an unshared message is not refused for its time
		return res, nil
	}
	t, err := x.eventTime()
	if err != nil {
		return nil, err
	}
	x.time, res.Time = t, t
	outs, err := mapFn(x)
	if err != nil {
		return nil, err
	}
	if x.held != nil {
		res.Held = x.held
		return res, nil
	}
	for i, o := range outs {
		id := res.ID
		if i > 0 {
			id = mp.eventIDN(m, i+1)
		}
		data, err := encodeData(o.data)
		if err != nil {
			return nil, err
		}
		ev := event.Event{ID: id, Source: event.SourcePrefix + mp.source, Type: o.typ, Time: t.UTC(), Data: data}
		b, err := ev.Marshal()
		if err != nil {
			return nil, fmt.Errorf("adt: encoding event: %w", err)
		}
		res.Events = append(res.Events, Event{ID: id, Type: o.typ, JSON: b})
	}
	return res, nil
}

// eventIDNamespace is the UUID namespace of event ids (a random UUID fixed
// for carehub's HL7 v2 events; changing it changes every id).
var eventIDNamespace = [16]byte{0x6b, 0x0c, 0x3e, 0x41, 0x9d, 0x52, 0x4f, 0x8a, 0xa1, 0x37, 0x25, 0xe0, 0x5c, 0x88, 0x14, 0xd9}

// EventID returns the CloudEvents id of the event a message becomes: a
// name-based UUID (version 5, SHA-1) of the authenticated source, the
// sending application (MSH-3.1), the sending facility (MSH-4.1) and the
// message control ID (MSH-10). A resend of the same message gets the same
// id, which is how recipients drop duplicates; two applications of one
// trust that number their messages alike get different ids.
func (mp *Mapper) EventID(m *hl7.Message) string {
	msh := m.Segment("MSH")
	return uuid5(eventIDNamespace, mp.source+"\x00"+msh.Field(3).Component(1).String()+"\x00"+
		msh.Field(4).Component(1).String()+"\x00"+m.ControlID())
}

// eventIDN is the id of a message's n-th event (n > 1; A17 carries two):
// EventID's name with n appended.
func (mp *Mapper) eventIDN(m *hl7.Message, n int) string {
	msh := m.Segment("MSH")
	return uuid5(eventIDNamespace, mp.source+"\x00"+msh.Field(3).Component(1).String()+"\x00"+
		msh.Field(4).Component(1).String()+"\x00"+m.ControlID()+"\x00"+strconv.Itoa(n))
}

func uuid5(ns [16]byte, name string) string {
	h := sha1.New()
	h.Write(ns[:])
	h.Write([]byte(name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// data is the canonical event's data, field order as the schemas list
// them; event.Event.Marshal writes the envelope around it.
type data struct {
	Patient           *patient       `json:"patient"`
	PreviousNHSNumber string         `json:"previousNhsNumber,omitempty"`
	MergedPatient     *mergedPatient `json:"mergedPatient,omitempty"`
	Encounter         *encounter     `json:"encounter,omitempty"`
	Transfer          *transfer      `json:"transfer,omitempty"`
	ClassChange       *classChange   `json:"classChange,omitempty"`
	Discharge         *discharge     `json:"discharge,omitempty"`
	Changed           []string       `json:"changed,omitempty"`
	Sensitivity       []string       `json:"sensitivity,omitempty"`
	Confidential      bool           `json:"confidential,omitempty"`
}

type classChange struct {
	From string `json:"from"`
	To   string `json:"to"`
}

type patient struct {
	NHSNumber        string         `json:"nhsNumber"`
	GPPractice       string         `json:"gpPractice,omitempty"`
	Identifier       []identifier   `json:"identifier,omitempty"`
	Name             *humanName     `json:"name,omitempty"`
	BirthDate        string         `json:"birthDate,omitempty"`
	Gender           string         `json:"gender,omitempty"`
	DeceasedDateTime string         `json:"deceasedDateTime,omitempty"`
	Address          *address       `json:"address,omitempty"`
	Telecom          []contactPoint `json:"telecom,omitempty"`
}

type mergedPatient struct {
	NHSNumber  string       `json:"nhsNumber"`
	Identifier []identifier `json:"identifier,omitempty"`
}

type identifier struct {
	System string `json:"system,omitempty"`
	Value  string `json:"value"`
}

type humanName struct {
	Family string   `json:"family,omitempty"`
	Given  []string `json:"given,omitempty"`
	Prefix []string `json:"prefix,omitempty"`
	Suffix []string `json:"suffix,omitempty"`
}

type address struct {
	Line       []string `json:"line,omitempty"`
	City       string   `json:"city,omitempty"`
	District   string   `json:"district,omitempty"`
	PostalCode string   `json:"postalCode,omitempty"`
}

type contactPoint struct {
	System string `json:"system"`
	Value  string `json:"value"`
	Use    string `json:"use,omitempty"`
}

type encounter struct {
	ID              string        `json:"id"`
	Class           string        `json:"class,omitempty"`
	Period          *period       `json:"period,omitempty"`
	ServiceProvider *organisation `json:"serviceProvider,omitempty"`
	Location        *location     `json:"location,omitempty"`
	Specialty       string        `json:"specialty,omitempty"`
	AdmitSource     string        `json:"admitSource,omitempty"`
}

type period struct {
	Start string `json:"start,omitempty"`
	End   string `json:"end,omitempty"`
}

type organisation struct {
	ODS string `json:"ods"`
}

type location struct {
	ODS  string `json:"ods,omitempty"`
	Name string `json:"name,omitempty"`
	Ward string `json:"ward,omitempty"`
	Room string `json:"room,omitempty"`
	Bed  string `json:"bed,omitempty"`
}

type transfer struct {
	From *location `json:"from"`
	To   *location `json:"to"`
	Time string    `json:"time,omitempty"`
}

type discharge struct {
	Destination  *destination `json:"destination,omitempty"`
	ExpectedTime string       `json:"expectedTime,omitempty"`
}

type destination struct {
	Type string `json:"type"`
	Code string `json:"code,omitempty"`
	ODS  string `json:"ods,omitempty"`
	Name string `json:"name,omitempty"`
}

func encodeData(d *data) ([]byte, error) {
	var b bytes.Buffer
	b.Grow(1024)
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("adt: encoding event data: %w", err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'}), nil
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
