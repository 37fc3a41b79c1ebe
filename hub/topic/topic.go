// Package topic names carehub's Kafka topics and says how each is created.
// The README's topic table describes these topics; Specs is their one definition.
package topic

import (
	"strconv"
	"strings"
	"time"

	"github.com/carehub/carehub/hub/broker"
)

// SweptSegmentBytes is the segment size of the topics the retention sweep
// deletes from (outboxes, dead letters).
const SweptSegmentBytes = 16 << 20

// RetentionConfigs are the topic configs that keep records for d (for
// ever when d is 0).
func RetentionConfigs(d time.Duration) map[string]string {
	if d <= 0 {
		return map[string]string{"retention.ms": "-1"}
	}
	return map[string]string{"retention.ms": strconv.FormatInt(d.Milliseconds(), 10)}
}

// The topics.
const (
	Events  = "carehub.events"
	Audit   = "carehub.audit"
	DLQ     = "carehub.dlq"
	Consent = "carehub.consent"
	// Subscriptions holds the recipient directory: recipients with their
	// subscriptions, pauses and patient lists (package directory).
	Subscriptions = "carehub.subscriptions"
	Held          = "carehub.held"
	Patients      = "carehub.patients"
	outboxPrefix  = "carehub.outbox."
	feedPrefix    = "carehub.feed."
	// Accepted holds the (source, id) and content digest of every event
	// accepted within the duplicate window (package dedup).
	Accepted = "carehub.accepted"
	// Backfills holds each backfill job and its committed position
	// (package backfill), compacted by job id.
	Backfills = "carehub.backfills"
)

// Consumer groups.
const (
	GroupRouter        = "carehub-router"
	groupDeliverPrefix = "carehub-deliver-"
	groupFeedPrefix    = "carehub-feed-"
)

// Outbox is the topic holding one recipient's consented copies, in order.
func Outbox(ods string) string { return outboxPrefix + strings.ToLower(ods) }

// Feed is the topic holding one pull recipient's feed: one partition,
// whose offsets (plus one) are the feed's event numbers (hub/feedlog).
func Feed(ods string) string { return feedPrefix + strings.ToLower(ods) }

// FeedSpecs returns the feed topics of the pull recipients: one partition
// each (the numbers are one partition's offsets), with no time retention:
// records are removed by the retention sweep (hub/retention) once the
// recipient has acknowledged them (FeedGroup) and the outbox window has
// passed, never because of their age alone.
func FeedSpecs(replication int, recipients []string) []broker.TopicSpec {
	var specs []broker.TopicSpec
	for _, r := range recipients {
		specs = append(specs, broker.TopicSpec{Name: Feed(r), Partitions: 1, ReplicationFactor: replication,
			Configs: map[string]string{"retention.ms": "-1"}})
	}
	return specs
}

// FeedGroup is the consumer group whose committed offset on a pull
// recipient's feed topic is the recipient's acknowledgement: offset N means
// it holds every entry numbered up to N (hub/feedlog Log.Acknowledge). No
// consumer joins it; only commits are made in it.
func FeedGroup(ods string) string { return groupFeedPrefix + strings.ToLower(ods) }

// DeliverGroup is the consumer group of one recipient's deliverers.
func DeliverGroup(ods string) string { return groupDeliverPrefix + strings.ToLower(ods) }

// Message metadata (Kafka header) names. None holds patient data: the key is
// the patient's keyed pseudonym.
const (
	MetaKey         = "partition_key"
	MetaSpecVersion = "ce_specversion"
	MetaEventID     = "ce_id"
	MetaEventType   = "ce_type"
	MetaSource      = "ce_source"
	MetaRecipient   = "carehub_recipient"
	MetaBasis       = "carehub_basis"
	MetaRule        = "carehub_rule"
	MetaHeldID      = "carehub_held_id"
	MetaReason      = "carehub_held_reason"
	// MetaForm is the form of an outbox copy (full, notification, notice).
	MetaForm = "carehub_form"
	// MetaDecision is the sealed routing decision of an outbox copy
	// (route.Sealer): opaque, and readable only with the hub's key.
	MetaDecision = "carehub_decision"
	// MetaAbout is, on a notice, the id of the event it is about.
	MetaAbout = "carehub_about"
	// MetaAccepted is when the hub accepted the event (RFC 3339, UTC, to
	// the nanosecond): set by ingest on carehub.events, copied by the router
	// onto outbox copies, read by the deliverer for the accepted→delivered
	// latency.
	MetaAccepted = "carehub_accepted"
	// MetaAttempt is, on carehub.events, the id of the ingest's publish
	// attempt (dedup.Claim.Attempt): the router routes the event only if
	// the attempt's record in carehub.accepted came before any void of it
	// (package ackgate). Events without it come from hubs before attempts.
	MetaAttempt = "carehub_attempt"
	// MetaPublishTimeout is, on carehub.events, the publishing ingest's
	// kafka.publishTimeout in milliseconds: how long after acceptance it
	// may still have acknowledged the event. The router waits for the
	// attempt's record at least that long (package ackgate), so a router
	// configured with a shorter timeout (a rolling change) never voids an
	// event its ingest acknowledged.
	MetaPublishTimeout = "carehub_publish_timeout"
)

// Retention is how long the topics kept by time keep their records.
type Retention struct {
	Events time.Duration // carehub.events
	Audit  time.Duration // carehub.audit
}

