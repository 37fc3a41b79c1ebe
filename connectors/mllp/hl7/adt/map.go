package adt

import (
	"errors"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/carehub/carehub/connectors/mllp/hl7"
	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/ods"
	"github.com/carehub/carehub/schemas/problem"
)

// mapping is the state of mapping one message.
type mapping struct {
	mp      *Mapper
	m       *hl7.Message
	trigger string
	time    time.Time
	// g is the segment group being mapped: the message's first PID, PD1,
	// PV1 and PV2 (A17 has two groups).
	g group
	// held is set by the first rule that keeps the message from being
	// shared (no NHS number, not verified, a local merge).
	held *Held
	// confirmed is the patient's NHS number as an operator traced and
	// verified it (MapConfirmed); zero when mapping a message as received.
	confirmed nhs.Number
}

// group is one patient's segments: PID and the PD1, PV1 and PV2 after it.
type group struct {
	pid, pd1, pv1, pv2 *hl7.Segment
	seq                int // 1 for the first group, 2 for the second
}

// output is one event a message maps to.
type output struct {
	typ  string
	data *data
}

type mapFunc func(x *mapping) ([]output, error)

// triggers maps each shared trigger event to its mapping. See doc.go for
// the decisions behind each, and notShared for the triggers held.
var triggers = map[string]mapFunc{
	"A01": admission, // admit/visit notification
	"A04": admission, // register a patient: an attendance (ED, outpatient) has begun
	"A06": admission, // change an outpatient (or ED attendance) to an inpatient: now admitted
	"A07": classChanged,
	"A02": transferred,
	"A12": transferCancelled, // cancel transfer
	"A17": swapped,           // swap patients: two transfers
	"A21": leave,             // patient goes on a leave of absence
	"A22": leave,             // patient returns from a leave of absence
	"A52": transferCancelled, // cancel leave of absence
	"A53": transferCancelled, // cancel patient returns from leave of absence
	"A03": discharged,
	"A16": dischargePending,
	"A25": dischargePendingCancelled,
	"A11": cancelled(event.TypeAdmissionCancelled),
	"A13": cancelled(event.TypeDischargeCancelled),
	"A05": updated, // pre-admit: no encounter has begun; the person is known
	"A08": updated,
	"A28": updated,
	"A31": updated,
	"A47": identifierChanged,
	"A40": merged,
	"A34": merged, // merge patient information, patient ID only (HL7 2.3; A40 since)
	"A36": merged, // merge patient information, patient ID and account number
	"A39": merged, // merge person, patient ID
}

// Triggers returns the shared trigger events, sorted.
func Triggers() []string {
	out := make([]string, 0, len(triggers))
	for t := range triggers {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// notShared gives, for each ADT trigger carehub decided not to share, the
// reason held with it (a fixed public text; the README's table says the
// same). A trigger in neither table is held as detailTriggerDefault.
var notShared = map[string]string{
	"A09": "patient departing (tracking): a movement inside the hospital that changes no one's care",
	"A10": "patient arriving (tracking): a movement inside the hospital that changes no one's care",
	"A14": "pending admission: nothing has happened yet; the admission follows as A01",
	"A15": "pending transfer: a bed plan inside the hospital; the transfer follows as A02",
	"A18": "merge patient information (retired in HL7 2.3.1): send A40",
	"A19": "patient query: not a notification",
	"A20": "bed status update: about a bed, not a patient",
	"A23": "delete a patient record: recipients keep their own records; an operator decides",
	"A24": "link patient information: the sender's own record linkage",
	"A26": "cancel pending transfer: the pending transfer (A15) was not shared",
	"A27": "cancel pending admission: the pending admission (A14) was not shared",
	"A29": "delete person information: recipients keep their own records; an operator decides",
	"A30": "merge person information (retired): send A40",
	"A32": "cancel patient arriving (tracking): tracking is not shared",
	"A33": "cancel patient departing (tracking): tracking is not shared",
	"A35": "merge account number only: accounts are not shared",
	"A37": "unlink patient information: the sender's own record linkage",
	"A38": "cancel pre-admission: the pre-admission shared the demographics only, which stand",
	"A41": "merge account: accounts are not shared",
	"A42": "merge visit: an operator decides which encounter recipients keep",
	"A43": "move patient information (identifier list): an operator reviews before anything is shared",
	"A44": "move account information: accounts are not shared",
	"A45": "move visit information: an encounter moved between patients; an operator reviews before anything is shared",
	"A46": "change patient ID (retired in HL7 2.3.1): send A47",
	"A48": "change alternate patient ID: not an identifier carehub shares",
	"A49": "change patient account number: accounts are not shared",
	"A50": "change visit number: an operator reviews before anything is shared",
	"A51": "change alternate visit ID: not an identifier carehub shares",
	"A54": "change attending doctor: staffing inside the hospital",
	"A55": "cancel change attending doctor: staffing inside the hospital",
	"A60": "update allergy information: clinical detail outside the events carehub shares",
	"A61": "change consulting doctor: staffing inside the hospital",
	"A62": "cancel change consulting doctor: staffing inside the hospital",
}

// NotShared returns the ADT triggers carehub decided not to share, sorted,
// with the reason each is held.
func NotShared() map[string]string {
	out := make(map[string]string, len(notShared))
	for k, v := range notShared {
		out[k] = v
	}
	return out
}

// Known reports whether trigger (e.g. "A01") is an ADT trigger event
// carehub knows: one it shares (Triggers) or one it decided not to share
// (NotShared). Only a known trigger may be logged as sent: MSH-9.2 is
// free text to a sender, and can hold anything, an NHS number included.
func Known(trigger string) bool {
	_, shared := triggers[trigger]
	_, held := notShared[trigger]
	return shared || held
}

// notShared holds a message of a trigger carehub does not share, keyed by
// whatever identifies its patient (best effort: nothing is refused here).
func (x *mapping) notShared() *Held {
	h := &Held{Reason: HeldTriggerNotShared, Detail: notShared[x.trigger]}
	if h.Detail == "" {
		h.Detail = detailTriggerDefault
	}
	if pid := x.m.Segment("PID"); pid != nil {
		h.NHSNumber, _ = nhsNumber(pid, 3)
		if h.NHSNumber.IsZero() {
			h.NHSNumber, _ = nhsNumberPID2(pid)
		}
		h.LocalID = localID(pid)
	}
	return h
}

// hold records the first reason the message cannot be shared.
func (x *mapping) hold(h *Held) {
	if x.held == nil {
		x.held = h
	}
}

// firstGroup is the message's first PID, PD1, PV1 and PV2.
func (x *mapping) firstGroup() group {
	return group{pid: x.m.Segment("PID"), pd1: x.m.Segment("PD1"), pv1: x.m.Segment("PV1"), pv2: x.m.Segment("PV2"), seq: 1}
}

func admission(x *mapping) ([]output, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, err
	}
	enc, err := x.encounter(true, false)
	if err != nil {
		return nil, err
	}
	d := &data{Patient: p, Encounter: enc}
	if dest, err := x.destination(true); err != nil {
		return nil, err
	} else if dest != nil {
		d.Discharge = &discharge{Destination: dest}
	}
	return x.one(event.TypeAdmission, d)
}

// one finishes the data of a message's one event: its sensitivity and
// confidentiality.
func (x *mapping) one(typ string, d *data) ([]output, error) {
	x.label(d)
	return []output{{typ, d}}, nil
}

func classChanged(x *mapping) ([]output, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, err
	}
	enc, err := x.encounter(false, false)
	if err != nil {
		return nil, err
	}
	if enc.Class == "" {
		return nil, invalid(hl7.CodeRequiredFieldMissing, "PV1", 2, 0, 0, reasonNoClass)
	}
	// A07 changes an inpatient to an outpatient: the class before is
	// inpatient by the trigger's definition.
	return x.one(event.TypePatientClassChanged, &data{Patient: p, Encounter: enc,
		ClassChange: &classChange{From: "inpatient", To: enc.Class}})
}

