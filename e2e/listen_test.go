package e2e

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestListenVerifiesAndPrintsDeliveries runs "carehub listen" as the care
// home's receiver.
func TestListenVerifiesAndPrintsDeliveries(t *testing.T) {
	addr := freePort(t)
	cmd := exec.Command(binary, "listen", "--addr", addr, "--secret", "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1jYXJlaG9tZS1WTTEyMw==")
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var mu sync.Mutex
	var lines []string
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
		}
	}()
	output := func() string { mu.Lock(); defer mu.Unlock(); return strings.Join(lines, "\n") }
	waitFor(t, "listen to start", 20*time.Second, func() bool { return strings.Contains(output(), "listening on") })

	gp := newReceiver(t, "whsec_Y2FyZWh1Yi1kZW1vLXNlY3JldC1ncC1BODEwMDE=")
	h := startHub(t, hubOptions{gp: gp.URL, careHome: "http://" + addr + "/events"})
	nhs := nhsNumber(9501)
	ev := patientEvent(t, "discharge", nhs, "A81001", "VM123")
	h.mustPublish("demo-rx1-key", ev)
	id := ev["id"].(string)
	waitFor(t, "listen prints the delivery", 30*time.Second, func() bool { return strings.Contains(output(), id) })
	var line string
	for _, l := range strings.Split(output(), "\n") {
		if strings.Contains(l, id) {
			line = l
		}
	}
	if !strings.Contains(line, "type=org.carehub.discharge.v1") || !strings.Contains(line, "patient=p1_") {
		t.Errorf("listen line lacks type or pseudonym: %q", line)
	}
	if strings.Contains(output(), nhs) {
		t.Errorf("listen printed the NHS number")
	}

	// A delivery with a bad signature is refused with 401 and reported.
	req, _ := http.NewRequest("POST", "http://"+addr+"/events", strings.NewReader(`{"id":"forged"}`))
	req.Header.Set("webhook-id", "forged")
	req.Header.Set("webhook-timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	req.Header.Set("webhook-signature", "v1,AAAA")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("forged delivery: got %d, want 401", resp.StatusCode)
	}
	waitFor(t, "listen reports the rejection", 10*time.Second, func() bool { return strings.Contains(output(), "REJECTED id=forged") })
}
