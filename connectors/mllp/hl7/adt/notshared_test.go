package adt

import (
	"fmt"
	"strings"
	"testing"
)

// TestEveryTriggerNotSharedIsHeld pins a gap found in the audit of issues 9
// and 14: the README said the corpus covered every trigger of its table,
// yet some thirty triggers held by decision (A09, A14, A18, A60 ...) were
// in no test. Each trigger of NotShared is mapped here, as a minimal
// message with a patient and as one without a PID (A20 is about a bed),
// and must be held (trigger-not-shared, with its own decision), publishing
// nothing; a trigger in neither table is held with the default text.
func TestEveryTriggerNotSharedIsHeld(t *testing.T) {
	mp := newTestMapper(t)
	want := NotShared()
	if len(want) < 30 {
		t.Fatalf("NotShared lists %d triggers, want the thirty-odd held by decision", len(want))
	}
	want["A99"] = detailTriggerDefault // not an HL7 trigger
	want["Z01"] = detailTriggerDefault // a local one
	for trigger, detail := range want {
		for _, withPID := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s pid=%v", trigger, withPID), func(t *testing.T) {
				segs := []string{strings.Replace(testMSH, "%s", trigger, 1), "EVN|" + trigger + "|20250314093500"}
				if withPID {
					segs = append(segs, testPID)
				}
				res, err := mustMap(t, mp, msg(segs...))
				if err != nil {
					t.Fatalf("Map: %v", err)
				}
				if res.Held == nil || len(res.Events) != 0 {
					t.Fatalf("got %d events, held %+v; want held and nothing published", len(res.Events), res.Held)
				}
				if res.Held.Reason != HeldTriggerNotShared || res.Held.Detail != detail {
					t.Errorf("held %q (%q), want %q (%q)", res.Held.Reason, res.Held.Detail, HeldTriggerNotShared, detail)
				}
				if got := !res.Held.NHSNumber.IsZero(); got != withPID {
					t.Errorf("held record keyed by the NHS number: %v, want %v", got, withPID)
				}
				if res.Trigger != trigger || !Known(trigger) != (detail == detailTriggerDefault) {
					t.Errorf("trigger %q (known %v)", res.Trigger, Known(trigger))
				}
			})
		}
	}
	for _, tr := range Triggers() {
		if _, ok := notShared[tr]; ok {
			t.Errorf("%s is both shared and not shared", tr)
		}
	}
}
