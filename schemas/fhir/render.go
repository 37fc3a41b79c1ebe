package fhir

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/google/uuid"
)

// namespace seeds the name-based UUIDs of emitted resources: the same event
// always gives the same resource ids and fullUrls.
var namespace = uuid.MustParse("6f6a1d0e-4f57-5bb5-9a0e-0c2a4b1f7e11")

// Entry is one resource of an event, with the fullUrl it has in a Bundle.
type Entry struct {
	FullURL  string
	Type     string // resource type
	Resource map[string]any
	// Match is the conditional-update query that finds the resource at a
	// receiving server ("identifier=system|value"), for transactions.
	Match string
}

// Resources is an event as FHIR R4 resources.
type Resources struct {
	Header  Entry   // the MessageHeader
	Focus   *Entry  // the resource the event is about: Encounter, CarePlan or Patient
	Entries []Entry // every resource but the header: Patient first, then the focus, then documents
}

// Code is the event-type code of an event type in SystemEvent: the short
// name ("admission").
func Code(eventType string) string { return event.ShortName(eventType) }

// rid is the id of the resource of kind an event gives: a name-based UUID
// of the event's identity (event.Identity: its source and its id, as
// CloudEvents identifies an event) and the kind. Two publishers' events
// with the same id give two MessageHeaders, two Bundles, two Patients.
func rid(ev *event.Event, kind string) string {
	return uuid.NewSHA1(namespace, []byte(event.Identity(ev.Source, ev.ID)+"\x00"+kind)).String()
}

// bundleIdentifier is Bundle.identifier: the event's id (SystemEventID),
// assigned by its publisher (the ODS code of its source), so that the pair
// that identifies the event travels with it.
func bundleIdentifier(ev *event.Event) identifier {
	return identifier{System: SystemEventID, Value: ev.ID,
		Assigner: &reference{Type: "Organization", Identifier: &identifier{System: SystemODS, Value: ev.Publisher}}}
}

// FromEvent maps an accepted event to its resources. It fails only on an
// event whose data is not the shape of its type (problem.Internal).
func FromEvent(ev *event.Event) (*Resources, error) {
	var d Data
	if err := json.Unmarshal(ev.Data, &d); err != nil || d.Patient == nil {
		return nil, problem.New(problem.Internal, "event data does not have the shape of a carehub event")
	}
	r := &Resources{}
	add := func(kind string, res map[string]any, match string) *Entry {
		id := rid(ev, kind)
		res["id"] = id
		r.Entries = append(r.Entries, Entry{FullURL: "urn:uuid:" + id, Type: res["resourceType"].(string), Resource: res, Match: match})
		return &r.Entries[len(r.Entries)-1]
	}
	security := securityLabels(d.Sensitivity, d.Confidential)
	redacted := string(ev.Extensions[event.FormExtension]) == `"`+string(event.FormNotification)+`"`

	pat := patientResource(d.Patient, d.MergedPatient, d.PreviousNHSNumber)
	if security != nil {
		pat["meta"] = meta{Security: security}
	}
	// A corrected NHS number finds the record the receiver holds under the
	// number it replaces, so that the record is re-filed, not doubled.
	match := d.Patient.NHSNumber
	if d.PreviousNHSNumber != "" {
		match = d.PreviousNHSNumber
	}
	patient := add("Patient", pat, "identifier="+SystemNHSNumber+"|"+match)
	patientRef := reference{Reference: patient.FullURL, Type: "Patient"}
	focus := 0 // index into r.Entries

	typ := ev.Type
	if d.Encounter != nil {
		enc := encounterResource(ev, &d, patientRef)
		if security != nil {
			enc["meta"] = meta{Security: security}
		}
		add("Encounter", enc, "identifier="+SystemEncounterID+"|"+d.Encounter.ID)
		focus = len(r.Entries) - 1
	}
	if d.CarePlan != nil {
		cp := carePlanResource(d.CarePlan, patientRef)
		if security != nil {
			cp["meta"] = meta{Security: security}
		}
		add("CarePlan", cp, "identifier="+SystemCarePlanID+"|"+d.CarePlan.ID)
		focus = len(r.Entries) - 1
	}
	var encounterRef *reference
	if d.Encounter != nil {
		encounterRef = &reference{Reference: r.Entries[1].FullURL, Type: "Encounter"}
	}
	if d.Discharge != nil && (d.Discharge.Summary != nil || d.Discharge.SummaryReference != nil) {
		doc := documentResource(LOINCDischargeSummary, "Discharge summary", d.Discharge.Summary, d.Discharge.SummaryReference, patientRef, encounterRef)
		if security != nil {
			doc["meta"] = meta{Security: security}
		}
		add("DocumentReference", doc, "")
	}
	if d.CarePlan != nil && (d.CarePlan.Document != nil || d.CarePlan.DocumentReference != nil) {
		doc := documentResource(LOINCCarePlan, "Care plan", d.CarePlan.Document, d.CarePlan.DocumentReference, patientRef, nil)
		if security != nil {
			doc["meta"] = meta{Security: security}
		}
		e := add("DocumentReference", doc, "")
		r.Entries[focus].Resource["supportingInfo"] = []reference{{Reference: e.FullURL, Type: "DocumentReference"}}
	}
	r.Focus = &r.Entries[focus]

	hdr := map[string]any{
		"resourceType": "MessageHeader",
		"eventCoding":  coding{System: SystemEvent, Code: Code(typ)},
		"sender":       reference{Type: "Organization", Identifier: &identifier{System: SystemODS, Value: ev.Publisher}},
		"source":       map[string]any{"name": "carehub", "endpoint": "urn:ods:" + ev.Publisher},
		"focus":        []reference{{Reference: r.Focus.FullURL, Type: r.Focus.Type}},
	}
	if redacted {
		// The consent decision withheld documents: say so, without them.
		hdr["meta"] = meta{Security: []coding{{System: SystemRedacted, Code: string(event.FormNotification), Display: "notification only: the full record is withheld"}}}
	}
	id := rid(ev, "MessageHeader")
	hdr["id"] = id
	r.Header = Entry{FullURL: "urn:uuid:" + id, Type: "MessageHeader", Resource: hdr}
	return r, nil
}

