// /v1/ws with the npm ws client against the real `troupe serve` (CPU worker, actor engine): concurrent
// ids on one socket and across sockets, token ids and text consistent with the HTTP API's greedy output,
// greedy continuation from the returned ids, duplicate ids, cancel, validation errors, and a socket that
// goes away mid-stream (its requests aborted: nothing left running, no KV blocks in use).
import { check, connectWs, eq, finish, metrics, sleep, startTroupe, waitMetrics } from './server.mjs';

const srv = await startTroupe();
const wsUrl = `ws://127.0.0.1:${srv.port}/v1/ws`;
const post = async (body) => (await fetch(srv.url + '/v1/completions', {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
})).json();
const PROMPT = 'Once upon a time';
const IDS = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];
const tokens = (c, id, index = 0) => c.frames.filter((f) => f.type === 'token' && f.id === id && f.index === index);
const textOf = (c, id, index = 0) => tokens(c, id, index).map((f) => f.text).join('');
const idsOf = (c, id, index = 0) => tokens(c, id, index).flatMap((f) => f.token_ids);
const idle = async () => {
  let m = await metrics(srv.url);
  for (let i = 0; i < 250 && (m.troupe_requests_running !== 0 || m.troupe_requests_waiting !== 0); i++) {
    await sleep(20);
    m = await metrics(srv.url);
  }
  return m;
};

