// Package backfill re-routes past events for one recipient: a recipient
// subscribed today receives, through consent as of now, the events it
// would have received since a date, and nothing it was already sent.
//
// # A job
//
// A backfill is a Job, recorded in the compacted topic carehub.backfills
// (keyed by its id; every change of the job is a new record): the
// recipient, the date, who started it, the range of carehub.events it
// covers and how far it got. The range is fixed when the job is created:
// per partition of carehub.events, from the first event accepted at or
// after Since to the end of the topic at that moment, once the router has
// committed that far (Create waits up to RouterWait for it). Every event
// in the range was routed live before the job existed; every event after
// it is routed live by the router with the subscriptions as they are then,
// so the new recipient gets it that way, and nothing is decided twice.
// (Taking the router's committed offset as it stood would leave out an
// event the router had routed, with the subscriptions before, but not yet
// committed: the new recipient would never get it.)
//
// # Running, interrupting, resuming
//
// Run reads the range partition by partition, in offset order (one
// patient's events are in one partition, so they reach the recipient's
// outbox in the order they were accepted), decides each event for the
// recipient alone (route.Router.Backfill: the code live routing uses, the
// directives as they are now), publishes the copy with its audit and
// patient index records, and commits the job's position (the next offset
// of each partition) to carehub.backfills at least every CommitEvery
// events and every CommitInterval. A run stops when its context ends (the
// operator closed the request, the hub drains) and records the job as
// interrupted; running it again, from any hub process, starts at the
// committed position. A process that dies keeps its claim on the job
// (Job.Runner) until Lease passes without a heartbeat; then any process
// resumes it.
//
// # Never twice
//
// Before it reads an event, a run collects from carehub.audit (from Since)
// every copy and withheld notice the recipient was sent: decision records
// with a copy for it, written by live routing or by an earlier run. An
// event it was sent is skipped (AlreadyReceived), and so is an event the
// router did not route because its publisher was never told it was
// accepted (audit flag not-acknowledged; NotAcknowledged). So an event
// routed live after the recipient subscribed, and an event copied by a run that died
// before committing its position, are not sent again. The audit is the
// record of what each recipient was sent, kept for years; the outbox is
// emptied after delivery, and the patient index remembers encounters, not
// events.
//
// # Limits
//
// A backfilled event reaches the recipient after the live events already
// in its outbox: a patient's older event may arrive after a newer one that
// was routed live (each copy carries its CloudEvents time). Two runs of one
// job at the same moment are refused in one process and, across
// processes, by the claim; two claims read at the same instant can both
// win, and then the audit check still keeps most copies single (copies
// are at least once, as every delivery is: the webhook-id is the same).
package backfill

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/route"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// States of a job.
const (
	Pending     = "pending"     // created, never run
	Running     = "running"     // a process is running it (Runner)
	Interrupted = "interrupted" // stopped before the end of its range: run it again to resume
	Done        = "done"
)

// Timing of a run.
const (
	CommitEvery    = 100
	CommitInterval = time.Second
	// Lease is how long a claim on a job holds without a heartbeat.
	Lease = 30 * time.Second
	// AuditMargin is read from the audit before Since, for the clocks of
	// the processes that wrote it.
	AuditMargin = time.Hour
)

// Job is a backfill and how far it got.
type Job struct {
	ID        string    `json:"id"`
	Recipient string    `json:"recipient"`
	Since     time.Time `json:"since"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"createdBy"`
	State     string    `json:"state"`
	// Start and End are the range of carehub.events, per partition:
	// [Start, End). Position is the next offset to read.
	Start    map[int]int64 `json:"start"`
	End      map[int]int64 `json:"end"`
	Position map[int]int64 `json:"position"`
	// Total is how many events the range holds; Read how many were read.
	Total  int64  `json:"total"`
	Read   int64  `json:"read"`
	Counts Counts `json:"counts"`
	// Runner is the process running the job, and Heartbeat when it last
	// said so; empty when none is.
	Runner    string    `json:"runner,omitempty"`
	Heartbeat time.Time `json:"heartbeat,omitzero"`
	Updated   time.Time `json:"updated"`
	// Error is why the last run stopped, when it failed (a public text).
	Error string `json:"error,omitempty"`
}

// Counts are what a job did with the events it read.
type Counts struct {
	Sent            int64 `json:"sent"`
	Withheld        int64 `json:"withheld"`
	AlreadyReceived int64 `json:"alreadyReceived"`
	NotForRecipient int64 `json:"notForRecipient"`
	// NotAcknowledged: events the router did not route because their
	// publisher was told they were not accepted (audit flag
	// not-acknowledged); a backfill skips them too.
	NotAcknowledged int64 `json:"notAcknowledged"`
}

