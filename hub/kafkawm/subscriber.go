package kafkawm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/internal/logging"
	"github.com/segmentio/kafka-go"
)

// Defaults for SubscriberConfig.
const (
	DefaultSessionTimeout         = 10 * time.Second
	DefaultHeartbeatInterval      = 1 * time.Second
	DefaultRebalanceTimeout       = 5 * time.Second
	DefaultNackResendDelay        = 100 * time.Millisecond
	DefaultCommitInterval         = 50 * time.Millisecond
	DefaultPartitionWatchInterval = 30 * time.Second
	DefaultInitializePartitions   = 1
)

// CommitSynchronously, as SubscriberConfig.CommitInterval, commits each
// acknowledged offset before the next message of its partition is
// delivered.
const CommitSynchronously time.Duration = -1

const (
	// joinGroupBackoff is how long kafka-go waits before re-joining the
	// group after an error (its own default is 5 s).
	joinGroupBackoff = time.Second
	// fetchMaxWait bounds a fetch long-poll on an idle partition. The
	// broker answers as soon as a record arrives, so it costs no latency;
	// a short one costs CPU on both sides for every idle partition (a
	// thousand recipients are two thousand idle readers).
	fetchMaxWait = 5 * time.Second
	// fetchBackoffMin and fetchBackoffMax bound the delay between retries
	// of a failing fetch.
	fetchBackoffMin = 100 * time.Millisecond
	fetchBackoffMax = 5 * time.Second
	// partitionReadTimeout bounds one read of a topic's partition count.
	partitionReadTimeout = 5 * time.Second
	// initializeTimeout bounds SubscribeInitialize.
	initializeTimeout = 30 * time.Second
)

// ErrSubscriberClosed is returned by Subscribe after Close.
var ErrSubscriberClosed = errors.New("kafkawm: subscriber closed")

// SubscriberConfig configures NewSubscriber. Zero values mean the defaults
// named on each field.
type SubscriberConfig struct {
	// Brokers are bootstrap host:port addresses. Required.
	Brokers []string

	// ConsumerGroup is the Kafka consumer group id. Required. Subscribers
	// sharing it share the work: each partition is consumed by one member.
	ConsumerGroup string

	// InitialOffset is where a group starts on a partition for which it
	// has no committed offset: kafka.FirstOffset (default, the earliest
	// record still kept) or kafka.LastOffset (only new records).
	InitialOffset int64

	// SessionTimeout: the coordinator drops a member it has not heard from
	// for this long and gives its partitions to others. Default 10 s.
	// Kafka (and the embedded broker) accept 6 s to 5 min by default.
	SessionTimeout time.Duration

	// HeartbeatInterval is how often a member tells the coordinator it is
	// alive; it is also how quickly a member notices a rebalance. Default
	// 1 s; keep it well under SessionTimeout/3.
	HeartbeatInterval time.Duration

	// RebalanceTimeout is how long the coordinator waits for members to
	// rejoin during a rebalance. When a partition stops (revoked, or Close)
	// while one of its messages is being handled, the subscriber waits up
	// to half of it for that message's Ack or Nack before giving up on it.
	// Default 5 s.
	RebalanceTimeout time.Duration

	// NackResendDelay is the pause before a nacked message is delivered
	// again. Default 100 ms.
	NackResendDelay time.Duration

	// CommitInterval is how often acknowledged offsets are committed.
	// Default 50 ms; CommitSynchronously (any negative value) commits after
	// each Ack. Either way the acknowledged offsets are committed again when
	// a generation or subscription ends. A longer interval means more
	// redelivered messages after a crash, never lost ones.
	CommitInterval time.Duration

	// PartitionWatchInterval is how often a member checks whether its
	// topic's partition count changed (a new topic, or partitions added),
	// which triggers a rebalance. Default 30 s: each check is a new
	// connection per subscription, and partitions are added rarely.
	PartitionWatchInterval time.Duration

	// KeyMetadata names the metadata field that receives the record key.
	// Default "partition_key".
	KeyMetadata string

	// InitializePartitions is the partition count SubscribeInitialize
	// creates a missing topic with. Default 1.
	InitializePartitions int

	// InitializeTopicConfigs are the topic configs SubscribeInitialize
	// creates a missing topic with, e.g. {"retention.ms": "-1"}.
	InitializeTopicConfigs map[string]string
}

