package broker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

func startTest(t *testing.T, dir string) *Embedded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := StartEmbedded(ctx, EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newWriter(addrs []string) *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(addrs...),
		Balancer:     kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 2 * time.Millisecond,
		Transport:    &kafka.Transport{},
	}
}

func produce(t *testing.T, addrs []string, topic string, from, n int) {
	t.Helper()
	w := newWriter(addrs)
	defer w.Close()
	msgs := make([]kafka.Message, 0, n)
	for i := from; i < from+n; i++ {
		msgs = append(msgs, kafka.Message{Topic: topic, Key: []byte("k" + strconv.Itoa(i%7)), Value: []byte("v" + strconv.Itoa(i))})
	}
	if err := w.WriteMessages(testCtx(t), msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// readAll reads every record of a single-partition topic from offset 0 until
// the end offset and returns the values in order.
func readAll(t *testing.T, addrs []string, topic string) []string {
	t.Helper()
	ctx := testCtx(t)
	_, ends, err := Offsets(ctx, addrs, topic)
	if err != nil {
		t.Fatalf("Offsets: %v", err)
	}
	var out []string
	for p, end := range ends {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: addrs, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		if err := r.SetOffset(0); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("read %s/%d: %v", topic, p, err)
			}
			out = append(out, string(m.Value))
			if m.Offset+1 >= end {
				break
			}
		}
		r.Close()
	}
	return out
}

func committedOffset(t *testing.T, addrs []string, group, topic string, partition int) int64 {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(addrs...), Transport: tr}
	resp, err := c.OffsetFetch(testCtx(t), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {partition}}})
	if err != nil {
		t.Fatalf("OffsetFetch: %v", err)
	}
	for _, p := range resp.Topics[topic] {
		if p.Partition == partition {
			if p.Error != nil {
				t.Fatalf("OffsetFetch partition: %v", p.Error)
			}
			return p.CommittedOffset
		}
	}
	t.Fatalf("OffsetFetch: no answer for %s/%d", topic, partition)
	return 0
}

// commitOffset commits offset for group on topic/partition through a real
// consumer-group generation, as a consumer would.
func commitOffset(t *testing.T, addrs []string, group, topic string, offset int64) {
	t.Helper()
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: group, Brokers: addrs, Topics: []string{topic},
		HeartbeatInterval: 200 * time.Millisecond, SessionTimeout: 6 * time.Second, RebalanceTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	gen, err := cg.Next(testCtx(t))
	if err != nil {
		t.Fatalf("consumer group Next: %v", err)
	}
	if err := gen.CommitOffsets(map[string]map[int]int64{topic: {0: offset}}); err != nil {
		t.Fatalf("CommitOffsets: %v", err)
	}
}

func topicConfigs(t *testing.T, addrs []string, topic string, names ...string) map[string]string {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(addrs...), Transport: tr}
	resp, err := c.DescribeConfigs(testCtx(t), &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: names,
	}}})
	if err != nil {
		t.Fatalf("DescribeConfigs: %v", err)
	}
	out := map[string]string{}
	for _, r := range resp.Resources {
		if r.Error != nil {
			t.Fatalf("DescribeConfigs %s: %v", topic, r.Error)
		}
		for _, e := range r.ConfigEntries {
			out[e.ConfigName] = e.ConfigValue
		}
	}
	return out
}

func TestLockConflict(t *testing.T) {
	dir := t.TempDir()
	e1 := startTest(t, dir)

	_, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"})
	if err == nil {
		t.Fatal("second StartEmbedded on a locked data directory succeeded")
	}
	want := fmt.Sprintf("data directory %s is in use by another carehub (lock held)", dir)
	if err.Error() != want {
		t.Fatalf("error = %q, want %q", err, want)
	}

	if err := e1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	e2 := startTest(t, dir)
	if len(e2.Addrs()) != 1 || !strings.HasPrefix(e2.Addrs()[0], "127.0.0.1:") {
		t.Fatalf("Addrs = %v, want one 127.0.0.1 address", e2.Addrs())
	}
}

