// Submits a notification to Herald over mutual TLS, replays it with the same idempotency key,
// and reads its status. The service definitions are loaded from the repository's proto/ at
// start (@grpc/proto-loader): nothing generated is committed. See README.md.

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const repository = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const certs = join(repository, "certs-dev", "generated");
const env = process.env;

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: env.HERALD_SERVER ?? "127.0.0.1:50051" },
    "server-name": { type: "string", default: env.HERALD_SERVER_NAME ?? "localhost" },
    ca: { type: "string", default: env.HERALD_CA ?? join(certs, "ca.pem") },
    cert: { type: "string", default: env.HERALD_CERT ?? join(certs, "orders.pem") },
    key: { type: "string", default: env.HERALD_KEY ?? join(certs, "orders.key") },
    template: { type: "string", default: env.HERALD_TEMPLATE ?? "welcome" },
    // A fresh address per run: Herald allows 3 notifications of a type per recipient a day.
    to: { type: "string", default: `example+${randomUUID().slice(0, 12)}@example.com` },
    "proto-dir": { type: "string", default: join(repository, "proto") },
  },
});

const definition = protoLoader.loadSync("herald/submit/v1/submit.proto", {
  includeDirs: [args["proto-dir"]],
  enums: String,
  longs: String,
  defaults: true,
});
const { SubmitService } = grpc.loadPackageDefinition(definition).herald.submit.v1;

const credentials = grpc.credentials.createSsl(
  readFileSync(args.ca),
  readFileSync(args.key),
  readFileSync(args.cert),
);
const client = new SubmitService(args.server, credentials, {
  "grpc.ssl_target_name_override": args["server-name"],
});

/** Calls a unary method, resolving with its response. */
function call(method, request) {
  const deadline = Date.now() + 10_000;
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** A google.protobuf.Struct of string values. */
function struct(object) {
  const fields = Object.fromEntries(
    Object.entries(object).map(([name, value]) => [name, { stringValue: value }]),
  );
  return { fields };
}

async function main() {
  const request = {
    template: { key: args.template },
    recipients: [{ email: args.to, locale: "en" }],
    channels: ["CHANNEL_EMAIL"],
    priority: "PRIORITY_NORMAL",
    parameters: struct({ username: "Ada", item_name: "order #1001" }),
    // Derive the key from your own data (an order id, an event id) so that a retry after a
    // timeout carries the same key.
    idempotencyKey: `node-example-${randomUUID()}`,
  };

  const first = await call("Submit", request);
  console.log(`submitted: id=${first.notificationId} duplicate=${first.duplicate}`);

  const replay = await call("Submit", request);
  console.log(`replayed: id=${replay.notificationId} duplicate=${replay.duplicate}`);
  if (replay.notificationId !== first.notificationId || !replay.duplicate) {
    throw new Error("the replay with the same idempotency key created a new notification");
  }

  const { notification } = await call("GetNotification", {
    notificationId: first.notificationId,
  });
  console.log(`status: id=${notification.id} status=${notification.status}`);
  for (const delivery of notification.deliveries) {
    console.log(`  delivery ${delivery.id}: ${delivery.channel} ${delivery.state}`);
  }
}

try {
  await main();
} catch (error) {
  const status = error.code === undefined ? "" : `herald answered ${grpc.status[error.code]}: `;
  console.error(`${status}${error.details ?? error.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
