#!/usr/bin/env node
// Publish one wxdispatch job from Node (amqplib) and wait for its outcome event.
//
//   npm ci
//   node publish.js --url amqp://guest:guest@127.0.0.1:5672/%2F --account kf-main --to wmUser
//
// Steps: bind an exclusive, auto-delete queue to the outcome exchange with "<account>.*"
// (before publishing, so the event cannot be missed); publish the job to exchange "wxdispatch"
// with routing key = the account, persistent, message_id = job id, a fresh correlation_id, on a
// confirm channel with mandatory (an unroutable job is an error, not silence); wait for the event
// carrying that correlation_id and print it as one JSON line on stdout.
//
// Exit codes: 0 the job was sent; 1 the job ended otherwise (dead, suppressed, expired,
// cancelled, failed: the event says why); 2 the broker refused or returned the job, or no event
// came within --timeout seconds.
'use strict';

const amqp = require('amqplib');
const crypto = require('node:crypto');
const { parseArgs } = require('node:util');

// The worker's exchanges: jobs in, outcome events out (topic, routing key "<account>.<status>").
const JOBS_EXCHANGE = 'wxdispatch';
const OUTCOMES_EXCHANGE = 'wxdispatch.outcomes';

async function main() {
  const { values: args } = parseArgs({
    options: {
      url: { type: 'string', default: process.env.WXDISPATCH_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2F' },
      account: { type: 'string', default: process.env.WXDISPATCH_ACCOUNT },
      to: { type: 'string', default: process.env.WXDISPATCH_TO },
      text: { type: 'string', default: 'Hello from Node' },
      'open-kfid': { type: 'string' }, // WeCom: needed when the account has several
      'job-id': { type: 'string' },
      timeout: { type: 'string', default: '30' },
    },
  });
  if (!args.account || !args.to) {
    console.error('--account and --to are required (or WXDISPATCH_ACCOUNT and WXDISPATCH_TO)');
    return 2;
  }
  const jobId = args['job-id'] || 'js-' + crypto.randomBytes(12).toString('hex');
  const correlationId = crypto.randomUUID();
  const job = { job_id: jobId, to: args.to, message: { text: args.text } };
  if (args['open-kfid']) job.open_kfid = args['open-kfid'];

  // a bounded connect: a broker that does not answer is an error, not a hang
  const conn = await amqp.connect(args.url, { timeout: 10000 });
  conn.on('error', (err) => console.error(`connection error: ${err.message}`));
  try {
    const ch = await conn.createConfirmChannel();
    // Not there yet (no worker has started on this vhost)? Declare it as the worker does, so that
    // the binding never races the worker. The check runs on a channel of its own: a failed check
    // closes its channel.
    const probe = await conn.createChannel();
    probe.on('error', () => {});
    const exists = await probe.checkExchange(OUTCOMES_EXCHANGE).then(() => true, () => false);
    if (exists) await probe.close();
    else await ch.assertExchange(OUTCOMES_EXCHANGE, 'topic', { durable: true });
    const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
    await ch.bindQueue(queue, OUTCOMES_EXCHANGE, args.account + '.*');

    let settle;
    const outcome = new Promise((resolve) => { settle = resolve; });
    await ch.consume(queue, (msg) => {
      if (msg && msg.properties.correlationId === correlationId) settle(msg);
    }, { noAck: true });

    let returned = false;
    ch.on('return', (msg) => { if (msg.properties.correlationId === correlationId) returned = true; });
    ch.publish(JOBS_EXCHANGE, args.account, Buffer.from(JSON.stringify(job)), {
      contentType: 'application/json',
      persistent: true,
      messageId: jobId,
      correlationId,
      mandatory: true,
    });
    try {
      await ch.waitForConfirms();
    } catch (e) {
      console.error(`job ${jobId}: the broker nacked it`);
      return 2;
    }
    // basic.return arrives before the ack of the same message
    if (returned) {
      console.error(`job ${jobId}: returned unroutable (is ${JSON.stringify(args.account)} an account of the worker?)`);
      return 2;
    }
    console.error(`job ${jobId} published (correlation_id ${correlationId}); waiting for its outcome`);

    const seconds = Number(args.timeout);
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), seconds * 1000); });
    const msg = await Promise.race([outcome, timeout]);
    clearTimeout(timer);
    if (!msg) {
      console.error(`job ${jobId}: no outcome event within ${seconds} s`);
      return 2;
    }
    let event;
    try {
      event = JSON.parse(msg.content.toString('utf8'));
    } catch (e) {
      console.error(`job ${jobId}: the outcome event is not JSON`);
      return 2;
    }
    console.log(JSON.stringify(event));
    return event.status === 'sent' ? 0 : 1;
  } finally {
    await conn.close().catch(() => {});
  }
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(`error: ${err.message}`);
  process.exitCode = 2;
});
