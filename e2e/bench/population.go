package bench

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/carehub/carehub/schemas/nhs"
)

// Source is the ODS code of the synthetic hospital that publishes every
// event of a run.
const Source = "RX1"

// maxFanout is the most recipients one event of a population goes to: the
// patient's GP practice, the care home it is discharged to, and the
// community team whose patient list holds the patient.
const maxFanout = 3

// UnsubscribedHome is the care home a population without care homes (the
// feed scenarios) discharges every patient to: no recipient subscribes for
// it, so each event goes to the patient's GP practice alone.
const UnsubscribedHome = "VM99999"

// Recipient is one synthetic recipient: a GP practice, a care home or a
// community team, with a webhook served by the bench's receivers.
type Recipient struct {
	ODS    string
	Role   string // gp-practice, social-care or community
	Basis  string // registered-gp, discharge-destination or patient-list
	Secret string
	key    []byte
	// Down: the recipient's endpoint does not answer (isolation, backlog).
	Down bool
	// URL is the webhook URL written into the hub's configuration.
	URL string
	// Pull: the recipient has no webhook; it reads its feed
	// (GET /v1/feeds/<ODS>) with its own API key, FeedKey.
	Pull    bool
	FeedKey string
	// PatientList is the file of a community team's patients (WriteLists).
	PatientList string
}

// plan is the set of recipients (indexes into Population.Recipients) one
// event is meant for.
type plan struct {
	r [maxFanout]int32
	n uint8
}

// Population is a synthetic population: patients with valid NHS numbers
// from the 999 test range, each registered with a GP practice, resident in a
// care home and, when there are community teams, on one team's patient
// list; and the recipients that subscribe for them.
type Population struct {
	Recipients []Recipient
	GPs        int // Recipients[0:GPs] are GP practices
	CareHomes  int // Recipients[GPs:GPs+CareHomes] are care homes
	Teams      int // Recipients[GPs+CareHomes:] are community teams, each with a patient list
	nhs        []string
	byODS      map[string]int
	// fixedHome, when >= 0, makes every patient resident in that care home
	// (the backlog scenario: every event queues for one recipient).
	fixedHome int
}

// NewPopulation builds patients patients spread over gps GP practices,
// homes care homes and teams community teams. With no teams events go to
// two recipients, not three; with no care homes either, every patient is
// discharged to UnsubscribedHome and each event goes to its GP practice
// alone.
func NewPopulation(patients, gps, homes, teams int) (*Population, error) {
	if patients < 1 || gps < 1 || homes < 0 || teams < 0 {
		return nil, fmt.Errorf("bench: a population needs at least one patient and one GP practice")
	}
	if patients > 900000 {
		return nil, fmt.Errorf("bench: at most 900000 patients (the 999 test range)")
	}
	p := &Population{GPs: gps, CareHomes: homes, Teams: teams, byODS: map[string]int{}, fixedHome: -1}
	for i := 0; i < gps; i++ {
		p.add(Recipient{ODS: fmt.Sprintf("B%05d", i), Role: "gp-practice", Basis: "registered-gp"})
	}
	for i := 0; i < homes; i++ {
		p.add(Recipient{ODS: fmt.Sprintf("VM%05d", i), Role: "social-care", Basis: "discharge-destination"})
	}
	for i := 0; i < teams; i++ {
		p.add(Recipient{ODS: fmt.Sprintf("CT%05d", i), Role: "community", Basis: "patient-list"})
	}
	p.nhs = TestNHSNumbers(patients)
	return p, nil
}

func (p *Population) add(r Recipient) {
	// The Standard Webhooks form (whsec_ and base64 of at least 24 bytes),
	// the only one the hub's webhook connector accepts.
	r.key = []byte("carehub-bench-recipient-secret-" + r.ODS)
	r.Secret = "whsec_" + base64.StdEncoding.EncodeToString(r.key)
	p.byODS[r.ODS] = len(p.Recipients)
	p.Recipients = append(p.Recipients, r)
}