// securityLabels are the meta.security codings of an event's resources:
// its sensitivity categories, then its confidentiality (v3-Confidentiality
// R, restricted, for a record the publisher protects; N, normal, when the
// event says explicitly that it is not protected).
func securityLabels(cats []string, confidential *bool) []coding {
	var out []coding
	for _, c := range cats {
		out = append(out, coding{System: SystemSensitivity, Code: c})
	}
	switch {
	case confidential == nil:
	case *confidential:
		out = append(out, coding{System: SystemConfidentiality, Code: ConfidentialityRestricted, Display: "restricted"})
	default:
		out = append(out, coding{System: SystemConfidentiality, Code: ConfidentialityNormal, Display: "normal"})
	}
	return out
}

func patientResource(p *Patient, merged *Merged, previousNHS string) map[string]any {
	ids := []identifier{{System: SystemNHSNumber, Value: p.NHSNumber}}
	if previousNHS != "" {
		ids = append(ids, identifier{Use: "old", System: SystemNHSNumber, Value: previousNHS})
	}
	for _, i := range p.Identifier {
		ids = append(ids, identifier{System: i.System, Value: i.Value})
	}
	res := map[string]any{"resourceType": "Patient", "identifier": ids}
	if p.Name != nil {
		n := map[string]any{"use": "usual"}
		if p.Name.Text != "" {
			n["text"] = p.Name.Text
		}
		if p.Name.Family != "" {
			n["family"] = p.Name.Family
		}
		if len(p.Name.Given) > 0 {
			n["given"] = p.Name.Given
		}
		if len(p.Name.Prefix) > 0 {
			n["prefix"] = p.Name.Prefix
		}
		if len(p.Name.Suffix) > 0 {
			n["suffix"] = p.Name.Suffix
		}
		res["name"] = []any{n}
	}
	if p.Gender != "" {
		res["gender"] = p.Gender
	}
	if p.BirthDate != "" {
		res["birthDate"] = p.BirthDate
	}
	if p.DeceasedDateTime != "" {
		res["deceasedDateTime"] = p.DeceasedDateTime
	}
	if p.Address != nil {
		a := map[string]any{"use": "home"}
		if len(p.Address.Line) > 0 {
			a["line"] = p.Address.Line
		}
		for k, v := range map[string]string{"city": p.Address.City, "district": p.Address.District, "postalCode": p.Address.PostalCode} {
			if v != "" {
				a[k] = v
			}
		}
		res["address"] = []any{a}
	}
	if len(p.Telecom) > 0 {
		res["telecom"] = p.Telecom
	}
	if p.GPPractice != "" {
		res["generalPractitioner"] = []reference{{Type: "Organization", Identifier: &identifier{System: SystemODS, Value: p.GPPractice}}}
	}
	if merged != nil {
		res["link"] = []any{map[string]any{
			"other": reference{Type: "Patient", Identifier: &identifier{System: SystemNHSNumber, Value: merged.NHSNumber}},
			"type":  "replaces",
		}}
	}
	return res
}

