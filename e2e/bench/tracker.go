package bench

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	chunkBits = 16
	chunkSize = 1 << chunkBits
	maxChunks = 1 << 12 // 268M events per phase
)

// evState is what the tracker knows of one event. Times are nanoseconds
// since the tracker's start (monotonic clock), 0 meaning "not yet".
type evState struct {
	accepted atomic.Int64
	got      [maxFanout]atomic.Int64
}

// tracker follows the events of one phase (hub or reference, one row):
// when each was accepted and when each intended recipient first received it.
// It is safe for concurrent use; the receivers and publishers update it
// without locks.
type tracker struct {
	prefix   string // event ids of this phase start with it
	pop      *Population
	intended []bool // per recipient: expected to receive in this phase
	start    time.Time

	chunks [maxChunks]atomic.Pointer[[chunkSize]evState]
	grow   sync.Mutex

	sent             atomic.Int64 // events handed to the publisher
	accepted         atomic.Int64 // events acknowledged (202 / broker ack)
	refused          atomic.Int64 // events the hub refused or a publish failed
	expectedSent     atomic.Int64 // intended deliveries of sent events
	expectedRefused  atomic.Int64 // intended deliveries of refused events
	expected         atomic.Int64 // intended deliveries of accepted events
	delivered        atomic.Int64 // first deliveries to intended recipients
	duplicates       atomic.Int64 // deliveries of an event a recipient already had
	misrouted        atomic.Int64 // deliveries to a recipient the event was not meant for
	badSignatures    atomic.Int64 // deliveries whose signature did not verify
	lastDelivery     atomic.Int64
	perRecipientGot  []atomic.Int64
	perRecipientWant []atomic.Int64
	nextSeq          atomic.Uint64
	// aliases maps event ids the bench did not choose (MLLP: the hub names
	// HL7 events itself) to sequence numbers.
	aliases sync.Map
}

func newTracker(prefix string, pop *Population, intended []bool) *tracker {
	t := &tracker{prefix: prefix, pop: pop, intended: intended, start: time.Now(),
		perRecipientGot:  make([]atomic.Int64, len(pop.Recipients)),
		perRecipientWant: make([]atomic.Int64, len(pop.Recipients)),
	}
	return t
}

// now is the time since the tracker started, never 0.
func (t *tracker) now() int64 {
	d := int64(time.Since(t.start))
	if d <= 0 {
		d = 1
	}
	return d
}

func (t *tracker) state(seq uint64, create bool) *evState {
	ci := seq >> chunkBits
	if ci >= maxChunks {
		return nil
	}
	c := t.chunks[ci].Load()
	if c == nil {
		if !create {
			return nil
		}
		t.grow.Lock()
		if c = t.chunks[ci].Load(); c == nil {
			c = new([chunkSize]evState)
			t.chunks[ci].Store(c)
		}
		t.grow.Unlock()
	}
	return &c[seq&(chunkSize-1)]
}

// intendedOf returns the recipients of seq that are expected to receive it
// in this phase.
func (t *tracker) intendedOf(seq uint64) plan {
	p := t.pop.planOf(seq)
	var out plan
	for i := 0; i < int(p.n); i++ {
		if t.intended[p.r[i]] {
			out.r[out.n] = p.r[i]
			out.n++
		}
	}
	return out
}

// take reserves n sequence numbers.
func (t *tracker) take(n int) uint64 {
	return t.nextSeq.Add(uint64(n)) - uint64(n)
}

// markSent is called before events seq..seq+n-1 are published.
func (t *tracker) markSent(seq uint64, n int) {
	var want int64
	for i := 0; i < n; i++ {
		want += int64(t.intendedOf(seq + uint64(i)).n)
	}
	t.expectedSent.Add(want)
	t.sent.Add(int64(n))
	// Allocate the states now, off the receivers' path.
	t.state(seq, true)
	t.state(seq+uint64(n)-1, true)
}

// markAccepted records that event seq was acknowledged at the time at.
func (t *tracker) markAccepted(seq uint64, at int64) {
	s := t.state(seq, true)
	if s == nil {
		return
	}
	s.accepted.Store(at)
	p := t.intendedOf(seq)
	for i := 0; i < int(p.n); i++ {
		t.perRecipientWant[p.r[i]].Add(1)
	}
	t.expected.Add(int64(p.n))
	t.accepted.Add(1)
}

// markRefused records that event seq was not accepted.
func (t *tracker) markRefused(seq uint64) {
	t.refused.Add(1)
	t.expectedRefused.Add(int64(t.intendedOf(seq).n))
}

