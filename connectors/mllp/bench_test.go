package mllp

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
	"github.com/carehub/carehub/hub/broker"
	"github.com/carehub/carehub/hub/ingest"
	"github.com/carehub/carehub/hub/kafkawm"
	"github.com/carehub/carehub/hub/topic"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// benchNHS are valid test-range NHS numbers, one per connection, so that
// the connections' events land on different partitions as real patients'
// would.
var benchNHS = []string{"9991000003", "9991000011", "9991000038", "9991000046", "9991000054", "9991000062", "9991000070", "9991000089"}

// benchHub is the part of a hub an MLLP message goes through: an embedded
// broker on a free port, the real Ingest (validation, pseudonym, produce
// with acks=all) and this connector.
type benchHub struct {
	brokers []string
	in      connector.Ingest
	pub     *kafkawm.Publisher
	close   func()
}

func startBenchHub(b *testing.B) *benchHub {
	b.Helper()
	ctx := context.Background()
	emb, err := broker.StartEmbedded(ctx, broker.EmbeddedConfig{DataDir: b.TempDir(), Addr: "127.0.0.1:0", Partitions: 6})
	if err != nil {
		b.Fatal(err)
	}
	brokers := emb.Addrs()
	if err := broker.EnsureTopics(ctx, brokers, topic.Specs(6, 1, nil, topic.Retention{})); err != nil {
		b.Fatal(err)
	}
	pub, err := kafkawm.NewPublisher(kafkawm.PublisherConfig{Brokers: brokers}, kafkawm.NewLogger(zap.NewNop(), false))
	if err != nil {
		b.Fatal(err)
	}
	pseudo, err := nhs.NewPseudonymiser([]byte("bench-pseudonym-key-0123456789"))
	if err != nil {
		b.Fatal(err)
	}
	in, err := ingest.New(validator, pseudo, pub, ingest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return &benchHub{brokers: brokers, in: in, pub: pub, close: func() { pub.Close(); emb.Close() }}
}

// BenchmarkRoundTrip measures MLLP round trips - send, made durable in the
// embedded broker, ACK read - with 1 and 8 connections each waiting for its
// acknowledgement before sending the next message, as MLLP senders do. In
// the same run it measures the raw rate of the same broker for the same
// records, produced with kafka-go as the hub's publisher does (acks=all,
// one synchronous write per record per producer, 2 ms batch timeout), with
// 1 and 8 concurrent producers. Read msgs/s: the gap between "mllp" and
// "kafka-go" is the cost of parsing, mapping, validation and MLLP.
func BenchmarkRoundTrip(b *testing.B) {
	h := startBenchHub(b)
	defer h.close()
	payloadFor := func(conn, seq int) []byte {
		return adtMessage("A08", "B"+strconv.Itoa(conn)+"-"+strconv.Itoa(seq)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36), benchNHS[conn%len(benchNHS)])
	}
	mp, err := adt.NewMapper(adt.Options{Source: "RX1"})
	if err != nil {
		b.Fatal(err)
	}
	// The record the raw producer writes: the canonical event of the same
	// message, the same size as what the hub produces.
	m, _ := adt.Parse(payloadFor(0, 0))
	res, err := mp.Map(m)
	if err != nil {
		b.Fatal(err)
	}
	record := res.Events[0].JSON

	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("mllp/conns=%d", conns), func(b *testing.B) {
			src, err := New(Config{Addr: "127.0.0.1:0", Source: "RX1"})
			if err != nil {
				b.Fatal(err)
			}
			env := connector.Env{Ingest: h.in, Log: zap.NewNop()}
			if err := src.Register(env); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- src.Run(ctx, env) }()
			defer func() { cancel(); <-done }()

			clients := make([]net.Conn, conns)
			readers := make([]*frame.Reader, conns)
			for i := range clients {
				c, err := net.Dial("tcp", src.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				clients[i], readers[i] = c, frame.NewReader(c, frame.ReaderOptions{})
			}
			var next atomic.Int64
			var failed atomic.Value
			b.SetBytes(int64(len(payloadFor(0, 0))))
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := 0; i < conns; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					for {
						seq := next.Add(1)
						if seq > int64(b.N) {
							return
						}
						if err := frame.WriteFrame(clients[i], payloadFor(i, int(seq))); err != nil {
							failed.Store(err.Error())
							return
						}
						ack, err := readers[i].ReadFrame()
						if err != nil {
							failed.Store(err.Error())
							return
						}
						if len(ack) < 30 || !containsAA(ack) {
							failed.Store("not AA: " + string(ack))
							return
						}
					}
				}(i)
			}
			wg.Wait()
			b.StopTimer()
			if f := failed.Load(); f != nil {
				b.Fatal(f)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}

	for _, producers := range []int{1, 8} {
		b.Run(fmt.Sprintf("kafka-go/producers=%d", producers), func(b *testing.B) {
			w := &kafka.Writer{Addr: kafka.TCP(h.brokers...), Topic: topic.Events, Balancer: kafka.Murmur2Balancer{},
				BatchTimeout: kafkawm.DefaultBatchTimeout, RequiredAcks: kafka.RequireAll}
			defer w.Close()
			// Warm the writer's metadata outside the timer.
			if err := w.WriteMessages(context.Background(), kafka.Message{Key: []byte("warm"), Value: record}); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var failed atomic.Value
			b.SetBytes(int64(len(record)))
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := 0; i < producers; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					key := []byte("p1_bench" + strconv.Itoa(i))
					for next.Add(1) <= int64(b.N) {
						if err := w.WriteMessages(context.Background(), kafka.Message{Key: key, Value: record}); err != nil {
							failed.Store(err.Error())
							return
						}
					}
				}(i)
			}
			wg.Wait()
			b.StopTimer()
			if f := failed.Load(); f != nil {
				b.Fatal(f)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

func containsAA(ack []byte) bool {
	for i := 0; i+6 <= len(ack); i++ {
		if string(ack[i:i+6]) == "\rMSA|A" && i+7 < len(ack) && ack[i+6] == 'A' {
			return true
		}
	}
	return false
}
