// Test harness only. A stand-in for Prisma's native `query-engine` binary, which
// prisma-client-py (LiteLLM's database client) starts as a child process and talks
// to over HTTP. The native binary is downloaded from Prisma's own host, which this
// project's machines cannot reach; npm ships the same engine commit built to
// WebAssembly. Two differences are bridged here:
//
//   * transport: the wasm engine is a library; prisma-client-py wants the binary's
//     HTTP interface (GET /status, POST / with one query or a batch,
//     POST /transaction/start|{id}/commit|{id}/rollback);
//   * protocol: prisma-client-py writes GraphQL text, the wasm engine reads only
//     Prisma's JSON protocol. The GraphQL that prisma-client-py generates is a small,
//     regular subset (one root field, literal arguments, nested selections), so it is
//     parsed here and rewritten; Json-typed inputs are tagged from the datamodel,
//     and the JSON protocol's tagged outputs ({"$type", "value"}) are unwrapped.
//
// Environment: PRISMA_DML_PATH (the schema, set by prisma-client-py), DATABASE_URL or
// OVERWRITE_DATASOURCES, JWTKEYMAP_ENGINE_MODULES (the node_modules folder that
// hack/litellm/install.sh filled). Argument: -p PORT.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const modules = process.env.JWTKEYMAP_ENGINE_MODULES
  || path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules');
const requireFrom = createRequire(path.join(modules, 'noop.js'));
const pg = requireFrom('pg');
const { PrismaPg } = requireFrom('@prisma/adapter-pg');
const { bindAdapter } = requireFrom('@prisma/driver-adapter-utils');
const wasmDir = path.join(modules, '@prisma', 'query-engine-wasm', 'postgresql');
const wasmGlue = await import(pathToFileURL(path.join(wasmDir, 'query_engine_bg.js')).href);

// ---------------------------------------------------------------- engine ----

function optionValue(names) {
  const args = process.argv.slice(2);
  const at = args.findIndex((a) => names.includes(a));
  return at >= 0 ? args[at + 1] : undefined;
}

function databaseUrl() {
  let url = process.env.DATABASE_URL;
  const override = process.env.OVERWRITE_DATASOURCES;
  if (override) {
    const list = JSON.parse(override);
    if (Array.isArray(list) && list.length && list[0].url) url = list[0].url;
  }
  // Prisma reads its own options from the URL; node-postgres would choke on them.
  const parsed = new URL(url);
  for (const name of [...parsed.searchParams.keys()]) {
    if (!['sslmode', 'application_name', 'options'].includes(name)) parsed.searchParams.delete(name);
  }
  return parsed.toString();
}

function startEngine(datamodel) {
  const module = new WebAssembly.Module(fs.readFileSync(path.join(wasmDir, 'query_engine_bg.wasm')));
  const instance = new WebAssembly.Instance(module, { './query_engine_bg.js': wasmGlue });
  wasmGlue.__wbg_set_wasm(instance.exports);
  const pool = new pg.Pool({ connectionString: databaseUrl(), max: 8 });
  const log = process.env.JWTKEYMAP_ENGINE_DEBUG ? (line) => console.error('[engine]', line) : () => {};
  const engine = new wasmGlue.QueryEngine(
    { datamodel, logLevel: 'error', logQueries: false }, log, bindAdapter(new PrismaPg(pool)),
  );
  return { engine, pool };
}

// --------------------------------------------------------------- schema ----

