package adt

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // Europe/London must resolve on machines without a zoneinfo database

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/event"
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
}

// Mapper maps parsed ADT messages to canonical events. It is immutable and
// safe for concurrent use.
type Mapper struct {
	source string
	loc    *time.Location
	dest   []hl7.Path
}

// NewMapper validates o and returns a Mapper.
func NewMapper(o Options) (*Mapper, error) {
	if !ods.Valid(o.Source) {
		return nil, fmt.Errorf("adt: Options.Source %q is not an ODS code", o.Source)
	}
	mp := &Mapper{source: o.Source, loc: o.Location}
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

// Result is a mapped message.
type Result struct {
	// Trigger is the trigger event, e.g. "A01".
	Trigger string
	// ID is the CloudEvents id (see EventID), set even when nothing is
	// published.
	ID string
	// Type is the CloudEvents type; empty when nothing is published.
	Type string
	// Event is the CloudEvents JSON document (structured mode); nil when
	// the message is acknowledged without publishing anything (Skipped).
	Event []byte
	// Skipped says, in a fixed public text, why nothing is published.
	Skipped string
}

// Texts of Result.Skipped.
const (
	SkippedMergeLocal = "merge of local records only: the merged record holds no NHS number of its own"
)

// Map maps one ADT message. The error is an *Error for any message that
// cannot be mapped; its Ack says whether to answer AE or AR.
func (mp *Mapper) Map(m *hl7.Message) (*Result, error) {
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
	trigger := typ.Trigger
	if trigger == "" {
		trigger = strings.TrimSpace(m.Segment("EVN").Field(1).String())
	}
	mapFn, ok := triggers[trigger]
	if !ok {
		return nil, rejected(hl7.CodeUnsupportedEventCode, "MSH", 9, 2, reasonTrigger)
	}
	x := &mapping{mp: mp, m: m, trigger: trigger}
	t, err := x.eventTime()
	if err != nil {
		return nil, err
	}
	x.time = t
	res := &Result{Trigger: trigger, ID: mp.EventID(m)}
	evType, d, skipped, err := mapFn(x)
	if err != nil {
		return nil, err
	}
	if skipped != "" {
		res.Skipped = skipped
		return res, nil
	}
	res.Type = evType
	data, err := encodeData(d)
	if err != nil {
		return nil, err
	}
	ev := event.Event{ID: res.ID, Source: event.SourcePrefix + mp.source, Type: evType, Time: t.UTC(), Data: data}
	if res.Event, err = ev.Marshal(); err != nil {
		return nil, fmt.Errorf("adt: encoding event: %w", err)
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
	Patient       *patient       `json:"patient"`
	MergedPatient *mergedPatient `json:"mergedPatient,omitempty"`
	Encounter     *encounter     `json:"encounter,omitempty"`
	Transfer      *transfer      `json:"transfer,omitempty"`
	Discharge     *discharge     `json:"discharge,omitempty"`
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
	Destination *destination `json:"destination"`
}

type destination struct {
	Type string `json:"type"`
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
