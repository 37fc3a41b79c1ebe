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
	// TargetLongPollMs: issue 12 asks that a long-poll be answered within
	// 100 ms of the event's routing; the bench measures from the 202,
	// before routing, so the target it checks is the stricter one.
	TargetLongPollMs = 100.0
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
		case Longpoll:
			add(r, "p99 accepted to long-poll answered", fmt.Sprintf("<= %.0f ms at %.0f/s, %d clients", TargetLongPollMs, r.Rate, r.Recipients),
				fmt.Sprintf("%.1f ms", r.P99Ms), r.P99Ms <= TargetLongPollMs)
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
		if f := r.Feed; f != nil {
			who := fmt.Sprintf("%d clients, each on its own feed", f.Clients)
			if f.Clients == 1 {
				who = "1 client on its feed"
			}
			rate := "as fast as possible"
			if r.Rate > 0 {
				rate = fmt.Sprintf("at %.0f/s", r.Rate)
			}
			fmt.Fprintf(w, "\n%s/%s: %s (pages of up to %d, wait %.0fs; %d polls, %d empty).\n", r.Scenario, r.Ingest, who, f.Limit, f.WaitS, f.Polls, f.EmptyPolls)
			fmt.Fprintf(w, "  live, publishing %s: %.0f events/s received, 202 to receipt p50 %.1f ms, p99 %.1f ms\n", rate, r.HubDeliveriesPerS, r.P50Ms, r.P99Ms)
			if f.MaxDeliveries > 0 {
				fmt.Fprintf(w, "  live, as fast as possible: %.0f events/s received, p50 %.1f ms, p99 %.1f ms; hub CPU %.0f ms/1k, with the bench's %.0f\n",
					f.MaxEventsPerS, f.MaxP50Ms, f.MaxP99Ms, f.MaxCPUMsPer1k, f.MaxTotalCPUMsPer1k)
			}
			fmt.Fprintf(w, "  every feed read again from 0: %d events in %.2fs, %.0f/s (hub and bench CPU %.0f ms/1k); kafka-go consuming the same topics raw: %.0f/s (%.0f ms/1k); feed / raw %.2f\n",
				f.ReadEvents, f.ReadS, f.ReadEventsPerS, f.ReadCPUMsPer1k, f.RawEventsPerS, f.RawCPUMsPer1k, r.Ratio)
			fmt.Fprintf(w, "  hub peak RSS %.0f MB after the live phases, %.0f MB after the read; numbers missing %d, repeated %d; withheld %d\n",
				mb(f.LivePeakRSSBytes), mb(r.PeakRSSBytes), f.Gaps, f.Repeats, f.Withheld)
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
		if r.Feed != nil && r.Feed.ReadError != "" {
			notes = append(notes, fmt.Sprintf("%s/%s: reading the feeds from the start: %s", r.Scenario, r.Ingest, r.Feed.ReadError))
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