func discharged(x *mapping) ([]output, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, err
	}
	enc, err := x.encounter(false, true)
	if err != nil {
		return nil, err
	}
	dest, err := x.destination(false)
	if err != nil {
		return nil, err
	}
	if dest == nil {
		dest = &destination{Type: "other"}
	}
	return x.one(event.TypeDischarge, &data{Patient: p, Encounter: enc, Discharge: &discharge{Destination: dest}})
}

func dischargePending(x *mapping) ([]output, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, err
	}
	enc, err := x.encounter(false, false)
	if err != nil {
		return nil, err
	}
	dest, err := x.destination(true)
	if err != nil {
		return nil, err
	}
	dis := &discharge{Destination: dest}
	if v := strings.TrimSpace(x.g.pv2.Field(9).Component(1).String()); v != "" {
		t, ok := parseTS(v, x.mp.loc, 8)
		if !ok {
			return nil, invalid(hl7.CodeDataType, "PV2", 9, 0, 0, reasonBadTime)
		}
		dis.ExpectedTime = formatTime(t)
	}
	d := &data{Patient: p, Encounter: enc}
	if dis.Destination != nil || dis.ExpectedTime != "" {
		d.Discharge = dis
	}
	return x.one(event.TypeDischargePending, d)
}

func dischargePendingCancelled(x *mapping) ([]output, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, err
	}
	enc, err := x.encounter(false, false)
	if err != nil {
		return nil, err
	}
	d := &data{Patient: p, Encounter: enc}
	dest, err := x.destination(true)
	if err != nil {
		return nil, err
	}
	if dest != nil {
		d.Discharge = &discharge{Destination: dest}
	}
	return x.one(event.TypeDischargePendingCancelled, d)
}

func transferred(x *mapping) ([]output, error) {
	x.g = x.firstGroup()
	d, err := x.transfer(nil)
	if err != nil {
		return nil, err
	}
	return x.one(event.TypeTransfer, d)
}

// transfer maps the current group's move from PV1-6 to PV1-3. A missing
// PV1-6 is taken from otherTo when given (a swap: each patient moves to
// where the other was).
func (x *mapping) transfer(otherTo *location) (*data, error) {
	p, err := x.patient()
	if err != nil {
		return nil, err
	}
	enc, err := x.encounter(false, false)
	if err != nil {
		return nil, err
	}
	from, err := x.location(x.g.pv1, 6)
	if err != nil {
		return nil, err
	}
	to, err := x.location(x.g.pv1, 3)
	if err != nil {
		return nil, err
	}
	if from == nil {
		from = otherTo
	}
	if from == nil {
		return nil, invalid(hl7.CodeRequiredFieldMissing, "PV1", 6, 0, 0, reasonNoLocation)
	}
	if to == nil {
		return nil, invalid(hl7.CodeRequiredFieldMissing, "PV1", 3, 0, 0, reasonNoLocation)
	}
	return &data{Patient: p, Encounter: enc, Transfer: &transfer{From: from, To: to, Time: formatTime(x.time)}}, nil
}

