package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/internal/logging"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// KafkaConfig configures the collector WatchKafka registers.
type KafkaConfig struct {
	Brokers []string
	// Timeout bounds the look-ups of one scrape (default 5 s). A scrape
	// that times out exports carehub_kafka_up 0 and no backlog series.
	Timeout time.Duration
	// MinInterval: a scrape within it of the last look-up is answered from
	// it (default 1 s), so that several scrapers cost one look-up.
	MinInterval time.Duration
	// MaxDeadLetterBytes bounds what one scrape reads of carehub.dlq to
	// catch up with it (default 64 MiB); the rest is read by the next.
	MaxDeadLetterBytes int64
	// Parallel bounds the look-ups in flight (default 8).
	Parallel int
	Log      *zap.Logger
	// Now is the clock ages are measured by (time.Now when nil).
	Now func() time.Time
}

// Series read from Kafka.
var (
	kafkaUpDesc = prometheus.NewDesc("carehub_kafka_up",
		"1 when this scrape read the offsets it needs from Kafka, else 0 (and the backlog, lag and dead-letter series are absent).", nil, nil)
	backlogDesc = prometheus.NewDesc("carehub_recipient_backlog_events",
		"Copies in a recipient's outbox not yet delivered (or withheld, or dead-lettered): its deliverers' consumer lag, for the whole cluster.", []string{"recipient"}, nil)
	backlogAgeDesc = prometheus.NewDesc("carehub_recipient_backlog_age_seconds",
		"How long the oldest copy not yet delivered has been in the recipient's outbox; 0 when there is none.", []string{"recipient"}, nil)
	lagDesc = prometheus.NewDesc("carehub_consumer_lag_events",
		"Records of a topic a consumer group has not committed yet (the router on carehub.events), for the whole cluster.", []string{"group", "topic"}, nil)
	lagAgeDesc = prometheus.NewDesc("carehub_consumer_lag_age_seconds",
		"How long the oldest record a consumer group has not committed has been in its topic; 0 when there is none.", []string{"group", "topic"}, nil)
	deadOpenDesc = prometheus.NewDesc("carehub_dead_letters_open",
		"Dead letters of a recipient not yet replayed or resolved (carehub.dlq).", []string{"recipient"}, nil)
)

// WatchKafka registers the collector of backlogs, lag and dead letters.
func (m *Metrics) WatchKafka(cfg KafkaConfig) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = time.Second
	}
	if cfg.MaxDeadLetterBytes <= 0 {
		cfg.MaxDeadLetterBytes = 64 << 20
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 8
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m.reg.MustRegister(&kafkaCollector{cfg: cfg, m: m, dlq: map[int]*dlqPartition{}})
}

// kafkaCollector answers each scrape from Kafka. mu serialises look-ups
// and guards last, dlq and client.
type kafkaCollector struct {
	cfg KafkaConfig
	m   *Metrics

	mu     sync.Mutex
	last   *kafkaSnapshot
	dlq    map[int]*dlqPartition // what has been read of carehub.dlq, by partition
	client *kafka.Client         // of the look-up in progress
}

// dlqPartition is what has been read of one partition of carehub.dlq:
// the next offset to read, and the recipient of each open dead letter by
// its offset.
type dlqPartition struct {
	next int64
	open map[int64]string
}

// kafkaSnapshot is the answer of one look-up.
type kafkaSnapshot struct {
	at       time.Time
	err      error
	backlogs map[string]lag // by recipient label
	router   lag
	deadOpen map[string]int // by recipient label
}

// lag is how far a consumer group is behind on a topic.
type lag struct {
	events int64
	oldest time.Time // zero when events is 0 (or its time is unknown)
}

func (l *lag) add(o lag) {
	l.events += o.events
	if !o.oldest.IsZero() && (l.oldest.IsZero() || o.oldest.Before(l.oldest)) {
		l.oldest = o.oldest
	}
}

func (l lag) age(now time.Time) float64 {
	if l.events == 0 || l.oldest.IsZero() {
		return 0
	}
	return max(now.Sub(l.oldest).Seconds(), 0)
}

func (c *kafkaCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{kafkaUpDesc, backlogDesc, backlogAgeDesc, lagDesc, lagAgeDesc, deadOpenDesc} {
		ch <- d
	}
}

