package broker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// SetTopicConfigs sets configs on an existing topic (IncrementalAlterConfigs,
// operation set): a retention changed in the configuration applies to a
// topic created by an earlier start.
func SetTopicConfigs(ctx context.Context, brokers []string, topic string, configs map[string]string) error {
	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	client, release := newAdminClient(brokers)
	defer release()
	keys := make([]string, 0, len(configs))
	for k := range configs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	res := kafka.IncrementalAlterConfigsRequestResource{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic}
	for _, k := range keys {
		res.Configs = append(res.Configs, kafka.IncrementalAlterConfigsRequestConfig{Name: k, Value: configs[k], ConfigOperation: kafka.ConfigOperationSet})
	}
	resp, err := client.IncrementalAlterConfigs(ctx, &kafka.IncrementalAlterConfigsRequest{Resources: []kafka.IncrementalAlterConfigsRequestResource{res}})
	if err != nil {
		return fmt.Errorf("broker: setting configs of topic %q: %w", topic, err)
	}
	for _, r := range resp.Resources {
		if r.Error != nil {
			return fmt.Errorf("broker: setting configs of topic %q: %w", topic, r.Error)
		}
	}
	return nil
}

// PartitionOffsets are offsets by partition.
type PartitionOffsets map[int]int64

// Offsets returns the first (log start) and end offsets of every partition
// of topic. An end offset is the offset the next record produced to that
// partition will get (Kafka's "log end offset"; 0 for an empty partition):
// comparing it with a consumer's position tells whether it has caught up.
// A topic the brokers do not know is kafka.UnknownTopicOrPartition.
func Offsets(ctx context.Context, brokers []string, topic string) (first, end PartitionOffsets, err error) {
	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	client, release := newAdminClient(brokers)
	defer release()
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, nil, fmt.Errorf("broker: metadata of topic %q: %w", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, t := range md.Topics {
		if t.Name == topic && t.Error == nil {
			for _, p := range t.Partitions {
				reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
			}
		}
	}
	if len(reqs) == 0 {
		return nil, nil, fmt.Errorf("broker: topic %q: %w", topic, kafka.UnknownTopicOrPartition)
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, nil, fmt.Errorf("broker: offsets of topic %q: %w", topic, err)
	}
	first, end = PartitionOffsets{}, PartitionOffsets{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, nil, fmt.Errorf("broker: offsets of topic %q partition %d: %w", topic, p.Partition, p.Error)
		}
		first[p.Partition], end[p.Partition] = p.FirstOffset, p.LastOffset
	}
	return first, end, nil
}

// Committed returns the offsets a consumer group has committed on topic,
// by partition; a partition without a commit is absent.
func Committed(ctx context.Context, brokers []string, group, topic string, partitions []int) (PartitionOffsets, error) {
	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	client, release := newAdminClient(brokers)
	defer release()
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: partitions}})
	if err != nil {
		return nil, fmt.Errorf("broker: committed offsets of group %q: %w", group, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("broker: committed offsets of group %q: %w", group, resp.Error)
	}
	out := PartitionOffsets{}
	for _, p := range resp.Topics[topic] {
		if p.Error == nil && p.CommittedOffset >= 0 {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out, nil
}

// DeleteRecords deletes every record of topic below the given offset of
// each partition (Kafka's DeleteRecords: the log start offset moves up; the
// records are gone for every reader). It uses franz-go's client, as
// kafka-go has no DeleteRecords, and works on the embedded broker and on a
// Kafka cluster alike.
func DeleteRecords(ctx context.Context, brokers []string, topic string, below PartitionOffsets) error {
	if len(below) == 0 {
		return nil
	}
	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return fmt.Errorf("broker: deleting records: %w", err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDeleteRecordsRequest()
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = topic
	parts := make([]int, 0, len(below))
	for p := range below {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	for _, p := range parts {
		rp := kmsg.NewDeleteRecordsRequestTopicPartition()
		rp.Partition, rp.Offset = int32(p), below[p]
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 15000
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("broker: deleting records of %q: %w", topic, err)
	}
	var errs []error
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if e := kerr.ErrorForCode(p.ErrorCode); e != nil {
				errs = append(errs, fmt.Errorf("broker: deleting records of %q partition %d: %w", topic, p.Partition, e))
			}
		}
	}
	return errors.Join(errs...)
}

// RaiseTopicConfigs sets configs on an existing topic like SetTopicConfigs,
// except retention.ms, which it only ever raises: when the topic already
// keeps records at least as long (or for ever, -1) it is left as is. A
// process started with a shorter window than another still running must not
// cut the records that one relies on (carehub.accepted); lowering needs
// every process stopped and the topic's retention.ms set by hand.
func RaiseTopicConfigs(ctx context.Context, brokers []string, topic string, configs map[string]string) error {
	want, ok := configs[retentionMS]
	if !ok {
		return SetTopicConfigs(ctx, brokers, topic, configs)
	}
	wantMS, err := strconv.ParseInt(want, 10, 64)
	if err != nil {
		return fmt.Errorf("broker: %s %q for topic %q: %w", retentionMS, want, topic, err)
	}
	cur, err := TopicConfig(ctx, brokers, topic, retentionMS)
	if err != nil {
		return err
	}
	if curMS, err := strconv.ParseInt(cur, 10, 64); err == nil && (curMS < 0 || (wantMS >= 0 && curMS >= wantMS)) {
		rest := make(map[string]string, len(configs))
		for k, v := range configs {
			if k != retentionMS {
				rest[k] = v
			}
		}
		if len(rest) == 0 {
			return nil
		}
		return SetTopicConfigs(ctx, brokers, topic, rest)
	}
	return SetTopicConfigs(ctx, brokers, topic, configs)
}

const retentionMS = "retention.ms"

// TopicConfig returns the current value of one config of topic
// (DescribeConfigs); "" when the broker reports none.
func TopicConfig(ctx context.Context, brokers []string, topic, name string) (string, error) {
	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	client, release := newAdminClient(brokers)
	defer release()
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{name},
	}}})
	if err != nil {
		return "", fmt.Errorf("broker: describing configs of topic %q: %w", topic, err)
	}
	for _, r := range resp.Resources {
		if r.Error != nil {
			return "", fmt.Errorf("broker: describing configs of topic %q: %w", topic, r.Error)
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName == name {
				return e.ConfigValue, nil
			}
		}
	}
	return "", nil
}

// EndOffset returns the end offset (high-water mark: every offset below it
// has landed, acks=all) of one partition of topic, by ListOffsets latest.
func EndOffset(ctx context.Context, brokers []string, topic string, partition int) (int64, error) {
	ctx, cancel := withAdminTimeout(ctx)
	defer cancel()
	client, release := newAdminClient(brokers)
	defer release()
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(partition)}}})
	if err != nil {
		return 0, fmt.Errorf("broker: end offset of topic %q partition %d: %w", topic, partition, err)
	}
	for _, p := range resp.Topics[topic] {
		if p.Partition == partition {
			if p.Error != nil {
				return 0, fmt.Errorf("broker: end offset of topic %q partition %d: %w", topic, partition, p.Error)
			}
			return p.LastOffset, nil
		}
	}
	return 0, fmt.Errorf("broker: end offset of topic %q partition %d: %w", topic, partition, kafka.UnknownTopicOrPartition)
}
