// The npm openai SDK against the real `troupe serve` (models/default, random weights, on the CPU worker
// through the actor engine): completions and chat, streamed and not; n, logprobs, seeds, stop strings,
// max_tokens and ignore_eos, /v1/models and the error classes. The model's text is gibberish, so the
// checks compare the server with itself: streamed == not streamed, same seed == same text, greedy
// chat == greedy completion of the rendered prompt, a stop string cuts the greedy text where it occurs.
import { check, eq, finish, metrics, requireNpm, sleep, startTroupe } from './server.mjs';

const openaiModule = requireNpm('openai');
const OpenAI = openaiModule.default ?? openaiModule.OpenAI ?? openaiModule;

// Concatenates a completions stream: text per choice, finish reasons, usage, ids.
async function drainCompletion(stream) {
  const text = [], finish = [], ids = new Set();
  let usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    ids.add(chunk.id);
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      text[ch.index] = (text[ch.index] ?? '') + ch.text;
      if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
    }
  }
  return { text, finish, usage, ids, chunks };
}

// A stop string that occurs in `text`: the first `len` characters from position `from` on that hold no
// U+FFFD (the random model emits stray bytes), or '' when there are none.
function pickStop(text, from, len) {
  for (let i = from; i + len <= text.length; i++) {
    const s = text.slice(i, i + len);
    if (!s.includes('\ufffd')) return s;
  }
  return '';
}