// swapped maps A17: two patients swap beds. Each PID/PV1 group is one
// patient's transfer from PV1-6 (where they were) to PV1-3 (where they
// are now); a group without PV1-6 came from where the other patient is
// now. The message is shared whole or held whole.
func swapped(x *mapping) ([]output, error) {
	pids := x.m.Segments("PID")
	if len(pids) != 2 {
		return nil, &Error{Ack: hl7.AckAE, Code: hl7.CodeSegmentSequence, Segment: "PID", Reason: reasonSwapTwo}
	}
	var groups [2]group
	for i := range groups {
		groups[i] = group{pid: pids[i], seq: i + 1}
	}
	// PD1, PV1 and PV2 belong to the PID before them.
	cur := -1
	for _, s := range x.m.AllSegments() {
		switch s.Name() {
		case "PID":
			cur++
		case "PD1":
			if cur >= 0 && groups[cur].pd1 == nil {
				groups[cur].pd1 = s
			}
		case "PV1":
			if cur >= 0 && groups[cur].pv1 == nil {
				groups[cur].pv1 = s
			}
		case "PV2":
			if cur >= 0 && groups[cur].pv2 == nil {
				groups[cur].pv2 = s
			}
		}
	}
	var tos [2]*location
	for i, g := range groups {
		to, err := (&mapping{mp: x.mp, m: x.m, g: g}).location(g.pv1, 3)
		if err != nil {
			return nil, inGroup(err, g.seq)
		}
		tos[i] = to
	}
	var outs []output
	for i, g := range groups {
		x.g = g
		d, err := x.transfer(tos[1-i])
		if err != nil {
			return nil, inGroup(err, g.seq)
		}
		x.label(d)
		outs = append(outs, output{event.TypeTransfer, d})
	}
	return outs, nil
}

// inGroup points an error in the second patient's segments at them
// (ERR-2 segment sequence 2).
func inGroup(err error, seq int) error {
	var e *Error
	if seq > 1 && errors.As(err, &e) {
		switch e.Segment {
		case "PID", "PD1", "PV1", "PV2":
			e.Sequence = seq
		}
	}
	return err
}

// transferCancelled maps A12 (cancel transfer) and A52, A53 (cancel a
// leave of absence, cancel a return from one): the patient did not move
// from transfer.from to transfer.to, and is at transfer.from. For A12,
// PV1-3 is where the patient is again and PV1-6 the location of the
// cancelled transfer.
func transferCancelled(x *mapping) ([]output, error) {
	p, enc, ward, err := x.onWard()
	if err != nil {
		return nil, err
	}
	away := &location{Name: leaveOfAbsence}
	t := &transfer{From: ward, To: away, Time: formatTime(x.time)}
	switch x.trigger {
	case "A12":
		cancelledTo, err := x.location(x.g.pv1, 6)
		if err != nil {
			return nil, err
		}
		if cancelledTo == nil {
			return nil, invalid(hl7.CodeRequiredFieldMissing, "PV1", 6, 0, 0, reasonNoLocation)
		}
		t.To = cancelledTo
	case "A53": // the return from leave (A22: leave → ward) did not happen
		t.From, t.To = away, ward
	}
	return x.one(event.TypeTransferCancelled, &data{Patient: p, Encounter: enc, Transfer: t})
}

// onWard reads, from the first PID/PV1 group, the patient, the stay and the
// ward the patient is on (PV1-3, required): what a leave or a cancelled
// transfer moves the patient from or back to.
func (x *mapping) onWard() (*patient, *encounter, *location, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, nil, nil, err
	}
	enc, err := x.encounter(false, false)
	if err != nil {
		return nil, nil, nil, err
	}
	ward, err := x.location(x.g.pv1, 3)
	if err != nil {
		return nil, nil, nil, err
	}
	if ward == nil {
		return nil, nil, nil, invalid(hl7.CodeRequiredFieldMissing, "PV1", 3, 0, 0, reasonNoLocation)
	}
	return p, enc, ward, nil
}

// leaveOfAbsence is the location of a patient on leave (A21) or coming back
// from it (A22).
const leaveOfAbsence = "leave of absence"

func leave(x *mapping) ([]output, error) {
	p, enc, ward, err := x.onWard()
	if err != nil {
		return nil, err
	}
	away := &location{Name: leaveOfAbsence}
	t := &transfer{From: ward, To: away, Time: formatTime(x.time)}
	if x.trigger == "A22" {
		t.From, t.To = away, ward
	}
	return x.one(event.TypeTransfer, &data{Patient: p, Encounter: enc, Transfer: t})
}

func cancelled(evType string) mapFunc {
	return func(x *mapping) ([]output, error) {
		x.g = x.firstGroup()
		p, err := x.patient()
		if err != nil {
			return nil, err
		}
		enc, err := x.encounter(false, false)
		if err != nil {
			return nil, err
		}
		return x.one(evType, &data{Patient: p, Encounter: enc})
	}
}

func updated(x *mapping) ([]output, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, err
	}
	return x.one(event.TypePatientUpdated, &data{Patient: p})
}

// patientAndMRG reads, from the first PID group, the patient, and the NHS
// number MRG-1 names (zero when it names none); an MRG-1 that is not a
// valid NHS number is refused with reason.
func (x *mapping) patientAndMRG(reason string) (*patient, nhs.Number, error) {
	x.g = x.firstGroup()
	p, err := x.patient()
	if err != nil {
		return nil, nhs.Number{}, err
	}
	mrg := x.m.Segment("MRG")
	if mrg == nil {
		return nil, nhs.Number{}, &Error{Ack: hl7.AckAE, Code: hl7.CodeSegmentSequence, Segment: "MRG", Reason: reasonNoSegment}
	}
	n, err := nhsNumber(mrg, 1)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Reason = reason
		}
		return nil, nhs.Number{}, err
	}
	return p, n, nil
}

