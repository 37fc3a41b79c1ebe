// Package fhir is the one mapping between carehub's canonical events and
// FHIR R4 resources, used by every part that speaks FHIR: the FHIR source
// (messages and Encounters in), the FHIR sink (messages and transactions
// out) and the pull feed's FHIR rendering. It is vocabulary, like the event
// schemas: it depends on no part of the flow.
//
// # Out: an event as resources
//
// Resources maps an event to the resources that carry its facts:
//
//	canonical                       FHIR R4
//	data.patient                    Patient (NHS number identifier, generalPractitioner by ODS code)
//	data.mergedPatient              Patient.link (type replaces) to the retired NHS number
//	data.previousNhsNumber          Patient.identifier with use old (the NHS number corrected)
//	data.encounter                  Encounter (identifier, status, class, period, serviceProvider, location)
//	data.transfer                   Encounter.location: from (completed), to (active)
//	data.discharge.destination      Encounter.hospitalization.dischargeDisposition (type: SystemDestination and
//	                                SystemDisposition; code: SystemDischargeDestinationEngland) and destination
//	                                (a Location: ods as identifier, name as display; absent when neither)
//	data.discharge.expectedTime     Encounter extension ExtPlannedEndDate (R5's plannedEndDate)
//	data.discharge.summary[Reference] DocumentReference (LOINC 18842-5), its attachment inline or by URL
//	data.carePlan                   CarePlan, its document as a DocumentReference (LOINC 18776-5)
//	data.classChange                Encounter.class (to) and classHistory (from, ended at the event's time; to, from then)
//	data.sensitivity                meta.security (SystemSensitivity) on the Patient and the focus
//	data.confidential               meta.security (SystemConfidentiality R; N when false) on the same resources
//	type                            MessageHeader.eventCoding (SystemEvent: the short name, e.g. discharge-pending)
//	source                          MessageHeader.sender (ODS code)
//
// Every event's Encounter is in-progress but a discharge's (finished) and a
// cancelled admission's (entered-in-error). By event type:
//
//	discharge-pending               hospitalization.destination and dischargeDisposition: where the patient
//	                                is expected to go; ExtPlannedEndDate: when
//	discharge-pending-cancelled     likewise the destination that was expected, and no planned end: the
//	                                MessageHeader's event says the plan is withdrawn
//	transfer-cancelled              the location history corrected: transfer.from active; transfer.to not
//	                                in Encounter.location (R4's location status has no entered-in-error)
//	                                but named by ExtCancelledTransfer (location, recorded: transfer.time)
//	patient-class-changed           Encounter.class is the class now; classHistory the class before and now
//	patient-updated (A47)           the corrected number as an old identifier; a transaction matches the
//	                                Patient by the old number, so the receiver's record is re-filed
//
// encounter.location is the active location; on a transfer, when the
// encounter keeps another place for the patient (the bed held during a
// leave of absence), that place is a location with status reserved.
//
// MessageBundle wraps them as a FHIR message (Bundle type message,
// MessageHeader first) for $process-message; TransactionBundle as a
// transaction of conditional updates; NotificationBundle as the Subscriptions
// R5 Backport IG's R4 notification bundle (type history, a Parameters
// subscription status first) for a pull feed.
//
// # In: a message or an Encounter as an event
//
// FromMessage reads a FHIR message Bundle and FromEncounter a lone
// Encounter, each the inverse of the mapping above (a message's event is
// its eventCoding, in SystemEvent or as an HL7 v2 trigger: A16 pending
// discharge, A25 its cancellation, A12, A52 and A53 cancelled transfers,
// A07 a class change, A47 a patient update), and return the canonical
// CloudEvent (to be validated and made durable by the hub) with a map from
// canonical JSON pointers back to the elements they came from, so that a
// schema violation found later is still reported against the FHIR element
// (Inbound.Locate). They read confidentiality from meta.security in
// SystemConfidentiality on any of the resources (R, V or REDACTED:
// confidential; N, U, L or M: not), as the Personal Demographics Service
// labels a Patient. A lone Encounter is an admission, a discharge or a
// cancelled admission by its status, as before: the other event types
// need a message, whose event says which. Every problem is a
// *problem.Error whose violations point into the submitted resource;
// OperationOutcome renders them with FHIRPath expressions and never a
// value from the document.
package fhir

import (
	"encoding/json"

	"github.com/carehub/carehub/schemas/problem"
)

