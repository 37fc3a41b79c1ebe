package event

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/carehub/carehub/schemas"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/uuid"
)

// Form names what a copy of an event carries to one recipient. The audit
// records the form of every copy.
type Form string

// The forms.
const (
	// FormFull is the event as its type's full form allows: everything the
	// publisher sent, except for corrections, whose full form is itself an
	// allow-list (a correction carries what a recipient needs to correct its
	// record, nothing more).
	FormFull Form = "full"
	// FormNotification is the notification-only form: the allow-list of
	// Notification, the same for every recipient and every type.
	FormNotification Form = "notification"
	// FormNotice is a notice the hub issues itself (WithheldNotice,
	// RegistrationEnded).
	FormNotice Form = "notice"
)

// Narrower returns the form that carries less of a and b: a copy may go
// only in a form every decision about it allows.
func Narrower(a, b Form) Form {
	if a == FormNotification || b == FormNotification {
		return FormNotification
	}
	return a
}

// FollowUp is how an event relates to earlier events on the same reference
// (the same encounter or care plan of the same patient), and so how it is
// routed.
type FollowUp int

// The relations.
const (
	// Standalone: routed by today's subscriptions, like any first event.
	Standalone FollowUp = iota
	// Continues: routed by today's subscriptions, and decided with the
	// sensitivity categories of every earlier event on the reference (a
	// discharge from a mental-health admission is about a mental-health
	// stay, whether or not the discharge says so).
	Continues
	// Updates: as Continues, and also goes to every recipient that received
	// an earlier event on the reference (its record needs the update), and
	// to nobody who was withheld those events and received none of them.
	Updates
	// Corrects: goes only to the recipients that received an event the
	// correction corrects (one of TypeRule.Of on the reference), never by
	// subscription, each again through consent; its full form is an
	// allow-list.
	Corrects
)

var followUpNames = [...]string{Standalone: "standalone", Continues: "continues", Updates: "updates", Corrects: "corrects"}

func (f FollowUp) String() string {
	if f < 0 || int(f) >= len(followUpNames) {
		return "unknown"
	}
	return followUpNames[f]
}

// TypeRule is what the hub does with one event type beyond validating it:
// which reference it is about, which fields each form carries, and how it
// relates to earlier events. typeRules holds one per type: a new event type
// is one entry (a test fails for a type without one).
type TypeRule struct {
	// Ref is the JSON pointer, within data, of the reference the event is
	// about ("/encounter/id", "/carePlan/id"), or "" when it is about the
	// patient only. RefKind prefixes its value in Event.Ref.
	Ref, RefKind string
	// Full is the allow-list of the full form, as JSON pointers within
	// data; nil means the whole event.
	Full []string
	// Thin lists what the notification-only form keeps besides
	// ThinCommon: the reference, and identifiers the type is about.
	Thin []string
	// FollowUp is the relation to earlier events on Ref.
	FollowUp FollowUp
	// Of, for Corrects, lists the types of the events it corrects; nil
	// means any event on the reference.
	Of []string
}

// ThinCommon is what every notification-only copy keeps of data: the
// patient's identifiers.
var ThinCommon = []string{"/patient/nhsNumber", "/patient/identifier"}

const (
	encounterRef = "/encounter/id"
	carePlanRef  = "/carePlan/id"
)

// typeRules is the one table of per-type routing and form rules.
var typeRules = map[string]TypeRule{
	TypeAdmission: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Continues},
	TypeTransfer:  {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Updates},
	TypeDischarge: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Continues},
	TypeCarePlan:  {Ref: carePlanRef, RefKind: "careplan", Thin: []string{carePlanRef}, FollowUp: Continues},
	TypeAdmissionCancelled: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Corrects,
		Full: []string{"/patient/nhsNumber", "/patient/identifier", encounterRef, "/cancellation"}},
	TypeDischargeCancelled: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Corrects,
		Of:   []string{TypeDischarge},
		Full: []string{"/patient/nhsNumber", "/patient/identifier", encounterRef, "/cancellation"}},
	// A pending discharge continues the stay; its cancellation corrects
	// it, for those who were told, and carries what they need to undo it.
	TypeDischargePending: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Continues},
	TypeDischargePendingCancelled: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Corrects,
		Of:   []string{TypeDischargePending},
		Full: []string{"/patient/nhsNumber", "/patient/identifier", encounterRef, "/cancellation"}},
	// A transfer cancelled corrects the transfer: it names the locations
	// the recipient was told of, so that its record moves the patient back.
	TypeTransferCancelled: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Corrects,
		Of:   []string{TypeTransfer},
		Full: []string{"/patient/nhsNumber", "/patient/identifier", encounterRef, "/transfer", "/cancellation"}},
	// A change of patient class (A06, A07) updates the stay, like a
	// transfer: every recipient of the stay's events needs it.
	TypePatientClassChanged: {Ref: encounterRef, RefKind: "encounter", Thin: []string{encounterRef}, FollowUp: Updates},
	// A number correction's notification keeps the number corrected: a
	// recipient re-files what it holds under it.
	TypePatientUpdated: {Thin: []string{"/previousNhsNumber"}},
	TypePatientMerged:  {Thin: []string{"/mergedPatient/nhsNumber", "/mergedPatient/identifier"}},
}