// identifierChanged maps A47 (change patient identifier list): PID holds
// the identifiers as they now are, MRG-1 the one that was wrong. When that
// was an NHS number other than the patient's, recipients must re-file what
// they hold under it: previousNhsNumber says which.
func identifierChanged(x *mapping) ([]output, error) {
	p, old, err := x.patientAndMRG(reasonPreviousNHSInvalid)
	if err != nil {
		return nil, err
	}
	d := &data{Patient: p, Changed: []string{"identifier"}}
	if !old.IsZero() && old.Digits() != p.NHSNumber {
		d.PreviousNHSNumber = old.Digits()
		d.Changed = []string{"nhsNumber"}
	}
	return x.one(event.TypePatientUpdated, d)
}

func merged(x *mapping) ([]output, error) {
	if len(x.m.Segments("PID")) > 1 || len(x.m.Segments("MRG")) > 1 {
		return nil, rejected(hl7.CodeApplicationInternalError, "PID", 0, 0, reasonOneMerge)
	}
	p, n, err := x.patientAndMRG(reasonMergedNHSInvalid)
	if err != nil {
		return nil, err
	}
	if x.held == nil && (n.IsZero() || n.Digits() == p.NHSNumber) {
		x.hold(&Held{Reason: HeldLocalMerge, Detail: detailLocalMerge, NHSNumber: nhs.MustParse(p.NHSNumber), LocalID: localID(x.g.pid)})
		return nil, nil
	}
	mergedP := &mergedPatient{NHSNumber: n.Digits()}
	if mergedP.Identifier, err = identifiers(x.m.Segment("MRG"), 1); err != nil {
		return nil, err
	}
	return x.one(event.TypePatientMerged, &data{Patient: p, MergedPatient: mergedP})
}

// label sets the data's sensitivity categories, from the configured
// treatment functions (PV1-10.1) and locations (PV1-3, PV1-6: point of
// care and facility), and its confidentiality, from PD1-12 (protection
// indicator) Y. Every event of a message gets them, whatever its type: a
// demographics update sent from a sexual health clinic's PAS still says
// the patient is known there.
func (x *mapping) label(d *data) {
	// PD1-12 protects the patient's record; PV2-22 (visit protection
	// indicator) this visit.
	if strings.EqualFold(strings.TrimSpace(x.g.pd1.Field(12).Component(1).String()), "Y") ||
		strings.EqualFold(strings.TrimSpace(x.g.pv2.Field(22).Component(1).String()), "Y") {
		d.Confidential = true
	}
	var cats []string
	add := func(cs []string) {
		for _, c := range cs {
			if !slices.Contains(cats, c) {
				cats = append(cats, c)
			}
		}
	}
	if f := strings.TrimSpace(x.g.pv1.Field(10).Component(1).String()); f != "" {
		add(x.mp.byFunction[f])
	}
	if len(x.mp.byLocation) > 0 {
		for _, field := range []int{3, 6} {
			r := x.g.pv1.Field(field).Rep(1)
			for _, comp := range []int{1, 4} {
				if v := strings.ToUpper(strings.TrimSpace(r.Component(comp).Sub(1).String())); v != "" {
					add(x.mp.byLocation[v])
				}
			}
		}
	}
	if len(cats) > 0 {
		sort.Strings(cats)
		d.Sensitivity = cats
	}
}

// eventTime is EVN-6 (event occurred), else EVN-2 (recorded), else MSH-7.
func (x *mapping) eventTime() (time.Time, error) {
	evn := x.m.Segment("EVN")
	for _, f := range []struct {
		seg   *hl7.Segment
		name  string
		field int
	}{{evn, "EVN", 6}, {evn, "EVN", 2}, {x.m.Segment("MSH"), "MSH", 7}} {
		v := strings.TrimSpace(f.seg.Field(f.field).Component(1).String())
		if v == "" {
			continue
		}
		t, ok := parseTS(v, x.mp.loc, 8)
		if !ok {
			return time.Time{}, invalid(hl7.CodeDataType, f.name, f.field, 0, 0, reasonBadTime)
		}
		return t, nil
	}
	return time.Time{}, invalid(hl7.CodeRequiredFieldMissing, "MSH", 7, 0, 0, reasonNoTime)
}

func (x *mapping) segment(name string) (*hl7.Segment, error) {
	var s *hl7.Segment
	switch name {
	case "PID":
		s = x.g.pid
	case "PV1":
		s = x.g.pv1
	default:
		s = x.m.Segment(name)
	}
	if s == nil {
		return nil, &Error{Ack: hl7.AckAE, Code: hl7.CodeSegmentSequence, Segment: name, Reason: reasonNoSegment}
	}
	return s, nil
}

