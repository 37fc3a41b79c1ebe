package audit

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestApplied(t *testing.T) {
	ch := func(key, before, after string) *Change { return &Change{Key: key, Before: before, After: after} }
	now := map[string]string{"k1": "2", "k2": "1"}
	current := func(k string) string { return now[k] }
	tests := []struct {
		name    string
		changes []*Change
		want    []bool
	}{
		{"a change followed by another", []*Change{ch("k1", "0", "1"), ch("k1", "1", "2")}, []bool{true, true}},
		{"an attempt, then the change made again", []*Change{ch("k1", "0", "1"), ch("k1", "1", "x"), ch("k1", "1", "2")},
			[]bool{true, false, true}},
		{"the last change an attempt", []*Change{ch("k2", "0", "1"), ch("k2", "1", "3")}, []bool{true, false}},
		{"a later change followed only by an attempt", []*Change{ch("k1", "1", "2"), ch("k1", "2", "3")}, []bool{true, false}},
		{"not changes", []*Change{nil, ch("k1", "1", "2"), nil}, []bool{true, true, true}},
		{"keys apart", []*Change{ch("k1", "1", "2"), ch("k2", "2", "5")}, []bool{true, false}},
		{"an earlier change named by a later one only", []*Change{ch("k3", "none", "a"), ch("k3", "a", "b")}, []bool{true, false}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, Applied(tt.changes, current)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}