func (j *Job) count(outcome string) {
	switch outcome {
	case route.BackfillSent:
		j.Counts.Sent++
	case route.BackfillWithheld:
		j.Counts.Withheld++
	case route.BackfillAlreadyReceived:
		j.Counts.AlreadyReceived++
	default:
		j.Counts.NotForRecipient++
	}
}

// Router decides a past event for one recipient (route.Router).
type Router interface {
	HasRecipient(ods string) bool
	Backfill(ctx context.Context, msg *message.Message, ods, actor string, received route.Received) (*route.Plan, string, error)
	PublishPlan(plan *route.Plan) error
}

// Config is what a Runner is built from.
type Config struct {
	Brokers   []string
	Router    Router
	Publisher message.Publisher
	Log       *zap.Logger
	Now       func() time.Time
	// RouterWait bounds how long Create waits for the router to commit
	// every event accepted before the job (DefaultRouterWait when zero).
	RouterWait time.Duration
}

// DefaultRouterWait is Config.RouterWait's default.
const DefaultRouterWait = 30 * time.Second

// Runner creates and runs jobs.
type Runner struct {
	cfg  Config
	self string // this process, as a claim names it

	mu      sync.Mutex
	running map[string]context.CancelFunc
	drained bool
}

// New builds a Runner.
func New(cfg Config) (*Runner, error) {
	if len(cfg.Brokers) == 0 || cfg.Router == nil || cfg.Publisher == nil || cfg.Log == nil {
		return nil, errors.New("backfill: brokers, router, publisher and logger are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RouterWait <= 0 {
		cfg.RouterWait = DefaultRouterWait
	}
	host, _ := os.Hostname()
	return &Runner{cfg: cfg, self: host + ":" + strconv.Itoa(os.Getpid()) + ":" + randomID()[:8], running: map[string]context.CancelFunc{}}, nil
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Drain stops every run of this process (the hub is stopping): each
// records its job as interrupted.
func (r *Runner) Drain() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drained = true
	for _, cancel := range r.running {
		cancel()
	}
}

// Jobs returns every job, newest first.
func (r *Runner) Jobs(ctx context.Context) ([]Job, error) {
	byID, err := r.read(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Job, 0, len(byID))
	for _, j := range byID {
		out = append(out, j)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Created.After(out[k].Created) })
	return out, nil
}

// Job returns one job.
func (r *Runner) Job(ctx context.Context, id string) (Job, error) {
	byID, err := r.read(ctx)
	if err != nil {
		return Job{}, err
	}
	j, ok := byID[id]
	if !ok {
		return Job{}, problem.New(problem.NotFound, "no backfill with that id")
	}
	return j, nil
}

// Create returns the unfinished job of recipient from since, if there is
// one (created false), else a new job whose range runs from the first
// event accepted at or after since to the router's committed position.
func (r *Runner) Create(ctx context.Context, recipient string, since time.Time, actor string) (Job, bool, error) {
	if !r.cfg.Router.HasRecipient(recipient) {
		return Job{}, false, problem.Violated("/recipient", "recipient-unknown", "the hub routes nothing to this recipient: subscribe it first")
	}
	since = since.UTC()
	if since.After(r.cfg.Now()) {
		return Job{}, false, problem.Violated("/since", "since-future", "since is in the future")
	}
	jobs, err := r.Jobs(ctx)
	if err != nil {
		return Job{}, false, err
	}
	for _, j := range jobs {
		if j.Recipient == recipient && j.Since.Equal(since) && j.State != Done {
			return j, false, nil
		}
	}
	start, err := offsetsAt(ctx, r.cfg.Brokers, topic.Events, since)
	if err != nil {
		return Job{}, false, problem.Wrap(problem.Unavailable, "finding the events since that date; retry", err)
	}
	parts := make([]int, 0, len(start))
	for p := range start {
		parts = append(parts, p)
	}
	ends, err := r.routedToEnd(ctx, parts)
	if err != nil {
		return Job{}, false, err
	}
	now := r.cfg.Now().UTC()
	j := Job{ID: "bf-" + randomID()[:16], Recipient: recipient, Since: since, Created: now, CreatedBy: actor, State: Pending,
		Start: map[int]int64{}, End: map[int]int64{}, Position: map[int]int64{}, Updated: now}
	for p, s := range start {
		e := max(ends[p], s)
		j.Start[p], j.End[p], j.Position[p] = s, e, s
		j.Total += e - s
	}
	if err := r.write(j); err != nil {
		return Job{}, false, err
	}
	r.cfg.Log.Info("backfill created", zap.String("job", j.ID), zap.String("recipient", recipient), zap.Int64("events", j.Total),
		zap.String("operator", actor))
	return j, true, nil
}