// alias records that event seq will arrive with id.
func (t *tracker) alias(id string, seq uint64) { t.aliases.Store(id, seq) }

// seqOf returns the sequence number of an event id of this phase.
func (t *tracker) seqOf(id string) (uint64, bool) {
	rest, ok := strings.CutPrefix(id, t.prefix)
	if !ok {
		if v, ok := t.aliases.Load(id); ok {
			return v.(uint64), true
		}
		return 0, false
	}
	seq, err := strconv.ParseUint(rest, 10, 64)
	return seq, err == nil
}

// markDelivered records that recipient r received event id.
func (t *tracker) markDelivered(id string, r int) {
	seq, ok := t.seqOf(id)
	if !ok {
		return // another phase's straggler
	}
	now := t.now()
	p := t.pop.planOf(seq)
	slot := -1
	for i := 0; i < int(p.n); i++ {
		if int(p.r[i]) == r {
			slot = i
		}
	}
	s := t.state(seq, true)
	if slot < 0 || s == nil {
		t.misrouted.Add(1)
		return
	}
	if !s.got[slot].CompareAndSwap(0, now) {
		t.duplicates.Add(1)
		return
	}
	if !t.intended[r] {
		return
	}
	t.perRecipientGot[r].Add(1)
	t.delivered.Add(1)
	for {
		last := t.lastDelivery.Load()
		if now <= last || t.lastDelivery.CompareAndSwap(last, now) {
			break
		}
	}
}

// outstanding is the number of intended deliveries of sent events not yet
// made (nor refused).
func (t *tracker) outstanding() int64 {
	return t.expectedSent.Load() - t.expectedRefused.Load() - t.delivered.Load()
}

// done reports whether every accepted event reached every intended
// recipient (and nothing sent is still awaiting its acknowledgement).
func (t *tracker) done() bool {
	return t.sent.Load() == t.accepted.Load()+t.refused.Load() && t.delivered.Load() >= t.expected.Load()
}

// doneFor reports whether the recipients in rs got everything meant for them.
func (t *tracker) doneFor(rs []int) bool {
	if t.sent.Load() != t.accepted.Load()+t.refused.Load() {
		return false
	}
	for _, r := range rs {
		if t.perRecipientGot[r].Load() < t.perRecipientWant[r].Load() {
			return false
		}
	}
	return true
}

// outcome is what a phase measured.
type outcome struct {
	accepted, refused, delivered       int64
	duplicates, misrouted, badSig      int64
	lost, missing                      int64
	latencies                          []int64 // nanoseconds, sorted
	firstAccept, lastAccept, lastDeliv int64
	// perRecipient first/last delivery times (only for recipients asked for).
	first, last map[int]int64
}

// collect walks every event of the phase. only, when not nil, restricts the
// latency samples to deliveries to those recipients.
func (t *tracker) collect(only map[int]bool) outcome {
	o := outcome{
		accepted: t.accepted.Load(), refused: t.refused.Load(), delivered: t.delivered.Load(),
		duplicates: t.duplicates.Load(), misrouted: t.misrouted.Load(), badSig: t.badSignatures.Load(),
		first: map[int]int64{}, last: map[int]int64{},
	}
	n := t.nextSeq.Load()
	o.latencies = make([]int64, 0, o.delivered)
	for seq := uint64(0); seq < n; seq++ {
		s := t.state(seq, false)
		if s == nil {
			continue
		}
		acc := s.accepted.Load()
		if acc == 0 {
			continue
		}
		if o.firstAccept == 0 || acc < o.firstAccept {
			o.firstAccept = acc
		}
		if acc > o.lastAccept {
			o.lastAccept = acc
		}
		p := t.pop.planOf(seq)
		lost := false
		for i := 0; i < int(p.n); i++ {
			r := int(p.r[i])
			if !t.intended[r] {
				continue
			}
			got := s.got[i].Load()
			if got == 0 {
				lost = true
				o.missing++
				continue
			}
			if got > o.lastDeliv {
				o.lastDeliv = got
			}
			if f, ok := o.first[r]; !ok || got < f {
				o.first[r] = got
			}
			if got > o.last[r] {
				o.last[r] = got
			}
			if only != nil && !only[r] {
				continue
			}
			// A delivery can reach the receiver before the publisher has
			// read the acknowledgement: that is a latency of zero.
			o.latencies = append(o.latencies, max(0, got-acc))
		}
		if lost {
			o.lost++
		}
	}
	slices.Sort(o.latencies)
	return o
}

// percentile returns the q-quantile (0..1) of sorted samples, nearest rank.
func percentile(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