// Specs returns the topics a hub needs, with their settings. Events and
// audit are kept for the configured retention (retention.ms; years by
// default). Outboxes and the dead-letter topic are never cut by time
// (retention.ms=-1: a recipient that is down for weeks loses nothing);
// package retention deletes from them what is delivered or resolved, once
// a window has passed. The held topic (messages acknowledged but not
// shared, with the original message) is kept until an operator releases or
// resolves each record (retention.ms=-1): nothing ages out unseen; package
// retention deletes closed ones once a window has passed.
// Consent, the patient index and subscriptions are
// compacted, in one partition each: every hub process reads all of them
// anyway, and the router looks up the consent topic's and the patient
// index's end offsets before each decision (ktable), one request per
// partition.
func Specs(partitions, replication int, recipients []string, r Retention) []broker.TopicSpec {
	forever := sweptConfigs()
	compact := map[string]string{"cleanup.policy": "compact", "retention.ms": "-1"}
	specs := []broker.TopicSpec{
		{Name: Events, Partitions: partitions, ReplicationFactor: replication, Configs: RetentionConfigs(r.Events)},
		{Name: Audit, Partitions: partitions, ReplicationFactor: replication, Configs: RetentionConfigs(r.Audit)},
		{Name: DLQ, Partitions: partitions, ReplicationFactor: replication, Configs: forever},
		{Name: Held, Partitions: partitions, ReplicationFactor: replication, Configs: forever},
		{Name: Consent, Partitions: 1, ReplicationFactor: replication, Configs: compact},
		{Name: Patients, Partitions: 1, ReplicationFactor: replication, Configs: compact},
		{Name: Subscriptions, Partitions: 1, ReplicationFactor: replication, Configs: compact},
		{Name: Backfills, Partitions: 1, ReplicationFactor: replication, Configs: compact},
	}
	for _, r := range recipients {
		specs = append(specs, OutboxSpec(partitions, replication, r))
	}
	return specs
}

// sweptConfigs are the configs of the topics the retention sweep deletes
// from. They roll segments small and often: Kafka removes a segment's file
// only once every record in it is deleted, so the bytes of a deleted copy
// stay on disk until its segment rolls.
func sweptConfigs() map[string]string {
	return map[string]string{"retention.ms": "-1", "segment.bytes": strconv.Itoa(SweptSegmentBytes), "segment.ms": "3600000"}
}

// OutboxSpec is the outbox topic of one recipient (a recipient created
// through the admin API gets it when it is created).
func OutboxSpec(partitions, replication int, ods string) broker.TopicSpec {
	return broker.TopicSpec{Name: Outbox(ods), Partitions: partitions, ReplicationFactor: replication, Configs: sweptConfigs()}
}

// AcceptedSpec returns the settings of the Accepted topic for a duplicate
// window: one partition (every process reads all of it, and looks up its end
// offset before each acceptance, one request per partition), and records
// deleted once older than the window (AcceptedConfigs).
func AcceptedSpec(replication int, window time.Duration) broker.TopicSpec {
	return broker.TopicSpec{Name: Accepted, Partitions: 1, ReplicationFactor: replication, Configs: AcceptedConfigs(window)}
}

// AcceptedConfigs are the Accepted topic's configs, which the hub also sets
// on an existing topic at start: cleanup.policy delete, never compact. The
// log order of an attempt's record and void decides whether its event is
// routed (package dedup), and a void may be written twice (a retried write,
// two routers across a rebalance); compaction would remove the first copy of
// a key and keep a later one, moving the void after a record that came
// after it, and a process started afterwards would decide the other way.
// Keys are unique per attempt, so compaction would remove nothing else.
//
// Records are deleted by their Kafka timestamp, which is the attempt's
// acceptance time on both its record and its void (package dedup), so the
// two expire by the same time whichever process's clock wrote them.
// retention.ms is the window plus AcceptedSlack: processes ignore records
// accepted longer ago than the window (by their own clocks), and the slack
// covers the broker's clock being ahead of theirs and the time a process
// takes to load the topic, so the topic never deletes one of a pair (a void
// in an older segment than its record) while a process still applies the
// other: a process loading the record alone would take a resend for a
// duplicate of an attempt that was never routed.
//
// message.timestamp.type is CreateTime (Kafka's default, set in case a
// broker's default is LogAppendTime): the timestamp the hub writes, not the
// broker's append time, is the one retention deletes by. A broker that
// limits how old a timestamp may be (message.timestamp.before.max.ms, or
// message.timestamp.difference.max.ms before Kafka 3.6) would refuse the
// late voids; the hub does not set those (not every broker knows both
// names), and the README says to leave them unlimited on this topic.
//
// The hub only ever raises retention.ms at start (broker.RaiseTopicConfigs):
// lowering ingest.duplicateWindow needs every process stopped.
func AcceptedConfigs(window time.Duration) map[string]string {
	return map[string]string{"cleanup.policy": "delete", "message.timestamp.type": "CreateTime",
		"retention.ms": strconv.FormatInt((window + AcceptedSlack).Milliseconds(), 10)}
}

// AcceptedSlack is how much longer than the duplicate window the Accepted
// topic keeps records (AcceptedConfigs): an hour, far more than clocks kept
// by NTP disagree or a load takes.
const AcceptedSlack = time.Hour
