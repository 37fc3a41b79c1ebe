// Package broker runs carehub's embedded Kafka-compatible broker and manages
// topics on any Kafka-protocol cluster.
//
// # Embedded broker
//
// StartEmbedded starts a single-node broker (kfake from franz-go) inside the
// current process. It speaks the Kafka protocol over real TCP, so every
// Kafka client (kafka-go, franz-go, librdkafka/kcat, the Java client) can use
// it, and it keeps its log segments, committed group offsets and topic
// configs in a data directory that survives restarts:
//
//	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{
//		DataDir: "/var/lib/carehub", // holds LOCK and kafka/
//		Addr:    "127.0.0.1:9092",   // port 0 picks a free port
//		Logger:  logger,
//	})
//	if err != nil {
//		return err // e.g. "data directory ... is in use by another carehub (lock held)"
//	}
//	defer emb.Close() // flushes to disk, then releases the lock
//	brokers := emb.Addrs()
//
// Only one process may use a data directory at a time: StartEmbedded takes an
// exclusive flock on DataDir/LOCK and fails with a clear error if another
// process holds it. The lock is released by Close, or by the kernel when the
// process dies.
//
// The embedded mode is for one machine (development, demos, a single-box
// install). kfake calls itself a fake broker for testing; it has no
// replication. Production runs on a real Kafka cluster: point the same
// clients and the same topic admin at that cluster's bootstrap addresses.
//
// # Durability
//
// A produce is acknowledged after the batch has been written to the segment
// file with write(2), so it is in the OS page cache. A killed process
// (SIGKILL, panic, OOM kill) therefore loses no acknowledged record: the
// kernel still writes the page cache back, and the next StartEmbedded on the
// same directory finds every record, committed offset and topic config (this
// is tested by killing a child process). A machine crash or power cut can lose
// records acknowledged since the last fsync; kfake fsyncs on segment roll and
// on Close. Set EmbeddedConfig.SyncWrites to fsync every produced batch and
// every group-log entry before the acknowledgement; it costs produce
// throughput (EmbeddedConfig.SyncWrites gives measured figures), and even
// then kfake does not fsync directories after creating or renaming files, so
// a power cut right after a new topic or segment is created can still lose
// it. A system of record that must survive power loss belongs on a
// replicated Kafka cluster.
//
// # Full disk
//
// StartEmbedded watches the free space of the filesystem holding DataDir
// with a diskguard.Guard (Embedded.DiskGuard): below
// EmbeddedConfig.MinFreeBytes the hub must refuse input, below
// EmbeddedConfig.HardMinFreeBytes it must stop routing and deliveries too,
// so that the broker never meets a full disk. The guard resumes by itself
// when space returns.
//
// If the broker still fails a write to its data directory, the guard trips
// until restart. A write that fails part-way through an entry of kfake's
// group log (committed offsets) or producer-ID log leaves a torn entry, and
// kfake appends later entries after it and discards them all at its next
// start (TestKfakeGroupLogTornEntry). The embedded broker cuts the torn
// entry as soon as kfake reports the failed write, before anything else is
// appended, and at start cuts a torn tail an earlier run left; if a torn
// entry cannot be cut, the guard goes critical, since every group write
// after it would be lost at an unclean restart. See statelog.go.
//
// # Topic admin
//
// EnsureTopics creates missing topics (an existing topic is left exactly as
// it is) and Offsets reads each partition's first and end offsets. Both use
// kafka-go's admin client only, so they work the same against the embedded
// broker and against a Kafka cluster. Topics that are a system of record
// (events, audit) should set "retention.ms": "-1"; topics holding the latest
// state per key should set "cleanup.policy": "compact".
//
//	err := broker.EnsureTopics(ctx, brokers, []broker.TopicSpec{
//		{Name: "care-events", Partitions: 6, Configs: map[string]string{"retention.ms": "-1"}},
//		{Name: "consent", Partitions: 1, Configs: map[string]string{"cleanup.policy": "compact", "retention.ms": "-1"}},
//	})
package broker