try {
  // References over HTTP
  const httpGreedy = await post({ prompt: PROMPT, max_tokens: 20, temperature: 0, ignore_eos: true });
  const httpIds = await post({ prompt: IDS, max_tokens: 12, temperature: 0, ignore_eos: true });
  const httpSeeded = await post({ prompt: PROMPT, max_tokens: 16, temperature: 1, seed: 1234, ignore_eos: true });
  const httpChat = await (await fetch(srv.url + '/v1/chat/completions', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'yo' }], max_tokens: 8, temperature: 0, ignore_eos: true }),
  })).json();

  // Concurrent ids on one socket
  const c = connectWs(wsUrl);
  await c.opened;
  c.send({ type: 'generate', id: 'a', prompt: PROMPT, max_tokens: 20, temperature: 0, ignore_eos: true, logprobs: 2 });
  c.send({ type: 'generate', id: 'b', prompt_ids: IDS, max_tokens: 12, temperature: 0, ignore_eos: true });
  c.send({ type: 'generate', id: 'c', messages: [{ role: 'user', content: 'yo' }], max_tokens: 8, n: 2, temperature: 0, ignore_eos: true });
  c.send({ type: 'generate', id: 'd', prompt: PROMPT, max_tokens: 16, temperature: 1, seed: 1234, ignore_eos: true });
  const doneA = await c.waitFor((f) => f.type === 'done' && f.id === 'a', 30000);
  const doneB = await c.waitFor((f) => f.type === 'done' && f.id === 'b', 30000);
  await c.waitFor((f) => f.type === 'done' && f.id === 'c' && f.index === 1, 30000);
  const doneD = await c.waitFor((f) => f.type === 'done' && f.id === 'd', 30000);
  eq(textOf(c, 'a'), httpGreedy.choices[0].text, 'ws greedy text == HTTP greedy text (same prompt)');
  eq(doneA.finish_reason, 'length', 'ws done finish_reason length');
  eq(doneA.usage, { prompt_tokens: httpGreedy.usage.prompt_tokens, completion_tokens: 20 }, 'ws usage == HTTP usage');
  check(doneA.timing.total_ms >= doneA.timing.ttft_ms && doneA.timing.ttft_ms > 0 && doneA.timing.queue_ms >= 0, 'ws timing', doneA.timing);
  const idsA = idsOf(c, 'a');
  eq(idsA.length, 20, 'ws token_ids: one per generated token');
  check(idsA.every((t) => Number.isInteger(t) && t >= 0 && t < 1024), 'token ids in the vocabulary', idsA);
  const lpOk = tokens(c, 'a').every((f) => f.logprobs.length === f.token_ids.length && f.top_logprobs.length === f.token_ids.length &&
    f.top_logprobs.every((top, i) => top.length === 2 && top[0].id === f.token_ids[i] && Math.abs(top[0].logprob - f.logprobs[i]) < 1e-4));
  check(lpOk, 'greedy: each token is its top-1 alternative, with the same logprob', tokens(c, 'a')[0]);
  eq(textOf(c, 'b'), httpIds.choices[0].text, 'ws prompt_ids text == HTTP token-id prompt text');
  eq(doneB.usage, { prompt_tokens: IDS.length, completion_tokens: 12 }, 'ws prompt_ids usage');
  eq(textOf(c, 'c', 0), httpChat.choices[0].message.content, 'ws messages (greedy) == HTTP chat');
  eq(textOf(c, 'c', 1), httpChat.choices[0].message.content, 'ws messages n=2 greedy: choice 1 the same');
  eq(c.frames.filter((f) => f.type === 'done' && f.id === 'c').map((f) => f.usage.completion_tokens), [16, 16],
     'ws n=2: both done frames count every sequence');
  eq(textOf(c, 'd'), httpSeeded.choices[0].text, 'ws seeded text == HTTP seeded text (same seed)');
  eq(doneD.usage.completion_tokens, 16, 'ws seeded usage');

  // Greedy continuation from the returned ids: prompt + the first 5 outputs continues with the rest
  // (this also crosses a 16-token block, so the prefix cache serves part of it)
  const idsB = idsOf(c, 'b');
  c.send({ type: 'generate', id: 'b2', prompt_ids: [...IDS, ...idsB.slice(0, 5)], max_tokens: 7, temperature: 0, ignore_eos: true });
  await c.waitFor((f) => f.type === 'done' && f.id === 'b2', 30000);
  eq(idsOf(c, 'b2'), idsB.slice(5), 'greedy continuation from returned token ids');

  // stop_token_ids: the first occurrence of a generated id ends the sequence there (finish_reason stop)
  const stopId = idsB[5];
  const cut = idsB.indexOf(stopId);
  c.send({ type: 'generate', id: 'b3', prompt_ids: IDS, max_tokens: 12, temperature: 0, ignore_eos: true, stop_token_ids: [stopId] });
  const doneB3 = await c.waitFor((f) => f.type === 'done' && f.id === 'b3', 30000);
  eq(doneB3.finish_reason, 'stop', 'stop_token_ids -> finish_reason stop');
  eq(idsOf(c, 'b3'), idsB.slice(0, cut + 1), 'stop_token_ids: the ids up to and including the stop id');
  eq(doneB3.usage.completion_tokens, cut + 1, 'stop_token_ids: usage counts the stop id');
  check(textOf(c, 'b').startsWith(textOf(c, 'b3')), 'stop_token_ids: the text is a prefix of the unstopped text',
        [textOf(c, 'b3'), textOf(c, 'b')]);

  // Many sockets, many ids at once: every greedy stream is the same text (batching does not change it)
  const socks = await Promise.all(Array.from({ length: 8 }, async () => { const s = connectWs(wsUrl); await s.opened; return s; }));
  socks.forEach((s, k) => {
    for (let j = 0; j < 4; j++) s.send({ type: 'generate', id: `g${j}`, prompt: PROMPT, max_tokens: 20, temperature: 0, ignore_eos: true });
  });
  await Promise.all(socks.map((s) => Promise.all([0, 1, 2, 3].map((j) => s.waitFor((f) => f.type === 'done' && f.id === `g${j}`, 60000)))));
  const texts = new Set(socks.flatMap((s) => [0, 1, 2, 3].map((j) => textOf(s, `g${j}`))));
  eq([...texts], [httpGreedy.choices[0].text], '32 concurrent greedy streams over 8 sockets: all the HTTP greedy text');
  check(socks.every((s) => !s.frames.some((f) => f.type === 'error')), 'no errors on the 8 sockets');
  socks.forEach((s) => s.ws.close());

  // Duplicate live id refused while the original continues; cancel -> done "cancelled"; the id is free again
  c.send({ type: 'generate', id: 'long', prompt: 'x', max_tokens: 1500, ignore_eos: true });
  await c.waitFor((f) => f.type === 'token' && f.id === 'long', 30000);
  c.send({ type: 'generate', id: 'long', prompt: 'x', max_tokens: 5 });
  const dup = await c.waitFor((f) => f.type === 'error' && f.id === 'long');
  eq(dup.error.code, 'duplicate_id', 'duplicate live id refused');
  const seen = tokens(c, 'long').length;
  await c.waitFor((f) => f.type === 'token' && f.id === 'long' && tokens(c, 'long').length > seen + 2, 30000);
  check(true, 'the original request keeps streaming after the refused duplicate');
  c.send({ type: 'cancel', id: 'long' });
  const doneLong = await c.waitFor((f) => f.type === 'done' && f.id === 'long', 30000);
  eq(doneLong.finish_reason, 'cancelled', 'cancel -> finish_reason cancelled');
  check(doneLong.usage.completion_tokens < 1500, 'cancelled early', doneLong.usage);
  eq(idsOf(c, 'long').length, doneLong.usage.completion_tokens, 'cancelled: token frames == usage.completion_tokens');
  c.send({ type: 'generate', id: 'long', prompt: 'x', max_tokens: 1, ignore_eos: true });
  eq((await c.waitFor((f) => f.type === 'done' && f.id === 'long' && f.finish_reason === 'length', 30000)).usage.completion_tokens, 1,
     'id reusable after done');
  c.send({ type: 'cancel', id: 'long' });
  eq((await c.waitFor((f) => f.type === 'error' && f.id === 'long' && f.error.code === 'unknown_id')).error.code, 'unknown_id',
     'cancel after done: unknown id');

  // Validation on the real model: vocabulary, context, model name, types; the socket stays usable
  c.send({ type: 'generate', id: 'v1', prompt_ids: [1024] });
  check(/vocabulary/.test((await c.waitFor((f) => f.type === 'error' && f.id === 'v1')).error.message), 'ids outside the vocabulary');
  c.send({ type: 'generate', id: 'v2', prompt: 'x', max_tokens: 2048 });
  const v2 = await c.waitFor((f) => f.type === 'error' && f.id === 'v2');
  check(v2.error.type === 'invalid_request_error' && /context/.test(v2.error.message), 'prompt + max_tokens over the context', v2.error);
  c.send({ type: 'generate', id: 'v3', prompt: 'x', model: 'gpt-9' });
  eq((await c.waitFor((f) => f.type === 'error' && f.id === 'v3')).error.code, 'model_not_found', 'unknown model');
  c.send({ type: 'generate', id: 'v4', prompt: 'x', temperature: 'hot' });
  eq((await c.waitFor((f) => f.type === 'error' && f.id === 'v4')).error.type, 'invalid_request_error', 'wrong type');
  c.send('{not json');
  await c.waitFor((f) => f.type === 'error' && f.error.code === 'invalid_json');
  c.send({ type: 'generate', id: 'v5', prompt: PROMPT, max_tokens: 20, temperature: 0, ignore_eos: true });
  await c.waitFor((f) => f.type === 'done' && f.id === 'v5', 30000);
  eq(textOf(c, 'v5'), httpGreedy.choices[0].text, 'the socket still serves after the errors');

  // A socket that goes away mid-stream: its requests are aborted; running 0, no KV in use afterwards
  const abortKey = 'troupe_requests_total{finish_reason="abort"}';
  const before = (await metrics(srv.url))[abortKey] ?? 0;
  c.send({ type: 'generate', id: 'h1', prompt: 'x', max_tokens: 1500, ignore_eos: true });
  c.send({ type: 'generate', id: 'h2', messages: [{ role: 'user', content: 'x' }], max_tokens: 1500, n: 2, ignore_eos: true });
  await c.waitFor((f) => f.type === 'token' && f.id === 'h1', 30000);
  await c.waitFor((f) => f.type === 'token' && f.id === 'h2', 30000);
  const running = (await metrics(srv.url)).troupe_requests_running;
  check(running >= 2, 'both requests running before the disconnect', running);
  c.ws.terminate();
  let m = await idle();
  for (let i = 0; i < 250 && ((m[abortKey] ?? 0) < before + 3 || m.troupe_websocket_connections !== 0); i++) {
    await sleep(20);
    m = await metrics(srv.url);
  }
  eq((m[abortKey] ?? 0) - before, 3, 'socket close aborted both requests (3 sequences)');
  eq(m.troupe_requests_running, 0, 'after the disconnect: troupe_requests_running 0');
  eq(m.troupe_requests_waiting, 0, 'after the disconnect: troupe_requests_waiting 0');
  eq(m.troupe_kv_cache_usage_ratio, 0, 'after the disconnect: no KV blocks in use');
  eq(m.troupe_websocket_connections, 0, 'no websocket left open');
} finally {
  const { code } = await srv.stop();
  eq(code, 0, 'troupe serve exits 0 on SIGTERM');
}

