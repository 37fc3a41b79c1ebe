package kafkawm

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/carehub/carehub/hub/broker"
)

// One embedded broker serves the whole test binary.
var (
	brokerMu      sync.Mutex
	testBroker    *broker.Embedded
	brokerDataDir string
	brokers       []string // fixed for the binary: restarts reuse the address
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kafkawm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	brokerDataDir = dir
	e, err := broker.StartEmbedded(context.Background(), broker.EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testBroker = e
	brokers = e.Addrs()
	defer func() {
		brokerMu.Lock()
		defer brokerMu.Unlock()
		testBroker.Close()
	}()
	return m.Run()
}

// restartBroker closes the embedded broker (flushing it to disk) and starts
// it again on the same address and data directory.
func restartBroker() error {
	brokerMu.Lock()
	defer brokerMu.Unlock()
	if err := testBroker.Close(); err != nil {
		return err
	}
	var err error
	for i := 0; i < 50; i++ { // the port can take a moment to be free again
		var e *broker.Embedded
		e, err = broker.StartEmbedded(context.Background(), broker.EmbeddedConfig{DataDir: brokerDataDir, Addr: brokers[0]})
		if err == nil {
			testBroker = e
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart broker: %w", err)
}
