package mllp

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/mllp/frame"
	"github.com/carehub/carehub/connectors/mllp/hl7"
)

// The conformance suite's probe: a listener on a free loopback port, and a
// PAS that sends one A01 per connection and reads MSA-1 of the answer. MLLP
// has no API key: a sender is authenticated by the sending facility
// (MSH-4) it names, and by its client certificate where TLS asks for one,
// so the key is not used and a document from another organisation is
// refused.

func probeConfig(org string) connector.Config {
	c := DefaultConfig()
	c.Addr, c.Source = "127.0.0.1:0", org
	return c
}

func probeDocument(org, id, nhsNumber string) []byte {
	return []byte(strings.Join([]string{
		`MSH|^~\&|PAS|` + org + `|CAREHUB|CAREHUB|20261124100000||ADT^A01|` + id + `|P|2.4`,
		"EVN|A01|20261124100000",
		"PID|1||" + nhsNumber + "^^^NHS^NH||CONFORMANCE^TEST||19400101|F" + strings.Repeat("|", 24) + "01", // PID-32 01: verified
		"PV1|1|I|AMU^^12^" + org + strings.Repeat("|", 16) + "ENC-" + id,
	}, "\r") + "\r")
}

// probeHeldDocument is an A15 (pending transfer): a trigger carehub does
// not share, acknowledged once held.
func probeHeldDocument(org, id, nhsNumber string) []byte {
	return []byte(strings.Join([]string{
		`MSH|^~\&|PAS|` + org + `|CAREHUB|CAREHUB|20261124100000||ADT^A15|` + id + `|P|2.4`,
		"EVN|A15|20261124100000",
		"PID|1||" + nhsNumber + "^^^NHS^NH||CONFORMANCE^TEST||19400101|F" + strings.Repeat("|", 24) + "01",
		"PV1|1|I|AMU^^12^" + org + strings.Repeat("|", 16) + "ENC-" + id,
	}, "\r") + "\r")
}

func probeSend(ctx context.Context, s connector.Source, _, _ string, doc []byte) (connector.Answer, error) {
	src, ok := s.(*Source)
	if !ok || src.Addr() == nil {
		return connector.Answer{}, errors.New("mllp probe: not a registered MLLP source")
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", src.Addr().String())
	if err != nil {
		return connector.Answer{}, err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if err := frame.WriteFrame(nc, doc); err != nil {
		return connector.Answer{}, err
	}
	b, err := frame.NewReader(nc, frame.ReaderOptions{}).ReadFrame()
	if err != nil {
		return connector.Answer{}, err
	}
	m, err := hl7.Parse(b)
	if err != nil {
		return connector.Answer{}, err
	}
	code := m.Segment("MSA").Field(1).String()
	return connector.Answer{Positive: code == "AA" || code == "CA", Detail: code}, nil
}
