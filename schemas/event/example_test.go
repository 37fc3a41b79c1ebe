package event_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/carehub/carehub/schemas/event"
	"github.com/carehub/carehub/schemas/nhs"
	"github.com/carehub/carehub/schemas/problem"
)

func ExampleValidator_Parse() {
	v, err := event.NewValidator() // once, at start
	if err != nil {
		panic(err)
	}
	raw, err := os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		panic(err)
	}
	e, err := v.Parse(raw)
	if err != nil {
		panic(err)
	}
	p, _ := nhs.NewPseudonymiser([]byte("example-key-not-a-secret"))
	fmt.Println(e) // metadata only
	fmt.Println(e.Publisher, e.Patient.GPPractice, e.EncounterID, e.DischargeDestination, e.HasDocument)
	fmt.Println(e.Patient.NHSNumber, len(p.Pseudonym(e.Patient.NHSNumber)))
	// Output:
	// event{id="3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03" type=org.carehub.discharge.v1 publisher=RX1}
	// RX1 A81001 ENC-0001 VM123 true
	// NHS(redacted) 35
}

func ExampleValidator_Parse_invalid() {
	v, err := event.NewValidator()
	if err != nil {
		panic(err)
	}
	_, err = v.Parse([]byte(`{
		"specversion": "1.0",
		"id": "example-1",
		"source": "urn:ods:RX1",
		"type": "org.carehub.admission.v1",
		"time": "2025-03-14T09:35:00Z",
		"data": {
			"patient": {"nhsNumber": "9990500003", "gpPractise": "A81001"},
			"encounter": {}
		}
	}`))
	var pe *problem.Error
	if errors.As(err, &pe) {
		fmt.Println(pe.Kind, pe.Kind.HTTPStatus())
		for _, x := range pe.Violations {
			fmt.Println(x.Pointer, x.Rule)
		}
	}
	// Output:
	// invalid 422
	// /data/encounter/id schema:/properties/encounter/required
	// /data/patient/gpPractise schema:/properties/patient/additionalProperties
	// /data/patient/nhsNumber nhs-number-check-digit
}

func ExampleEvent_Notification() {
	raw, err := os.ReadFile("../../deploy/examples/discharge.json")
	if err != nil {
		panic(err)
	}
	e, err := event.Unmarshal(raw)
	if err != nil {
		panic(err)
	}
	thin, err := e.Notification("0300 000 0000 (records team)")
	if err != nil {
		panic(err)
	}
	fmt.Println(string(thin))
	// Output: {"specversion":"1.0","id":"3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03","source":"urn:ods:RX1","type":"org.carehub.discharge.v1","time":"2025-03-18T14:05:00Z","datacontenttype":"application/json","dataschema":"https://carehub.dev/schemas/notification.v1.json","carehubform":"notification","data":{"encounter":{"id":"ENC-0001"},"fullRecord":{"ods":"RX1","eventId":"3f6b1c2e-8d4a-4e7b-9c1d-0a1b2c3d4e03","contact":"0300 000 0000 (records team)"},"patient":{"nhsNumber":"9990500002"}}}
}