// Requests still waiting for a slot (one running at a time): cancelling one, an HTTP client leaving one,
// and a socket closing with one running and two waiting all leave nothing behind.
const one = await startTroupe(['--max-num-seqs', '1']);
try {
  const abortKey = 'troupe_requests_total{finish_reason="abort"}';
  const q = connectWs(`ws://127.0.0.1:${one.port}/v1/ws`);
  await q.opened;
  for (let i = 0; i < 4; i++) q.send({ type: 'generate', id: `q${i}`, prompt: 'x', max_tokens: 1500, ignore_eos: true, n: i === 3 ? 2 : 1 });
  await q.waitFor((f) => f.type === 'token', 30000);
  let m = await waitMetrics(one.url, (x) => x.troupe_requests_waiting === 3);
  eq([m.troupe_requests_running, m.troupe_requests_waiting], [1, 3], 'one running, three waiting');
  const running = q.frames.find((f) => f.type === 'token').id;
  const waitingId = ['q1', 'q2', 'q3'].find((id) => id !== running);
  q.send({ type: 'cancel', id: waitingId });
  const dq = await q.waitFor((f) => f.type === 'done' && f.id === waitingId);
  eq([dq.finish_reason, dq.usage.completion_tokens], ['cancelled', 0], 'a waiting request cancelled: done, no tokens');
  m = await waitMetrics(one.url, (x) => x.troupe_requests_waiting === 2 && x[abortKey] === 1);
  eq([m.troupe_requests_waiting, m[abortKey]], [2, 1], 'the cancelled request no longer waits; one abort counted');
  const ac = new AbortController();
  const httpWaiting = fetch(one.url + '/v1/completions', {
    method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
    body: JSON.stringify({ prompt: 'y', max_tokens: 100 }),
  }).catch(() => 'aborted');
  m = await waitMetrics(one.url, (x) => x.troupe_requests_waiting === 3);
  eq(m.troupe_requests_waiting, 3, 'the HTTP request waits too');
  ac.abort();
  eq(await httpWaiting, 'aborted', 'the HTTP client left');
  m = await waitMetrics(one.url, (x) => x.troupe_requests_waiting === 2 && x[abortKey] === 2);
  eq([m.troupe_requests_waiting, m[abortKey]], [2, 2], 'the left HTTP request no longer waits; counted as aborted');
  q.ws.terminate();
  // (the gauges are published by the scheduler, the abort counts by the output actor a moment later)
  m = await waitMetrics(one.url, (x) => x.troupe_requests_running === 0 && x.troupe_requests_waiting === 0 &&
                                        x.troupe_websocket_connections === 0 && x[abortKey] === 6);
  eq([m.troupe_requests_running, m.troupe_requests_waiting, m.troupe_kv_cache_usage_ratio], [0, 0, 0],
     'after the socket closed: nothing running or waiting, no KV in use');
  // the socket's three left requests, one with n = 2: 4 more sequences aborted
  eq(m[abortKey], 6, 'every left sequence counted as aborted');
} finally {
  await one.stop();
}
finish('serve_ws');