// classCodes maps the canonical encounter class to v3 ActCode.
var classCodes = map[string]string{
	"inpatient": "IMP", "emergency": "EMER", "outpatient": "AMB", "day-case": "SS",
	"maternity": "IMP", "preadmission": "PRENC", "other": "IMP",
}

// classCoding is Encounter.class for a canonical class: its v3 ActCode,
// or the v3 NullFlavor UNK when the class is unknown.
func classCoding(class string) coding {
	if c, ok := classCodes[class]; ok {
		return coding{System: SystemActCode, Code: c}
	}
	return coding{System: SystemNullFlavor, Code: "UNK", Display: "unknown"}
}

// historyCoding is Encounter.classHistory.class for a canonical class. The
// history has one coding per entry (and no type beside it), so a class
// that shares its ActCode with another (maternity and other are IMP, as
// inpatient is) keeps carehub's own code there.
func historyCoding(class string) coding {
	switch class {
	case "maternity", "other":
		return coding{System: SystemClass, Code: class}
	}
	return classCoding(class)
}

// encounterStatus is the Encounter.status each event type implies: the
// encounter of every event but a discharge (finished) and a cancelled
// admission (entered-in-error) is going on (in-progress), pending
// discharges, cancelled transfers and class changes included.
func encounterStatus(typ string) string {
	switch typ {
	case event.TypeDischarge:
		return "finished"
	case event.TypeAdmissionCancelled:
		return "entered-in-error"
	default:
		return "in-progress"
	}
}

// dispositionCodes maps a destination type to HL7's discharge-disposition
// (whose hosp is a hospice, not a hospital).
var dispositionCodes = map[string]string{
	"home": "home", "care-home": "long", "nursing-home": "snf", "hospital": "other-hcf", "hospice": "hosp", "other": "oth",
}

// extension is a FHIR Extension, as emitted.
type extension struct {
	URL            string      `json:"url"`
	Extension      []extension `json:"extension,omitempty"`
	ValueDateTime  string      `json:"valueDateTime,omitempty"`
	ValueReference *reference  `json:"valueReference,omitempty"`
}

