// Consumes shop-cqrs events from a durable queue of its own: checks each envelope against the
// AsyncAPI contract, drops duplicates (event_id), detects lost or reordered deliveries
// (prev_position), prints one JSON line per accepted event on stdout, reports on stderr.
// Exit: 0 done, 1 an invalid message or a gap was seen, 2 the timeout came before MAX_EVENTS.
import { readFile } from 'node:fs/promises';
import amqp from 'amqplib';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const env = process.env;
const queue = process.argv[2] ?? env.QUEUE ?? 'example.node-consumer';
const exchange = env.EXCHANGE ?? 'shop.events';
const maxEvents = Number(env.MAX_EVENTS ?? Infinity);
const contract = env.ASYNCAPI ?? new URL('../../docs/asyncapi.yaml', import.meta.url);
let last = env.AFTER === undefined ? null : Number(env.AFTER); // null: take the first as it is
const seen = new Set(); // event ids accepted (a long-lived consumer keeps a window of them)
let accepted = 0;
let faults = 0;
let closing = false;

const report = (what) => process.stderr.write(`${JSON.stringify(what)}\n`);

async function validators() {
  const http = String(contract).startsWith('http');
  // docs/asyncapi.yaml and GET /asyncapi.json are both JSON (JSON is YAML too)
  const text = http ? await (await fetch(contract)).text() : await readFile(contract, 'utf8');
  const doc = JSON.parse(text);
  // strict mode refuses the document's own keywords (asyncapi, channels, ...) around the schemas
  const ajv = addFormats(new Ajv({ allErrors: true, strict: false }));
  ajv.addSchema(doc, 'asyncapi');
  const ref = (type) => ({ $ref: `asyncapi#/components/messages/${type}/payload` });
  return new Map(Object.keys(doc.components.messages).map((t) => [t, ajv.compile(ref(t))]));
}

const schemas = await validators();
const connection = await amqp.connect(env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/');
const channel = await connection.createChannel();
await channel.assertExchange(exchange, 'topic', { durable: true });
await channel.assertQueue(queue, { durable: true });
await channel.bindQueue(queue, exchange, '#'); // all keys: the gap check needs every event
await channel.prefetch(100);

async function finish(code) {
  if (closing) return;
  closing = true;
  await channel.close(); // unacked deliveries go back to the queue
  await connection.close();
  process.exit(faults > 0 ? 1 : code);
}

function accept(event) {
  if (seen.has(event.event_id) || (last !== null && event.position <= last)) {
    return report({ duplicate: { event_id: event.event_id, position: event.position } });
  }
  if (last !== null && event.prev_position > last) {
    faults += 1;
    report({ gap: { after: last, prev_position: event.prev_position, at: event.position } });
  }
  seen.add(event.event_id);
  last = event.position;
  accepted += 1;
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

await channel.consume(queue, (message) => {
  if (message === null) return finish(1); // the queue was deleted
  if (closing) return;
  let event = null;
  try {
    event = JSON.parse(message.content.toString());
  } catch {}
  const validate = schemas.get(message.properties.type);
  if (!validate || !validate(event)) {
    faults += 1;
    report({ invalid: { type: message.properties.type, errors: validate?.errors ?? null } });
    return channel.nack(message, false, false);
  }
  accept(event);
  channel.ack(message);
  if (accepted >= maxEvents) finish(0);
});
report({ ready: { queue, exchange } });
if (env.TIMEOUT_S) setTimeout(() => finish(maxEvents === Infinity ? 0 : 2), env.TIMEOUT_S * 1e3);
process.on('SIGTERM', () => finish(0));
