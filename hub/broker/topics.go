package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
)

// TopicSpec describes a topic for EnsureTopics.
type TopicSpec struct {
	// Name of the topic. Required.
	Name string
	// Partitions is the partition count; 0 means the broker's default
	// (EmbeddedConfig.Partitions on the embedded broker, num.partitions on
	// Kafka 2.4 or later). Scaling later (adding partitions) moves keys to other
	// partitions: choose it up front for keyed topics.
	Partitions int
	// ReplicationFactor; 0 means the broker's default
	// (default.replication.factor). The embedded broker has one node and
	// rejects a factor above 1; production clusters want 3.
	ReplicationFactor int
	// Configs are topic configs applied at creation, e.g.
	// {"retention.ms": "-1"} or {"cleanup.policy": "compact"}.
	Configs map[string]string
}

// adminTimeout bounds an admin call when the caller's context has no
// deadline.
const adminTimeout = 30 * time.Second

// newAdminClient returns a kafka-go client with its own transport, so no
// metadata is shared with (or cached from) other clients, and a function
// that releases its connections.
func newAdminClient(brokers []string) (*kafka.Client, func()) {
	tr := &kafka.Transport{}
	return &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}, tr.CloseIdleConnections
}

func withAdminTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, adminTimeout)
}

// EnsureTopics creates each topic of specs that does not exist yet. A topic
// that already exists is left exactly as it is (its partitions and configs
// are not compared or changed). It returns nil when every topic exists
// afterwards, else the errors joined, each naming its topic.
//
// It uses only kafka-go's admin client, so it works against the embedded
// broker and against a Kafka cluster alike.
func EnsureTopics(ctx context.Context, brokers []string, specs []TopicSpec) error {
	if len(brokers) == 0 {
		return errors.New("broker: EnsureTopics: no broker addresses")
	}
	if len(specs) == 0 {
		return nil
	}
	seen := make(map[string]bool, len(specs))
	topics := make([]kafka.TopicConfig, 0, len(specs))
	var errs []error
	for _, s := range specs {
		switch {
		case s.Name == "":
			errs = append(errs, errors.New("broker: EnsureTopics: a topic spec has no name"))
			continue
		case seen[s.Name]:
			errs = append(errs, fmt.Errorf("broker: topic %q: listed twice", s.Name))
			continue
		case s.Partitions < 0 || s.ReplicationFactor < 0:
			errs = append(errs, fmt.Errorf("broker: topic %q: negative partitions or replication factor", s.Name))
			continue
		}
		seen[s.Name] = true
		tc := kafka.TopicConfig{
			Topic:             s.Name,
			NumPartitions:     s.Partitions,
			ReplicationFactor: s.ReplicationFactor,
		}
		if tc.NumPartitions == 0 {
			tc.NumPartitions = -1 // broker default (CreateTopics v4+)
		}
		if tc.ReplicationFactor == 0 {
			tc.ReplicationFactor = -1
		}
		keys := make([]string, 0, len(s.Configs))
		for k := range s.Configs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: k, ConfigValue: s.Configs[k]})
		}
		topics = append(topics, tc)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	client, release := newAdminClient(brokers)
	defer release()

	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: topics})
	if err != nil {
		for _, tc := range topics {
			errs = append(errs, fmt.Errorf("broker: create topic %q: %w", tc.Topic, err))
		}
		return errors.Join(errs...)
	}
	for _, tc := range topics {
		terr, ok := resp.Errors[tc.Topic]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("broker: create topic %q: no answer from the broker", tc.Topic))
		case terr == nil, errors.Is(terr, kafka.TopicAlreadyExists):
		default:
			errs = append(errs, fmt.Errorf("broker: create topic %q: %w", tc.Topic, terr))
		}
	}
	return errors.Join(errs...)
}

// Ping asks the brokers for the metadata of topic and reports whether one
// answered with it. Its error is safe to show (a readiness reason): it
// names the failure's class, never more.
func Ping(ctx context.Context, brokers []string, topic string) error {
	c, release := newAdminClient(brokers)
	defer release()
	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	switch {
	case err != nil:
		return errors.New("no broker answered (" + pingClass(err) + ")")
	case len(md.Topics) != 1 || md.Topics[0].Error != nil:
		return errors.New("the broker answered without the topic " + topic)
	}
	return nil
}

func pingClass(err error) string {
	var kerr kafka.Error
	switch {
	case errors.As(err, &kerr):
		return kerr.Title()
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "network error"
}