func encounterResource(ev *event.Event, d *Data, patient reference) map[string]any {
	e := d.Encounter
	ids := []identifier{{System: SystemEncounterID, Value: e.ID}}
	for _, i := range e.Identifier {
		ids = append(ids, identifier{System: i.System, Value: i.Value})
	}
	res := map[string]any{"resourceType": "Encounter", "identifier": ids, "status": encounterStatus(ev.Type), "subject": patient}
	class := e.Class
	if class == "" && d.ClassChange != nil {
		class = d.ClassChange.To
	}
	res["class"] = classCoding(class)
	if class != "" {
		res["type"] = []concept{{Coding: []coding{{System: SystemClass, Code: class}}}}
	}
	if cc := d.ClassChange; cc != nil {
		// The class before ended when the event happened; the class now
		// began then.
		at := ev.Time.UTC().Format(time.RFC3339)
		before := Period{End: at}
		if e.Period != nil && e.Period.Start != "" {
			before.Start = e.Period.Start
		}
		res["classHistory"] = []any{
			map[string]any{"class": historyCoding(cc.From), "period": before},
			map[string]any{"class": historyCoding(cc.To), "period": Period{Start: at}},
		}
	}
	if e.Period != nil {
		res["period"] = e.Period
	}
	if e.ServiceProvider != nil {
		res["serviceProvider"] = reference{Type: "Organization", Identifier: &identifier{System: SystemODS, Value: e.ServiceProvider.ODS}, Display: e.ServiceProvider.Name}
	}
	if e.Specialty != "" {
		res["serviceType"] = concept{Text: e.Specialty}
	}
	var exts []extension
	hosp := map[string]any{}
	if e.AdmitSource != "" {
		hosp["admitSource"] = concept{Coding: []coding{{System: SystemAdmitSource, Code: e.AdmitSource}}}
	}
	if d.Discharge != nil && d.Discharge.Destination != nil {
		// Where the patient went (a discharge), is expected to go (an
		// admission, a transfer, a pending discharge) or was expected to
		// go (a cancelled pending discharge).
		dst := d.Discharge.Destination
		cs := []coding{
			{System: SystemDestination, Code: dst.Type},
			{System: SystemDisposition, Code: dispositionCodes[dst.Type]},
		}
		if dst.Code != "" {
			// The NHS Data Dictionary code the kind came from, for a
			// receiving system that reads it.
			cs = append(cs, coding{System: SystemDischargeDestinationEngland, Code: dst.Code})
		}
		hosp["dischargeDisposition"] = concept{Coding: cs}
		if dst.ODS != "" || dst.Name != "" {
			ref := reference{Type: "Location", Display: dst.Name}
			if dst.ODS != "" {
				ref.Identifier = &identifier{System: SystemODS, Value: dst.ODS}
			}
			hosp["destination"] = ref
		}
	}
	if d.Discharge != nil && d.Discharge.ExpectedTime != "" {
		exts = append(exts, extension{URL: ExtPlannedEndDate, ValueDateTime: d.Discharge.ExpectedTime})
	}
	if len(hosp) > 0 {
		res["hospitalization"] = hosp
	}
	var contained []any
	var places []*Location // the contained Locations, in order
	var locs []any
	contain := func(l *Location) reference {
		i := 0
		for i < len(places) && !places[i].same(l) {
			i++
		}
		id := "loc" + strconv.Itoa(i+1)
		if i == len(places) { // one contained Location per place
			places = append(places, l)
			contained = append(contained, locationResource(id, l))
		}
		return reference{Reference: "#" + id, Display: locationText(l)}
	}
	addLoc := func(l *Location, status string, p *Period) {
		if l.empty() {
			return
		}
		entry := map[string]any{"location": contain(l), "status": status}
		if p != nil {
			entry["period"] = p
		}
		locs = append(locs, entry)
	}
	switch t := d.Transfer; {
	case t != nil && ev.Type == event.TypeTransferCancelled:
		// The location history corrected: the patient is where they were
		// (active); the location they did not move to is not in it (R4 has
		// no entered-in-error status for a location), and is named by the
		// cancelled-transfer extension, with when the cancellation was
		// recorded.
		addLoc(t.From, "active", nil)
		if !e.Location.empty() && !e.Location.same(t.From) {
			addLoc(e.Location, "reserved", nil)
		}
		if !t.To.empty() {
			to := contain(t.To)
			x := extension{URL: ExtCancelledTransfer, Extension: []extension{{URL: "location", ValueReference: &to}}}
			if t.Time != "" {
				x.Extension = append(x.Extension, extension{URL: "recorded", ValueDateTime: t.Time})
			}
			exts = append(exts, x)
		}
	case t != nil:
		var from, to *Period
		if t.Time != "" {
			from, to = &Period{End: t.Time}, &Period{Start: t.Time}
		}
		addLoc(t.From, "completed", from)
		addLoc(t.To, "active", to)
		// A location the encounter keeps that the patient is not at (the
		// bed held during a leave of absence) is reserved.
		if !e.Location.empty() && !e.Location.same(t.To) {
			addLoc(e.Location, "reserved", nil)
		}
	case e.Location != nil:
		status := "active"
		if ev.Type == event.TypeDischarge {
			status = "completed"
		}
		addLoc(e.Location, status, nil)
	}
	if len(contained) > 0 {
		res["contained"] = contained
	}
	if len(locs) > 0 {
		res["location"] = locs
	}
	if len(exts) > 0 {
		res["extension"] = exts
	}
	return res
}

func locationResource(id string, l *Location) map[string]any {
	res := map[string]any{"resourceType": "Location", "id": id}
	var ids []identifier
	for _, x := range []struct{ sys, v string }{{SystemODS, l.ODS}, {SystemWard, l.Ward}, {SystemRoom, l.Room}, {SystemBed, l.Bed}} {
		if x.v != "" {
			ids = append(ids, identifier{System: x.sys, Value: x.v})
		}
	}
	if len(ids) > 0 {
		res["identifier"] = ids
	}
	if l.Name != "" {
		res["name"] = l.Name
	}
	return res
}