func (c *SubscriberConfig) setDefaults() error {
	if len(c.Brokers) == 0 {
		return errors.New("kafkawm: SubscriberConfig.Brokers is empty")
	}
	for _, b := range c.Brokers {
		if b == "" {
			return errors.New("kafkawm: SubscriberConfig.Brokers has an empty address")
		}
	}
	if c.ConsumerGroup == "" {
		return errors.New("kafkawm: SubscriberConfig.ConsumerGroup is required")
	}
	switch c.InitialOffset {
	case 0:
		c.InitialOffset = kafka.FirstOffset
	case kafka.FirstOffset, kafka.LastOffset:
	default:
		return errors.New("kafkawm: SubscriberConfig.InitialOffset must be kafka.FirstOffset or kafka.LastOffset")
	}
	def := func(d *time.Duration, v time.Duration, name string) error {
		if *d < 0 {
			return fmt.Errorf("kafkawm: SubscriberConfig.%s is negative", name)
		}
		if *d == 0 {
			*d = v
		}
		return nil
	}
	if err := errors.Join(
		def(&c.SessionTimeout, DefaultSessionTimeout, "SessionTimeout"),
		def(&c.HeartbeatInterval, DefaultHeartbeatInterval, "HeartbeatInterval"),
		def(&c.RebalanceTimeout, DefaultRebalanceTimeout, "RebalanceTimeout"),
		def(&c.NackResendDelay, DefaultNackResendDelay, "NackResendDelay"),
		def(&c.PartitionWatchInterval, DefaultPartitionWatchInterval, "PartitionWatchInterval"),
	); err != nil {
		return err
	}
	if c.HeartbeatInterval >= c.SessionTimeout {
		return errors.New("kafkawm: SubscriberConfig.HeartbeatInterval must be shorter than SessionTimeout")
	}
	switch {
	case c.CommitInterval == 0:
		c.CommitInterval = DefaultCommitInterval
	case c.CommitInterval < 0:
		c.CommitInterval = CommitSynchronously
	}
	if c.KeyMetadata == "" {
		c.KeyMetadata = DefaultKeyMetadata
	}
	if c.InitializePartitions < 0 {
		return errors.New("kafkawm: SubscriberConfig.InitializePartitions is negative")
	}
	if c.InitializePartitions == 0 {
		c.InitializePartitions = DefaultInitializePartitions
	}
	return nil
}

// Subscriber consumes Kafka topics as a member of a consumer group. See the
// package documentation for its guarantees. It is safe for concurrent use;
// each Subscribe call is one group member.
type Subscriber struct {
	cfg    SubscriberConfig
	logger watermill.LoggerAdapter

	closing   chan struct{}
	closeOnce sync.Once

	mu     sync.Mutex // guards closed and subs.Add against Close
	closed bool
	subs   sync.WaitGroup
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)

// NewSubscriber validates cfg and returns a Subscriber. It does not connect:
// each Subscribe joins the group in the background.
func NewSubscriber(cfg SubscriberConfig, logger watermill.LoggerAdapter) (*Subscriber, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	cfg.Brokers = append([]string(nil), cfg.Brokers...)
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &Subscriber{
		cfg: cfg,
		// Every line names the brokers, as the publisher's do: a Kafka
		// error is read by its class, topic and broker.
		logger:  logger.With(watermill.LogFields{"consumer_group": cfg.ConsumerGroup, "brokers": strings.Join(cfg.Brokers, ",")}),
		closing: make(chan struct{}),
	}, nil
}

// SubscribeInitialize creates topic with InitializePartitions partitions and
// InitializeTopicConfigs if it does not exist. An existing topic is left as
// it is.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	if topic == "" {
		return errors.New("kafkawm: SubscribeInitialize: empty topic")
	}
	ctx, cancel := context.WithTimeout(context.Background(), initializeTimeout)
	defer cancel()
	return broker.EnsureTopics(ctx, s.cfg.Brokers, []broker.TopicSpec{{
		Name:       topic,
		Partitions: s.cfg.InitializePartitions,
		Configs:    s.cfg.InitializeTopicConfigs,
	}})
}

