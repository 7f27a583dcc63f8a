// BullMQ's side of scripts/compare: the demo example's actor (record each
// finished message with its timings) and the memory scenario's failing job.
// Configured from the environment: COMPARE_BROKER (a redis:// URL) and
// COMPARE_RECORD (directory). bullmq is installed by scripts/compare into
// .peers/bullmq and found through NODE_PATH.
//
//   node compare_bullmq.js produce --count N [--interval-ms MS] [--work-ms MS] [--config defaults|best]
//   node compare_bullmq.js work [--config defaults|best] [--concurrency N] [--queue step|fail]
//   node compare_bullmq.js fail --count N
//   node compare_bullmq.js purge
//
// defaults: Queue.add one job at a time, a Worker at its default
// concurrency (1), completed jobs kept. best: Queue.addBulk in batches of
// 1,000, completed jobs removed (removeOnComplete), concurrency as given
// (100 for no-op jobs). produce prints {"seconds": …} last.
"use strict";
const fs = require("fs");
const path = require("path");
const { Queue, Worker } = require("bullmq");

const QUEUE = "bullmq-compare";
const FAIL_QUEUE = "bullmq-compare-fail";
const BATCH = 1000;

function options(argv) {
  const opts = {
    command: argv[0],
    count: 0,
    intervalMs: 0,
    workMs: 0,
    config: "defaults",
    concurrency: null,
    queue: "step",
  };
  for (let i = 1; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === "--count") opts.count = Number(value);
    else if (flag === "--interval-ms") opts.intervalMs = Number(value);
    else if (flag === "--work-ms") opts.workMs = Number(value);
    else if (flag === "--config") opts.config = value;
    else if (flag === "--concurrency") opts.concurrency = Number(value);
    else if (flag === "--queue") opts.queue = value;
    else throw new Error(`unknown flag ${flag}`);
  }
  if (!["defaults", "best"].includes(opts.config)) throw new Error(`unknown config ${opts.config}`);
  if (!["step", "fail"].includes(opts.queue)) throw new Error(`unknown queue ${opts.queue}`);
  return opts;
}

function connection() {
  const url = new URL(process.env.COMPARE_BROKER);
  return { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
}

// Wall-clock microseconds, as the other frameworks record them.
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function recorder() {
  let fd = null;
  return (line) => {
    if (fd === null) fd = fs.openSync(path.join(process.env.COMPARE_RECORD, `${process.pid}.done`), "a");
    fs.writeSync(fd, line);
  };
}

async function produce(opts) {
  const queue = new Queue(QUEUE, { connection: connection() });
  const started = performance.now();
  const data = (seq) => ({ seq, sent_us: nowUs(), work_ms: opts.workMs });
  if (opts.config === "best" && opts.intervalMs === 0) {
    for (let seq = 0; seq < opts.count; seq += BATCH) {
      const jobs = [];
      for (let i = seq; i < Math.min(seq + BATCH, opts.count); i++) jobs.push({ name: "step", data: data(i) });
      await queue.addBulk(jobs);
    }
  } else {
    for (let seq = 0; seq < opts.count; seq++) {
      if (opts.intervalMs) await sleep(opts.intervalMs);
      await queue.add("step", data(seq));
    }
  }
  const seconds = (performance.now() - started) / 1000;
  await queue.close();
  console.log(JSON.stringify({ seconds }));
}

async function fail(opts) {
  const queue = new Queue(FAIL_QUEUE, { connection: connection() });
  for (let seq = 0; seq < opts.count; seq++) {
    // 20 retries, 10 ms apart: the other frameworks' settings.
    await queue.add("fail_large", { seq }, { attempts: 21, backoff: { type: "fixed", delay: 10 } });
  }
  await queue.close();
}

class LargeError extends Error {
  constructor(buffer) {
    super(`failed with ${buffer.length} bytes of context`);
    this.buffer = buffer;
  }
}

function work(opts) {
  const record = recorder();
  let worker;
  if (opts.queue === "fail") {
    worker = new Worker(
      FAIL_QUEUE,
      async () => {
        record(`attempt ${nowUs()}\n`);
        throw new LargeError(Buffer.alloc(10 * 1024 * 1024, 0xa5));
      },
      { connection: connection() },
    );
  } else {
    const settings = { connection: connection() };
    if (opts.config === "best") settings.removeOnComplete = { count: 0 };
    if (opts.concurrency !== null) settings.concurrency = opts.concurrency;
    worker = new Worker(
      QUEUE,
      async (job) => {
        const started = nowUs();
        if (job.data.work_ms) await sleep(job.data.work_ms);
        record(`${job.data.seq} ${started} ${nowUs()} ${job.data.sent_us}\n`);
      },
      settings,
    );
  }
  const stop = async () => {
    await worker.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function purge() {
  for (const name of [QUEUE, FAIL_QUEUE]) {
    const queue = new Queue(name, { connection: connection() });
    await queue.obliterate({ force: true });
    await queue.close();
  }
}

async function main() {
  const opts = options(process.argv.slice(2));
  if (opts.command === "produce") await produce(opts);
  else if (opts.command === "fail") await fail(opts);
  else if (opts.command === "work") work(opts);
  else if (opts.command === "purge") await purge();
  else throw new Error(`unknown command ${opts.command}: produce, work, fail or purge`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
