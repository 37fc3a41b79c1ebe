package fhir

// The canonical data of every event type, as the schemas in schemas/
// define it, in one Go shape: the mapping reads and writes it. Members
// follow the JSON Schemas exactly; omitempty keeps absent what was absent.

// Data is the data member of a canonical event.
type Data struct {
	Patient       *Patient      `json:"patient,omitempty"`
	MergedPatient *Merged       `json:"mergedPatient,omitempty"`
	Encounter     *Encounter    `json:"encounter,omitempty"`
	Discharge     *Discharge    `json:"discharge,omitempty"`
	Transfer      *Transfer     `json:"transfer,omitempty"`
	CarePlan      *CarePlan     `json:"carePlan,omitempty"`
	ClassChange   *ClassChange  `json:"classChange,omitempty"`
	Cancellation  *Cancellation `json:"cancellation,omitempty"`
	Changed       []string      `json:"changed,omitempty"`
	Sensitivity   []string      `json:"sensitivity,omitempty"`
	Confidential  *bool         `json:"confidential,omitempty"`
	// PreviousNHSNumber is data.previousNhsNumber (patient-updated): the
	// NHS number the patient had until a correction.
	PreviousNHSNumber string `json:"previousNhsNumber,omitempty"`
}

// Patient is data.patient.
type Patient struct {
	NHSNumber        string       `json:"nhsNumber"`
	GPPractice       string       `json:"gpPractice,omitempty"`
	Identifier       []Identifier `json:"identifier,omitempty"`
	Name             *Name        `json:"name,omitempty"`
	BirthDate        string       `json:"birthDate,omitempty"`
	Gender           string       `json:"gender,omitempty"`
	DeceasedDateTime string       `json:"deceasedDateTime,omitempty"`
	Address          *Address     `json:"address,omitempty"`
	Telecom          []Telecom    `json:"telecom,omitempty"`
}

// Merged is data.mergedPatient.
type Merged struct {
	NHSNumber  string       `json:"nhsNumber"`
	Identifier []Identifier `json:"identifier,omitempty"`
}

// Identifier is a FHIR Identifier (system, value).
type Identifier struct {
	System string `json:"system,omitempty"`
	Value  string `json:"value"`
}

// Name is a FHIR HumanName.
type Name struct {
	Text   string   `json:"text,omitempty"`
	Family string   `json:"family,omitempty"`
	Given  []string `json:"given,omitempty"`
	Prefix []string `json:"prefix,omitempty"`
	Suffix []string `json:"suffix,omitempty"`
}

// Address is a FHIR Address.
type Address struct {
	Line       []string `json:"line,omitempty"`
	City       string   `json:"city,omitempty"`
	District   string   `json:"district,omitempty"`
	PostalCode string   `json:"postalCode,omitempty"`
}

// Telecom is a FHIR ContactPoint.
type Telecom struct {
	System string `json:"system"`
	Value  string `json:"value"`
	Use    string `json:"use,omitempty"`
}

// Period is a FHIR Period.
type Period struct {
	Start string `json:"start,omitempty"`
	End   string `json:"end,omitempty"`
}

// Organisation names an organisation by ODS code.
type Organisation struct {
	ODS  string `json:"ods"`
	Name string `json:"name,omitempty"`
}

// Location is where a patient is.
type Location struct {
	ODS  string `json:"ods,omitempty"`
	Name string `json:"name,omitempty"`
	Ward string `json:"ward,omitempty"`
	Room string `json:"room,omitempty"`
	Bed  string `json:"bed,omitempty"`
}

func (l *Location) empty() bool { return l == nil || *l == Location{} }

// same reports whether l and o name the same place (both may be nil).
func (l *Location) same(o *Location) bool {
	if l == nil || o == nil {
		return l.empty() && o.empty()
	}
	return *l == *o
}

// Encounter is data.encounter.
type Encounter struct {
	ID              string        `json:"id"`
	Identifier      []Identifier  `json:"identifier,omitempty"`
	Class           string        `json:"class,omitempty"`
	Period          *Period       `json:"period,omitempty"`
	ServiceProvider *Organisation `json:"serviceProvider,omitempty"`
	Location        *Location     `json:"location,omitempty"`
	Specialty       string        `json:"specialty,omitempty"`
	AdmitSource     string        `json:"admitSource,omitempty"`
}

// Destination is data.discharge.destination.
type Destination struct {
	Type string `json:"type"`
	Code string `json:"code,omitempty"` // NHS Data Dictionary discharge destination code
	ODS  string `json:"ods,omitempty"`
	Name string `json:"name,omitempty"`
}

// Attachment is a document carried inline.
type Attachment struct {
	ContentType string `json:"contentType"`
	Language    string `json:"language,omitempty"`
	Title       string `json:"title,omitempty"`
	Creation    string `json:"creation,omitempty"`
	Text        string `json:"text,omitempty"`
	Data        string `json:"data,omitempty"`
	Size        *int64 `json:"size,omitempty"`
}

// DocumentRef is a document held elsewhere.
type DocumentRef struct {
	URL         string `json:"url"`
	ContentType string `json:"contentType"`
	Title       string `json:"title,omitempty"`
	Size        *int64 `json:"size,omitempty"`
}

// Discharge is data.discharge. ExpectedTime is the discharge-pending
// event's expected time.
type Discharge struct {
	Destination      *Destination `json:"destination,omitempty"`
	ExpectedTime     string       `json:"expectedTime,omitempty"`
	Summary          *Attachment  `json:"summary,omitempty"`
	SummaryReference *DocumentRef `json:"summaryReference,omitempty"`
}

// Transfer is data.transfer.
type Transfer struct {
	From *Location `json:"from,omitempty"`
	To   *Location `json:"to,omitempty"`
	Time string    `json:"time,omitempty"`
}

// CarePlan is data.carePlan.
type CarePlan struct {
	ID                string        `json:"id"`
	Status            string        `json:"status"`
	Title             string        `json:"title,omitempty"`
	Period            *Period       `json:"period,omitempty"`
	Created           string        `json:"created,omitempty"`
	Author            *Organisation `json:"author,omitempty"`
	Document          *Attachment   `json:"document,omitempty"`
	DocumentReference *DocumentRef  `json:"documentReference,omitempty"`
}

// ClassChange is data.classChange (patient-class-changed): the encounter
// class before and after.
type ClassChange struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Cancellation is data.cancellation.
type Cancellation struct {
	Reason  string `json:"reason,omitempty"`
	EventID string `json:"eventId,omitempty"`
}

// FHIR building blocks, as emitted.

type coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

type concept struct {
	Coding []coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

type identifier struct {
	Use      string     `json:"use,omitempty"`
	System   string     `json:"system,omitempty"`
	Value    string     `json:"value,omitempty"`
	Assigner *reference `json:"assigner,omitempty"`
}

type reference struct {
	Reference  string      `json:"reference,omitempty"`
	Type       string      `json:"type,omitempty"`
	Identifier *identifier `json:"identifier,omitempty"`
	Display    string      `json:"display,omitempty"`
}

type meta struct {
	Profile  []string `json:"profile,omitempty"`
	Security []coding `json:"security,omitempty"`
}
