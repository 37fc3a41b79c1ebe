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
)

const consentUsage = `carehub consent: record and inspect patients' consent directives (admin API client).

Usage:
  carehub consent put         --nhs NUMBER --file FILE [--if-match VERSION]
                                                         record directives (FHIR Consent or simple JSON; replaces the set)
  carehub consent get         --nhs NUMBER [--fhir]      show directives (and, on standard error, their ETag)
  carehub consent delete      --nhs NUMBER --if-match VERSION
                                                         withdraw every directive
  carehub consent explain     --file EVENT.json          who would receive this event, and why (publishes nothing)
  carehub consent disclosures --nhs NUMBER               who received what about the patient, and what was withheld

Common flags: --hub URL (default $CAREHUB_URL or http://127.0.0.1:8080),
--key KEY (default $CAREHUB_ADMIN_KEY). --nhs - reads the NHS number from
standard input, keeping it out of shell history and the process list.

A patient who has directives is changed only against the version read:
--if-match takes the version "consent get" showed (or the ETag, "v3"); the
simple form's "version" member does the same. A change against an older
version is refused (412): read again and reapply.
`

func consentCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, consentUsage)
		return errors.New("consent: a subcommand is required")
	}
	sub := args[0]
	fs := flag.NewFlagSet("consent "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	hubURL := fs.String("hub", envOr("CAREHUB_URL", "http://127.0.0.1:8080"), "the hub's base URL")
	key := fs.String("key", os.Getenv("CAREHUB_ADMIN_KEY"), "the admin API key")
	nhsArg := fs.String("nhs", "", "the patient's NHS number, or - to read it from standard input")
	file := fs.String("file", "", "the document to send")
	fhir := fs.Bool("fhir", false, "ask for FHIR R4 Consent resources")
	ifMatch := fs.String("if-match", "", "the version (or ETag) of the directives the change is made against")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *key == "" {
		return errors.New("consent: --key or CAREHUB_ADMIN_KEY is required")
	}
	nhs := *nhsArg
	if nhs == "-" {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return fmt.Errorf("reading the NHS number from standard input: %w", err)
		}
		nhs = strings.TrimSpace(line)
	}
	needNHS := func() error {
		if nhs == "" {
			return errors.New("consent " + sub + ": --nhs is required")
		}
		return nil
	}
	readFile := func() ([]byte, string, error) {
		if *file == "" {
			return nil, "", errors.New("consent " + sub + ": --file is required")
		}
		b, err := os.ReadFile(*file)
		if err != nil {
			return nil, "", err
		}
		var probe struct {
			ResourceType string `json:"resourceType"`
		}
		ct := media.JSON
		if json.Unmarshal(b, &probe) == nil && probe.ResourceType != "" {
			ct = media.FHIR
		}
		return b, ct, nil
	}
	patientPath := func(tail string) string { return "/v1/patients/" + url.PathEscape(nhs) + tail }
	c := &adminClient{base: strings.TrimRight(*hubURL, "/"), key: *key, out: stdout, errOut: stderr}
	if v := strings.Trim(strings.TrimPrefix(*ifMatch, "W/"), `"`); v != "" {
		c.ifMatch = `"v` + strings.TrimPrefix(v, "v") + `"`
	}
	switch sub {
	case "put":
		if err := needNHS(); err != nil {
			return err
		}
		b, ct, err := readFile()
		if err != nil {
			return err
		}
		return c.do(ctx, http.MethodPut, patientPath("/consent"), ct, b, *fhir)
	case "get":
		if err := needNHS(); err != nil {
			return err
		}
		return c.do(ctx, http.MethodGet, patientPath("/consent"), "", nil, *fhir)
	case "delete":
		if err := needNHS(); err != nil {
			return err
		}
		return c.do(ctx, http.MethodDelete, patientPath("/consent"), "", nil, false)
	case "disclosures":
		if err := needNHS(); err != nil {
			return err
		}
		return c.do(ctx, http.MethodGet, patientPath("/disclosures"), "", nil, false)
	case "explain":
		b, _, err := readFile()
		if err != nil {
			return err
		}
		return c.do(ctx, http.MethodPost, "/v1/decisions/explain", media.CloudEvent, b, false)
	default:
		fmt.Fprint(stderr, consentUsage)
		return fmt.Errorf("consent: unknown subcommand %q", sub)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

type adminClient struct {
	base, key string
	ifMatch   string // sent as If-Match when set
	out       io.Writer
	errOut    io.Writer
}

// do sends the request and prints the answer's body, indented. A non-2xx
// answer is an error (its body, a problem document or OperationOutcome, is
// printed first).
func (c *adminClient) do(ctx context.Context, method, path, contentType string, body []byte, fhir bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if fhir {
		req.Header.Set("Accept", media.FHIR)
	}
	if c.ifMatch != "" && (method == http.MethodPut || method == http.MethodDelete) {
		req.Header.Set("If-Match", c.ifMatch)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("calling the hub: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	var pretty bytes.Buffer
	if json.Indent(&pretty, b, "", "  ") == nil {
		b = append(pretty.Bytes(), '\n')
	}
	_, _ = c.out.Write(b)
	if et := resp.Header.Get("ETag"); et != "" && c.errOut != nil {
		fmt.Fprintln(c.errOut, "ETag:", et)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the hub answered %s", resp.Status)
	}
	if resp.StatusCode == http.StatusNoContent {
		fmt.Fprintln(c.out, "done")
	}
	return nil
}
