package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// The targets for a 2-core machine.
const (
	TargetRatio          = 0.5       // throughput: hub at least half the reference
	TargetP99Ms          = 50.0      // latency: p99 at 500 events/s
	TargetFanoutFraction = 0.8       // fanout: of throughput's delivery rate
	TargetPeakRSS        = 512 << 20 // every scenario
	TargetIsolation      = 1.2       // isolation p99 within this of latency's
)

// targets checks each row against the targets.
func targets(rows []Result) []Target {
	find := func(sc, in string) *Result {
		for i := range rows {
			if rows[i].Scenario == sc && rows[i].Ingest == in {
				return &rows[i]
			}
		}
		return nil
	}
	var out []Target
	add := func(r *Result, name, want, got string, met bool) {
		out = append(out, Target{Scenario: r.Scenario, Ingest: r.Ingest, Name: name, Want: want, Got: got, Met: met})
	}
	for i := range rows {
		r := &rows[i]
		switch r.Scenario {
		case Throughput:
			if r.ReferenceDeliveriesPerS > 0 {
				add(r, "hub / reference deliveries per second", fmt.Sprintf(">= %.1f", TargetRatio),
					fmt.Sprintf("%.2f", r.Ratio), r.Ratio >= TargetRatio)
			}
		case Latency:
			add(r, "p99 accepted to delivered", fmt.Sprintf("<= %.0f ms at %.0f/s", TargetP99Ms, r.Rate),
				fmt.Sprintf("%.1f ms", r.P99Ms), r.P99Ms <= TargetP99Ms)
		case Fanout:
			add(r, "recipients per event, of those subscribed", ">= 3 of 1000",
				fmt.Sprintf("%d of %d", r.Fanout, r.Recipients), r.Fanout >= 3 && r.Recipients >= 1000)
			if t := find(Throughput, r.Ingest); t != nil && t.HubDeliveriesPerS > 0 {
				f := r.HubDeliveriesPerS / t.HubDeliveriesPerS
				add(r, "deliveries per second / throughput's", fmt.Sprintf(">= %.1f", TargetFanoutFraction),
					fmt.Sprintf("%.2f (%.0f / %.0f)", f, r.HubDeliveriesPerS, t.HubDeliveriesPerS), f >= TargetFanoutFraction)
			}
		case Isolation:
			if l := find(Latency, r.Ingest); l != nil && l.P99Ms > 0 {
				f := r.P99Ms / l.P99Ms
				add(r, "others' p99 / latency's p99", fmt.Sprintf("<= %.1f", TargetIsolation),
					fmt.Sprintf("%.2f (%.1f / %.1f ms)", f, r.P99Ms, l.P99Ms), f <= TargetIsolation)
			}
		}
		if r.PeakRSSBytes > 0 {
			add(r, "peak RSS of the hub", "< 512 MB", fmt.Sprintf("%.0f MB", mb(r.PeakRSSBytes)), r.PeakRSSBytes < TargetPeakRSS)
		}
	}
	return out
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteTable writes the results and the targets as aligned text tables.
func (rep *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tingest\trecipients\trate/s\tevents/s\tdeliveries/s\treference/s\tratio\tp50 ms\tp90 ms\tp99 ms\tmax ms\tref p99 ms\thub CPU s\tCPU ms/1k\tall CPU ms/1k\tref CPU ms/1k\tpeak RSS MB\tlost\t")
	for _, r := range rep.Scenarios {
		rate := "max"
		if r.Rate > 0 {
			rate = fmt.Sprintf("%.0f", r.Rate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.0f\t%.0f\t%.0f\t%.2f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t\n",
			r.Scenario, r.Ingest, r.Recipients, rate, r.HubEventsPerS, r.HubDeliveriesPerS, r.ReferenceDeliveriesPerS, r.Ratio,
			r.P50Ms, r.P90Ms, r.P99Ms, r.MaxMs, r.ReferenceP99Ms, r.CPUSeconds, r.CPUMsPer1k, r.TotalCPUMsPer1k, r.ReferenceCPUMsPer1k,
			mb(r.PeakRSSBytes), r.Lost)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rep.Scenarios {
		if b := r.Backlog; b != nil {
			fmt.Fprintf(w, "\nbacklog/%s: %d events queued in %.1fs; back after %.1fs; drained in %.1fs: hub %.0f/s, reference %.0f/s; others' p99 while down %.1f ms\n",
				r.Ingest, b.Events, b.QueueS, b.ResumeS, b.DrainS, b.HubDrainPerS, b.ReferenceDrainPerS, b.OthersP99WhileDownMs)
		}
	}
	if len(rep.Targets) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "target\trow\twant\tgot\tmet\t")
		for _, t := range rep.Targets {
			met := "yes"
			if !t.Met {
				met = "NO"
			}
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\t\n", t.Name, t.Scenario, t.Ingest, t.Want, t.Got, met)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	var notes []string
	for _, r := range rep.Scenarios {
		for _, n := range r.Notes {
			notes = append(notes, fmt.Sprintf("%s/%s: %s", r.Scenario, r.Ingest, n))
		}
		if r.ReferenceError != "" {
			notes = append(notes, fmt.Sprintf("%s/%s: reference: %s", r.Scenario, r.Ingest, r.ReferenceError))
		}
		if r.Refused+r.Duplicates+r.Misrouted+r.BadSignatures > 0 {
			notes = append(notes, fmt.Sprintf("%s/%s: refused %d, duplicates %d, misrouted %d, bad signatures %d",
				r.Scenario, r.Ingest, r.Refused, r.Duplicates, r.Misrouted, r.BadSignatures))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nnotes:\n  %s\n", strings.Join(notes, "\n  "))
	}
	if len(rep.Scenarios) > 0 {
		fmt.Fprintf(w, "\nhub process: %s; %d CPUs, %s %s/%s\n", rep.Scenarios[0].HubProcess, rep.CPUs, rep.GoVersion, rep.OS, rep.Arch)
	}
	return nil
}
