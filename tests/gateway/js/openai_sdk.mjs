// The npm openai SDK against the gateway + fake engine: completions and chat, streamed and not, n, seed,
// stop, logprobs, usage, error classes, and a client that walks away mid-stream.
import { check, eq, expectedText, finish, metrics, requireNpm, sleep, startServer } from './server.mjs';

const openaiModule = requireNpm('openai');
const OpenAI = openaiModule.default ?? openaiModule.OpenAI ?? openaiModule;

const srv = await startServer(['--step-ms', '2']);
const client = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'unused', maxRetries: 0 });
try {
  // Models
  const models = await client.models.list();
  eq(models.data.map((m) => m.id), ['fake-model'], 'models.list');

  // Completion, not streamed
  const c = await client.completions.create({ model: 'fake-model', prompt: 'hello', max_tokens: 12 });
  check(c.id.startsWith('cmpl-'), 'completion id prefix', c.id);
  eq(c.object, 'text_completion', 'completion object');
  eq(c.choices[0].text, expectedText(0, 0, 12), 'completion text');
  eq(c.choices[0].finish_reason, 'length', 'completion finish_reason');
  eq(c.usage, { prompt_tokens: 5, completion_tokens: 12, total_tokens: 17 }, 'completion usage');

  // Completion, streamed, with usage
  const stream = await client.completions.create({
    model: 'fake-model', prompt: 'hello', max_tokens: 10, stream: true, stream_options: { include_usage: true },
  });
  let text = '', finishReason = null, usage = null, ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      text += ch.text;
      if (ch.finish_reason) finishReason = ch.finish_reason;
    }
  }
  eq(text, expectedText(0, 0, 10), 'streamed completion text');
  eq(finishReason, 'length', 'streamed finish_reason');
  eq(usage, { prompt_tokens: 5, completion_tokens: 10, total_tokens: 15 }, 'streamed usage chunk');
  eq(ids.size, 1, 'one id per stream');

  // n and seed: choice i starts 7*i characters further in
  const n = await client.completions.create({ prompt: 'x', max_tokens: 6, n: 3, seed: 5 });
  eq(n.choices.map((ch) => ch.text), [0, 1, 2].map((i) => expectedText(5, i, 6)), 'n=3 with seed');
  eq(n.usage.completion_tokens, 18, 'usage counts every choice');

  // Stop strings: the text ends before the stop string, finish_reason stop
  const s = await client.completions.create({ prompt: 'x', max_tokens: 40, stop: ['fox', 'zzz'] });
  eq(s.choices[0].text, 'the quick brown ', 'stop string cut');
  eq(s.choices[0].finish_reason, 'stop', 'stop finish_reason');
  const ss = await client.completions.create({ prompt: 'x', max_tokens: 40, stop: 'brown', stream: true });
  let st = '', sfr = null;
  for await (const chunk of ss) for (const ch of chunk.choices) { st += ch.text; sfr = ch.finish_reason ?? sfr; }
  eq(st, 'the quick ', 'streamed stop string cut (held back, never sent)');
  eq(sfr, 'stop', 'streamed stop finish_reason');

  // Completion logprobs
  const lp = await client.completions.create({ prompt: 'x', max_tokens: 3, logprobs: 2 });
  const L = lp.choices[0].logprobs;
  eq(L.tokens, ['t', 'h', 'e'], 'logprobs tokens');
  eq(L.token_logprobs, [-0.5, -0.5, -0.5], 'token_logprobs');
  eq(L.top_logprobs.length, 3, 'top_logprobs per token');
  eq(Object.keys(L.top_logprobs[0]).length, 2, 'two top logprobs');
  eq(L.text_offset, [0, 1, 2], 'text_offset');

  // Chat, not streamed and streamed
  const chat = await client.chat.completions.create({
    model: 'fake-model', messages: [{ role: 'user', content: 'hi' }], max_tokens: 9,
  });
  check(chat.id.startsWith('chatcmpl-'), 'chat id prefix', chat.id);
  eq(chat.object, 'chat.completion', 'chat object');
  eq(chat.choices[0].message, { role: 'assistant', content: expectedText(0, 0, 9) }, 'chat message');
  eq(chat.choices[0].finish_reason, 'length', 'chat finish_reason');
  // ChatML "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n": 52 bytes, one token each here
  eq(chat.usage.prompt_tokens, 52, 'chat prompt rendered with the template');

  const cs = await client.chat.completions.create({
    messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hi' }], max_tokens: 7, stream: true,
    stream_options: { include_usage: true }, logprobs: true, top_logprobs: 3,
  });
  let ctext = '', role = null, cfr = null, cusage = null, lpCount = 0;
  for await (const chunk of cs) {
    eq(chunk.object, 'chat.completion.chunk', 'chunk object');
    if (chunk.usage) cusage = chunk.usage;
    for (const ch of chunk.choices) {
      if (ch.delta.role) role = ch.delta.role;
      ctext += ch.delta.content ?? '';
      if (ch.finish_reason) cfr = ch.finish_reason;
      if (ch.logprobs) {
        for (const t of ch.logprobs.content) { lpCount++; check(t.top_logprobs.length === 3, 'chat top_logprobs'); }
      }
    }
  }
  eq(role, 'assistant', 'chat stream role');
  eq(ctext, expectedText(0, 0, 7), 'chat stream text');
  eq(cfr, 'length', 'chat stream finish_reason');
  eq(lpCount, 7, 'chat logprobs for every token');
  eq(cusage?.completion_tokens, 7, 'chat stream usage');

  // Errors come back as the SDK's error classes
  try {
    await client.completions.create({ model: 'nope', prompt: 'x' });
    check(false, 'unknown model must fail');
  } catch (e) {
    eq(e.status, 404, 'unknown model status');
    eq(e.code, 'model_not_found', 'unknown model code');
    check(e instanceof OpenAI.NotFoundError, 'NotFoundError class');
  }
  try {
    await client.completions.create({ prompt: 'x', temperature: -3 });
    check(false, 'bad temperature must fail');
  } catch (e) {
    eq(e.status, 400, 'bad temperature status');
    eq(e.param, 'temperature', 'bad temperature param');
    check(e instanceof OpenAI.BadRequestError, 'BadRequestError class');
  }
  try {
    await client.completions.create({ prompt: 'x', max_tokens: 5000 });
    check(false, 'context overflow must fail');
  } catch (e) {
    eq(e.status, 400, 'context overflow status');
    check(/maximum context length/.test(e.message), 'context overflow message', e.message);
  }

  // A client that walks away mid-stream aborts its request
  const before = (await metrics(srv.url))['troupe_requests_total{finish_reason="abort"}'] ?? 0;
  const ac = new AbortController();
  const long = await client.completions.create({ prompt: 'x', max_tokens: 3000, stream: true }, { signal: ac.signal });
  let got = 0;
  try {
    for await (const chunk of long) { if (++got === 5) ac.abort(); }
  } catch (e) { /* aborted */ }
  let after = before;
  for (let i = 0; i < 100 && after === before; i++) {
    await sleep(20);
    after = (await metrics(srv.url))['troupe_requests_total{finish_reason="abort"}'];
  }
  eq(after, before + 1, 'disconnect mid-stream aborted the request');
  const m = await metrics(srv.url);
  eq(m['troupe_requests_running'], 0, 'nothing left running');
} finally {
  await srv.stop();
}

// A model without a chat template: chat is a clear 400, completions still work
const bare = await startServer(['--no-chat-template']);
try {
  const c2 = new OpenAI({ baseURL: bare.url + '/v1', apiKey: 'x', maxRetries: 0 });
  try {
    await c2.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }] });
    check(false, 'chat without template must fail');
  } catch (e) {
    eq(e.status, 400, 'no template status');
    eq(e.code, 'chat_template_missing', 'no template code');
    check(/no chat template/.test(e.message), 'no template message', e.message);
  }
  const ok = await c2.completions.create({ prompt: 'a', max_tokens: 2 });
  eq(ok.choices[0].text, 'th', 'completions without a template');
} finally {
  await bare.stop();
}
finish('openai_sdk');
