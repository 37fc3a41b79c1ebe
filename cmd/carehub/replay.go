package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/carehub/carehub/schemas/media"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

const replayUsage = `carehub replay: re-route past events for a newly subscribed recipient (a backfill).

Usage:
  carehub replay --recipient ODS --since DATE [--rate N] [--hub URL] [--key KEY]

Every event the hub accepted since DATE (2026-11-01, or an RFC 3339 time)
that the recipient's subscriptions match is decided again, through consent
as of now, for that recipient alone, and sent to it unless it was already
sent. Progress is a bar on a terminal, plain lines otherwise. Interrupted
(Ctrl-C, a lost connection, a hub stopping), it stops at its committed
position: run the same command again, against any hub process, to resume.

Flags: --hub URL (default $CAREHUB_URL or http://127.0.0.1:8080), --key KEY
(default $CAREHUB_ADMIN_KEY), --rate N (at most N events a second).
`

// backfillJob is what the hub says about a backfill (hub/backfill.Job).
type backfillJob struct {
	ID        string `json:"id"`
	Recipient string `json:"recipient"`
	State     string `json:"state"`
	Total     int64  `json:"total"`
	Read      int64  `json:"read"`
	Counts    struct {
		Sent            int64 `json:"sent"`
		Withheld        int64 `json:"withheld"`
		AlreadyReceived int64 `json:"alreadyReceived"`
		NotForRecipient int64 `json:"notForRecipient"`
		NotAcknowledged int64 `json:"notAcknowledged"`
	} `json:"counts"`
	Error string `json:"error"`
}

func (j backfillJob) line() string {
	pct := 100.0
	if j.Total > 0 {
		pct = 100 * float64(j.Read) / float64(j.Total)
	}
	line := fmt.Sprintf("backfill %s for %s: %d of %d events (%.0f%%): %d sent, %d already received, %d withheld, %d not for %s",
		j.ID, j.Recipient, j.Read, j.Total, pct, j.Counts.Sent, j.Counts.AlreadyReceived, j.Counts.Withheld, j.Counts.NotForRecipient, j.Recipient)
	if j.Counts.NotAcknowledged > 0 { // rare: only after a broker outage
		line += fmt.Sprintf(", %d never acknowledged to their publisher", j.Counts.NotAcknowledged)
	}
	return line
}

// isTerminal reports whether w is a terminal (a progress bar then, plain
// lines otherwise).
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func replay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, replayUsage) }
	hubURL := fs.String("hub", envOr("CAREHUB_URL", "http://127.0.0.1:8080"), "the hub's base URL")
	key := fs.String("key", os.Getenv("CAREHUB_ADMIN_KEY"), "the admin API key")
	recipient := fs.String("recipient", "", "the recipient's ODS code")
	since := fs.String("since", "", "from when: a date (2026-11-01) or an RFC 3339 time")
	rate := fs.Float64("rate", 0, "at most this many events a second (0: no bound)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *key == "":
		return errors.New("replay: --key or CAREHUB_ADMIN_KEY is required")
	case *recipient == "" || *since == "":
		fs.Usage()
		return errors.New("replay: --recipient and --since are required")
	}
	base := strings.TrimRight(*hubURL, "/")
	body, _ := json.Marshal(map[string]string{"recipient": *recipient, "since": *since})
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	resp, err := adminCall(cctx, http.MethodPost, base+"/v1/backfills", *key, media.JSON, body)
	cancel()
	if err != nil {
		return err
	}
	var job backfillJob
	if err := json.Unmarshal(resp, &job); err != nil || job.ID == "" {
		return fmt.Errorf("replay: the hub's answer is not a backfill: %.200s", resp)
	}
	if job.State != "pending" {
		fmt.Fprintf(stderr, "resuming backfill %s (%s, %d of %d events read)\n", job.ID, job.State, job.Read, job.Total)
	}
	run := base + "/v1/backfills/" + url.PathEscape(job.ID) + "/run"
	if *rate > 0 {
		run += fmt.Sprintf("?rate=%g", *rate)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, run, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*key)
	req.Header.Set("Accept", media.NDJSON)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(stderr, job)
		}
		return fmt.Errorf("calling the hub: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
		return fmt.Errorf("the hub answered %s: %s", res.Status, bytes.TrimSpace(b))
	}
	var bar *progressbar.ProgressBar
	if isTerminal(stderr) {
		bar = progressbar.NewOptions64(job.Total, progressbar.OptionSetWriter(stderr), progressbar.OptionSetDescription("backfill "+job.Recipient),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("events"),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var j backfillJob
		if json.Unmarshal(sc.Bytes(), &j) != nil {
			continue
		}
		job = j
		if bar != nil {
			bar.ChangeMax64(j.Total)
			_ = bar.Set64(j.Read)
		} else {
			fmt.Fprintln(stderr, j.line())
		}
	}
	if bar != nil {
		_ = bar.Finish()
	}
	if ctx.Err() != nil || sc.Err() != nil {
		return interrupted(stderr, job)
	}
	fmt.Fprintln(stdout, job.line())
	switch job.State {
	case "done":
		return nil
	case "interrupted":
		if job.Error != "" {
			return fmt.Errorf("replay: the backfill stopped: %s; run the same command again to resume", job.Error)
		}
		return interrupted(stderr, job)
	}
	return fmt.Errorf("replay: the backfill is %s", job.State)
}

func interrupted(stderr io.Writer, j backfillJob) error {
	fmt.Fprintf(stderr, "interrupted after %d of %d events: run the same command again to resume\n", j.Read, j.Total)
	return errors.New("replay: interrupted")
}

// adminCall sends one request to the admin API and returns the body of a
// 2xx answer; any other answer is an error carrying its problem document.
func adminCall(ctx context.Context, method, u, key, contentType string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling the hub: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("the hub answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}
