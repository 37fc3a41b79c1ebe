package event

import "sort"

// Destination types: data.discharge.destination.type.
const (
	DestinationHome        = "home"
	DestinationCareHome    = "care-home"
	DestinationNursingHome = "nursing-home"
	DestinationHospital    = "hospital"
	DestinationHospice     = "hospice"
	DestinationOther       = "other"
)

// DestinationCode is one NHS Data Dictionary DISCHARGE DESTINATION CODE
// (HOSPITAL PROVIDER SPELL), as data.discharge.destination.code carries
// it: the kind of place it names (a destination type) and its meaning in
// words.
type DestinationCode struct {
	Code        string // two digits, e.g. "85"
	Kind        string // the destination type the code names
	Description string // short, for a person reading the event
}

// destinationCodes are the NHS Data Dictionary discharge destination codes,
// with the destination type each names. The same table is in
// common.v1.json (dischargeDestination: code enum, and the allOf that
// keeps type and code in agreement); TestDestinationCodesAreTheSchemas
// keeps the two equal.
var destinationCodes = map[string]DestinationCode{
	"19": {"19", DestinationHome, "usual place of residence"},
	"29": {"29", DestinationOther, "temporary place of residence"},
	"30": {"30", DestinationHospital, "NHS high security psychiatric hospital"},
	"37": {"37", DestinationOther, "court"},
	"38": {"38", DestinationOther, "penal establishment or police station"},
	"48": {"48", DestinationHospital, "high security psychiatric hospital, Scotland"},
	"49": {"49", DestinationHospital, "NHS hospital, high security psychiatric accommodation"},
	"50": {"50", DestinationHospital, "NHS hospital, medium secure unit"},
	"51": {"51", DestinationHospital, "NHS hospital, general ward"},
	"52": {"52", DestinationHospital, "NHS hospital, maternity or neonatal ward"},
	"53": {"53", DestinationHospital, "NHS hospital, mental health or learning disabilities ward"},
	"54": {"54", DestinationCareHome, "NHS run care home"},
	"65": {"65", DestinationCareHome, "local authority residential accommodation"},
	"66": {"66", DestinationOther, "local authority foster care"},
	"79": {"79", DestinationOther, "not applicable: patient died or stillbirth"},
	"84": {"84", DestinationHospital, "non-NHS hospital, medium secure unit"},
	"85": {"85", DestinationCareHome, "non-NHS care home"},
	"86": {"86", DestinationNursingHome, "non-NHS nursing home"}, // retired code, still sent by older systems
	"87": {"87", DestinationHospital, "non-NHS hospital"},
	"88": {"88", DestinationHospice, "non-NHS hospice"},
	"98": {"98", DestinationOther, "not applicable: spell not finished"},
	"99": {"99", DestinationOther, "not known"},
}

// LookupDestinationCode returns the NHS Data Dictionary discharge
// destination code c (exactly two digits, as sent); false when c is not one.
func LookupDestinationCode(c string) (DestinationCode, bool) {
	d, ok := destinationCodes[c]
	return d, ok
}

// DestinationCodes lists every discharge destination code, in code order.
func DestinationCodes() []DestinationCode {
	out := make([]DestinationCode, 0, len(destinationCodes))
	for _, d := range destinationCodes {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out
}

// Organisational reports whether a destination type is a kind of
// organisation (care home, nursing home, hospital, hospice): a destination
// of such a type may name the organisation by ODS code, and routing by
// discharge destination finds a recipient only when it does.
func Organisational(typ string) bool {
	switch typ {
	case DestinationCareHome, DestinationNursingHome, DestinationHospital, DestinationHospice:
		return true
	}
	return false
}
