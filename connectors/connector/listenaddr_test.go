package connector

import "testing"

func TestListenAddr(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:2575", true},
		{"0.0.0.0:0", true},
		{":2575", true},
		{"[::1]:2575", true},
		{"localhost:65535", true},
		{"nowhere", false},
		{"127.0.0.1:", false},
		{"127.0.0.1:mllp", false},
		{"127.0.0.1:65536", false},
		{"127.0.0.1:-1", false},
		{"127.0.0.1:+25", false},
		{"::1:2575", false},
	}
	for _, tc := range tests {
		if got := ListenAddr(tc.addr) == nil; got != tc.ok {
			t.Errorf("ListenAddr(%q): ok %v, want %v", tc.addr, got, tc.ok)
		}
	}
}