// patient maps the group's PID and PD1. A patient without an NHS number, or
// whose number the sender says is not verified, is mapped all the same (so
// that a message wrong in other ways still gets AE), and the message is
// held.
func (x *mapping) patient() (*patient, error) {
	pid, err := x.segment("PID")
	if err != nil {
		return nil, err
	}
	n, err := nhsNumber(pid, 3)
	if err != nil {
		return nil, err
	}
	n2, err := nhsNumberPID2(pid)
	if err != nil {
		return nil, err
	}
	switch {
	case n.IsZero():
		n = n2
	case !n2.IsZero() && n2 != n:
		return nil, invalid(hl7.CodeDataType, "PID", 2, 0, 1, reasonNHSTwo)
	}
	status := nhsNumberStatus(pid)
	if !x.confirmed.IsZero() {
		switch {
		case x.g.seq > 1 || len(x.m.Segments("PID")) > 1:
			return nil, invalid(hl7.CodeDataType, "PID", 3, 0, 1, reasonConfirmedTwo)
		case !n.IsZero() && n != x.confirmed:
			return nil, invalid(hl7.CodeDataType, "PID", 3, 0, 1, reasonConfirmedOther)
		}
		n, status = x.confirmed, statusVerified
	}
	p := &patient{NHSNumber: n.Digits()}
	switch {
	case n.IsZero():
		x.hold(&Held{Reason: HeldNoNHSNumber, Detail: detailNoNHS, LocalID: localID(pid)})
	case status == statusVerified || x.mp.unverified:
	case status == statusNone && x.mp.unstated:
	case status == statusNone:
		x.hold(&Held{Reason: HeldNHSNumberStatusMissing, Detail: detailStatusMissing, NHSNumber: n, LocalID: localID(pid)})
	default:
		x.hold(&Held{Reason: HeldNHSNumberUnverified, Detail: detailUnverified, NHSNumber: n, LocalID: localID(pid)})
	}
	if p.GPPractice, err = gpPractice(x.g.pd1); err != nil {
		return nil, err
	}
	if p.Identifier, err = identifiers(pid, 3); err != nil {
		return nil, err
	}
	if p.Name, err = personName(pid); err != nil {
		return nil, err
	}
	if v := strings.TrimSpace(pid.Field(7).Component(1).String()); v != "" {
		d, ok := parseDate(v)
		if !ok {
			return nil, invalid(hl7.CodeDataType, "PID", 7, 0, 0, reasonBirthDate)
		}
		p.BirthDate = d
	}
	if v := strings.TrimSpace(pid.Field(8).Component(1).String()); v != "" {
		g, ok := genders[strings.ToUpper(v)]
		if !ok {
			return nil, invalid(hl7.CodeTableValueNotFound, "PID", 8, 0, 0, reasonGender)
		}
		p.Gender = g
	}
	if v := strings.TrimSpace(pid.Field(29).Component(1).String()); v != "" {
		t, ok := parseTS(v, x.mp.loc, 8)
		if !ok {
			return nil, invalid(hl7.CodeDataType, "PID", 29, 0, 0, reasonBadTime)
		}
		p.DeceasedDateTime = formatTime(t)
	}
	if p.Address, err = homeAddress(pid); err != nil {
		return nil, err
	}
	if p.Telecom, err = telecoms(pid); err != nil {
		return nil, err
	}
	return p, nil
}

// NHS number statuses, from PID-32 (identity reliability code): HL7 UK
// sends the NHS Data Dictionary NHS number status indicator code, as 01
// to 08 or with the NSTS prefix of HL7 table 0445 (NSTS01 ...).
const (
	statusNone       = iota // no status in PID-32
	statusVerified          // 01: number present and verified
	statusUnverified        // 02 to 08: present but not traced, trace required, ...
)

func nhsNumberStatus(pid *hl7.Segment) int {
	status := statusNone
	for _, rep := range pid.Field(32).AllReps() {
		v := strings.ToUpper(strings.TrimSpace(rep.Component(1).String()))
		v = strings.TrimPrefix(v, "NSTS")
		switch v {
		case "01":
			return statusVerified
		case "02", "03", "04", "05", "06", "07", "08":
			status = statusUnverified
		}
		// Other codes of table 0445 (AL alias, UD unknown date of birth,
		// ...) say nothing about the NHS number.
	}
	return status
}

// localID is the sender's local identifier of the patient: PID-3's first
// repetition of type MR, else its first that is not an NHS number.
func localID(pid *hl7.Segment) string {
	var first string
	for _, rep := range pid.Field(3).AllReps() {
		v := strings.TrimSpace(rep.Component(1).String())
		typ := strings.ToUpper(strings.TrimSpace(rep.Component(5).String()))
		auth := strings.ToUpper(strings.TrimSpace(rep.Component(4).Sub(1).String()))
		if v == "" || typ == "NH" || auth == "NHS" {
			continue
		}
		if typ == "MR" {
			return v
		}
		if first == "" {
			first = v
		}
	}
	return first
}

// nhsNumberPID2 reads PID-2 (patient ID, external), where HL7 v2.3 and
// older feeds put the NHS number: a value typed NH or assigned by NHS, or
// a bare ten digits (spaces and hyphens dropped). A value that is neither
// is another external identifier, not an error.
func nhsNumberPID2(pid *hl7.Segment) (nhs.Number, error) {
	rep := pid.Field(2).Rep(1)
	v := strings.TrimSpace(rep.Component(1).String())
	if v == "" {
		return nhs.Number{}, nil
	}
	typ := strings.ToUpper(strings.TrimSpace(rep.Component(5).String()))
	auth := strings.ToUpper(strings.TrimSpace(rep.Component(4).Sub(1).String()))
	digits := strings.NewReplacer(" ", "", "-", "").Replace(v)
	if typ != "NH" && auth != "NHS" && (typ != "" || auth != "" || len(digits) != 10 || !allDigits(digits)) {
		return nhs.Number{}, nil
	}
	n, err := nhs.ParseLoose(v)
	if err != nil {
		reason := reasonNHSFormat
		var pe *problem.Error
		if errors.As(err, &pe) && len(pe.Violations) == 1 && pe.Violations[0].Rule == nhs.RuleCheckDigit {
			reason = reasonNHSCheck
		}
		return nhs.Number{}, invalid(hl7.CodeDataType, "PID", 2, 0, 1, reason)
	}
	return n, nil
}

// nhsNumber finds the NHS number among the identifiers of seg's field
// (PID-3, MRG-1): a repetition whose identifier type (CX.5) is NH or whose
// assigning authority (CX.4.1) is NHS. It returns the zero Number when
// there is none, and an *Error when one is malformed or two differ.
func nhsNumber(seg *hl7.Segment, field int) (nhs.Number, error) {
	var found nhs.Number
	for i, rep := range seg.Field(field).AllReps() {
		typ := strings.ToUpper(strings.TrimSpace(rep.Component(5).String()))
		auth := strings.ToUpper(strings.TrimSpace(rep.Component(4).Sub(1).String()))
		if typ != "NH" && auth != "NHS" {
			continue
		}
		v := strings.TrimSpace(rep.Component(1).String())
		if v == "" {
			continue
		}
		n, err := nhs.ParseLoose(v)
		if err != nil {
			reason := reasonNHSFormat
			var pe *problem.Error
			if errors.As(err, &pe) && len(pe.Violations) == 1 && pe.Violations[0].Rule == nhs.RuleCheckDigit {
				reason = reasonNHSCheck
			}
			return nhs.Number{}, invalid(hl7.CodeDataType, seg.Name(), field, i+1, 1, reason)
		}
		if !found.IsZero() && n != found {
			return nhs.Number{}, invalid(hl7.CodeDataType, seg.Name(), field, i+1, 1, reasonNHSTwo)
		}
		found = n
	}
	return found, nil
}