func (c *kafkaCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	if s.err != nil {
		ch <- prometheus.MustNewConstMetric(kafkaUpDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(kafkaUpDesc, prometheus.GaugeValue, 1)
	now := c.cfg.Now()
	for r, l := range s.backlogs {
		ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(l.events), r)
		ch <- prometheus.MustNewConstMetric(backlogAgeDesc, prometheus.GaugeValue, l.age(now), r)
	}
	ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, float64(s.router.events), topic.GroupRouter, topic.Events)
	ch <- prometheus.MustNewConstMetric(lagAgeDesc, prometheus.GaugeValue, s.router.age(now), topic.GroupRouter, topic.Events)
	for r, n := range s.deadOpen {
		ch <- prometheus.MustNewConstMetric(deadOpenDesc, prometheus.GaugeValue, float64(n), r)
	}
}

// snapshot returns the last look-up if it is recent, else looks up again.
func (c *kafkaCollector) snapshot() *kafkaSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.last != nil && now.Sub(c.last.at) < c.cfg.MinInterval {
		return c.last
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	// A client of its own for each look-up: no metadata cached since the
	// last hides an outbox created a moment ago.
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c.client = &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Timeout: c.cfg.Timeout, Transport: tr}
	s, err := c.lookUp(ctx)
	if err != nil {
		c.cfg.Log.Warn("metrics: Kafka offsets not read", logging.Err(err))
		s = &kafkaSnapshot{err: err}
	}
	s.at = now
	c.last = s
	return s
}

// lookUp reads every offset the series need.
func (c *kafkaCollector) lookUp(ctx context.Context) (*kafkaSnapshot, error) {
	md, err := c.client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		return nil, fmt.Errorf("reading topic metadata: %w", err)
	}
	parts := map[string][]int{}
	for _, t := range md.Topics {
		if t.Error != nil || t.Internal {
			continue
		}
		if t.Name == topic.Events || t.Name == topic.DLQ || strings.HasPrefix(t.Name, topic.Outbox("")) {
			for _, p := range t.Partitions {
				parts[t.Name] = append(parts[t.Name], p.ID)
			}
		}
	}
	if len(parts[topic.Events]) == 0 {
		return nil, errors.New("no metadata for " + topic.Events)
	}
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for name, ps := range parts {
		sort.Ints(ps)
		for _, p := range ps {
			req.Topics[name] = append(req.Topics[name], kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
		}
	}
	offs, err := c.client.ListOffsets(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("listing offsets: %w", err)
	}
	first, end := map[string]map[int]int64{}, map[string]map[int]int64{}
	for name, ps := range offs.Topics {
		first[name], end[name] = map[int]int64{}, map[int]int64{}
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("listing offsets of %s: %w", name, p.Error)
			}
			first[name][p.Partition], end[name][p.Partition] = p.FirstOffset, p.LastOffset
		}
	}

	// One consumer group per topic: the router's on carehub.events, each
	// recipient's deliverers' on its outbox.
	type job struct {
		group, topic, recipient string
	}
	jobs := []job{{group: topic.GroupRouter, topic: topic.Events}}
	for name := range parts {
		if ods, ok := strings.CutPrefix(name, topic.Outbox("")); ok && ods != "" {
			jobs = append(jobs, job{group: topic.DeliverGroup(ods), topic: name, recipient: c.m.org(strings.ToUpper(ods))})
		}
	}
	s := &kafkaSnapshot{backlogs: map[string]lag{}, deadOpen: map[string]int{}}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, c.cfg.Parallel)
	)
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			l, err := c.groupLag(ctx, j.group, j.topic, parts[j.topic], first[j.topic], end[j.topic])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if j.recipient == "" {
				s.router = l
				return
			}
			b := s.backlogs[j.recipient]
			b.add(l)
			s.backlogs[j.recipient] = b
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for r := range s.backlogs {
		s.deadOpen[r] = 0
	}
	if err := c.readDeadLetters(ctx, parts[topic.DLQ], first[topic.DLQ], end[topic.DLQ], s.deadOpen); err != nil {
		return nil, err
	}
	return s, nil
}