// routedToEnd returns the end of carehub.events now, once the router has
// committed every event before it: each of them was routed with the
// subscriptions as they were before the job. A router that does not get
// there within RouterWait is answered Unavailable.
func (r *Runner) routedToEnd(ctx context.Context, parts []int) (map[int]int64, error) {
	_, ends, err := broker.Offsets(ctx, r.cfg.Brokers, topic.Events)
	if err != nil {
		return nil, problem.Wrap(problem.Unavailable, "reading the end of carehub.events; retry", err)
	}
	deadline := time.Now().Add(r.cfg.RouterWait)
	for {
		routed, err := broker.Committed(ctx, r.cfg.Brokers, topic.GroupRouter, topic.Events, parts)
		if err != nil {
			return nil, problem.Wrap(problem.Unavailable, "reading the router's position; retry", err)
		}
		behind := int64(0)
		for _, p := range parts {
			behind += max(ends[p]-routed[p], 0)
		}
		if behind == 0 {
			return ends, nil
		}
		if time.Now().After(deadline) {
			return nil, problem.New(problem.Unavailable, "the router is "+strconv.FormatInt(behind, 10)+
				" events behind: a backfill starts once it has routed every event accepted before it; retry")
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, problem.Wrap(problem.Unavailable, "waiting for the router; retry", ctx.Err())
		case <-t.C:
		}
	}
}

// Options of a run.
type Options struct {
	// Rate, when positive, bounds the events read a second (so as not to
	// flood the recipient).
	Rate float64
	// Progress, when set, is told the job after every commit of its
	// position, and last when the run stops.
	Progress func(Job)
}

// Run runs a job from its committed position to the end of its range, or
// until ctx ends (then the job is interrupted, to be resumed by running
// it again). It returns the job as it stands.
func (r *Runner) Run(ctx context.Context, id, actor string, o Options) (Job, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	if r.drained {
		r.mu.Unlock()
		return Job{}, problem.New(problem.Unavailable, "the hub is stopping; run the backfill again on another process or after the restart")
	}
	if _, busy := r.running[id]; busy {
		r.mu.Unlock()
		return Job{}, problem.New(problem.Conflict, "this backfill is running already")
	}
	r.running[id] = cancel
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.running, id)
		r.mu.Unlock()
	}()

	j, err := r.Job(ctx, id)
	if err != nil {
		return Job{}, err
	}
	now := r.cfg.Now().UTC()
	switch {
	case j.State == Done:
		if o.Progress != nil {
			o.Progress(j)
		}
		return j, nil
	case j.Runner != "" && j.Runner != r.self && now.Sub(j.Heartbeat) < Lease:
		return j, problem.New(problem.Conflict, "this backfill is running in another hub process (heartbeat "+j.Heartbeat.Format(time.RFC3339)+")")
	}
	j.State, j.Runner, j.Heartbeat, j.Updated, j.Error = Running, r.self, now, now, ""
	if err := r.write(j); err != nil {
		return j, err
	}
	r.cfg.Log.Info("backfill running", zap.String("job", j.ID), zap.String("recipient", j.Recipient),
		zap.Int64("read", j.Read), zap.Int64("events", j.Total), zap.String("operator", actor))

	runErr := r.run(ctx, &j, actor, o)
	j.Runner, j.Updated = "", r.cfg.Now().UTC()
	switch {
	case runErr == nil:
		j.State = Done
	default:
		j.State = Interrupted
		if ctx.Err() == nil {
			j.Error = problem.Public(runErr)
		}
	}
	// The last position is committed even if the request ended.
	if err := r.write(j); err != nil && runErr == nil {
		runErr = err
	}
	if o.Progress != nil {
		o.Progress(j)
	}
	r.cfg.Log.Info("backfill stopped", zap.String("job", j.ID), zap.String("state", j.State), zap.Int64("read", j.Read),
		zap.Int64("sent", j.Counts.Sent), zap.Int64("already_received", j.Counts.AlreadyReceived), zap.Int64("withheld", j.Counts.Withheld))
	if runErr != nil && ctx.Err() != nil {
		return j, nil // interrupted: not a failure
	}
	return j, runErr
}

