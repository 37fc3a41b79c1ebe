#!/usr/bin/env node
// Publishes events with the CNCF CloudEvents SDK (npm cloudevents) in one of
// the HTTP binding's content modes, and prints one JSON line per request:
// {"status":202,"body":{...}}. Used by ../standards_test.go.
//
//	node cloudevents.js binary|structured|batch URL KEY FILE...
//
// Each FILE holds one event in the JSON format; it becomes an SDK CloudEvent,
// which HTTP.binary or HTTP.structured turns into headers and a body. In
// batch mode all the events go in one request: a JSON array of the SDK's
// events, Content-Type application/cloudevents-batch+json (the SDK has no
// batch serializer of its own, but reads this mode: HTTP.toEvent).
'use strict';
const fs = require('fs');
const { CloudEvent, HTTP, CONSTANTS } = require('cloudevents');

async function post(url, key, headers, body) {
  const res = await fetch(url, { method: 'POST', headers: { ...headers, authorization: 'Bearer ' + key }, body });
  const text = await res.text();
  let parsed;
  try { parsed = JSON.parse(text); } catch (e) { parsed = text; }
  console.log(JSON.stringify({ status: res.status, body: parsed }));
}

async function main() {
  const [mode, url, key, ...files] = process.argv.slice(2);
  if (!['binary', 'structured', 'batch'].includes(mode) || !url || !key || files.length === 0) {
    console.error('usage: node cloudevents.js binary|structured|batch URL KEY FILE...');
    process.exit(2);
  }
  const events = files.map((f) => new CloudEvent(JSON.parse(fs.readFileSync(f, 'utf8'))));
  if (mode === 'batch') {
    // Check that the SDK reads back what is sent.
    const body = JSON.stringify(events.map((e) => e.toJSON()));
    const headers = { 'content-type': CONSTANTS.MIME_CE_BATCH };
    const back = HTTP.toEvent({ headers, body });
    if (!Array.isArray(back) || back.length !== events.length) throw new Error('the SDK does not read the batch back');
    await post(url, key, headers, body);
    return;
  }
  for (const ev of events) {
    const msg = mode === 'binary' ? HTTP.binary(ev) : HTTP.structured(ev);
    await post(url, key, msg.headers, msg.body);
  }
}
main().catch((e) => { console.error(e); process.exit(1); });