// locationText is a location in words, for a Reference's display.
func locationText(l *Location) string {
	if l.Name != "" {
		return l.Name
	}
	var parts []string
	for _, x := range []struct{ label, v string }{{"Ward", l.Ward}, {"Room", l.Room}, {"Bed", l.Bed}, {"Site", l.ODS}} {
		if x.v != "" {
			parts = append(parts, x.label+" "+x.v)
		}
	}
	return strings.Join(parts, ", ")
}

func carePlanResource(c *CarePlan, patient reference) map[string]any {
	res := map[string]any{
		"resourceType": "CarePlan", "identifier": []identifier{{System: SystemCarePlanID, Value: c.ID}},
		"status": c.Status, "intent": "plan", "subject": patient,
	}
	if c.Title != "" {
		res["title"] = c.Title
	}
	if c.Period != nil {
		res["period"] = c.Period
	}
	if c.Created != "" {
		res["created"] = c.Created
	}
	if c.Author != nil {
		res["author"] = reference{Type: "Organization", Identifier: &identifier{System: SystemODS, Value: c.Author.ODS}, Display: c.Author.Name}
	}
	return res
}

func documentResource(loinc, display string, a *Attachment, ref *DocumentRef, patient reference, encounter *reference) map[string]any {
	res := map[string]any{
		"resourceType": "DocumentReference", "status": "current",
		"type":    concept{Coding: []coding{{System: SystemLOINC, Code: loinc, Display: display}}},
		"subject": patient,
	}
	att := map[string]any{}
	switch {
	case a != nil:
		att["contentType"] = a.ContentType
		if a.Language != "" {
			att["language"] = a.Language
		}
		if a.Title != "" {
			att["title"] = a.Title
			res["description"] = a.Title
		}
		if a.Creation != "" {
			att["creation"] = a.Creation
			res["date"] = instant(a.Creation)
		}
		if a.Text != "" {
			att["data"] = base64.StdEncoding.EncodeToString([]byte(a.Text))
		} else {
			att["data"] = a.Data
		}
		if a.Size != nil {
			att["size"] = *a.Size
		}
	case ref != nil:
		att["contentType"] = ref.ContentType
		att["url"] = ref.URL
		if ref.Title != "" {
			att["title"] = ref.Title
			res["description"] = ref.Title
		}
		if ref.Size != nil {
			att["size"] = *ref.Size
		}
	}
	res["content"] = []any{map[string]any{"attachment": att}}
	if encounter != nil {
		res["context"] = map[string]any{"encounter": []reference{*encounter}}
	}
	return res
}

// instant returns an RFC 3339 time as a FHIR instant (it already is one).
func instant(s string) string {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC().Format(time.RFC3339)
	}
	return s
}

