package adt

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkParseAndMap parses and maps each test message in turn, as the
// MLLP connector does for every frame. The target is 50,000 messages a
// second on one core (20 µs each): run with -cpu 1 and read msgs/s.
func BenchmarkParseAndMap(b *testing.B) {
	files, _ := filepath.Glob("testdata/*.hl7")
	var payloads [][]byte
	size := 0
	for _, f := range files {
		p, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		payloads = append(payloads, p)
		size += len(p)
	}
	mp := newTestMapper(b)
	b.SetBytes(int64(size / len(payloads)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m, err := Parse(payloads[i%len(payloads)])
		if err != nil {
			b.Fatal(err)
		}
		if _, err := mp.Map(m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkMapA01 maps one parsed admission (the parse excluded).
func BenchmarkMapA01(b *testing.B) {
	p, err := os.ReadFile("testdata/adt_a01.hl7")
	if err != nil {
		b.Fatal(err)
	}
	m, err := Parse(p)
	if err != nil {
		b.Fatal(err)
	}
	mp := newTestMapper(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := mp.Map(m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
