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
// A patient list file is not part of the entry: see SeedList. An entry
// whose subscription id or API key another recipient (created through the
// admin API) already has is an error that names it.
func (d *Directory) Seed(ctx context.Context, recipients []config.Recipient) error {
	var errs []error
	for i, r := range recipients {
		var err error
		for range 5 {
			// Another process seeding the same entry at the same moment
			// wins the race; look again.
			if err = d.seedOne(ctx, r); problem.KindOf(err) != problem.Precondition {
				break
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("recipients[%d] (%s): %w", i, r.ODS, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Directory) seedOne(ctx context.Context, r config.Recipient) error {
	tree, err := r.Entry()
	if err != nil {
		return err
	}
	if tree == nil {
		return errors.New("the recipient was not read from a configuration file")
	}
	// The list file seeds the list, not the entry.
	if subs, ok := tree["subscriptions"].([]any); ok {
		for _, s := range subs {
			if m, ok := s.(map[string]any); ok {
				delete(m, "patientList")
			}
		}
	}
	b, err := json.Marshal(tree)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	seed := hex.EncodeToString(sum[:])

	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	if err := d.Sync(ctx); err != nil {
		return err
	}
	prev := d.state(r.ODS)
	if prev != nil && prev.seed == seed {
		switch {
		case prev.deleted:
			d.cfg.Log.Warn("a recipient in the configuration file was deleted through the admin API, and stays deleted while its entry in the file is unchanged",
				zap.String("recipient", r.ODS))
		case prev.actor != audit.ActorConfig:
			d.cfg.Log.Info("a recipient keeps the changes made through the admin API (its entry in the configuration file is unchanged)",
				zap.String("recipient", r.ODS), zap.Int64("version", prev.version), zap.String("actor", prev.actor))
		}
		return nil
	}
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
				zap.String("recipient", r.ODS), zap.Int64("version", prev.version), zap.String("actor", prev.actor))
		}
	}
	_, err = d.commit(ctx, change{ods: r.ODS, prev: prev, tree: tree, r: dec, seed: seed, actor: audit.ActorConfig, action: action})
	return err
}