// Subscribe joins the consumer group for topic and returns the channel of its
// messages. Every message must be acked or nacked; the next message of the
// same partition comes only after that. The channel is closed once ctx ends
// or the Subscriber is closed, after the acknowledged offsets have been
// committed.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if topic == "" {
		return nil, errors.New("kafkawm: subscribe: empty topic")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrSubscriberClosed
	}
	s.subs.Add(1)
	s.mu.Unlock()

	cgConfig := kafka.ConsumerGroupConfig{
		ID:                s.cfg.ConsumerGroup,
		Brokers:           s.cfg.Brokers,
		Topics:            []string{topic},
		HeartbeatInterval: s.cfg.HeartbeatInterval,
		SessionTimeout:    s.cfg.SessionTimeout,
		RebalanceTimeout:  s.cfg.RebalanceTimeout,
		JoinGroupBackoff:  joinGroupBackoff,
		// kafka-go's partition watcher compares the partition count with
		// what it reads when the generation starts, not with what the
		// assignment was made from: a topic created (or partitions added)
		// in between is never noticed, and a missing topic makes it end
		// every generation at once (hundreds of rebalances a second). We
		// watch ourselves (watchPartitions).
		WatchPartitionChanges: false,
		StartOffset:           s.cfg.InitialOffset,
	}
	if err := cgConfig.Validate(); err != nil {
		s.subs.Done()
		return nil, fmt.Errorf("kafkawm: subscribe to topic %q: %w", topic, err)
	}

	subCtx, cancel := context.WithCancel(ctx)
	out := make(chan *message.Message)
	sub := &subscription{
		s:      s,
		topic:  topic,
		parent: ctx,
		ctx:    subCtx,
		out:    out,
		logger: s.logger.With(watermill.LogFields{"topic": topic}),
	}
	go func() {
		select {
		case <-subCtx.Done():
		case <-s.closing:
			cancel()
		}
	}()
	go func() {
		defer s.subs.Done()
		defer cancel()
		sub.run(cgConfig)
	}()
	return out, nil
}

// Close ends every subscription: it stops delivering, waits up to half the
// RebalanceTimeout for messages being handled to be acked or nacked,
// commits what was acknowledged, leaves the group and closes the channels.
// It returns when all of that is done and is safe to call more than once.
func (s *Subscriber) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.closing)
	})
	s.subs.Wait()
	return nil
}

// subscription is one Subscribe call: one consumer group member.
type subscription struct {
	s      *Subscriber
	topic  string
	parent context.Context // the context given to Subscribe
	ctx    context.Context // ends with the subscription (parent ends or Close)
	out    chan *message.Message
	logger watermill.LoggerAdapter

	workers sync.WaitGroup // every goroutine started through a generation

	// partitions is the topic's partition count last seen (-1: unknown).
	// Only watchPartitions touches it after run starts, and generations
	// never overlap.
	partitions int
}

func (sub *subscription) run(cgConfig kafka.ConsumerGroupConfig) {
	defer close(sub.out)

	// The partition count before joining: every assignment is made from
	// this count or a later one (see watchPartitions).
	sub.partitions = sub.readPartitionCount(sub.ctx)
	cg, err := kafka.NewConsumerGroup(cgConfig)
	if err != nil { // cannot happen: the config was validated by Subscribe
		sub.logger.Error("Kafka consumer group not created", logging.SafeText("kafka: "+errorKind(err)), nil)
		return
	}
	// Closing the group ends the current generation (its functions see
	// their context end), commits through it, and leaves the group.
	stop := context.AfterFunc(sub.ctx, func() { _ = cg.Close() })
	defer stop()

	for {
		gen, err := cg.Next(sub.ctx)
		if err != nil {
			if sub.ctx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				break
			}
			// kafka-go backs off before rejoining; just report.
			sub.logger.Error("Kafka consumer group error, rejoining", logging.SafeText("kafka: "+errorKind(err)), nil)
			continue
		}
		sub.startGeneration(gen)
	}
	_ = cg.Close()
	sub.workers.Wait()
}

// readPartitionCount returns the topic's partition count (0 if it does not
// exist), or -1 if it cannot be read.
func (sub *subscription) readPartitionCount(ctx context.Context) int {
	ctx, cancel := context.WithTimeout(ctx, partitionReadTimeout)
	defer cancel()
	for _, addr := range sub.s.cfg.Brokers {
		conn, err := kafka.DefaultDialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			continue
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		parts, err := conn.ReadPartitions(sub.topic)
		_ = conn.Close()
		switch {
		case err == nil:
			return len(parts)
		case errors.Is(err, kafka.UnknownTopicOrPartition):
			return 0
		}
	}
	return -1
}

// watchPartitions ends the generation when the topic's partition count
// differs from the last count this subscription saw, so that the group
// rebalances and the new partitions get consumed. The last count is kept
// across generations and was first read before joining the group; partition
// counts only grow, so a change that happened after the count an assignment
// was made from is always noticed, even if it happened before this
// generation started.
func (sub *subscription) watchPartitions(genCtx context.Context) {
	t := time.NewTicker(sub.s.cfg.PartitionWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-genCtx.Done():
			return
		case <-t.C:
		}
		// The read must not hold the generation up once it ends.
		readCtx, cancel := context.WithCancel(sub.ctx)
		stop := context.AfterFunc(genCtx, cancel)
		n := sub.readPartitionCount(readCtx)
		stop()
		cancel()
		if genCtx.Err() != nil {
			return
		}
		if n < 0 {
			continue // unreadable now; try again next tick
		}
		if n != sub.partitions {
			sub.logger.Info("Kafka topic partition count changed; rejoining the group", watermill.LogFields{
				"from": sub.partitions,
				"to":   n,
			})
			sub.partitions = n
			return // ends the generation
		}
	}
}

