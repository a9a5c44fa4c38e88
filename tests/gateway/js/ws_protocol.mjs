// The /v1/ws protocol with the npm ws client: concurrent ids on one socket, duplicate ids, cancel,
// validation errors, bad frames, ping/pong, size and slow-reader limits, and disconnect aborts.
import { check, connectWs, eq, expectedText, finish, metrics, sleep, startServer } from './server.mjs';

const connect = connectWs;

const abortCount = async (url) => (await metrics(url))['troupe_requests_total{finish_reason="abort"}'] ?? 0;

const srv = await startServer(['--step-ms', '3', '--ws-max-message', '4096', '--ws-max-buffered', '65536']);
const wsUrl = `ws://127.0.0.1:${srv.port}/v1/ws`;
try {
  // Concurrent ids on one socket, each with its own tokens and done frame
  const c = connect(wsUrl);
  await c.opened;
  c.send({ type: 'generate', id: 'a', prompt: 'hi', max_tokens: 8 });
  c.send({ type: 'generate', id: 'b', prompt_ids: [1, 2, 3], max_tokens: 5, seed: 3 });
  c.send({ type: 'generate', id: 'c', messages: [{ role: 'user', content: 'yo' }], max_tokens: 4, n: 2, logprobs: 2 });
  const doneA = await c.waitFor((f) => f.type === 'done' && f.id === 'a');
  const doneB = await c.waitFor((f) => f.type === 'done' && f.id === 'b');
  await c.waitFor((f) => f.type === 'done' && f.id === 'c' && f.index === 1);
  const textOf = (id, index = 0) => c.frames.filter((f) => f.type === 'token' && f.id === id && f.index === index).map((f) => f.text).join('');
  eq(textOf('a'), expectedText(0, 0, 8), 'id a text');
  eq(textOf('b'), expectedText(3, 0, 5), 'id b text (seeded)');
  eq(textOf('c', 1), expectedText(0, 1, 4), 'id c second sequence');
  eq(doneA.finish_reason, 'length', 'done finish_reason');
  eq(doneA.usage, { prompt_tokens: 2, completion_tokens: 8 }, 'done usage');
  eq(doneB.usage.prompt_tokens, 3, 'prompt_ids usage');
  check(doneA.timing.total_ms >= doneA.timing.ttft_ms && doneA.timing.ttft_ms > 0, 'timing', doneA.timing);
  const tokC = c.frames.find((f) => f.type === 'token' && f.id === 'c');
  check(Array.isArray(tokC.token_ids) && tokC.logprobs.length === tokC.token_ids.length && tokC.top_logprobs[0].length === 2,
        'logprobs on token frames', tokC);

  // Duplicate live id refused; the original continues
  c.send({ type: 'generate', id: 'd', prompt: 'x', max_tokens: 2000 });
  await c.waitFor((f) => f.type === 'token' && f.id === 'd');
  c.send({ type: 'generate', id: 'd', prompt: 'x', max_tokens: 5 });
  const dup = await c.waitFor((f) => f.type === 'error' && f.id === 'd');
  eq(dup.error.code, 'duplicate_id', 'duplicate live id refused');

  // Cancel ends it with finish_reason "cancelled"
  c.send({ type: 'cancel', id: 'd' });
  const doneD = await c.waitFor((f) => f.type === 'done' && f.id === 'd');
  eq(doneD.finish_reason, 'cancelled', 'cancel -> cancelled');
  check(doneD.usage.completion_tokens < 2000, 'cancelled early');
  // The id is free again
  c.send({ type: 'generate', id: 'd', prompt: 'x', max_tokens: 1 });
  eq((await c.waitFor((f) => f.type === 'done' && f.id === 'd' && f.finish_reason === 'length')).usage.completion_tokens, 1,
     'id reusable after done');

  // Application errors are error frames; the socket stays open
  c.send('{not json');
  eq((await c.waitFor((f) => f.type === 'error' && f.error.code === 'invalid_json')).id, null, 'bad JSON -> error frame');
  c.send({ type: 'launch', id: 'e' });
  eq((await c.waitFor((f) => f.type === 'error' && f.id === 'e')).error.code, 'unknown_type', 'unknown type');
  c.send({ type: 'cancel', id: 'zz' });
  eq((await c.waitFor((f) => f.type === 'error' && f.id === 'zz')).error.code, 'unknown_id', 'cancel of unknown id');
  c.send({ type: 'generate', id: 'f', prompt: 'x', temperature: 'hot' });
  const ef = await c.waitFor((f) => f.type === 'error' && f.id === 'f');
  eq(ef.error.type, 'invalid_request_error', 'validation error type');
  c.send({ type: 'generate', id: 'g', prompt_ids: [99999] });
  check(/vocabulary/.test((await c.waitFor((f) => f.type === 'error' && f.id === 'g')).error.message), 'ids outside the vocabulary');
  c.send({ type: 'generate', prompt: 'x' });
  eq((await c.waitFor((f) => f.type === 'error' && f.error.code === 'invalid_id')).id, null, 'missing id');

  // ping -> pong
  const pong = new Promise((r) => c.ws.once('pong', (d) => r(d.toString())));
  c.ws.ping('hello');
  eq(await pong, 'hello', 'pong echoes the ping payload');

  // Closing the socket aborts its live requests within a step or so
  const before = await abortCount(srv.url);
  c.send({ type: 'generate', id: 'h1', prompt: 'x', max_tokens: 3000 });
  c.send({ type: 'generate', id: 'h2', prompt: 'x', max_tokens: 3000 });
  await c.waitFor((f) => f.type === 'token' && f.id === 'h2');
  c.ws.terminate();
  let after = before;
  for (let i = 0; i < 100 && after < before + 2; i++) { await sleep(20); after = await abortCount(srv.url); }
  eq(after, before + 2, 'socket close aborted both requests');

  // Binary messages: close 1003
  const b = connect(wsUrl);
  await b.opened;
  b.ws.send(Buffer.from([1, 2, 3]));
  eq((await b.closed).code, 1003, 'binary -> 1003');

  // Oversized message: close 1009
  const o = connect(wsUrl);
  await o.opened;
  o.send({ type: 'generate', id: 'big', prompt: 'x'.repeat(10000) });
  eq((await o.closed).code, 1009, 'message over the limit -> 1009');

  // Slow reader: once its unsent output passes the cap the server aborts its requests and drops it.
  // (Requests still unread in the socket are never submitted, so count the cap, not the aborts.)
  const slow = connect(wsUrl);
  await slow.opened;
  const slowKey = 'troupe_request_errors_total{type="slow_reader"}';
  const before2 = (await metrics(srv.url))[slowKey] ?? 0;
  slow.ws._socket.pause();  // stop reading; the kernel buffers fill, then the server's queue
  for (let i = 0; i < 40; i++) slow.send({ type: 'generate', id: 's' + i, prompt: 'x', max_tokens: 3000, n: 8, logprobs: 20 });
  let m2 = await metrics(srv.url);
  for (let i = 0; i < 500 && !((m2[slowKey] ?? 0) > before2 && m2['troupe_requests_running'] === 0); i++) {
    await sleep(20);
    m2 = await metrics(srv.url);
  }
  eq((m2[slowKey] ?? 0) - before2, 1, 'slow reader cut off');
  eq(m2['troupe_requests_running'], 0, 'slow reader: its requests aborted');
  slow.ws.terminate();
  // The server sees the terminated socket's TCP close asynchronously: give it up to 5 s to notice.
  let m3 = await metrics(srv.url);
  for (let i = 0; i < 250 && m3['troupe_websocket_connections'] !== 0; i++) {
    await sleep(20);
    m3 = await metrics(srv.url);
  }
  eq(m3['troupe_requests_running'], 0, 'nothing left running');
  eq(m3['troupe_websocket_connections'], 0, 'no websocket left open');
} finally {
  await srv.stop();
}
finish('ws_protocol');