const srv = await startTroupe();
const client = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const MODEL = 'default';
const PROMPT = 'The capital of France is';
try {
  // Models
  const models = await client.models.list();
  eq(models.data.map((m) => m.id), [MODEL], 'models.list names the served model');
  eq(models.data[0]?.object, 'model', 'model object');

  // max_tokens -> finish_reason length, usage.completion_tokens == max_tokens (ignore_eos: a random model
  // may draw its EOS anywhere)
  const g = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true });
  check(/^cmpl-[0-9a-f]{32}$/.test(g.id), 'completion id', g.id);
  eq(g.object, 'text_completion', 'completion object');
  eq(g.model, MODEL, 'completion model');
  eq(g.choices.length, 1, 'one choice');
  eq(g.choices[0].finish_reason, 'length', 'max_tokens -> finish_reason length');
  eq(g.usage.completion_tokens, 24, 'usage.completion_tokens == max_tokens');
  check(g.usage.prompt_tokens > 1 && g.usage.prompt_tokens < 24, 'prompt tokens counted', g.usage);
  eq(g.usage.total_tokens, g.usage.prompt_tokens + g.usage.completion_tokens, 'total_tokens');
  const greedy = g.choices[0].text;
  check(greedy.length > 0, 'greedy text is not empty', greedy);

  // Greedy is deterministic; streamed == non-streamed concatenation
  const g2 = await client.completions.create({ prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true });
  eq(g2.choices[0].text, greedy, 'greedy: same text twice');
  const gs = await drainCompletion(await client.completions.create({
    prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true },
  }));
  eq(gs.text, [greedy], 'greedy: streamed == non-streamed');
  eq(gs.finish, ['length'], 'streamed finish_reason length');
  eq(gs.usage, g.usage, 'streamed usage chunk == non-streamed usage');
  eq(gs.ids.size, 1, 'one id per stream');
  check(gs.chunks >= 3, 'the stream came in several chunks', gs.chunks);
  // A shorter greedy run is a prefix of the longer one
  const g8 = await client.completions.create({ prompt: PROMPT, max_tokens: 8, temperature: 0, ignore_eos: true });
  check(greedy.startsWith(g8.choices[0].text), 'greedy 8 tokens is a prefix of greedy 24', [g8.choices[0].text, greedy]);
  // A one-element prompt array is the same prompt
  const gi = await client.completions.create({ prompt: [PROMPT], max_tokens: 24, temperature: 0, ignore_eos: true });
  eq([gi.choices[0].text, gi.usage], [greedy, g.usage], 'prompt [text] == prompt text');

  // Seeds: same seed -> same text (streamed or not); another seed -> other text
  const seeded = (seed, extra = {}) => client.completions.create({
    prompt: PROMPT, max_tokens: 16, temperature: 1, seed, ignore_eos: true, ...extra,
  });
  const s1 = await seeded(1234);
  const s2 = await seeded(1234);
  eq(s2.choices[0].text, s1.choices[0].text, 'same seed -> same text');
  const s1s = await drainCompletion(await seeded(1234, { stream: true }));
  eq(s1s.text, [s1.choices[0].text], 'same seed: streamed == non-streamed');
  const s3 = await seeded(4321);
  check(s3.choices[0].text !== s1.choices[0].text, 'another seed -> other text', [s1.choices[0].text, s3.choices[0].text]);

  // n > 1: n choices, usage counts each; sampled choices differ, greedy ones agree; streamed == not
  const n3 = await seeded(1234, { n: 3 });
  eq(n3.choices.map((c) => c.index), [0, 1, 2], 'n=3: three choices in order');
  eq(n3.choices.map((c) => c.finish_reason), ['length', 'length', 'length'], 'n=3 finish reasons');
  eq(n3.usage.completion_tokens, 48, 'n=3: usage counts every choice');
  eq(n3.usage.prompt_tokens, s1.usage.prompt_tokens, 'n=3: the prompt counted once');
  check(new Set(n3.choices.map((c) => c.text)).size === 3, 'n=3 sampled choices differ', n3.choices.map((c) => c.text));
  eq(n3.choices[0].text, s1.choices[0].text, 'n=3 choice 0 == n=1 with the same seed');
  const n3s = await drainCompletion(await seeded(1234, { n: 3, stream: true, stream_options: { include_usage: true } }));
  eq(n3s.text, n3.choices.map((c) => c.text), 'n=3 streamed == non-streamed');
  eq(n3s.usage?.completion_tokens, 48, 'n=3 streamed usage');
  const ng = await client.completions.create({ prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true, n: 2 });
  eq(ng.choices.map((c) => c.text), [greedy, greedy], 'n=2 greedy: both choices are the greedy text');

  // Logprobs (completions): one entry per token, top alternatives, offsets; greedy picks the top one
  const lp = await client.completions.create({ prompt: PROMPT, max_tokens: 12, temperature: 0, ignore_eos: true, logprobs: 3 });
  const L = lp.choices[0].logprobs;
  eq(lp.choices[0].text, greedy.slice(0, lp.choices[0].text.length), 'logprobs do not change the greedy text');
  eq(L.tokens.length, 12, 'logprobs.tokens: one per token');
  eq(L.token_logprobs.length, 12, 'token_logprobs: one per token');
  eq(L.top_logprobs.length, 12, 'top_logprobs: one per token');
  eq(L.text_offset.length, 12, 'text_offset: one per token');
  check(L.token_logprobs.every((x) => x <= 1e-6 && Number.isFinite(x)), 'token logprobs are finite and <= 0', L.token_logprobs);
  check(L.top_logprobs.every((t) => Object.keys(t).length >= 1 && Object.keys(t).length <= 3), 'at most 3 top logprobs', L.top_logprobs);
  check(L.top_logprobs.every((t, i) => Math.abs(Math.max(...Object.values(t)) - L.token_logprobs[i]) < 1e-4),
        'greedy: the sampled token has the top logprob', { top: L.top_logprobs, lp: L.token_logprobs });
  check(L.top_logprobs.every((t) => Object.values(t).reduce((a, x) => a + Math.exp(x), 0) <= 1 + 1e-4), 'top probabilities sum to <= 1');
  check(L.text_offset.every((o, i) => i === 0 || o >= L.text_offset[i - 1]), 'text_offset non-decreasing', L.text_offset);
  eq(L.tokens.join(''), lp.choices[0].text, 'logprobs tokens concatenate to the text (ASCII output here)');
  // text_offset counts characters, as in OpenAI's API and vLLM (the running length of the tokens'
  // spellings). This prompt's greedy output has stray bytes and a 2-byte character.
  // (Was a bug: offsets counted UTF-8 bytes and restarted from the emitted text at each delta.)
  const nonAscii = (await client.completions.create({ prompt: 'Once upon a time', max_tokens: 12, temperature: 0, ignore_eos: true, logprobs: 1 }))
    .choices[0].logprobs;
  const wantOffsets = nonAscii.tokens.map((_, i) => [...nonAscii.tokens.slice(0, i).join('')].length);
  check(nonAscii.tokens.some((t) => /[^\x00-\x7f]/.test(t)), 'the output has non-ASCII tokens', nonAscii.tokens);
  eq(nonAscii.text_offset, wantOffsets, 'text_offset in characters for non-ASCII tokens');

  // Sampled (not greedy) logprobs: OpenAI's legacy completions "always return the logprob of the sampled
  // token, so there may be up to logprobs+1 elements" in each top_logprobs entry (vLLM does the same).
  // (Was a bug: only the top N were returned, and logprobs: 0 gave empty objects.)
  const hotLp = await client.completions.create({ prompt: 'x', max_tokens: 6, temperature: 100, seed: 3, logprobs: 1, ignore_eos: true });
  const H = hotLp.choices[0].logprobs;
  check(H.top_logprobs.every((t, i) => Object.keys(t).length <= 2 && Math.abs(t[H.tokens[i]] - H.token_logprobs[i]) < 1e-4),
        'completions top_logprobs include the sampled token', { tokens: H.tokens, top: H.top_logprobs });

  // Stop strings: cut the greedy text at the first occurrence; finish_reason stop; streamed the same
  const stop = pickStop(greedy, Math.floor(greedy.length / 2), 3);
  if (stop.length === 0) {
    check(false, 'could not pick a stop string from the greedy text', greedy);
  } else {
    const want = greedy.slice(0, greedy.indexOf(stop));
    const st = await client.completions.create({ prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true, stop: [stop, 'never-there'] });
    eq(st.choices[0].text, want, `stop string ${JSON.stringify(stop)} cuts the greedy text`);
    eq(st.choices[0].finish_reason, 'stop', 'stop string -> finish_reason stop');
    check(st.usage.completion_tokens < 24, 'stop string: generation ended early', st.usage);
    const sts = await drainCompletion(await client.completions.create({
      prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true, stop, stream: true,
    }));
    eq(sts.text, [want], 'streamed stop string: held back, never sent');
    eq(sts.finish, ['stop'], 'streamed stop finish_reason');
  }

  // A stop string whose start ends the text is held back while it might still match, then sent whole
  // when the sequence ends by length
  const tailStop = greedy.slice(-2) + '\u0007\u0007';
  const held = await client.completions.create({ prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true, stop: tailStop });
  eq([held.choices[0].text, held.choices[0].finish_reason], [greedy, 'length'], 'a partly matched stop string is flushed at the end');
  const heldS = await drainCompletion(await client.completions.create({
    prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true, stop: tailStop, stream: true,
  }));
  eq(heldS.text, [greedy], 'streamed: a partly matched stop string is flushed at the end');

  // Truncations that leave only the top token sample the greedy text whatever the seed
  for (const extra of [{ top_k: 1 }, { top_p: 1e-6 }, { min_p: 1 }]) {
    const t = await client.completions.create({ prompt: PROMPT, max_tokens: 24, temperature: 1, seed: 5, ignore_eos: true, ...extra });
    eq(t.choices[0].text, greedy, `${JSON.stringify(extra)} at temperature 1 == greedy`);
  }

  // Stop strings with n > 1: each choice stops on its own; the others run on. Choice i's text is its
  // unstopped text (same seed) cut at the stop string's first occurrence, if it occurs at all.
  const nstop = pickStop(n3.choices[0].text, Math.floor(n3.choices[0].text.length / 3), 2);
  check(nstop.length === 2, 'picked a stop string from choice 0', n3.choices[0].text);
  const n3stop = await seeded(1234, { n: 3, stop: nstop });
  const wantN = n3.choices.map((c) => (c.text.includes(nstop) ? c.text.slice(0, c.text.indexOf(nstop)) : c.text));
  eq(n3stop.choices.map((c) => c.text), wantN, `n=3 with stop ${JSON.stringify(nstop)}: each choice cut at its own occurrence`);
  eq(n3stop.choices.map((c) => c.finish_reason), n3.choices.map((c) => (c.text.includes(nstop) ? 'stop' : 'length')),
     'n=3 with stop: finish reason per choice');
  const n3stopS = await drainCompletion(await seeded(1234, { n: 3, stop: nstop, stream: true }));
  eq(n3stopS.text, wantN, 'n=3 with stop, streamed');

  // The prefix cache: the same 90-token prompt twice; the second answer says how much of it was cached
  // (docs/http-api.md: usage.prompt_tokens_details.cached_tokens "when the prefix cache hit").
  const longPrompt = 'The quick brown fox jumps over the lazy dog and then runs away into the forest where it hides '.repeat(2);
  const pc1 = await client.completions.create({ prompt: longPrompt, max_tokens: 4, temperature: 0, ignore_eos: true });
  const hitsBefore = (await metrics(srv.url)).troupe_prefix_cache_hits_total ?? 0;
  const pc2 = await client.completions.create({ prompt: longPrompt, max_tokens: 4, temperature: 0, ignore_eos: true });
  const hits = ((await metrics(srv.url)).troupe_prefix_cache_hits_total ?? 0) - hitsBefore;
  eq(pc2.choices[0].text, pc1.choices[0].text, 'a prefix-cache hit does not change the greedy text');
  check(hits > 0, 'the repeated prompt hit the prefix cache (troupe_prefix_cache_hits_total)', hits);
  // (Was a bug: the engine never filled request_usage::cached_prompt_tokens.)
  const cached = pc2.usage.prompt_tokens_details?.cached_tokens;
  check(cached > 0 && cached % 16 === 0 && cached < pc2.usage.prompt_tokens,
        'usage.prompt_tokens_details.cached_tokens reports the prefix-cache hit', pc2.usage);

  // ignore_eos: at a very high temperature (nearly uniform over 1024 ids) EOS comes up about once per
  // 1024 tokens, so some of 8 x 600 tokens stop early; with ignore_eos all run to max_tokens.
  const hot = { prompt: 'x', max_tokens: 600, temperature: 100, seed: 7, n: 8 };
  const noIgnore = await client.completions.create(hot);
  const stopped = noIgnore.choices.filter((c) => c.finish_reason === 'stop').length;
  check(stopped >= 1, 'without ignore_eos some choice draws EOS and stops', noIgnore.choices.map((c) => c.finish_reason));
  check(noIgnore.usage.completion_tokens < 8 * 600, 'EOS-stopped choices are shorter', noIgnore.usage);
  const ignored = await client.completions.create({ ...hot, ignore_eos: true });
  eq(ignored.choices.map((c) => c.finish_reason), Array(8).fill('length'), 'ignore_eos: every choice runs to max_tokens');
  eq(ignored.usage.completion_tokens, 8 * 600, 'ignore_eos: usage is n x max_tokens');

  // Chat: models/default has a ChatML template. Greedy chat == greedy completion of the rendered prompt
  // (the template starts with bos_token, which the completion route adds itself).
  const msgs = [{ role: 'user', content: 'hi' }];
  const chat = await client.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 16, temperature: 0, ignore_eos: true });
  check(/^chatcmpl-[0-9a-f]{32}$/.test(chat.id), 'chat id', chat.id);
  eq(chat.object, 'chat.completion', 'chat object');
  eq(chat.choices[0].message.role, 'assistant', 'chat message role');
  eq(chat.choices[0].finish_reason, 'length', 'chat finish_reason');
  eq(chat.usage.completion_tokens, 16, 'chat usage.completion_tokens');
  const rendered = await client.completions.create({
    prompt: '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n', max_tokens: 16, temperature: 0, ignore_eos: true,
  });
  eq(chat.usage.prompt_tokens, rendered.usage.prompt_tokens, 'chat prompt = the template rendering, tokenized');
  eq(chat.choices[0].message.content, rendered.choices[0].text, 'greedy chat == greedy completion of the rendering');

  const cs = await client.chat.completions.create({
    messages: [{ role: 'system', content: 'be brief' }, ...msgs], max_tokens: 10, temperature: 0, ignore_eos: true,
    stream: true, stream_options: { include_usage: true }, logprobs: true, top_logprobs: 2,
  });
  let ctext = '', role = null, cfr = null, cusage = null, lpCount = 0, topOk = true;
  for await (const chunk of cs) {
    if (chunk.object !== 'chat.completion.chunk') check(false, 'chunk object', chunk.object);
    if (chunk.usage) cusage = chunk.usage;
    for (const ch of chunk.choices) {
      if (ch.delta.role) role = ch.delta.role;
      ctext += ch.delta.content ?? '';
      if (ch.finish_reason) cfr = ch.finish_reason;
      for (const t of ch.logprobs?.content ?? []) {
        lpCount++;
        if (t.top_logprobs.length !== 2 || Math.abs(t.top_logprobs[0].logprob - t.logprob) > 1e-4) topOk = false;
      }
    }
  }
  eq(role, 'assistant', 'chat stream role');
  eq(cfr, 'length', 'chat stream finish_reason');
  eq(cusage?.completion_tokens, 10, 'chat stream usage');
  eq(lpCount, 10, 'chat logprobs for every token');
  check(topOk, 'chat top_logprobs: 2 each, the greedy token first');
  const cns = await client.chat.completions.create({
    messages: [{ role: 'system', content: 'be brief' }, ...msgs], max_tokens: 10, temperature: 0, ignore_eos: true,
  });
  eq(ctext, cns.choices[0].message.content, 'chat: streamed == non-streamed (greedy)');

  // Chat without max_tokens: the rest of the context
  const words = Array.from({ length: 710 }, (_, i) => 'w' + (i % 50)).join(' ');
  const rest = await client.chat.completions.create({ messages: [{ role: 'user', content: words }], ignore_eos: true });
  eq(rest.usage.total_tokens, 2048, 'chat without max_tokens runs to the end of the context');
  eq(rest.choices[0].finish_reason, 'length', 'chat without max_tokens: finish_reason length');

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
    await client.chat.completions.create({ model: 'nope', messages: msgs });
    check(false, 'unknown model (chat) must fail');
  } catch (e) {
    eq(e.status, 404, 'unknown model (chat) status');
  }
  try {
    await client.completions.create({ prompt: 'x', max_tokens: 2048 });
    check(false, 'prompt + max_tokens over the context must fail');
  } catch (e) {
    eq(e.status, 400, 'context overflow status');
    check(e instanceof OpenAI.BadRequestError, 'context overflow BadRequestError');
    check(/context/.test(e.message), 'context overflow message', e.message);
  }
  try {
    await client.completions.create({ prompt: Array.from({ length: 2100 }, (_, i) => 4 + (i % 1000)), max_tokens: 1 });
    check(false, 'a prompt longer than the context must fail');
  } catch (e) {
    eq(e.status, 400, 'prompt over the context status');
  }
  const edge = await client.completions.create({
    prompt: Array.from({ length: 2040 }, (_, i) => 4 + ((i * 37) % 1000)), max_tokens: 8, temperature: 0, ignore_eos: true,
  });
  eq([edge.usage.prompt_tokens, edge.usage.completion_tokens], [2040, 8], 'prompt + max_tokens == the context runs to the end');

  // A client that walks away mid-stream aborts its request; nothing stays running
  const abortKey = 'troupe_requests_total{finish_reason="abort"}';
  const before = (await metrics(srv.url))[abortKey] ?? 0;
  const ac = new AbortController();
  const long = await client.completions.create({ prompt: 'x', max_tokens: 2000, ignore_eos: true, stream: true }, { signal: ac.signal });
  let got = 0;
  try {
    for await (const chunk of long) { if (++got === 5) ac.abort(); }
  } catch (e) { /* aborted */ }
  let m = await metrics(srv.url);
  for (let i = 0; i < 250 && ((m[abortKey] ?? 0) === before || m.troupe_requests_running !== 0); i++) {
    await sleep(20);
    m = await metrics(srv.url);
  }
  eq((m[abortKey] ?? 0) - before, 1, 'disconnect mid-stream aborted the request');
  eq(m.troupe_requests_running, 0, 'nothing left running');
  eq(m.troupe_requests_waiting, 0, 'nothing left waiting');
  eq(m.troupe_kv_cache_usage_ratio, 0, 'no KV blocks left in use');

  // The same for a client that gives up waiting for a non-streamed answer
  const ac2 = new AbortController();
  const waiting = client.completions.create({ prompt: 'x', max_tokens: 2000, ignore_eos: true }, { signal: ac2.signal });
  for (let i = 0; i < 250 && (await metrics(srv.url)).troupe_requests_running !== 1; i++) await sleep(10);
  ac2.abort();
  try { await waiting; check(false, 'the aborted request must not resolve'); } catch (e) { /* aborted */ }
  m = await metrics(srv.url);
  for (let i = 0; i < 250 && ((m[abortKey] ?? 0) < before + 2 || m.troupe_requests_running !== 0); i++) {
    await sleep(20);
    m = await metrics(srv.url);
  }
  eq((m[abortKey] ?? 0) - before, 2, 'a client leaving a non-streamed request aborts it');
  eq(m.troupe_requests_running, 0, 'nothing left running after the non-streamed abort');
  eq(m.troupe_kv_cache_usage_ratio, 0, 'no KV blocks left in use after the non-streamed abort');
} finally {
  const { code } = await srv.stop();
  eq(code, 0, 'troupe serve exits 0 on SIGTERM');
}
finish('serve_openai');
