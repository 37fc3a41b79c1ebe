package hub

import (
	"sync"
	"testing"
	"time"
)

// TestFeedsCloseAtOnce pins a bug found by "carehub bench --scenario
// longpoll": a hub with 100 pull recipients took about 20 s to stop, because
// each feed's Close (which waits for its tailer's kafka-go fetch to end) ran
// after the previous one. closeAll must run them at once: here each close
// returns only once every close has begun, which one after another never
// happens.
func TestFeedsCloseAtOnce(t *testing.T) {
	const n = 20
	var entered sync.WaitGroup
	entered.Add(n)
	all := make(chan struct{})
	go func() { entered.Wait(); close(all) }()
	stuck := make(chan struct{})
	closers := make([]func(), n)
	for i := range closers {
		closers[i] = func() {
			entered.Done()
			select {
			case <-all:
			case <-stuck:
			}
		}
	}
	done := make(chan struct{})
	go func() { closeAll(closers); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		close(stuck) // let them return: the closes ran one at a time
		<-done
		t.Fatal("closeAll ran the closes one after another: each waited for the others to begin")
	}
}
