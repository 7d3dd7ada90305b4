#!/usr/bin/env node
// The in-memory Cosmos DB REST server of @vercel/cosmosdb-server, started for the tests.
// Like its own lib/cli.js, but with HTTP keep-alive (the CLI closes the connection after every
// response, which makes each request pay a new TCP handshake).
//   node cosmos-server.js --port PORT [--host 127.0.0.1] [--no-ssl] [--no-keep-alive]
"use strict";
const { createHttpServer, createHttpsServer } = require("@vercel/cosmosdb-server");
const accountModule = require("@vercel/cosmosdb-server/lib/account");

// The package's account answer (GET /) says "Session", a constant. One in-memory process is
// Strong (every read sees the latest write), and the shim refuses to start on a Session account:
// report what the server really offers.
const PackageAccount = accountModule.default;
accountModule.default = class StrongAccount extends PackageAccount {
  constructor(host, port) {
    super(host, port);
    this._data.userConsistencyPolicy = { defaultConsistencyLevel: "Strong" };
  }
};

const args = { port: 0, host: "127.0.0.1", ssl: true, keepAlive: true };
const argv = process.argv.slice(2);
while (argv.length) {
  const flag = argv.shift();
  if (flag === "-p" || flag === "--port") args.port = parseInt(argv.shift(), 10);
  else if (flag === "--host") args.host = argv.shift();
  else if (flag === "--no-ssl") args.ssl = false;
  else if (flag === "--no-keep-alive") args.keepAlive = false;
  else { console.error(`unknown flag ${flag}`); process.exit(2); }
}
const create = args.ssl ? createHttpsServer : createHttpServer;
const server = create({ keepAlive: args.keepAlive });
// Idle connections stay open longer than the client's pool keeps them (Node's default is 5 s).
server.keepAliveTimeout = 120 * 1000;
server.headersTimeout = 125 * 1000;
server.listen(args.port, args.host, () => {
  const { port } = server.address();
  console.log(`Ready to accept HTTP${args.ssl ? "S" : ""} connections at ${args.host}:${port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