// model name -> { field name -> type name }, from the datamodel's model blocks.
function fieldTypes(datamodel) {
  const models = {};
  let current = null;
  for (const raw of datamodel.split('\n')) {
    const line = raw.replace(/\/\/.*$/, '').trim();
    const open = line.match(/^model\s+(\w+)\s*\{/);
    if (open) { current = models[open[1]] = {}; continue; }
    if (line.startsWith('}')) { current = null; continue; }
    if (!current || !line || line.startsWith('@@')) continue;
    const field = line.match(/^(\w+)\s+(\w+)/);
    if (field) current[field[1]] = field[2];
  }
  return models;
}

// ------------------------------------------------------- GraphQL reader ----

// Reads the one operation prisma-client-py sends:
//   mutation { alias: rootField(arg: value ...) { field other(args) { ... } } }
class Reader {
  constructor(text) { this.text = text; this.at = 0; }

  fail(what) {
    throw new Error(`engine stand-in: expected ${what} at ${JSON.stringify(this.text.slice(this.at, this.at + 40))}`);
  }

  skip() {
    while (this.at < this.text.length && /[\s,]/.test(this.text[this.at])) this.at++;
  }

  peek() { this.skip(); return this.text[this.at]; }

  take(char) {
    if (this.peek() !== char) this.fail(JSON.stringify(char));
    this.at++;
  }

  name() {
    this.skip();
    const m = /^[A-Za-z_]\w*/.exec(this.text.slice(this.at));
    if (!m) this.fail('a name');
    this.at += m[0].length;
    return m[0];
  }

  string() {
    // GraphQL string escapes are JSON's for everything prisma-client-py emits.
    const start = this.at;
    this.at++;
    while (this.text[this.at] !== '"') this.at += this.text[this.at] === '\\' ? 2 : 1;
    this.at++;
    return JSON.parse(this.text.slice(start, this.at));
  }

  value() {
    const c = this.peek();
    if (c === '"') return this.string();
    if (c === '[') {
      this.take('[');
      const items = [];
      while (this.peek() !== ']') items.push(this.value());
      this.take(']');
      return items;
    }
    if (c === '{') {
      this.take('{');
      const obj = {};
      while (this.peek() !== '}') {
        const key = this.name();
        this.take(':');
        obj[key] = this.value();
      }
      this.take('}');
      return obj;
    }
    const number = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(this.text.slice(this.at));
    if (number) { this.at += number[0].length; return Number(number[0]); }
    const word = this.name();
    if (word === 'null') return null;
    if (word === 'true' || word === 'false') return word === 'true';
    return word; // an enum value
  }

  arguments() {
    const args = {};
    if (this.peek() !== '(') return args;
    this.take('(');
    while (this.peek() !== ')') {
      const key = this.name();
      this.take(':');
      args[key] = this.value();
    }
    this.take(')');
    return args;
  }

  // A selection set in the JSON protocol's shape: scalars as `true`, the rest nested.
  selection() {
    const out = {};
    this.take('{');
    while (this.peek() !== '}') {
      const field = this.name();
      const hasArgs = this.peek() === '(';
      const args = this.arguments();
      const nested = this.peek() === '{' ? this.selection() : null;
      if (!hasArgs && nested === null) { out[field] = true; continue; }
      const node = { selection: nested ?? { $scalars: true } };
      if (hasArgs) node.arguments = args;
      out[field] = node;
    }
    this.take('}');
    return out;
  }

  operation() {
    this.name(); // query | mutation: the JSON protocol infers it from the action
    this.take('{');
    let alias = this.name();
    let field = alias;
    if (this.peek() === ':') { this.take(':'); field = this.name(); }
    const args = this.arguments();
    const selection = this.peek() === '{' ? this.selection() : null;
    this.take('}');
    return { alias, field, args, selection };
  }
}

// ------------------------------------------------------ protocol bridge ----

// Longest first, so `findFirstOrThrow…` is not read as `findFirst` of `OrThrow…`.
const ACTIONS = [
  'findUniqueOrThrow', 'findFirstOrThrow', 'findUnique', 'findFirst', 'findMany',
  'createOne', 'createMany', 'updateOne', 'updateMany', 'upsertOne', 'deleteOne',
  'deleteMany', 'aggregate', 'groupBy',
];

function splitRootField(field) {
  if (field === 'queryRaw' || field === 'executeRaw') return { action: field };
  for (const action of ACTIONS) {
    if (!field.startsWith(action)) continue;
    let model = field.slice(action.length);
    let name = action;
    if (model.endsWith('OrThrow')) { model = model.slice(0, -'OrThrow'.length); name += 'OrThrow'; }
    return { action: name, model };
  }
  throw new Error(`engine stand-in: unsupported root field ${field}`);
}

function makeTagger(models) {
  const json = (v) => (typeof v === 'string' ? { $type: 'Json', value: v } : v);
  // Json columns arrive as strings; the JSON protocol wants them tagged, also in
  // the equals/not filters. Walks data and where trees, following relations.
  function tag(value, model) {
    if (Array.isArray(value)) return value.map((v) => tag(v, model));
    if (value === null || typeof value !== 'object') return value;
    const fields = models[model] || {};
    const out = {};
    for (const [key, inner] of Object.entries(value)) {
      const type = fields[key];
      if (type === 'Json') {
        if (inner !== null && typeof inner === 'object' && !Array.isArray(inner)) {
          out[key] = Object.fromEntries(Object.entries(inner).map(
            ([op, v]) => [op, op === 'equals' || op === 'not' ? json(v) : v]));
        } else {
          out[key] = json(inner);
        }
      } else if (type && models[type]) {
        out[key] = tag(inner, type);
      } else {
        out[key] = type ? inner : tag(inner, model); // an operator keeps the model
      }
    }
    return out;
  }
  return tag;
}

function untag(value) {
  if (Array.isArray(value)) return value.map(untag);
  if (value === null || typeof value !== 'object') return value;
  const keys = Object.keys(value);
  if (keys.length === 2 && '$type' in value && 'value' in value) return value.value;
  return Object.fromEntries(keys.map((k) => [k, untag(value[k])]));
}

function translate(text, tag) {
  const op = new Reader(text).operation();
  const { action, model } = splitRootField(op.field);
  const raw = !model;
  const request = {
    action,
    query: {
      arguments: raw ? op.args : tag(op.args, model),
      selection: raw ? {} : op.selection ?? { $scalars: true },
    },
  };
  if (model) request.modelName = model;
  return { alias: op.alias, request };
}

// The JSON protocol names the result after the root field; prisma-client-py reads its alias.
function renameResult(result, alias) {
  if (!result.data) return result;
  const [first] = Object.values(result.data);
  return { data: { [alias]: untag(first) } };
}

// ---------------------------------------------------------------- HTTP ----

async function body(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return Buffer.concat(parts).toString('utf8');
}

function reply(res, status, payload) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(typeof payload === 'string' ? payload : JSON.stringify(payload));
}