// startGeneration starts one worker per assigned partition and a committer,
// all bound to gen: when the generation ends they stop, and the committer
// makes the generation's last commit before kafka-go rejoins the group.
func (sub *subscription) startGeneration(gen *kafka.Generation) {
	g := &generation{
		sub:       sub,
		gen:       gen,
		acked:     map[int]int64{},
		committed: map[int]int64{},
	}
	assigned := gen.Assignments[sub.topic]
	sub.logger.Debug("Kafka consumer group generation started", watermill.LogFields{
		"generation": gen.ID,
		"partitions": len(assigned),
	})
	var partitions sync.WaitGroup
	for _, a := range assigned {
		if a.Offset >= 0 {
			g.committed[a.ID] = a.Offset
		}
		partitions.Add(1)
		sub.workers.Add(1)
		gen.Start(func(genCtx context.Context) {
			defer sub.workers.Done()
			defer partitions.Done()
			g.consume(genCtx, a)
		})
	}
	sub.workers.Add(1)
	gen.Start(func(genCtx context.Context) {
		defer sub.workers.Done()
		g.commitLoop(genCtx, &partitions)
	})
	sub.workers.Add(1)
	gen.Start(func(genCtx context.Context) {
		defer sub.workers.Done()
		sub.watchPartitions(genCtx)
	})
}

// generation is the state of one consumer group generation of a
// subscription. Offsets acknowledged in it are committed only through it.
type generation struct {
	sub *subscription
	gen *kafka.Generation

	mu        sync.Mutex
	acked     map[int]int64 // partition -> next offset to consume (last acked + 1)
	committed map[int]int64 // partition -> last offset committed (or initially assigned)

	commitMu       sync.Mutex // one commit request at a time: commits never overtake
	commitFailures int        // guarded by commitMu
}

func (g *generation) ack(partition int, next int64) {
	g.mu.Lock()
	if next > g.acked[partition] {
		g.acked[partition] = next
	}
	g.mu.Unlock()
}

// commit commits every acknowledged offset not yet committed.
func (g *generation) commit() {
	g.commitMu.Lock()
	defer g.commitMu.Unlock()

	g.mu.Lock()
	var offsets map[int]int64
	for p, next := range g.acked {
		if c, ok := g.committed[p]; !ok || next > c {
			if offsets == nil {
				offsets = map[int]int64{}
			}
			offsets[p] = next
		}
	}
	g.mu.Unlock()
	if offsets == nil {
		return
	}
	// CommitOffsets runs on the generation's coordinator connection with its
	// own network deadline and no context: it is not cut short by the
	// subscription ending, and it carries this generation's id, so the
	// coordinator refuses it once the group has moved on.
	if err := g.gen.CommitOffsets(map[string]map[int]int64{g.sub.topic: offsets}); err != nil {
		// The next commit retries these offsets. Log the first failure of
		// the generation as an error, repeats (a dead connection fails
		// every tick until the heartbeat ends the generation) at debug.
		log := g.sub.logger.Debug
		if g.commitFailures == 0 {
			log = func(msg string, f watermill.LogFields) {
				g.sub.logger.Error(msg, logging.SafeText("kafka: "+errorKind(err)), f)
			}
		}
		g.commitFailures++
		log("Kafka offset commit failed; it is retried, and uncommitted messages may be delivered again", watermill.LogFields{
			"generation": g.gen.ID,
			"partitions": len(offsets),
			"error_kind": errorKind(err),
			"failures":   g.commitFailures,
		})
		return
	}
	g.mu.Lock()
	for p, next := range offsets {
		if next > g.committed[p] {
			g.committed[p] = next
		}
	}
	g.mu.Unlock()
}

// commitLoop commits on CommitInterval until the generation ends, then waits
// for the partition workers and commits what they acknowledged last.
func (g *generation) commitLoop(genCtx context.Context, partitions *sync.WaitGroup) {
	var tick <-chan time.Time
	if iv := g.sub.s.cfg.CommitInterval; iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-tick:
			g.commit()
		case <-genCtx.Done():
			partitions.Wait()
			g.commit()
			return
		}
	}
}

