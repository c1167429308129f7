// Drives a running `mixtral serve` with the official openai package. Usage:
//   node sdk_test.mjs http://127.0.0.1:PORT/v1 API_KEY
// Every call has a timeout and no retries; the first failed check exits 1 with a message.
import OpenAI from 'openai';

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, timeout: 60_000, maxRetries: 0 });
let checks = 0;

function check(cond, what, detail) {
  checks++;
  if (!cond) {
    console.error(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
    process.exit(1);
  }
}

async function expectError(promise, cls, status, what) {
  try {
    await promise;
  } catch (e) {
    check(e instanceof cls, `${what}: ${cls.name}`, String(e));
    check(e.status === status, `${what}: status ${status}`, e.status);
    return e;
  }
  check(false, `${what}: no error`);
}

const user = (content) => [{ role: 'user', content }];

// Models.
const models = await client.models.list();
check(models.data.length === 1, 'models.list has one model', models.data);
const model = models.data[0].id;
const one = await client.models.retrieve(model);
check(one.id === model && one.object === 'model', 'models.retrieve', one);
await expectError(client.models.retrieve('no-such-model'), OpenAI.NotFoundError, 404, 'models.retrieve of another id');

// Completions with echo and logprobs: the prompt is scored, its first token has none.
const comp = await client.completions.create({
  model, prompt: 'The quick brown fox', max_tokens: 5, temperature: 0, logprobs: 2, echo: true,
});
const c0 = comp.choices[0];
check(c0.text.startsWith('The quick brown fox'), 'echo puts the prompt first', c0.text);
check(c0.logprobs.tokens.length === comp.usage.prompt_tokens + comp.usage.completion_tokens,
      'one logprob per prompt and generated token', c0.logprobs);
check(c0.logprobs.token_logprobs[0] === null, 'the first prompt token has no logprob');
check(c0.logprobs.token_logprobs.slice(1).every((x) => x <= 0), 'logprobs are <= 0');
check(Object.keys(c0.logprobs.top_logprobs[1]).length === 2, 'two alternatives per token');
// Pure scoring: max_tokens 0.
const scored = await client.completions.create({ model, prompt: 'Hello world', max_tokens: 0, echo: true, logprobs: 0 });
check(scored.choices[0].text === 'Hello world' && scored.usage.completion_tokens === 0, 'max_tokens 0 scores only', scored);

// Chat: streamed text equals non-streamed text, and so do the logprobs.
const req = { model, messages: user('Write one line about the sea'), max_tokens: 16, temperature: 0, logprobs: true, top_logprobs: 3 };
const chat = await client.chat.completions.create(req);
const text = chat.choices[0].message.content;
check(chat.object === 'chat.completion' && typeof text === 'string', 'chat reply', chat);
const content = chat.choices[0].logprobs.content;
check(content.length > 0 && content.every((e) => e.top_logprobs.length === 3 && Array.isArray(e.bytes)),
      'chat logprobs with 3 alternatives and bytes', content);
check(content.every((e) => e.top_logprobs[0].token === e.token), 'greedy picks the most likely token');
const stream = await client.chat.completions.create({ ...req, stream: true });
let streamed = '';
const streamedLp = [];
for await (const chunk of stream) {
  if (!chunk.choices.length) continue;
  streamed += chunk.choices[0].delta.content ?? '';
  streamedLp.push(...(chunk.choices[0].logprobs?.content ?? []));
}
check(streamed === text, 'streamed chat text equals non-streamed', { streamed, text });
check(JSON.stringify(streamedLp) === JSON.stringify(content), 'streamed logprobs equal non-streamed');

// JSON mode: whatever finishes parses as an object.
let parsed = 0;
for (let seed = 0; seed < 6; seed++) {
  const r = await client.chat.completions.create({
    model, messages: user('Reply in JSON'), max_tokens: 100, temperature: 1, seed,
    response_format: { type: 'json_object' },
  });
  const ch = r.choices[0];
  if (ch.finish_reason !== 'stop') continue;
  const doc = JSON.parse(ch.message.content);
  check(doc !== null && typeof doc === 'object' && !Array.isArray(doc), 'json_object reply is an object', ch.message.content);
  parsed++;
}
check(parsed > 0, 'some json_object replies completed');
// A schema: the document conforms.
const schema = { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'], additionalProperties: false };
const s = await client.chat.completions.create({
  model, messages: user('ok?'), max_tokens: 60, temperature: 0,
  response_format: { type: 'json_schema', json_schema: { name: 'ok', schema, strict: true } },
});
check(s.choices[0].finish_reason === 'stop', 'json_schema reply completed', s.choices[0]);
check(typeof JSON.parse(s.choices[0].message.content).ok === 'boolean', 'json_schema reply conforms', s.choices[0].message.content);

// Refusals surface as the SDK's error classes.
const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }];
const e = await expectError(client.chat.completions.create({ model, messages: user('hi'), tools }),
                            OpenAI.BadRequestError, 400, 'tools');
check(e.param === 'tools' || e.error?.param === 'tools', 'the 400 names tools', e.error);
const bad = new OpenAI({ baseURL, apiKey: 'wrong-key', timeout: 30_000, maxRetries: 0 });
await expectError(bad.models.list(), OpenAI.AuthenticationError, 401, 'a wrong API key');

console.log(`openai sdk: ${checks} checks passed (model ${model})`);
