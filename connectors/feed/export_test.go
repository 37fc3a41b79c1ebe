package feed

// Test-only helpers of MemoryFeed: the probe needs none of them.

// Acknowledged returns the highest number acknowledged.
func (f *MemoryFeed) Acknowledged() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acked
}

// Trim drops the entries numbered up to n, as retention does to the hub's
// feed: Oldest moves past them and reads from before it are Gone.
func (f *MemoryFeed) Trim(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n <= f.first {
		return
	}
	n = min(n, f.first+int64(len(f.entries)))
	f.entries = f.entries[n-f.first:]
	f.first = n
}

// Close closes Done and wakes every waiter.
func (f *MemoryFeed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.done:
	default:
		close(f.done)
		close(f.changed)
		f.changed = make(chan struct{})
	}
}