// groupLag sums how far group is behind on the partitions of name, and
// finds the time of the oldest record it has not committed.
func (c *kafkaCollector) groupLag(ctx context.Context, group, name string, parts []int, first, end map[int]int64) (lag, error) {
	res, err := c.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{name: parts}})
	if err == nil {
		err = res.Error
	}
	// A group that never committed: the embedded broker says it does not
	// exist, Kafka answers no offsets.
	if err != nil && !errors.Is(err, kafka.GroupIdNotFound) {
		return lag{}, fmt.Errorf("reading the committed offsets of %s: %w", group, err)
	}
	committed := map[int]int64{}
	for _, p := range res.Topics[name] {
		if p.Error == nil && p.CommittedOffset >= 0 {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	var out lag
	for _, p := range parts {
		// A group with no commit on a partition starts at its first
		// record (kafkawm's initial offset); one behind the log start
		// resumes at it.
		pos := max(committed[p], first[p])
		n := end[p] - pos
		if n <= 0 {
			continue
		}
		at, err := c.timeAt(ctx, name, p, pos)
		if err != nil {
			return lag{}, err
		}
		out.add(lag{events: n, oldest: at})
	}
	return out, nil
}

// timeAt returns the time of the record at offset (its produce time), or
// zero if there is none there.
func (c *kafkaCollector) timeAt(ctx context.Context, name string, partition int, offset int64) (time.Time, error) {
	res, err := c.client.Fetch(ctx, &kafka.FetchRequest{Topic: name, Partition: partition, Offset: offset,
		MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	if err != nil {
		return time.Time{}, fmt.Errorf("reading %s/%d: %w", name, partition, err)
	}
	if res.Error != nil {
		return time.Time{}, fmt.Errorf("reading %s/%d: %w", name, partition, res.Error)
	}
	for {
		r, err := res.Records.ReadRecord()
		if err != nil {
			return time.Time{}, nil // nothing there (deleted since, or not readable): no age
		}
		if r.Offset >= offset {
			return r.Time, nil
		}
	}
}

// readDeadLetters catches up with carehub.dlq from where the last scrape
// left it, and counts the open dead letters by recipient into open.
func (c *kafkaCollector) readDeadLetters(ctx context.Context, parts []int, first, end map[int]int64, open map[string]int) error {
	budget := c.cfg.MaxDeadLetterBytes
	for _, p := range parts {
		st := c.dlq[p]
		if st == nil {
			st = &dlqPartition{open: map[int64]string{}}
			c.dlq[p] = st
		}
		if st.next < first[p] {
			st.next = first[p]
			for off := range st.open {
				if off < first[p] {
					delete(st.open, off)
				}
			}
		}
		for st.next < end[p] && budget > 0 {
			n, err := c.readDeadLetterBatch(ctx, p, st, min(budget, 8<<20))
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
			budget -= n
		}
		// A dead letter names its recipient in its content: it counts
		// under that name only for a recipient with an outbox.
		for _, r := range st.open {
			if _, ok := open[r]; ok {
				open[r]++
			} else {
				open[Other]++
			}
		}
	}
	return nil
}

// readDeadLetterBatch reads one fetch of partition p from st.next and
// returns the bytes it read.
func (c *kafkaCollector) readDeadLetterBatch(ctx context.Context, p int, st *dlqPartition, maxBytes int64) (int64, error) {
	res, err := c.client.Fetch(ctx, &kafka.FetchRequest{Topic: topic.DLQ, Partition: p, Offset: st.next,
		MinBytes: 1, MaxBytes: maxBytes, MaxWait: 100 * time.Millisecond})
	if err != nil {
		return 0, fmt.Errorf("reading %s/%d: %w", topic.DLQ, p, err)
	}
	if res.Error != nil {
		return 0, fmt.Errorf("reading %s/%d: %w", topic.DLQ, p, res.Error)
	}
	var read int64
	for {
		r, err := res.Records.ReadRecord()
		if err != nil {
			return read, nil
		}
		if r.Offset < st.next {
			continue
		}
		var value []byte
		if r.Value != nil {
			value, err = io.ReadAll(r.Value)
			if err != nil {
				return read, nil
			}
		}
		read += int64(len(value)) + 1
		st.next = r.Offset + 1
		var dl audit.DeadLetter
		if json.Unmarshal(value, &dl) != nil {
			continue
		}
		if dl.Resolution != nil {
			delete(st.open, dl.Resolution.Offset)
			continue
		}
		st.open[r.Offset] = dl.Recipient
	}
}