function errorPayload(err) {
  const message = String(err && err.message ? err.message : err);
  return { errors: [{ error: message, user_facing_error: { is_panic: false, message } }] };
}

async function main() {
  const datamodel = fs.readFileSync(process.env.PRISMA_DML_PATH, 'utf8');
  const tag = makeTagger(fieldTypes(datamodel));
  const { engine, pool } = startEngine(datamodel);
  await engine.connect('{}');

  async function run(payload, txId) {
    if (!payload.batch) {
      const { alias, request } = translate(payload.query, tag);
      return renameResult(JSON.parse(await engine.query(JSON.stringify(request), '{}', txId)), alias);
    }
    const items = payload.batch.map((item) => translate(item.query, tag));
    const batch = { batch: items.map((item) => item.request) };
    if (payload.transaction) batch.transaction = {};
    const result = JSON.parse(await engine.query(JSON.stringify(batch), '{}', txId));
    if (result.batchResult) {
      result.batchResult = result.batchResult.map((one, i) => renameResult(one, items[i].alias));
    }
    return result;
  }

  const server = http.createServer(async (req, res) => {
    try {
      const { pathname } = new URL(req.url, 'http://engine');
      const text = await body(req);
      const txId = req.headers['x-transaction-id'];
      if (pathname === '/status') return reply(res, 200, { status: 'ok' });
      if (pathname === '/metrics') return reply(res, 200, { counters: [], gauges: [], histograms: [] });
      if (req.method !== 'POST') return reply(res, 405, errorPayload('method not allowed'));
      if (pathname === '/') return reply(res, 200, await run(JSON.parse(text), txId));
      if (pathname === '/transaction/start') {
        return reply(res, 200, await engine.startTransaction(text || '{}', '{}'));
      }
      const tx = pathname.match(/^\/transaction\/([^/]+)\/(commit|rollback)$/);
      if (tx) {
        const done = tx[2] === 'commit'
          ? await engine.commitTransaction(tx[1], '{}')
          : await engine.rollbackTransaction(tx[1], '{}');
        return reply(res, 200, done || '{}');
      }
      return reply(res, 404, errorPayload(`no route ${pathname}`));
    } catch (err) {
      if (process.env.JWTKEYMAP_ENGINE_DEBUG) console.error('[engine]', err);
      return reply(res, 200, errorPayload(err));
    }
  });

  const port = Number(optionValue(['-p', '--port']) || 0);
  server.listen(port, '127.0.0.1');
  const stop = async () => {
    server.close();
    await engine.disconnect('{}').catch(() => {});
    await pool.end().catch(() => {});
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

await main();
