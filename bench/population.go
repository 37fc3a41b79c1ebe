package bench

import (
	"fmt"
	"strconv"
	"time"
)

// Source is the ODS code of the synthetic hospital that publishes every
// event of a run.
const Source = "RX1"

// maxFanout is the most recipients one event can have. The hub matches an
// event on two bases only (the patient's registered GP practice and the
// discharge destination), so it can reach at most two recipients; the
// tracker leaves room for a third for when a third basis exists.
const maxFanout = 3

// Recipient is one synthetic recipient: a GP practice or a care home with a
// webhook served by the bench's receivers.
type Recipient struct {
	ODS    string
	Role   string // gp-practice or social-care
	Basis  string // registered-gp or discharge-destination
	Secret string
	key    []byte
	// Down: the recipient's endpoint does not answer (isolation, backlog).
	Down bool
	// URL is the webhook URL written into the hub's configuration.
	URL string
}

// plan is the set of recipients (indexes into Population.Recipients) one
// event is meant for.
type plan struct {
	r [maxFanout]int32
	n uint8
}

// Population is a synthetic population: patients with valid NHS numbers
// from the 999 test range, each registered with a GP practice and resident
// in a care home, and the recipients that subscribe for them.
type Population struct {
	Recipients []Recipient
	GPs        int // Recipients[0:GPs] are GP practices
	CareHomes  int // Recipients[GPs:GPs+CareHomes] are care homes
	nhs        []string
	byODS      map[string]int
	// fixedHome, when >= 0, makes every patient resident in that care home
	// (the backlog scenario: every event queues for one recipient).
	fixedHome int
}

// NewPopulation builds patients patients spread over gps GP practices and
// homes care homes.
func NewPopulation(patients, gps, homes int) (*Population, error) {
	if patients < 1 || gps < 1 || homes < 1 {
		return nil, fmt.Errorf("bench: a population needs at least one patient, GP practice and care home")
	}
	if patients > 900000 {
		return nil, fmt.Errorf("bench: at most 900000 patients (the 999 test range)")
	}
	p := &Population{GPs: gps, CareHomes: homes, byODS: map[string]int{}, fixedHome: -1}
	for i := 0; i < gps; i++ {
		p.add(Recipient{ODS: fmt.Sprintf("B%05d", i), Role: "gp-practice", Basis: "registered-gp"})
	}
	for i := 0; i < homes; i++ {
		p.add(Recipient{ODS: fmt.Sprintf("VM%05d", i), Role: "social-care", Basis: "discharge-destination"})
	}
	p.nhs = TestNHSNumbers(patients)
	return p, nil
}

func (p *Population) add(r Recipient) {
	r.Secret = "bench-secret-" + r.ODS
	r.key = []byte(r.Secret)
	p.byODS[r.ODS] = len(p.Recipients)
	p.Recipients = append(p.Recipients, r)
}

// Patients is the number of patients.
func (p *Population) Patients() int { return len(p.nhs) }

// patient returns the patient of event seq: events go round the population,
// so one patient's events are published in order.
func (p *Population) patient(seq uint64) int { return int(seq % uint64(len(p.nhs))) }

// gpOf and homeOf spread patients over practices and homes independently.
func (p *Population) gpOf(patient int) int { return patient % p.GPs }

func (p *Population) homeOf(patient int) int {
	if p.fixedHome >= 0 {
		return p.fixedHome
	}
	return p.GPs + (patient/p.GPs+patient*7)%p.CareHomes
}

// planOf returns the recipients event seq is meant for: the patient's GP
// practice and the care home the patient is discharged to.
func (p *Population) planOf(seq uint64) plan {
	pt := p.patient(seq)
	return plan{r: [maxFanout]int32{int32(p.gpOf(pt)), int32(p.homeOf(pt))}, n: 2}
}

// eventID is the CloudEvents id of event seq in a phase.
func eventID(prefix string, seq uint64) string {
	return prefix + strconv.FormatUint(seq, 10)
}

// Event returns the CloudEvents JSON of event seq: a discharge of the
// seq's patient from the hospital to the patient's care home, with an inline
// discharge summary (about 1.1 KB, like deploy/examples/discharge.json).
func (p *Population) Event(buf []byte, prefix string, seq uint64, now time.Time) []byte {
	pt := p.patient(seq)
	gp := p.Recipients[p.gpOf(pt)].ODS
	home := p.Recipients[p.homeOf(pt)].ODS
	ts := now.UTC().Format(time.RFC3339)
	start := now.Add(-72 * time.Hour).UTC().Format(time.RFC3339)
	return fmt.Appendf(buf, eventTemplate, prefix, seq, Source, ts, p.nhs[pt], gp, seq, start, ts, home, ts)
}

// eventTemplate is a discharge event. Arguments: id prefix, seq, source ODS,
// time, NHS number, GP practice, encounter seq, period start, period end,
// destination ODS, summary creation time.
const eventTemplate = `{"specversion":"1.0","id":"%s%d","source":"urn:ods:%s","type":"org.carehub.discharge.v1","time":"%s",` +
	`"datacontenttype":"application/json","data":{"patient":{"nhsNumber":"%s","gpPractice":"%s",` +
	`"name":{"family":"TESTPATIENT","given":["Alex"]},"birthDate":"1938-06-01","gender":"female"},` +
	`"encounter":{"id":"ENC-%d","class":"inpatient","period":{"start":"%s","end":"%s"},` +
	`"serviceProvider":{"ods":"RX1","name":"Test Hospitals NHS Trust"},"location":{"ward":"Ward 7"}},` +
	`"discharge":{"destination":{"type":"care-home","ods":"%s","name":"Test Care Home"},` +
	`"summary":{"contentType":"text/plain","title":"Discharge summary","creation":"%s",` +
	`"text":"SYNTHETIC TEST DATA. Admitted after a fall at the care home; no fracture found. Mobilising with a frame. ` +
	`Medicines unchanged: continue current prescriptions. Blood tests on admission normal apart from a mild anaemia, ` +
	`for repeat in four weeks. Please ask the GP to review in two weeks and the care home to monitor for further falls."}}}}`

// TestNHSNumbers returns n distinct valid NHS numbers from the 999 test
// range (modulus 11 check digit correct; numbers whose check would be 10
// are skipped, as they are invalid).
func TestNHSNumbers(n int) []string {
	out := make([]string, 0, n)
	for i := 0; len(out) < n && i < 1000000; i++ {
		base := fmt.Sprintf("999%06d", i)
		sum := 0
		for j := 0; j < 9; j++ {
			sum += int(base[j]-'0') * (10 - j)
		}
		check := 11 - sum%11
		if check == 11 {
			check = 0
		}
		if check == 10 {
			continue
		}
		out = append(out, base+strconv.Itoa(check))
	}
	return out
}
