package directory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/carehub/carehub/hub/audit"
	"github.com/carehub/carehub/hub/config"
	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
)

// Seed applies the configuration file's recipients to the directory, at
// start-up, in the file's order:
//
//   - a recipient the directory does not hold is created;
//   - one whose entry in the file changed since the hub last applied it
//     (a digest of the entry as written is kept, sealed, with the record)
//     is replaced by the file's entry, changes made through the admin API
//     since included: a configuration edit is a change, made at the start
//     that reads it;
//   - one whose entry did not change keeps what the admin API made of it,
//     and one the admin API deleted stays deleted;
//   - a recipient the file no longer names stays: delete it through the
//     admin API.
//
// Before that, the pause and patient list a deleted recipient left behind
// (its deletion's removal of them failed) are removed. A patient list file
// is not part of the entry: see SeedList. An entry
// whose subscription id or API key another recipient (created through the
// admin API) already has is an error that names it.
func (d *Directory) Seed(ctx context.Context, recipients []config.Recipient) error {
	// One catch-up for all: an entry unchanged since it was last written
	// (every entry, at most starts) needs nothing more.
	if err := d.Sync(ctx); err != nil {
		return err
	}
	d.sweep(ctx)
	var errs []error
	for i, r := range recipients {
		tree, seed, err := fileEntry(r)
		if err == nil && !d.unchanged(r.ODS, seed) {
			for range 5 {
				// Another process seeding the same entry at the same
				// moment wins the race; look again.
				if err = d.seedOne(ctx, r.ODS, tree, seed); problem.KindOf(err) != problem.Precondition {
					break
				}
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("recipients[%d] (%s): %w", i, r.ODS, err))
		}
	}
	return errors.Join(errs...)
}

// fileEntry returns a recipient's entry as the file gives it, without its
// list file (which seeds the list, not the entry), and its digest.
func fileEntry(r config.Recipient) (map[string]any, string, error) {
	tree, err := r.Entry()
	if err != nil {
		return nil, "", err
	}
	if tree == nil {
		return nil, "", errors.New("the recipient was not read from a configuration file")
	}
	if subs, ok := tree["subscriptions"].([]any); ok {
		for _, s := range subs {
			if m, ok := s.(map[string]any); ok {
				delete(m, "patientList")
			}
		}
	}
	b, err := json.Marshal(tree)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(b)
	return tree, hex.EncodeToString(sum[:]), nil
}

// unchanged reports whether the file's entry is the one last written for
// the recipient, and says what stands.
func (d *Directory) unchanged(ods, seed string) bool {
	prev := d.state(ods)
	if prev == nil || prev.seed != seed {
		return false
	}
	switch {
	case prev.deleted:
		d.cfg.Log.Warn("a recipient in the configuration file was deleted through the admin API, and stays deleted while its entry in the file is unchanged",
			zap.String("recipient", ods))
	case prev.actor != audit.ActorConfig:
		d.cfg.Log.Info("a recipient keeps the changes made through the admin API (its entry in the configuration file is unchanged)",
			zap.String("recipient", ods), zap.Int64("version", prev.version), zap.String("actor", prev.actor))
	}
	return true
}

func (d *Directory) seedOne(ctx context.Context, ods string, tree map[string]any, seed string) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.Sync(ctx); err != nil {
		return err
	}
	if d.unchanged(ods, seed) {
		return nil
	}
	prev := d.state(ods)
	dec, err := decodeStored(tree, d.cfg.Registry)
	if err != nil {
		return err
	}
	if conflicts := d.crossCheck(dec); len(conflicts) > 0 {
		all := make([]error, len(conflicts))
		for i, c := range conflicts {
			all[i] = c
		}
		return errors.Join(all...)
	}
	action := audit.ActionRecipientCreate
	if prev != nil && !prev.deleted {
		action = audit.ActionRecipientUpdate
		if prev.actor != audit.ActorConfig {
			d.cfg.Log.Warn("a recipient's entry in the configuration file changed: it replaces the changes made through the admin API",
				zap.String("recipient", ods), zap.Int64("version", prev.version), zap.String("actor", prev.actor))
		}
	}
	_, err = d.commit(ctx, change{ods: ods, prev: prev, tree: tree, r: dec, seed: seed, actor: audit.ActorConfig, action: action})
	return err
}
