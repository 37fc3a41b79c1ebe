package held

import (
	"errors"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

func rec(id, source, reason string, minute int, part int, off int64) Located {
	return Located{Record: Record{ID: id, Source: source, Reason: reason, Trigger: "ADT^A15", Received: t0.Add(time.Duration(minute) * time.Minute),
		Patient: "p1_x", ContentType: "x-application/hl7-v2+er7", Original: []byte("MSH|" + id)}, Partition: part, Offset: off}
}

func ids(p Page) []string {
	var out []string
	for _, it := range p.Items {
		out = append(out, it.ID)
	}
	return out
}

func TestListPagesNewestFirstAndFilters(t *testing.T) {
	recs := []Located{
		rec("a", "RX1", "no-nhs-number", 1, 0, 0),
		rec("b", "RX1", "trigger-not-shared", 2, 1, 0),
		rec("c", "RX2", "trigger-not-shared", 3, 0, 1),
		rec("d", "RX1", "trigger-not-shared", 4, 1, 1),
		rec("b", "RX1", "trigger-not-shared", 5, 0, 2), // b resent after a restart: listed once, at its first record
		rec("b", "RX2", "trigger-not-shared", 6, 1, 2), // the same id from another source is another message
	}
	tests := []struct {
		name  string
		q     Query
		want  []string
		total int
	}{
		{"all", Query{}, []string{"b", "d", "c", "b", "a"}, 5},
		{"by source", Query{Source: "RX1"}, []string{"d", "b", "a"}, 3},
		{"by reason", Query{Reason: "no-nhs-number"}, []string{"a"}, 1},
		{"both", Query{Source: "RX2", Reason: "trigger-not-shared"}, []string{"b", "c"}, 2},
		{"none", Query{Source: "RX9"}, nil, 0},
	}
	for _, tt := range tests {
		p, err := List(recs, tt.q)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(p); !slices.Equal(got, tt.want) || p.Total != tt.total || p.Next != "" {
			t.Errorf("%s:\n\tgot  %v total %d next %q\n\twant %v total %d", tt.name, got, p.Total, p.Next, tt.want, tt.total)
		}
		for _, it := range p.Items {
			if it.Message != "" || it.MessageBase64 != "" {
				t.Errorf("%s: a listing carries the message without being asked", tt.name)
			}
		}
	}

	// Pages of two, following the cursor, give the same order.
	var got []string
	q := Query{Limit: 2}
	for i := 0; i < 10; i++ {
		p, err := List(recs, q)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids(p)...)
		if p.Next == "" {
			break
		}
		q.After = p.Next
	}
	if want := []string{"b", "d", "c", "b", "a"}; !slices.Equal(got, want) {
		t.Errorf("paged: got %v, want %v", got, want)
	}

	if _, err := List(recs, Query{After: "not-a-cursor!"}); !errors.Is(err, ErrCursor) {
		t.Errorf("a bad cursor: got %v, want ErrCursor", err)
	}
}

func TestListWithMessage(t *testing.T) {
	bin := rec("z", "RX1", "no-nhs-number", 1, 0, 0)
	bin.Original = []byte{'M', 'S', 'H', 0xff, 0xfe}
	p, err := List([]Located{rec("a", "RX1", "no-nhs-number", 2, 0, 1), bin}, Query{WithMessage: true})
	if err != nil {
		t.Fatal(err)
	}
	if p.Items[0].Message != "MSH|a" || p.Items[0].MessageBase64 != "" {
		t.Errorf("text message: %+v", p.Items[0])
	}
	if p.Items[1].Message != "" || p.Items[1].MessageBase64 != "TVNI//4=" {
		t.Errorf("a message that is not UTF-8 is given in base64: %+v", p.Items[1])
	}
}

func TestCount(t *testing.T) {
	c := Count([]Located{
		rec("a", "RX1", "no-nhs-number", 1, 0, 0),
		rec("b", "RX1", "trigger-not-shared", 2, 0, 1),
		rec("b", "RX1", "trigger-not-shared", 3, 0, 2),
		rec("c", "RX2", "trigger-not-shared", 4, 1, 0),
	})
	if c.Total != 3 || c.ByReason["trigger-not-shared"] != 2 || c.ByReason["no-nhs-number"] != 1 || c.BySource["RX1"] != 2 || c.BySource["RX2"] != 1 {
		t.Errorf("Count: %+v", c)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r := rec("a", "RX1", "no-nhs-number", 1, 0, 0).Record
	got, err := Unmarshal(r.Marshal())
	if err != nil || got.ID != r.ID || string(got.Original) != string(r.Original) || !got.Received.Equal(r.Received) {
		t.Errorf("round trip: %+v, %v", got, err)
	}
}
