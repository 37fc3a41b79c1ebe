package mllp

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp/hl7"
	"go.uber.org/zap"
)

// FuzzHandle feeds payloads straight to the per-message path (parse,
// authenticate, map, publish, acknowledge). Whatever arrives, the answer is
// nothing (enhanced mode asked for none) or one acknowledgement that parses,
// is an ACK, and whose MSA-2 echoes the message's MSH-10 when it has one
// (without the bytes that are not UTF-8 when the message declares UTF-8: the
// acknowledgement must parse).
func FuzzHandle(f *testing.F) {
	for _, pattern := range []string{"hl7/adt/testdata/*.hl7", "hl7/adt/testdata/invalid/*.hl7", "hl7/adt/testdata/corpus/*.hl7"} {
		files, _ := filepath.Glob(pattern)
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Add(adtMessage("A01", "F-1", "9991000003", "AL", "AL"))
	f.Add([]byte("MSH|^~\\&|"))
	src, err := New(Config{Addr: "127.0.0.1:0", Source: "RX1"})
	if err != nil {
		f.Fatal(err)
	}
	src.env = connector.Env{Ingest: &fakeIngest{}}
	log := zap.NewNop()
	f.Fuzz(func(t *testing.T, payload []byte) {
		ack := src.handle(context.Background(), payload, log)
		if ack == nil {
			return
		}
		m, err := hl7.Parse(ack)
		if err != nil {
			t.Fatalf("the acknowledgement does not parse: %v\n%q", err, ack)
		}
		if m.Type().Code != "ACK" || m.Segment("MSA") == nil {
			t.Fatalf("not an acknowledgement: %q", ack)
		}
		if orig, err := hl7.ParseHeader(payload); err == nil {
			if got, want := m.Segment("MSA").Field(2).Raw(), orig.Segment("MSH").Field(10).Raw(); got != want && !containsControl(want) && got != strings.ToValidUTF8(want, "") {
				t.Fatalf("MSA-2 %q, want %q", got, want)
			}
		}
	})
}

func containsControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}
