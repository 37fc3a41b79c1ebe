package consent_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/carehub/carehub/consent"
)

// benchRequests builds a realistic mix: one discharge, its four usual
// candidates (registered GP, discharge destination, a community service and
// a hospital on a patient list), and a patient with n directives drawn from
// what patients record.
func benchRequests(n int, labels ...string) []consent.Request {
	rec := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	end := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	all := []consent.Directive{
		{ID: "d1", Kind: consent.KindDenyOrganisation, Organisation: "RXX01", Recorded: rec, RecordedBy: "X26"},
		{ID: "d2", Kind: consent.KindNotificationOnly, Role: consent.RoleCommunity, Recorded: rec, RecordedBy: "X26"},
		{ID: "d3", Kind: consent.KindDenyRole, Role: consent.RoleSocialCare, Period: consent.Period{End: &end}, Recorded: rec, RecordedBy: "X26"},
		{ID: "d4", Kind: consent.KindPermitOrganisation, Organisation: "VN4K1", Categories: []string{"mental-health"}, Recorded: rec, RecordedBy: "X26"},
		{ID: "d5", Kind: consent.KindPermitOrganisation, Organisation: "VN4K1", Recorded: rec.Add(time.Hour), RecordedBy: "X26"},
	}
	ds := all[:n]
	ev := consent.Event{ID: "ev", Type: "uk.carehub.discharge.v1", Publisher: "RRK", Time: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC),
		Labels: labels, HasDocument: true, GPPractice: "A81001", DischargeDestination: "VN4K1"}
	return []consent.Request{
		{Event: ev, Recipient: consent.Recipient{ODS: "A81001", Role: consent.RoleGPPractice}, Basis: consent.BasisRegisteredGP, Directives: ds},
		{Event: ev, Recipient: consent.Recipient{ODS: "VN4K1", Role: consent.RoleSocialCare}, Basis: consent.BasisDischargeDestination, Directives: ds},
		{Event: ev, Recipient: consent.Recipient{ODS: "RY4", Role: consent.RoleCommunity}, Basis: consent.BasisCareRelationship, Directives: ds},
		{Event: ev, Recipient: consent.Recipient{ODS: "RRK01", Role: consent.RoleHospital}, Basis: consent.BasisPatientList, Directives: ds},
	}
}

// BenchmarkDecide measures one decision through the Decider interface (as
// the router calls it) and through Evaluate, for patients with 0 to 5
// directives, with and without a sensitive label on the event.
func BenchmarkDecide(b *testing.B) {
	p := consent.DefaultPolicy()
	var d consent.Decider = &p
	ctx := context.Background()
	for _, labels := range [][]string{nil, {"mental-health"}} {
		for _, n := range []int{0, 1, 3, 5} {
			name := "directives=" + strconv.Itoa(n)
			if labels != nil {
				name += "/sensitive"
			}
			reqs := benchRequests(n, labels...)
			b.Run(name+"/Decide", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := d.Decide(ctx, reqs[i&3]); err != nil {
						b.Fatal(err)
					}
					i++
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
			})
			b.Run(name+"/Evaluate", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := p.Evaluate(reqs[i&3]); err != nil {
						b.Fatal(err)
					}
					i++
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
			})
		}
	}
}

// BenchmarkDecideParallel: decisions across every core, as a router with
// several partitions makes them.
func BenchmarkDecideParallel(b *testing.B) {
	p := consent.DefaultPolicy()
	reqs := benchRequests(5)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := p.Evaluate(reqs[i&3]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// TestBenchRequestsDecide pins what the benchmark decides, so that a change
// that makes it fast by deciding something else is noticed.
func TestBenchRequestsDecide(t *testing.T) {
	p := consent.DefaultPolicy()
	want := map[int][]string{
		0: {"relationship-confirmed", "relationship-confirmed", "relationship-confirmed", "relationship-confirmed"},
		5: {"relationship-confirmed", "directive:permit-organisation", "directive:notification-only", "relationship-confirmed"},
	}
	for n, rules := range want {
		for i, r := range benchRequests(n) {
			d, err := p.Evaluate(r)
			if err != nil || d.Rule != rules[i] {
				t.Errorf("directives=%d candidate %d: %+v, %v; want rule %s", n, i, d, err, rules[i])
			}
		}
	}
}