// identifiers maps the medical record numbers (CX.5 = MR) of PID-3 or
// MRG-1. Other identifier types (social security, insurance, ...) are not
// shared.
func identifiers(seg *hl7.Segment, field int) ([]identifier, error) {
	var out []identifier
	for i, rep := range seg.Field(field).AllReps() {
		if strings.ToUpper(strings.TrimSpace(rep.Component(5).String())) != "MR" {
			continue
		}
		v := strings.TrimSpace(rep.Component(1).String())
		if v == "" {
			continue
		}
		if len(v) > 100 {
			return nil, invalid(hl7.CodeValueTooLong, seg.Name(), field, i+1, 1, reasonTooLong)
		}
		id := identifier{Value: v}
		if auth := strings.TrimSpace(rep.Component(4).Sub(1).String()); ods.Valid(auth) {
			id.System = "urn:ods:" + auth
		}
		if len(out) == 10 {
			break
		}
		out = append(out, id)
	}
	return out, nil
}

// gpPractice is the ODS code of the registered GP practice: PD1-3 (XON),
// the organisation identifier (XON.10, v2.5+) or else the ID number
// (XON.3, as NHS ITK v2.4 messages carry it).
func gpPractice(pd1 *hl7.Segment) (string, error) {
	org := pd1.Field(3).Rep(1)
	comp := 10
	v := strings.TrimSpace(org.Component(10).String())
	if v == "" {
		comp = 3
		v = strings.TrimSpace(org.Component(3).String())
	}
	if v == "" {
		return "", nil
	}
	if !ods.Valid(v) {
		return "", invalid(hl7.CodeDataType, "PD1", 3, 0, comp, reasonGPFormat)
	}
	return v, nil
}

// preferredRep returns the repetition of f whose component 7 (the type
// code of XPN and XAD) is code, else the first, with its 1-based index;
// false when f is empty.
func preferredRep(f hl7.Field, code string) (hl7.Repetition, int, bool) {
	if f.Empty() {
		return hl7.Repetition{}, 0, false
	}
	for i, r := range f.AllReps() {
		if strings.EqualFold(strings.TrimSpace(r.Component(7).String()), code) {
			return r, i + 1, true
		}
	}
	return f.Rep(1), 1, true
}

// personName maps the legal name (XPN.7 = L) of PID-5, or its first.
func personName(pid *hl7.Segment) (*humanName, error) {
	pick, idx, ok := preferredRep(pid.Field(5), "L")
	if !ok {
		return nil, nil
	}
	n := &humanName{}
	var err error
	get := func(comp, max int) string {
		c := pick.Component(comp)
		v := strings.TrimSpace(c.String())
		if comp == 1 {
			v = strings.TrimSpace(c.Sub(1).String()) // XPN.1 is FN: the surname is FN.1
		}
		if len(v) > max && err == nil {
			err = invalid(hl7.CodeValueTooLong, "PID", 5, idx, comp, reasonTooLong)
		}
		return v
	}
	n.Family = get(1, 100)
	for _, c := range []int{2, 3} {
		if v := get(c, 100); v != "" {
			n.Given = append(n.Given, v)
		}
	}
	if v := get(4, 40); v != "" {
		n.Suffix = []string{v}
	}
	if v := get(5, 40); v != "" {
		n.Prefix = []string{v}
	}
	if err != nil {
		return nil, err
	}
	if n.Family == "" && n.Given == nil && n.Prefix == nil && n.Suffix == nil {
		return nil, nil
	}
	return n, nil
}

// genders maps PID-8 (HL7 table 0001, and the NHS Data Dictionary person
// gender codes some UK feeds send) to FHIR administrative gender.
var genders = map[string]string{
	"M": "male", "F": "female", "O": "other", "A": "other", "X": "other", "U": "unknown", "N": "unknown",
	"1": "male", "2": "female", "0": "unknown", "9": "unknown",
}

var postcodeRE = regexp.MustCompile(`^[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}$`) // as schemas/patient.v1.json

// homeAddress maps the home address (XAD.7 = H) of PID-11, or its first.
func homeAddress(pid *hl7.Segment) (*address, error) {
	pick, idx, ok := preferredRep(pid.Field(11), "H")
	if !ok {
		return nil, nil
	}
	a := &address{}
	tooLong := func(comp int) error { return invalid(hl7.CodeValueTooLong, "PID", 11, idx, comp, reasonTooLong) }
	// XAD.1 is a SAD: street or mailing address & street name & dwelling number.
	var street []string
	for _, s := range pick.Component(1).AllSubs() {
		if v := strings.TrimSpace(s.String()); v != "" {
			street = append(street, v)
		}
	}
	for i, v := range []string{strings.Join(street, " "), strings.TrimSpace(pick.Component(2).String())} {
		if v == "" {
			continue
		}
		if len(v) > 100 {
			return nil, tooLong(i + 1)
		}
		a.Line = append(a.Line, v)
	}
	if a.City = strings.TrimSpace(pick.Component(3).String()); len(a.City) > 100 {
		return nil, tooLong(3)
	}
	if a.District = strings.TrimSpace(pick.Component(4).String()); len(a.District) > 100 {
		return nil, tooLong(4)
	}
	// A postcode that is not shaped like a UK one (an address abroad) is
	// left out rather than refused.
	if pc := strings.TrimSpace(pick.Component(5).String()); postcodeRE.MatchString(pc) {
		a.PostalCode = pc
	}
	if a.Line == nil && a.City == "" && a.District == "" && a.PostalCode == "" {
		return nil, nil
	}
	return a, nil
}