// PullGPs makes every GP practice a pull recipient: no webhook, a feed read
// with its own key.
func (p *Population) PullGPs() {
	for i := 0; i < p.GPs; i++ {
		rc := &p.Recipients[i]
		rc.Pull, rc.FeedKey = true, "bench-feed-key-"+rc.ODS
	}
}

// Patients is the number of patients.
func (p *Population) Patients() int { return len(p.nhs) }

// patient returns the patient of event seq: events go round the population,
// so one patient's events are published in order.
func (p *Population) patient(seq uint64) int { return int(seq % uint64(len(p.nhs))) }

// gpOf and homeOf spread patients over practices and homes independently.
func (p *Population) gpOf(patient int) int { return patient % p.GPs }

// homeOf is -1 when the population has no care homes.
func (p *Population) homeOf(patient int) int {
	if p.fixedHome >= 0 {
		return p.fixedHome
	}
	if p.CareHomes == 0 {
		return -1
	}
	return p.GPs + (patient/p.GPs+patient*7)%p.CareHomes
}

// homeODS is the ODS code of the care home patient is discharged to.
func (p *Population) homeODS(patient int) string {
	if h := p.homeOf(patient); h >= 0 {
		return p.Recipients[h].ODS
	}
	return UnsubscribedHome
}

// teamOf returns the community team whose list holds patient, spread
// independently of practices and homes; -1 when there are no teams.
func (p *Population) teamOf(patient int) int {
	if p.Teams == 0 {
		return -1
	}
	return p.GPs + p.CareHomes + (patient/p.GPs*3+patient*11)%p.Teams
}

// planOf returns the recipients event seq is meant for: the patient's GP
// practice, the care home the patient is discharged to (when it is a
// recipient) and the community team whose list holds the patient (when
// there are teams), in that order.
func (p *Population) planOf(seq uint64) plan {
	pt := p.patient(seq)
	pl := plan{r: [maxFanout]int32{int32(p.gpOf(pt))}, n: 1}
	if h := p.homeOf(pt); h >= 0 {
		pl.r[pl.n], pl.n = int32(h), pl.n+1
	}
	if t := p.teamOf(pt); t >= 0 {
		pl.r[pl.n], pl.n = int32(t), pl.n+1
	}
	return pl
}

// Fanout is the number of recipients each event goes to.
func (p *Population) Fanout() int {
	n := 1
	if p.CareHomes > 0 || p.fixedHome >= 0 {
		n++
	}
	if p.Teams > 0 {
		n++
	}
	return n
}

// WriteLists writes each community team's patient list (one NHS number per
// line) to dir/<ODS>.txt and records the absolute path in the team's
// PatientList.
func (p *Population) WriteLists(dir string) error {
	if p.Teams == 0 {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	lists := make([][]byte, p.Teams)
	for pt := range p.nhs {
		i := p.teamOf(pt) - p.GPs - p.CareHomes
		lists[i] = append(append(lists[i], p.nhs[pt]...), '\n')
	}
	for i, l := range lists {
		rc := &p.Recipients[p.GPs+p.CareHomes+i]
		rc.PatientList = filepath.Join(abs, rc.ODS+".txt")
		head := "# carehub bench: synthetic patients (999 test range) on " + rc.ODS + "'s list\n"
		if err := os.WriteFile(rc.PatientList, append([]byte(head), l...), 0o600); err != nil {
			return err
		}
	}
	return nil
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
	home := p.homeODS(pt)
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
// range, in order (nhs.Synthetic(0), nhs.Synthetic(1), ...).
func TestNHSNumbers(n int) []string {
	out := make([]string, 0, n)
	seen := map[string]bool{}
	for i := 0; len(out) < n && i < 1000000; i++ {
		s := nhs.Synthetic(i).Digits()
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
