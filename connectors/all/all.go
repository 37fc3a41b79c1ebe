// Package all is the registration list: every connector the carehub
// binary can run, one line each. The hub knows connectors only through
// this list (cmd/carehub hands it over); adding a connector is one folder
// under connectors/ and one line here. The conformance suite runs on every
// entry (all_test.go), so no connector can skip it.
package all

import (
	"github.com/carehub/carehub/connectors/cloudevents"
	"github.com/carehub/carehub/connectors/connector"
	"github.com/carehub/carehub/connectors/feed"
	"github.com/carehub/carehub/connectors/fhirin"
	"github.com/carehub/carehub/connectors/fhirout"
	"github.com/carehub/carehub/connectors/mllp"
	"github.com/carehub/carehub/connectors/webhook"
)

// Sources are the source connectors: entries under inputs.
var Sources = []connector.SourceFactory{
	cloudevents.Factory, // POST /v1/events: CloudEvents JSON
	mllp.Factory,        // HL7 v2 ADT over MLLP
	fhirin.Factory,      // FHIR R4: POST /fhir/r4/$process-message and /fhir/r4/Encounter
}

// Sinks are the sink connectors: a recipient's delivery section.
var Sinks = []connector.SinkFactory{
	webhook.Factory, // signed POSTs (Standard Webhooks)
	fhirout.Factory, // FHIR R4 messages ($process-message) or transactions
	feed.Factory,    // a pull feed the recipient reads by number (GET /v1/feeds/{recipient})
}

// Registry returns the registry of every connector listed. It panics if
// the list itself is broken (a type twice, a factory without a probe):
// a test checks that it is not.
func Registry() *connector.Registry {
	r, err := connector.NewRegistry(Sources, Sinks)
	if err != nil {
		panic("connectors/all: " + err.Error())
	}
	return r
}
