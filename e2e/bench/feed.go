package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/media"
	"github.com/segmentio/kafka-go"
)

// FeedResult details a feed row (scenarios feed and longpoll): clients
// reading pull recipients' feeds over GET /v1/feeds/<ODS>, each with its
// recipient's own key. The row's deliveries per second and latencies are the
// live phase's: events received by the clients while the hub routed them,
// from the 202 to the client holding the answer. Then the same clients read
// their whole feeds again from number 0 as fast as they can (Read*), and
// kafka-go reads the same feed topics directly (Raw*, the reference):
// the row's ratio is ReadEventsPerS / RawEventsPerS.
type FeedResult struct {
	Clients int     `json:"clients"` // one per feed, each on its own recipient's feed
	Limit   int     `json:"limit"`   // the page limit every request asks for
	WaitS   float64 `json:"wait_s"`  // the long-poll wait every live request asks for

	// A second live phase, publishing as fast as possible, follows one at
	// a fixed rate (the longpoll scenario): the rate the clients were
	// served at, the latency then (mostly queueing: see max-in-flight),
	// and the CPU per 1,000 events received (hub; hub and bench).
	MaxEventsPerS      float64 `json:"max_events_per_s,omitempty"`
	MaxDeliveries      int64   `json:"max_deliveries,omitempty"`
	MaxP50Ms           float64 `json:"max_p50_ms,omitempty"`
	MaxP99Ms           float64 `json:"max_p99_ms,omitempty"`
	MaxCPUMsPer1k      float64 `json:"max_cpu_ms_per_1k_events,omitempty"`
	MaxTotalCPUMsPer1k float64 `json:"max_total_cpu_ms_per_1k_events,omitempty"`

	// The live phases.
	Polls      int64 `json:"polls"`       // requests answered 200
	EmptyPolls int64 `json:"empty_polls"` // of those, answered empty when the wait ended
	Errors     int64 `json:"errors"`      // requests that failed (retried after 100 ms)
	// Over both phases: numbers that were not the one after the last (a gap
	// or a number seen again: both are defects), and withheld entries.
	Gaps     int64 `json:"gaps"`
	Repeats  int64 `json:"repeats"`
	Withheld int64 `json:"withheld"`

	// The hub's peak RSS (VmHWM) once the live phases were over, before
	// the read from the start; the row's peak_rss_bytes includes the read.
	LivePeakRSSBytes int64 `json:"live_peak_rss_bytes"`

	// Reading every feed from the start, every client at once, no wait.
	ReadEvents     int64   `json:"read_events"`
	ReadS          float64 `json:"read_s"`
	ReadEventsPerS float64 `json:"read_events_per_s"`
	// Hub and bench process CPU while reading, per 1,000 events read.
	ReadCPUMsPer1k float64 `json:"read_cpu_ms_per_1k_events"`
	ReadError      string  `json:"read_error,omitempty"`

	// kafka-go reading the same feed topics from their first offset, one
	// Reader per topic, all at once: the raw broker consume rate.
	RawEvents     int64   `json:"raw_events"`
	RawS          float64 `json:"raw_s"`
	RawEventsPerS float64 `json:"raw_events_per_s"`
	// Hub (broker) and bench process CPU while consuming raw, per 1,000.
	RawCPUMsPer1k float64 `json:"raw_cpu_ms_per_1k_events"`
}

// feedClients read pull recipients' feeds as a GP system does: each client
// asks for the events after the number it has (GET
// /v1/feeds/<ODS>?after=N&limit=L&wait=W, its recipient's own key) and, as
// soon as it is answered, asks again after the last number it got. One
// client per pull recipient. Each event received is recorded in the current
// phase's tracker (receipt is the moment the client has decoded the
// answer), and every number is checked: it must be the one after the last.
type feedClients struct {
	base    string
	pop     *Population
	feeds   []int // recipient indexes: client i reads feed feeds[i]
	limit   int
	wait    time.Duration
	client  *http.Client
	current atomic.Pointer[tracker]
	after   []atomic.Int64 // per client, the last number it has

	polls, empty, errs      atomic.Int64
	gaps, repeats, withheld atomic.Int64
	firstErr                atomic.Pointer[string]
	cancel                  context.CancelFunc
	wg                      sync.WaitGroup
	stopOnce                sync.Once
}

func newFeedClients(httpAddr string, pop *Population, limit int, wait time.Duration) *feedClients {
	c := &feedClients{base: "http://" + httpAddr + "/v1/feeds/", pop: pop, limit: limit, wait: wait}
	for i, rc := range pop.Recipients {
		if rc.Pull {
			c.feeds = append(c.feeds, i)
		}
	}
	c.after = make([]atomic.Int64, len(c.feeds))
	n := len(c.feeds) + 16
	c.client = &http.Client{Timeout: wait + time.Minute, Transport: &http.Transport{
		MaxIdleConns: n, MaxIdleConnsPerHost: n, IdleConnTimeout: 90 * time.Second, DisableCompression: true}}
	return c
}

// start runs every client's live loop until stop.
func (c *feedClients) start(ctx context.Context) {
	ctx, c.cancel = context.WithCancel(ctx)
	for i := range c.feeds {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.live(ctx, i)
		}()
	}
}

// stop ends the live loops (a waiting long-poll is abandoned).
func (c *feedClients) stop() {
	c.stopOnce.Do(func() {
		if c.cancel != nil {
			c.cancel()
		}
		c.wg.Wait()
		c.client.CloseIdleConnections()
	})
}

