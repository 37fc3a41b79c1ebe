// Package bench is carehub's own benchmark, run as "carehub bench": it
// measures a hub's throughput, its latency from acceptance to delivery, and
// its behaviour at scale, and it measures the same load on a reference path
// with no validation, routing, consent or audit against the same broker in
// the same run, so that the ratio hub / reference says what the hub's
// guarantees cost on the machine at hand.
//
// A run starts a hub per row (as its own process: "carehub serve" with a
// generated configuration, or in process as a fallback, or a running hub
// with Options.Target), synthetic recipients (HTTP receivers that verify
// every Standard Webhooks signature), and a synthetic population of patients
// with valid NHS numbers from the 999 test range, registered with GP
// practices and resident in care homes. Each event is a discharge, meant for
// the patient's GP practice and the care home it names.
//
// Scenarios (Scenarios): throughput (as fast as possible), latency (500
// events/s), fanout (1,000 recipients), isolation (latency with one
// recipient down), backlog (one recipient down while events queue for it,
// then its drain rate), feed (one pull recipient whose client reads its
// feed as fast as it can) and longpoll (100 pull recipients, a client
// long-polling each feed, at 500 events/s and then as fast as possible).
// Each runs through ingest paths as separate rows: HTTP batches, single
// HTTP requests, HL7 v2 ADT^A03 over MLLP and FHIR R4 messages to
// $process-message (Options.Ingest says which, by scenario).
//
// The feed rows' reference is not the push path but the raw consume of the
// same feed topics: after the live phase the clients read their whole feeds
// again from number 0, and kafka-go Readers read the same topics from their
// first offset, so the ratio says what reading through the feed API (HTTP,
// the recipient's key, the consent re-check and the audit of each read)
// costs against reading the records raw (FeedResult).
//
// Run returns a Report: per row, events and deliveries per second on both
// paths and their ratio, latency percentiles over every delivery, the hub
// process's CPU time and peak RSS, and the events lost (accepted but not
// delivered to every intended recipient once deliveries stall for
// Options.DrainTimeout). Run returns ErrLost when anything was lost; figures
// that miss the targets (Report.Targets) are reported, never errors.
//
// BENCHMARKS.md at the root of the module holds a run of the suite on the
// development machine and what limits each figure.
package bench