// consume delivers one partition's records one at a time until the
// generation or the subscription ends.
func (g *generation) consume(genCtx context.Context, a kafka.PartitionAssignment) {
	sub := g.sub
	cfg := &sub.s.cfg
	// fetchCtx ends with the subscription or the generation.
	fetchCtx, cancel := context.WithCancel(sub.ctx)
	defer cancel()
	stop := context.AfterFunc(genCtx, cancel)
	defer stop()

	// A reader of this partition alone, new for this generation: nothing it
	// buffered can outlive the assignment.
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        cfg.Brokers,
		Topic:          sub.topic,
		Partition:      a.ID,
		MinBytes:       1,
		MaxBytes:       10 << 20,
		MaxWait:        fetchMaxWait,
		ReadBackoffMin: fetchBackoffMin,
		ReadBackoffMax: time.Second,
	})
	// Close waits for the reader's fetch in flight, up to fetchMaxWait on an
	// idle partition. Nothing is read from r after this function returns,
	// so the generation need not wait for that: close it in the background.
	defer func() { go r.Close() }()
	if err := r.SetOffset(a.Offset); err != nil {
		sub.logger.Error("Kafka reader setup failed", logging.SafeText("kafka: "+errorKind(err)), watermill.LogFields{"partition": a.ID})
		<-fetchCtx.Done()
		return
	}

	backoff := fetchBackoffMin
	for fetchCtx.Err() == nil {
		km, err := r.FetchMessage(fetchCtx)
		if err != nil {
			if fetchCtx.Err() != nil {
				return
			}
			sub.logger.Error("Kafka fetch failed, retrying", logging.SafeText("kafka: "+errorKind(err)), watermill.LogFields{
				"partition": a.ID,
				"backoff":   backoff.String(),
			})
			if !sleepCtx(fetchCtx, backoff) {
				return
			}
			backoff = min(2*backoff, fetchBackoffMax)
			continue
		}
		backoff = fetchBackoffMin

		acked, more := g.deliver(genCtx, km)
		if acked {
			g.ack(km.Partition, km.Offset+1)
			if cfg.CommitInterval < 0 {
				g.commit()
			}
		}
		if !more {
			return
		}
	}
}

// deliver hands km to the subscriber's channel until it is acked, redelivering
// it after each nack. It reports whether it was acked and whether the
// partition should go on.
func (g *generation) deliver(genCtx context.Context, km kafka.Message) (acked, more bool) {
	sub := g.sub
	for {
		if genCtx.Err() != nil || sub.ctx.Err() != nil {
			return false, false
		}
		msg := toWatermill(sub.s.cfg.KeyMetadata, km)
		// The message context derives from the caller's context, not from
		// the subscription's: closing the subscriber gives a message being
		// handled a grace (see settle) before its context is cancelled.
		msgCtx, cancelMsg := context.WithCancel(sub.parent)
		msg.SetContext(msgCtx)

		select {
		case sub.out <- msg:
		case <-genCtx.Done():
			cancelMsg()
			return false, false
		case <-sub.ctx.Done():
			cancelMsg()
			return false, false
		}

		select {
		case <-msg.Acked():
			cancelMsg()
			return true, true
		case <-msg.Nacked():
			cancelMsg()
			if !sleepCtx2(genCtx, sub.ctx, sub.s.cfg.NackResendDelay) {
				return false, false
			}
			continue // the same record again
		case <-sub.ctx.Done():
			return g.settle(msg, km, cancelMsg), false
		case <-genCtx.Done():
			return g.settle(msg, km, cancelMsg), false
		}
	}
}

// settle handles a message still being handled when its partition stops
// (revoked, or the subscription ends): it waits up to half the
// RebalanceTimeout for the Ack or Nack, so that a handler finishing during
// a shutdown or rebalance gets its Ack committed instead of its message
// redelivered, then cancels the message's context. It reports whether the
// message was acked.
func (g *generation) settle(msg *message.Message, km kafka.Message, cancelMsg context.CancelFunc) bool {
	defer cancelMsg()
	grace := time.NewTimer(g.sub.s.cfg.RebalanceTimeout / 2)
	defer grace.Stop()
	select {
	case <-msg.Acked():
		return true
	case <-msg.Nacked():
		return false
	case <-grace.C:
		g.sub.logger.Info("Message still in flight when its partition stopped; it will be delivered again", watermill.LogFields{
			"partition": km.Partition,
			"offset":    km.Offset,
		})
		return isAcked(msg)
	}
}

func isAcked(msg *message.Message) bool {
	select {
	case <-msg.Acked():
		return true
	default:
		return false
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func sleepCtx2(a, b context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-a.Done():
		return false
	case <-b.Done():
		return false
	}
}