// droppedKey is the key, in the set alreadySent returns, of a record of
// carehub.events the router dropped as not acknowledged (package ackgate).
func droppedKey(position string) string { return "dropped\x00" + position }

// key of an event in the set of what the recipient was sent.
func sentKey(publisher, id string, notice bool) string {
	if notice {
		return "notice\x00" + publisher + "\x00" + id
	}
	return "copy\x00" + publisher + "\x00" + id
}

func (r *Runner) run(ctx context.Context, j *Job, actor string, o Options) error {
	sent, err := r.alreadySent(ctx, j.Recipient, j.Since)
	if err != nil {
		return problem.Wrap(problem.Unavailable, "reading what the recipient was sent from the audit", err)
	}
	received := func(publisher, id string, notice bool) bool { return sent[sentKey(publisher, id, notice)] }
	var limit *rate.Limiter
	if o.Rate > 0 {
		limit = rate.NewLimiter(rate.Limit(o.Rate), 1)
	}
	parts := make([]int, 0, len(j.End))
	for p := range j.End {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	lastCommit, pending := r.cfg.Now(), 0
	commit := func(force bool) error {
		if !force && pending < CommitEvery && r.cfg.Now().Sub(lastCommit) < CommitInterval {
			return nil
		}
		j.Heartbeat, j.Updated = r.cfg.Now().UTC(), r.cfg.Now().UTC()
		if err := r.write(*j); err != nil {
			return err
		}
		lastCommit, pending = r.cfg.Now(), 0
		if o.Progress != nil {
			o.Progress(*j)
		}
		return nil
	}
	for _, p := range parts {
		if j.Position[p] >= j.End[p] {
			continue
		}
		err := r.partition(ctx, p, j.Position[p], j.End[p], func(msg *message.Message, next int64) error {
			if limit != nil {
				if err := limit.Wait(ctx); err != nil {
					return err
				}
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if sent[droppedKey(audit.EventPosition(p, next-1))] {
				// Its publisher was told it was not accepted: the router
				// did not route it, and neither does a backfill.
				j.Counts.NotAcknowledged++
				j.Read++
				j.Position[p] = next
				pending++
				return commit(false)
			}
			plan, outcome, err := r.cfg.Router.Backfill(ctx, msg, j.Recipient, actor, received)
			if err != nil {
				return err
			}
			if outcome == route.BackfillSent || outcome == route.BackfillWithheld {
				if err := r.cfg.Router.PublishPlan(plan); err != nil {
					return err
				}
			}
			if outcome == route.BackfillSent {
				for _, m := range plan.Outbox[topic.Outbox(j.Recipient)] {
					pub := msg.Metadata.Get(topic.MetaSource)
					notice := m.Metadata.Get(topic.MetaAbout) != ""
					id := m.Metadata.Get(topic.MetaEventID)
					if notice {
						id = m.Metadata.Get(topic.MetaAbout)
					}
					sent[sentKey(publisherOf(pub), id, notice)] = true
				}
			}
			j.count(outcome)
			j.Read++
			j.Position[p] = next
			pending++
			return commit(false)
		})
		if err != nil {
			_ = commit(true)
			return err
		}
	}
	return commit(true)
}

// publisherOf is the ODS code of a CloudEvents source (urn:ods:RX1).
func publisherOf(source string) string {
	const prefix = "urn:ods:"
	if len(source) > len(prefix) && source[:len(prefix)] == prefix {
		return source[len(prefix):]
	}
	return source
}

// partition reads [from, end) of one partition of carehub.events, calling
// fn with each record and the offset after it.
func (r *Runner) partition(ctx context.Context, p int, from, end int64, fn func(*message.Message, int64) error) error {
	kr := kafka.NewReader(kafka.ReaderConfig{Brokers: r.cfg.Brokers, Topic: topic.Events, Partition: p, MaxWait: 100 * time.Millisecond, MaxBytes: 10 << 20})
	defer kr.Close()
	if err := kr.SetOffset(from); err != nil {
		return fmt.Errorf("reading past events: %w", err)
	}
	for {
		km, err := kr.FetchMessage(ctx)
		if err != nil {
			return fmt.Errorf("reading past events: %w", err)
		}
		if km.Offset >= end {
			return nil
		}
		msg := message.NewMessage(strconv.Itoa(p)+"/"+strconv.FormatInt(km.Offset, 10), km.Value)
		for _, h := range km.Headers {
			msg.Metadata.Set(h.Key, string(h.Value))
		}
		msg.Metadata.Set(topic.MetaKey, string(km.Key))
		msg.SetContext(ctx)
		if err := fn(msg, km.Offset+1); err != nil {
			return err
		}
		if km.Offset+1 >= end {
			return nil
		}
	}
}

// alreadySent reads the audit from since (less AuditMargin) and returns
// every copy and withheld notice the recipient was sent, and (droppedKey)
// every record of carehub.events the router did not route because its
// publisher was never told it was accepted.
func (r *Runner) alreadySent(ctx context.Context, ods string, since time.Time) (map[string]bool, error) {
	from, err := offsetsAt(ctx, r.cfg.Brokers, topic.Audit, since.Add(-AuditMargin))
	if err != nil {
		return nil, err
	}
	_, end, err := broker.Offsets(ctx, r.cfg.Brokers, topic.Audit)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for p, f := range from {
		if end[p] <= f {
			continue
		}
		err := r.readTopic(ctx, topic.Audit, p, f, end[p], func(km kafka.Message) {
			rec, err := audit.Unmarshal(km.Value)
			if err == nil && rec.Kind == audit.KindReceived && rec.Position != "" && slices.Contains(rec.Flags, audit.FlagNotAcknowledged) {
				out[droppedKey(rec.Position)] = true // the router dropped it: never sent to anyone
				return
			}
			if err != nil || rec.Kind != audit.KindDecision || rec.Recipient != ods || rec.Form == "" {
				return // not a copy made for the recipient
			}
			switch {
			case rec.About == "":
				out[sentKey(rec.Publisher, rec.EventID, false)] = true
			case rec.Rule == route.RuleWithheldNotice:
				out[sentKey(rec.Publisher, rec.About, true)] = true
			}
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (r *Runner) readTopic(ctx context.Context, name string, p int, from, end int64, fn func(kafka.Message)) error {
	kr := kafka.NewReader(kafka.ReaderConfig{Brokers: r.cfg.Brokers, Topic: name, Partition: p, MaxWait: 100 * time.Millisecond, MaxBytes: 10 << 20})
	defer kr.Close()
	if err := kr.SetOffset(from); err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	for {
		km, err := kr.FetchMessage(ctx)
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		if km.Offset >= end {
			return nil
		}
		fn(km)
		if km.Offset+1 >= end {
			return nil
		}
	}
}

// read returns the latest record of every job.
func (r *Runner) read(ctx context.Context) (map[string]Job, error) {
	first, end, err := broker.Offsets(ctx, r.cfg.Brokers, topic.Backfills)
	if err != nil {
		return nil, problem.Wrap(problem.Unavailable, "the backfills could not be read; retry", err)
	}
	out := map[string]Job{}
	for p := range end {
		if end[p] <= first[p] {
			continue
		}
		err := r.readTopic(ctx, topic.Backfills, p, first[p], end[p], func(km kafka.Message) {
			var j Job
			if json.Unmarshal(km.Value, &j) == nil && j.ID != "" {
				out[j.ID] = j
			}
		})
		if err != nil {
			return nil, problem.Wrap(problem.Unavailable, "the backfills could not be read; retry", err)
		}
	}
	return out, nil
}

// write records the job as it stands.
func (r *Runner) write(j Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	m := message.NewMessage(randomID(), b)
	m.Metadata.Set(topic.MetaKey, j.ID)
	if err := r.cfg.Publisher.Publish(topic.Backfills, m); err != nil {
		return problem.Wrap(problem.Unavailable, "the backfill's position could not be recorded; retry", err)
	}
	return nil
}

// offsetsAt returns, per partition of topic, the offset of the first record
// whose timestamp is at or after t (the end offset when there is none).
func offsetsAt(ctx context.Context, brokers []string, name string, t time.Time) (map[int]int64, error) {
	_, end, err := broker.Offsets(ctx, brokers, name)
	if err != nil {
		return nil, err
	}
	var reqs []kafka.OffsetRequest
	for p := range end {
		reqs = append(reqs, kafka.TimeOffsetOf(p, t))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{name: reqs}})
	if err != nil {
		return nil, fmt.Errorf("finding offsets by time in %s: %w", name, err)
	}
	out := map[int]int64{}
	for p, e := range end {
		out[p] = e
	}
	for _, po := range res.Topics[name] {
		if po.Error != nil {
			return nil, fmt.Errorf("finding offsets by time in %s: %w", name, po.Error)
		}
		for off := range po.Offsets {
			if off >= 0 && off < out[po.Partition] {
				out[po.Partition] = off
			}
		}
	}
	return out, nil
}
