package consent_test

import (
	"time"

	"github.com/carehub/carehub/consent"
)

// Fixture organisations. GP1 is the registered GP in the events built by
// ev(); HOSP and HOME are other candidates.
const (
	gp1  = "A81001"
	gp2  = "A81002"
	hosp = "RRK"
	home = "VN4K1"
	comm = "RY4"
)

// t0 is the time of the events in the fixtures.
var t0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

func at(days int) time.Time { return t0.AddDate(0, 0, days) }

func tp(t time.Time) *time.Time { return &t }

// ev is a discharge from hosp to home, registered with gp1, at t0.
func ev(labels ...string) consent.Event {
	return consent.Event{
		ID: "ev-1", Type: "uk.carehub.discharge.v1", Publisher: "RXX", Time: t0,
		Labels: labels, HasDocument: true, GPPractice: gp1, DischargeDestination: home,
	}
}

func req(e consent.Event, ods string, role consent.Role, basis consent.Basis, ds ...consent.Directive) consent.Request {
	return consent.Request{Event: e, Recipient: consent.Recipient{ODS: ods, Role: role}, Basis: basis, Directives: ds}
}

// Directive builders, recorded at day -30 unless changed.
func denyOrg(id, ods string) consent.Directive {
	return consent.Directive{ID: id, Kind: consent.KindDenyOrganisation, Organisation: ods, Recorded: at(-30), RecordedBy: "X26"}
}
func denyRole(id string, r consent.Role) consent.Directive {
	return consent.Directive{ID: id, Kind: consent.KindDenyRole, Role: r, Recorded: at(-30), RecordedBy: "X26"}
}
func notifyOrg(id, ods string) consent.Directive {
	return consent.Directive{ID: id, Kind: consent.KindNotificationOnly, Organisation: ods, Recorded: at(-30), RecordedBy: "X26"}
}
func notifyRole(id string, r consent.Role) consent.Directive {
	return consent.Directive{ID: id, Kind: consent.KindNotificationOnly, Role: r, Recorded: at(-30), RecordedBy: "X26"}
}
func permitOrg(id, ods string, cats ...string) consent.Directive {
	return consent.Directive{ID: id, Kind: consent.KindPermitOrganisation, Organisation: ods, Categories: cats, Recorded: at(-30), RecordedBy: "X26"}
}
func confidential(id string) consent.Directive {
	return consent.Directive{ID: id, Kind: consent.KindConfidential, Recorded: at(-30), RecordedBy: "X26"}
}

func recorded(d consent.Directive, t time.Time) consent.Directive { d.Recorded = t; return d }

func period(d consent.Directive, start, end *time.Time) consent.Directive {
	d.Period = consent.Period{Start: start, End: end}
	return d
}

func permit(rule, id string, obl ...consent.Obligation) consent.Decision {
	return consent.Decision{Effect: consent.Permit, Rule: rule, DirectiveID: id, Obligations: obl}
}

func deny(rule, id string) consent.Decision {
	return consent.Decision{Effect: consent.Deny, Rule: rule, DirectiveID: id}
}
