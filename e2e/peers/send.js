#!/usr/bin/env node
// Sends HL7 v2 messages to an MLLP listener with a third-party npm client
// and prints one line per message: the acknowledgement's MSA-1 and MSA-2,
// tab-separated. Used by ../mllp_test.go.
//
//	node send.js nodehl7|medplum PORT FILE...
//
// Each FILE holds one message; LF or CRLF line ends become CR, as HL7 needs.
'use strict';
const fs = require('fs');

async function main() {
  const [client, portArg, ...files] = process.argv.slice(2);
  const port = Number(portArg);
  if (!client || !port || files.length === 0) {
    console.error('usage: node send.js nodehl7|medplum PORT FILE...');
    process.exit(2);
  }
  const texts = files.map((f) => fs.readFileSync(f, 'utf8').replace(/\r?\n/g, '\r').replace(/\r+$/, ''));
  if (client === 'medplum') {
    const { Hl7Client } = require('@medplum/hl7');
    const { Hl7Message } = require('@medplum/core');
    const c = new Hl7Client({ host: '127.0.0.1', port });
    try {
      for (const text of texts) {
        const ack = await c.sendAndWait(Hl7Message.parse(text), { timeoutMs: 20000 });
        const msa = ack.getSegment('MSA');
        console.log(`${msa.getField(1).toString()}\t${msa.getField(2).toString()}`);
      }
    } finally {
      c.close();
    }
    return;
  }
  if (client === 'nodehl7') {
    const { Client, Message } = require('node-hl7-client');
    const c = new Client({ host: '127.0.0.1', connectionTimeout: 10000 });
    const acks = [];
    let wake = null;
    const conn = c.createConnection({ port, waitAck: true, maxAttempts: 3 }, async (res) => {
      const m = res.getMessage();
      acks.push(`${m.get('MSA.1').toString()}\t${m.get('MSA.2').toString()}`);
      if (wake) wake();
    });
    conn.on('client.error', (err) => { console.error('client error:', err && err.message); });
    try {
      for (const text of texts) {
        const want = acks.length + 1;
        const got = new Promise((resolve, reject) => {
          wake = () => { if (acks.length >= want) resolve(); };
          setTimeout(() => reject(new Error('no acknowledgement within 20s')), 20000).unref();
        });
        await conn.sendMessage(new Message({ text }));
        await got;
        console.log(acks[want - 1]);
      }
    } finally {
      await conn.close();
      c.closeAll();
    }
    return;
  }
  console.error(`unknown client ${client}`);
  process.exit(2);
}

main().then(() => process.exit(0), (err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
