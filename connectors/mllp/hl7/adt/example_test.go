package adt_test

import (
	"errors"
	"fmt"
	"strings"

	"github.com/carehub/carehub/connectors/mllp/hl7/adt"
)

func Example() {
	mp, err := adt.NewMapper(adt.Options{Source: "RX1"})
	if err != nil {
		panic(err)
	}
	msg := strings.Join([]string{
		`MSH|^~\&|PAS|RX1|CAREHUB|CAREHUB|20250318140500||ADT^A03^ADT_A03|RX1-0003|P|2.4`,
		`EVN|A03|20250318140500`,
		`PID|1||9990500002^^^NHS^NH||TESTPATIENT^ALEX||19380601|F||||||||||||||||||||||||01`, // PID-32 01: NHS number verified
		`PD1|||TEST SURGERY^^A81001`,
		`PV1|1|I|W7^^3^RX1AB||||||||||||||||ENC-0001|||||||||||||||||85|VM123`,
	}, "\r")
	m, err := adt.Parse([]byte(msg))
	if err != nil {
		panic(err)
	}
	res, err := mp.Map(m)
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Trigger, res.Events[0].Type)
	fmt.Println(strings.Contains(string(res.Events[0].JSON), `"destination":{"type":"care-home","code":"85","ods":"VM123"}`))

	// A message without an NHS number is not refused: it is held (the
	// listener records it on carehub.held and answers AA).
	held := must(mp.Map(must(adt.Parse([]byte(strings.Replace(msg, "9990500002^^^NHS^NH", "D123^^^RX1^MR", 1))))))
	fmt.Println(len(held.Events), held.Held.Reason)

	// A message with an invalid NHS number is answered AE, pointing at PID-3.
	_, err = mp.Map(must(adt.Parse([]byte(strings.Replace(msg, "9990500002", "9990500003", 1)))))
	var e *adt.Error
	if errors.As(err, &e) {
		fmt.Println(e.Ack, e.Code, e.Segment, e.Field)
	}
	// Output:
	// A03 org.carehub.discharge.v1
	// true
	// 0 no-nhs-number
	// AE 102 PID 3
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
