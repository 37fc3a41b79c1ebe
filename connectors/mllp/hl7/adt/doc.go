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
//	case err != nil:        // *adt.Error: answer e.Ack (AE or AR) with e.Detail() in ERR
//	case res.Event == nil:  // nothing to publish (res.Skipped says why): answer AA
//	default:                // publish res.Event (type res.Type, id res.ID), then answer AA
//	}
//
// A Mapper is immutable and safe for concurrent use. Map reads the message
// only; it never logs and its errors never contain message values.
//
// # Trigger events
//
//	A01 admit                      org.carehub.admission.v1
//	A04 register (ED, outpatient)  org.carehub.admission.v1, class from PV1-2
//	A05 pre-admit                  org.carehub.patient-updated.v1 (no encounter has begun)
//	A02 transfer                   org.carehub.transfer.v1, PV1-6 → PV1-3
//	A12 cancel transfer            org.carehub.transfer.v1, PV1-6 (cancelled) → PV1-3 (restored)
//	A21 leave of absence           org.carehub.transfer.v1, PV1-3 → "leave of absence"
//	A22 back from leave            org.carehub.transfer.v1, "leave of absence" → PV1-3
//	A03 discharge                  org.carehub.discharge.v1
//	A11 cancel admission           org.carehub.admission-cancelled.v1
//	A13 cancel discharge           org.carehub.discharge-cancelled.v1
//	A08 update patient             org.carehub.patient-updated.v1
//	A28 add person, A31 update     org.carehub.patient-updated.v1
//	A40 merge patient              org.carehub.patient-merged.v1; nothing when MRG-1 holds
//	                               no NHS number or the same one (a merge of local records)
//
// Any other ADT trigger is rejected (AR, HL7 error 201), any other message
// type too (AR, 200), as is a version other than 2.x (AR, 203).
//
// # Fields
//
// The patient: NHS number from the PID-3 repetition whose identifier type
// (CX.5) is NH or whose assigning authority (CX.4) is NHS, modulus 11 check
// enforced (missing: AE 101 at PID-3; malformed or failing the check: AE
// 102); registered GP practice from PD1-3 (XON.10, else XON.3, as NHS ITK
// messages carry it); hospital numbers from PID-3 repetitions of type MR;
// name, birth date, sex, death, home address and telephone numbers from
// PID-5, 7, 8, 29, 11, 13 and 14. The encounter: id from PV1-19 (required:
// AE 101), class from PV1-2, period from PV1-44 and PV1-45, location from
// PV1-3, specialty from PV1-10, admission source from PV1-14, and the
// sender as service provider. The event time: EVN-6, else EVN-2, else
// MSH-7. Timestamps without an offset are UK local time (Europe/London).
//
// The discharge destination (A03; on A01 and A04, the expected one): its
// kind from the NHS Data Dictionary discharge destination code in PV1-37.1
// (where NHS ITK messages put it), PV1-36.1 or PV2-27.1; the organisation
// from the first ODS-shaped value at Options.DestinationFields (PV1-37.1 by
// default; configure the Z-segment field a PAS uses). A care home, nursing
// home, hospital or hospice without an ODS code becomes type "other" named
// in words, as the schema requires an organisation for those.
//
// The README (Publishing HL7 v2 ADT over MLLP) holds the full table, field by field.
//
// # Event ids
//
// The CloudEvents id is a version 5 UUID of (source, MSH-3.1, MSH-4.1,
// MSH-10): a resend of a message gets the id of the first copy, so that
// recipients (who see it as webhook-id) can drop the duplicate.
package adt
