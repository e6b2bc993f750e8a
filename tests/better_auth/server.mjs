// Better Auth 1.7 served over HTTP for the tests (tests/test_auth_better_auth.py starts it).
//
//   INSTANCES='[{"name": "plain", "port": 41001, "baseURL": "http://127.0.0.1:41001",
//               "secret": "..."} | {..., "secrets": [{"version": 2, "value": "new"}, ...]}]'
//   DATABASE_URL=postgresql://... node server.mjs
//
// One process serves every instance, each on its own 127.0.0.1 port, all on the one database
// (migrated by `flask db upgrade` only), with the bearer and jwt plugins. Each instance differs
// only in its base URL (http or https: the cookie's `__Secure-` prefix, the JWT's iss and aud)
// and its secret(s); `"jwt": false` leaves the jwt plugin out of an instance (its keys, in the
// shared jwks table, are encrypted with the secret of whichever instance made them, so an
// instance with other secrets could not sign with them). Prints one JSON line {"listening": {name: port}} once all listen; Better
// Auth's own log lines go to stderr. Ends on SIGTERM or SIGINT.
import { createServer } from "node:http";
import { betterAuth } from "better-auth";
import { toNodeHandler } from "better-auth/node";
import { bearer, jwt } from "better-auth/plugins";
import pg from "pg";

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
const instances = JSON.parse(process.env.INSTANCES);

function serve({ port, baseURL, secret, secrets, jwt: withJwt = true }) {
  const auth = betterAuth({
    database: pool,
    baseURL,
    secret,
    secrets,
    emailAndPassword: { enabled: true },
    plugins: withJwt ? [bearer(), jwt()] : [bearer()],
    telemetry: { enabled: false },
    rateLimit: { enabled: false },
    logger: { level: "warn", log: (level, message) => console.error(`[better-auth ${level}] ${message}`) },
  });
  const server = createServer(toNodeHandler(auth));
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

const servers = await Promise.all(instances.map(serve));
console.log(JSON.stringify({ listening: Object.fromEntries(instances.map((i) => [i.name, i.port])) }));

function stop() {
  for (const server of servers) server.close();
  pool.end().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