func TestStartEmbeddedValidation(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []EmbeddedConfig{
		{},
		{DataDir: t.TempDir(), Addr: "0.0.0.0:0"},
		{DataDir: t.TempDir(), Addr: "127.0.0.1"},
		{DataDir: t.TempDir(), Addr: "127.0.0.1:99999"},
	} {
		if e, err := StartEmbedded(ctx, cfg); err == nil {
			e.Close()
			t.Errorf("StartEmbedded(%+v) succeeded, want error", cfg)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := StartEmbedded(cctx, EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0"}); !errors.Is(err, context.Canceled) {
		t.Errorf("StartEmbedded with cancelled ctx: %v, want context.Canceled", err)
	}
}

func TestListensOnConfiguredHost(t *testing.T) {
	// 127.0.0.2 is loopback on Linux but is not where kfake listens by
	// default; the broker must listen and advertise exactly what we asked.
	dir := t.TempDir()
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.2:0"})
	if err != nil {
		if runtime.GOOS == "linux" { // all of 127/8 is loopback on Linux, and CI runs Linux
			t.Fatalf("listening on 127.0.0.2: %v", err)
		}
		t.Skipf("127.0.0.2 is not a loopback address on %s: %v", runtime.GOOS, err)
	}
	defer e.Close()
	if !strings.HasPrefix(e.Addrs()[0], "127.0.0.2:") {
		t.Fatalf("Addrs = %v", e.Addrs())
	}
	ctx := testCtx(t)
	if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{{Name: "t", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	produce(t, e.Addrs(), "t", 0, 3)
	if got := readAll(t, e.Addrs(), "t"); len(got) != 3 {
		t.Fatalf("read %d records, want 3", len(got))
	}
}

func TestPersistenceAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	e := startTest(t, dir)
	ctx := testCtx(t)
	specs := []TopicSpec{{Name: "events", Partitions: 1, Configs: map[string]string{"retention.ms": "-1"}}}
	if err := EnsureTopics(ctx, e.Addrs(), specs); err != nil {
		t.Fatal(err)
	}
	produce(t, e.Addrs(), "events", 0, 100)
	commitOffset(t, e.Addrs(), "g1", "events", 42)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := startTest(t, dir)
	got := readAll(t, e2.Addrs(), "events")
	if len(got) != 100 || got[0] != "v0" || got[99] != "v99" {
		t.Fatalf("after restart read %d records (first %q)", len(got), first(got))
	}
	if off := committedOffset(t, e2.Addrs(), "g1", "events", 0); off != 42 {
		t.Fatalf("committed offset after restart = %d, want 42", off)
	}
	if cfg := topicConfigs(t, e2.Addrs(), "events", "retention.ms"); cfg["retention.ms"] != "-1" {
		t.Fatalf("retention.ms after restart = %q", cfg["retention.ms"])
	}
	// The log continues where it stopped.
	produce(t, e2.Addrs(), "events", 100, 1)
	_, ends, err := Offsets(ctx, e2.Addrs(), "events")
	if err != nil {
		t.Fatal(err)
	}
	if ends[0] != 101 {
		t.Fatalf("end offset = %d, want 101", ends[0])
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// crashChild is TestCrashPersistence in its child process: it starts the
// broker, writes and commits, reports, then waits to be killed.
func crashChild(t *testing.T, dir string) {
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	ctx := context.Background()
	if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{
		{Name: "events", Partitions: 1, Configs: map[string]string{"retention.ms": "-1"}},
		{Name: "consent", Partitions: 1, Configs: map[string]string{"cleanup.policy": "compact"}},
	}); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	produce(t, e.Addrs(), "events", 0, 500)
	// One more acknowledged write on its own, the last thing before the kill.
	produce(t, e.Addrs(), "events", 500, 1)
	commitOffset(t, e.Addrs(), "g1", "events", 250)
	fmt.Println("READY")
	select {} // wait for SIGKILL; never Close
}

// TestCrashPersistence runs itself again as a child process (crashChild),
// SIGKILLs it once it has written, and reads back what it acknowledged.
func TestCrashPersistence(t *testing.T) {
	if dir := os.Getenv("CAREHUB_BROKER_CRASH_DIR"); dir != "" {
		crashChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashPersistence$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CAREHUB_BROKER_CRASH_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if line == "READY" || strings.HasPrefix(line, "ERROR") {
				ready <- line
				return
			}
		}
		ready <- "EOF"
	}()
	select {
	case line := <-ready:
		if line != "READY" {
			_ = cmd.Process.Kill()
			t.Fatalf("helper: %s", line)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("helper did not get ready")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// The kernel released the dead process's lock.
	e := startTest(t, dir)
	got := readAll(t, e.Addrs(), "events")
	if len(got) != 501 || got[500] != "v500" {
		t.Fatalf("after SIGKILL read %d of 501 acknowledged records", len(got))
	}
	if off := committedOffset(t, e.Addrs(), "g1", "events", 0); off != 250 {
		t.Fatalf("committed offset after SIGKILL = %d, want 250", off)
	}
	cfg := topicConfigs(t, e.Addrs(), "consent", "cleanup.policy")
	if cfg["cleanup.policy"] != "compact" {
		t.Fatalf("cleanup.policy after SIGKILL = %q", cfg["cleanup.policy"])
	}
}

func TestEnsureTopics(t *testing.T) {
	e := startTest(t, t.TempDir())
	ctx := testCtx(t)
	specs := []TopicSpec{
		{Name: "audit", Partitions: 3, Configs: map[string]string{"retention.ms": "-1"}},
		{Name: "consent", Partitions: 1, Configs: map[string]string{"cleanup.policy": "compact", "retention.ms": "-1"}},
		{Name: "defaulted"},
	}
	if err := EnsureTopics(ctx, e.Addrs(), specs); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	// Idempotent: a second run (even with different settings) succeeds and
	// changes nothing.
	changed := []TopicSpec{{Name: "audit", Partitions: 5, Configs: map[string]string{"retention.ms": "1000"}}}
	if err := EnsureTopics(ctx, e.Addrs(), append(changed, specs[1:]...)); err != nil {
		t.Fatalf("EnsureTopics again: %v", err)
	}
	if got := topicConfigs(t, e.Addrs(), "audit", "retention.ms"); got["retention.ms"] != "-1" {
		t.Errorf("audit retention.ms = %q, want -1", got["retention.ms"])
	}
	got := topicConfigs(t, e.Addrs(), "consent", "cleanup.policy", "retention.ms")
	if got["cleanup.policy"] != "compact" || got["retention.ms"] != "-1" {
		t.Errorf("consent configs = %v", got)
	}
	_, ends, err := Offsets(ctx, e.Addrs(), "audit")
	if err != nil {
		t.Fatal(err)
	}
	if len(ends) != 3 {
		t.Errorf("audit has %d partitions, want 3 (left as created)", len(ends))
	}
	_, ends, err = Offsets(ctx, e.Addrs(), "defaulted")
	if err != nil {
		t.Fatal(err)
	}
	if len(ends) != 1 {
		t.Errorf("defaulted has %d partitions, want the embedded default 1", len(ends))
	}

	// Failures name their topics; good topics in the same call are created.
	err = EnsureTopics(ctx, e.Addrs(), []TopicSpec{
		{Name: "too-replicated", Partitions: 1, ReplicationFactor: 3},
		{Name: "fine", Partitions: 1},
	})
	if err == nil || !strings.Contains(err.Error(), `"too-replicated"`) || strings.Contains(err.Error(), `"fine"`) {
		t.Fatalf("EnsureTopics error = %v, want one naming too-replicated only", err)
	}
	if !errors.Is(err, kafka.InvalidReplicationFactor) {
		t.Errorf("error does not wrap InvalidReplicationFactor: %v", err)
	}
	if _, _, err := Offsets(ctx, e.Addrs(), "fine"); err != nil {
		t.Errorf("topic fine not created: %v", err)
	}
	if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{{Name: "x"}, {Name: "x"}}); err == nil {
		t.Error("duplicate spec accepted")
	}
	if err := EnsureTopics(ctx, nil, specs); err == nil {
		t.Error("no brokers accepted")
	}
}

func TestOffsets(t *testing.T) {
	e := startTest(t, t.TempDir())
	ctx := testCtx(t)
	if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{{Name: "t", Partitions: 4}}); err != nil {
		t.Fatal(err)
	}
	firsts, ends, err := Offsets(ctx, e.Addrs(), "t")
	if err != nil {
		t.Fatal(err)
	}
	for p := 0; p < 4; p++ {
		if v, ok := ends[p]; !ok || v != 0 {
			t.Fatalf("empty topic end offsets = %v", ends)
		}
		if v, ok := firsts[p]; !ok || v != 0 {
			t.Fatalf("empty topic first offsets = %v", firsts)
		}
	}
	produce(t, e.Addrs(), "t", 0, 70)
	firsts, ends, err = Offsets(ctx, e.Addrs(), "t")
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for p, v := range ends {
		sum += v
		if firsts[p] != 0 {
			t.Errorf("partition %d starts at %d, want 0 (nothing deleted)", p, firsts[p])
		}
	}
	if sum != 70 {
		t.Fatalf("end offsets %v sum to %d, want 70", ends, sum)
	}
	if _, _, err := Offsets(ctx, e.Addrs(), "missing"); !errors.Is(err, kafka.UnknownTopicOrPartition) {
		t.Fatalf("missing topic: %v", err)
	}
}

// TestMeasureSyncWrites measures what EmbeddedConfig.SyncWrites costs. It
// asserts nothing beyond success; run with -v to see the figures.
func TestMeasureSyncWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	payload := strings.Repeat("x", 200)
	for _, sync := range []bool{false, true} {
		e, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: t.TempDir(), Addr: "127.0.0.1:0", SyncWrites: sync})
		if err != nil {
			t.Fatal(err)
		}
		ctx := testCtx(t)
		if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{{Name: "m", Partitions: 1}}); err != nil {
			t.Fatal(err)
		}
		w := newWriter(e.Addrs())
		// BatchSize 1: each lone write is sent at once, so the figure is
		// the round trip plus the broker's write (and fsync), not the
		// writer's BatchTimeout.
		w.BatchSize = 1
		// Warm up connections and metadata.
		if err := w.WriteMessages(ctx, kafka.Message{Topic: "m", Value: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
		const single = 200
		start := time.Now()
		for i := 0; i < single; i++ {
			if err := w.WriteMessages(ctx, kafka.Message{Topic: "m", Value: []byte(payload)}); err != nil {
				t.Fatal(err)
			}
		}
		perSingle := time.Since(start) / single

		w.BatchSize = 1000
		const batches, batchLen = 20, 1000
		batch := make([]kafka.Message, batchLen)
		for i := range batch {
			batch[i] = kafka.Message{Topic: "m", Value: []byte(payload)}
		}
		start = time.Now()
		for i := 0; i < batches; i++ {
			if err := w.WriteMessages(ctx, batch...); err != nil {
				t.Fatal(err)
			}
		}
		batched := time.Since(start)
		w.Close()
		e.Close()
		t.Logf("SyncWrites=%v: one record per WriteMessages %v each; %d records in batches of %d: %v (%.0f records/s)",
			sync, perSingle, batches*batchLen, batchLen, batched, float64(batches*batchLen)/batched.Seconds())
	}
}

// TestPing answers nil while the broker serves the topic, and a reason
// safe to show once it is gone.
func TestPing(t *testing.T) {
	e := startTest(t, t.TempDir())
	ctx := testCtx(t)
	if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{{Name: "events", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := Ping(ctx, e.Addrs(), "events"); err != nil {
		t.Errorf("Ping with the broker up: %v", err)
	}
	if err := Ping(ctx, e.Addrs(), "missing"); err == nil {
		t.Error("Ping for a topic that does not exist: no error")
	}
	addrs := e.Addrs()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	err := Ping(ctx, addrs, "events")
	if err == nil || !strings.Contains(err.Error(), "no broker answered") {
		t.Errorf("Ping with the broker gone: got %v", err)
	}
}

// TestRaiseTopicConfigsNeverLowersRetention pins gate review 5 (3): every
// start set carehub.accepted's retention.ms to its own window, so a process
// started with a shorter window cut the records the others still relied
// on. The retention is now only raised: a longer one is left as is.
func TestRaiseTopicConfigsNeverLowersRetention(t *testing.T) {
	ctx := testCtx(t)
	e := startTest(t, t.TempDir())
	for _, tc := range []struct {
		name, had, want string
	}{
		{"longer is kept", "7200000", "7200000"},
		{"for ever is kept", "-1", "-1"},
		{"shorter is raised", "1000", "3600000"},
		{"equal stays", "3600000", "3600000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "acc-" + strings.NewReplacer(" ", "-").Replace(tc.name)
			if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{{Name: name, Partitions: 1, Configs: map[string]string{"retention.ms": tc.had, "cleanup.policy": "compact"}}}); err != nil {
				t.Fatal(err)
			}
			if err := RaiseTopicConfigs(ctx, e.Addrs(), name, map[string]string{"retention.ms": "3600000", "cleanup.policy": "delete"}); err != nil {
				t.Fatal(err)
			}
			got := topicConfigs(t, e.Addrs(), name, "retention.ms", "cleanup.policy")
			if got["retention.ms"] != tc.want || got["cleanup.policy"] != "delete" {
				t.Fatalf("configs = %v, want retention.ms %s and cleanup.policy delete", got, tc.want)
			}
		})
	}
}

func TestEndOffset(t *testing.T) {
	ctx := testCtx(t)
	e := startTest(t, t.TempDir())
	if err := EnsureTopics(ctx, e.Addrs(), []TopicSpec{{Name: "eo", Partitions: 2}}); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(e.Addrs()...), Topic: "eo", Balancer: kafka.BalancerFunc(func(kafka.Message, ...int) int { return 1 }), RequiredAcks: kafka.RequireAll}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("a")}, kafka.Message{Value: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	end0, err := EndOffset(ctx, e.Addrs(), "eo", 0)
	if err != nil {
		t.Fatal(err)
	}
	_, end, err := Offsets(ctx, e.Addrs(), "eo")
	if err != nil {
		t.Fatal(err)
	}
	var end1 int64
	if end1, err = EndOffset(ctx, e.Addrs(), "eo", 1); err != nil {
		t.Fatal(err)
	}
	if end0 != end[0] || end1 != end[1] || end0 != 0 || end1 != 2 {
		t.Fatalf("EndOffset = %d, %d; Offsets end = %v; want them equal, 2 records in all", end0, end1, end)
	}
}
