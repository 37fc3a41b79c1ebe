// Package adt maps HL7 v2 ADT messages - the admissions, transfers and
// discharges a hospital's patient administration system (PAS) sends - to
// carehub's canonical events (CloudEvents JSON whose data follows
// schemas/*.json).
//
// # Usage
//
//	mp, err := adt.NewMapper(adt.Options{Source: "RX1"}) // the authenticated sender
//	m, err := adt.Parse(payload)                          // hl7.Parse, reading MSH-18 "UNICODE" as UTF-8
//	res, err := mp.Map(m)
//	switch {
//	case err != nil:       // *adt.Error: answer e.Ack (AE or AR) with e.Detail() in ERR
//	case res.Held != nil:  // not shared (res.Held.Reason says why): record it, then answer AA
//	default:               // publish res.Events (one, or two for A17), then answer AA
//	}
//
// A Mapper is immutable and safe for concurrent use. Map reads the message
// only; it never logs and its errors never contain message values.
//
// # Trigger events
//
//	A01 admit                      org.carehub.admission.v1
//	A04 register (ED, outpatient)  org.carehub.admission.v1, class from PV1-2
//	A06 outpatient to inpatient    org.carehub.admission.v1 (an attendance became a stay)
//	A07 inpatient to outpatient    org.carehub.patient-class-changed.v1
//	A05 pre-admit                  org.carehub.patient-updated.v1 (no encounter has begun)
//	A02 transfer                   org.carehub.transfer.v1, PV1-6 → PV1-3
//	A17 swap patients              two org.carehub.transfer.v1, one per PID/PV1 group
//	A12 cancel transfer            org.carehub.transfer-cancelled.v1, from PV1-3 (where the
//	                               patient is) to PV1-6 (where they did not go)
//	A21 leave of absence           org.carehub.transfer.v1, PV1-3 → "leave of absence"
//	A22 back from leave            org.carehub.transfer.v1, "leave of absence" → PV1-3
//	A52, A53 cancel those          org.carehub.transfer-cancelled.v1
//	A03 discharge                  org.carehub.discharge.v1
//	A16 pending discharge          org.carehub.discharge-pending.v1 (expected destination, PV2-9 time)
//	A25 cancel pending discharge   org.carehub.discharge-pending-cancelled.v1
//	A11 cancel admission           org.carehub.admission-cancelled.v1
//	A13 cancel discharge           org.carehub.discharge-cancelled.v1
//	A08 update patient             org.carehub.patient-updated.v1
//	A28 add person, A31 update     org.carehub.patient-updated.v1
//	A47 change identifier          org.carehub.patient-updated.v1; previousNhsNumber when MRG-1
//	                               held another NHS number
//	A40 merge patient              org.carehub.patient-merged.v1 (A34, A36, A39 too); held as
//	                               local-merge when MRG-1 holds no NHS number or the same one
//
// Every other ADT trigger is held (Result.Held, reason trigger-not-shared),
// with the decision for each in NotShared (A09, A10, A14, A15, A23, A26,
// A27, A29, A45, ...); a trigger HL7 does not define, or a local Z
// trigger, is held too. Any other message type is rejected (AR, HL7 error
// 200), as is a version other than 2.x (AR, 203).
//
// # Held messages
//
// A shared trigger is held instead of published when its patient cannot be
// shared safely: no NHS number (no-nhs-number: an A&E attendance with a
// hospital number only), an NHS number whose status in PID-32 (01 or NSTS01
// verified; 02 to 08 not) says it is not verified (nhs-number-unverified,
// unless Options.AllowUnverifiedNHSNumbers), or no status at all
// (nhs-number-status-missing, unless Options.AssumeVerifiedWithoutStatus).
// The rest of the message is still mapped, so a message wrong in another
// way is still answered AE.
//
// # Sensitivity and confidentiality
//
// Options.Sensitivity gives categories by treatment function code (PV1-10)
// and by location (point of care or site of PV1-3 and PV1-6); every event
// of the message carries them in data.sensitivity. PD1-12 (protection
// indicator) or PV2-22 (visit protection indicator) Y makes it
// data.confidential.
//
// # Fields
//
// The patient: NHS number from the PID-3 repetition whose identifier type
// (CX.5) is NH or whose assigning authority (CX.4) is NHS, else from PID-2
// (as HL7 2.3 feeds send it: typed NH or NHS, or ten bare digits), modulus
// 11 check enforced (malformed or failing the check: AE 102; missing: held); registered GP practice from PD1-3 (XON.10, else XON.3, as NHS ITK
// messages carry it); hospital numbers from PID-3 repetitions of type MR;
// name, birth date, sex, death, home address and telephone numbers from
// PID-5, 7, 8, 29, 11, 13 and 14. The encounter: id from PV1-19 (required:
// AE 101), class from PV1-2, period from PV1-44 and PV1-45, location from
// PV1-3, specialty from PV1-10, admission source from PV1-14, and the
// sender as service provider. The event time: EVN-6, else EVN-2, else
// MSH-7. Timestamps without an offset are UK local time (Europe/London).
//
// The discharge destination (A03; on A01, A04, A06, A16 and A25, the
// expected one): its kind from the NHS Data Dictionary discharge
// destination code in PV1-37.1 (where NHS ITK messages put it), PV1-36.1
// or PV2-27.1 (PV2-27.1 first for an expected destination); the
// organisation from the first ODS-shaped value at Options.DestinationFields
// (PV1-37.1 by default; configure the Z-segment field a PAS uses). The kind
// never contradicts the organisation: a code of no organisational kind
// beside an organisation gives type "other" with the code in words, and a
// care home, nursing home, hospital or hospice without an ODS code becomes
// type "other" named in words (the schema requires an organisation for
// those).
//
// The README (Publishing HL7 v2 ADT over MLLP) holds the full table, field by field.
//
// # Event ids
//
// The CloudEvents id is a version 5 UUID of (source, MSH-3.1, MSH-4.1,
// MSH-10): a resend of a message gets the id of the first copy, so that
// recipients (who see it as webhook-id) can drop the duplicate.
package adt