// feedAnswer is the JSON form of a feed page, as much of it as a client needs.
type feedAnswer struct {
	Events []struct {
		Number   int64 `json:"number"`
		Withheld bool  `json:"withheld"`
		Event    struct {
			ID string `json:"id"`
		} `json:"event"`
	} `json:"events"`
	Latest int64 `json:"latest"`
}

// get asks recipient r's feed for the events after after.
func (c *feedClients) get(ctx context.Context, r int, after int64, wait time.Duration) (*feedAnswer, error) {
	rc := &c.pop.Recipients[r]
	u := c.base + rc.ODS + "?after=" + strconv.FormatInt(after, 10) + "&limit=" + strconv.Itoa(c.limit)
	if wait > 0 {
		u += "&wait=" + wait.String()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+rc.FeedKey)
	req.Header.Set("Accept", media.JSON)
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return nil, fmt.Errorf("GET /v1/feeds/%s answered %d: %s", rc.ODS, resp.StatusCode, b)
	}
	var a feedAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return nil, fmt.Errorf("decoding the feed of %s: %w", rc.ODS, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return &a, nil
}

// take checks a page's numbers against after, the last number the client
// had, reports each event it holds to got, and returns the new last number
// and how many entries were new (a repeated number is not).
func (c *feedClients) take(a *feedAnswer, after int64, got func(id string)) (int64, int64) {
	var n int64
	for _, e := range a.Events {
		switch {
		case e.Number <= after:
			c.repeats.Add(1)
			continue
		case e.Number > after+1:
			c.gaps.Add(e.Number - after - 1)
		}
		after = e.Number
		n++
		if e.Withheld {
			c.withheld.Add(1)
			continue
		}
		if got != nil {
			got(e.Event.ID)
		}
	}
	return after, n
}

func (c *feedClients) live(ctx context.Context, i int) {
	r := c.feeds[i]
	for ctx.Err() == nil {
		after := c.after[i].Load()
		a, err := c.get(ctx, r, after, c.wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.errs.Add(1)
			c.note(err)
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		c.polls.Add(1)
		if len(a.Events) == 0 {
			c.empty.Add(1)
			continue
		}
		t := c.current.Load()
		after, _ = c.take(a, after, func(id string) {
			if t != nil {
				t.markDelivered(id, r)
			}
		})
		c.after[i].Store(after)
	}
}

// readAll has every client read its whole feed again, from number 0 to the
// latest number its first answer gives, as fast as it can (no wait), all
// clients at once. It returns the events read, the time from the first
// request to the last answer, and each feed's latest number.
func (c *feedClients) readAll(ctx context.Context) (int64, time.Duration, []int64, error) {
	var total atomic.Int64
	latest := make([]int64, len(c.feeds))
	errs := make([]error, len(c.feeds))
	var wg sync.WaitGroup
	start := time.Now()
	for i, r := range c.feeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			after, target := int64(0), int64(-1)
			for target < 0 || after < target {
				a, err := c.get(ctx, r, after, 0)
				if err != nil {
					errs[i] = err
					return
				}
				if target < 0 {
					target = a.Latest
				}
				if len(a.Events) == 0 {
					if after < target {
						errs[i] = fmt.Errorf("the feed of %s answered nothing after %d of %d", c.pop.Recipients[r].ODS, after, target)
					}
					break
				}
				var n int64
				after, n = c.take(a, after, nil)
				total.Add(n)
			}
			latest[i] = target
		}()
	}
	wg.Wait()
	return total.Load(), time.Since(start), latest, errors.Join(errs...)
}

func (c *feedClients) note(err error) {
	s := err.Error()
	c.firstErr.CompareAndSwap(nil, &s)
}

func (c *feedClients) problem() string {
	if p := c.firstErr.Load(); p != nil {
		return *p
	}
	return ""
}

// fill copies the clients' counters into f.
func (c *feedClients) fill(f *FeedResult) {
	f.Polls, f.EmptyPolls, f.Errors = c.polls.Load(), c.empty.Load(), c.errs.Load()
	f.Gaps, f.Repeats, f.Withheld = c.gaps.Load(), c.repeats.Load(), c.withheld.Load()
}

// rawConsume reads the feed topics of recipients directly with kafka-go, one
// Reader per topic on its one partition from the first offset, all at once
// (as the clients read their feeds), until topic i has given counts[i]
// records: the broker's own rate for the same records, with no HTTP,
// authentication, consent re-check, audit or JSON. Nothing is committed.
func rawConsume(ctx context.Context, brokers []string, pop *Population, recipients []int, counts []int64) (int64, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var total atomic.Int64
	errs := make([]error, len(recipients))
	var wg sync.WaitGroup
	start := time.Now()
	for i, r := range recipients {
		if counts[i] <= 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic.Feed(pop.Recipients[r].ODS), Partition: 0,
				MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond, StartOffset: kafka.FirstOffset})
			defer rd.Close()
			for n := int64(0); n < counts[i]; {
				m, err := rd.ReadMessage(ctx)
				if err != nil {
					errs[i] = fmt.Errorf("consuming %s: %w", topic.Feed(pop.Recipients[r].ODS), err)
					return
				}
				n++
				total.Add(1)
				if m.Offset+1 >= counts[i] {
					return
				}
			}
		}()
	}
	wg.Wait()
	return total.Load(), time.Since(start), errors.Join(errs...)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
