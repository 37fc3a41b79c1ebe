package directory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
)

// Outcomes of one number of a list change.
const (
	Added         = "added"
	AlreadyOnList = "already-on-list"
	Removed       = "removed"
	NotOnList     = "not-on-list"
)

// ListItem is what a list change did with one number of the request: the
// index of the number in its array (add or remove), the patient's
// pseudonym (as deliveries carry it, in carehub-patient), and the outcome.
// It never holds the number.
type ListItem struct {
	Op      string `json:"op"` // add or remove
	Index   int    `json:"index"`
	Patient string `json:"patient"`
	Outcome string `json:"outcome"`
}

// ListResult is what a list change did.
type ListResult struct {
	Recipient string     `json:"recipient"`
	Added     int        `json:"added"`
	Removed   int        `json:"removed"`
	Unchanged int        `json:"unchanged"`
	Count     int        `json:"count"` // patients on the list now
	Items     []ListItem `json:"items,omitempty"`
}

// ChangeList adds patients to and removes patients from a recipient's
// list, made by actor, and audits each patient added or removed (a
// list-change record keyed by the patient's pseudonym). Adding a patient
// on the list, or removing one who is not, changes nothing. A number both
// added and removed is refused.
func (d *Directory) ChangeList(ctx context.Context, ods string, add, remove []nhs.Number, actor string) (ListResult, error) {
	seen := map[nhs.Number]int{}
	for i, n := range add {
		seen[n] = i
	}
	for i, n := range remove {
		if _, both := seen[n]; both {
			return ListResult{}, problem.Violated("/remove/"+strconv.Itoa(i), "patient-list-both", "a number is both added and removed")
		}
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.listOwner(ctx, ods); err != nil {
		return ListResult{}, err
	}
	on := d.memberSet(ods)
	res := ListResult{Recipient: ods}
	var adds, removes []string
	for i, n := range add {
		p := d.cfg.Pseudonym(n)
		item := ListItem{Op: "add", Index: i, Patient: p, Outcome: AlreadyOnList}
		if !on[p] {
			on[p], item.Outcome = true, Added
			adds = append(adds, p)
		}
		res.Items = append(res.Items, item)
	}
	for i, n := range remove {
		p := d.cfg.Pseudonym(n)
		item := ListItem{Op: "remove", Index: i, Patient: p, Outcome: NotOnList}
		if on[p] {
			delete(on, p)
			item.Outcome = Removed
			removes = append(removes, p)
		}
		res.Items = append(res.Items, item)
	}
	if err := d.writeList(ctx, ods, adds, removes, actor, nil); err != nil {
		return ListResult{}, err
	}
	res.Added, res.Removed, res.Unchanged = len(adds), len(removes), len(add)+len(remove)-len(adds)-len(removes)
	res.Count = d.count(ods)
	return res, nil
}

// ReplaceList makes numbers the recipient's whole list: those not on it
// are added, those on it and not in numbers removed, each audited.
func (d *Directory) ReplaceList(ctx context.Context, ods string, numbers []nhs.Number, actor string) (ListResult, error) {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.listOwner(ctx, ods); err != nil {
		return ListResult{}, err
	}
	return d.replace(ctx, ods, numbers, actor, nil)
}

// replace writes the difference between the list and numbers. d.writeMu
// must be held and the directory synced.
func (d *Directory) replace(ctx context.Context, ods string, numbers []nhs.Number, actor string, extra *kafka.Message) (ListResult, error) {
	on := d.memberSet(ods)
	want := map[string]bool{}
	var adds, removes []string
	for _, n := range numbers {
		p := d.cfg.Pseudonym(n)
		if want[p] {
			continue
		}
		want[p] = true
		if !on[p] {
			adds = append(adds, p)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(on)) {
		if !want[p] {
			removes = append(removes, p)
		}
	}
	if err := d.writeList(ctx, ods, adds, removes, actor, extra); err != nil {
		return ListResult{}, err
	}
	return ListResult{Recipient: ods, Added: len(adds), Removed: len(removes), Unchanged: len(want) - len(adds), Count: d.count(ods)}, nil
}

// listOwner syncs and checks that the recipient exists. d.writeMu must be
// held.
func (d *Directory) listOwner(ctx context.Context, ods string) error {
	if err := d.Sync(ctx); err != nil {
		return unavailable(err)
	}
	if st := d.state(ods); st == nil || st.deleted {
		return problem.New(problem.NotFound, "there is no recipient "+ods)
	}
	return nil
}

func (d *Directory) memberSet(ods string) map[string]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	on := map[string]bool{}
	if l := d.lists[ods]; l != nil {
		for p := range l.members {
			on[p] = true
		}
	}
	return on
}

func (d *Directory) count(ods string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.lists[ods]; l != nil {
		return len(l.members)
	}
	return 0
}

// writeList writes the audit records of the members added and removed,
// then the members (and extra), and waits until they are applied. The
// audit records come first (see Audit in the package documentation): if
// the members' write fails, those that are not in the topic were attempts.
func (d *Directory) writeList(ctx context.Context, ods string, adds, removes []string, actor string, extra *kafka.Message) error {
	if len(adds) == 0 && len(removes) == 0 && extra == nil {
		return nil
	}
	now := d.now().UTC()
	id := audit.ChangeID(now)
	val, _ := json.Marshal(storedMember{Added: now, Actor: actor})
	hist := make([]kafka.Message, 0, len(adds)+len(removes))
	msgs := make([]kafka.Message, 0, len(adds)+len(removes)+1)
	d.mu.Lock()
	rec := func(p, action string) kafka.Message {
		r := audit.Record{Time: now, Kind: audit.KindListChange, Patient: p, Recipient: ods, Actor: actor, Action: action,
			Follows: d.memberID(ods, p)}
		return kafka.Message{Topic: d.cfg.AuditTopic, Key: []byte(p), Value: r.Marshal()}
	}
	for _, p := range adds {
		hist = append(hist, rec(p, audit.ActionListAdd))
		msgs = append(msgs, kafka.Message{Key: []byte(prefixPatient + ods + "/" + p), Value: val})
	}
	for _, p := range removes {
		hist = append(hist, rec(p, audit.ActionListRemove))
		msgs = append(msgs, tombstone(prefixPatient+ods+"/"+p, id))
	}
	d.mu.Unlock()
	if extra != nil {
		msgs = append(msgs, *extra)
	}
	if len(hist) > 0 {
		if err := d.write(ctx, hist...); err != nil {
			return problem.Wrap(problem.Unavailable, "the list change could not be audited, and was not made; retry", err)
		}
	}
	if err := d.write(ctx, msgs...); err != nil {
		// Some or all may have landed all the same (an answer lost): the
		// change was made if every one is in force.
		if !d.landed(ctx, func() bool {
			for _, p := range adds {
				if d.memberID(ods, p) != id {
					return false
				}
			}
			for _, p := range removes {
				if d.memberID(ods, p) != id {
					return false
				}
			}
			return true
		}) {
			return problem.Wrap(problem.Unavailable, "the list could not be made durable; retry", err)
		}
	}
	if err := d.Sync(ctx); err != nil {
		return unavailable(err)
	}
	d.cfg.Log.Info("patient list changed", zap.String("recipient", ods), zap.Int("added", len(adds)), zap.Int("removed", len(removes)),
		zap.String("actor", actor))
	return nil
}

// SeedList makes numbers, read from the list file the configuration names
// for the recipient, its list, if the file changed since it was last
// applied (a digest of its patients is kept): a changed file replaces the
// list, changes made through the admin API since included; an unchanged
// one leaves the list as the API left it. It reports whether it wrote.
func (d *Directory) SeedList(ctx context.Context, ods string, numbers []nhs.Number) (bool, error) {
	ps := make([]string, 0, len(numbers))
	for _, n := range numbers {
		ps = append(ps, d.cfg.Pseudonym(n))
	}
	slices.Sort(ps)
	ps = slices.Compact(ps)
	sum := sha256.Sum256([]byte(strings.Join(ps, "\n")))
	seed := hex.EncodeToString(sum[:])
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.listOwner(ctx, ods); err != nil {
		return false, err
	}
	d.mu.Lock()
	same := d.listSeeds[ods] == seed
	d.mu.Unlock()
	if same {
		return false, nil
	}
	val, _ := json.Marshal(storedListSeed{Seed: seed, Time: d.now().UTC()})
	if _, err := d.replace(ctx, ods, numbers, audit.ActorConfig, &kafka.Message{Key: []byte(prefixListSeed + ods), Value: val}); err != nil {
		return false, err
	}
	return true, nil
}