// bundleEntry renders an Entry inside a Bundle.
func bundleEntry(e Entry, extra map[string]any) map[string]any {
	m := map[string]any{"fullUrl": e.FullURL, "resource": e.Resource}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// MessageBundle renders an event as a FHIR message (Bundle type message)
// for $process-message: the MessageHeader first, naming destination (the
// recipient's ODS code and endpoint), then the Patient, the focus and any
// documents.
func MessageBundle(ev *event.Event, recipient, endpoint string) ([]byte, error) {
	r, err := FromEvent(ev)
	if err != nil {
		return nil, err
	}
	dst := map[string]any{"endpoint": endpoint}
	if recipient != "" {
		dst["receiver"] = reference{Type: "Organization", Identifier: &identifier{System: SystemODS, Value: recipient}}
	}
	r.Header.Resource["destination"] = []any{dst}
	entries := []any{bundleEntry(r.Header, nil)}
	for _, e := range r.Entries {
		entries = append(entries, bundleEntry(e, nil))
	}
	return json.Marshal(map[string]any{
		"resourceType": "Bundle", "id": rid(ev, "Bundle"), "type": "message",
		"identifier": bundleIdentifier(ev),
		"timestamp":  ev.Time.UTC().Format(time.RFC3339),
		"entry":      entries,
	})
}

// TransactionBundle renders an event as a FHIR transaction: each resource a
// conditional update on its business identifier (so an admission and the
// discharge that follows update one Encounter), documents created.
func TransactionBundle(ev *event.Event) ([]byte, error) {
	r, err := FromEvent(ev)
	if err != nil {
		return nil, err
	}
	var entries []any
	for _, e := range r.Entries {
		// The server assigns ids: a conditional update or a create
		// carries none (references use the entries' urn:uuid fullUrls).
		res := make(map[string]any, len(e.Resource))
		for k, v := range e.Resource {
			if k != "id" {
				res[k] = v
			}
		}
		e.Resource = res
		req := map[string]any{"method": "POST", "url": e.Type}
		if e.Match != "" {
			req = map[string]any{"method": "PUT", "url": e.Type + "?" + e.Match}
		}
		entries = append(entries, bundleEntry(e, map[string]any{"request": req}))
	}
	return json.Marshal(map[string]any{
		"resourceType": "Bundle", "type": "transaction", "identifier": bundleIdentifier(ev),
		"timestamp": ev.Time.UTC().Format(time.RFC3339), "entry": entries,
	})
}

// Notification is one numbered event of a feed, for NotificationBundle.
type Notification struct {
	Number   int64
	Time     time.Time
	Event    *event.Event // nil when the event is withheld: only its number is given
	Withheld bool
}

// Subscription describes the feed a NotificationBundle comes from.
type Subscription struct {
	Reference string // the feed's URL, standing for the Subscription
	Topic     string // a canonical URL naming what the feed carries
	Latest    int64  // events-since-subscription-start: the feed's latest number
}

// NotificationBundle renders feed entries as the Subscriptions R5 Backport
// IG's R4 notification bundle: Bundle type history; first entry a
// Parameters resource (profile backport-subscription-status-r4) with the
// subscription, topic, status, type event-notification,
// events-since-subscription-start (the feed's latest number) and one
// notification-event per entry (event-number, timestamp, focus); then each
// event's resources. History bundles need request and response on every
// entry (bdl-3, bdl-4): the status entry records a GET of $status, each
// resource a POST or PUT (201 or 200).
func NotificationBundle(sub Subscription, ns []Notification, now time.Time) ([]byte, error) {
	params := []any{
		map[string]any{"name": "subscription", "valueReference": reference{Reference: sub.Reference}},
		map[string]any{"name": "topic", "valueCanonical": sub.Topic},
		map[string]any{"name": "status", "valueCode": "active"},
		map[string]any{"name": "type", "valueCode": "event-notification"},
		map[string]any{"name": "events-since-subscription-start", "valueString": strconv.FormatInt(sub.Latest, 10)},
	}
	var entries []any
	for _, n := range ns {
		parts := []any{
			map[string]any{"name": "event-number", "valueString": strconv.FormatInt(n.Number, 10)},
			map[string]any{"name": "timestamp", "valueInstant": n.Time.UTC().Format(time.RFC3339Nano)},
		}
		if n.Event != nil && !n.Withheld {
			r, err := FromEvent(n.Event)
			if err != nil {
				return nil, err
			}
			parts = append(parts, map[string]any{"name": "focus", "valueReference": reference{Reference: r.Focus.FullURL}})
			for _, e := range r.Entries {
				req := map[string]any{"method": "POST", "url": e.Type}
				resp := map[string]any{"status": "201"}
				if e.Match != "" {
					req = map[string]any{"method": "PUT", "url": e.Type + "?" + e.Match}
					resp = map[string]any{"status": "200"}
				}
				entries = append(entries, bundleEntry(e, map[string]any{"request": req, "response": resp}))
			}
		}
		params = append(params, map[string]any{"name": "notification-event", "part": parts})
	}
	statusID := uuid.NewSHA1(namespace, []byte(sub.Reference+"\x00"+now.UTC().Format(time.RFC3339Nano))).String()
	status := map[string]any{
		"fullUrl": "urn:uuid:" + statusID,
		"resource": map[string]any{
			"resourceType": "Parameters", "id": statusID,
			"meta": meta{Profile: []string{ProfileStatus}}, "parameter": params,
		},
		"request":  map[string]any{"method": "GET", "url": sub.Reference + "/$status"},
		"response": map[string]any{"status": "200"},
	}
	return json.Marshal(map[string]any{
		"resourceType": "Bundle", "id": statusID, "meta": meta{Profile: []string{ProfileNotification}},
		"type": "history", "timestamp": now.UTC().Format(time.RFC3339Nano),
		"entry": append([]any{status}, entries...),
	})
}
