#!/usr/bin/env node
// A webhook recipient built from the official libraries: every delivery is
// verified with the Standard Webhooks verifier (npm standardwebhooks) and
// read with the CNCF CloudEvents SDK (npm cloudevents, HTTP.toEvent). Used by
// ../standards_test.go.
//
//	node receive.js SECRET
//
// It listens on a free loopback port and prints "listening PORT", then one
// JSON line per delivery:
//
//	{"verified":true,"webhookId":"...","event":{"id":..,"source":..,"type":..,"specversion":..},
//	 "ceHeaders":{"ce-id":..,...},"error":"..."}
//
// and answers 204 when the verifier accepts the delivery, 401 when it does
// not. With --secret-check it instead prints, for each following argument,
// whether new Webhook(arg) loads it, one JSON line each, and exits.
'use strict';
const http = require('http');
const { Webhook } = require('standardwebhooks');
const { HTTP } = require('cloudevents');

const args = process.argv.slice(2);
if (args[0] === '--secret-check') {
  for (const s of args.slice(1)) {
    let loads = true;
    try { new Webhook(s); } catch (e) { loads = false; }
    console.log(JSON.stringify({ secret: s, loads }));
  }
  process.exit(0);
}
if (args.length !== 1) {
  console.error('usage: node receive.js SECRET | --secret-check SECRET...');
  process.exit(2);
}
const wh = new Webhook(args[0]);

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const out = { verified: false, webhookId: req.headers['webhook-id'] || '', ceHeaders: {} };
    for (const [k, v] of Object.entries(req.headers)) {
      if (k.startsWith('ce-')) out.ceHeaders[k] = v;
    }
    try {
      wh.verify(body, req.headers);
      out.verified = true;
    } catch (e) {
      out.error = 'standardwebhooks: ' + e.message;
    }
    try {
      const ev = HTTP.toEvent({ headers: req.headers, body });
      out.event = { id: ev.id, source: ev.source, type: ev.type, specversion: ev.specversion };
    } catch (e) {
      out.error = (out.error ? out.error + '; ' : '') + 'cloudevents: ' + e.message;
    }
    console.log(JSON.stringify(out));
    res.writeHead(out.verified ? 204 : 401);
    res.end();
  });
});
server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
