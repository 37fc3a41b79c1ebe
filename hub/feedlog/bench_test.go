package feedlog_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// BenchmarkAppend: appends per second to one feed (acks from all replicas,
// deduplication and the tailer's catch-up included).
func BenchmarkAppend(b *testing.B) {
	brokers := startBroker(b)
	l := open(b, brokers)
	defer l.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := l.Append(ctx, delivery(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFeedRead compares reading a feed, to 1 and to 100 concurrent
// long-polling readers each reading every event, with consuming the same
// topic raw with kafka-go, in the same run. Reported: events per second
// delivered to readers (ev/s) and the wake-up latency from Append's return
// to a waiting reader holding the event (p50 wake).
func BenchmarkFeedRead(b *testing.B) {
	for _, readers := range []int{1, 100} {
		b.Run(map[int]string{1: "readers=1", 100: "readers=100"}[readers], func(b *testing.B) {
			brokers := startBroker(b)
			w := open(b, brokers)
			defer w.Close()
			r := open(b, brokers)
			defer r.Close()
			ctx := context.Background()
			n := b.N
			var wg sync.WaitGroup
			var mu sync.Mutex
			var wakes []time.Duration
			appended := make([]time.Time, n+1)
			b.ResetTimer()
			start := time.Now()
			for range readers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					after := int64(0)
					for after < int64(n) {
						<-r.Changed(after)
						p, err := r.Read(ctx, after, 100)
						if err != nil {
							b.Error(err)
							return
						}
						now := time.Now()
						for _, e := range p.Entries {
							mu.Lock()
							if at := appended[e.Number]; !at.IsZero() {
								wakes = append(wakes, now.Sub(at))
							}
							mu.Unlock()
							after = e.Number
						}
					}
				}()
			}
			for i := 1; i <= n; i++ {
				if _, err := w.Append(ctx, delivery(i)); err != nil {
					b.Fatal(err)
				}
				mu.Lock()
				appended[i] = time.Now()
				mu.Unlock()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.ReportMetric(float64(n*readers)/elapsed.Seconds(), "ev/s")
			if len(wakes) > 0 {
				mu.Lock()
				slicesSort(wakes)
				b.ReportMetric(float64(wakes[len(wakes)/2].Microseconds()), "µs-p50-wake")
				b.ReportMetric(float64(wakes[len(wakes)*99/100].Microseconds()), "µs-p99-wake")
				mu.Unlock()
			}
			// The raw broker consume rate of the same topic, for comparison.
			rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: "carehub.feed.b82005", Partition: 0, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 50 * time.Millisecond})
			defer rd.Close()
			rs := time.Now()
			for i := 0; i < n; i++ {
				if _, err := rd.ReadMessage(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)/time.Since(rs).Seconds(), "raw-ev/s")
		})
	}
}

func slicesSort(d []time.Duration) { slices.Sort(d) }
