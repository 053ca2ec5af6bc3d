// A real OpenID Connect provider (npm `oidc-provider`) on loopback, for Atrium's tests.
//
//   ATRIUM_OIDC_MODULES=<install.sh output> node provider.mjs CONFIG.json
//
// CONFIG: { issuer, port, jwks: {keys: [private JWK]}, clients: [...], users: [{sub,
// username, password, name, email, groups}] }. It prints "READY <issuer>" once listening.
//
// Besides the standard endpoints (discovery, authorization with PKCE, token, userinfo,
// JWKS, end_session, revocation) it has:
//   * /interaction/<uid>: a plain username/password form; consent is given automatically
//     (as a facility's single sign-on does for its own applications);
//   * test controls, reachable on loopback only, to play a hostile or broken provider:
//     POST /test/tamper {set?: {claim: value}, unset?: [claim], sign?: "provider"|"rogue"|
//       "none", replay?: true} - the NEXT login's token response (a code grant) carries an
//       ID token changed so (re-signed with the provider's own key, a rogue key with the
//       same kid, or unsigned; or the previous login's ID token, replayed);
//     POST /test/users/<username> {name?, email?, groups?, disabled?} - change a user's
//       claims, or disable the account: it cannot sign in, and its refresh tokens are refused
//       with invalid_grant "User disabled" (Keycloak's words for a disabled account);
//     POST /test/backchannel {enabled} - send back-channel logouts or not (default: on).
// Refresh tokens are issued without offline_access and die with the provider session, as
// Keycloak's do: that is how a relying party notices the provider session has ended
// (besides back-channel logout, which tells it at once).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.env.ATRIUM_OIDC_MODULES;
if (!modules) throw new Error('set ATRIUM_OIDC_MODULES to the install dir (install.sh prints it)');
const { default: Provider } = await import(
  pathToFileURL(path.join(modules, 'oidc-provider', 'lib', 'index.js')).href);

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const users = new Map(cfg.users.map((u) => [u.username, u]));
const bySub = new Map(cfg.users.map((u) => [u.sub, u]));
const signingJwk = cfg.jwks.keys[0];
const providerKey = crypto.createPrivateKey({ key: signingJwk, format: 'jwk' });
const rogueKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

let tamper = null; // one-shot change of the next ID token
let lastIdToken = null; // for replay

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>${esc(title)}</title></head><body><main><h1>${esc(title)}</h1>${body}</main></body></html>`;

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients,
  jwks: cfg.jwks,
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  async findAccount(ctx, sub) {
    const user = bySub.get(sub);
    if (!user) return undefined;
    if (user.disabled) {
      ctx.atriumAccountDisabled = true; // reworded below, as Keycloak words it
      return undefined;
    }
    return {
      accountId: sub,
      async claims() {
        return {
          sub, preferred_username: user.username, name: user.name, email: user.email,
          email_verified: true, groups: user.groups,
        };
      },
    };
  },
  pkce: { required: () => true },
  // The relying parties of this test provider live on loopback, which oidc-provider's
  // SSRF guard refuses to call (back-channel logout): drop the guard here, only here.
  fetch: (url, options) => globalThis.fetch(url, { ...options, dispatcher: undefined }),
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    Interaction: 600, Session: 86400, Grant: 86400, AccessToken: 3600, RefreshToken: 86400,
    IdToken: 3600,
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // Confirm at once, as Keycloak does for a logout carrying id_token_hint.
      async logoutSource(ctx, form) {
        ctx.body = page('Signing out', `${form}<script>
const f = document.getElementById('op.logoutForm'); const i = document.createElement('input');
i.type = 'hidden'; i.name = 'logout'; i.value = 'yes'; f.appendChild(i); f.submit();
</script>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<p>You are signed out of the test provider.</p>');
      },
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Provider error', `<pre>${esc(JSON.stringify(out))}</pre>`);
  },
});

// Back-channel logout can be switched off, to play a provider without it (or whose call
// was lost), so that the relying party's periodic check is what notices.
let backchannel = true;
const sendBackchannel = provider.Client.prototype.backchannelLogout;
provider.Client.prototype.backchannelLogout = async function backchannelLogout(...args) {
  if (backchannel) await sendBackchannel.apply(this, args);
};
provider.on('backchannel.error', (_ctx, err, client) => {
  console.error(`back-channel logout to ${client.clientId} failed: ${err.message}`);
});

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const decodePart = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