// Code systems and identifier systems.
const (
	SystemNHSNumber   = "https://fhir.nhs.uk/Id/nhs-number"
	SystemODS         = "https://fhir.nhs.uk/Id/ods-organization-code"
	SystemEvent       = "https://carehub.dev/fhir/CodeSystem/event-type"
	SystemV2Event     = "http://terminology.hl7.org/CodeSystem/v2-0003"
	SystemEventID     = "https://carehub.dev/fhir/Id/event" // Bundle.identifier: the CloudEvents id (assigner: the source's ODS code)
	SystemEncounterID = "https://carehub.dev/fhir/Id/encounter"
	SystemCarePlanID  = "https://carehub.dev/fhir/Id/care-plan"
	SystemWard        = "https://carehub.dev/fhir/Id/ward"
	SystemRoom        = "https://carehub.dev/fhir/Id/room"
	SystemBed         = "https://carehub.dev/fhir/Id/bed"
	SystemClass       = "https://carehub.dev/fhir/CodeSystem/encounter-class"
	SystemActCode     = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
	SystemNullFlavor  = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
	SystemDestination = "https://carehub.dev/fhir/CodeSystem/discharge-destination-type"
	SystemDisposition = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
	SystemAdmitSource = "https://carehub.dev/fhir/CodeSystem/admit-source"
	SystemSensitivity = "https://carehub.dev/fhir/CodeSystem/sensitivity-category"
	SystemViolation   = problem.FHIRViolationSystem
	SystemLOINC       = "http://loinc.org"
	SystemRedacted    = "https://carehub.dev/fhir/CodeSystem/redaction"

	// SystemDischargeDestinationEngland is HL7 UK's code system for the
	// NHS Data Dictionary discharge destination codes
	// (data.discharge.destination.code).
	SystemDischargeDestinationEngland = "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland"

	// SystemConfidentiality is HL7's v3 Confidentiality code system, as
	// the NHS's Personal Demographics Service labels Patients with it
	// (meta.security: U unrestricted, R restricted, V very restricted).
	SystemConfidentiality = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

	// ProfileNotification and ProfileStatus are the Subscriptions R5
	// Backport IG's R4 profiles a feed's FHIR answer claims.
	ProfileNotification = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"
	ProfileStatus       = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)

// v3 Confidentiality codes carehub writes: R for data.confidential true,
// N for an explicit false. Read back, R, V and REDACTED are confidential;
// N, U, L and M are not.
const (
	ConfidentialityRestricted = "R"
	ConfidentialityNormal     = "N"
)

// Extensions. ExtPlannedEndDate is HL7's cross-version extension for R5's
// Encounter.plannedEndDate in R4 (hl7.fhir.uv.xver-r5.r4): R4 has no
// element for when a stay is expected to end. ExtCancelledTransfer is
// carehub's: on an Encounter whose transfer was cancelled, the location
// the patient did not move to (sub-extension location, a Reference to a
// contained Location) and when the cancellation was recorded
// (sub-extension recorded, a dateTime).
const (
	ExtPlannedEndDate    = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate"
	ExtCancelledTransfer = "https://carehub.dev/fhir/StructureDefinition/cancelled-transfer"
)

// LOINC document types.
const (
	LOINCDischargeSummary = "18842-5"
	LOINCCarePlan         = "18776-5"
)

// Rules of FHIR mapping violations.
const (
	RuleStructure   = "fhir-structure"         // not the resource or shape expected
	RuleRequired    = "fhir-required"          // an element carehub needs is missing
	RuleUnsupported = "fhir-unsupported-event" // the message's event is not one carehub carries
	RuleValue       = "fhir-value"             // a value is not what the element allows
	RuleReference   = "fhir-reference"         // a reference that does not resolve inside the message
	RuleSender      = "source-matches-credentials"
	RuleNHSNumber   = "nhs-number"
	RuleODS         = "ods-code"
)

// PathError is a *problem.Error whose violation pointers are JSON pointers
// into a FHIR resource of type Root: OperationOutcome renders them as
// FHIRPath expressions rooted at it ("Bundle.entry[1].resource.identifier").
type PathError struct {
	Root string
	Err  *problem.Error
}

func (e *PathError) Error() string    { return e.Err.Error() }
func (e *PathError) Unwrap() error    { return e.Err }
func (e *PathError) FHIRRoot() string { return e.Root }

// Informational renders a one-issue informational OperationOutcome with a
// public text (for a positive answer).
func Informational(text string) []byte {
	b, _ := json.Marshal(map[string]any{"resourceType": "OperationOutcome",
		"issue": []map[string]any{{"severity": "information", "code": "informational", "diagnostics": text}}})
	return b
}