// RuleOf returns the rule of an event type.
func RuleOf(typ string) (TypeRule, bool) {
	r, ok := typeRules[typ]
	return r, ok
}

// Corrects reports whether an event of type typ, on the same reference,
// is one the rule corrects.
func (r TypeRule) Corrects(typ string) bool {
	if r.FollowUp != Corrects {
		return false
	}
	if r.Of == nil {
		return true
	}
	for _, t := range r.Of {
		if t == typ {
			return true
		}
	}
	return false
}

// Extension attributes and values of the forms the hub makes.
const (
	// FormExtension is the extension attribute that names the form of a
	// copy that is not the event as published (notification, notice).
	FormExtension = "carehubform"
)

// Schema files of the forms and notices the hub issues (package schemas).
const (
	NotificationSchema      = "notification.v1.json"
	WithheldNoticeSchema    = "withheld-notice.v1.json"
	RegistrationEndedSchema = "registration-ended.v1.json"
)

// Types the hub issues itself. They are not in Types(): no publisher may
// send them.
const (
	TypeWithheldNotice    = "org.carehub.withheld-notice.v1"
	TypeRegistrationEnded = "org.carehub.registration-ended.v1"
)

// FullRecord tells the recipient of a notification how to ask for the full
// record: from the publisher, naming the event, at the contact the
// deployment configured for the publisher (if any).
type FullRecord struct {
	ODS     string `json:"ods"`
	EventID string `json:"eventId"`
	Contact string `json:"contact,omitempty"`
}

// Full returns the event in its full form: the canonical envelope, with data
// cut to the type's Full allow-list when it has one (corrections).
func (e *Event) Full() ([]byte, error) {
	r := typeRules[e.Type]
	if r.Full == nil {
		return e.Marshal()
	}
	data, err := pick(e.Data, r.Full)
	if err != nil {
		return nil, err
	}
	c := *e
	c.Data, c.Subject, c.Extensions = data, "", nil
	return c.Marshal()
}

// Notification returns the notification-only form of the event. It is an
// allow-list, the same for every type: the envelope's specversion, id,
// source (the publisher), type, time and datacontenttype; dataschema naming
// notification.v1.json; the extension carehubform "notification"; and in
// data the patient's identifiers (ThinCommon), what the type's Thin lists
// (the encounter or care plan id), and fullRecord: how to ask for the full
// record (contact may be ""). Nothing else passes: no subject, no other
// extension, no location, specialty, dates, title, sensitivity category,
// demographics or mark of whether a document exists.
func (e *Event) Notification(contact string) ([]byte, error) {
	r := typeRules[e.Type]
	keep := append(append([]string(nil), ThinCommon...), r.Thin...)
	data, err := pick(e.Data, keep)
	if err != nil {
		return nil, err
	}
	fr, _ := json.Marshal(FullRecord{ODS: e.Publisher, EventID: e.ID, Contact: contact})
	data, err = with(data, "fullRecord", fr)
	if err != nil {
		return nil, err
	}
	c := Event{ID: e.ID, Source: e.Source, Type: e.Type, Time: e.Time, Data: data,
		DataSchema: schemaURL(NotificationSchema),
		Extensions: map[string]json.RawMessage{FormExtension: json.RawMessage(`"` + string(FormNotification) + `"`)}}
	return c.Marshal()
}

// Shape returns the event in form f (FormFull or FormNotification).
func (e *Event) Shape(f Form, contact string) ([]byte, error) {
	switch f {
	case FormFull:
		return e.Full()
	case FormNotification:
		return e.Notification(contact)
	}
	return nil, problem.New(problem.Internal, "shaping an event: unknown form")
}

// Notice is a notice the hub issues to one recipient about an event.
type Notice struct {
	ID   string
	Body []byte
}

// WithheldNoticeText is what a withheld notice says.
const WithheldNoticeText = "A discharge to your organisation was not shared with you under the patient's consent or confidentiality. Contact the discharging ward through the publisher named below."

