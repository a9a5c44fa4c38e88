// Bounded load test: 200 concurrent streaming clients (SSE over keep-alive connections) for
// TROUPE_LOAD_SECONDS (default 20) against the fake engine; every stream must arrive whole, with no
// errors, and nothing may be left running afterwards. Prints requests/s, tokens/s and latency.
import { check, eq, expectedText, finish, metrics, readSSE, startServer } from './server.mjs';

const CLIENTS = Number(process.env.TROUPE_LOAD_CLIENTS || 200);
const SECONDS = Number(process.env.TROUPE_LOAD_SECONDS || 20);
const srv = await startServer(['--step-ms', '5', '--max-live', String(CLIENTS * 2), '--threads', '2']);
const latencies = [];
let requests = 0, tokens = 0, errors = 0;
const firstErrors = [];
const deadline = Date.now() + SECONDS * 1000;

async function client(c) {
  while (Date.now() < deadline) {
    const maxTokens = 16 + ((c * 7 + requests) % 33);
    const seed = c % 11;
    const t0 = performance.now();
    try {
      const res = await fetch(srv.url + '/v1/completions', {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'load test', max_tokens: maxTokens, seed, stream: true, stream_options: { include_usage: true } }),
      });
      if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
      const events = await readSSE(res);
      const text = events.filter((e) => e !== '[DONE]').flatMap((e) => e.choices.map((ch) => ch.text)).join('');
      const usage = events.find((e) => e !== '[DONE]' && e.usage)?.usage;
      if (text !== expectedText(seed, 0, maxTokens)) throw new Error(`wrong text ${JSON.stringify(text)}`);
      if (events[events.length - 1] !== '[DONE]') throw new Error('no [DONE]');
      if (usage?.completion_tokens !== maxTokens) throw new Error('wrong usage');
      requests++;
      tokens += maxTokens;
      latencies.push(performance.now() - t0);
    } catch (e) {
      errors++;
      if (firstErrors.length < 5) firstErrors.push(String(e));
    }
  }
}

try {
  const start = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));
  const secs = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]?.toFixed(1);
  console.log(`load: ${CLIENTS} clients, ${secs.toFixed(1)} s: ${requests} requests (${(requests / secs).toFixed(1)} req/s), ` +
              `${tokens} tokens (${(tokens / secs).toFixed(0)} tok/s), latency p50 ${pct(0.5)} ms p99 ${pct(0.99)} ms, ${errors} errors`);
  eq(errors, 0, 'no errors under load', firstErrors);
  check(requests > CLIENTS, 'every client completed requests', requests);
  const m = await metrics(srv.url);
  eq(m['troupe_requests_running'], 0, 'nothing left running (no leaked requests)');
  eq(m['troupe_requests_total{finish_reason="abort"}'], 0, 'nothing aborted');
} finally {
  await srv.stop();
}
finish('load');