// telecoms maps PID-13 (home) and PID-14 (business) numbers and addresses.
func telecoms(pid *hl7.Segment) ([]contactPoint, error) {
	var out []contactPoint
	for _, field := range []int{13, 14} {
		for i, r := range pid.Field(field).AllReps() {
			use := strings.ToUpper(strings.TrimSpace(r.Component(2).String()))
			equip := strings.ToUpper(strings.TrimSpace(r.Component(3).String()))
			cp := contactPoint{System: "phone"}
			switch {
			case equip == "INTERNET" || equip == "X.400" || use == "NET":
				cp.System = "email"
				cp.Value = strings.TrimSpace(r.Component(4).String())
			case equip == "FX" || equip == "BP" || equip == "MD" || equip == "TDD" || equip == "TTY":
				cp.System = "other"
			}
			if cp.Value == "" {
				cp.Value = strings.TrimSpace(r.Component(1).String())
			}
			if cp.Value == "" {
				cp.Value = strings.TrimSpace(r.Component(12).String())
			}
			if cp.Value == "" {
				var parts []string
				for _, c := range []int{5, 6, 7} {
					if v := strings.TrimSpace(r.Component(c).String()); v != "" {
						parts = append(parts, v)
					}
				}
				cp.Value = strings.Join(parts, " ")
			}
			if cp.Value == "" {
				continue
			}
			if len(cp.Value) > 200 {
				return nil, invalid(hl7.CodeValueTooLong, "PID", field, i+1, 1, reasonTooLong)
			}
			switch {
			case equip == "CP":
				cp.Use = "mobile"
			case field == 14 || use == "WPN":
				cp.Use = "work"
			case use == "VHN":
				cp.Use = "temp"
			case use == "PRN" || use == "ORN" || (use == "" && field == 13):
				cp.Use = "home"
			}
			if len(out) == 10 {
				return out, nil
			}
			out = append(out, cp)
		}
	}
	return out, nil
}