// WithheldNotice returns the content-free notice sent, when the deployment's
// policy asks for it, to the organisation a patient is discharged to when
// the patient's consent withholds the discharge from it. It names no
// patient: no identifier, no pseudonym, nothing clinical. It carries the
// withheld event's type and id (so the publisher can find the patient when
// the recipient calls), the publisher and its contact, and the text above;
// its time is when the hub issued it, not when the discharge happened. Its
// id is derived from the event's source and id and the recipient, so a re-routed event
// gives the same notice.
func WithheldNotice(about *Event, recipient, contact string, issued time.Time) (Notice, error) {
	id := derivedID(about.Source, about.ID, "withheld-notice", recipient)
	data, _ := json.Marshal(map[string]any{
		"withheld": map[string]any{"type": about.Type, "eventId": about.ID},
		"contact":  FullRecord{ODS: about.Publisher, EventID: about.ID, Contact: contact},
		"text":     WithheldNoticeText,
	})
	c := Event{ID: id, Source: about.Source, Type: TypeWithheldNotice, Time: issued.UTC().Truncate(time.Second), Data: data,
		DataSchema: schemaURL(WithheldNoticeSchema),
		Extensions: map[string]json.RawMessage{FormExtension: json.RawMessage(`"` + string(FormNotice) + `"`)}}
	b, err := c.Marshal()
	return Notice{ID: id, Body: b}, err
}

// RegistrationEnded returns the notice sent to a patient's previous GP
// practice when an event names another practice: the patient's identifiers,
// the practice whose registration ended, and when the event that showed it
// happened. It carries nothing of the event itself (not the new practice,
// nothing clinical).
func RegistrationEnded(about *Event, previous string) (Notice, error) {
	id := derivedID(about.Source, about.ID, "registration-ended", previous)
	data, err := pick(about.Data, ThinCommon)
	if err != nil {
		return Notice{}, err
	}
	reg, _ := json.Marshal(map[string]string{"gpPractice": previous, "endedBy": about.Time.UTC().Format(time.RFC3339)})
	if data, err = with(data, "registration", reg); err != nil {
		return Notice{}, err
	}
	c := Event{ID: id, Source: about.Source, Type: TypeRegistrationEnded, Time: about.Time, Data: data,
		DataSchema: schemaURL(RegistrationEndedSchema),
		Extensions: map[string]json.RawMessage{FormExtension: json.RawMessage(`"` + string(FormNotice) + `"`)}}
	b, err := c.Marshal()
	return Notice{ID: id, Body: b}, err
}

// pick returns the members of the JSON object data at the given pointers
// (each "/a/b": member b of member a), and nothing else. A pointer to an
// absent member is skipped.
func pick(data json.RawMessage, pointers []string) (json.RawMessage, error) {
	var src map[string]any
	if err := json.Unmarshal(data, &src); err != nil {
		return nil, problem.Violated("/data", RuleDataShape, "data does not have the shape of a carehub event")
	}
	out := map[string]any{}
	for _, p := range pointers {
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		var v any = src
		found := true
		for _, k := range parts {
			m, ok := v.(map[string]any)
			if !ok {
				found = false
				break
			}
			if v, ok = m[k]; !ok {
				found = false
				break
			}
		}
		if !found {
			continue
		}
		dst := out
		for _, k := range parts[:len(parts)-1] {
			next, ok := dst[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				dst[k] = next
			}
			dst = next
		}
		dst[parts[len(parts)-1]] = v
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, problem.Wrap(problem.Internal, "re-encoding event data", err)
	}
	return b, nil
}

// with returns the JSON object data with member name set to v.
func with(data json.RawMessage, name string, v json.RawMessage) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, problem.Wrap(problem.Internal, "re-encoding event data", err)
	}
	m[name] = v
	b, err := json.Marshal(m)
	if err != nil {
		return nil, problem.Wrap(problem.Internal, "re-encoding event data", err)
	}
	return b, nil
}

// schemaURL is the $id of an embedded schema file (schemas.URL).
func schemaURL(file string) string { return schemas.URL(file) }

// derivedID returns a version 5 UUID of the parts: the same parts give the
// same id, so a notice made again (an event routed again) is recognised as
// the same by a recipient that drops duplicates.
func derivedID(parts ...string) string {
	return uuid.NewSHA1(noticeNamespace, []byte(strings.Join(parts, "\x00"))).String()
}

// noticeNamespace is the UUID namespace of notice ids.
var noticeNamespace = uuid.MustParse("5f0f3a52-8a2d-4c59-9a57-3c1e0b7d2f11")
