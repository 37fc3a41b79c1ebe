package config_test

import (
	"fmt"

	"github.com/carehub/carehub/connectors/all"
	"github.com/carehub/carehub/hub/config"
)

// Parse decodes each connector section with the registry, applies
// defaults, then reports every problem at once.
func ExampleParse() {
	c, err := config.Parse([]byte(`
pseudonymKey: {value: 0123456789abcdef}
sources:
  - {ods: RX1, apiKey: {value: rx1-key-123}}
inputs:
  - cloudevents: {}
`), all.Registry())
	fmt.Println(c.HTTP.Addr, c.Kafka.Partitions, c.Delivery.MaxBackoff, c.Inputs[0].Type, err)

	_, err = config.Parse([]byte(`
http: {maxBodyBytes: 10}
sources:
  - {ods: rx1}
inputs:
  - cloudevents: {}
`), all.Registry())
	fmt.Println(err)
	// Output:
	// 127.0.0.1:8080 6 30s cloudevents <nil>
	// http.maxBodyBytes must be at least 1024
	// pseudonymKey: required (the key of the HMAC that pseudonymises NHS numbers)
	// sources[0].ods "rx1": not an ODS code
	// sources[0].apiKey: no value, file or env given
}
