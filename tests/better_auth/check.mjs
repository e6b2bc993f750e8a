// Better Auth <-> PostgreSQL compatibility harness (called from pytest).
//
// Proves a PostgreSQL database (DATABASE_URL, postgresql://...) works with Better Auth,
// using Better Auth's own code, email-and-password enabled, with the bearer and jwt plugins the
// service verifies credentials of (the jwt plugin adds the `jwks` table):
//   node check.mjs plan      -> JSON: what Better Auth's migrator would still create/add (+ the SQL)
//   node check.mjs migrate   -> run Better Auth's own migrations (only to build a reference database)
//   node check.mjs exercise  -> JSON: real sign-up / sign-in / get-session / duplicate sign-up refused
// Prints exactly one JSON object on stdout; Better Auth's own log lines go to stderr.
// Exit code 0 on success, 1 on any failure (with {"error": ...} on stdout).
import { randomBytes } from "node:crypto";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { bearer, jwt } from "better-auth/plugins";
import pg from "pg";

const command = process.argv[2];
const url = process.env.DATABASE_URL;
const pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: 5000 });
const warnings = []; // Better Auth warnings (e.g. column type or nullability drift), reported by `plan`

const options = {
  database: pool,
  secret: "better-auth-compat-test-secret-0123456789abcdef",
  baseURL: "http://127.0.0.1:8000",
  emailAndPassword: { enabled: true },
  plugins: [bearer(), jwt()],
  telemetry: { enabled: false },
  logger: {
    level: "warn",
    log: (level, message, ...args) => {
      if (level === "warn") warnings.push(String(message));
      console.error(`[better-auth ${level}] ${message}`, ...args);
    },
  },
};

const names = (fields) => Object.keys(fields);

async function plan() {
  const m = await getMigrations(options, { throwOnUnsafe: false });
  return {
    toBeCreated: m.toBeCreated.map((t) => t.table),
    toBeAdded: m.toBeAdded.map((t) => ({ table: t.table, fields: names(t.fields) })),
    toBeAddedIndexes: m.toBeAddedIndexes.map((i) => ({ table: i.table, name: i.name })),
    unsafeChanges: m.unsafeChanges,
    schemaProblems: m.schemaProblems,
    warnings,
    sql: await m.compileMigrations(),
  };
}

async function migrate() {
  const m = await getMigrations(options);
  await m.runMigrations();
  return { migrated: true, created: m.toBeCreated.map((t) => t.table) };
}

async function exercise() {
  const auth = betterAuth(options);
  const email = `compat-${randomBytes(8).toString("hex")}@example.test`;
  const password = `pw-${randomBytes(12).toString("hex")}`;
  const body = { email, password, name: "Compat Check" };

  const signUp = await auth.api.signUpEmail({ body });
  if (!signUp?.user?.id) throw new Error("signUpEmail returned no user");

  const { headers, response } = await auth.api.signInEmail({
    body: { email, password },
    returnHeaders: true,
  });
  if (!response?.token) throw new Error("signInEmail returned no token");
  // Send back the cookies Better Auth set (the session token cookie is signed).
  const cookie = headers.getSetCookie().map((c) => c.split(";")[0]).join("; ");
  const session = await auth.api.getSession({ headers: new Headers({ cookie }) });
  if (session?.user?.id !== signUp.user.id) throw new Error("getSession did not return the signed-up user");

  // Signing up the same email again must be refused with Better Auth's own error, leaving one user.
  let refusal = "accepted";
  try {
    await auth.api.signUpEmail({ body });
  } catch (e) {
    refusal = e?.body?.code ?? `${e?.name}: ${e?.message}`;
  }
  const duplicateRefused = refusal === "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL";
  const { rows } = await pool.query('select count(*)::int as n from "user" where email = $1', [email]);
  if (!duplicateRefused || rows[0].n !== 1) {
    throw new Error(`duplicate sign-up not refused as expected (${refusal}; users with that email: ${rows[0].n})`);
  }

  return { signUp: true, signIn: true, getSession: true, duplicateRefused, userId: signUp.user.id };
}

const commands = { plan, migrate, exercise };
let code = 0;
const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "timed out after 20s" }));
  process.exit(1);
}, 20000);
try {
  if (!url) throw new Error("DATABASE_URL is not set");
  if (!commands[command]) throw new Error(`usage: node check.mjs <${Object.keys(commands).join("|")}>`);
  console.log(JSON.stringify(await commands[command]()));
} catch (e) {
  console.log(JSON.stringify({ error: `${e?.name ?? "Error"}: ${e?.message ?? e}`, code: e?.body?.code }));
  code = 1;
} finally {
  clearTimeout(timer);
  await pool.end().catch(() => {});
}
process.exit(code);