// isLocalID reports whether s is 1 to 64 printable ASCII characters
// without spaces (common.v1.json#/$defs/localId).
func isLocalID(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

// encounterClasses maps PV1-2 (HL7 table 0004) to the canonical class.
var encounterClasses = map[string]string{
	"I": "inpatient", "E": "emergency", "O": "outpatient", "P": "preadmission", "B": "maternity",
	"U": "unknown", "R": "other", "C": "other", "N": "other",
	"D": "day-case", // not in table 0004; sent by some UK systems for day cases
}

// isCode reports whether s is lower-case letters and digits in
// hyphen-separated words, at most 64 long (common.v1.json#/$defs/code).
func isCode(s string) bool {
	if len(s) < 1 || len(s) > 64 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// encounter maps PV1. startNow and endNow put the event time in the period
// when PV1-44 (admit) or PV1-45 (discharge) is empty.
func (x *mapping) encounter(startNow, endNow bool) (*encounter, error) {
	pv1, err := x.segment("PV1")
	if err != nil {
		return nil, err
	}
	id := strings.TrimSpace(pv1.Field(19).Component(1).String())
	if id == "" {
		return nil, invalid(hl7.CodeRequiredFieldMissing, "PV1", 19, 0, 1, reasonNoEncounter)
	}
	if !isLocalID(id) {
		return nil, invalid(hl7.CodeDataType, "PV1", 19, 0, 1, reasonEncounterFormat)
	}
	e := &encounter{ID: id, ServiceProvider: &organisation{ODS: x.mp.source}}
	if c := strings.ToUpper(strings.TrimSpace(pv1.Field(2).Component(1).String())); c != "" {
		if e.Class = encounterClasses[c]; e.Class == "" {
			e.Class = "other"
		}
	}
	var p period
	for _, f := range []struct {
		field int
		dst   *string
		now   bool
	}{{44, &p.Start, startNow}, {45, &p.End, endNow}} {
		v := strings.TrimSpace(pv1.Field(f.field).Rep(1).Component(1).String())
		switch {
		case v != "":
			t, ok := parseTS(v, x.mp.loc, 8)
			if !ok {
				return nil, invalid(hl7.CodeDataType, "PV1", f.field, 0, 0, reasonBadTime)
			}
			*f.dst = formatTime(t)
		case f.now:
			*f.dst = formatTime(x.time)
		}
	}
	if p != (period{}) {
		e.Period = &p
	}
	if e.Location, err = x.location(pv1, 3); err != nil {
		return nil, err
	}
	if v := strings.TrimSpace(pv1.Field(10).Component(1).String()); v != "" {
		if len(v) > 200 {
			return nil, invalid(hl7.CodeValueTooLong, "PV1", 10, 0, 1, reasonTooLong)
		}
		e.Specialty = v
	}
	if v := strings.ToLower(strings.TrimSpace(pv1.Field(14).Component(1).String())); isCode(v) {
		e.AdmitSource = v
	}
	return e, nil
}

// location maps a PL field (PV1-3, PV1-6): point of care (ward), room, bed,
// facility (an ODS site code) and description. Nil when empty.
func (x *mapping) location(seg *hl7.Segment, field int) (*location, error) {
	r := seg.Field(field).Rep(1)
	l := &location{}
	for _, c := range []struct {
		comp int
		dst  *string
	}{{1, &l.Ward}, {2, &l.Room}, {3, &l.Bed}, {9, &l.Name}} {
		v := strings.TrimSpace(r.Component(c.comp).Sub(1).String())
		if len(v) > 200 {
			return nil, invalid(hl7.CodeValueTooLong, seg.Name(), field, 0, c.comp, reasonTooLong)
		}
		*c.dst = v
	}
	if f := strings.TrimSpace(r.Component(4).Sub(1).String()); ods.Valid(f) {
		l.ODS = f
	}
	if *l == (location{}) {
		return nil, nil
	}
	return l, nil
}

// destination works out where the patient is discharged to (A03), or is
// expected to go (A01, A04, A06, A16, A25).
//
// The organisation is the first value shaped like an ODS code at the
// configured DestinationFields (PV1-37.1 by default). The kind of place is
// the first NHS Data Dictionary discharge destination code found
// (event.LookupDestinationCode): for a discharge, in PV1-37.1 (discharged
// to location, where NHS ITK messages put a code-only destination), then
// PV1-36.1 (discharge disposition), then PV2-27.1 (expected discharge
// disposition); for an expected destination, PV2-27.1 first. The code is
// kept as sent (code) and names the type: a care home, nursing home,
// hospital or hospice code gives that type whether or not the organisation
// is named, so a code-only destination says what kind of place it is. The
// kind never contradicts the organisation: a code that names no
// organisational kind (19 usual place of residence, 29 temporary
// residence, ...) beside a named organisation gives type other. Where the
// type is other, name holds the code's words. Nil when neither is known.
func (x *mapping) destination(expected bool) (*destination, error) {
	order := []hl7.Path{pathPV1_37, pathPV1_36, pathPV2_27}
	if expected {
		order = []hl7.Path{pathPV2_27, pathPV1_37, pathPV1_36}
	}
	var dc event.DestinationCode
	for _, p := range order {
		if c, ok := event.LookupDestinationCode(strings.TrimSpace(x.m.Lookup(p).String())); ok {
			dc = c
			break
		}
	}
	var org string
	for _, p := range x.mp.dest {
		if v := strings.TrimSpace(x.m.Lookup(p).String()); ods.Valid(v) {
			org = v
			break
		}
	}
	if dc.Code == "" && org == "" {
		return nil, nil
	}
	d := &destination{Type: event.DestinationOther, ODS: org, Code: dc.Code}
	switch {
	case dc.Code == "":
	case event.Organisational(dc.Kind):
		d.Type = dc.Kind
	case dc.Kind == event.DestinationHome && org == "":
		d.Type = event.DestinationHome
	default:
		// No organisational kind (court, not known, ...), or home beside a
		// named organisation: type other, and the code's words say what
		// the type cannot.
		d.Name = dc.Description
	}
	return d, nil
}

var (
	pathPV1_37 = hl7.MustParsePath("PV1-37.1.1")
	pathPV1_36 = hl7.MustParsePath("PV1-36.1")
	pathPV2_27 = hl7.MustParsePath("PV2-27.1")
)

// parseTS parses an HL7 TS/DTM value: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]]
// followed by an optional +/-ZZZZ offset; without one, the time is in loc.
// At least minDigits of the date and time must be given.
func parseTS(s string, loc *time.Location, minDigits int) (time.Time, bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	digits := s[:i]
	if len(digits) < minDigits || len(digits) > 14 || len(digits)%2 != 0 {
		return time.Time{}, false
	}
	rest := s[i:]
	nanos := 0
	if len(rest) > 0 && rest[0] == '.' {
		if len(digits) != 14 {
			return time.Time{}, false
		}
		j := 1
		for j < len(rest) && j <= 4 && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j == 1 {
			return time.Time{}, false
		}
		frac := rest[1:j]
		for k := 0; k < 9; k++ {
			nanos *= 10
			if k < len(frac) {
				nanos += int(frac[k] - '0')
			}
		}
		rest = rest[j:]
	}
	if len(rest) > 0 {
		if len(rest) != 5 || (rest[0] != '+' && rest[0] != '-') || !allDigits(rest[1:]) {
			return time.Time{}, false
		}
		h, m := atoi(rest[1:3]), atoi(rest[3:5])
		if h > 14 || m > 59 {
			return time.Time{}, false
		}
		off := (h*60 + m) * 60
		if rest[0] == '-' {
			off = -off
		}
		loc = time.FixedZone("", off)
	}
	num := func(from, to, def int) int {
		if len(digits) < to {
			return def
		}
		return atoi(digits[from:to])
	}
	y, mo, d := num(0, 4, 0), num(4, 6, 1), num(6, 8, 1)
	h, mi, se := num(8, 10, 0), num(10, 12, 0), num(12, 14, 0)
	if mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 59 {
		return time.Time{}, false
	}
	t := time.Date(y, time.Month(mo), d, h, mi, se, nanos, loc)
	if t.Day() != d || t.Month() != time.Month(mo) { // 31 February
		return time.Time{}, false
	}
	return t, true
}

// parseDate returns the date part of a TS as YYYY-MM-DD, or "" and true
// when the value gives only a year or a month (valid HL7, but not a date
// the canonical event can hold).
func parseDate(s string) (string, bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 4 || i == 6 {
		if i == len(s) {
			return "", true
		}
		return "", false
	}
	t, ok := parseTS(s, time.UTC, 8)
	if !ok {
		return "", false
	}
	if len(s) > 8 {
		// The date of birth is the date where the patient was born, so a
		// time with an offset does not move it: read the first 8 digits.
		t = time.Date(atoi(s[0:4]), time.Month(atoi(s[4:6])), atoi(s[6:8]), 0, 0, 0, 0, time.UTC)
	}
	return t.Format(time.DateOnly), true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}