function forge(idToken, change) {
  if (change.replay) return lastIdToken ?? idToken;
  const [h, p] = idToken.split('.');
  const header = decodePart(h);
  const claims = decodePart(p);
  Object.assign(claims, change.set ?? {});
  for (const name of change.unset ?? []) delete claims[name];
  const sign = change.sign ?? 'provider';
  if (sign === 'none') header.alg = 'none';
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  if (sign === 'none') return `${input}.`;
  const key = sign === 'rogue' ? rogueKey : providerKey;
  return `${input}.${b64url(crypto.sign('sha256', Buffer.from(input), key))}`;
}

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && ctx.atriumAccountDisabled && ctx.body?.error === 'invalid_grant') {
    ctx.body = { ...ctx.body, error_description: 'User disabled' };
  }
  // Only logins (code grants): the relying party's background refreshes must neither
  // consume a tamper meant for a login nor become the ID token a replay test replays.
  if (ctx.path === '/token' && ctx.method === 'POST' && ctx.body?.id_token
      && ctx.oidc?.params?.grant_type === 'authorization_code') {
    const issued = ctx.body.id_token;
    if (tamper) {
      ctx.body = { ...ctx.body, id_token: forge(issued, tamper) };
      tamper = null;
    }
    lastIdToken = issued;
  }
});

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(body);
}

function loginForm(uid, error = '') {
  return page('Sign in to the test provider', `
${error ? `<p role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <p><label>Username <input name="login" autofocus></label></p>
  <p><label>Password <input name="password" type="password"></label></p>
  <p><button type="submit">Sign in</button></p>
</form>`);
}

async function consent(req, res, details) {
  const { prompt: { details: missing }, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } },
    { mergeWithLastSubmission: true });
}

async function interaction(req, res, url) {
  const [, , uid, action] = url.pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch');
  if (details.prompt.name === 'consent') return consent(req, res, details);
  if (req.method === 'GET') return send(res, 200, 'text/html', loginForm(uid));
  if (action !== 'login') return send(res, 404, 'text/plain', 'no such interaction step');
  const form = new URLSearchParams(await readBody(req));
  const user = users.get(form.get('login') ?? '');
  const given = Buffer.from(form.get('password') ?? '');
  const ok = user && given.length === Buffer.byteLength(user.password)
    && crypto.timingSafeEqual(given, Buffer.from(user.password));
  if (!ok) return send(res, 200, 'text/html', loginForm(uid, 'Invalid username or password.'));
  if (user.disabled) return send(res, 200, 'text/html', loginForm(uid, 'Account is disabled.'));
  return provider.interactionFinished(req, res, { login: { accountId: user.sub } },
    { mergeWithLastSubmission: false });
}

async function testControl(req, res, url) {
  const body = JSON.parse((await readBody(req)) || '{}');
  if (url.pathname === '/test/tamper') {
    tamper = body;
    return send(res, 200, 'application/json', '{"ok":true}');
  }
  if (url.pathname === '/test/backchannel') {
    backchannel = Boolean(body.enabled);
    return send(res, 200, 'application/json', '{"ok":true}');
  }
  const user = users.get(decodeURIComponent(url.pathname.slice('/test/users/'.length)));
  if (url.pathname.startsWith('/test/users/') && user) {
    for (const k of ['name', 'email', 'groups', 'disabled']) if (k in body) user[k] = body[k];
    return send(res, 200, 'application/json', JSON.stringify({ ...user, password: undefined }));
  }
  return send(res, 404, 'application/json', '{"error":"no such test control"}');
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, cfg.issuer);
  try {
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res, url);
    if (url.pathname.startsWith('/test/') && req.method === 'POST') {
      return await testControl(req, res, url);
    }
    return callback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) send(res, 500, 'text/plain', String(err));
    else res.end();
  }
});
server.listen(cfg.port, '127.0.0.1', () => console.log(`READY ${cfg.issuer}`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
