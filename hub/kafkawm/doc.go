// Package kafkawm is a watermill Publisher and Subscriber over
// segmentio/kafka-go, written for carehub's rule: never lose an event.
//
// # Publishing
//
// Publisher.Publish returns nil only after the broker has acknowledged every
// message with acks=all (the write is on every in-sync replica; on the
// embedded broker, in its log). On error some messages may have been written
// and others not: publish them again (consumers must tolerate duplicates
// anyway, see below). The writer waits at most PublisherConfig.BatchTimeout
// (default 2 ms, not kafka-go's 1 s) to gather a batch. Topics are never
// created implicitly; create them with broker.EnsureTopics or
// Subscriber.SubscribeInitialize. A topic the publisher does not know yet
// (just created by another client) is waited for up to 3 s: kafka-go's
// writer looks partitions up in a metadata cache, refreshed every second.
//
// Mapping between a watermill message and a Kafka record:
//
//   - the payload is the record value;
//   - the message UUID travels in header "_watermill_message_uuid";
//   - the metadata field named by KeyMetadata (default "partition_key")
//     becomes the record key and is not written as a header; every other
//     metadata field becomes a header (sorted by name);
//   - "kafka_partition", "kafka_offset" and "kafka_high_water_mark" (the
//     partition's high-water mark reported by the fetch that returned the
//     record: every offset below it had landed by then) are set by the
//     Subscriber and never written as headers.
//
// Keys are partitioned with kafka-go's Murmur2Balancer, the Java client's
// default partitioner (also librdkafka's "murmur2_random"), so a key lands on
// the same partition whichever of these clients produced it. A message
// without a key goes to a random partition.
//
// # Subscribing: guarantees
//
//   - At least once. An offset is committed only after its message was
//     acknowledged (Ack). A crash, a rebalance or a failed commit can deliver
//     a message again, so handlers must be idempotent (deduplicate on the
//     event id). There is no exactly-once delivery.
//   - Order per partition. Records of one partition are delivered in offset
//     order, and a Nack redelivers the same message (after NackResendDelay)
//     before anything later in that partition. Records with the same key are
//     therefore handled in order; across partitions there is no order.
//   - One message in flight per partition. The next record of a partition is
//     delivered only after the previous one was acked. Partitions are
//     consumed independently (one kafka-go Reader per assigned partition),
//     so a slow message blocks only its own partition. Parallelism is the
//     number of partitions assigned to this subscriber.
//   - Commit policy. Acknowledged offsets are committed every CommitInterval
//     (default 50 ms; negative: synchronously after each ack) through the
//     consumer group generation that delivered them, and once more when the
//     generation ends (rebalance) or the subscription ends (Close, context
//     cancelled). Because a partition has one message in flight, the
//     committed offset is always the end of a contiguous acknowledged
//     prefix, and commits of one generation are sent one at a time, so the
//     group's offset never moves backwards. A generation's commits carry its
//     generation id: after a rebalance the coordinator rejects them, so a
//     member can never commit for a partition it lost (kafka-go issue
//     #1308). Each generation opens new readers, so nothing buffered for a
//     revoked partition is ever delivered after a rebalance (issue #1398).
//     The final commit is made on the generation's coordinator connection
//     with its own network timeout (ConsumerGroupConfig.Timeout, 5 s),
//     independent of the subscription's context, so it still happens during
//     shutdown.
//   - Message context. Each delivered message's Context() is derived from
//     the context given to Subscribe and is cancelled once the message is
//     acked or nacked. A message still being handled when its partition
//     stops (Close, or the partition revoked in a rebalance) keeps its
//     context for a grace of half the RebalanceTimeout: an Ack within the
//     grace is committed (so a router shutting down does not lose its
//     handlers' last acks); after it the context is cancelled and the
//     message will be delivered again. Close therefore waits at most that
//     grace for handlers. Cancelling the Subscribe context cancels the
//     contexts of messages in flight at once.
//   - Errors. A fetch error that is not a shutdown is logged (topic,
//     partition and error type only; never payloads, keys or header values)
//     and retried with backoff; it never ends the subscription. Errors
//     joining the group are logged and retried the same way.
//
// # Scaling
//
// A consumer group spreads a topic's partitions over its members (each
// Subscribe call is one member; run more processes or more Subscribe calls
// with the same ConsumerGroup). Members beyond the partition count stay
// idle, so the partition count caps parallelism. Partitions can be added
// to a topic later (the group notices within PartitionWatchInterval and
// rebalances), but adding partitions moves keys to other partitions, which
// breaks per-key order for records produced around the change: size keyed
// topics up front.
//
// # Patient data
//
// Nothing in this package logs or returns payloads, keys or header values:
// errors and log lines carry topics, partitions, offsets, counts and error
// kinds only.
package kafkawm
